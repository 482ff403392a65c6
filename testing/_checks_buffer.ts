// Conformance checks, section "the context buffer's indexes and bytes":
// bufferAppend() returns dense, unique indexes (in order, under concurrent
// appends to one thread, to many threads, from two backends on one store) and
// slots round-trip byte-exact, as copies, never seen partly written.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  assertDense,
  assertSameBytes,
  bytes,
  type Check,
  patterned,
  tagged,
} from "./_fixtures.ts";

/** The checks of section "the context buffer's indexes and bytes", in the order they run. */
export const BUFFER_CHECKS: Check[] = [
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
      "a Node Buffer is stored as a copy: writing to it after bufferAppend() changes nothing stored, small or large",
    async fn(open) {
      const b = await open({ maxSlotBytes: 1024 * 1024 });
      const cases = [Buffer.from([1, 2, 3]), Buffer.alloc(40_000, 5)];
      const expected = cases.map((buffer) => new Uint8Array(buffer));
      for (const buffer of cases) await b.bufferAppend("buffer", buffer);
      // A 1 MiB Buffer changed while its append is in flight is stored whole.
      const big = Buffer.alloc(1024 * 1024, 7);
      const pending = b.bufferAppend("buffer", big);
      big.fill(8);
      await pending;
      for (const buffer of cases) buffer.fill(0);
      const stored = await b.bufferGetThread("buffer");
      assert.equal(stored.length, 3);
      assertSameBytes(stored[0], expected[0]!, "small Buffer");
      assertSameBytes(stored[1], expected[1]!, "40 000-byte Buffer");
      assertSameBytes(stored[2], new Uint8Array(1024 * 1024).fill(7), "1 MiB");
    },
  },
  {
    name:
      "each slot a read returns owns its own ArrayBuffer: transferring or keeping one never touches another",
    async fn(open) {
      const b = await open();
      const slots = [bytes(1), bytes(2, 2), new Uint8Array(20_000).fill(3)];
      for (const slot of slots) await b.bufferAppend("own", slot);
      const reads = [
        await b.bufferGetThread("own"),
        await b.bufferGetRange("own", 0, 3),
        [await b.bufferGetSlot("own", 1)],
      ];
      for (const read of reads) {
        for (const slot of read) {
          assert.ok(slot !== null);
          assert.equal(slot.byteOffset, 0, "a view into a larger buffer");
          assert.equal(
            slot.buffer.byteLength,
            slot.byteLength,
            "its ArrayBuffer holds more than the slot",
          );
        }
      }
      const [first, ...rest] = reads[0]!;
      structuredClone(first, { transfer: [first!.buffer as ArrayBuffer] });
      assert.equal(first!.byteLength, 0, "the transfer detached slot 0");
      assert.deepEqual(rest, slots.slice(1));
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
];
