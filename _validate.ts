// Argument checks shared by every backend, so that all of them reject the same
// inputs with the same errors (contract items 3 and 4) before touching a store.
// It never reads or writes a store.

import { describe } from "./_messages.ts";
import type { SharedBackend } from "./protocol.ts";

/** Longest id, in UTF-8 bytes (contract item 4). */
export const MAX_ID_BYTES = 1024;

/** Longest append id, in UTF-8 bytes. */
export const MAX_APPEND_ID_BYTES = 128;

const encoder = new TextEncoder();

/**
 * Throws a `TypeError` naming `name` unless `value` is a non-empty string:
 * the one wording of this mistake, wherever it is made.
 */
export function checkNonEmptyString(
  name: string,
  value: unknown,
): asserts value is string {
  if (typeof value !== "string" || value === "") {
    throw new TypeError(
      `Invalid ${name}: expected a non-empty string, got ${describe(value)}`,
    );
  }
}

/** Throws unless `value` is a non-empty string of at most 1024 UTF-8 bytes. */
export function checkId(name: string, value: unknown): asserts value is string {
  checkBoundedString(name, value, MAX_ID_BYTES);
}

/** Throws unless `options` (given) is an object: what every options bag must be. */
function checkOptionsObject(options: unknown): asserts options is object {
  if (options === null || typeof options !== "object") {
    throw new TypeError(
      `Invalid options: expected an object or undefined, got ${
        describe(options)
      }`,
    );
  }
}

/** Throws unless `options` are valid `bufferAppend` options (or undefined). */
export function checkAppendOptions(options: unknown): void {
  if (options === undefined) return;
  checkOptionsObject(options);
  const { appendId } = options as { appendId?: unknown };
  if (appendId !== undefined) {
    checkBoundedString("appendId", appendId, MAX_APPEND_ID_BYTES);
  }
}

/**
 * Checks `registryRefresh` options and returns the TTL to refresh with:
 * `options.ttlMs` (a positive integer) or `defaultTtlMs`.
 */
export function refreshTtl(options: unknown, defaultTtlMs: number): number {
  if (options === undefined) return defaultTtlMs;
  checkOptionsObject(options);
  const { ttlMs } = options as { ttlMs?: unknown };
  if (ttlMs === undefined) return defaultTtlMs;
  if (!isNonNegativeInteger(ttlMs) || ttlMs === 0) {
    throw new RangeError(
      `Invalid ttlMs: expected a positive integer, got ${describe(ttlMs)}`,
    );
  }
  return ttlMs;
}

/** Throws unless `options` are valid `bufferWatch` options (or undefined). */
export function checkWatchOptions(options: unknown): void {
  if (options === undefined) return;
  checkOptionsObject(options);
  const { fromIndex, signal } = options as {
    fromIndex?: unknown;
    signal?: unknown;
  };
  if (fromIndex !== undefined && !isNonNegativeInteger(fromIndex)) {
    throw new RangeError(
      `Invalid fromIndex: expected a non-negative integer, got ${
        describe(fromIndex)
      }`,
    );
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError(
      `Invalid signal: expected an AbortSignal, got ${describe(signal)}`,
    );
  }
}

/** Throws unless `value` is a non-empty, well-formed string of at most `maxBytes` UTF-8 bytes. */
function checkBoundedString(
  name: string,
  value: unknown,
  maxBytes: number,
): asserts value is string {
  checkNonEmptyString(name, value);
  // A lone surrogate has no UTF-8 form: stores would turn it into U+FFFD, so
  // two different ids could name one key.
  if (!value.isWellFormed()) {
    throw new TypeError(
      `Invalid ${name}: not well-formed Unicode (it holds a lone surrogate)`,
    );
  }
  // A UTF-16 code unit encodes to at most 3 UTF-8 bytes: short ids skip the encoding.
  if (value.length * 3 > maxBytes) {
    const bytes = encoder.encode(value).length;
    if (bytes > maxBytes) {
      throw new RangeError(
        `Invalid ${name}: ${bytes} UTF-8 bytes, at most ${maxBytes} allowed`,
      );
    }
  }
}

/** Throws unless `slot` is a `Uint8Array` of at most `maxSlotBytes` bytes. */
export function checkSlot(
  slot: unknown,
  maxSlotBytes: number,
): asserts slot is Uint8Array {
  if (!(slot instanceof Uint8Array)) {
    throw new TypeError(
      `Invalid slot: expected a Uint8Array, got ${describe(slot)}`,
    );
  }
  if (slot.byteLength > maxSlotBytes) {
    throw new RangeError(
      `Invalid slot: ${slot.byteLength} bytes exceeds maxSlotBytes (${maxSlotBytes})`,
    );
  }
}

/** Throws unless `start` and `end` (when given) are non-negative integers. */
export function checkRange(start: unknown, end: unknown): void {
  if (!isNonNegativeInteger(start)) {
    throw new RangeError(
      `Invalid start: expected a non-negative integer, got ${describe(start)}`,
    );
  }
  if (end !== undefined && !isNonNegativeInteger(end)) {
    throw new RangeError(
      `Invalid end: expected a non-negative integer, got ${describe(end)}`,
    );
  }
}

/** Whether `index` may name a slot at all (an integer >= 0); the length check is the backend's. */
export function isSlotIndex(index: unknown): index is number {
  return isNonNegativeInteger(index);
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/**
 * Throws a `TypeError` naming `name` unless `value` looks like a
 * {@linkcode SharedBackend} (what the typed layer's constructors take).
 */
export function checkBackend(
  name: string,
  value: unknown,
): asserts value is SharedBackend {
  if (
    value === null || typeof value !== "object" ||
    typeof (value as Partial<SharedBackend>).bufferAppend !== "function" ||
    typeof (value as Partial<SharedBackend>).registrySetIfAbsent !== "function"
  ) {
    throw new TypeError(
      `Invalid ${name}: expected a SharedBackend (see createSharedBackend), got ${
        describe(value)
      }`,
    );
  }
}
