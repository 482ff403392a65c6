// The stored layout of a ContextBuffer slot: the metadata and payload that
// `ContextBuffer.append` serializes, and the checks and decoding of reads.
// It never touches a backend: the buffer does the I/O, this module the shapes.

import { BackendError } from "./errors.ts";
import { deserializeSlot } from "./serialize.ts";
import type { AppendOptions, BufferSlot } from "./_context_types.ts";
import { describe } from "./_messages.ts";
import { checkNonEmptyString } from "./_validate.ts";

/** What is stored per slot: the metadata without `slotIndex`, and the payload. */
export interface StoredSlot {
  /** Layout version. */
  v: 1;
  threadId: string;
  fromId: string;
  toId: string;
  timestamp: string;
  payloadType: string;
  ownName?: string;
  isSelfCall?: true;
  usageInstructions?: string;
  payload: unknown;
}

/**
 * The type name {@linkcode ContextBuffer.append} stores for a payload when
 * no `payloadType` option is given:
 *
 * 1. an instance of a class (any object whose prototype is neither
 *    `Object.prototype` nor `null`): its constructor's name (`"Greeting"`,
 *    `"Date"`, `"Map"`, `"Array"`);
 * 2. a plain object with a non-empty string `type` field: that field
 *    (`{ type: "greeting" }` gives `"greeting"`);
 * 3. any other plain object: `"Object"`;
 * 4. `null`: `"null"`; a primitive: its `typeof` (`"string"`, `"number"`,
 *    `"boolean"`, `"bigint"`).
 *
 * Of class instances, {@linkcode serializeSlot} stores only `Date`, `Map`
 * and `Uint8Array` (and arrays); it refuses others with a `TypeError`, so
 * store a class's data as a plain object and name it with a `type` field or
 * the `payloadType` option. The name is stored at append time: read the
 * slot's `payloadType` rather than calling this on a read payload.
 *
 * @param payload The payload.
 * @returns Its type name.
 *
 * @example
 * ```ts
 * import { payloadTypeName } from "@xml-pipeline/shared-backend/context";
 * import assert from "node:assert/strict";
 *
 * class Greeting {
 *   constructor(readonly text: string) {}
 * }
 * assert.equal(payloadTypeName(new Greeting("hi")), "Greeting");
 * assert.equal(payloadTypeName({ type: "greeting", text: "hi" }), "greeting");
 * assert.equal(payloadTypeName({ text: "hi" }), "Object");
 * assert.equal(payloadTypeName([1, 2]), "Array");
 * assert.equal(payloadTypeName("hi"), "string");
 * assert.equal(payloadTypeName(null), "null");
 * ```
 */
export function payloadTypeName(payload: unknown): string {
  if (payload === null) return "null";
  if (typeof payload !== "object") return typeof payload;
  const proto: unknown = Object.getPrototypeOf(payload);
  if (proto !== null && proto !== Object.prototype) {
    const name: unknown = (proto as { constructor?: { name?: unknown } })
      .constructor?.name;
    if (typeof name === "string" && name !== "") return name;
  }
  const type: unknown = (payload as { type?: unknown }).type;
  if (typeof type === "string" && type !== "") return type;
  return "Object";
}

/**
 * Checks `payload` and `options` of an append and builds what is stored,
 * timestamped `now` (ms since the epoch). Throws before anything is written.
 */
export function storedSlot<T>(
  threadId: string,
  payload: T,
  options: AppendOptions,
  now: number,
): StoredSlot {
  if (options === null || typeof options !== "object") {
    throw new TypeError(
      "Invalid options: expected an object with fromId and toId",
    );
  }
  const { fromId, toId, ownName, isSelfCall, usageInstructions } = options;
  checkNonEmptyString("fromId", fromId);
  checkNonEmptyString("toId", toId);
  checkOptional("ownName", ownName, "string");
  checkOptional("isSelfCall", isSelfCall, "boolean");
  checkOptional("usageInstructions", usageInstructions, "string");
  if (options.payloadType !== undefined) {
    checkNonEmptyString("payloadType", options.payloadType);
  }
  if (payload === undefined) {
    throw new TypeError(
      "Invalid payload: undefined cannot be stored; use null",
    );
  }
  const stored: StoredSlot = {
    v: 1,
    threadId,
    fromId,
    toId,
    timestamp: new Date(now).toISOString(),
    payloadType: options.payloadType ?? payloadTypeName(payload),
    payload,
  };
  if (ownName !== undefined) stored.ownName = ownName;
  if (isSelfCall === true) stored.isSelfCall = true;
  if (usageInstructions !== undefined && usageInstructions !== "") {
    stored.usageInstructions = usageInstructions;
  }
  return stored;
}

function checkOptional(
  name: string,
  value: unknown,
  type: "string" | "boolean",
): void {
  if (value !== undefined && typeof value !== type) {
    throw new TypeError(
      `Invalid ${name}: expected a ${type} or undefined, got ${
        describe(value)
      }`,
    );
  }
}

export function toSlot<T>(
  stored: StoredSlot,
  threadId: string,
  slotIndex: number,
  payload: T,
): BufferSlot<T> {
  return Object.freeze({
    payload,
    threadId,
    fromId: stored.fromId,
    toId: stored.toId,
    slotIndex,
    timestamp: stored.timestamp,
    payloadType: stored.payloadType,
    ownName: stored.ownName ?? null,
    isSelfCall: stored.isSelfCall === true,
    usageInstructions: stored.usageInstructions ?? "",
  });
}

export function decodeAll<T>(
  threadId: string,
  raw: Uint8Array[],
  first: number,
): readonly BufferSlot<T>[] {
  return Object.freeze(
    raw.map((bytes, i) => decode<T>(threadId, bytes, first + i)),
  );
}

export function decode<T>(
  threadId: string,
  bytes: Uint8Array,
  slotIndex: number,
): BufferSlot<T> {
  let value: unknown;
  try {
    value = deserializeSlot(bytes);
  } catch (cause) {
    throw foreignSlot(threadId, slotIndex, "it cannot be decoded", cause);
  }
  if (!isStoredSlot(value)) {
    throw foreignSlot(
      threadId,
      slotIndex,
      "it lacks the ContextBuffer metadata",
    );
  }
  return toSlot<T>(value, threadId, slotIndex, value.payload as T);
}

function foreignSlot(
  threadId: string,
  slotIndex: number,
  why: string,
  cause?: unknown,
): BackendError {
  return new BackendError(
    `Cannot read slot ${slotIndex} of thread ${
      JSON.stringify(threadId)
    } as a ContextBuffer slot: ${why} (was it appended with bufferAppend directly?)`,
    cause === undefined ? undefined : { cause },
  );
}

function isStoredSlot(value: unknown): value is StoredSlot {
  if (value === null || typeof value !== "object") return false;
  const v = value as Record<string, unknown>;
  return v.v === 1 && typeof v.fromId === "string" &&
    typeof v.toId === "string" && typeof v.timestamp === "string" &&
    typeof v.payloadType === "string" && "payload" in v &&
    (v.ownName === undefined || typeof v.ownName === "string") &&
    (v.isSelfCall === undefined || v.isSelfCall === true) &&
    (v.usageInstructions === undefined ||
      typeof v.usageInstructions === "string");
}
