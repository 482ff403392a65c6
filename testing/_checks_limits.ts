// Conformance checks, section "limits": maxSlotsPerThread and maxThreads refuse
// with SlotLimitError and ThreadLimitError, write nothing, and hold under races
// at the edge (also across two backends on one store); a deleted thread frees
// its place.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { SlotLimitError, ThreadLimitError } from "../errors.ts";
import { bytes, type Check, tagged } from "./_fixtures.ts";

/** The checks of section "limits", in the order they run. */
export const LIMIT_CHECKS: Check[] = [
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
];
