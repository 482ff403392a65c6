// Conformance checks, section "reads of indexes and ranges": bufferGetSlot()
// and bufferGetRange() on any index or bound (out of range, fractional, not a
// number), and a thread that was never written.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { bytes, type Check, type Loose } from "./_fixtures.ts";

/** The checks of section "reads of indexes and ranges", in the order they run. */
export const READ_CHECKS: Check[] = [
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
];
