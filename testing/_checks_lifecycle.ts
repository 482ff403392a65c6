// Conformance checks, section "the lifecycle": ping(), kind and stats() of a
// live backend; close() is idempotent and every call after it is a
// BackendClosedError; `await using` closes.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { BackendClosedError } from "../errors.ts";
import type { SharedBackend } from "../protocol.ts";
import { bytes, type Check } from "./_fixtures.ts";

/** The checks of section "the lifecycle", in the order they run. */
export const LIFECYCLE_CHECKS: Check[] = [
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
