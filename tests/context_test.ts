// ContextBuffer on every store: the Python original's scenario, metadata
// round trips, reads, limits, argument checks, and concurrent writers (real
// Workers on kv and redis; concurrent calls in one isolate on memory) getting
// distinct dense slotIndex values that match the stored slots.

import assert from "node:assert/strict";
import { type BufferSlot, ContextBuffer, payloadTypeName } from "../context.ts";
import { InMemoryBackend } from "../backends/memory.ts";
import { BackendError, SlotLimitError, ThreadLimitError } from "../errors.ts";
import { serializeSlot } from "../serialize.ts";
import {
  freshPrefix,
  openBackend,
  runInWorkers,
  type Store,
  storeVariants,
  testOnEveryStore,
} from "./_fixtures/context_harness.ts";
import {
  type AppendTask,
  type AppendTaskResult,
  type Note,
  runTask,
} from "./_fixtures/context_tasks.ts";
import type { SharedBackend } from "../protocol.ts";
import type { BackendConfig } from "../config.ts";

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

class Greeting {
  constructor(readonly text: string, readonly to: string) {}
}

async function contextSuite(t: Deno.TestContext, store: Store): Promise<void> {
  const step = (
    name: string,
    fn: (backend: SharedBackend) => Promise<void>,
    extra?: BackendConfig,
  ) =>
    t.step(`${store.name}: ${name}`, async () => {
      await using backend = await openBackend(
        store,
        freshPrefix("context"),
        extra,
      );
      await fn(backend);
    });

  await step(
    "the original's scenario: append slots to a thread, read them back in order with their metadata",
    async (backend) => {
      const buffer = new ContextBuffer(backend);
      const thread = crypto.randomUUID();
      assert.equal(await buffer.getThread(thread), null);
      assert.equal(await buffer.threadExists(thread), false);

      const before = Date.now();
      const greeting = { type: "Greeting", text: "hi", to: "bob" };
      const first = await buffer.append(thread, greeting, {
        fromId: "console",
        toId: "greeter",
      });
      const second = await buffer.append(thread, {
        type: "reply",
        text: "hello",
      }, {
        fromId: "greeter",
        toId: "console",
        ownName: "greeter",
        usageInstructions: "Answer politely",
      });
      const third = await buffer.append(thread, "note to self", {
        fromId: "greeter",
        toId: "greeter",
        isSelfCall: true,
      });
      assert.deepEqual([first, second, third].map((s) => s.slotIndex), [
        0,
        1,
        2,
      ]);
      assert.ok(Object.isFrozen(first));
      assert.equal(first.payload, greeting, "append returns the payload given");
      assert.equal(first.threadId, thread);
      assert.equal(first.payloadType, "Greeting");
      assert.equal(second.payloadType, "reply");
      assert.equal(third.payloadType, "string");
      assert.match(first.timestamp, ISO_UTC);
      const stamped = Date.parse(first.timestamp);
      assert.ok(stamped >= before - 1 && stamped <= Date.now() + 1);

      assert.equal(await buffer.threadExists(thread), true);
      assert.equal(await buffer.threadLength(thread), 3);
      const slots = await buffer.getThread(thread);
      assert.ok(slots !== null);
      assert.ok(Object.isFrozen(slots));
      assert.ok(slots.every((slot) => Object.isFrozen(slot)));
      assert.deepEqual(slots, [
        first,
        second,
        third,
      ]);
      assert.deepEqual(slots[1], {
        payload: { type: "reply", text: "hello" },
        threadId: thread,
        fromId: "greeter",
        toId: "console",
        slotIndex: 1,
        timestamp: second.timestamp,
        payloadType: "reply",
        ownName: "greeter",
        isSelfCall: false,
        usageInstructions: "Answer politely",
      });
      assert.equal(slots[0]!.ownName, null);
      assert.equal(slots[0]!.usageInstructions, "");
      assert.equal(slots[2]!.isSelfCall, true);

      assert.deepEqual(
        (await buffer.getSlot(thread, 2))?.payload,
        "note to self",
      );
      assert.equal(await buffer.getSlot(thread, 3), null);
      assert.equal(await buffer.getSlot(thread, -1), null);

      assert.equal(await buffer.deleteThread(thread), true);
      assert.equal(await buffer.getThread(thread), null);
      assert.equal(await buffer.deleteThread(thread), false);
    },
  );

  await step(
    "getSlice, getByType and getFrom keep each slot's own slotIndex",
    async (backend) => {
      const buffer = new ContextBuffer<{ type: string; n: number }>(backend);
      for (let n = 0; n < 6; n++) {
        await buffer.append("t", { type: n % 2 ? "odd" : "even", n }, {
          fromId: n % 3 === 0 ? "a" : "b",
          toId: "sink",
        });
      }
      const pairs = (slots: readonly BufferSlot<{ n: number }>[]) =>
        slots.map((slot) => [slot.slotIndex, slot.payload.n]);
      assert.deepEqual(pairs(await buffer.getSlice("t", 2, 4)), [[2, 2], [
        3,
        3,
      ]]);
      assert.deepEqual(pairs(await buffer.getSlice("t", 4)), [[4, 4], [5, 5]]);
      assert.deepEqual(pairs(await buffer.getSlice("t", 5, 99)), [[5, 5]]);
      assert.deepEqual(await buffer.getSlice("t", 6), []);
      assert.deepEqual(await buffer.getSlice("t", 3, 1), []);
      assert.deepEqual(await buffer.getSlice("missing", 0), []);
      await assert.rejects(buffer.getSlice("t", -1), RangeError);
      await assert.rejects(buffer.getSlice("t", 0, 1.5), RangeError);
      assert.deepEqual(pairs(await buffer.getByType("t", "odd")), [[1, 1], [
        3,
        3,
      ], [5, 5]]);
      assert.deepEqual(await buffer.getByType("t", "none"), []);
      assert.deepEqual(pairs(await buffer.getFrom("t", "a")), [[0, 0], [3, 3]]);
      assert.deepEqual(await buffer.getFrom("missing", "a"), []);
    },
  );

  await step(
    "the payloadType option wins over the class name and the type field",
    async (backend) => {
      const buffer = new ContextBuffer(backend);
      const slot = await buffer.append("t", new Map([["k", 1]]), {
        fromId: "a",
        toId: "b",
        payloadType: "greeting/v2",
      });
      assert.equal(slot.payloadType, "greeting/v2");
      assert.deepEqual(
        (await buffer.getByType("t", "greeting/v2")).map((s) => s.slotIndex),
        [0],
      );
      assert.equal(payloadTypeName(new Map()), "Map");
      assert.equal(payloadTypeName(new Greeting("x", "y")), "Greeting");
      assert.equal(payloadTypeName(new Date(0)), "Date");
      assert.equal(payloadTypeName(Object.create(null)), "Object");
      assert.equal(payloadTypeName({ type: "" }), "Object");
      assert.equal(payloadTypeName(12n), "bigint");
    },
  );

  await step(
    "a payload serializeSlot cannot encode exactly (a class instance) is a TypeError, and nothing is written",
    async (backend) => {
      const buffer = new ContextBuffer(backend);
      await assert.rejects(
        buffer.append("t", new Greeting("hi", "bob"), {
          fromId: "a",
          toId: "b",
        }),
        (error: Error) => {
          assert.ok(error instanceof TypeError);
          assert.match(error.message, /Greeting at \$\.payload/);
          return true;
        },
      );
      await assert.rejects(
        buffer.append("t", { cb: () => {} }, { fromId: "a", toId: "b" }),
        TypeError,
      );
      assert.equal(await buffer.threadExists("t"), false);
    },
  );

  await step(
    "payloads round-trip: nested values, bytes, dates, maps, null",
    async (backend) => {
      const buffer = new ContextBuffer<unknown>(backend);
      const payloads: unknown[] = [
        null,
        0,
        "",
        [1, "two", { three: [3] }],
        { nested: { deep: { list: [true, false, null] } } },
        new Uint8Array([0, 1, 255]),
        new Date("2026-01-31T12:00:00.000Z"),
        new Map([["k", "v"]]),
      ];
      for (const payload of payloads) {
        await buffer.append("t", payload, { fromId: "a", toId: "b" });
      }
      const slots = await buffer.getThread("t");
      assert.deepEqual(slots?.map((slot) => slot.payload), payloads);
    },
  );

  await step(
    "the backend's limits hold through the buffer and stats() reports them",
    async (backend) => {
      const buffer = new ContextBuffer(backend, {
        maxSlotsPerThread: 2,
        maxThreads: 2,
      });
      await buffer.append("t1", 1, { fromId: "a", toId: "b" });
      await buffer.append("t1", 2, { fromId: "a", toId: "b" });
      await assert.rejects(
        buffer.append("t1", 3, { fromId: "a", toId: "b" }),
        SlotLimitError,
      );
      await buffer.append("t2", 1, { fromId: "a", toId: "b" });
      await assert.rejects(
        buffer.append("t3", 1, { fromId: "a", toId: "b" }),
        ThreadLimitError,
      );
      assert.deepEqual(await buffer.stats(), {
        threadCount: 2,
        totalSlots: 3,
        maxThreads: 2,
        maxSlotsPerThread: 2,
        ttlMs: 0,
      });
      assert.deepEqual(
        (await buffer.getThread("t1"))?.map((s) => [s.slotIndex, s.payload]),
        [[0, 1], [1, 2]],
      );
    },
    { maxSlotsPerThread: 2, maxThreads: 2 },
  );

  await step(
    "an injected clock sets the timestamp, in UTC",
    async (backend) => {
      const buffer = new ContextBuffer(backend, {
        now: () => Date.UTC(2026, 1, 3, 4, 5, 6, 7),
      });
      const slot = await buffer.append("t", 1, { fromId: "a", toId: "b" });
      assert.equal(slot.timestamp, "2026-02-03T04:05:06.007Z");
      assert.equal((await buffer.getSlot("t", 0))?.timestamp, slot.timestamp);
    },
  );

  await step(
    "bad arguments are a TypeError naming the argument, and nothing is written",
    async (backend) => {
      const buffer = new ContextBuffer(backend);
      const ok = { fromId: "a", toId: "b" };
      await assert.rejects(buffer.append("", 1, ok), /Invalid threadId/);
      await assert.rejects(
        buffer.append("t", 1, { ...ok, fromId: "" }),
        /Invalid fromId/,
      );
      await assert.rejects(
        buffer.append("t", 1, { fromId: "a" } as never),
        /Invalid toId/,
      );
      await assert.rejects(
        buffer.append("t", 1, undefined as never),
        /Invalid options/,
      );
      await assert.rejects(
        buffer.append("t", 1, { ...ok, isSelfCall: "yes" as never }),
        /Invalid isSelfCall/,
      );
      await assert.rejects(
        buffer.append("t", 1, { ...ok, ownName: 5 as never }),
        /Invalid ownName/,
      );
      await assert.rejects(
        buffer.append("t", 1, { ...ok, payloadType: "" }),
        /Invalid payloadType/,
      );
      await assert.rejects(
        buffer.append("t", undefined, ok),
        /Invalid payload/,
      );
      await assert.rejects(buffer.append("t".repeat(1025), 1, ok), RangeError);
      await assert.rejects(buffer.getThread(""), /threadId/);
      await assert.rejects(buffer.getByType("t", ""), /Invalid payloadType/);
      assert.equal(await buffer.threadExists("t"), false);
      assert.throws(() => new ContextBuffer({} as never), /Invalid backend/);
    },
  );

  await step(
    "a slot not written by a ContextBuffer is a BackendError naming the thread and index",
    async (backend) => {
      const buffer = new ContextBuffer(backend);
      await buffer.append("t", 1, { fromId: "a", toId: "b" });
      await backend.bufferAppend("t", serializeSlot({ some: "thing" }));
      await backend.bufferAppend("t", new Uint8Array([0xc1])); // never valid MessagePack
      assert.equal((await buffer.getSlot("t", 0))?.payload, 1);
      await assert.rejects(
        buffer.getThread("t"),
        (error: Error) => {
          assert.ok(error instanceof BackendError);
          assert.match(error.message, /slot 1 of thread "t"/);
          return true;
        },
      );
      await assert.rejects(buffer.getSlot("t", 2), /slot 2 of thread "t"/);
    },
  );

  const writers = store.sharedAcrossIsolates ? 4 : 8;
  const perWriter = 25;
  await t.step(
    store.sharedAcrossIsolates
      ? `${store.name}: ${writers} Workers appending ${perWriter} slots each to one thread get distinct dense slotIndex values matching the stored slots`
      : `${store.name}: ${writers} concurrent writers in one isolate appending ${perWriter} slots each get distinct dense slotIndex values matching the stored slots`,
    async () => {
      const prefix = freshPrefix("context-race");
      await using backend = await openBackend(store, prefix);
      const threadId = crypto.randomUUID();
      const tasks: AppendTask[] = Array.from(
        { length: writers },
        (_, writer) => ({
          kind: "append",
          threadId,
          writer,
          count: perWriter,
        }),
      );
      const results = store.sharedAcrossIsolates
        ? await runInWorkers<AppendTaskResult>(store.config(prefix), tasks)
        : await Promise.all(
          tasks.map((task) =>
            runTask(backend, task) as Promise<AppendTaskResult>
          ),
        );

      const total = writers * perWriter;
      const owner = new Map<number, { writer: number; seq: number }>();
      for (const { writer, indexes } of results) {
        for (const [seq, slotIndex] of indexes) {
          assert.ok(
            !owner.has(slotIndex),
            `slotIndex ${slotIndex} returned twice`,
          );
          owner.set(slotIndex, { writer, seq });
        }
      }
      assert.deepEqual(
        [...owner.keys()].sort((a, b) => a - b),
        Array.from({ length: total }, (_, i) => i),
      );

      const slots = await new ContextBuffer<Note>(backend).getThread(threadId);
      assert.ok(slots !== null);
      assert.equal(slots.length, total);
      for (const slot of slots) {
        const expected = owner.get(slot.slotIndex)!;
        assert.deepEqual(
          { writer: slot.payload.writer, seq: slot.payload.seq },
          expected,
          `slot ${slot.slotIndex} holds what its append returned`,
        );
        assert.equal(slot.fromId, `writer-${expected.writer}`);
        assert.equal(slot.payloadType, "Note");
      }
      assert.deepEqual(
        slots.map((slot) => slot.slotIndex),
        [...owner.keys()].sort((a, b) => a - b),
      );
    },
  );
}

testOnEveryStore("ContextBuffer", await storeVariants(), contextSuite);

Deno.test("ContextBuffer on memory with an injected clock: each append keeps its thread alive for ttlMs", async () => {
  let now = Date.UTC(2026, 0, 1);
  const clock = () => now;
  await using backend = new InMemoryBackend({ ttlMs: 1_000, now: clock });
  const buffer = new ContextBuffer<number>(backend, { now: clock });
  await buffer.append("t", 1, { fromId: "a", toId: "b" });
  now += 900;
  await buffer.append("t", 2, { fromId: "a", toId: "b" });
  now += 900;
  assert.deepEqual(
    (await buffer.getThread("t"))?.map((s) => [s.slotIndex, s.timestamp]),
    [[0, "2026-01-01T00:00:00.000Z"], [1, "2026-01-01T00:00:00.900Z"]],
  );
  now += 100;
  assert.equal(await buffer.getThread("t"), null);
  assert.equal(
    (await buffer.append("t", 3, { fromId: "a", toId: "b" })).slotIndex,
    0,
  );
});
