/**
 * The conformance suite: every behaviour of the shared-backend contract that
 * one process can observe, as `t.step`s of one `Deno.test`. Every backend of
 * this package runs it; run it on your own {@linkcode SharedBackend} to check
 * that it behaves the same.
 *
 * @example Run the suite on a backend
 * ```ts
 * import { runConformanceSuite } from "@xml-pipeline/shared-backend/testing";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 *
 * Deno.test("InMemoryBackend meets the contract", async (t) => {
 *   let now = 0;
 *   await runConformanceSuite(t, {
 *     name: "memory",
 *     open: (config) => Promise.resolve(new InMemoryBackend({ ...config, now: () => now })),
 *     advanceTime: (ms) => {
 *       now += ms;
 *     },
 *     sharedStore: false,
 *   });
 * });
 * ```
 *
 * @module
 */

import assert from "node:assert/strict";
import type { BackendConfig } from "../config.ts";
import {
  BackendClosedError,
  SlotLimitError,
  ThreadLimitError,
} from "../errors.ts";
import type { SharedBackend } from "../protocol.ts";

// The types this module's signatures name, so that its documentation is whole
// when `./testing` is read alone.
export type { BackendConfig } from "../config.ts";
export type { BackendKind, BackendStats, SharedBackend } from "../protocol.ts";

/**
 * How the suite opens backends of the implementation under test.
 *
 * @example A harness for backends that share one store
 * ```ts
 * import type { ConformanceHarness } from "@xml-pipeline/shared-backend/testing";
 * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * const harness: ConformanceHarness = {
 *   name: "kv in memory",
 *   open: (config) => KvBackend.open({ ...config, kvPath: ":memory:" }),
 *   sharedStore: false, // each ":memory:" KV is its own store
 *   realTtlMs: 4_000,
 * };
 * await using backend = await harness.open({ prefix: "p:" });
 * assert.equal(backend.kind, "kv");
 * ```
 */
export interface ConformanceHarness {
  /** The backend's name, shown in the test output. */
  name: string;
  /**
   * Opens a new backend with the given config (prefix, TTL and limits set by
   * the suite), adding whatever the harness needs to reach its store.
   */
  open(config: BackendConfig): Promise<SharedBackend>;
  /**
   * Moves the backends' clock forward. When given, TTL checks use a long TTL
   * and this clock; when absent, they use a real TTL of
   * {@linkcode ConformanceHarness.realTtlMs} and sleep.
   */
  advanceTime?: (ms: number) => void | Promise<void>;
  /**
   * The TTL, in milliseconds, of the real-time TTL checks (at least 3000:
   * the checks need margins of a second). They sleep about twice as long.
   *
   * @default {4000}
   */
  realTtlMs?: number;
  /**
   * Whether backends opened in one run share one store (a KV file, a Redis
   * server), so that tenant isolation and cross-instance behaviour can be
   * checked. The suite keeps its steps apart with unique prefixes.
   *
   * @default {true}
   */
  sharedStore?: boolean;
  /**
   * The prefix under which the suite's prefixes are made.
   *
   * @default {"xp-conformance:"}
   */
  prefix?: string;
  /**
   * Declared skips: each step whose name contains a key is reported as
   * ignored, with the value as the reason in its name.
   *
   * @default {{}}
   */
  skip?: Record<string, string>;
}

/** What a check may set: the suite owns the prefix; `tenant` is appended to the step's prefix. */
type CheckConfig = Omit<BackendConfig, "prefix"> & { tenant?: string };
type Open = (config?: CheckConfig) => Promise<SharedBackend>;

interface Check {
  name: string;
  needsSharedStore?: boolean;
  fn: (open: Open, time: TimeControl) => Promise<void>;
}

interface TimeControl {
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

const bytes = (...values: number[]): Uint8Array => new Uint8Array(values);

/** A slot whose content says which writer and which sequence number made it. */
function tagged(writer: number, seq: number, size = 16): Uint8Array {
  const slot = new Uint8Array(size);
  const view = new DataView(slot.buffer);
  view.setUint32(0, writer);
  view.setUint32(4, seq);
  for (let i = 8; i < size; i++) slot[i] = (writer * 31 + seq * 7 + i) & 0xff;
  return slot;
}

function patterned(size: number, seed: number): Uint8Array {
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
function assertSameBytes(
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
async function assertDense(
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

const ID_CASES: string[] = [
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

const BAD_IDS: [unknown, string][] = [
  ["", "an empty string"],
  ["a\uD800b", "a lone high surrogate"],
  ["\uDC00", "a lone low surrogate"],
  [undefined, "undefined"],
  [null, "null"],
  [42, "a number"],
  [{}, "an object"],
  [["a"], "an array"],
];

const LONG_IDS: [string, string][] = [
  ["x".repeat(1025), "1025 ASCII characters"],
  ["\u00e9".repeat(512) + "x", "1025 UTF-8 bytes"],
  ["\u{1F600}".repeat(257), "1028 UTF-8 bytes of emoji"],
];

// deno-lint-ignore no-explicit-any
type Loose = any;

/** Calls of every method that takes an id, with `bad` in the position named by the second element. */
function idCalls(
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

async function assertEmpty(b: SharedBackend, what: string): Promise<void> {
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

const CHECKS: Check[] = [
  // --- context buffer: indexes and bytes ---------------------------------
  {
    name:
      "bufferAppend() returns 0..n-1 in order and bufferThreadLen() counts the slots",
    async fn(open) {
      const b = await open();
      for (let i = 0; i < 5; i++) {
        assert.equal(await b.bufferAppend("t", bytes(i)), i);
        assert.equal(await b.bufferThreadLen("t"), i + 1);
      }
      assert.deepEqual(
        await b.bufferGetThread("t"),
        [0, 1, 2, 3, 4].map((i) => bytes(i)),
      );
    },
  },
  {
    name:
      "bufferAppend() returns dense, unique indexes under 200 concurrent appends to one thread",
    async fn(open) {
      const b = await open();
      const slots = Array.from({ length: 200 }, (_, i) => tagged(1, i));
      const indexes = await Promise.all(
        slots.map((slot) => b.bufferAppend("hot", slot)),
      );
      await assertDense(
        b,
        "hot",
        slots.map((slot, i) => ({ index: indexes[i]!, slot })),
      );
    },
  },
  {
    name:
      "bufferAppend() keeps every thread dense under concurrent appends to 20 threads",
    async fn(open) {
      const b = await open();
      const jobs: Promise<
        { thread: string; index: number; slot: Uint8Array }
      >[] = [];
      for (let seq = 0; seq < 15; seq++) {
        for (let t = 0; t < 20; t++) {
          const slot = tagged(t, seq);
          const thread = `thread-${t}`;
          jobs.push(
            b.bufferAppend(thread, slot).then((index) => ({
              thread,
              index,
              slot,
            })),
          );
        }
      }
      const results = await Promise.all(jobs);
      for (let t = 0; t < 20; t++) {
        const thread = `thread-${t}`;
        await assertDense(
          b,
          thread,
          results.filter((r) => r.thread === thread),
        );
      }
      assert.equal((await b.bufferListThreads()).length, 20);
    },
  },
  {
    name:
      "two backends on one store append to one thread with dense, unique indexes",
    needsSharedStore: true,
    async fn(open) {
      const config = {};
      const [a, b] = [await open(config), await open(config)];
      const jobs = [];
      for (let i = 0; i < 60; i++) {
        for (const [writer, backend] of [a, b].entries()) {
          const slot = tagged(writer, i);
          jobs.push(
            backend.bufferAppend("shared", slot).then((index) => ({
              index,
              slot,
            })),
          );
        }
      }
      const results = await Promise.all(jobs);
      await assertDense(a, "shared", results);
      assert.deepEqual(
        await b.bufferGetThread("shared"),
        await a.bufferGetThread("shared"),
      );
    },
  },
  {
    name:
      "slots round-trip byte-exact: empty, zeros, every byte value, 64 KiB boundaries and 1 MiB",
    async fn(open) {
      const b = await open({ maxSlotBytes: 1024 * 1024 });
      const all = new Uint8Array(256).map((_, i) => i);
      const cases = [
        new Uint8Array(0),
        new Uint8Array(1),
        new Uint8Array(1000),
        all,
        patterned(65_535, 1),
        patterned(65_536, 2),
        patterned(65_537, 3),
        patterned(200_000, 4),
        patterned(1024 * 1024, 5),
      ];
      for (const [i, slot] of cases.entries()) {
        assert.equal(await b.bufferAppend("bytes", slot), i);
      }
      const stored = await b.bufferGetThread("bytes");
      assert.equal(stored.length, cases.length);
      for (const [i, slot] of cases.entries()) {
        assert.ok(
          stored[i] instanceof Uint8Array,
          `slot ${i} is not a Uint8Array`,
        );
        assert.equal(
          stored[i]!.constructor,
          Uint8Array,
          `slot ${i} is not a plain Uint8Array`,
        );
        assertSameBytes(stored[i], slot, `slot ${i} (${slot.length} bytes)`);
        assertSameBytes(
          await b.bufferGetSlot("bytes", i),
          slot,
          `bufferGetSlot(${i})`,
        );
      }
      const range = await b.bufferGetRange("bytes", 6, 9);
      assert.equal(range.length, 3);
      for (const [i, slot] of range.entries()) {
        assertSameBytes(slot, cases[6 + i]!, `bufferGetRange(6, 9)[${i}]`);
      }
    },
  },
  {
    name: "a subarray view is stored as its own bytes only",
    async fn(open) {
      const b = await open();
      const backing = new Uint8Array([9, 9, 1, 2, 3, 9, 9]);
      await b.bufferAppend("view", backing.subarray(2, 5));
      assert.deepEqual(await b.bufferGetSlot("view", 0), bytes(1, 2, 3));
    },
  },
  {
    name:
      "slots are copies: changing an array after bufferAppend() or after a read changes nothing stored",
    async fn(open) {
      const b = await open();
      const slot = bytes(1, 2, 3);
      await b.bufferAppend("copy", slot);
      slot[0] = 99;
      const read = await b.bufferGetSlot("copy", 0);
      assert.deepEqual(read, bytes(1, 2, 3));
      read![1] = 99;
      (await b.bufferGetThread("copy"))[0]![2] = 99;
      (await b.bufferGetRange("copy", 0))[0]![0] = 98;
      assert.deepEqual(await b.bufferGetThread("copy"), [bytes(1, 2, 3)]);
    },
  },
  {
    name:
      "a reader never sees a slot partly written while 1 MiB slots are appended",
    async fn(open) {
      const b = await open({ maxSlotBytes: 1024 * 1024 });
      const size = 1024 * 1024;
      const expected = [0, 1, 2, 3].map((i) => patterned(size, 100 + i));
      let writing = true;
      const writer = (async () => {
        try {
          for (const slot of expected) await b.bufferAppend("big", slot);
        } finally {
          writing = false;
        }
      })();
      let reads = 0;
      try {
        while (writing || reads === 0) {
          const slots = await b.bufferGetThread("big");
          for (const [i, slot] of slots.entries()) {
            assertSameBytes(slot, expected[i]!, `slot ${i} as read`);
          }
          const len = await b.bufferThreadLen("big");
          const last = len > 0 ? await b.bufferGetSlot("big", len - 1) : null;
          if (last !== null) {
            assertSameBytes(last, expected[len - 1]!, "last slot");
          }
          reads++;
        }
      } finally {
        await writer;
      }
      assert.equal(await b.bufferThreadLen("big"), 4);
    },
  },
  // --- reads of indexes and ranges ---------------------------------------
  {
    name:
      "bufferGetSlot() returns null for negative, fractional, NaN, infinite, non-number and out-of-range indexes",
    async fn(open) {
      const b = await open();
      for (let i = 0; i < 3; i++) await b.bufferAppend("t", bytes(i));
      for (
        const index of [
          -1,
          -3,
          0.5,
          1.5,
          NaN,
          Infinity,
          -Infinity,
          3,
          4,
          2 ** 53,
          -0.1,
        ]
      ) {
        assert.equal(await b.bufferGetSlot("t", index), null, `index ${index}`);
      }
      for (const index of ["1", null, undefined, 1n]) {
        assert.equal(
          await b.bufferGetSlot("t", index as Loose),
          null,
          `index ${String(index)}`,
        );
      }
      assert.deepEqual(await b.bufferGetSlot("t", 2), bytes(2));
      assert.deepEqual(await b.bufferGetSlot("t", -0), bytes(0));
      assert.equal(await b.bufferGetSlot("missing", 0), null);
    },
  },
  {
    name:
      "bufferGetRange() clamps like Array.prototype.slice with non-negative bounds",
    async fn(open) {
      const b = await open();
      const slots = [0, 1, 2, 3, 4].map((i) => bytes(i));
      for (const slot of slots) await b.bufferAppend("r", slot);
      const cases: [number, number | undefined][] = [
        [0, undefined],
        [2, undefined],
        [1, 3],
        [0, 5],
        [0, 100],
        [3, 1],
        [2, 2],
        [5, undefined],
        [7, undefined],
        [7, 9],
        [0, 0],
        [4, 5],
      ];
      for (const [start, end] of cases) {
        assert.deepEqual(
          await b.bufferGetRange("r", start, end),
          slots.slice(start, end),
          `range [${start}, ${end})`,
        );
      }
      assert.deepEqual(await b.bufferGetRange("missing", 0), []);
      assert.deepEqual(await b.bufferGetRange("missing", 0, 10), []);
    },
  },
  {
    name:
      "bufferGetRange() rejects bounds that are not non-negative integers with a RangeError",
    async fn(open) {
      const b = await open();
      await b.bufferAppend("r", bytes(1));
      const bad: [unknown, unknown, RegExp][] = [
        [-1, undefined, /start/],
        [1.5, undefined, /start/],
        [NaN, undefined, /start/],
        [Infinity, undefined, /start/],
        ["0", undefined, /start/],
        [0, -1, /end/],
        [0, 2.5, /end/],
        [0, NaN, /end/],
        [0, Infinity, /end/],
        [0, null, /end/],
      ];
      for (const [start, end, name] of bad) {
        await assert.rejects(
          b.bufferGetRange("r", start as Loose, end as Loose),
          (e: unknown) => e instanceof RangeError && name.test(e.message),
          `bounds ${String(start)}, ${String(end)}`,
        );
      }
    },
  },
  {
    name:
      "a thread that was never written reads as empty: not existing, length 0, no slots, not listed",
    async fn(open) {
      const b = await open();
      assert.equal(await b.bufferThreadExists("nope"), false);
      assert.equal(await b.bufferThreadLen("nope"), 0);
      assert.deepEqual(await b.bufferGetThread("nope"), []);
      assert.equal(await b.bufferDeleteThread("nope"), false);
      assert.deepEqual(await b.bufferListThreads(), []);
      assert.equal(await b.bufferThreadExists("nope"), false);
    },
  },
  // --- ids -----------------------------------------------------------------
  {
    name: "ids with any characters round-trip and are listed exactly as given",
    async fn(open) {
      const b = await open({ maxThreads: ID_CASES.length });
      for (const [i, id] of ID_CASES.entries()) {
        assert.equal(
          await b.bufferAppend(id, bytes(i)),
          0,
          `append to ${JSON.stringify(id)}`,
        );
      }
      assert.deepEqual(
        (await b.bufferListThreads()).sort(),
        [...ID_CASES].sort(),
      );
      for (const [i, id] of ID_CASES.entries()) {
        assert.deepEqual(
          await b.bufferGetThread(id),
          [bytes(i)],
          JSON.stringify(id),
        );
        assert.equal(await b.bufferThreadExists(id), true);
      }
      for (const [i, id] of ID_CASES.entries()) {
        await b.registrySet(id, `uuid-${i}`);
      }
      for (const [i, id] of ID_CASES.entries()) {
        await b.registrySet(`chain-${i}`, id);
      }
      const all = await b.registryListAll();
      assert.equal(all.size, ID_CASES.length * 2);
      for (const [i, id] of ID_CASES.entries()) {
        assert.equal(
          await b.registryGetUuid(id),
          `uuid-${i}`,
          `chain ${JSON.stringify(id)}`,
        );
        assert.equal(await b.registryGetChain(`uuid-${i}`), id);
        assert.equal(
          await b.registryGetChain(id),
          `chain-${i}`,
          `uuid ${JSON.stringify(id)}`,
        );
        assert.equal(all.get(id), `chain-${i}`);
        assert.equal(all.get(`uuid-${i}`), id);
      }
      assert.equal(await b.bufferDeleteThread("__proto__"), true);
      assert.equal(await b.bufferThreadExists("__proto__"), false);
      assert.equal(await b.registryDelete("__proto__"), true);
      assert.equal(await b.registryGetUuid("chain-9"), null);
    },
  },
  {
    name:
      "the buffer and the registry are separate namespaces: one string as thread, chain and uuid",
    async fn(open) {
      const b = await open();
      await b.bufferAppend("x", bytes(1));
      await b.registrySet("x", "x");
      assert.equal(await b.registryGetUuid("x"), "x");
      assert.equal(await b.registryGetChain("x"), "x");
      await b.registryClear();
      assert.deepEqual(await b.bufferGetThread("x"), [bytes(1)]);
      await b.registrySet("x", "y");
      await b.bufferClear();
      assert.equal(await b.registryGetUuid("x"), "y");
      assert.equal(await b.bufferThreadExists("x"), false);
    },
  },
  {
    name:
      "empty or non-string ids reject with a TypeError naming the argument, on reads as on writes, writing nothing",
    async fn(open) {
      const b = await open();
      for (const [bad, label] of BAD_IDS) {
        for (const [method, argument, call] of idCalls(b, bad)) {
          await assert.rejects(
            call,
            (e: unknown) =>
              e instanceof TypeError && e.message.includes(argument),
            `${method}() with ${label} as ${argument}`,
          );
        }
      }
      await assertEmpty(b, "after rejected ids");
    },
  },
  {
    name:
      "ids over 1024 UTF-8 bytes reject with a RangeError naming the argument, writing nothing",
    async fn(open) {
      const b = await open();
      for (const [long, label] of LONG_IDS) {
        for (const [method, argument, call] of idCalls(b, long)) {
          await assert.rejects(
            call,
            (e: unknown) =>
              e instanceof RangeError && e.message.includes(argument),
            `${method}() with ${label} as ${argument}`,
          );
        }
      }
      await assertEmpty(b, "after rejected ids");
    },
  },
  {
    name:
      "a slot that is not a Uint8Array is a TypeError and one over maxSlotBytes a RangeError, writing nothing",
    async fn(open) {
      const b = await open({ maxSlotBytes: 100 });
      const notSlots: unknown[] = [
        "text",
        [1, 2],
        new ArrayBuffer(2),
        new DataView(new ArrayBuffer(2)),
        new Uint16Array(2),
        null,
        undefined,
        42,
      ];
      for (const slot of notSlots) {
        await assert.rejects(
          b.bufferAppend("t", slot as Loose),
          (e: unknown) => e instanceof TypeError && /slot/.test(e.message),
          `slot ${Object.prototype.toString.call(slot)}`,
        );
      }
      await assert.rejects(
        b.bufferAppend("t", new Uint8Array(101)),
        (e: unknown) =>
          e instanceof RangeError && /maxSlotBytes/.test(e.message),
      );
      await assertEmpty(b, "after rejected slots");
      assert.equal(await b.bufferAppend("t", new Uint8Array(100)), 0);
    },
  },
  {
    name: "a rejected append to an existing thread leaves it unchanged",
    async fn(open) {
      const b = await open({ maxSlotBytes: 10 });
      await b.bufferAppend("t", bytes(1));
      await assert.rejects(b.bufferAppend("t", new Uint8Array(11)), RangeError);
      await assert.rejects(b.bufferAppend("t", "x" as Loose), TypeError);
      assert.deepEqual(await b.bufferGetThread("t"), [bytes(1)]);
      assert.equal(await b.bufferAppend("t", bytes(2)), 1);
    },
  },
  // --- limits ----------------------------------------------------------------
  {
    name:
      "bufferAppend() past maxSlotsPerThread rejects with SlotLimitError and writes nothing",
    async fn(open) {
      const b = await open({ maxSlotsPerThread: 3 });
      for (let i = 0; i < 3; i++) await b.bufferAppend("t", bytes(i));
      await assert.rejects(
        b.bufferAppend("t", bytes(9)),
        (e: unknown) =>
          e instanceof SlotLimitError && /maxSlotsPerThread/.test(e.message),
      );
      assert.deepEqual(await b.bufferGetThread("t"), [
        bytes(0),
        bytes(1),
        bytes(2),
      ]);
      assert.equal(await b.bufferAppend("other", bytes(1)), 0);
    },
  },
  {
    name:
      "bufferAppend() creating a thread past maxThreads rejects with ThreadLimitError and writes nothing",
    async fn(open) {
      const b = await open({ maxThreads: 2 });
      await b.bufferAppend("a", bytes(1));
      await b.bufferAppend("b", bytes(1));
      await assert.rejects(
        b.bufferAppend("c", bytes(1)),
        (e: unknown) =>
          e instanceof ThreadLimitError && /maxThreads/.test(e.message),
      );
      assert.equal(await b.bufferThreadExists("c"), false);
      assert.deepEqual((await b.bufferListThreads()).sort(), ["a", "b"]);
      assert.equal(
        await b.bufferAppend("a", bytes(2)),
        1,
        "an existing thread still accepts appends",
      );
      assert.equal((await b.stats()).threads, 2);
    },
  },
  {
    name:
      "maxSlotsPerThread holds under 40 concurrent appends at the edge: exactly the allowed number succeed",
    async fn(open) {
      const b = await open({ maxSlotsPerThread: 25 });
      for (let i = 0; i < 5; i++) await b.bufferAppend("edge", tagged(0, i));
      const outcomes = await Promise.allSettled(
        Array.from(
          { length: 40 },
          (_, i) => b.bufferAppend("edge", tagged(1, i)),
        ),
      );
      const ok = outcomes.filter((o) => o.status === "fulfilled");
      const refused = outcomes.filter((o) => o.status === "rejected");
      assert.equal(ok.length, 20);
      for (const r of refused) {
        assert.ok(
          (r as PromiseRejectedResult).reason instanceof SlotLimitError,
          String((r as PromiseRejectedResult).reason),
        );
      }
      assert.equal(await b.bufferThreadLen("edge"), 25);
      const indexes = ok.map((o) => (o as PromiseFulfilledResult<number>).value)
        .sort((x, y) => x - y);
      assert.deepEqual(indexes, Array.from({ length: 20 }, (_, i) => i + 5));
    },
  },
  {
    name:
      "maxThreads holds under 30 concurrent thread creations: exactly the allowed number succeed",
    async fn(open) {
      const b = await open({ maxThreads: 10 });
      await b.bufferAppend("existing", bytes(0));
      const outcomes = await Promise.allSettled(
        Array.from(
          { length: 30 },
          (_, i) => b.bufferAppend(`new-${i}`, bytes(i)),
        ),
      );
      const ok = outcomes.filter((o) => o.status === "fulfilled");
      assert.equal(ok.length, 9);
      for (const o of outcomes) {
        if (o.status === "rejected") {
          assert.ok(o.reason instanceof ThreadLimitError, String(o.reason));
        }
      }
      assert.equal((await b.bufferListThreads()).length, 10);
      assert.equal((await b.stats()).threads, 10);
    },
  },
  {
    name: "limits hold across two backends on one store racing at the edge",
    needsSharedStore: true,
    async fn(open) {
      const config = { maxSlotsPerThread: 30, maxThreads: 8 };
      const [a, b] = [await open(config), await open(config)];
      const slotRace = await Promise.allSettled(
        Array.from(
          { length: 50 },
          (_, i) => (i % 2 ? a : b).bufferAppend("edge", tagged(i % 2, i)),
        ),
      );
      assert.equal(slotRace.filter((o) => o.status === "fulfilled").length, 30);
      assert.equal(await b.bufferThreadLen("edge"), 30);
      const threadRace = await Promise.allSettled(
        Array.from(
          { length: 20 },
          (_, i) => (i % 2 ? a : b).bufferAppend(`t-${i}`, bytes(i)),
        ),
      );
      assert.equal(
        threadRace.filter((o) => o.status === "fulfilled").length,
        7,
      );
      assert.equal((await a.bufferListThreads()).length, 8);
    },
  },
  {
    name: "a deleted thread no longer counts against maxThreads",
    async fn(open) {
      const b = await open({ maxThreads: 2 });
      await b.bufferAppend("a", bytes(1));
      await b.bufferAppend("b", bytes(1));
      assert.equal(await b.bufferDeleteThread("a"), true);
      assert.equal(await b.bufferAppend("c", bytes(1)), 0);
      await b.bufferClear();
      await b.bufferAppend("d", bytes(1));
      await b.bufferAppend("e", bytes(1));
      assert.deepEqual((await b.bufferListThreads()).sort(), ["d", "e"]);
    },
  },
  // --- deletion, listing, clearing ------------------------------------------------
  {
    name:
      "bufferDeleteThread() says whether the thread existed and removes it whole; a new append starts at 0",
    async fn(open) {
      const b = await open();
      for (let i = 0; i < 3; i++) await b.bufferAppend("t", bytes(i));
      await b.bufferAppend("keep", bytes(7));
      assert.equal(await b.bufferDeleteThread("t"), true);
      assert.equal(await b.bufferDeleteThread("t"), false);
      assert.equal(await b.bufferThreadExists("t"), false);
      assert.equal(await b.bufferThreadLen("t"), 0);
      assert.deepEqual(await b.bufferGetThread("t"), []);
      assert.equal(await b.bufferGetSlot("t", 0), null);
      assert.deepEqual(await b.bufferListThreads(), ["keep"]);
      assert.equal(await b.bufferAppend("t", bytes(5)), 0);
      assert.deepEqual(await b.bufferGetThread("t"), [bytes(5)]);
      assert.deepEqual(await b.bufferGetThread("keep"), [bytes(7)]);
    },
  },
  {
    name:
      "bufferListThreads() lists exactly the live threads and bufferClear() removes them all",
    async fn(open) {
      const b = await open();
      const ids = Array.from({ length: 30 }, (_, i) => `list-${i}`);
      for (const id of ids) await b.bufferAppend(id, bytes(1));
      assert.deepEqual((await b.bufferListThreads()).sort(), [...ids].sort());
      await b.registrySet("c", "u");
      await b.bufferClear();
      assert.deepEqual(await b.bufferListThreads(), []);
      assert.equal(await b.bufferThreadExists("list-0"), false);
      assert.equal(
        await b.registryGetUuid("c"),
        "u",
        "bufferClear() touched the registry",
      );
      assert.equal(await b.bufferAppend("list-0", bytes(2)), 0);
    },
  },
  // --- registry ------------------------------------------------------------------------
  {
    name:
      "registrySet() maps a chain and a uuid both ways; unknown keys read as null",
    async fn(open) {
      const b = await open();
      await b.registrySet("console.router.greeter", "u-1");
      assert.equal(await b.registryGetUuid("console.router.greeter"), "u-1");
      assert.equal(await b.registryGetChain("u-1"), "console.router.greeter");
      assert.equal(await b.registryGetUuid("console.router"), null);
      assert.equal(await b.registryGetChain("u-2"), null);
      assert.deepEqual(
        await b.registryListAll(),
        new Map([["u-1", "console.router.greeter"]]),
      );
    },
  },
  {
    name:
      "registrySet() unmaps the chain's previous uuid and the uuid's previous chain, both ways",
    async fn(open) {
      const b = await open();
      await b.registrySet("c1", "u1");
      await b.registrySet("c2", "u2");
      await b.registrySet("c1", "u3"); // c1's old uuid u1 is unmapped
      assert.equal(await b.registryGetUuid("c1"), "u3");
      assert.equal(await b.registryGetChain("u1"), null);
      await b.registrySet("c4", "u2"); // u2's old chain c2 is unmapped
      assert.equal(await b.registryGetChain("u2"), "c4");
      assert.equal(await b.registryGetUuid("c2"), null);
      await b.registrySet("c4", "u3"); // both sides had other partners
      assert.equal(await b.registryGetUuid("c1"), null);
      assert.equal(await b.registryGetChain("u2"), null);
      assert.deepEqual(await b.registryListAll(), new Map([["u3", "c4"]]));
      await b.registrySet("c4", "u3"); // the same pair again changes nothing
      assert.deepEqual(await b.registryListAll(), new Map([["u3", "c4"]]));
      assert.equal((await b.stats()).registryEntries, 1);
    },
  },
  {
    name:
      "registryDelete() removes both directions and says whether the uuid was mapped",
    async fn(open) {
      const b = await open();
      await b.registrySet("c1", "u1");
      await b.registrySet("c2", "u2");
      assert.equal(await b.registryDelete("u1"), true);
      assert.equal(await b.registryDelete("u1"), false);
      assert.equal(
        await b.registryDelete("c2"),
        false,
        "registryDelete() takes a uuid, not a chain",
      );
      assert.equal(await b.registryGetUuid("c1"), null);
      assert.equal(await b.registryGetChain("u1"), null);
      assert.deepEqual(await b.registryListAll(), new Map([["u2", "c2"]]));
      await b.registrySet("c1", "u9");
      assert.equal(await b.registryGetUuid("c1"), "u9");
    },
  },
  {
    name:
      "registrySetIfAbsent() maps an unmapped chain, else returns the existing uuid and writes nothing",
    async fn(open) {
      const b = await open();
      assert.equal(await b.registrySetIfAbsent("c1", "u1"), "u1");
      assert.equal(await b.registryGetChain("u1"), "c1");
      assert.equal(await b.registrySetIfAbsent("c1", "u2"), "u1");
      assert.equal(
        await b.registryGetChain("u2"),
        null,
        "the losing uuid was mapped",
      );
      assert.equal(await b.registryGetUuid("c1"), "u1");
      // Mapping a new chain to a uuid that has a chain unmaps the old chain, as registrySet() does.
      assert.equal(await b.registrySetIfAbsent("c2", "u1"), "u1");
      assert.equal(await b.registryGetUuid("c1"), null);
      assert.equal(await b.registryGetChain("u1"), "c2");
      assert.deepEqual(await b.registryListAll(), new Map([["u1", "c2"]]));
    },
  },
  {
    name:
      "registrySetIfAbsent() racing 25 callers on one chain all return the same uuid",
    async fn(open) {
      const b = await open();
      const results = await Promise.all(
        Array.from(
          { length: 25 },
          (_, i) => b.registrySetIfAbsent("race", `u-${i}`),
        ),
      );
      assert.equal(
        new Set(results).size,
        1,
        `got ${new Set(results).size} different uuids`,
      );
      assert.equal(await b.registryGetUuid("race"), results[0]);
      assert.equal(await b.registryGetChain(results[0]!), "race");
      assert.equal((await b.registryListAll()).size, 1);
    },
  },
  {
    name:
      "registrySetIfAbsent() racing across two backends on one store returns one uuid to all",
    needsSharedStore: true,
    async fn(open) {
      const [a, b] = [await open(), await open()];
      const results = await Promise.all(
        Array.from(
          { length: 20 },
          (_, i) =>
            (i % 2 ? a : b).registrySetIfAbsent(`race-${i % 4}`, `u-${i}`),
        ),
      );
      for (let chain = 0; chain < 4; chain++) {
        const got = new Set(results.filter((_, i) => i % 4 === chain));
        assert.equal(got.size, 1, `chain race-${chain} got ${got.size} uuids`);
        const [uuid] = got;
        assert.equal(await a.registryGetChain(uuid!), `race-${chain}`);
      }
      assert.equal((await b.registryListAll()).size, 4);
    },
  },
  {
    name:
      "registryListAll() returns every pair as uuid -> chain and registryClear() removes them all",
    async fn(open) {
      const b = await open();
      const expected = new Map<string, string>();
      for (let i = 0; i < 40; i++) {
        await b.registrySet(`root.agent${i}`, `uuid-${i}`);
        expected.set(`uuid-${i}`, `root.agent${i}`);
      }
      assert.deepEqual(await b.registryListAll(), expected);
      assert.equal((await b.stats()).registryEntries, 40);
      await b.bufferAppend("t", bytes(1));
      await b.registryClear();
      assert.deepEqual(await b.registryListAll(), new Map());
      assert.equal(await b.registryGetUuid("root.agent1"), null);
      assert.equal(await b.registryGetChain("uuid-1"), null);
      assert.equal(
        await b.bufferThreadLen("t"),
        1,
        "registryClear() touched the buffer",
      );
      assert.equal(
        await b.registrySetIfAbsent("root.agent1", "fresh"),
        "fresh",
      );
    },
  },
  // --- TTL -------------------------------------------------------------------------------
  {
    name:
      "TTL slides with every append and registry write; idle data disappears whole within 1 s of expiry",
    async fn(open, time) {
      const T = time.ttlMs;
      const a = await open({ ttlMs: T });
      // Own tenants: on a shared store, one prefix is one shared state.
      const keep = await open({ ttlMs: 0, tenant: "keep:" });
      const limited = await open({
        ttlMs: T,
        maxThreads: 1,
        tenant: "limited:",
      });
      const t0 = time.now();
      await a.bufferAppend("refreshed", bytes(0));
      await a.bufferAppend("idle", bytes(0));
      await a.bufferAppend("idle", bytes(1));
      await a.registrySet("chain.refreshed", "u-refreshed");
      await a.registrySet("chain.idle", "u-idle");
      await a.registrySetIfAbsent("chain.ifabsent", "u-ifabsent");
      await keep.bufferAppend("forever", bytes(0));
      await keep.registrySet("chain.forever", "u-forever");
      await limited.bufferAppend("first", bytes(0));
      const written = time.now();

      // Half way: refresh some of it.
      await time.until(t0 + T / 2);
      const t1 = time.now();
      await a.bufferAppend("refreshed", bytes(1));
      await a.registrySet("chain.refreshed", "u-refreshed");
      assert.equal(
        await a.registrySetIfAbsent("chain.ifabsent", "u-other"),
        "u-ifabsent",
      ); // writes and refreshes nothing
      const refreshed = time.now();

      // Just before the first writes expire: everything is there.
      await time.until(t0 + T - (time.exact ? 1 : 500));
      const liveChecks = async () => {
        assert.equal(await a.bufferThreadLen("idle"), 2);
        assert.deepEqual(await a.bufferGetThread("idle"), [bytes(0), bytes(1)]);
        assert.equal(await a.registryGetUuid("chain.idle"), "u-idle");
        assert.equal(await a.registryGetChain("u-ifabsent"), "chain.ifabsent");
      };
      const before = time.now();
      await liveChecks().catch((error) => {
        // On a real clock a slow machine may reach the check late: only a check
        // that ran before the expiry is conclusive.
        if (time.now() < t0 + T) throw error;
      });
      assert.ok(
        time.exact || before < t0 + T,
        "the live check ran too late to be meaningful",
      );

      // 1 s after the first writes expired: the idle data is gone whole, the refreshed data is whole.
      await time.until(written + T + time.slackMs);
      assert.equal(await a.bufferThreadExists("idle"), false);
      assert.equal(await a.bufferThreadLen("idle"), 0);
      assert.deepEqual(await a.bufferGetThread("idle"), []);
      assert.deepEqual(await a.bufferGetRange("idle", 0), []);
      assert.equal(await a.bufferGetSlot("idle", 0), null);
      assert.equal(await a.registryGetUuid("chain.idle"), null);
      assert.equal(await a.registryGetChain("u-idle"), null);
      assert.equal(
        await a.registryGetUuid("chain.ifabsent"),
        null,
        "registrySetIfAbsent() on a mapped chain refreshed it",
      );
      assert.equal(await a.registryGetChain("u-ifabsent"), null);
      if (time.exact || time.now() < t1 + T - 500) {
        assert.deepEqual(await a.bufferGetThread("refreshed"), [
          bytes(0),
          bytes(1),
        ], "the refreshed thread was not kept whole");
        assert.equal(
          await a.registryGetChain("u-refreshed"),
          "chain.refreshed",
        );
        assert.deepEqual(await a.bufferListThreads(), ["refreshed"]);
        assert.deepEqual(
          await a.registryListAll(),
          new Map([["u-refreshed", "chain.refreshed"]]),
        );
        const stats = await a.stats();
        assert.equal(stats.threads, 1);
        assert.equal(stats.slots, 2);
        assert.equal(stats.registryEntries, 1);
      }
      // An expired thread does not count against maxThreads.
      assert.equal(await limited.bufferAppend("second", bytes(0)), 0);
      assert.equal(await limited.bufferThreadExists("first"), false);
      // An expired thread starts again at index 0.
      assert.equal(await a.bufferAppend("idle", bytes(9)), 0);

      // 1 s after the refreshed data expired: all of it is gone; ttlMs 0 kept everything.
      await time.until(refreshed + T + time.slackMs);
      assert.equal(await a.bufferThreadExists("refreshed"), false);
      assert.equal(await a.registryGetChain("u-refreshed"), null);
      assert.equal(await a.registryGetUuid("chain.refreshed"), null);
      assert.deepEqual(await keep.bufferGetThread("forever"), [bytes(0)]);
      assert.equal(await keep.registryGetUuid("chain.forever"), "u-forever");
      assert.equal((await keep.stats()).ttlMs, 0);
      assert.equal((await a.stats()).ttlMs, T);
    },
  },
  // --- tenants -------------------------------------------------------------------------
  {
    name:
      "tenants whose prefixes nest (a: and a:buffer:) never see, count, expire or clear each other's data",
    needsSharedStore: true,
    async fn(open) {
      const outer = await open({ tenant: "a:", maxThreads: 3 });
      const inner = await open({ tenant: "a:buffer:", maxThreads: 3 });
      // Ids chosen so that naive "prefix + id" keys of one tenant equal the other's.
      await outer.bufferAppend("buffer:x", bytes(1));
      await inner.bufferAppend("x", bytes(2));
      await inner.bufferAppend("a:buffer:x", bytes(3));
      await outer.registrySet("buffer:c", "buffer:u");
      await inner.registrySet("c", "u");
      assert.deepEqual(await outer.bufferListThreads(), ["buffer:x"]);
      assert.deepEqual((await inner.bufferListThreads()).sort(), [
        "a:buffer:x",
        "x",
      ]);
      assert.deepEqual(await outer.bufferGetThread("buffer:x"), [bytes(1)]);
      assert.deepEqual(await inner.bufferGetThread("x"), [bytes(2)]);
      assert.equal(await outer.bufferThreadExists("x"), false);
      assert.equal(await inner.bufferThreadExists("buffer:x"), false);
      assert.equal(await outer.registryGetUuid("c"), null);
      assert.equal(await inner.registryGetUuid("buffer:c"), null);
      assert.equal((await outer.stats()).threads, 1);
      assert.equal((await inner.stats()).threads, 2);
      // Limits count per tenant: outer can still create 2 threads.
      await outer.bufferAppend("o2", bytes(1));
      await outer.bufferAppend("o3", bytes(1));
      await assert.rejects(
        outer.bufferAppend("o4", bytes(1)),
        ThreadLimitError,
      );
      await inner.bufferAppend("i3", bytes(1));
      // Clearing one tenant leaves the other whole.
      await outer.bufferClear();
      await outer.registryClear();
      assert.deepEqual((await inner.bufferListThreads()).sort(), [
        "a:buffer:x",
        "i3",
        "x",
      ]);
      assert.equal(await inner.registryGetUuid("c"), "u");
      assert.deepEqual(await outer.bufferListThreads(), []);
      assert.equal((await outer.registryListAll()).size, 0);
      await inner.bufferClear();
      await inner.registryClear();
      await outer.bufferAppend("back", bytes(1));
      assert.deepEqual(await outer.bufferListThreads(), ["back"]);
    },
  },
  {
    name:
      "a tenant's prefix inside another tenant's ids does not leak between them",
    needsSharedStore: true,
    async fn(open) {
      const one = await open({ tenant: "t1:" });
      const two = await open({ tenant: "t2:" });
      await one.bufferAppend("t2:x", bytes(1));
      await two.bufferAppend("x", bytes(2));
      await one.registrySet("t2:c", "t2:u");
      await two.registrySet("c", "u");
      assert.deepEqual(await one.bufferListThreads(), ["t2:x"]);
      assert.deepEqual(await two.bufferListThreads(), ["x"]);
      assert.deepEqual(
        await one.registryListAll(),
        new Map([["t2:u", "t2:c"]]),
      );
      assert.deepEqual(await two.registryListAll(), new Map([["u", "c"]]));
      assert.equal(await two.bufferDeleteThread("t2:x"), false);
      assert.equal(await one.bufferThreadExists("t2:x"), true);
    },
  },
  {
    name: "two backends with one prefix on one store see one shared state",
    needsSharedStore: true,
    async fn(open) {
      const [a, b] = [await open(), await open()];
      await a.bufferAppend("t", bytes(1));
      assert.equal(await b.bufferAppend("t", bytes(2)), 1);
      await b.registrySet("c", "u");
      assert.equal(await a.registryGetChain("u"), "c");
      assert.equal(await a.bufferDeleteThread("t"), true);
      assert.equal(await b.bufferThreadExists("t"), false);
    },
  },
  // --- lifecycle ---------------------------------------------------------------------------
  {
    name:
      "ping() resolves true, kind names the store, and stats() counts this backend's live data",
    async fn(open) {
      const b = await open({ ttlMs: 123_456 });
      assert.equal(await b.ping(), true);
      assert.ok(["memory", "kv", "redis"].includes(b.kind), `kind ${b.kind}`);
      assert.deepEqual(await b.stats(), {
        kind: b.kind,
        threads: 0,
        slots: 0,
        registryEntries: 0,
        ttlMs: 123_456,
      });
      await b.bufferAppend("t1", bytes(1));
      await b.bufferAppend("t1", bytes(2));
      await b.bufferAppend("t2", bytes(3));
      await b.registrySet("c1", "u1");
      await b.registrySet("c2", "u2");
      assert.deepEqual(await b.stats(), {
        kind: b.kind,
        threads: 2,
        slots: 3,
        registryEntries: 2,
        ttlMs: 123_456,
      });
    },
  },
  {
    name:
      "close() is idempotent and every call afterwards rejects with BackendClosedError",
    async fn(open) {
      const b = await open();
      await b.bufferAppend("t", bytes(1));
      await b.close();
      await b.close();
      const calls: [string, () => Promise<unknown>][] = [
        ["bufferAppend", () => b.bufferAppend("t", bytes(1))],
        ["bufferGetThread", () => b.bufferGetThread("t")],
        ["bufferGetRange", () => b.bufferGetRange("t", 0)],
        ["bufferGetSlot", () => b.bufferGetSlot("t", 0)],
        ["bufferThreadLen", () => b.bufferThreadLen("t")],
        ["bufferThreadExists", () => b.bufferThreadExists("t")],
        ["bufferDeleteThread", () => b.bufferDeleteThread("t")],
        ["bufferListThreads", () => b.bufferListThreads()],
        ["bufferClear", () => b.bufferClear()],
        ["registrySet", () => b.registrySet("c", "u")],
        ["registrySetIfAbsent", () => b.registrySetIfAbsent("c", "u")],
        ["registryGetUuid", () => b.registryGetUuid("c")],
        ["registryGetChain", () => b.registryGetChain("u")],
        ["registryDelete", () => b.registryDelete("u")],
        ["registryListAll", () => b.registryListAll()],
        ["registryClear", () => b.registryClear()],
        ["ping", () => b.ping()],
        ["stats", () => b.stats()],
      ];
      for (const [method, call] of calls) {
        await assert.rejects(
          call,
          BackendClosedError,
          `${method}() after close()`,
        );
      }
    },
  },
  {
    name: "await using closes the backend at the end of its scope",
    async fn(open) {
      let escaped: SharedBackend;
      {
        await using backend = await open();
        escaped = backend;
        assert.equal(await backend.ping(), true);
      }
      await assert.rejects(escaped.ping(), BackendClosedError);
    },
  },
];

/**
 * Runs every check of the shared-backend contract that one process can
 * observe, each as a `t.step` named by the behaviour it checks. Each step
 * opens its backends through `harness.open` under a prefix of its own,
 * clears what it wrote and closes them.
 *
 * Checks that need several backends on one store are skipped, with the
 * reason, when `harness.sharedStore` is false; so is any step named in
 * `harness.skip`.
 *
 * @param t The test context of the `Deno.test` that runs the suite.
 * @param harness How to open the backends under test.
 * @returns When every step has run; a failing step fails the test.
 *
 * @example
 * ```ts
 * import { runConformanceSuite } from "@xml-pipeline/shared-backend/testing";
 * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
 *
 * Deno.test("KvBackend meets the contract", async (t) => {
 *   const kvPath = await Deno.makeTempFile({ suffix: ".db" });
 *   try {
 *     await runConformanceSuite(t, {
 *       name: "kv",
 *       open: (config) => KvBackend.open({ ...config, kvPath }),
 *     });
 *   } finally {
 *     await Deno.remove(kvPath);
 *   }
 * });
 * ```
 */
export async function runConformanceSuite(
  t: Deno.TestContext,
  harness: ConformanceHarness,
): Promise<void> {
  const base = `${harness.prefix ?? "xp-conformance:"}${
    crypto.randomUUID().slice(0, 8)
  }:`;
  const time = timeControl(harness);
  const shared = harness.sharedStore ?? true;
  for (const [number, check] of CHECKS.entries()) {
    const reason = check.needsSharedStore && !shared
      ? `the ${harness.name} harness declares that its backends share no store`
      : Object.entries(harness.skip ?? {}).find(([key]) =>
        check.name.includes(key)
      )?.[1];
    if (reason !== undefined) {
      await t.step({
        name: `${check.name} (skipped: ${reason})`,
        ignore: true,
        fn: () => {},
      });
      continue;
    }
    await t.step(`${harness.name}: ${check.name}`, async () => {
      const opened: [SharedBackend, BackendConfig][] = [];
      const open: Open = async (config = {}) => {
        const { tenant, ...rest } = config;
        const full = {
          ttlMs: 0,
          ...rest,
          prefix: `${base}${number}:${tenant ?? ""}`,
        };
        const backend = await harness.open(full);
        opened.push([backend, full]);
        return backend;
      };
      try {
        await check.fn(open, time);
      } finally {
        await cleanUp(harness, opened);
      }
    });
  }
}

/**
 * Clears what a step wrote and closes its backends. A backend the step closed
 * itself is cleared through a new one with its config, so that nothing is left
 * behind on a store that outlives the test (a shared Redis, say).
 */
async function cleanUp(
  harness: ConformanceHarness,
  opened: [SharedBackend, BackendConfig][],
): Promise<void> {
  for (const [backend, config] of opened) {
    try {
      await backend.bufferClear();
      await backend.registryClear();
      await backend.close();
    } catch (error) {
      if (!(error instanceof BackendClosedError)) throw error;
      await using again = await harness.open(config);
      await again.bufferClear();
      await again.registryClear();
    }
  }
}

function timeControl(harness: ConformanceHarness): TimeControl {
  const advance = harness.advanceTime;
  if (advance !== undefined) {
    let now = 0;
    return {
      ttlMs: 60_000,
      slackMs: 1_000,
      exact: true,
      now: () => now,
      async until(at) {
        if (at > now) {
          await advance(at - now);
          now = at;
        }
      },
    };
  }
  return {
    ttlMs: Math.max(harness.realTtlMs ?? 4_000, 3_000),
    slackMs: 1_000,
    exact: false,
    now: () => performance.now(),
    async until(at) {
      const wait = at - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    },
  };
}
