// Conformance checks, section "append ids": `bufferAppend` with an `appendId`
// is idempotent per thread (one slot, one index for every call with the id,
// under concurrency and across backends on one store), and a thread forgets
// its ids with it (deletion, expiry, clear).
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { SlotLimitError, ThreadLimitError } from "../errors.ts";
import { assertDense, bytes, type Check, tagged } from "./_fixtures.ts";

/** The checks of section "append ids", in the order they run. */
export const APPEND_ID_CHECKS: Check[] = [
  {
    name:
      "appends with one appendId store one slot and all return its index, whatever bytes the repeats carry",
    async fn(open) {
      const backend = await open();
      assert.equal(await backend.bufferAppend("t", bytes(0)), 0);
      const first = await backend.bufferAppend("t", bytes(1), {
        appendId: "a-1",
      });
      assert.equal(first, 1);
      assert.equal(await backend.bufferAppend("t", bytes(2)), 2);
      assert.equal(
        await backend.bufferAppend("t", bytes(1), { appendId: "a-1" }),
        1,
      );
      assert.equal(
        await backend.bufferAppend("t", bytes(9, 9), { appendId: "a-1" }),
        1,
        "a repeat with other bytes returns the first one's index",
      );
      assert.deepEqual(await backend.bufferGetThread("t"), [
        bytes(0),
        bytes(1),
        bytes(2),
      ]);
      // The id is per thread: the same id on another thread is another slot.
      assert.equal(
        await backend.bufferAppend("u", bytes(7), { appendId: "a-1" }),
        0,
      );
      assert.deepEqual(await backend.bufferGetThread("u"), [bytes(7)]);
      assert.equal(
        await backend.bufferAppend("t", bytes(3), { appendId: "a-2" }),
        3,
      );
    },
  },
  {
    name:
      "concurrent appends sharing appendIds store each id once, indexes dense",
    async fn(open) {
      const backend = await open();
      const ids = Array.from({ length: 40 }, (_, i) => `id-${i}`);
      // Each id sent 5 times, interleaved with appends without an id.
      const calls: Promise<number>[] = [];
      const plain: Promise<number>[] = [];
      for (let round = 0; round < 5; round++) {
        for (const [i, appendId] of ids.entries()) {
          calls.push(
            backend.bufferAppend("t", tagged(1, i), { appendId }),
          );
          if (round === 0 && i % 4 === 0) {
            plain.push(backend.bufferAppend("t", tagged(2, i)));
          }
        }
      }
      const results = await Promise.all(calls);
      const plainResults = await Promise.all(plain);
      for (const [i] of ids.entries()) {
        const mine = results.filter((_, k) => k % ids.length === i);
        assert.equal(new Set(mine).size, 1, `id-${i} got ${mine}`);
      }
      const appended = [
        ...ids.map((_, i) => ({ index: results[i]!, slot: tagged(1, i) })),
        ...plainResults.map((index, k) => ({ index, slot: tagged(2, k * 4) })),
      ];
      await assertDense(backend, "t", appended);
    },
  },
  {
    name:
      "a deleted or cleared thread forgets its append ids: the id appends anew at index 0",
    async fn(open) {
      const backend = await open();
      await backend.bufferAppend("t", bytes(0), { appendId: "x" });
      await backend.bufferAppend("t", bytes(1), { appendId: "y" });
      assert.equal(await backend.bufferDeleteThread("t"), true);
      assert.equal(
        await backend.bufferAppend("t", bytes(2), { appendId: "y" }),
        0,
      );
      assert.deepEqual(await backend.bufferGetThread("t"), [bytes(2)]);
      await backend.bufferClear();
      assert.equal(
        await backend.bufferAppend("t", bytes(3), { appendId: "y" }),
        0,
      );
      assert.deepEqual(await backend.bufferGetThread("t"), [bytes(3)]);
    },
  },
  {
    name: "an expired thread forgets its append ids",
    async fn(open, time) {
      const backend = await open({ ttlMs: time.ttlMs });
      const start = time.now();
      await backend.bufferAppend("t", bytes(0), { appendId: "x" });
      await backend.bufferAppend("t", bytes(1), { appendId: "y" });
      await time.until(start + time.ttlMs + time.slackMs);
      assert.equal(await backend.bufferThreadExists("t"), false);
      assert.equal(
        await backend.bufferAppend("t", bytes(2), { appendId: "y" }),
        0,
      );
      assert.deepEqual(await backend.bufferGetThread("t"), [bytes(2)]);
    },
  },
  {
    name:
      "an appendId already applied returns its index even when the thread is full; a refused append records no id",
    async fn(open) {
      const backend = await open({ maxSlotsPerThread: 2, maxThreads: 1 });
      await backend.bufferAppend("t", bytes(0), { appendId: "a" });
      await backend.bufferAppend("t", bytes(1), { appendId: "b" });
      assert.equal(
        await backend.bufferAppend("t", bytes(1), { appendId: "b" }),
        1,
      );
      await assert.rejects(
        backend.bufferAppend("t", bytes(2), { appendId: "c" }),
        SlotLimitError,
      );
      await assert.rejects(
        backend.bufferAppend("u", bytes(0), { appendId: "d" }),
        ThreadLimitError,
      );
      assert.deepEqual(await backend.bufferGetThread("t"), [
        bytes(0),
        bytes(1),
      ]);
      // Room made: the refused ids were never applied, so they apply now.
      await backend.bufferDeleteThread("t");
      assert.equal(
        await backend.bufferAppend("u", bytes(5), { appendId: "d" }),
        0,
      );
      assert.deepEqual(await backend.bufferGetThread("u"), [bytes(5)]);
    },
  },
  {
    name:
      "a bad appendId is a TypeError or RangeError naming appendId, and nothing is written",
    async fn(open) {
      const backend = await open();
      const bad: [unknown, ErrorConstructor][] = [
        ["", TypeError],
        [42, TypeError],
        [null, TypeError],
        ["\ud800", TypeError],
        ["x".repeat(129), RangeError],
        ["é".repeat(65), RangeError], // 130 UTF-8 bytes
      ];
      for (const [appendId, type] of bad) {
        await assert.rejects(
          backend.bufferAppend("t", bytes(1), {
            appendId: appendId as string,
          }),
          (error: Error) =>
            error instanceof type && /appendId/.test(error.message),
          `appendId ${JSON.stringify(appendId)}`,
        );
      }
      await assert.rejects(
        backend.bufferAppend("t", bytes(1), "id" as never),
        TypeError,
      );
      assert.equal(await backend.bufferThreadExists("t"), false);
      // The longest allowed id works.
      assert.equal(
        await backend.bufferAppend("t", bytes(1), {
          appendId: "é".repeat(64),
        }),
        0,
      );
    },
  },
  {
    name:
      "two backends on one store racing with one appendId store one slot and get one index",
    needsSharedStore: true,
    async fn(open) {
      const a = await open();
      const b = await open();
      for (let round = 0; round < 10; round++) {
        const appendId = `race-${round}`;
        const results = await Promise.all([
          a.bufferAppend("t", tagged(round, 0), { appendId }),
          b.bufferAppend("t", tagged(round, 1), { appendId }),
          a.bufferAppend("t", tagged(round, 0), { appendId }),
          b.bufferAppend("t", tagged(round, 1), { appendId }),
        ]);
        assert.equal(new Set(results).size, 1, `round ${round}: ${results}`);
        assert.equal(results[0], round);
      }
      assert.equal(await a.bufferThreadLen("t"), 10);
    },
  },
];
