// Conformance checks, section "TTL": the TTL slides with every write, idle data
// disappears whole within the contract's slack of its expiry (on the harness's
// clock, fake or real), and ttlMs 0 keeps everything.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { bytes, type Check } from "./_fixtures.ts";

/** The checks of section "TTL", in the order they run. */
export const TTL_CHECKS: Check[] = [
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
      assert.equal(a.ttlMs, T);
      assert.equal(keep.ttlMs, 0);
    },
  },
  {
    name:
      "registryRefresh() keeps a pair alive both ways for another ttlMs, or for its ttlMs option; false for an unmapped uuid, writing nothing",
    async fn(open, time) {
      const T = time.ttlMs;
      const a = await open({ ttlMs: T });
      const t0 = time.now();
      await a.registrySet("chain.kept", "u-kept");
      await a.registrySet("chain.idle", "u-idle");
      await a.registrySet("chain.long", "u-long");
      assert.equal(await a.registryRefresh("u-unmapped"), false);
      for (const ttlMs of [0, -1, 1.5, NaN]) {
        await assert.rejects(
          a.registryRefresh("u-long", { ttlMs }),
          (error: Error) =>
            error instanceof RangeError && /ttlMs/.test(error.message),
          `ttlMs ${ttlMs}`,
        );
      }
      await time.until(t0 + T / 2);
      assert.equal(await a.registryRefresh("u-kept"), true);
      assert.equal(await a.registryRefresh("u-long", { ttlMs: 2 * T }), true);
      const refreshed = time.now();
      await time.until(t0 + T + time.slackMs);
      assert.equal(await a.registryGetChain("u-idle"), null);
      if (time.now() < refreshed + T - (time.exact ? 1 : 500)) {
        assert.equal(await a.registryGetChain("u-kept"), "chain.kept");
        assert.equal(await a.registryGetUuid("chain.kept"), "u-kept");
      }
      await time.until(refreshed + T + time.slackMs);
      assert.equal(await a.registryGetChain("u-kept"), null);
      assert.equal(await a.registryGetUuid("chain.kept"), null);
      assert.equal(await a.registryRefresh("u-kept"), false);
      // Refreshed for 2 ttlMs: it outlives the default by ttlMs.
      assert.equal(await a.registryGetChain("u-long"), "chain.long");
      assert.equal(await a.registryGetUuid("chain.long"), "u-long");
      assert.deepEqual(
        await a.registryListAll(),
        new Map([["u-long", "chain.long"]]),
      );
    },
  },
];
