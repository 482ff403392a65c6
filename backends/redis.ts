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

// This file owns the public class: argument checks, the closed state, and
// one command or script call per protocol method. Its moving parts live
// beside it, one room each:
//   _redis_connection.ts  opening or adopting the connection, the watchdog
//                         that cuts a silent one, failure messages, ending
//   _redis_appends.ts     coalescing appends into append script calls
//   _redis_scripts.ts     the Lua scripts (every mutation is one)
//   _redis_keys.ts        the key layout of a tenant
//   _redis_client.ts      the part of the ioredis API used, declared (no import)
// It must never import ioredis, not even a type: the connection loads it
// when a backend connects.

import { withTimeout } from "../_async.ts";
import { type BackendConfig, resolveConfig } from "../config.ts";
import { BackendClosedError } from "../errors.ts";
import type {
  BackendStats,
  BufferAppendOptions,
  BufferWatchOptions,
  SharedBackend,
  WatchedSlot,
} from "../protocol.ts";
import {
  checkAppendOptions,
  checkId,
  checkRange,
  checkSlot,
  isSlotIndex,
} from "../_validate.ts";
import { watchThread } from "../_watch.ts";
import { RedisAppender } from "./_redis_appends.ts";
import { RedisConnection } from "./_redis_connection.ts";
import { type RedisKeys, redisKeys } from "./_redis_keys.ts";
import { defineScripts, type ScriptClient } from "./_redis_scripts.ts";

// What this entry point's signatures name, so that it documents alone (JSR).
export type { BackendConfig } from "../config.ts";
export type {
  BackendKind,
  BackendStats,
  BufferAppendOptions,
  BufferWatchOptions,
  SharedBackend,
  WatchedSlot,
} from "../protocol.ts";

/** How long `ping()` waits before it resolves `false`. */
const PING_TIMEOUT_MS = 2_000;

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

  /** The connection every command goes through (watched; failures worded). */
  readonly #connection: RedisConnection;
  /** The connection's client, with the scripts defined on it. */
  readonly #client: ScriptClient;
  /** Sends the appends, coalesced into script calls. */
  readonly #appender: RedisAppender;
  readonly #keys: RedisKeys;
  /** {@inheritDoc SharedBackend.ttlMs} */
  get ttlMs(): number {
    return this.#ttlMs;
  }

  readonly #ttlMs: number;
  readonly #maxSlotBytes: number;
  readonly #retryTimeoutMs: number;
  #closed = false;
  /** Aborted by close(): every watch ends. */
  readonly #watchesEnd = new AbortController();
  #closing: Promise<void> | undefined;

  private constructor(
    connection: RedisConnection,
    config: ReturnType<typeof resolveConfig>,
  ) {
    this.#connection = connection;
    this.#client = defineScripts(connection.client);
    this.#keys = redisKeys(config.prefix);
    this.#ttlMs = config.ttlMs;
    this.#maxSlotBytes = config.maxSlotBytes;
    this.#retryTimeoutMs = config.retryTimeoutMs;
    this.#appender = new RedisAppender({
      connection,
      client: this.#client,
      keys: this.#keys,
      ttlMs: config.ttlMs,
      maxSlotsPerThread: config.maxSlotsPerThread,
      maxThreads: config.maxThreads,
    });
  }

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
    const connection =
      resolved.redisClient !== undefined && resolved.redisClient !== null
        ? await RedisConnection.adopt(resolved.redisClient)
        : await RedisConnection.open(resolved.redisUrl);
    return new RedisBackend(connection, resolved);
  }

  /** {@inheritDoc SharedBackend.bufferAppend} */
  bufferAppend(
    threadId: string,
    slot: Uint8Array,
    options?: BufferAppendOptions,
  ): Promise<number> {
    try {
      this.#enter("bufferAppend");
      checkId("threadId", threadId);
      checkSlot(slot, this.#maxSlotBytes);
      checkAppendOptions(options);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#appender.append(threadId, slot);
  }

  /**
   * {@inheritDoc SharedBackend.bufferWatch}
   */
  bufferWatch(
    threadId: string,
    options?: BufferWatchOptions,
  ): AsyncIterableIterator<WatchedSlot> {
    // Interim source (issue 12 replaces it): wakes every watch every 100 ms.
    return watchThread(
      {
        kind: this.kind,
        bufferGetRange: (id, start, end) => this.bufferGetRange(id, start, end),
        bufferThreadLen: (id) => this.bufferThreadLen(id),
        watchSource: {
          subscribe: (_id, wake) => {
            const timer = setInterval(() => wake("changed"), 100);
            return Promise.resolve(() => clearInterval(timer));
          },
        },
        closedSignal: this.#watchesEnd.signal,
        retryTimeoutMs: this.#retryTimeoutMs,
      },
      threadId,
      options,
    );
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

  /** {@inheritDoc SharedBackend.registryRefresh} */
  async registryRefresh(uuid: string): Promise<boolean> {
    // Interim (issue 10 makes it one atomic step): re-write the pair if mapped.
    const chain = await this.registryGetChain(uuid);
    if (chain === null) return false;
    await this.registrySet(chain, uuid);
    return true;
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
    // Sent like any command, under the connection's watchdog: a connection
    // that went silent for good (a half-open socket) is cut and reconnected
    // even if only ping() is used.
    const reply = this.#connection.send(() => this.#client.ping()).then(
      (pong) => pong === "PONG",
      () => false,
    );
    return await withTimeout(reply, PING_TIMEOUT_MS, () => false);
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
    this.#watchesEnd.abort();
    this.#closing = (async () => {
      await this.#appender.drain();
      await this.#connection.close();
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
    try {
      return await this.#connection.send(run);
    } catch (error) {
      throw this.#connection.failure(`Cannot ${what}`, error, false);
    }
  }
}

/** A plain `Uint8Array` copy of a Node `Buffer` reply. */
function toUint8Array(buffer: Uint8Array): Uint8Array {
  return new Uint8Array(buffer);
}
