/**
 * The errors a caller may want to catch. Caller mistakes (a bad argument) are
 * plain `TypeError` / `RangeError` instead; these are conditions of the store.
 *
 * @module
 */

/**
 * The base class of every condition a backend reports: a limit reached, a
 * closed backend, a store that failed or could not be reached. The store's
 * own error, when there is one, is kept as `cause`.
 *
 * @example Catch every backend condition at once
 * ```ts
 * import { BackendError, InMemoryBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const backend = new InMemoryBackend({ maxSlotsPerThread: 1 });
 * await backend.bufferAppend("t1", new Uint8Array([1]));
 * await assert.rejects(
 *   backend.bufferAppend("t1", new Uint8Array([2])),
 *   BackendError,
 * );
 * await backend.close();
 * ```
 */
export class BackendError extends Error {
  /**
   * Makes a backend error.
   *
   * @param message What failed, the state, and the option to change.
   * @param options `cause`: the store's own error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "BackendError";
  }
}

/**
 * An append was refused because the thread already holds
 * `maxSlotsPerThread` slots. Nothing was written.
 *
 * @example
 * ```ts
 * import { InMemoryBackend, SlotLimitError } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend({ maxSlotsPerThread: 1 });
 * await backend.bufferAppend("t1", new Uint8Array([1]));
 * await assert.rejects(backend.bufferAppend("t1", new Uint8Array([2])), SlotLimitError);
 * assert.equal(await backend.bufferThreadLen("t1"), 1);
 * ```
 */
export class SlotLimitError extends BackendError {
  /** The thread that is full. */
  readonly threadId: string;
  /** The limit in force (`maxSlotsPerThread`). */
  readonly limit: number;

  /**
   * Makes the error for a full thread.
   *
   * @param threadId The thread that is full.
   * @param limit The `maxSlotsPerThread` in force.
   * @param options `cause`: the store's own error, if any.
   */
  constructor(threadId: string, limit: number, options?: ErrorOptions) {
    super(
      `Cannot append to thread ${
        JSON.stringify(threadId)
      }: maxSlotsPerThread (${limit}) reached`,
      options,
    );
    this.name = "SlotLimitError";
    this.threadId = threadId;
    this.limit = limit;
  }
}

/**
 * An append that would create a new thread was refused because
 * `maxThreads` live threads exist. Nothing was written.
 *
 * @example
 * ```ts
 * import { InMemoryBackend, ThreadLimitError } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend({ maxThreads: 1 });
 * await backend.bufferAppend("t1", new Uint8Array([1]));
 * await assert.rejects(backend.bufferAppend("t2", new Uint8Array([1])), ThreadLimitError);
 * assert.equal(await backend.bufferThreadExists("t2"), false);
 * ```
 */
export class ThreadLimitError extends BackendError {
  /** The thread that could not be created. */
  readonly threadId: string;
  /** The limit in force (`maxThreads`). */
  readonly limit: number;

  /**
   * Makes the error for a thread that could not be created.
   *
   * @param threadId The thread that could not be created.
   * @param limit The `maxThreads` in force.
   * @param options `cause`: the store's own error, if any.
   */
  constructor(threadId: string, limit: number, options?: ErrorOptions) {
    super(
      `Cannot create thread ${
        JSON.stringify(threadId)
      }: maxThreads (${limit}) live threads exist`,
      options,
    );
    this.name = "ThreadLimitError";
    this.threadId = threadId;
    this.limit = limit;
  }
}

/**
 * A call was made on a backend after `close()`.
 *
 * @example
 * ```ts
 * import { BackendClosedError, InMemoryBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const backend = new InMemoryBackend();
 * await backend.close();
 * await assert.rejects(backend.ping(), BackendClosedError);
 * ```
 */
export class BackendClosedError extends BackendError {
  /**
   * Makes the error for a call after `close()`.
   *
   * @param kind The backend's kind, for the message.
   * @param method The method that was called.
   */
  constructor(kind: string, method: string) {
    super(`Cannot call ${method}(): the ${kind} backend is closed`);
    this.name = "BackendClosedError";
  }
}
