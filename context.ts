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
 * assert.equal(thread[0]?.payload.text, "hi");
 * ```
 *
 * @example Wait for another agent's answer
 * ```ts
 * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend(); // kv or redis: across processes
 * const buffer = new ContextBuffer<string>(backend);
 * const question = await buffer.append("t1", "2+2?", { fromId: "user", toId: "calc" });
 * setTimeout(() => buffer.append("t1", "4", { fromId: "calc", toId: "user" }), 10);
 * const answer = await buffer.waitFor("t1", (s) => s.fromId === "calc", {
 *   fromIndex: question.slotIndex + 1,
 *   timeoutMs: 5_000,
 * });
 * assert.equal(answer.payload, "4");
 * ```
 *
 * @module
 */

import { DEFAULT_CONFIG } from "./config.ts";
import type {
  BufferAppendOptions,
  BufferWatchOptions,
  SharedBackend,
} from "./protocol.ts";
import { serializeSlot } from "./serialize.ts";
import { checkBackend, checkNonEmptyString } from "./_validate.ts";
import { decode, decodeAll, storedSlot, toSlot } from "./_context_slots.ts";
import { PairKeeper } from "./_context_pairs.ts";
import { SlotWatch, waitForSlot } from "./_context_watch.ts";
import type {
  AppendOptions,
  BufferSlot,
  ContextBufferOptions,
  ContextBufferStats,
  WaitForOptions,
} from "./_context_types.ts";

export type * from "./protocol.ts";
export { payloadTypeName } from "./_context_slots.ts";
export type {
  AppendOptions,
  BufferSlot,
  ContextBufferOptions,
  ContextBufferStats,
  WaitForOptions,
} from "./_context_types.ts";
export {
  type PruneResult,
  type StartChainOptions,
  ThreadRegistry,
} from "./registry.ts";

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
 * **Waiting.** {@linkcode ContextBuffer.watch} streams a thread's new slots
 * as any process appends them, and {@linkcode ContextBuffer.waitFor} waits
 * for the first one that matches: agents wait for each other without
 * polling.
 *
 * **Liveness.** Appending to a thread also keeps the registry pair whose uuid
 * is the thread id alive (see {@linkcode ContextBuffer.append}): a
 * conversation that goes on keeps its chain.
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
  readonly #pairs: PairKeeper;

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
    this.#pairs = new PairKeeper(backend);
  }

  /**
   * Appends a payload to a thread, creating the thread if needed, with one
   * atomic `bufferAppend`.
   *
   * **Retries.** With an `appendId`, appending the same message again (after
   * a timeout, a crash, a lost reply) returns the same slot and stores
   * nothing: see {@linkcode AppendOptions.appendId}.
   *
   * **The thread's chain stays alive.** Registry pairs expire `ttlMs` after
   * their last write, threads `ttlMs` after their last append. So that a
   * conversation does not lose its chain while it goes on, an append also
   * refreshes the registry pair whose uuid is `threadId` (if there is one,
   * with the backend's `registryRefresh`), at most once every `ttlMs / 4` per
   * thread and buffer (so the pair outlives the thread's last append by at
   * least `3/4 ttlMs`). A refresh that fails does not fail the append; the
   * next append tries again. With `ttlMs` 0 nothing expires and nothing is
   * refreshed.
   *
   * @param threadId The thread (usually a uuid from {@linkcode ThreadRegistry}).
   * @param payload The payload: a value {@linkcode serializeSlot} can encode, not `undefined`.
   * @param options Sender, receiver, the optional metadata, and an `appendId`.
   * @returns The new slot, frozen; its `slotIndex` is the index the append
   * returned (for an `appendId` already applied, the stored slot's index).
   * @throws {TypeError} `threadId`, `fromId` or `toId` is not a non-empty
   * string, an optional field has the wrong type, or `payload` is `undefined`
   * or holds a value `serializeSlot` cannot encode (a class instance, say).
   * @throws {RangeError} `threadId` is too long, `appendId` is over 128 UTF-8
   * bytes, the encoded slot is over `maxSlotBytes`, or `payload` holds a
   * value `serializeSlot` refuses as out of range.
   * @throws {SlotLimitError} The thread holds `maxSlotsPerThread` slots.
   * @throws {ThreadLimitError} The thread is new and `maxThreads` live threads exist.
   *
   * @example Concurrent appends get distinct indexes
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
   *
   * @example A retried append returns the same slot
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer<string>(backend);
   * const options = { fromId: "router", toId: "greeter", appendId: "call-7" };
   * const first = await buffer.append("t1", "greet Ada", options);
   * const retried = await buffer.append("t1", "greet Ada", options);
   * assert.equal(retried.slotIndex, first.slotIndex);
   * assert.equal(await buffer.threadLength("t1"), 1);
   * ```
   */
  async append(
    threadId: string,
    payload: T,
    options: AppendOptions,
  ): Promise<BufferSlot<T>> {
    checkNonEmptyString("threadId", threadId);
    const now = this.#now();
    const stored = storedSlot(threadId, payload, options, now);
    const bytes = serializeSlot(stored);
    const appendOptions: BufferAppendOptions = {};
    if (options.appendId !== undefined) {
      appendOptions.appendId = options.appendId;
    }
    // Runs beside the append and never rejects: awaited so that no call is
    // left running when append settles.
    const refreshed = this.#pairs.refresh(threadId, now);
    let slotIndex: number;
    try {
      slotIndex = await this.backend.bufferAppend(
        threadId,
        bytes,
        appendOptions,
      );
    } finally {
      await refreshed;
    }
    return toSlot<T>(stored, threadId, slotIndex, payload);
  }

  /**
   * Watches a thread: yields its slots with index >= `fromIndex` as they are
   * appended, by any isolate, process or machine on the same store, each
   * once, in index order, over the backend's `bufferWatch` (no polling of
   * your own). Each slot's `slotIndex` is its index.
   *
   * By default (no `fromIndex`) only slots appended after the watch starts
   * are yielded, and it starts at the first `next()`, not when `watch()` is
   * called: to be sure to see the answer to a message you appended at index
   * `i`, pass `fromIndex: i + 1`.
   *
   * The watch ends (`done`) when `signal` aborts, on `return()` (`break` in
   * `for await`; it also ends a `next()` that is waiting), when the backend
   * closes, and when the thread is deleted or expires. A slot that was not
   * written by a `ContextBuffer` rejects its `next()` with a `BackendError`
   * and ends the watch.
   *
   * @param threadId The thread; one that does not exist yet is waited for.
   * @param options Where to start (`fromIndex`, default: the thread's length
   * when the watch starts) and a `signal` to stop.
   * @returns An iterator of the slots. Bad arguments (an empty `threadId`, a
   * negative `fromIndex`, ...) reject its first `next()` with a `TypeError`
   * or `RangeError` naming them.
   *
   * @example Follow a conversation as it goes
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer<string>(backend);
   * await buffer.append("t1", "first", { fromId: "a", toId: "b" });
   * setTimeout(() => buffer.append("t1", "second", { fromId: "b", toId: "a" }), 10);
   *
   * const seen: [number, string][] = [];
   * for await (const slot of buffer.watch("t1", { fromIndex: 0, signal: AbortSignal.timeout(5_000) })) {
   *   seen.push([slot.slotIndex, slot.payload]);
   *   if (seen.length === 2) break; // ends the watch
   * }
   * assert.deepEqual(seen, [[0, "first"], [1, "second"]]);
   * ```
   */
  watch(
    threadId: string,
    options?: BufferWatchOptions,
  ): AsyncIterableIterator<BufferSlot<T>> {
    return new SlotWatch<T>(this.backend, threadId, options);
  }

  /**
   * Waits for the first slot of a thread that `predicate` accepts, among
   * those with index >= `fromIndex` (default: the ones appended after the
   * wait starts), over {@linkcode ContextBuffer.watch}. What an agent does
   * instead of polling: the greeter waits for its call, the caller for the
   * answer.
   *
   * Pass `fromIndex`: the answer to a message appended at index `i` is at an
   * index above `i`, so `fromIndex: i + 1` cannot miss it, however fast it
   * comes; `fromIndex: 0` also finds a slot that was already there. The
   * watch the wait opens is ended whatever the outcome (match, timeout,
   * abort, error), and its timer cleared.
   *
   * @param threadId The thread; one that does not exist yet is waited for.
   * @param predicate Tells whether a slot is the one awaited. Its errors reject the wait.
   * @param options `fromIndex`, a `signal` to give up, and `timeoutMs`.
   * @returns The first matching slot (frozen).
   * @throws {TypeError} `threadId` is not a non-empty string, `predicate` is
   * not a function, or `signal` is not an `AbortSignal`.
   * @throws {RangeError} `fromIndex` is not a non-negative integer, or
   * `timeoutMs` is not a non-negative finite number.
   * @throws {BackendError} No slot matched within `timeoutMs` (the message
   * names the thread); or the thread was deleted or expired first; or a
   * slot was not written by a `ContextBuffer`.
   * @throws {BackendClosedError} The backend closed before a slot matched.
   * @throws {unknown} `signal` aborted: its `reason` (a `DOMException` named
   * `AbortError` or `TimeoutError` unless you gave another).
   *
   * @example The caller waits for the answer another agent appends
   * ```ts
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * type Message = { type: "question" | "answer"; text: string };
   * await using backend = new InMemoryBackend(); // or kv/redis: any process
   * const buffer = new ContextBuffer<Message>(backend);
   *
   * // The calculator: waits for a question, then answers it.
   * const calculator = (async () => {
   *   const question = await buffer.waitFor("t1", (s) => s.payload.type === "question", {
   *     fromIndex: 0,
   *     timeoutMs: 5_000,
   *   });
   *   await buffer.append("t1", { type: "answer", text: "4" }, { fromId: "calc", toId: question.fromId });
   * })();
   *
   * const question = await buffer.append("t1", { type: "question", text: "2+2?" }, { fromId: "user", toId: "calc" });
   * const answer = await buffer.waitFor("t1", (s) => s.payload.type === "answer", {
   *   fromIndex: question.slotIndex + 1,
   *   timeoutMs: 5_000,
   * });
   * await calculator;
   * assert.deepEqual([answer.slotIndex, answer.payload.text], [1, "4"]);
   * ```
   *
   * @example A timeout names the thread
   * ```ts
   * import { BackendError } from "@xml-pipeline/shared-backend";
   * import { ContextBuffer } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const buffer = new ContextBuffer(backend);
   * await assert.rejects(
   *   buffer.waitFor("t1", () => true, { timeoutMs: 20 }),
   *   (error: Error) => error instanceof BackendError && /thread "t1".*timeoutMs \(20\)/.test(error.message),
   * );
   * ```
   */
  waitFor(
    threadId: string,
    predicate: (slot: BufferSlot<T>) => boolean,
    options?: WaitForOptions,
  ): Promise<BufferSlot<T>> {
    return waitForSlot<T>(this.backend, threadId, predicate, options);
  }

  /**
   * Reads a whole thread.
   *
   * **One rule for missing threads**: every read of a list of slots
   * (`getThread`, {@linkcode ContextBuffer.getSlice},
   * {@linkcode ContextBuffer.getByType}, {@linkcode ContextBuffer.getFrom})
   * returns an empty array for a thread that does not exist, as the
   * protocol's `bufferGetThread` does; only {@linkcode ContextBuffer.getSlot},
   * which reads one slot, returns `null`. Why not `null`: a thread exists
   * from its first append until it is deleted or expires, so no thread is
   * ever empty, and an empty array says all that `null` would, without a
   * `?? []` at every call. Use {@linkcode ContextBuffer.threadExists} to ask.
   *
   * @param threadId The thread.
   * @returns Its slots in index order (frozen, in a frozen array); empty if
   * the thread does not exist (or expired).
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
   * assert.deepEqual(await buffer.getThread("t1"), []);
   * await buffer.append("t1", "one", { fromId: "a", toId: "b" });
   * await buffer.append("t1", "two", { fromId: "b", toId: "a" });
   * const thread = await buffer.getThread("t1");
   * assert.deepEqual(thread.map((s) => [s.slotIndex, s.payload]), [[0, "one"], [1, "two"]]);
   * ```
   */
  async getThread(threadId: string): Promise<readonly BufferSlot<T>[]> {
    const raw = await this.backend.bufferGetThread(threadId);
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
   * assert.deepEqual(await buffer.getThread("t1"), []);
   * assert.equal(await buffer.deleteThread("t1"), false);
   * ```
   */
  deleteThread(threadId: string): Promise<boolean> {
    this.#pairs.forget(threadId);
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
    return Object.freeze(thread.filter((slot) => slot[field] === value));
  }
}
