// The fixtures every section of the conformance suite shares: the `Check` a
// section module lists and what a check receives (`Open`, `TimeControl`), the
// slot makers, the id cases, and the assertions several checks make. It holds
// no check and never opens a backend; a helper used by one check only stays
// beside that check.

import assert from "node:assert/strict";
import type { BackendConfig } from "../config.ts";
import type { SharedBackend } from "../protocol.ts";

/** What a check may set: the suite owns the prefix; `tenant` is appended to the step's prefix. */
export type CheckConfig = Omit<BackendConfig, "prefix"> & { tenant?: string };
/** Opens a backend for a check, under the step's prefix; the runner clears and closes it. */
export type Open = (config?: CheckConfig) => Promise<SharedBackend>;

/** One check of the contract: one `t.step`, named by the behaviour it checks. */
export interface Check {
  name: string;
  needsSharedStore?: boolean;
  fn: (open: Open, time: TimeControl) => Promise<void>;
}

export interface TimeControl {
  /** The TTL to use for TTL checks. */
  ttlMs: number;
  /** The contract's slack after expiry: 1 s. */
  slackMs: number;
  /** The current time on the backends' clock. */
  now(): number;
  /** Waits until the backends' clock reads at least `at`. */
  until(at: number): Promise<void>;
  /** Whether the clock is fake (exact) or real (checks need margins). */
  exact: boolean;
}

/** A slot of the given byte values. */
export const bytes = (...values: number[]): Uint8Array =>
  new Uint8Array(values);

/** A slot whose content says which writer and which sequence number made it. */
export function tagged(writer: number, seq: number, size = 16): Uint8Array {
  const slot = new Uint8Array(size);
  const view = new DataView(slot.buffer);
  view.setUint32(0, writer);
  view.setUint32(4, seq);
  for (let i = 8; i < size; i++) slot[i] = (writer * 31 + seq * 7 + i) & 0xff;
  return slot;
}

/** A slot of `size` pseudo-random bytes, the same for the same `seed`. */
export function patterned(size: number, seed: number): Uint8Array {
  const slot = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    slot[i] = x & 0xff;
  }
  return slot;
}

/** Asserts byte equality without assert's diff, which takes minutes on MiB-sized arrays. */
export function assertSameBytes(
  actual: Uint8Array | null | undefined,
  expected: Uint8Array,
  message: string,
): void {
  assert.ok(actual instanceof Uint8Array, `${message}: not a Uint8Array`);
  assert.equal(actual.byteLength, expected.byteLength, `${message}: length`);
  for (let i = 0; i < expected.byteLength; i++) {
    if (actual[i] !== expected[i]) {
      assert.fail(
        `${message}: byte ${i} is ${actual[i]}, expected ${expected[i]}`,
      );
    }
  }
}

/** Asserts that `indexes[i]` are exactly 0..n-1 and slot i holds the bytes appended with index i. */
export async function assertDense(
  backend: SharedBackend,
  threadId: string,
  appended: { index: number; slot: Uint8Array }[],
): Promise<void> {
  const indexes = appended.map((a) => a.index).sort((a, b) => a - b);
  assert.deepEqual(
    indexes,
    Array.from({ length: appended.length }, (_, i) => i),
    `indexes of ${JSON.stringify(threadId)} are not exactly 0..n-1`,
  );
  const stored = await backend.bufferGetThread(threadId);
  assert.equal(stored.length, appended.length);
  for (const { index, slot } of appended) {
    assert.deepEqual(
      stored[index],
      slot,
      `slot ${index} does not hold the bytes whose append returned ${index}`,
    );
  }
}

/** Valid ids that a naive key scheme, a glob, a format string or a plain object would mangle. */
export const ID_CASES: string[] = [
  ":",
  "*",
  "?",
  "[",
  "]",
  "\\",
  "a b",
  "line\nbreak",
  "\u{1F9F5}thread",
  "__proto__",
  "constructor",
  "hasOwnProperty",
  "a:b:c",
  "xp:",
  "{tag}",
  "%s",
  "\0nul",
  "x".repeat(1024),
  "\u00e9".repeat(512), // 1024 UTF-8 bytes
];

/** Ids that are not non-empty, well-formed strings, with how a message names each. */
export const BAD_IDS: [unknown, string][] = [
  ["", "an empty string"],
  ["a\uD800b", "a lone high surrogate"],
  ["\uDC00", "a lone low surrogate"],
  [undefined, "undefined"],
  [null, "null"],
  [42, "a number"],
  [{}, "an object"],
  [["a"], "an array"],
];

/** Ids over the 1024 UTF-8 byte limit, with how a message names each. */
export const LONG_IDS: [string, string][] = [
  ["x".repeat(1025), "1025 ASCII characters"],
  ["\u00e9".repeat(512) + "x", "1025 UTF-8 bytes"],
  ["\u{1F600}".repeat(257), "1028 UTF-8 bytes of emoji"],
];

/** Lets a check pass what the types forbid, as an untyped caller may. */
// deno-lint-ignore no-explicit-any
export type Loose = any;

/** Calls of every method that takes an id, with `bad` in the position named by the second element. */
export function idCalls(
  b: SharedBackend,
  bad: unknown,
): [string, string, () => Promise<unknown>][] {
  const x = bad as Loose;
  return [
    ["bufferAppend", "threadId", () => b.bufferAppend(x, bytes(1))],
    ["bufferGetThread", "threadId", () => b.bufferGetThread(x)],
    ["bufferGetRange", "threadId", () => b.bufferGetRange(x, 0)],
    ["bufferGetSlot", "threadId", () => b.bufferGetSlot(x, 0)],
    ["bufferThreadLen", "threadId", () => b.bufferThreadLen(x)],
    ["bufferThreadExists", "threadId", () => b.bufferThreadExists(x)],
    ["bufferDeleteThread", "threadId", () => b.bufferDeleteThread(x)],
    ["registrySet", "chain", () => b.registrySet(x, "u")],
    ["registrySet", "uuid", () => b.registrySet("c", x)],
    ["registrySetIfAbsent", "chain", () => b.registrySetIfAbsent(x, "u")],
    ["registrySetIfAbsent", "uuid", () => b.registrySetIfAbsent("c", x)],
    ["registryGetUuid", "chain", () => b.registryGetUuid(x)],
    ["registryGetChain", "uuid", () => b.registryGetChain(x)],
    ["registryDelete", "uuid", () => b.registryDelete(x)],
  ];
}

/** Asserts that the backend holds and lists no thread, slot or registry pair. */
export async function assertEmpty(
  b: SharedBackend,
  what: string,
): Promise<void> {
  const stats = await b.stats();
  assert.equal(stats.threads, 0, `${what}: a thread was written`);
  assert.equal(stats.slots, 0, `${what}: a slot was written`);
  assert.equal(
    stats.registryEntries,
    0,
    `${what}: a registry pair was written`,
  );
  assert.deepEqual(
    await b.bufferListThreads(),
    [],
    `${what}: a thread is listed`,
  );
  assert.equal(
    (await b.registryListAll()).size,
    0,
    `${what}: a pair is listed`,
  );
}
