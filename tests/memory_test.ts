import assert from "node:assert/strict";
import { InMemoryBackend } from "../backends/memory.ts";
import { runConformanceSuite } from "../testing/conformance.ts";

Deno.test("InMemoryBackend meets the shared-backend contract", async (t) => {
  let now = 1_000_000;
  await runConformanceSuite(t, {
    name: "memory",
    open: (config) => InMemoryBackend.open({ ...config, now: () => now }),
    advanceTime: (ms) => {
      now += ms;
    },
    sharedStore: false,
  });
});

Deno.test("InMemoryBackend on its own", async (t) => {
  await t.step(
    "expiry is exact on an injected clock: readable at ttlMs - 1, gone at ttlMs",
    async () => {
      let now = 0;
      await using backend = new InMemoryBackend({ ttlMs: 100, now: () => now });
      await backend.bufferAppend("t", new Uint8Array([1]));
      await backend.registrySet("c", "u");
      now = 99;
      assert.equal(await backend.bufferThreadLen("t"), 1);
      assert.equal(await backend.registryGetChain("u"), "c");
      now = 100;
      assert.equal(await backend.bufferThreadLen("t"), 0);
      assert.equal(await backend.registryGetChain("u"), null);
      assert.equal(await backend.registryGetUuid("c"), null);
    },
  );

  await t.step(
    "a clock that goes backwards neither loses live data nor keeps expired data in the counts",
    async () => {
      let now = 1_000;
      await using backend = new InMemoryBackend({
        ttlMs: 100,
        maxThreads: 2,
        now: () => now,
      });
      await backend.bufferAppend("late", new Uint8Array([1])); // expires at 1100
      now = 900;
      await backend.bufferAppend("early", new Uint8Array([1])); // expires at 1000, behind "late" in the map
      now = 1_050;
      assert.deepEqual(await backend.bufferListThreads(), ["late"]);
      assert.equal(await backend.bufferAppend("new", new Uint8Array([1])), 0);
      assert.equal((await backend.stats()).threads, 2);
    },
  );

  await t.step(
    "1 000 threads expire and a thread at maxThreads can be created at once",
    async () => {
      let now = 0;
      await using backend = new InMemoryBackend({
        ttlMs: 10,
        maxThreads: 1_000,
        now: () => now,
      });
      for (let i = 0; i < 1_000; i++) {
        await backend.bufferAppend(`t${i}`, new Uint8Array(8));
      }
      await assert.rejects(backend.bufferAppend("one-more", new Uint8Array(1)));
      now = 10;
      assert.equal(
        await backend.bufferAppend("one-more", new Uint8Array(1)),
        0,
      );
      assert.deepEqual(await backend.stats(), {
        kind: "memory",
        threads: 1,
        slots: 1,
        registryEntries: 0,
        ttlMs: 10,
      });
    },
  );

  await t.step(
    "small and large slots mixed in one thread keep their bytes and order",
    async () => {
      await using backend = new InMemoryBackend();
      const sizes = [
        0,
        10,
        20_000,
        1,
        70_000,
        500,
        16_384,
        16_385,
        900,
        65_536,
        3,
        200_000,
        64,
      ];
      const slots = sizes.map((size, n) =>
        new Uint8Array(size).map((_, i) => (i * 7 + n) & 0xff)
      );
      for (let round = 0; round < 20; round++) {
        for (const slot of slots) await backend.bufferAppend("mixed", slot);
      }
      const stored = await backend.bufferGetThread("mixed");
      assert.equal(stored.length, slots.length * 20);
      for (const [i, slot] of stored.entries()) {
        assert.ok(sameBytes(slot, slots[i % slots.length]!), `slot ${i}`);
      }
      const range = await backend.bufferGetRange("mixed", 5, 30);
      for (const [i, slot] of range.entries()) {
        assert.ok(sameBytes(slot, slots[(5 + i) % slots.length]!));
      }
    },
  );

  await t.step(
    "pages of deleted, cleared and expired threads are reused without mixing bytes",
    async () => {
      let now = 0;
      await using backend = new InMemoryBackend({ ttlMs: 100, now: () => now });
      const slot = (thread: number, i: number) =>
        new Uint8Array(300).fill((thread * 37 + i) & 0xff);
      for (let i = 0; i < 1_000; i++) {
        await backend.bufferAppend("a", slot(1, i));
      }
      const before = await backend.bufferGetThread("a");
      assert.equal(await backend.bufferDeleteThread("a"), true);
      for (let i = 0; i < 1_000; i++) {
        await backend.bufferAppend("b", slot(2, i));
      }
      now = 100; // "b" expires: its pages go back to the pool on the next call
      for (let i = 0; i < 1_000; i++) {
        await backend.bufferAppend("c", slot(3, i));
      }
      await backend.bufferClear();
      for (let i = 0; i < 1_000; i++) {
        await backend.bufferAppend("d", slot(4, i));
      }
      const after = await backend.bufferGetThread("d");
      assert.equal(after.length, 1_000);
      for (let i = 0; i < 1_000; i++) {
        assert.ok(sameBytes(after[i]!, slot(4, i)), `slot ${i} of "d"`);
        assert.ok(
          sameBytes(before[i]!, slot(1, i)),
          `copy ${i} read from "a" changed`,
        );
      }
    },
  );

  await t.step("ttlMs 0 keeps data however far the clock moves", async () => {
    let now = 0;
    await using backend = new InMemoryBackend({ ttlMs: 0, now: () => now });
    await backend.bufferAppend("t", new Uint8Array([1]));
    await backend.registrySet("c", "u");
    now = Number.MAX_SAFE_INTEGER;
    assert.equal(await backend.bufferThreadLen("t"), 1);
    assert.equal(await backend.registryGetUuid("c"), "u");
  });

  await t.step("invalid options are a RangeError naming the option", () => {
    assert.throws(() => new InMemoryBackend({ ttlMs: -1 }), /ttlMs/);
    assert.throws(() => new InMemoryBackend({ maxThreads: 0 }), /maxThreads/);
    assert.throws(
      () => new InMemoryBackend({ maxSlotsPerThread: 1.5 }),
      /maxSlotsPerThread/,
    );
  });

  await t.step(
    "InMemoryBackend.open() rejects (not throws) on a bad config",
    async () => {
      await assert.rejects(
        InMemoryBackend.open({ maxSlotBytes: -1 }),
        /maxSlotBytes/,
      );
    },
  );
});

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((byte, i) => byte === b[i]);
}
