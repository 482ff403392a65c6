// Runs a Deno subcommand as a real subprocess from the project root and
// collects what it printed: the demo and CLI tests run their scripts this way.

/** What a finished subprocess left. */
export interface ProcessResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The project root, as the subprocess's working directory. */
export const ROOT: string = new URL("../..", import.meta.url).pathname;

/**
 * Runs `deno <args>` with `NO_COLOR=1` and `env`; with `clearEnv`, nothing
 * else of this process's environment reaches it.
 */
export async function denoRun(
  args: string[],
  { env = {}, clearEnv = false }: {
    env?: Record<string, string>;
    clearEnv?: boolean;
  } = {},
): Promise<ProcessResult> {
  const output = await new Deno.Command(Deno.execPath(), {
    args,
    env: { NO_COLOR: "1", ...env },
    clearEnv,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}
