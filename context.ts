/**
 * {@linkcode ContextBuffer}: a typed, race-free context buffer over any
 * {@linkcode SharedBackend}. Each thread is an append-only list of
 * {@linkcode BufferSlot}s (a payload plus who sent it to whom, when, and its
 * index), shared by every isolate, process or machine that opens the same
 * store; and, re-exported from `registry.ts`, {@linkcode ThreadRegistry}:
 * dotted call chains <-> uuids, race-free.
 *
 * Both are exported from the package root and from the `./context` subpath
 * (`@xml-pipeline/shared-backend/context`), which loads neither the kv nor
 * the redis backend. The subpath also re-exports the protocol's types.
 *
 * @example Append and read back
 * ```ts
 * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const buffer = new ContextBuffer<{ text: string }>(backend);
 * const slot = await buffer.append("thread-1", { text: "hi" }, { fromId: "console", toId: "greeter" });
 * assert.equal(slot.slotIndex, 0);
 * const thread = await buffer.getThread("thread-1");
 * assert.equal(thread?.[0]?.payload.text, "hi");
 * ```
 *
 * @module
 */

import { DEFAULT_CONFIG } from "./config.ts";
import type { SharedBackend } from "./protocol.ts";
import { serializeSlot } from "./serialize.ts";
import { checkBackend, checkNonEmptyString } from "./_validate.ts";
import { decode, decodeAll, storedSlot, toSlot } from "./_context_slots.ts";

export type {
  BackendKind,
  BackendStats,
  BufferAppendOptions,
  BufferWatchOptions,
  SharedBackend,
  WatchedSlot,
} from "./protocol.ts";
export { payloadTypeName } from "./_context_slots.ts";
export {
  type PruneResult,
  type StartChainOptions,
  ThreadRegistry,
} from "./registry.ts";

/**
 * One message in a thread: the payload and its metadata. Slots are frozen
 * (shallowly: the payload object itself is not frozen).
 *
 * The metadata is stored with the payload, except `slotIndex`: a slot's
 * index is only known once the backend's atomic append has returned it, so
 * it is not stored but taken from the slot's position in the thread when
 * read (position `i` of a thread is the slot whose append returned `i`).
 * Slots returned by {@linkcode ContextBuffer.append} carry the index that
 * append returned.
 *
 * @typeParam T The payload's type.
 *
 * @example
 * ```ts
 * import { type BufferSlot, ContextBuffer } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const buffer = new ContextBuffer<string>(backend);
 * const slot: BufferSlot<string> = await buffer.append("t1", "hello", { fromId: "a", toId: "b" });
 * assert.equal(slot.payloadType, "string");
 * assert.equal(slot.isSelfCall, false);
 * assert.ok(Object.isFrozen(slot));
 * ```
 */
export interface BufferSlot<T = unknown> {
  /**
   * The payload. On a slot returned by `append`, the value that was passed
   * in; on a slot that was read, a fresh copy, as {@linkcode deserializeSlot}
   * decodes it.
   */
  readonly payload: T;
  /** The thread the slot belongs to. */
  readonly threadId: string;
  /** Who sent the payload. */
  readonly fromId: string;
  /** Whom the payload was sent to. */
  readonly toId: string;
  /** The slot's index in its thread: `0..n-1`, dense, each once. */
  readonly slotIndex: number;
  /** When the slot was appended: ISO-8601 in UTC, e.g. `2026-01-31T12:00:00.000Z`. */
  readonly timestamp: string;
  /** The payload's type name: see {@linkcode payloadTypeName}. */
  readonly payloadType: string;
  /** The name the receiver knows itself by, if given; otherwise `null`. */
  readonly ownName: string | null;
  /** Whether the sender called itself; `false` unless given. */
  readonly isSelfCall: boolean;
  /** Instructions for the receiver on how to use the payload; `""` unless given. */
  readonly usageInstructions: string;
}

/**
 * The metadata given to {@linkcode ContextBuffer.append}. `threadId`,
 * `slotIndex` and `timestamp` are filled in by the buffer.
 *
 * @example
 * ```ts
 * import { type AppendOptions, ContextBuffer } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const options: AppendOptions = { fromId: "router", toId: "router", isSelfCall: true, payloadType: "Tick" };
 * const slot = await new ContextBuffer(backend).append("t1", {}, options);
 * assert.equal(slot.payloadType, "Tick");
 * ```
 */
export interface AppendOptions {
  /** Who sends the payload: a non-empty string. */
  fromId: string;
  /** Whom the payload is sent to: a non-empty string. */
  toId: string;
  /**
   * The name the receiver knows itself by.
   *
   * @default {null}
   */
  ownName?: string;
  /**
   * Whether the sender is calling itself.
   *
   * @default {false}
   */
  isSelfCall?: boolean;
  /**
   * Instructions for the receiver on how to use the payload.
   *
   * @default {""}
   */
  usageInstructions?: string;
  /**
   * The payload's type name, stored in the slot and matched by
   * {@linkcode ContextBuffer.getByType}.
   *
   * @default {payloadTypeName(payload)}
   */
  payloadType?: string;
}

/**
 * Options of {@linkcode ContextBuffer}. The limits are enforced by the
 * backend, atomically; the buffer only reports them in
 * {@linkcode ContextBuffer.stats}, so pass the config the backend was opened
 * with (a whole `BackendConfig` will do).
 *
 * @example
 * ```ts
 * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * const config = { maxThreads: 10, maxSlotsPerThread: 100 };
 * await using backend = await InMemoryBackend.open(config); // or createSharedBackend(config)
 * const buffer = new ContextBuffer(backend, config);
 * assert.equal((await buffer.stats()).maxThreads, 10);
 * ```
 */
export interface ContextBufferOptions {
  /**
   * The `maxSlotsPerThread` the backend was opened with, for `stats()`.
   *
   * @default {10000}
   */
  maxSlotsPerThread?: number;
  /**
   * The `maxThreads` the backend was opened with, for `stats()`.
   *
   * @default {1000}
   */
  maxThreads?: number;
  /**
   * The clock, in milliseconds since the epoch, that timestamps are taken
   * from. Tests pass a fake one.
   *
   * @default {Date.now}
   */
  now?: () => number;
}

/**
 * What {@linkcode ContextBuffer.stats} reports.
 *
 * @example
 * ```ts
 * import { ContextBuffer, type ContextBufferStats } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const stats: ContextBufferStats = await new ContextBuffer(backend).stats();
 * assert.equal(stats.threadCount, 0);
 * ```
 */
export interface ContextBufferStats {
  /** Live threads in the backend's prefix. */
  threadCount: number;
  /** Slots in all live threads. */
  totalSlots: number;
  /** The `maxThreads` the buffer was given (the backend enforces its own). */
  maxThreads: number;
  /** The `maxSlotsPerThread` the buffer was given (the backend enforces its own). */
  maxSlotsPerThread: number;
  /** The backend's sliding TTL in milliseconds (0: nothing expires). */
  ttlMs: number;
}

/**
 * A typed context buffer over any {@linkcode SharedBackend}: per thread, an
 * append-only list of {@linkcode BufferSlot}s, the same for every isolate,
 * process or machine that shares the backend's store.
 *
 * **Race-free indexes.** {@linkcode ContextBuffer.append} serializes the
 * payload and its metadata *without* the index and makes one atomic
 * `bufferAppend`; the index that call returns is the slot's `slotIndex`.
 * The length is never read first (the Python original read the length, then
 * appended, so two writers could get the same index). On a read, a slot's
 * `slotIndex` is its position in the thread, which is the index its append
 * returned (contract item 1): so under any number of concurrent writers the
 * indexes of a thread are `0..n-1`, each once, and match the stored slots.
 *
 * **Storage.** Each slot is one MessagePack value ({@linkcode serializeSlot}):
 * `{ v: 1, threadId, fromId, toId, timestamp, payloadType, payload }` plus
 * `ownName`, `isSelfCall`, `usageInstructions` when they differ from their
 * defaults. Payloads must be values `serializeSlot` can encode exactly:
 * JSON-like data, `Uint8Array`, `Date`, `Map`, `bigint`, nested; not class
 * instances (a `TypeError` naming `$.payload`), nothing is silently changed.
 *
 * The buffer does not own the backend: closing the backend is the caller's
 * job.
 *
 * @typeParam T The payload type of this buffer's slots. Reads do not check
 * it: it is what you promise was appended.
 *
 * @example Two agents, one thread
 * ```ts
 * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * type Message = { type: "question" | "answer"; text: string };
 * await using backend = new InMemoryBackend();
 * const buffer = new ContextBuffer<Message>(backend);
 * await buffer.append("t1", { type: "question", text: "2+2?" }, { fromId: "user", toId: "calc" });
 * await buffer.append("t1", { type: "answer", text: "4" }, { fromId: "calc", toId: "user" });
 *
 * const answers = await buffer.getByType("t1", "answer");
 * assert.deepEqual(answers.map((s) => [s.slotIndex, s.payload.text]), [[1, "4"]]);
 * assert.deepEqual((await buffer.getFrom("t1", "user")).map((s) => s.slotIndex), [0]);
 * ```
 */
export class ContextBuffer<T = unknown> {
  /** The backend the slots are stored in. */
  readonly backend: SharedBackend;
  readonly #maxThreads: number;
  readonly #maxSlotsPerThread: number;
  readonly #now: () => number;

  /**
   * Makes a buffer over a backend. Nothing is read or written.
   *
   * @param backend The backend to store slots in; it stays the caller's to close.
   * @param options The limits to report (the backend's config) and the clock.
   * @throws {TypeError} `backend` is not a backend.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer(backend, { now: () => Date.UTC(2026, 0, 31) });
   * const slot = await buffer.append("t1", 42, { fromId: "a", toId: "b" });
   * assert.equal(slot.timestamp, "2026-01-31T00:00:00.000Z");
   * ```
   */
  constructor(backend: SharedBackend, options: ContextBufferOptions = {}) {
    checkBackend("backend", backend);
    this.backend = backend;
    this.#maxThreads = options.maxThreads ?? DEFAULT_CONFIG.maxThreads;
    this.#maxSlotsPerThread = options.maxSlotsPerThread ??
      DEFAULT_CONFIG.maxSlotsPerThread;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Appends a payload to a thread, creating the thread if needed, with one
   * atomic `bufferAppend`.
   *
   * @param threadId The thread (usually a uuid from {@linkcode ThreadRegistry}).
   * @param payload The payload: a value {@linkcode serializeSlot} can encode, not `undefined`.
   * @param options Sender, receiver, and the optional metadata.
   * @returns The new slot, frozen; its `slotIndex` is the index the append returned.
   * @throws {TypeError} `threadId`, `fromId` or `toId` is not a non-empty
   * string, an optional field has the wrong type, or `payload` is `undefined`
   * or holds a value `serializeSlot` cannot encode (a class instance, say).
   * @throws {RangeError} `threadId` is too long, the encoded slot is over
   * `maxSlotBytes`, or `payload` holds a value `serializeSlot` refuses as out of range.
   * @throws {SlotLimitError} The thread holds `maxSlotsPerThread` slots.
   * @throws {ThreadLimitError} The thread is new and `maxThreads` live threads exist.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer(backend);
   * const slots = await Promise.all(
   *   ["a", "b", "c"].map((from) => buffer.append("t1", { from }, { fromId: from, toId: "sink" })),
   * );
   * assert.deepEqual(slots.map((s) => s.slotIndex).sort(), [0, 1, 2]);
   * ```
   */
  async append(
    threadId: string,
    payload: T,
    options: AppendOptions,
  ): Promise<BufferSlot<T>> {
    checkNonEmptyString("threadId", threadId);
    const stored = storedSlot(threadId, payload, options, this.#now());
    const slotIndex = await this.backend.bufferAppend(
      threadId,
      serializeSlot(stored),
    );
    return toSlot<T>(stored, threadId, slotIndex, payload);
  }

  /**
   * Reads a whole thread.
   *
   * @param threadId The thread.
   * @returns Its slots in index order (frozen, in a frozen array), or `null`
   * if the thread does not exist (or expired).
   * @throws {BackendError} A stored slot was not written by a `ContextBuffer`.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer<string>(backend);
   * assert.equal(await buffer.getThread("t1"), null);
   * await buffer.append("t1", "one", { fromId: "a", toId: "b" });
   * await buffer.append("t1", "two", { fromId: "b", toId: "a" });
   * const thread = await buffer.getThread("t1");
   * assert.deepEqual(thread?.map((s) => [s.slotIndex, s.payload]), [[0, "one"], [1, "two"]]);
   * ```
   */
  async getThread(threadId: string): Promise<readonly BufferSlot<T>[] | null> {
    const raw = await this.backend.bufferGetThread(threadId);
    if (raw.length === 0) return null;
    return decodeAll<T>(threadId, raw, 0);
  }

  /**
   * Reads one slot.
   *
   * @param threadId The thread.
   * @param index The slot's index.
   * @returns The slot (frozen), or `null` if `index` is not an integer in `[0, len)`.
   * @throws {BackendError} The stored slot was not written by a `ContextBuffer`.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer<string>(backend);
   * await buffer.append("t1", "one", { fromId: "a", toId: "b" });
   * assert.equal((await buffer.getSlot("t1", 0))?.payload, "one");
   * assert.equal(await buffer.getSlot("t1", 1), null);
   * ```
   */
  async getSlot(
    threadId: string,
    index: number,
  ): Promise<BufferSlot<T> | null> {
    const raw = await this.backend.bufferGetSlot(threadId, index);
    return raw === null ? null : decode<T>(threadId, raw, index);
  }

  /**
   * Reads the slots `[start, end)` of a thread, clamped like
   * `Array.prototype.slice` with non-negative bounds.
   *
   * @param threadId The thread.
   * @param start The first index, a non-negative integer.
   * @param end One past the last index, a non-negative integer; default: the end.
   * @returns The slots in the range, in order (frozen, in a frozen array; possibly empty).
   * @throws {RangeError} `start` or `end` is not a non-negative integer.
   * @throws {BackendError} A stored slot was not written by a `ContextBuffer`.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer<number>(backend);
   * for (const n of [10, 11, 12, 13]) await buffer.append("t1", n, { fromId: "a", toId: "b" });
   * const slice = await buffer.getSlice("t1", 1, 3);
   * assert.deepEqual(slice.map((s) => [s.slotIndex, s.payload]), [[1, 11], [2, 12]]);
   * assert.deepEqual(await buffer.getSlice("t1", 9), []);
   * ```
   */
  async getSlice(
    threadId: string,
    start: number,
    end?: number,
  ): Promise<readonly BufferSlot<T>[]> {
    const raw = await this.backend.bufferGetRange(threadId, start, end);
    // A non-empty range starts exactly at `start` (the clamp only trims the end).
    return decodeAll<T>(threadId, raw, start);
  }

  /**
   * Reads the slots of a thread whose `payloadType` is `payloadType`.
   *
   * @param threadId The thread.
   * @param payloadType The type name to match (see {@linkcode payloadTypeName}).
   * @returns The matching slots, in order (possibly empty).
   * @throws {BackendError} A stored slot was not written by a `ContextBuffer`.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer(backend);
   * await buffer.append("t1", { type: "ping" }, { fromId: "a", toId: "b" });
   * await buffer.append("t1", "raw text", { fromId: "b", toId: "a" });
   * assert.deepEqual((await buffer.getByType("t1", "string")).map((s) => s.slotIndex), [1]);
   * ```
   */
  async getByType(
    threadId: string,
    payloadType: string,
  ): Promise<readonly BufferSlot<T>[]> {
    return await this.#matching(threadId, "payloadType", payloadType);
  }

  /**
   * Reads the slots of a thread sent by `fromId`.
   *
   * @param threadId The thread.
   * @param fromId The sender to match.
   * @returns The matching slots, in order (possibly empty).
   * @throws {BackendError} A stored slot was not written by a `ContextBuffer`.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer<string>(backend);
   * await buffer.append("t1", "q", { fromId: "user", toId: "bot" });
   * await buffer.append("t1", "a", { fromId: "bot", toId: "user" });
   * assert.deepEqual((await buffer.getFrom("t1", "bot")).map((s) => s.payload), ["a"]);
   * ```
   */
  async getFrom(
    threadId: string,
    fromId: string,
  ): Promise<readonly BufferSlot<T>[]> {
    return await this.#matching(threadId, "fromId", fromId);
  }

  /**
   * Tells whether a thread has live slots.
   *
   * @param threadId The thread.
   * @returns `true` if it exists and has not expired.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer(backend);
   * assert.equal(await buffer.threadExists("t1"), false);
   * await buffer.append("t1", 1, { fromId: "a", toId: "b" });
   * assert.equal(await buffer.threadExists("t1"), true);
   * ```
   */
  threadExists(threadId: string): Promise<boolean> {
    return this.backend.bufferThreadExists(threadId);
  }

  /**
   * Counts a thread's slots. Use it for display, not to predict the next
   * index: another writer may append in between.
   *
   * @param threadId The thread.
   * @returns The number of slots; 0 if the thread does not exist.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer(backend);
   * await buffer.append("t1", 1, { fromId: "a", toId: "b" });
   * assert.equal(await buffer.threadLength("t1"), 1);
   * ```
   */
  threadLength(threadId: string): Promise<number> {
    return this.backend.bufferThreadLen(threadId);
  }

  /**
   * Deletes a thread and all its slots.
   *
   * @param threadId The thread.
   * @returns `true` if it existed.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer(backend);
   * await buffer.append("t1", 1, { fromId: "a", toId: "b" });
   * assert.equal(await buffer.deleteThread("t1"), true);
   * assert.equal(await buffer.getThread("t1"), null);
   * assert.equal(await buffer.deleteThread("t1"), false);
   * ```
   */
  deleteThread(threadId: string): Promise<boolean> {
    return this.backend.bufferDeleteThread(threadId);
  }

  /**
   * Counts the live threads and slots of the backend's prefix (every
   * thread there, also ones not written through a `ContextBuffer`), with the
   * limits given in the options and the backend's TTL.
   *
   * @returns The counts and limits.
   *
   * @example
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend({ ttlMs: 0 });
   * const buffer = new ContextBuffer(backend, { maxThreads: 1_000, maxSlotsPerThread: 10_000 });
   * await buffer.append("t1", 1, { fromId: "a", toId: "b" });
   * await buffer.append("t2", 2, { fromId: "a", toId: "b" });
   * await buffer.append("t2", 3, { fromId: "b", toId: "a" });
   * assert.deepEqual(await buffer.stats(), {
   *   threadCount: 2,
   *   totalSlots: 3,
   *   maxThreads: 1_000,
   *   maxSlotsPerThread: 10_000,
   *   ttlMs: 0,
   * });
   * ```
   */
  async stats(): Promise<ContextBufferStats> {
    const stats = await this.backend.stats();
    return {
      threadCount: stats.threads,
      totalSlots: stats.slots,
      maxThreads: this.#maxThreads,
      maxSlotsPerThread: this.#maxSlotsPerThread,
      ttlMs: stats.ttlMs,
    };
  }
  /** The slots of a thread whose `field` equals `value` (one rule for getByType and getFrom). */
  async #matching(
    threadId: string,
    field: "payloadType" | "fromId",
    value: string,
  ): Promise<readonly BufferSlot<T>[]> {
    checkNonEmptyString(field, value);
    const thread = await this.getThread(threadId);
    return Object.freeze(
      (thread ?? []).filter((slot) => slot[field] === value),
    );
  }
}
