// Conformance checks, section "the thread registry": registrySet() maps a chain
// and a uuid both ways and unmaps old partners, registryDelete(),
// registrySetIfAbsent() (also racing, also across two backends),
// registryListAll() and registryClear().
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { bytes, type Check } from "./_fixtures.ts";

/** The checks of section "the thread registry", in the order they run. */
export const REGISTRY_CHECKS: Check[] = [
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
];
