// Conformance checks, section "deletion, listing and clearing":
// bufferDeleteThread() removes a thread whole, bufferListThreads() lists
// exactly the live threads, bufferClear() removes them and not the registry.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { bytes, type Check } from "./_fixtures.ts";

/** The checks of section "deletion, listing and clearing", in the order they run. */
export const DELETION_CHECKS: Check[] = [
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
];
