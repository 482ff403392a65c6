// The connection of a Redis backend: opening it (or adopting a client the
// caller passed in), watching it, classifying and wording its failures, and
// ending it.
//
// It owns the ioredis options of a connection it opens (no offline queue, no
// resend of commands in flight, no retry per request: a failed command comes
// back at once, and the backend's own retries, which know the deadline and
// make every retry apply once, take over), the watchdog that cuts a
// connection gone silent, what a failure means (sent or not, run or not), and
// the endpoint's description in messages. It loads ioredis (a literal
// dynamic import, evaluated only when a backend connects).
//
// It must never send a command twice (retrying is _redis_ops.ts's job),
// never know the key layout or the scripts, never close a client it did not
// open, and never put a password in a message.

import { withTimeout } from "../_async.ts";
import { errorMessage } from "../_messages.ts";
import { BackendError } from "../errors.ts";
import type {
  IoredisModule,
  RedisClientLike,
  RedisClientOptions,
} from "./_redis_client.ts";

/** How long opening (or adopting) a connection waits for the server to answer. */
export const CONNECT_TIMEOUT_MS = 4_000;
/**
 * How long a connection may stay silent (no data at all) while a reply is due
 * before it is dropped (the waiting calls reject) and reconnected.
 */
export const SOCKET_TIMEOUT_MS = 4_000;
/** How long `close()` waits for `QUIT` and the socket's end before it cuts the connection. */
const CLOSE_TIMEOUT_MS = 2_000;

/**
 * The ioredis options of a connection opened here: no offline queue (a call
 * made while disconnected fails at once, nothing sent), no resending of
 * commands in flight when the connection drops, no retry per request. The
 * backend retries itself, until its deadline, waking up as soon as the
 * connection is ready again ({@linkcode RedisConnection.whenReady}).
 */
const CLIENT_OPTIONS: RedisClientOptions = {
  // No `socketTimeout`: the connection's own watchdog (see #watch) does that
  // job with one timer per connection instead of one per round trip.
  // RESP2: our scripts reply with integers, strings and arrays, the same in
  // RESP2 and RESP3; RESP2 saves the HELLO handshake and works through
  // proxies that refuse HELLO. Pinned so that an ioredis upgrade cannot
  // change the wire protocol under us.
  protocol: 2,
  lazyConnect: true,
  enableOfflineQueue: false,
  autoResendUnfulfilledCommands: false,
  maxRetriesPerRequest: 0,
  connectTimeout: CONNECT_TIMEOUT_MS,
  // Reconnect fast (a restarted server is back within a second or so): 50,
  // 100, 150 ... ms, at most 500 ms between attempts.
  retryStrategy: (times: number) => Math.min(50 * times, 500),
};

/**
 * What became of a command that failed, as far as the client's error tells:
 *
 * - `"unsent"`: the connection was down and nothing was sent (no offline
 *   queue here, or a Cluster that is not ready);
 * - `"refused"`: the server replied with an error that means it did not run
 *   the command and may run it later (`MOVED`, `ASK`, `TRYAGAIN`,
 *   `CLUSTERDOWN`, `READONLY` of a demoted master, `LOADING` after a
 *   restart, `MASTERDOWN`, `BUSY`);
 * - `"lost"`: the command was written but its reply never came (the
 *   connection dropped or went silent): the server may or may not have run
 *   it;
 * - `"failed"`: the server replied with another error (retrying would not
 *   help).
 */
export type FailureKind = "unsent" | "refused" | "lost" | "failed";

/** Replies of a server that did not run the command, and may later. */
const REFUSED =
  /^(?:ReplyError: )?(?:MOVED|ASK|TRYAGAIN|CLUSTERDOWN|READONLY|LOADING|MASTERDOWN|BUSY|NOREPLICAS)\b/;

/** Classifies a command's failure by the client's error (see {@linkcode FailureKind}). */
export function failureKind(error: unknown): FailureKind {
  let message = errorMessage(error);
  // ioredis' Cluster gave up redirecting: what matters is its last error.
  const last = /^Too many Cluster redirections\. Last error: (.*)$/s.exec(
    message,
  );
  if (last) message = last[1]!;
  if (REFUSED.test(message)) return "refused";
  // ioredis refused to send: the connection is down and there is no offline
  // queue, or a Cluster has no node to send it to yet.
  if (
    /enableOfflineQueue|isn't ready|None of startup nodes is available|Failed to refresh slots cache/
      .test(message)
  ) {
    return "unsent";
  }
  if (
    /max retries per request|Connection is closed|Socket timeout|no reply|aborted|ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|closed|ended/i
      .test(message)
  ) {
    return "lost";
  }
  return "failed";
}

/**
 * One connection to Redis, opened with {@linkcode RedisConnection.open} or
 * adopted with {@linkcode RedisConnection.adopt}. Every command goes through
 * {@linkcode RedisConnection.send}, so that none waits forever for a reply.
 */
export class RedisConnection {
  /** The ioredis client: commands are sent on it through {@linkcode send}. */
  readonly client: RedisClientLike;
  /** `host:port` of the server (never the password), for messages. */
  readonly endpoint: string;
  /** Whether this connection was opened here (and is ended by `close()`). */
  readonly #owned: boolean;
  #closed = false;
  /** Commands sent through this connection awaiting a reply (for the watchdog). */
  #awaiting = 0;
  /** When the last reply arrived, or the first awaited command was sent (`performance.now()`). */
  #lastProgress = 0;
  #watchdog: ReturnType<typeof setTimeout> | undefined;
  /**
   * Calls waiting on an injected client, each one's early rejection: the
   * watchdog cannot cut a socket it does not own, and such a client may
   * never settle a call whose connection dropped (see {@linkcode #watched}).
   */
  readonly #abandon = new Set<(error: Error) => void>();

  private constructor(
    client: RedisClientLike,
    owned: boolean,
    endpoint: string,
  ) {
    this.client = client;
    this.#owned = owned;
    this.endpoint = endpoint;
    if (owned) {
      // The watchdog counts any data as progress (a long reply arrives in
      // chunks): listen to each connection's socket, the first and every
      // reconnected one.
      const listen = () =>
        (client as { stream?: { on(event: "data", f: () => void): void } })
          .stream?.on("data", this.#progress);
      listen();
      client.on("ready", listen);
    }
  }

  /**
   * Opens a connection to the server of `url` (loading ioredis first) and
   * resolves once the server answers.
   *
   * @throws {TypeError} `url` is not a `redis://` or `rediss://` URL.
   * @throws {BackendError} The server refused the connection or did not
   * answer within {@linkcode CONNECT_TIMEOUT_MS}; the message names host and
   * port, never the password.
   */
  static async open(url: string): Promise<RedisConnection> {
    const endpoint = describeUrl(url);
    const { Redis } = await loadIoredis();
    const client = new Redis(url, CLIENT_OPTIONS);
    let lastError: Error | undefined;
    // Without a listener ioredis prints every connection error; calls report them instead.
    client.on("error", (error) => {
      lastError = error instanceof Error ? error : new Error(String(error));
    });
    const connected = client.connect().catch((error) => {
      // Closed during the handshake without a socket error (not refused):
      // ioredis connects again by itself; wait for it, within the timeout.
      if (lastError !== undefined || client.status === "end") throw error;
      return new Promise<void>((resolve, reject) => {
        client.once("ready", () => resolve());
        client.once("end", () => reject(lastError ?? error));
      });
    });
    try {
      await withTimeout(connected, CONNECT_TIMEOUT_MS, () => {
        throw new Error(`no answer within ${CONNECT_TIMEOUT_MS} ms`);
      });
    } catch (error) {
      await endConnection(client, false);
      const cause = lastError ?? error;
      throw new BackendError(
        `Cannot connect to Redis at ${endpoint}: ${
          redact(errorMessage(cause), url)
        }`,
        { cause },
      );
    }
    return new RedisConnection(client, true, endpoint);
  }

  /**
   * Adopts a client the caller passed in (`redisClient`) once it answers
   * `PING`. `close()` leaves it open: the caller owns it.
   *
   * @throws {TypeError} `value` is not an ioredis client.
   * @throws {BackendError} It does not answer within
   * {@linkcode CONNECT_TIMEOUT_MS}, or fails.
   */
  static async adopt(value: unknown): Promise<RedisConnection> {
    const client = checkClient(value);
    const endpoint = describeClient(client);
    // The caller's client may queue commands until it connects: check that
    // it answers now rather than let the first call hang.
    try {
      await withTimeout(client.ping(), CONNECT_TIMEOUT_MS, () => {
        throw new Error(`no answer within ${CONNECT_TIMEOUT_MS} ms`);
      });
    } catch (error) {
      throw new BackendError(
        `Cannot use the redisClient for ${endpoint}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
    return new RedisConnection(client, false, endpoint);
  }

  /**
   * Sends one command (`command` sends it on {@linkcode client}, at once)
   * under the watchdog, and settles like its reply. A reply that does not
   * come rejects within {@linkcode SOCKET_TIMEOUT_MS} of silence.
   */
  async send<T>(command: () => Promise<T>): Promise<T> {
    this.#sent();
    try {
      return await this.#watched(command());
    } finally {
      this.#replied();
    }
  }

  /**
   * What became of a failed command, in words for a message (host and port,
   * never the password): "not connected to Redis at h:p", "Redis at h:p
   * refused it: MOVED ...", "the connection to Redis at h:p was lost before
   * the reply", "Redis at h:p failed: ...".
   */
  state(error: unknown): string {
    switch (failureKind(error)) {
      case "unsent":
        return `not connected to Redis at ${this.endpoint}`;
      case "refused":
        return `Redis at ${this.endpoint} refused it: ${errorMessage(error)}`;
      case "lost":
        return `the connection to Redis at ${this.endpoint} was lost before the reply`;
      case "failed":
        return `Redis at ${this.endpoint} failed: ${errorMessage(error)}`;
    }
  }

  /** Whether {@linkcode close} was called: nothing is retried any more. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Resolves when the client is ready (at once if it is), or after `ms`:
   * what a retry waits for after a failure, so that it goes out as soon as
   * the connection is back.
   */
  whenReady(ms: number): Promise<void> {
    if (this.client.status === "ready" || ms <= 0) {
      return new Promise((resolve) => setTimeout(resolve, Math.max(ms, 0)));
    }
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.client.off("ready", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.client.once("ready", done);
    });
  }

  /**
   * Stops the watchdog and, for a connection opened here, sends `QUIT` and
   * waits until the socket has ended (cutting it after 2 s). An adopted
   * client is left open.
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#watchdog);
    this.#watchdog = undefined;
    if (this.#owned) await endConnection(this.client, true);
  }

  #progress = (): void => {
    this.#lastProgress = performance.now();
  };

  /** Bookkeeping of the watchdog: a command was sent. */
  #sent(): void {
    if (this.#awaiting++ === 0) this.#lastProgress = performance.now();
    if (this.#watchdog === undefined) {
      this.#watchdog = setTimeout(this.#watch, SOCKET_TIMEOUT_MS);
      Deno.unrefTimer(this.#watchdog as unknown as number);
    }
  }

  /** Bookkeeping of the watchdog: a reply (or a failure) arrived. */
  #replied(): void {
    this.#awaiting--;
    this.#lastProgress = performance.now();
  }

  /**
   * A reply of an injected client, or an early rejection by the watchdog.
   * ioredis never settles a command in flight when the connection drops and
   * comes back within `maxRetriesPerRequest` attempts (its default, 20) with
   * `autoResendUnfulfilledCommands: false`: without this, such a call (and
   * `close()`, which waits for appends) would hang forever. A connection
   * opened here needs none of it (`maxRetriesPerRequest: 0`, and the
   * watchdog cuts its socket).
   */
  #watched<T>(reply: Promise<T>): Promise<T> {
    if (this.#owned) return reply;
    return new Promise<T>((resolve, reject) => {
      const abandon = (error: Error) => {
        this.#abandon.delete(abandon);
        reject(error);
      };
      this.#abandon.add(abandon);
      reply.then(
        (value) => {
          if (this.#abandon.delete(abandon)) resolve(value);
        },
        (error) => {
          if (this.#abandon.delete(abandon)) reject(error);
        },
      );
    });
  }

  /**
   * The watchdog: when commands have waited {@linkcode SOCKET_TIMEOUT_MS}
   * without any data (on an injected client: without any reply to this
   * connection's commands), the server is taken for hung. A connection
   * opened here has its socket destroyed: the waiting calls reject and
   * ioredis reconnects. On an injected client, which is not ours to cut, the
   * waiting calls reject (a late reply is dropped). One timer per
   * connection, re-armed only while commands wait (cheaper than ioredis'
   * `socketTimeout`, which arms a timer per round trip).
   */
  #watch = (): void => {
    this.#watchdog = undefined;
    if (this.#awaiting === 0) return;
    const silent = performance.now() - this.#lastProgress;
    if (silent >= SOCKET_TIMEOUT_MS) {
      const error = new Error(`no reply within ${SOCKET_TIMEOUT_MS} ms`);
      if (this.#owned) {
        const stream =
          (this.client as { stream?: { destroy(e: Error): void } }).stream;
        stream?.destroy(error);
      } else {
        for (const abandon of [...this.#abandon]) abandon(error);
      }
      this.#lastProgress = performance.now();
    }
    this.#watchdog = setTimeout(
      this.#watch,
      Math.max(1, SOCKET_TIMEOUT_MS - (performance.now() - this.#lastProgress)),
    );
    Deno.unrefTimer(this.#watchdog as unknown as number);
  };
}

/**
 * Loads ioredis. The import names its module literally (the `"ioredis"`
 * entry of deno.json's import map holds the version, in one place), so
 * Deno Deploy, `deno install`, lockfiles, `deno compile` and JSR see it; a
 * dynamic import, so it is evaluated only here, when a backend connects:
 * importing `mod.ts` evaluates no ioredis code.
 *
 * @throws {BackendError} ioredis cannot load: without `--allow-env` (its
 * dependency `debug` reads the whole environment when it loads) the message
 * names the flag to add.
 */
export async function loadIoredis(): Promise<IoredisModule> {
  try {
    return await import("ioredis") as unknown as IoredisModule;
  } catch (error) {
    const denied = error instanceof Error &&
      (error.name === "NotCapable" || error.name === "PermissionDenied");
    const flag = /--allow-[a-z-]+/.exec(errorMessage(error))?.[0] ??
      "--allow-env";
    const why = flag === "--allow-env"
      ? " (its dependency debug reads the environment when it loads)"
      : "";
    throw new BackendError(
      denied
        ? `Cannot load ioredis for the Redis backend: it needs ${flag}${why}; run Deno with ${flag}`
        : `Cannot load ioredis for the Redis backend: ${errorMessage(error)}`,
      { cause: error },
    );
  }
}

/** Ends a connection opened here: QUIT (when `graceful`), then wait for the socket's end. */
async function endConnection(
  client: RedisClientLike,
  graceful: boolean,
): Promise<void> {
  const status = client.status;
  if (status === "end") return;
  if (status === "reconnecting" || status === "close") {
    // No socket is open: disconnect() only cancels the reconnect timer (and emits nothing).
    client.disconnect();
    return;
  }
  const ended = new Promise<void>((resolve) => {
    client.once("end", () => resolve());
  });
  const cut = () => {
    client.disconnect();
    // disconnect() only half-closes: a server that never answers keeps the socket open.
    (client as { stream?: { destroy(): void } }).stream?.destroy();
  };
  if (graceful && status === "ready") {
    // quit() resolves on the server's OK, before the socket closes: wait for "end" too.
    client.quit().catch(cut);
  } else {
    cut();
  }
  await withTimeout(ended, CLOSE_TIMEOUT_MS, cut);
}

/**
 * The caller's `redisClient`, if it is an ioredis client. Any options are
 * fine: ioredis' offline queue, its resends after a reconnect and a
 * Cluster's resends after a failover only repeat calls that the scripts'
 * op records make apply once.
 */
function checkClient(value: unknown): RedisClientLike {
  const client = value as Partial<RedisClientLike> | null;
  if (
    typeof value !== "object" || client === null ||
    typeof client.defineCommand !== "function" ||
    typeof client.lrangeBuffer !== "function" ||
    typeof client.pipeline !== "function"
  ) {
    throw new TypeError(
      "Invalid redisClient: expected an ioredis Redis or Cluster client",
    );
  }
  return value as RedisClientLike;
}

/** `host:port` of an injected client's server, for messages. */
function describeClient(client: RedisClientLike): string {
  const options = client.options as
    | { host?: string; port?: number }
    | undefined;
  if (options?.host !== undefined) {
    return `${options.host}:${options.port ?? 6379}`;
  }
  const node = (client as { startupNodes?: unknown[] }).startupNodes?.[0] as
    | { host?: string; port?: number }
    | undefined;
  return node?.host !== undefined
    ? `${node.host}:${node.port ?? 6379} (cluster)`
    : "the redisClient's server";
}

/** `host:port` of a Redis URL, for messages (never the password). */
function describeUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new TypeError(
      "Invalid redisUrl: expected a redis:// or rediss:// URL",
    );
  }
  if (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:") {
    throw new TypeError(
      `Invalid redisUrl: expected a redis:// or rediss:// URL, got a ${parsed.protocol} URL`,
    );
  }
  return `${parsed.hostname || "localhost"}:${parsed.port || "6379"}`;
}

/** Removes the URL's password from a message, should a message quote it. */
function redact(message: string, url: string): string {
  let password = "";
  try {
    password = decodeURIComponent(new URL(url).password);
  } catch {
    // not a URL: nothing to redact
  }
  return password === "" ? message : message.split(password).join("***");
}
