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
   * Appends a slot to a thread, creating the thread if needed, and refreshes
   * the thread's TTL.
   *
   * @param threadId The thread.
   * @param slot The bytes to store; a copy is stored.
   * @returns The new slot's index: the thread's length before the append.
   * @throws {TypeError} `threadId` is not a non-empty string, or `slot` is not a `Uint8Array`.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes, or `slot` over `maxSlotBytes`.
   * @throws {SlotLimitError} The thread holds `maxSlotsPerThread` slots.
   * @throws {ThreadLimitError} The thread is new and `maxThreads` live threads exist.
   */
  bufferAppend(threadId: string, slot: Uint8Array): Promise<number>;

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
