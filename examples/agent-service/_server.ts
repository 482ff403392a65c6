// Owns running the agent service as a `deno serve --parallel` subprocess (a free port, ready, stopped by pid) for its test and bench; never sends the service a request of its own besides the readiness probe.

import { SERVICE_VARIABLES } from "./app.ts";

/** How to start the service. */
export interface ServiceOptions {
  /** Isolates: `DENO_JOBS` of `deno serve --parallel`. */
  isolates: number;
  /** The service's environment: `XP_KV_PATH`, `XP_BACKEND`, ... */
  env: Record<string, string>;
  /**
   * Permission flags; default: the service's narrow set for a KV file
   * (read and write of `XP_KV_PATH`'s folder, its variables).
   */
  permissions?: string[];
  /** How long the service may take to answer `/health`; default 60 s. */
  readyTimeoutMs?: number;
}

/** A running service: its URL and how to stop it. */
export interface Service extends AsyncDisposable {
  /** `http://127.0.0.1:<port>`, without a trailing slash. */
  url: string;
  /** Ends the service by pid (SIGTERM, then SIGKILL after 5 s) and waits for it. */
  stop(): Promise<void>;
  /** What the service printed so far (stdout and stderr). */
  output(): string;
}

const MAIN = new URL("./main.ts", import.meta.url).pathname;
const ROOT = new URL("../..", import.meta.url).pathname;

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return listener.addr.port;
}

/** The service's permissions for a KV file: exactly what it needs. */
export function kvPermissions(kvPath: string): string[] {
  const dir = kvPath.slice(0, kvPath.lastIndexOf("/")) || "/";
  return [
    `--allow-read=${dir}`,
    `--allow-write=${dir}`,
    `--allow-env=${SERVICE_VARIABLES.join(",")}`,
  ];
}

/**
 * Starts the service on a free 127.0.0.1 port with `DENO_JOBS=isolates`
 * and waits until `/health` answers 200. Retries on another port if the
 * chosen one was taken meanwhile.
 */
export async function startService(options: ServiceOptions): Promise<Service> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(options, freePort());
    } catch (error) {
      lastError = error;
      if (!String(error).includes("Address already in use")) throw error;
    }
  }
  throw lastError;
}

async function startOnce(
  options: ServiceOptions,
  port: number,
): Promise<Service> {
  const permissions = options.permissions ??
    kvPermissions(options.env.XP_KV_PATH ?? Deno.cwd() + "/");
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "serve",
      "--parallel",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      ...permissions,
      MAIN,
    ],
    cwd: ROOT,
    env: {
      NO_COLOR: "1",
      DENO_JOBS: String(options.isolates),
      ...options.env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
    }
  };
  const drained = Promise.all([collect(child.stdout), collect(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const stop = async () => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* already gone */ }
      }, 5_000);
      await status;
      clearTimeout(timer);
    }
    await drained;
  };
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000);
  // Ready when every isolate has answered: a keep-alive connection stays
  // with the isolate that accepted it, so a load started while only some
  // isolates listen would never reach the others. Each probe is a new
  // connection (its own client), which the kernel gives to any listener.
  const seen = new Set<string>();
  while (seen.size < options.isolates) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new Error(
        `The service did not start (${
          exited
            ? "it exited"
            : `${seen.size} of ${options.isolates} isolates answered`
        }):\n${text}`,
      );
    }
    using client = Deno.createHttpClient({});
    try {
      const response = await fetch(`${url}/health`, {
        client,
        signal: AbortSignal.timeout(2_000),
      });
      const body = await response.json();
      if (response.ok) seen.add(body.isolate);
    } catch {
      // Not listening yet.
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  return {
    url,
    stop,
    output: () => text,
    [Symbol.asyncDispose]: stop,
  };
}
