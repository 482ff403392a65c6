// Conformance checks, section "tenants": backends whose prefixes differ (even
// nested, even inside each other's ids) never see, count, expire or clear each
// other's data; one prefix on one store is one shared state.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { ThreadLimitError } from "../errors.ts";
import { bytes, type Check } from "./_fixtures.ts";

/** The checks of section "tenants", in the order they run. */
export const TENANT_CHECKS: Check[] = [
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
];
