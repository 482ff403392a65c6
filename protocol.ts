/**
 * The protocol every backend implements: per-thread append-only context
 * buffers and a chain <-> uuid thread registry, with the same behaviour on
 * the in-memory Map, Deno KV and Redis.
 *
 * @module
 */

/**
 * Which store a backend keeps its data in.
 *
 * @example
 * ```ts
 * import { type BackendKind, createSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend();
 * const kind: BackendKind = backend.kind;
 * assert.equal(kind, "memory");
 * ```
 */
export type BackendKind = "memory" | "kv" | "redis";

/**
 * What {@linkcode SharedBackend.stats} reports: live (unexpired) data of this
 * backend's prefix only.
 *
 * @example
 * ```ts
 * import { type BackendStats, createSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend({ ttlMs: 0 });
 * await backend.bufferAppend("t1", new Uint8Array([1]));
 * await backend.registrySet("a.b", "uuid-1");
 * const stats: BackendStats = await backend.stats();
 * assert.deepEqual(stats, { kind: "memory", threads: 1, slots: 1, registryEntries: 1, ttlMs: 0 });
 * ```
 */
export interface BackendStats {
  /** The backend's kind. */
  kind: BackendKind;
  /** Live threads. */
  threads: number;
  /** Slots in all live threads. */
  slots: number;
  /** Live registry pairs (each chain <-> uuid pair counts once). */
  registryEntries: number;
  /** The sliding TTL in force, in milliseconds (0: nothing expires). */
  ttlMs: number;
}

/**
 * Options of {@linkcode SharedBackend.bufferAppend}.
 *
 * @example
 * ```ts
 * import { type BufferAppendOptions, createSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend();
 * const options: BufferAppendOptions = { appendId: "msg-42" };
 * const first = await backend.bufferAppend("t1", new Uint8Array([1]), options);
 * const again = await backend.bufferAppend("t1", new Uint8Array([1]), options);
 * assert.equal(again, first);
 * assert.equal(await backend.bufferThreadLen("t1"), 1);
 * ```
 */
export interface BufferAppendOptions {
  /**
   * Makes the append idempotent: appends to one thread with the same
   * `appendId`, from any process, at any time while the thread lives,
   * store one slot, and every one of them returns its index. A repeated
   * append stores nothing, even if its bytes differ from the first one's.
   * The ids of a thread are forgotten with it (deletion, expiry, clear).
   * A non-empty, well-formed string of at most 128 UTF-8 bytes.
   *
   * @default {undefined}
   */
  appendId?: string;
}

/**
 * Options of {@linkcode SharedBackend.bufferWatch}.
 *
 * @example
 * ```ts
 * import { type BufferWatchOptions, createSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend();
 * await backend.bufferAppend("t1", new Uint8Array([7]));
 * const options: BufferWatchOptions = { fromIndex: 0, signal: AbortSignal.timeout(5_000) };
 * for await (const { index, slot } of backend.bufferWatch("t1", options)) {
 *   assert.equal(index, 0);
 *   assert.deepEqual(slot, new Uint8Array([7]));
 *   break;
 * }
 * ```
 */
export interface BufferWatchOptions {
  /**
   * The index of the first slot to yield, a non-negative integer.
   *
   * @default {the thread's length when the watch starts: only new slots}
   */
  fromIndex?: number;
  /**
   * Ends the watch when it aborts.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/**
 * One slot yielded by {@linkcode SharedBackend.bufferWatch}: its index and
 * its bytes (a copy the caller owns).
 *
 * @example
 * ```ts
 * import { createSharedBackend, type WatchedSlot } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend();
 * const watch = backend.bufferWatch("t1", { fromIndex: 0 });
 * await backend.bufferAppend("t1", new Uint8Array([1, 2]));
 * const { value } = await watch.next();
 * const slot: WatchedSlot = value!;
 * assert.deepEqual(slot, { index: 0, slot: new Uint8Array([1, 2]) });
 * await watch.return?.();
 * ```
 */
export interface WatchedSlot {
  /** The slot's index in its thread. */
  index: number;
  /** The slot's bytes. */
  slot: Uint8Array;
}

/**
 * Options of {@linkcode SharedBackend.registryRefresh}.
 *
 * @example
 * ```ts
 * import { createSharedBackend, type RegistryRefreshOptions } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend({ ttlMs: 60_000 });
 * await backend.registrySet("console.greeter", "u1");
 * const options: RegistryRefreshOptions = { ttlMs: 75_000 };
 * assert.equal(await backend.registryRefresh("u1", options), true);
 * assert.equal(await backend.registryRefresh("u2", options), false);
 * ```
 */
export interface RegistryRefreshOptions {
  /**
   * How long the pair lives from now, in milliseconds: a positive integer.
   * Ignored by a backend whose `ttlMs` is 0 (its pairs never expire).
   *
   * @default {the backend's ttlMs}
   */
  ttlMs?: number;
}

/**
 * Shared state for multi-process and multi-isolate agent pipelines.
 *
 * **Context buffer**: per thread, an append-only list of opaque binary slots.
 * `bufferAppend` returns the new slot's index; under any concurrency the
 * indexes of one thread are exactly `0..n-1`, each once.
 *
 * **Thread registry**: a bijection between dotted call chains
 * (`console.router.greeter`) and opaque uuids.
 *
 * **Ids**: thread ids, chains and uuids are non-empty, well-formed strings of
 * at most 1024 UTF-8 bytes, any characters (a lone surrogate is refused). An empty or non-string id is a `TypeError`, a
 * longer one a `RangeError`, on reads as on writes; nothing is written on an
 * error.
 *
 * **TTL**: with `ttlMs > 0` every append refreshes its whole thread and every
 * registry write refreshes its pair; data untouched for `ttlMs` disappears
 * whole.
 *
 * After `close()` every call rejects with `BackendClosedError`.
 *
 * @example Append and read back
 * ```ts
 * import { createSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend();
 * const index = await backend.bufferAppend("thread-1", new Uint8Array([1, 2]));
 * assert.equal(index, 0);
 * assert.deepEqual(await backend.bufferGetThread("thread-1"), [new Uint8Array([1, 2])]);
 * ```
 */
export interface SharedBackend extends AsyncDisposable {
  /** Which store this backend uses. */
  readonly kind: BackendKind;

  /**
   * The sliding TTL this backend writes with, in milliseconds (0: nothing
   * it writes expires).
   */
  readonly ttlMs: number;

  /**
   * Appends a slot to a thread, creating the thread if needed, and refreshes
   * the thread's TTL.
   *
   * @param threadId The thread.
   * @param slot The bytes to store; a copy is stored.
   * @param options An `appendId` that makes the append idempotent.
   * @returns The new slot's index: the thread's length before the append
   * (or, for an `appendId` already applied to the thread, that slot's index).
   * @throws {TypeError} `threadId` or `appendId` is not a non-empty string, or `slot` is not a `Uint8Array`.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes, `appendId` over 128, or `slot` over `maxSlotBytes`.
   * @throws {SlotLimitError} The thread holds `maxSlotsPerThread` slots.
   * @throws {ThreadLimitError} The thread is new and `maxThreads` live threads exist.
   */
  bufferAppend(
    threadId: string,
    slot: Uint8Array,
    options?: BufferAppendOptions,
  ): Promise<number>;

  /**
   * Watches a thread: yields every slot with index >= `fromIndex` (default:
   * the thread's length when the watch starts, at its first `next()`: only
   * new slots), in
   * index order, each exactly once, byte-exact, whoever appended it (this
   * isolate, another Worker, process or machine), across dropped
   * connections and server restarts.
   *
   * The watch ends (`done`) when `signal` aborts, when `return()` is called
   * (`break` in `for await`), when the backend closes, and within a second
   * of the thread's deletion or expiry. A thread that does not exist yet is
   * waited for. Many watches share one connection or poller per backend.
   *
   * @param threadId The thread.
   * @param options Where to start, and a signal to stop.
   * @returns An iterator of `{ index, slot }`. Bad arguments (and a closed
   * backend) reject its first `next()`.
   *
   * @example Wait for the answer another agent appends
   * ```ts
   * import { createSharedBackend } from "@xml-pipeline/shared-backend";
   * import assert from "node:assert/strict";
   *
   * await using backend = await createSharedBackend();
   * const watch = backend.bufferWatch("t1", { signal: AbortSignal.timeout(5_000) });
   * setTimeout(() => backend.bufferAppend("t1", new Uint8Array([42])), 10);
   * for await (const { index, slot } of watch) {
   *   assert.equal(index, 0);
   *   assert.deepEqual(slot, new Uint8Array([42]));
   *   break;
   * }
   * ```
   */
  bufferWatch(
    threadId: string,
    options?: BufferWatchOptions,
  ): AsyncIterableIterator<WatchedSlot>;

  /**
   * Reads all slots of a thread, in index order.
   *
   * @param threadId The thread.
   * @returns The slots; empty if the thread does not exist.
   */
  bufferGetThread(threadId: string): Promise<Uint8Array[]>;

  /**
   * Reads the slots `[start, end)` of a thread, clamped like
   * `Array.prototype.slice` with non-negative bounds.
   *
   * @param threadId The thread.
   * @param start The first index, a non-negative integer.
   * @param end One past the last index, a non-negative integer; default: the end.
   * @returns The slots in the range (possibly empty).
   * @throws {RangeError} `start` or `end` is not a non-negative integer.
   */
  bufferGetRange(
    threadId: string,
    start: number,
    end?: number,
  ): Promise<Uint8Array[]>;

  /**
   * Reads one slot.
   *
   * @param threadId The thread.
   * @param index The slot's index.
   * @returns The slot, or `null` if `index` is not an integer in `[0, len)`.
   */
  bufferGetSlot(threadId: string, index: number): Promise<Uint8Array | null>;

  /**
   * Counts a thread's slots.
   *
   * @param threadId The thread.
   * @returns The number of slots; 0 if the thread does not exist.
   */
  bufferThreadLen(threadId: string): Promise<number>;

  /**
   * Tells whether a thread has live slots.
   *
   * @param threadId The thread.
   * @returns `true` if the thread exists and has not expired.
   */
  bufferThreadExists(threadId: string): Promise<boolean>;

  /**
   * Deletes a thread and all its slots.
   *
   * @param threadId The thread.
   * @returns `true` if the thread existed.
   */
  bufferDeleteThread(threadId: string): Promise<boolean>;

  /**
   * Lists the live threads of this backend's prefix.
   *
   * @returns The thread ids exactly as given to `bufferAppend`, in no set order.
   */
  bufferListThreads(): Promise<string[]>;

  /** Deletes every thread of this backend's prefix (and no other's). */
  bufferClear(): Promise<void>;

  /**
   * Maps `chain` to `uuid` both ways and refreshes the pair's TTL. Any uuid
   * that `chain` mapped to before, and any chain that `uuid` mapped to
   * before, are unmapped both ways.
   *
   * @param chain The dotted call chain.
   * @param uuid The uuid.
   */
  registrySet(chain: string, uuid: string): Promise<void>;

  /**
   * Maps `chain` to `uuid` only if `chain` is unmapped (then exactly as
   * `registrySet` would). Racing callers all get the same answer. When
   * `chain` is already mapped, nothing is written or refreshed.
   *
   * @param chain The dotted call chain.
   * @param uuid The uuid to map it to if it is unmapped.
   * @returns The uuid `chain` maps to afterwards.
   */
  registrySetIfAbsent(chain: string, uuid: string): Promise<string>;

  /**
   * Looks up a chain's uuid.
   *
   * @param chain The dotted call chain.
   * @returns Its uuid, or `null`.
   */
  registryGetUuid(chain: string): Promise<string | null>;

  /**
   * Looks up a uuid's chain.
   *
   * @param uuid The uuid.
   * @returns Its chain, or `null`.
   */
  registryGetChain(uuid: string): Promise<string | null>;

  /**
   * Refreshes the TTL of a uuid's pair, both directions, if it is mapped
   * (as if it had just been written, without changing it): it then expires
   * `ttlMs` from now. What keeps the chain of a live conversation from
   * expiring before its thread.
   *
   * @param uuid The uuid.
   * @param options `ttlMs`: how long the pair lives from now, a positive
   * integer (default: this backend's `ttlMs`). A backend with `ttlMs` 0
   * writes pairs that never expire, and ignores it.
   * @returns `true` if it was mapped (and is refreshed).
   * @throws {RangeError} `ttlMs` is not a positive integer.
   */
  registryRefresh(
    uuid: string,
    options?: RegistryRefreshOptions,
  ): Promise<boolean>;

  /**
   * Removes a uuid's pair, both directions.
   *
   * @param uuid The uuid.
   * @returns `true` if it was mapped.
   */
  registryDelete(uuid: string): Promise<boolean>;

  /**
   * Reads every live pair of this backend's prefix.
   *
   * @returns A map from uuid to chain.
   */
  registryListAll(): Promise<Map<string, string>>;

  /** Removes every pair of this backend's prefix (and no other's). */
  registryClear(): Promise<void>;

  /**
   * Checks that the store answers.
   *
   * @returns `true` if it does; `false` if it cannot be reached (within 5 s).
   */
  ping(): Promise<boolean>;

  /**
   * Counts this prefix's live data.
   *
   * @returns The counts and the TTL in force.
   */
  stats(): Promise<BackendStats>;

  /**
   * Releases the backend's connections and timers. Idempotent. A store
   * client passed in by the caller is left open.
   */
  close(): Promise<void>;
}
