// The shapes of the typed layer's API: a slot as read, the options of
// append, waitFor and the buffer, and what stats() reports. Types only:
// context.ts re-exports them; nothing here reads or writes a store.

import type { BufferWatchOptions } from "./protocol.ts";

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
  /**
   * Makes the append idempotent, passed through to the backend's
   * `bufferAppend`: appends to one thread with the same `appendId`, from any
   * process, at any time while the thread lives, store one slot, and every
   * one of them returns a slot with its `slotIndex`. So a retried append
   * (after a timeout, a crash, a lost reply) returns the same slot instead
   * of storing the message twice. Only the first call's slot is stored: the
   * slot a repeat returns carries the stored `slotIndex` and this call's
   * other fields (its `timestamp`, say); read the stored one with
   * {@linkcode ContextBuffer.getSlot}. A non-empty, well-formed string of at
   * most 128 UTF-8 bytes (otherwise a `TypeError` or `RangeError` naming
   * `appendId`); the ids of a thread are forgotten with it.
   *
   * @default {undefined}
   */
  appendId?: string;
}

/**
 * Options of {@linkcode ContextBuffer.waitFor}: where the watch starts, a
 * signal to give up, and a timeout.
 *
 * @example
 * ```ts
 * import { ContextBuffer, type WaitForOptions } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const buffer = new ContextBuffer<string>(backend);
 * await buffer.append("t1", "ping", { fromId: "a", toId: "b" });
 * const options: WaitForOptions = { fromIndex: 0, timeoutMs: 5_000 };
 * const slot = await buffer.waitFor("t1", (s) => s.payload === "ping", options);
 * assert.equal(slot.slotIndex, 0);
 * ```
 */
export interface WaitForOptions extends BufferWatchOptions {
  /**
   * Gives up after this many milliseconds: the wait rejects with a
   * `BackendError` naming the thread. A non-negative finite number.
   *
   * @default {undefined: no timeout}
   */
  timeoutMs?: number;
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
