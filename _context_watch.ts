// ContextBuffer's watching: the backend's `bufferWatch` stream of bytes
// decoded into BufferSlots, and the wait for the first slot that matches.
// It never writes and never polls: the backend's watch does the waiting.

import type { BufferSlot, WaitForOptions } from "./_context_types.ts";
import { BackendError } from "./errors.ts";
import type {
  BufferWatchOptions,
  SharedBackend,
  WatchedSlot,
} from "./protocol.ts";
import { decode } from "./_context_slots.ts";
import { describe, quote } from "./_messages.ts";
import { checkWatchOptions } from "./_validate.ts";

/**
 * The slots of `backend.bufferWatch(threadId, options)`, decoded. `return()`
 * ends the backend's watch at once, also while a `next()` waits (it resolves
 * `done`). A slot that does not decode rejects its `next()` and ends the
 * watch.
 */
export class SlotWatch<T> implements AsyncIterableIterator<BufferSlot<T>> {
  readonly #threadId: string;
  readonly #inner: AsyncIterableIterator<WatchedSlot>;

  constructor(
    backend: SharedBackend,
    threadId: string,
    options: BufferWatchOptions | undefined,
  ) {
    this.#threadId = threadId;
    this.#inner = backend.bufferWatch(threadId, options);
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<BufferSlot<T>> {
    return this;
  }

  async next(): Promise<IteratorResult<BufferSlot<T>, undefined>> {
    const result = await this.#inner.next();
    if (result.done === true) return { done: true, value: undefined };
    const { index, slot } = result.value;
    try {
      return { done: false, value: decode<T>(this.#threadId, slot, index) };
    } catch (error) {
      await this.return();
      throw error;
    }
  }

  async return(): Promise<IteratorResult<BufferSlot<T>, undefined>> {
    await this.#inner.return?.();
    return { done: true, value: undefined };
  }
}

/**
 * Resolves with the first slot of `watch` that `predicate` accepts; rejects
 * with a `BackendError` naming the thread after `timeoutMs`, with the
 * signal's reason when it aborts, and with a `BackendError` when the watch
 * ends first (the thread was deleted or expired; a closed backend rejects
 * with `BackendClosedError`). The watch is ended (and the timer cleared)
 * whatever the outcome.
 */
export async function waitForSlot<T>(
  backend: SharedBackend,
  threadId: string,
  predicate: (slot: BufferSlot<T>) => boolean,
  options: WaitForOptions | undefined,
): Promise<BufferSlot<T>> {
  if (typeof predicate !== "function") {
    throw new TypeError(
      `Invalid predicate: expected a function, got ${describe(predicate)}`,
    );
  }
  checkWatchOptions(options);
  const { timeoutMs, ...watchOptions } = options ?? {};
  if (
    timeoutMs !== undefined &&
    (typeof timeoutMs !== "number" || !(timeoutMs >= 0) ||
      !Number.isFinite(timeoutMs))
  ) {
    throw new RangeError(
      `Invalid timeoutMs: expected a non-negative finite number, got ${
        describe(timeoutMs)
      }`,
    );
  }
  const watch = new SlotWatch<T>(backend, threadId, watchOptions);
  let timedOut = false;
  const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
    timedOut = true;
    void watch.return();
  }, timeoutMs);
  try {
    for (;;) {
      const result = await watch.next();
      if (result.done === true) break;
      if (predicate(result.value)) return result.value;
    }
  } finally {
    clearTimeout(timer);
    await watch.return();
  }
  const cannot = `Cannot wait for a slot of thread ${quote(threadId)}`;
  if (timedOut) {
    throw new BackendError(
      `${cannot}: none matched within timeoutMs (${timeoutMs})`,
    );
  }
  const signal = options?.signal;
  if (signal?.aborted === true) throw signal.reason;
  // The watch ended by itself: a closed backend rejects this read with
  // BackendClosedError; otherwise the thread went away.
  const exists = await backend.bufferThreadExists(threadId);
  throw new BackendError(
    `${cannot}: the thread ${
      exists ? "was deleted and started anew" : "was deleted or expired"
    } before one matched`,
  );
}
