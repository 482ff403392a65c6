// Conformance checks, section "ids and argument validation": ids of any
// characters round-trip in the buffer and the registry, which are separate
// namespaces; bad ids, long ids and bad slots are refused with the right error,
// naming the argument, and write nothing.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { describe } from "../_messages.ts";
import {
  assertEmpty,
  BAD_IDS,
  bytes,
  type Check,
  ID_CASES,
  idCalls,
  LONG_IDS,
  type Loose,
} from "./_fixtures.ts";

/** The checks of section "ids and argument validation", in the order they run. */
export const ID_CHECKS: Check[] = [
  {
    name: "ids with any characters round-trip and are listed exactly as given",
    async fn(open) {
      const b = await open({ maxThreads: ID_CASES.length });
      for (const [i, id] of ID_CASES.entries()) {
        assert.equal(
          await b.bufferAppend(id, bytes(i)),
          0,
          `append to ${JSON.stringify(id)}`,
        );
      }
      assert.deepEqual(
        (await b.bufferListThreads()).sort(),
        [...ID_CASES].sort(),
      );
      for (const [i, id] of ID_CASES.entries()) {
        assert.deepEqual(
          await b.bufferGetThread(id),
          [bytes(i)],
          JSON.stringify(id),
        );
        assert.equal(await b.bufferThreadExists(id), true);
      }
      for (const [i, id] of ID_CASES.entries()) {
        await b.registrySet(id, `uuid-${i}`);
      }
      for (const [i, id] of ID_CASES.entries()) {
        await b.registrySet(`chain-${i}`, id);
      }
      const all = await b.registryListAll();
      assert.equal(all.size, ID_CASES.length * 2);
      for (const [i, id] of ID_CASES.entries()) {
        assert.equal(
          await b.registryGetUuid(id),
          `uuid-${i}`,
          `chain ${JSON.stringify(id)}`,
        );
        assert.equal(await b.registryGetChain(`uuid-${i}`), id);
        assert.equal(
          await b.registryGetChain(id),
          `chain-${i}`,
          `uuid ${JSON.stringify(id)}`,
        );
        assert.equal(all.get(id), `chain-${i}`);
        assert.equal(all.get(`uuid-${i}`), id);
      }
      assert.equal(await b.bufferDeleteThread("__proto__"), true);
      assert.equal(await b.bufferThreadExists("__proto__"), false);
      assert.equal(await b.registryDelete("__proto__"), true);
      assert.equal(await b.registryGetUuid("chain-9"), null);
    },
  },
  {
    name:
      "ids of 1 000 NUL characters (1 000 UTF-8 bytes) and of 1 024 UTF-8 bytes work as thread ids, chains, uuids",
    async fn(open) {
      const b = await open();
      const ids = [
        "\0".repeat(1000),
        "\0".repeat(1024),
        "\0".repeat(512) + "\u00e9".repeat(256),
        "x".repeat(1023) + "\0",
      ];
      for (const [i, id] of ids.entries()) {
        const label = `id ${i}`;
        assert.equal(await b.bufferAppend(id, bytes(i)), 0, label);
        assert.equal(await b.bufferAppend(id, bytes(i, i)), 1, label);
        assert.deepEqual(await b.bufferGetThread(id), [bytes(i), bytes(i, i)]);
        assert.deepEqual(await b.bufferGetSlot(id, 1), bytes(i, i), label);
        assert.equal(await b.bufferThreadLen(id), 2, label);
        await b.registrySet(id, `u${i}`);
        await b.registrySet(`c${i}`, id);
        assert.equal(await b.registryGetUuid(id), `u${i}`, label);
        assert.equal(await b.registryGetChain(id), `c${i}`, label);
      }
      assert.deepEqual((await b.bufferListThreads()).sort(), [...ids].sort());
      const all = await b.registryListAll();
      for (const [i, id] of ids.entries()) {
        assert.equal(all.get(`u${i}`), id);
        assert.equal(all.get(id), `c${i}`);
      }
      assert.equal(await b.bufferDeleteThread(ids[0]!), true);
      assert.equal(await b.bufferThreadExists(ids[0]!), false);
      assert.equal(await b.registryDelete(ids[0]!), true);
      assert.equal(await b.registryGetUuid(`c0`), null);
      assert.equal((await b.stats()).threads, ids.length - 1);
    },
  },
  {
    name:
      "the buffer and the registry are separate namespaces: one string as thread, chain and uuid",
    async fn(open) {
      const b = await open();
      await b.bufferAppend("x", bytes(1));
      await b.registrySet("x", "x");
      assert.equal(await b.registryGetUuid("x"), "x");
      assert.equal(await b.registryGetChain("x"), "x");
      await b.registryClear();
      assert.deepEqual(await b.bufferGetThread("x"), [bytes(1)]);
      await b.registrySet("x", "y");
      await b.bufferClear();
      assert.equal(await b.registryGetUuid("x"), "y");
      assert.equal(await b.bufferThreadExists("x"), false);
    },
  },
  {
    name:
      "empty or non-string ids reject with a TypeError naming the argument, on reads as on writes, writing nothing",
    async fn(open) {
      const b = await open();
      for (const [bad, label] of BAD_IDS) {
        for (const [method, argument, call] of idCalls(b, bad)) {
          await assert.rejects(
            call,
            (e: unknown) =>
              e instanceof TypeError && e.message.includes(argument),
            `${method}() with ${label} as ${argument}`,
          );
        }
      }
      await assertEmpty(b, "after rejected ids");
    },
  },
  {
    name:
      "ids over 1024 UTF-8 bytes reject with a RangeError naming the argument, writing nothing",
    async fn(open) {
      const b = await open();
      for (const [long, label] of LONG_IDS) {
        for (const [method, argument, call] of idCalls(b, long)) {
          await assert.rejects(
            call,
            (e: unknown) =>
              e instanceof RangeError && e.message.includes(argument),
            `${method}() with ${label} as ${argument}`,
          );
        }
      }
      await assertEmpty(b, "after rejected ids");
    },
  },
  {
    name:
      "a slot that is not a Uint8Array is a TypeError and one over maxSlotBytes a RangeError, writing nothing",
    async fn(open) {
      const b = await open({ maxSlotBytes: 100 });
      const notSlots: unknown[] = [
        "text",
        [1, 2],
        new ArrayBuffer(2),
        new DataView(new ArrayBuffer(2)),
        new Uint16Array(2),
        null,
        undefined,
        42,
      ];
      for (const slot of notSlots) {
        await assert.rejects(
          b.bufferAppend("t", slot as Loose),
          (e: unknown) => e instanceof TypeError && /slot/.test(e.message),
          `slot ${describe(slot)}`,
        );
      }
      await assert.rejects(
        b.bufferAppend("t", new Uint8Array(101)),
        (e: unknown) =>
          e instanceof RangeError && /maxSlotBytes/.test(e.message),
      );
      await assertEmpty(b, "after rejected slots");
      assert.equal(await b.bufferAppend("t", new Uint8Array(100)), 0);
    },
  },
  {
    name: "a rejected append to an existing thread leaves it unchanged",
    async fn(open) {
      const b = await open({ maxSlotBytes: 10 });
      await b.bufferAppend("t", bytes(1));
      await assert.rejects(b.bufferAppend("t", new Uint8Array(11)), RangeError);
      await assert.rejects(b.bufferAppend("t", "x" as Loose), TypeError);
      assert.deepEqual(await b.bufferGetThread("t"), [bytes(1)]);
      assert.equal(await b.bufferAppend("t", bytes(2)), 1);
    },
  },
];
