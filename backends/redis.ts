/**
 * The Redis backend: shared state for pipelines that span machines, on
 * `npm:ioredis` (loaded with a dynamic `import()` when the backend connects,
 * so importing this module alone does not load it).
 *
 * - Every mutation is one Lua script: atomic and one round trip. An append
 *   checks both limits, pushes, refreshes the thread's TTL and its entry in
 *   the thread index, and returns the index, all in one step.
 * - Concurrent appends share script calls: appends made while a call is on
 *   the wire are sent together in the next one (any threads of the tenant).
 * - Keys of one tenant share a Redis Cluster hash tag (see
 *   `_redis_keys.ts`); listing, counting and clearing go through per-tenant
 *   indexes: no `KEYS`, no `SCAN`.
 * - An append is sent once: it is never retried or replayed by this backend
 *   or by its ioredis client. When a reply is lost the call rejects and says
 *   that the append may have been applied.
 *
 * Needs Redis >= 6.2.
 *
 * @example Open, append, read (needs a server)
 * ```ts ignore
 * import { RedisBackend } from "@xml-pipeline/shared-backend/redis";
 *
 * await using backend = await RedisBackend.open({ redisUrl: "redis://localhost:6379", prefix: "app:" });
 * const index = await backend.bufferAppend("thread-1", new TextEncoder().encode("hello"));
 * console.log(index, await backend.bufferGetThread("thread-1"));
 * ```
 *
 * @example An unreachable server rejects, naming host and port
 * ```ts
 * import { RedisBackend } from "@xml-pipeline/shared-backend/redis";
 * import assert from "node:assert/strict";
 *
 * await assert.rejects(
 *   RedisBackend.open({ redisUrl: "redis://:secret@127.0.0.1:1" }),
 *   (error: Error) => error.message.includes("127.0.0.1:1") && !error.message.includes("secret"),
 * );
 * ```
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { type BackendConfig, resolveConfig } from "../config.ts";
import {
  BackendClosedError,
  BackendError,
  SlotLimitError,
  ThreadLimitError,
} from "../errors.ts";
import type { BackendStats, SharedBackend } from "../protocol.ts";
import { checkId, checkRange, checkSlot, isSlotIndex } from "../_validate.ts";
import { type RedisKeys, redisKeys } from "./_redis_keys.ts";
import {
  IOREDIS_SPECIFIER,
  type IoredisModule,
  type RedisClientLike,
  type RedisClientOptions,
} from "./_redis_client.ts";
import { defineScripts, type ScriptCommands } from "./_redis_scripts.ts";

export type { BackendKind, BackendStats, SharedBackend } from "../protocol.ts";

/** How long `open()` waits for a server to answer before it rejects. */
const CONNECT_TIMEOUT_MS = 4_000;
/** How long `ping()` waits before it resolves `false`. */
const PING_TIMEOUT_MS = 2_000;
/**
 * How long a connection may stay silent (no data at all) while a reply is due
 * before it is dropped (the waiting calls reject) and reconnected.
 */
const SOCKET_TIMEOUT_MS = 4_000;
/** How long `close()` waits for `QUIT` and the socket's end before it cuts the connection. */
const CLOSE_TIMEOUT_MS = 2_000;
/** Most append script calls of one backend on the wire at once. */
const MAX_APPENDS_IN_FLIGHT = 2;
/** Most slots in one append script call (Lua's `unpack` limit is about 8000). */
const MAX_BATCH_SLOTS = 1_024;
/** Most bytes of slots in one append script call (one bigger slot goes alone). */
const MAX_BATCH_BYTES = 8 * 1024 * 1024;

/**
 * The ioredis options of a connection this backend opens itself. The ones
 * that make the no-replay guarantee: no offline queue (a call made while
 * disconnected rejects at once, nothing sent), no resending of commands in
 * flight when the connection drops, no retry per request.
 */
const CLIENT_OPTIONS: RedisClientOptions = {
  // No `socketTimeout`: the backend's own watchdog (see #watch) does that job
  // with one timer per backend instead of one per round trip.
  // RESP2: our scripts reply with integers, strings and flat arrays, the same
  // in RESP2 and RESP3; RESP2 saves the HELLO handshake and works through
  // proxies that refuse HELLO. Pinned so that an ioredis upgrade cannot
  // change the wire protocol under us.
  protocol: 2,
  lazyConnect: true,
  enableOfflineQueue: false,
  autoResendUnfulfilledCommands: false,
  maxRetriesPerRequest: 0,
  connectTimeout: CONNECT_TIMEOUT_MS,
  retryStrategy: (times: number) => Math.min(100 * times, 1_000),
};

type Client = RedisClientLike & ScriptCommands;

interface PendingAppend {
  slot: Buffer;
  resolve: (index: number) => void;
  reject: (error: unknown) => void;
}

/**
 * A {@linkcode SharedBackend} on Redis, for agents on many machines. Open it
 * with {@linkcode RedisBackend.open}; `createSharedBackend({ backendType:
 * "redis" })` does the same.
 *
 * Slots are stored as Redis list elements, byte for byte, and read back as
 * plain `Uint8Array`s. Each tenant (`prefix`) keeps its keys under one Redis
 * Cluster hash tag, so a tenant lives in one hash slot.
 *
 * Failures: a server that cannot be reached makes `open()` reject within
 * 5 s, naming host and port (never the password). When the connection drops
 * later, calls reject with a {@linkcode BackendError} (at once while
 * disconnected; within 4 s for a server that stops answering) and the
 * backend reconnects by itself. An append whose reply was lost rejects with
 * a message saying it may have been applied: it is never sent twice.
 *
 * @example A failure to connect is a BackendError (runs without a server)
 * ```ts
 * import { BackendError } from "@xml-pipeline/shared-backend";
 * import { RedisBackend } from "@xml-pipeline/shared-backend/redis";
 * import assert from "node:assert/strict";
 *
 * const error = await RedisBackend.open({ redisUrl: "redis://127.0.0.1:1" }).catch((e) => e);
 * assert.ok(error instanceof BackendError);
 * assert.match(error.message, /127\.0\.0\.1:1/);
 * ```
 *
 * @example Two tenants on one server (needs a server)
 * ```ts ignore
 * import { RedisBackend } from "@xml-pipeline/shared-backend/redis";
 *
 * await using a = await RedisBackend.open({ redisUrl: "redis://localhost:6379", prefix: "a:" });
 * await using b = await RedisBackend.open({ redisUrl: "redis://localhost:6379", prefix: "a:buffer:" });
 * await a.bufferAppend("t", new Uint8Array([1]));
 * console.log(await b.bufferListThreads()); // []
 * ```
 */
export class RedisBackend implements SharedBackend {
  /** Always `"redis"`. */
  readonly kind = "redis" as const;

  readonly #client: Client;
  readonly #owned: boolean;
  readonly #endpoint: string;
  readonly #keys: RedisKeys;
  readonly #ttlMs: number;
  readonly #maxSlotBytes: number;
  readonly #maxSlotsPerThread: number;
  readonly #maxThreads: number;
  /** The first ARGV of the append script: "ttlMs maxSlotsPerThread maxThreads". */
  readonly #appendArgs: string;
  /** Appends not sent yet, by thread, in call order. */
  #queue = new Map<string, PendingAppend[]>();
  #flushScheduled = false;
  /** Append script calls on the wire. */
  #appendsInFlight = 0;
  /** Called when no append is on the wire any more (close() waits with it). */
  #onDrained: (() => void) | undefined;
  /** Commands of this backend awaiting a reply (for the watchdog). */
  #awaiting = 0;
  /** When the last reply arrived, or the first awaited command was sent (`performance.now()`). */
  #lastProgress = 0;
  #watchdog: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;
  /**
   * Calls waiting on an injected client, each one's early rejection: the
   * watchdog cannot cut a socket it does not own, and such a client may
   * never settle a call whose connection dropped (see {@linkcode #guard}).
   */
  readonly #abandon = new Set<(error: Error) => void>();

  private constructor(
    client: Client,
    owned: boolean,
    endpoint: string,
    config: ReturnType<typeof resolveConfig>,
  ) {
    this.#client = client;
    this.#owned = owned;
    this.#endpoint = endpoint;
    this.#keys = redisKeys(config.prefix);
    this.#ttlMs = config.ttlMs;
    this.#maxSlotBytes = config.maxSlotBytes;
    this.#maxSlotsPerThread = config.maxSlotsPerThread;
    this.#maxThreads = config.maxThreads;
    this.#appendArgs =
      `${config.ttlMs} ${config.maxSlotsPerThread} ${config.maxThreads}`;
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

  #progress = (): void => {
    this.#lastProgress = performance.now();
  };

  /**
   * Connects to Redis and returns the backend once the server answers.
   *
   * With `redisClient`, that ioredis client is used as it is and left open by
   * `close()`. It must have been created with
   * `autoResendUnfulfilledCommands: false` (for a `Cluster`: in
   * `redisOptions`, and with `retryDelayOnFailover: 0`), or it could resend
   * an append whose reply was lost.
   *
   * @param config `redisUrl` (`redis://` or `rediss://`, with password and db
   * index) or `redisClient`; `prefix`, `ttlMs` and the limits.
   * @returns The open backend.
   * @throws {TypeError} A config field has the wrong type; `redisUrl` is not a
   * `redis://` or `rediss://` URL; `redisClient` is not an ioredis client
   * or resends commands whose reply was lost.
   * @throws {RangeError} A config number is out of range.
   * @throws {BackendError} The server (also an injected client's) does not
   * answer within 4 s, or refused the connection (a wrong password, say);
   * the message names host and port, never the password.
   *
   * @example An unreachable server
   * ```ts
   * import { RedisBackend } from "@xml-pipeline/shared-backend/redis";
   * import assert from "node:assert/strict";
   *
   * const started = Date.now();
   * await assert.rejects(RedisBackend.open({ redisUrl: "redis://127.0.0.1:1/2" }), /Redis at 127\.0\.0\.1:1/);
   * assert.ok(Date.now() - started < 5_000);
   * ```
   */
  static async open(config: BackendConfig = {}): Promise<RedisBackend> {
    const resolved = resolveConfig({ ...config, backendType: "redis" });
    if (resolved.redisClient !== undefined && resolved.redisClient !== null) {
      const client = checkClient(resolved.redisClient);
      const endpoint = describeClient(client);
      // The caller's client may queue commands until it connects: check that
      // it answers now rather than let the first call hang.
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          client.ping(),
          new Promise((_, reject) => {
            timer = setTimeout(
              () =>
                reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS} ms`)),
              CONNECT_TIMEOUT_MS,
            );
          }),
        ]);
      } catch (error) {
        throw new BackendError(
          `Cannot use the redisClient for ${endpoint}: ${messageOf(error)}`,
          { cause: error },
        );
      } finally {
        clearTimeout(timer);
      }
      defineScripts(client);
      return new RedisBackend(client, false, endpoint, resolved);
    }
    const endpoint = describeUrl(resolved.redisUrl);
    // A specifier in a variable: not part of the module graph, so importing this
    // module never loads (or lists) ioredis; it loads when a backend connects.
    const specifier: string = IOREDIS_SPECIFIER;
    const { Redis } = await import(specifier) as IoredisModule;
    const client = new Redis(resolved.redisUrl, CLIENT_OPTIONS) as Client;
    let lastError: Error | undefined;
    // Without a listener ioredis prints every connection error; calls report them instead.
    client.on("error", (error) => {
      lastError = error instanceof Error ? error : new Error(String(error));
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        client.connect(),
        new Promise((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new Error(`no answer within ${CONNECT_TIMEOUT_MS} ms`),
              ),
            CONNECT_TIMEOUT_MS,
          );
        }),
      ]);
    } catch (error) {
      await endConnection(client, false);
      const cause = lastError ?? error;
      throw new BackendError(
        `Cannot connect to Redis at ${endpoint}: ${
          redact(messageOf(cause), resolved.redisUrl)
        }`,
        { cause },
      );
    } finally {
      clearTimeout(timer);
    }
    defineScripts(client);
    return new RedisBackend(client, true, endpoint, resolved);
  }

  /** {@inheritDoc SharedBackend.bufferAppend} */
  bufferAppend(threadId: string, slot: Uint8Array): Promise<number> {
    try {
      this.#enter("bufferAppend");
      checkId("threadId", threadId);
      checkSlot(slot, this.#maxSlotBytes);
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<number>((resolve, reject) => {
      // A copy: the caller may change its array before the call is sent.
      const pending = { slot: toBuffer(slot), resolve, reject };
      if (
        this.#queue.size === 0 && this.#appendsInFlight < MAX_APPENDS_IN_FLIGHT
      ) {
        // Nothing is waiting: send it now, alone (no latency added).
        this.#sendAppends([[threadId, [pending]]]);
        return;
      }
      // Calls are on the wire: wait for one of them, then go in the next batch.
      const queued = this.#queue.get(threadId);
      if (queued === undefined) this.#queue.set(threadId, [pending]);
      else queued.push(pending);
      if (
        !this.#flushScheduled && this.#appendsInFlight < MAX_APPENDS_IN_FLIGHT
      ) {
        this.#flushScheduled = true;
        queueMicrotask(() => {
          this.#flushScheduled = false;
          this.#flush(MAX_APPENDS_IN_FLIGHT);
        });
      }
    });
  }

  /** {@inheritDoc SharedBackend.bufferGetThread} */
  async bufferGetThread(threadId: string): Promise<Uint8Array[]> {
    this.#enter("bufferGetThread");
    checkId("threadId", threadId);
    const slots = await this.#call(
      `read thread ${JSON.stringify(threadId)}`,
      () => this.#client.lrangeBuffer(this.#keys.thread(threadId), 0, -1),
    );
    return slots.map(toUint8Array);
  }

  /** {@inheritDoc SharedBackend.bufferGetRange} */
  async bufferGetRange(
    threadId: string,
    start: number,
    end?: number,
  ): Promise<Uint8Array[]> {
    this.#enter("bufferGetRange");
    checkId("threadId", threadId);
    checkRange(start, end);
    if (end !== undefined && end <= start) return [];
    const slots = await this.#call(
      `read thread ${JSON.stringify(threadId)}`,
      () =>
        this.#client.lrangeBuffer(
          this.#keys.thread(threadId),
          start,
          end === undefined ? -1 : end - 1,
        ),
    );
    return slots.map(toUint8Array);
  }

  /** {@inheritDoc SharedBackend.bufferGetSlot} */
  async bufferGetSlot(
    threadId: string,
    index: number,
  ): Promise<Uint8Array | null> {
    this.#enter("bufferGetSlot");
    checkId("threadId", threadId);
    if (!isSlotIndex(index)) return null;
    const slot = await this.#call(
      `read thread ${JSON.stringify(threadId)}`,
      () => this.#client.lindexBuffer(this.#keys.thread(threadId), index),
    );
    return slot === null ? null : toUint8Array(slot);
  }

  /** {@inheritDoc SharedBackend.bufferThreadLen} */
  async bufferThreadLen(threadId: string): Promise<number> {
    this.#enter("bufferThreadLen");
    checkId("threadId", threadId);
    return await this.#call(
      `read thread ${JSON.stringify(threadId)}`,
      () => this.#client.llen(this.#keys.thread(threadId)),
    );
  }

  /** {@inheritDoc SharedBackend.bufferThreadExists} */
  async bufferThreadExists(threadId: string): Promise<boolean> {
    this.#enter("bufferThreadExists");
    checkId("threadId", threadId);
    const count = await this.#call(
      `read thread ${JSON.stringify(threadId)}`,
      () => this.#client.exists(this.#keys.thread(threadId)),
    );
    return count > 0;
  }

  /** {@inheritDoc SharedBackend.bufferDeleteThread} */
  async bufferDeleteThread(threadId: string): Promise<boolean> {
    this.#enter("bufferDeleteThread");
    checkId("threadId", threadId);
    const existed = await this.#call(
      `delete thread ${JSON.stringify(threadId)}`,
      () =>
        this.#client.xpSbDeleteThread(
          this.#keys.threads,
          this.#keys.thread(threadId),
          threadId,
        ),
    );
    return existed > 0;
  }

  /** {@inheritDoc SharedBackend.bufferListThreads} */
  async bufferListThreads(): Promise<string[]> {
    this.#enter("bufferListThreads");
    return await this.#call(
      "list threads",
      () =>
        this.#client.xpSbListThreads(
          this.#keys.threads,
          this.#keys.threadPrefix,
        ),
    );
  }

  /** {@inheritDoc SharedBackend.bufferClear} */
  async bufferClear(): Promise<void> {
    this.#enter("bufferClear");
    await this.#call(
      "clear threads",
      () =>
        this.#client.xpSbClearThreads(
          this.#keys.threads,
          this.#keys.threadPrefix,
        ),
    );
  }

  /** {@inheritDoc SharedBackend.registrySet} */
  async registrySet(chain: string, uuid: string): Promise<void> {
    this.#enter("registrySet");
    checkId("chain", chain);
    checkId("uuid", uuid);
    await this.#call(
      `map chain ${JSON.stringify(chain)}`,
      () => this.#client.xpSbRegistrySet(...this.#pairArgs(chain, uuid)),
    );
  }

  /** {@inheritDoc SharedBackend.registrySetIfAbsent} */
  async registrySetIfAbsent(chain: string, uuid: string): Promise<string> {
    this.#enter("registrySetIfAbsent");
    checkId("chain", chain);
    checkId("uuid", uuid);
    return await this.#call(
      `map chain ${JSON.stringify(chain)}`,
      () =>
        this.#client.xpSbRegistrySetIfAbsent(...this.#pairArgs(chain, uuid)),
    );
  }

  /** {@inheritDoc SharedBackend.registryGetUuid} */
  async registryGetUuid(chain: string): Promise<string | null> {
    this.#enter("registryGetUuid");
    checkId("chain", chain);
    return await this.#call(
      `look up chain ${JSON.stringify(chain)}`,
      () => this.#client.get(this.#keys.chain(chain)),
    );
  }

  /** {@inheritDoc SharedBackend.registryGetChain} */
  async registryGetChain(uuid: string): Promise<string | null> {
    this.#enter("registryGetChain");
    checkId("uuid", uuid);
    return await this.#call(
      `look up uuid ${JSON.stringify(uuid)}`,
      () => this.#client.get(this.#keys.uuid(uuid)),
    );
  }

  /** {@inheritDoc SharedBackend.registryDelete} */
  async registryDelete(uuid: string): Promise<boolean> {
    this.#enter("registryDelete");
    checkId("uuid", uuid);
    const existed = await this.#call(
      `delete uuid ${JSON.stringify(uuid)}`,
      () =>
        this.#client.xpSbRegistryDelete(
          this.#keys.registry,
          this.#keys.uuid(uuid),
          uuid,
          this.#keys.chainPrefix,
        ),
    );
    return existed > 0;
  }

  /** {@inheritDoc SharedBackend.registryListAll} */
  async registryListAll(): Promise<Map<string, string>> {
    this.#enter("registryListAll");
    const flat = await this.#call(
      "list the registry",
      () =>
        this.#client.xpSbRegistryList(
          this.#keys.registry,
          this.#keys.uuidPrefix,
        ),
    );
    const all = new Map<string, string>();
    for (let i = 0; i + 1 < flat.length; i += 2) {
      all.set(flat[i]!, flat[i + 1]!);
    }
    return all;
  }

  /** {@inheritDoc SharedBackend.registryClear} */
  async registryClear(): Promise<void> {
    this.#enter("registryClear");
    await this.#call(
      "clear the registry",
      () =>
        this.#client.xpSbRegistryClear(
          this.#keys.registry,
          this.#keys.chainPrefix,
          this.#keys.uuidPrefix,
        ),
    );
  }

  /**
   * Checks that the server answers `PING`.
   *
   * @returns `true` if it does; `false` if it does not within 2 s or the
   * connection is down (it reconnects by itself meanwhile).
   * @throws {BackendClosedError} The backend is closed.
   */
  async ping(): Promise<boolean> {
    this.#enter("ping");
    let timer: ReturnType<typeof setTimeout> | undefined;
    // Watched like any call: a connection that went silent for good (a
    // half-open socket) is cut and reconnected even if only ping() is used.
    this.#sent();
    const reply = this.#guard(this.#client.ping()).then(
      (pong) => pong === "PONG",
      () => false,
    ).finally(() => this.#replied());
    try {
      return await Promise.race([
        reply,
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), PING_TIMEOUT_MS);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** {@inheritDoc SharedBackend.stats} */
  async stats(): Promise<BackendStats> {
    this.#enter("stats");
    const [threads, slots, registryEntries] = await this.#call(
      "count",
      () =>
        this.#client.xpSbStats(
          this.#keys.threads,
          this.#keys.registry,
          this.#keys.threadPrefix,
        ),
    );
    return {
      kind: this.kind,
      threads,
      slots,
      registryEntries,
      ttlMs: this.#ttlMs,
    };
  }

  /**
   * Closes the backend: sends the appends still queued, waits for every
   * append on the wire, then (for a connection it opened) sends `QUIT` and
   * waits until the socket has ended. An injected `redisClient` is left open.
   * Idempotent; afterwards every call rejects with
   * {@linkcode BackendClosedError}.
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#closed = true;
    this.#closing = (async () => {
      this.#flush(Infinity);
      if (this.#appendsInFlight > 0) {
        await new Promise<void>((resolve) => this.#onDrained = resolve);
      }
      clearTimeout(this.#watchdog);
      this.#watchdog = undefined;
      if (this.#owned) await endConnection(this.#client, true);
    })();
    return this.#closing;
  }

  /** Closes the backend: `await using backend = await RedisBackend.open(...)`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #enter(method: string): void {
    if (this.#closed) throw new BackendClosedError(this.kind, method);
  }

  #pairArgs(chain: string, uuid: string): string[] {
    return [
      this.#keys.registry,
      this.#keys.chain(chain),
      this.#keys.uuid(uuid),
      String(this.#ttlMs),
      chain,
      uuid,
      this.#keys.chainPrefix,
      this.#keys.uuidPrefix,
    ];
  }

  /** Runs one command, turning a store failure into a {@linkcode BackendError}. */
  async #call<T>(what: string, run: () => Promise<T>): Promise<T> {
    this.#sent();
    try {
      return await this.#guard(run());
    } catch (error) {
      throw this.#failure(`Cannot ${what}`, error, false);
    } finally {
      this.#replied();
    }
  }

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
   * this backend opened needs none of it (`maxRetriesPerRequest: 0`, and the
   * watchdog cuts its socket).
   */
  #guard<T>(reply: Promise<T>): Promise<T> {
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
   * backend), the server is taken for hung. A connection this backend opened
   * has its socket destroyed: the waiting calls reject and ioredis
   * reconnects. On an injected client, which is not ours to cut, the waiting
   * calls reject (a late reply is dropped). One timer per backend, re-armed
   * only while commands wait (cheaper than ioredis' `socketTimeout`, which
   * arms a timer per round trip).
   */
  #watch = (): void => {
    this.#watchdog = undefined;
    if (this.#awaiting === 0) return;
    const silent = performance.now() - this.#lastProgress;
    if (silent >= SOCKET_TIMEOUT_MS) {
      const error = new Error(`no reply within ${SOCKET_TIMEOUT_MS} ms`);
      if (this.#owned) {
        const stream =
          (this.#client as { stream?: { destroy(e: Error): void } }).stream;
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

  #failure(action: string, error: unknown, mutation: boolean): BackendError {
    const message = messageOf(error);
    let state: string;
    if (/enableOfflineQueue/.test(message)) {
      // ioredis refused to send: the connection is down and we keep no offline queue.
      state =
        `not connected to Redis at ${this.#endpoint} (it reconnects by itself); nothing was sent`;
    } else if (
      /max retries per request|Connection is closed|Socket timeout|no reply|aborted|ECONNRESET|EPIPE|ETIMEDOUT|closed/i
        .test(message)
    ) {
      // The command was written; its reply never came.
      state =
        `the connection to Redis at ${this.#endpoint} was lost before the reply${
          mutation
            ? "; it may or may not have been applied, and it is not retried"
            : ""
        }`;
    } else {
      state = `Redis at ${this.#endpoint} failed: ${message}`;
    }
    return new BackendError(`${action}: ${state}`, { cause: error });
  }

  /**
   * Sends queued appends as script calls, while fewer than `limit` are on the
   * wire. Each call takes whole threads from the front of the queue, up to
   * {@linkcode MAX_BATCH_SLOTS} slots and {@linkcode MAX_BATCH_BYTES} bytes.
   */
  #flush(limit: number): void {
    while (this.#queue.size > 0 && this.#appendsInFlight < limit) {
      const batch: [string, PendingAppend[]][] = [];
      let slots = 0;
      let bytes = 0;
      for (const [threadId, queued] of this.#queue) {
        let take = 0;
        while (
          take < queued.length && slots < MAX_BATCH_SLOTS &&
          (slots === 0 ||
            bytes + queued[take]!.slot.byteLength <= MAX_BATCH_BYTES)
        ) {
          bytes += queued[take]!.slot.byteLength;
          slots++;
          take++;
        }
        if (take === 0) break;
        if (take === queued.length) {
          this.#queue.delete(threadId);
          batch.push([threadId, queued]);
        } else {
          batch.push([threadId, queued.splice(0, take)]);
          break;
        }
      }
      this.#sendAppends(batch);
    }
  }

  /** Sends one append script call for a batch; settles every append in it. */
  #sendAppends(batch: [string, PendingAppend[]][]): void {
    const args: (string | number | Buffer)[] = [batch.length + 1];
    args.push(this.#keys.threads);
    for (const [threadId] of batch) args.push(this.#keys.thread(threadId));
    args.push(this.#appendArgs);
    if (batch.length > 1) {
      for (const [, queued] of batch) args.push(String(queued.length));
    }
    for (const [, queued] of batch) {
      for (const pending of queued) args.push(pending.slot);
    }
    this.#appendsInFlight++;
    this.#sent();
    this.#guard(this.#client.xpSbAppend(...args)).then(
      (reply) => {
        this.#replied();
        this.#settleAppends(batch, reply);
        this.#appendDone();
      },
      (error) => {
        this.#replied();
        for (const [threadId, queued] of batch) {
          const failure = this.#failure(
            `Cannot append to thread ${JSON.stringify(threadId)}`,
            error,
            true,
          );
          for (const pending of queued) pending.reject(failure);
        }
        this.#appendDone();
      },
    );
  }

  #settleAppends(
    batch: [string, PendingAppend[]][],
    reply: number | number[],
  ): void {
    for (let i = 0; i < batch.length; i++) {
      const [threadId, queued] = batch[i]!;
      const result = typeof reply === "number" ? reply : reply[i]!;
      if (result === -1) {
        const error = new ThreadLimitError(threadId, this.#maxThreads);
        for (const pending of queued) pending.reject(error);
        continue;
      }
      // See the append script: r >= 0 all appended from r; r <= -2 only -r - 2.
      const taken = result >= 0 ? queued.length : -result - 2;
      const start = result >= 0 ? result : this.#maxSlotsPerThread - taken;
      for (let k = 0; k < queued.length; k++) {
        if (k < taken) queued[k]!.resolve(start + k);
        else {
          queued[k]!.reject(
            new SlotLimitError(threadId, this.#maxSlotsPerThread),
          );
        }
      }
    }
  }

  #appendDone(): void {
    this.#appendsInFlight--;
    if (this.#queue.size > 0) {
      this.#flush(this.#closed ? Infinity : MAX_APPENDS_IN_FLIGHT);
    }
    if (this.#appendsInFlight === 0 && this.#onDrained !== undefined) {
      this.#onDrained();
      this.#onDrained = undefined;
    }
  }
}

/** Ends a connection this backend opened: QUIT (when `graceful`), then wait for the socket's end. */
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
  let timer: ReturnType<typeof setTimeout> | undefined;
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
  await Promise.race([
    ended,
    new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        cut();
        resolve();
      }, CLOSE_TIMEOUT_MS);
    }),
  ]);
  clearTimeout(timer);
}

function checkClient(value: unknown): Client {
  const client = value as Partial<RedisClientLike> & {
    options?: Record<string, unknown> & {
      redisOptions?: Record<string, unknown>;
    };
  };
  if (
    typeof value !== "object" || typeof client.defineCommand !== "function" ||
    typeof client.lrangeBuffer !== "function"
  ) {
    throw new TypeError(
      "Invalid redisClient: expected an ioredis Redis or Cluster client",
    );
  }
  const options = client.options?.redisOptions ?? client.options ?? {};
  if (options.autoResendUnfulfilledCommands !== false) {
    throw new TypeError(
      "Invalid redisClient: it resends commands in flight after a reconnect, which could apply an append twice; create it with { autoResendUnfulfilledCommands: false }",
    );
  }
  // A Cluster sends a command again, after `retryDelayOnFailover` ms, when
  // its node's connection closed before the reply ("Connection is closed."):
  // the server may have run it already. (MOVED, ASK, TRYAGAIN and CLUSTERDOWN
  // replies, which it also retries, mean that the command did not run.)
  if (
    (client.options?.retryDelayOnFailover as number | undefined ?? 0) > 0
  ) {
    throw new TypeError(
      "Invalid redisClient: this Cluster resends a command whose connection closed before the reply (retryDelayOnFailover), which could apply an append twice; create it with { retryDelayOnFailover: 0, redisOptions: { autoResendUnfulfilledCommands: false } }",
    );
  }
  return value as Client;
}

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

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A `Buffer` copy of a slot: ioredis sends Buffers as bytes (a plain `Uint8Array` it would stringify). */
function toBuffer(slot: Uint8Array): Buffer {
  // allocUnsafe + set: about 10x cheaper than Buffer.from(slot) in Deno; every byte is overwritten.
  const copy = Buffer.allocUnsafe(slot.byteLength);
  copy.set(slot);
  return copy;
}

/** A plain `Uint8Array` copy of a Node `Buffer` reply. */
function toUint8Array(buffer: Uint8Array): Uint8Array {
  return new Uint8Array(buffer);
}
