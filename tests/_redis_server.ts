/**
 * Test harness: real `redis-server` processes for tests and benchmarks.
 *
 * {@linkcode startRedisServer} starts a `redis-server` (the binary found on
 * `PATH`) on a free `127.0.0.1` port with its own temporary directory, waits
 * until it answers `PING`, and returns its URL and a `stop()` that ends it by
 * pid. When the environment variable `XP_TEST_REDIS_URL` is set, it returns
 * that server instead (and `stop()` leaves it running), unless the caller
 * needs a server of its own (`own: true`, e.g. to restart it).
 *
 * Needs `--allow-run=redis-server --allow-net=127.0.0.1 --allow-read
 * --allow-write --allow-env` (or `-A`).
 *
 * @example Start, use, stop
 * ```ts ignore
 * import { startRedisServer } from "./_redis_server.ts";
 *
 * await using server = await startRedisServer();
 * console.log(server.url); // redis://127.0.0.1:40123
 * // ... open backends with { redisUrl: server.url } ...
 * ```
 *
 * @example Restart a durable server mid-test
 * ```ts ignore
 * const server = await startRedisServer({ own: true, appendonly: true });
 * await server.restart({ signal: "SIGKILL", downMs: 500 });
 * await server.stop();
 * ```
 *
 * @module
 */

/** Options of {@linkcode startRedisServer}. */
export interface RedisServerOptions {
  /**
   * Always start a server, even when `XP_TEST_REDIS_URL` is set: for tests
   * that restart or reconfigure it.
   *
   * @default {false}
   */
  own?: boolean;
  /**
   * Start with `appendonly yes` and `appendfsync always`, so every
   * acknowledged write survives even a `SIGKILL`.
   *
   * @default {false}
   */
  appendonly?: boolean;
  /**
   * A password (`requirepass`); the URL then carries it.
   *
   * @default {undefined}
   */
  password?: string;
  /**
   * More `redis-server` arguments, e.g. `["--maxmemory", "10mb"]`.
   *
   * @default {[]}
   */
  args?: string[];
}

/** Options of {@linkcode RedisServer.restart}. */
export interface RedisRestartOptions {
  /**
   * How to end the running process: `SIGKILL` (a crash) or `SIGTERM` (a
   * clean shutdown).
   *
   * @default {"SIGKILL"}
   */
  signal?: "SIGKILL" | "SIGTERM";
  /**
   * How long the server stays down before it starts again, in milliseconds.
   *
   * @default {0}
   */
  downMs?: number;
}

/** A running Redis server for a test. Stop it with `stop()` or `await using`. */
export interface RedisServer extends AsyncDisposable {
  /** `redis://[:password@]127.0.0.1:port`. */
  readonly url: string;
  /** The host, `127.0.0.1` for a started server. */
  readonly host: string;
  /** The TCP port. */
  readonly port: number;
  /** The process id, or `undefined` for a server from `XP_TEST_REDIS_URL`. */
  readonly pid: number | undefined;
  /** `true` when the server comes from `XP_TEST_REDIS_URL` (not ours to stop). */
  readonly external: boolean;
  /**
   * The server's own temporary directory (`--dir`, logs, AOF), removed by
   * `stop()`; `undefined` for an external server. For code that must clean
   * up synchronously (an `unload` handler): kill `pid`, then remove `dir`.
   */
  readonly dir: string | undefined;
  /**
   * Ends the process (by pid) and, after `downMs`, starts it again on the
   * same port and directory, then waits until it answers.
   *
   * @throws {Error} The server is external.
   */
  restart(options?: RedisRestartOptions): Promise<void>;
  /** Ends the process (`SIGTERM`, then `SIGKILL` after 5 s) and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

/** The variable naming an external server to use instead of starting one. */
export const REDIS_URL_VARIABLE = "XP_TEST_REDIS_URL";

/**
 * Starts a `redis-server` on a free `127.0.0.1` port (or returns the one in
 * `XP_TEST_REDIS_URL`).
 *
 * @param options Persistence, password, more arguments.
 * @returns The running server.
 * @throws {Error} `redis-server` is not on `PATH` (the message says how to
 * install it), or it did not start (the message quotes its log).
 */
export async function startRedisServer(
  options: RedisServerOptions = {},
): Promise<RedisServer> {
  const external = options.own ? undefined : readExternalUrl();
  if (external !== undefined) return externalServer(external);
  const dir = await Deno.makeTempDir({ prefix: "xp-redis-" });
  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = freePort();
    try {
      const child = await spawn(port, dir, options);
      return new OwnServer(port, dir, options, child);
    } catch (error) {
      lastError = error;
      if (error instanceof MissingBinaryError) break;
    }
  }
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  throw lastError;
}

class MissingBinaryError extends Error {
  constructor(cause: unknown) {
    super(
      "redis-server was not found on PATH: install it (Debian/Ubuntu: apt-get install -y redis-server) or set XP_TEST_REDIS_URL to a server to use",
      { cause },
    );
    this.name = "MissingBinaryError";
  }
}

function readExternalUrl(): string | undefined {
  try {
    const url = Deno.env.get(REDIS_URL_VARIABLE);
    return url === undefined || url === "" ? undefined : url;
  } catch {
    return undefined; // no --allow-env: start our own
  }
}

function externalServer(url: string): RedisServer {
  const parsed = new URL(url);
  return {
    url,
    host: parsed.hostname,
    port: Number(parsed.port || 6379),
    pid: undefined,
    external: true,
    dir: undefined,
    restart(): Promise<void> {
      return Promise.reject(
        new Error(
          `Cannot restart the external server of ${REDIS_URL_VARIABLE}: start one with { own: true }`,
        ),
      );
    },
    stop: () => Promise.resolve(),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

class OwnServer implements RedisServer {
  readonly host = "127.0.0.1";
  readonly external = false;
  readonly url: string;
  readonly port: number;
  readonly #dir: string;
  readonly #options: RedisServerOptions;
  #child: Deno.ChildProcess | undefined;
  #stopped = false;

  constructor(
    port: number,
    dir: string,
    options: RedisServerOptions,
    child: Deno.ChildProcess,
  ) {
    this.port = port;
    this.#dir = dir;
    this.#options = options;
    this.#child = child;
    const auth = options.password === undefined
      ? ""
      : `:${encodeURIComponent(options.password)}@`;
    this.url = `redis://${auth}127.0.0.1:${port}`;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get dir(): string {
    return this.#dir;
  }

  async restart(options: RedisRestartOptions = {}): Promise<void> {
    if (this.#stopped) throw new Error("Cannot restart a stopped server");
    await this.#end(options.signal ?? "SIGKILL");
    if (options.downMs) {
      await new Promise((resolve) => setTimeout(resolve, options.downMs));
    }
    this.#child = await spawn(this.port, this.#dir, this.#options);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#end("SIGTERM");
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  async #end(signal: Deno.Signal): Promise<void> {
    const child = this.#child;
    if (child === undefined) return;
    this.#child = undefined;
    try {
      child.kill(signal);
    } catch {
      // already exited
    }
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
    }, 5_000);
    try {
      await child.status;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** A port that was free a moment ago (the OS picks it). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function spawn(
  port: number,
  dir: string,
  options: RedisServerOptions,
): Promise<Deno.ChildProcess> {
  const logfile = `${dir}/redis-${port}.log`;
  const args = [
    "--bind",
    "127.0.0.1",
    "--port",
    String(port),
    "--dir",
    dir,
    "--save",
    "",
    "--daemonize",
    "no",
    "--logfile",
    logfile,
    "--protected-mode",
    "yes",
    ...(options.appendonly
      ? ["--appendonly", "yes", "--appendfsync", "always"]
      : ["--appendonly", "no"]),
    ...(options.password === undefined
      ? []
      : ["--requirepass", options.password]),
    ...(options.args ?? []),
  ];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("redis-server", {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new MissingBinaryError(error);
    }
    throw error;
  }
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && !exited) {
    if (await answersPing(port, options.password)) return child;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  if (!exited) {
    try {
      child.kill("SIGKILL");
    } catch {
      // exited meanwhile
    }
  }
  const { code } = await status;
  const log = await Deno.readTextFile(logfile).catch(() => "");
  throw new Error(
    `redis-server on 127.0.0.1:${port} did not start (exit code ${code}): ${
      log.trim().split("\n").slice(-5).join(" | ")
    }`,
  );
}

/** Whether a server on the port answers `PING` (with AUTH when a password is set). */
async function answersPing(port: number, password?: string): Promise<boolean> {
  let conn: Deno.TcpConn | undefined;
  let closed = false;
  let timedOut = false;
  const close = () => {
    if (conn !== undefined && !closed) {
      closed = true;
      conn.close();
    }
  };
  // Whatever holds the port must answer within 1 s (a read never hangs).
  const timer = setTimeout(() => {
    timedOut = true;
    close();
  }, 1_000);
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    if (timedOut) return false;
    const auth = password === undefined
      ? ""
      : `*2\r\n$4\r\nAUTH\r\n$${
        new TextEncoder().encode(password).length
      }\r\n${password}\r\n`;
    await conn.write(new TextEncoder().encode(`${auth}*1\r\n$4\r\nPING\r\n`));
    const buffer = new Uint8Array(256);
    let text = "";
    while (!text.includes("PONG")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += new TextDecoder().decode(buffer.subarray(0, n));
      if (text.includes("-LOADING")) return false;
    }
    return text.includes("PONG");
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    close();
  }
}
