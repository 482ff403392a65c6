// The inspector's entry: main(), its exit codes and io, and the command-line
// runner; it owns the steps of a run (parse, open, run, print, close) and never
// formats output or reads the store itself.

/**
 * The inspector: a command-line tool to look into a live store (threads,
 * their slots decoded from MessagePack, the chain <-> uuid registry) and to
 * delete a thread or clear a tenant.
 *
 * ```sh
 * deno run -A jsr:@xml-pipeline/shared-backend/cli --backend kv --kv-path state.db stats
 * deno run -A jsr:@xml-pipeline/shared-backend/cli --backend redis --redis-url redis://host:6379 threads
 * XP_BACKEND=kv XP_KV_PATH=state.db deno task cli show 0b7c-uuid --raw
 * ```
 *
 * Commands: `stats`, `prefixes`, `threads`, `show <threadId>`,
 * `watch <threadId>` (slots as they arrive, like `tail -f`), `serve` (the web
 * inspector), `registry`, `chain <chain>`, `uuid <uuid>`,
 * `delete-thread <threadId>`, `clear --yes`; `--help` on each, `--version`. The store comes from the same environment variables as
 * `configFromEnv` (`XP_BACKEND`, `XP_KV_PATH`, `XP_REDIS_URL`, `XP_PREFIX`,
 * ...), overridden by `--backend`, `--kv-path`, `--redis-url` and `--prefix`.
 * `--json` prints one JSON document for scripts. Exit codes are in
 * {@linkcode EXIT_CODES}.
 *
 * Importing this module runs nothing: the command line runs only when it is
 * the main module; {@linkcode main} runs it from code.
 *
 * @example Run the inspector from code on a memory backend
 * ```ts
 * import { main } from "@xml-pipeline/shared-backend/cli";
 * import { ContextBuffer, InMemoryBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * await new ContextBuffer(backend).append("t1", { text: "hi" }, { fromId: "a", toId: "b" });
 *
 * let output = "";
 * const code = await main(["threads", "--json"], { backend, stdout: (text) => output += text });
 * assert.equal(code, 0);
 * assert.deepEqual(JSON.parse(output), [{ threadId: "t1", slots: 1, chain: null }]);
 * ```
 *
 * @module
 */

import { errorMessage } from "../_messages.ts";
import type { BackendConfig } from "../config.ts";
import { BackendError } from "../errors.ts";
import type { SharedBackend } from "../protocol.ts";
import { AdminAccess } from "./_admin.ts";
import { parseCommandLine } from "./_args.ts";
import { type Channel, runCommand, STREAMING } from "./_commands.ts";
import { CliError, usageError } from "./_errors.ts";
import {
  checkKvFile,
  describeStore,
  isMemoryStore,
  openStore,
  secretsOf,
  storeConfig,
  storePrefix,
} from "./_store.ts";

export type * from "../protocol.ts";

/**
 * The exit codes of the inspector.
 *
 * | code | meaning |
 * | --- | --- |
 * | 0 | done |
 * | 1 | not found (`show`, `chain`, `uuid`, `delete-thread` of something that does not exist), or another failure |
 * | 2 | bad usage: unknown command or flag, a missing or extra argument, a bad value, `clear` without `--yes` |
 * | 3 | the store cannot be opened or reached, or it failed |
 * | 130 | interrupted by Ctrl-C (any command but `watch` and `serve`, which Ctrl-C ends with 0) |
 *
 * @example
 * ```ts
 * import { EXIT_CODES, main } from "@xml-pipeline/shared-backend/cli";
 * import assert from "node:assert/strict";
 *
 * const code = await main(["frobnicate"], { stderr: () => {}, env: {} });
 * assert.equal(code, EXIT_CODES.usage);
 * ```
 */
export const EXIT_CODES: Readonly<{
  ok: 0;
  notFound: 1;
  usage: 2;
  unreachable: 3;
  interrupted: 130;
}> = Object.freeze({
  ok: 0,
  notFound: 1,
  usage: 2,
  unreachable: 3,
  interrupted: 130,
});

/**
 * Where {@linkcode main} reads its configuration and writes its output. Every
 * field is optional: the defaults are the process's.
 *
 * @example Capture the output
 * ```ts
 * import { type CliIo, main } from "@xml-pipeline/shared-backend/cli";
 * import assert from "node:assert/strict";
 *
 * let output = "";
 * const io: CliIo = { stdout: (text) => output += text, env: {} };
 * assert.equal(await main(["--help"], io), 0);
 * assert.match(output, /Commands:/);
 * ```
 */
export interface CliIo {
  /**
   * Receives what the command prints (text ending in a newline).
   *
   * @default {writes to Deno.stdout}
   */
  stdout?: (text: string) => void;
  /**
   * Receives errors and notes.
   *
   * @default {writes to Deno.stderr}
   */
  stderr?: (text: string) => void;
  /**
   * The environment variables the configuration is read from, as
   * `configFromEnv` reads them.
   *
   * @default {Deno.env.toObject(), or none without --allow-env}
   */
  env?: Record<string, string | undefined>;
  /**
   * An open backend to inspect instead of opening one from the
   * configuration; it is left open. The store flags are then not allowed.
   *
   * @default {undefined}
   */
  backend?: SharedBackend;
  /**
   * Ends a streaming command (`watch`, `serve`: exit 0) and interrupts any
   * other (exit 130). The command line passes Ctrl-C here.
   *
   * @default {a signal that never aborts}
   */
  signal?: AbortSignal;
}

/**
 * Runs the inspector with command-line arguments, as `deno task cli` does.
 * It never calls `Deno.exit`: it returns the exit code.
 *
 * @param args The arguments: store options, a command, its arguments and flags.
 * @param io Where the configuration comes from and the output goes; default: the process's.
 * @returns The exit code, one of {@linkcode EXIT_CODES}.
 *
 * @example Look up a chain, as text and as JSON
 * ```ts
 * import { main } from "@xml-pipeline/shared-backend/cli";
 * import { InMemoryBackend, ThreadRegistry } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const uuid = await new ThreadRegistry(backend).getOrCreate("console.router.greeter");
 *
 * let output = "";
 * const io = { backend, stdout: (text: string) => output += text };
 * assert.equal(await main(["chain", "console.router.greeter"], io), 0);
 * assert.equal(output, `${uuid}\n`);
 *
 * output = "";
 * assert.equal(await main(["uuid", uuid, "--json"], io), 0);
 * assert.deepEqual(JSON.parse(output), { uuid, chain: "console.router.greeter" });
 *
 * assert.equal(await main(["chain", "nobody.home"], { ...io, stderr: () => {} }), 1);
 * ```
 *
 * @example Show a thread's slots
 * ```ts
 * import { main } from "@xml-pipeline/shared-backend/cli";
 * import { InMemoryBackend, serializeSlot } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * await backend.bufferAppend("t1", serializeSlot({ text: "hi", at: new Date(0) }));
 *
 * let output = "";
 * assert.equal(await main(["show", "t1"], { backend, stdout: (text) => output += text }), 0);
 * assert.match(output, /#0 +\d+ B +\{"text":"hi","at":\{"\$date":"1970-01-01T00:00:00.000Z"\}\}/);
 * ```
 */
export async function main(args: string[], io: CliIo = {}): Promise<number> {
  const stdout = io.stdout ?? ((text: string) => writeAll(Deno.stdout, text));
  const stderr = io.stderr ?? ((text: string) => writeAll(Deno.stderr, text));
  const json = args.includes("--json");
  let secrets: string[] = [];
  /** Ctrl-C came: 130 is returned, whatever the work behind says. */
  let interrupted = false;
  const redact = (text: string): string => {
    for (const secret of secrets) text = text.replaceAll(secret, "***");
    return text;
  };
  const fail = (error: unknown): number => {
    if (interrupted) return EXIT_CODES.interrupted;
    const code = exitCodeOf(error);
    const message = redact(errorMessage(error));
    stderr(
      json
        ? `${JSON.stringify({ error: message, exitCode: code })}\n`
        : `cli: ${message}\n`,
    );
    return code;
  };

  let parsed;
  try {
    parsed = parseCommandLine(args);
  } catch (error) {
    return fail(error);
  }
  if (parsed.text !== undefined) {
    stdout(parsed.text);
    return EXIT_CODES.ok;
  }

  const invocation = parsed;
  const signal = io.signal ?? new AbortController().signal;
  const streaming = STREAMING.has(invocation.command);
  // Set once a streaming command runs: from then on Ctrl-C is its end (exit
  // 0), not an interruption.
  let running = false;

  const execute = async (): Promise<number> => {
    let backend: SharedBackend;
    let config: BackendConfig | undefined;
    let store: string;
    let prefix: string | null;
    if (io.backend !== undefined) {
      for (const [flag, value] of Object.entries(invocation.store)) {
        if (value !== undefined) {
          return fail(usageError(`--${flag} cannot be used with io.backend`));
        }
      }
      backend = io.backend;
      store = `the given ${backend.kind} backend`;
      prefix = null; // not known from the protocol
    } else {
      try {
        config = storeConfig(invocation.store, io.env ?? processEnv());
        secrets = secretsOf(config);
        store = describeStore(config);
        prefix = storePrefix(config);
        if (isMemoryStore(config)) {
          stderr(
            "cli: note: the memory backend is this process's own, empty store; " +
              "use --backend kv|redis (or XP_BACKEND) to inspect a shared one\n",
          );
        }
        await checkKvFile(config, invocation.store.create === true);
        backend = await openStore(config);
      } catch (error) {
        return fail(error);
      }
    }
    const admin = new AdminAccess(config);
    const out: Channel = {
      write: stdout,
      note: (text) => stderr(`cli: ${redact(text)}`),
      json,
      signal,
    };
    try {
      if (!(await backend.ping())) {
        throw new CliError("unreachable", `the store ${store} does not answer`);
      }
      running = true;
      const output = await runCommand(
        invocation,
        backend,
        { store, prefix },
        admin,
        out,
      );
      if (output !== null && !interrupted) {
        stdout(
          json ? `${JSON.stringify(output.json, null, 2)}\n` : output.text,
        );
      }
      return EXIT_CODES.ok;
    } catch (error) {
      return fail(error);
    } finally {
      await admin.close();
      if (io.backend === undefined) await backend.close().catch(() => {});
    }
  };

  // Ctrl-C ends a running streaming command (its own way, exit 0) and
  // interrupts anything else at once (exit 130; the work ends behind).
  let onAbort: (() => void) | undefined;
  const interruption = new Promise<number>((resolve) => {
    onAbort = () => {
      if (streaming && running) return;
      interrupted = true;
      stderr(
        json
          ? `${
            JSON.stringify({
              error: "interrupted",
              exitCode: EXIT_CODES.interrupted,
            })
          }\n`
          : "cli: interrupted\n",
      );
      resolve(EXIT_CODES.interrupted);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([execute(), interruption]);
  } finally {
    signal.removeEventListener("abort", onAbort!);
  }
}

/** The exit code of a failure: its own, or by the kind of error. */
function exitCodeOf(error: unknown): number {
  if (error instanceof CliError) return EXIT_CODES[error.exit];
  if (error instanceof BackendError) return EXIT_CODES.unreachable;
  if (error instanceof TypeError || error instanceof RangeError) {
    return EXIT_CODES.usage;
  }
  return EXIT_CODES.notFound;
}

const encoder = new TextEncoder();

function writeAll(file: { writeSync(p: Uint8Array): number }, text: string) {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(file.writeSync(bytes));
}

function processEnv(): Record<string, string | undefined> {
  try {
    return Deno.env.toObject();
  } catch {
    return {}; // no --allow-env: flags only
  }
}

if (import.meta.main) {
  // Ctrl-C ends watch and serve (exit 0) and interrupts any other command
  // (exit 130); a second Ctrl-C exits at once.
  const stop = new AbortController();
  const onInterrupt = () => {
    if (stop.signal.aborted) Deno.exit(EXIT_CODES.interrupted);
    stop.abort();
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  const code = await main(Deno.args, { signal: stop.signal });
  Deno.removeSignalListener("SIGINT", onInterrupt);
  Deno.exit(code);
}
