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
 * - Exactly once: every mutation script records its reply under the call's
 *   op number, in the same atomic step, so the backend retries a call whose
 *   reply was lost (a dropped connection, a restart, a Cluster failover)
 *   until `retryTimeoutMs`, and a retry never applies it twice. An
 *   `appendId` makes an append idempotent across calls and processes.
 * - `durableReplicas`: each write is acknowledged once that many replicas
 *   hold it (`WAIT`, pipelined after the script).
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
//   _redis_ops.ts         retries until the deadline, op records (a retry
//                         applies once), WAIT for durableReplicas
//   _redis_scripts.ts     the Lua scripts (every mutation is one)
//   _redis_subscriber.ts  the watches' source: one subscriber connection,
//                         the expiry of watched threads
//   _redis_keys.ts        the key layout of a tenant
//   _redis_client.ts      the part of the ioredis API used, declared (no import)
// It must never import ioredis, not even a type: the connection loads it
// when a backend connects.

import { withTimeout } from "../_async.ts";
import { copyBytes } from "../_bytes.ts";
import { quote } from "../_messages.ts";
import { type BackendConfig, resolveConfig } from "../config.ts";
import { BackendClosedError } from "../errors.ts";
import type {
  BackendStats,
  BufferAppendOptions,
  BufferWatchOptions,
  RegistryRefreshOptions,
  SharedBackend,
  WatchedSlot,
} from "../protocol.ts";
import {
  checkAppendOptions,
  checkId,
  checkRange,
  checkSlot,
  isSlotIndex,
  refreshTtl,
} from "../_validate.ts";
import { watchThread } from "../_watch.ts";
import { RedisAppender } from "./_redis_appends.ts";
import { RedisConnection } from "./_redis_connection.ts";
import { type RedisKeys, redisKeys } from "./_redis_keys.ts";
import { RedisOps } from "./_redis_ops.ts";
import { defineScripts, type ScriptClient } from "./_redis_scripts.ts";
import { RedisSubscriber } from "./_redis_subscriber.ts";

// What this entry point's signatures name, so that it documents alone (JSR).
export type { BackendConfig } from "../config.ts";
export type {
  BackendKind,
  BackendStats,
  BufferAppendOptions,
  BufferWatchOptions,
  RegistryRefreshOptions,
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
 * later (a restart, a failover, a server that stops answering: cut after 4 s
 * of silence), the backend reconnects by itself and retries each call until
 * `retryTimeoutMs` (default 10 s) has passed since it was made: the caller
 * gets its result, or a {@linkcode BackendError} that says what happened and
 * whether a write was applied, when that is known. A retried write is
 * applied once (op records; `appendId` for the caller's own retries).
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
  /** Retries, op records and WAIT: every call but ping() goes through it. */
  readonly #ops: RedisOps;
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
  /** The watches' source (one subscriber connection), made at the first watch. */
  #subscriber: RedisSubscriber | undefined;
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
    this.#ops = new RedisOps({
      connection,
      client: this.#client,
      keys: this.#keys,
      retryTimeoutMs: config.retryTimeoutMs,
      durableReplicas: config.durableReplicas,
    });
    this.#appender = new RedisAppender({
      ops: this.#ops,
      keys: this.#keys,
      ttlMs: config.ttlMs,
      maxSlotsPerThread: config.maxSlotsPerThread,
      maxThreads: config.maxThreads,
    });
  }

  /**
   * Connects to Redis and returns the backend once the server answers.
   *
   * With `redisClient`, that ioredis client (`Redis` or `Cluster`, any
   * options: its offline queue and resends only repeat calls that apply
   * once) is used as it is and left open by `close()`.
   *
   * @param config `redisUrl` (`redis://` or `rediss://`, with password and db
   * index) or `redisClient`; `prefix`, `ttlMs` and the limits.
   * @returns The open backend.
   * @throws {TypeError} A config field has the wrong type; `redisUrl` is not a
   * `redis://` or `rediss://` URL; `redisClient` is not an ioredis client.
   * @throws {RangeError} A config number is out of range.
   * @throws {BackendError} The server (also an injected client's) does not
   * answer within 4 s, or refused the connection (a wrong password, say);
   * the message names host and port, never the password. ioredis cannot
   * load (without `--allow-env`: the message names the flag).
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
    return this.#appender.append(threadId, slot, options?.appendId);
  }

  /**
   * {@inheritDoc SharedBackend.bufferWatch}
   *
   * Every watch of this backend shares one subscriber connection, opened at
   * the first watch and closed when none is left: the append script
   * announces new slots on the thread's channel (sharded pub/sub on
   * Redis >= 7, in the tenant's hash slot), and after every reconnect each
   * watch reads what it may have missed. A watch ends within 1 s of its
   * thread's expiry (one timer per backend checks the threads due).
   *
   * @example Wait for the next slot, appended by another process (needs a server)
   * ```ts ignore
   * import { RedisBackend } from "@xml-pipeline/shared-backend/redis";
   *
   * await using backend = await RedisBackend.open({ redisUrl: "redis://localhost:6379" });
   * for await (const { index, slot } of backend.bufferWatch("thread-1")) {
   *   console.log(index, new TextDecoder().decode(slot));
   *   break;
   * }
   * ```
   */
  bufferWatch(
    threadId: string,
    options?: BufferWatchOptions,
  ): AsyncIterableIterator<WatchedSlot> {
    this.#subscriber ??= new RedisSubscriber({
      connection: this.#connection,
      keys: this.#keys,
      retryTimeoutMs: this.#retryTimeoutMs,
    });
    return watchThread(
      {
        kind: this.kind,
        bufferGetRange: (id, start, end) => this.bufferGetRange(id, start, end),
        bufferThreadLen: (id) => this.bufferThreadLen(id),
        watchSource: this.#subscriber,
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
    const slots = await this.#ops.read(
      `Cannot read thread ${quote(threadId)}`,
      () => this.#client.lrangeBuffer(this.#keys.thread(threadId), 0, -1),
    );
    return slots.map(copyBytes);
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
    const slots = await this.#ops.read(
      `Cannot read thread ${quote(threadId)}`,
      () =>
        this.#client.lrangeBuffer(
          this.#keys.thread(threadId),
          start,
          end === undefined ? -1 : end - 1,
        ),
    );
    return slots.map(copyBytes);
  }

  /** {@inheritDoc SharedBackend.bufferGetSlot} */
  async bufferGetSlot(
    threadId: string,
    index: number,
  ): Promise<Uint8Array | null> {
    this.#enter("bufferGetSlot");
    checkId("threadId", threadId);
    if (!isSlotIndex(index)) return null;
    const slot = await this.#ops.read(
      `Cannot read thread ${quote(threadId)}`,
      () => this.#client.lindexBuffer(this.#keys.thread(threadId), index),
    );
    return slot === null ? null : copyBytes(slot);
  }

  /** {@inheritDoc SharedBackend.bufferThreadLen} */
  async bufferThreadLen(threadId: string): Promise<number> {
    this.#enter("bufferThreadLen");
    checkId("threadId", threadId);
    return await this.#ops.read(
      `Cannot read thread ${quote(threadId)}`,
      () => this.#client.llen(this.#keys.thread(threadId)),
    );
  }

  /** {@inheritDoc SharedBackend.bufferThreadExists} */
  async bufferThreadExists(threadId: string): Promise<boolean> {
    this.#enter("bufferThreadExists");
    checkId("threadId", threadId);
    const count = await this.#ops.read(
      `Cannot read thread ${quote(threadId)}`,
      () => this.#client.exists(this.#keys.thread(threadId)),
    );
    return count > 0;
  }

  /** {@inheritDoc SharedBackend.bufferDeleteThread} */
  async bufferDeleteThread(threadId: string): Promise<boolean> {
    this.#enter("bufferDeleteThread");
    checkId("threadId", threadId);
    const existed = await this.#ops.mutate(
      `Cannot delete thread ${quote(threadId)}`,
      "xpSbDeleteThread",
      (header) => [
        this.#keys.threads,
        this.#keys.thread(threadId),
        this.#ops.records,
        threadId,
        header,
      ],
    );
    return existed > 0;
  }

  /** {@inheritDoc SharedBackend.bufferListThreads} */
  async bufferListThreads(): Promise<string[]> {
    this.#enter("bufferListThreads");
    return await this.#ops.read(
      "Cannot list threads",
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
    await this.#ops.mutate(
      "Cannot clear threads",
      "xpSbClearThreads",
      (header) => [
        this.#keys.threads,
        this.#ops.records,
        this.#keys.threadPrefix,
        header,
      ],
    );
  }

  /** {@inheritDoc SharedBackend.registrySet} */
  async registrySet(chain: string, uuid: string): Promise<void> {
    this.#enter("registrySet");
    checkId("chain", chain);
    checkId("uuid", uuid);
    await this.#ops.mutate(
      `Cannot map chain ${quote(chain)}`,
      "xpSbRegistrySet",
      (header) => this.#pairArgs(chain, uuid, header),
    );
  }

  /** {@inheritDoc SharedBackend.registrySetIfAbsent} */
  async registrySetIfAbsent(chain: string, uuid: string): Promise<string> {
    this.#enter("registrySetIfAbsent");
    checkId("chain", chain);
    checkId("uuid", uuid);
    return await this.#ops.mutate(
      `Cannot map chain ${quote(chain)}`,
      "xpSbRegistrySetIfAbsent",
      (header) => this.#pairArgs(chain, uuid, header),
    );
  }

  /** {@inheritDoc SharedBackend.registryGetUuid} */
  async registryGetUuid(chain: string): Promise<string | null> {
    this.#enter("registryGetUuid");
    checkId("chain", chain);
    return await this.#ops.read(
      `Cannot look up chain ${quote(chain)}`,
      () => this.#client.get(this.#keys.chain(chain)),
    );
  }

  /** {@inheritDoc SharedBackend.registryGetChain} */
  async registryGetChain(uuid: string): Promise<string | null> {
    this.#enter("registryGetChain");
    checkId("uuid", uuid);
    return await this.#ops.read(
      `Cannot look up uuid ${quote(uuid)}`,
      () => this.#client.get(this.#keys.uuid(uuid)),
    );
  }

  /** {@inheritDoc SharedBackend.registryRefresh} */
  async registryRefresh(
    uuid: string,
    options?: RegistryRefreshOptions,
  ): Promise<boolean> {
    this.#enter("registryRefresh");
    checkId("uuid", uuid);
    // A backend with ttlMs 0 writes persistent pairs, whatever it is asked.
    const ttlMs = this.#ttlMs === 0 ? 0 : refreshTtl(options, this.#ttlMs);
    // One script: both keys and the index entry, atomically. Running it
    // twice (a retry) only refreshes twice: no op record.
    const mapped = await this.#ops.mutate(
      `Cannot refresh uuid ${quote(uuid)}`,
      "xpSbRegistryRefresh",
      () => [
        this.#keys.registry,
        this.#keys.uuid(uuid),
        String(ttlMs),
        this.#keys.chainPrefix,
        uuid,
      ],
      false,
    );
    return mapped > 0;
  }

  /** {@inheritDoc SharedBackend.registryDelete} */
  async registryDelete(uuid: string): Promise<boolean> {
    this.#enter("registryDelete");
    checkId("uuid", uuid);
    const existed = await this.#ops.mutate(
      `Cannot delete uuid ${quote(uuid)}`,
      "xpSbRegistryDelete",
      (header) => [
        this.#keys.registry,
        this.#keys.uuid(uuid),
        this.#ops.records,
        uuid,
        this.#keys.chainPrefix,
        header,
      ],
    );
    return existed > 0;
  }

  /** {@inheritDoc SharedBackend.registryListAll} */
  async registryListAll(): Promise<Map<string, string>> {
    this.#enter("registryListAll");
    const flat = await this.#ops.read(
      "Cannot list the registry",
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
    await this.#ops.mutate(
      "Cannot clear the registry",
      "xpSbRegistryClear",
      (header) => [
        this.#keys.registry,
        this.#ops.records,
        this.#keys.chainPrefix,
        this.#keys.uuidPrefix,
        header,
      ],
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
    const [threads, slots, registryEntries] = await this.#ops.read(
      "Cannot count",
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
   * Closes the backend: ends every watch and the subscriber connection,
   * sends the appends still queued, waits for every append on the wire, then
   * (for a connection it opened) sends `QUIT` and waits until the socket has
   * ended. An injected `redisClient` is left open.
   * Idempotent; afterwards every call rejects with
   * {@linkcode BackendClosedError}.
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#closed = true;
    this.#watchesEnd.abort();
    this.#closing = (async () => {
      await Promise.all([this.#appender.drain(), this.#subscriber?.close()]);
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

  #pairArgs(chain: string, uuid: string, header: string): string[] {
    return [
      this.#keys.registry,
      this.#keys.chain(chain),
      this.#keys.uuid(uuid),
      this.#ops.records,
      String(this.#ttlMs),
      chain,
      uuid,
      this.#keys.chainPrefix,
      this.#keys.uuidPrefix,
      header,
    ];
  }
}
