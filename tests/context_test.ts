// ContextBuffer on every store: the Python original's scenario, metadata
// round trips, reads, limits, argument checks, and concurrent writers (real
// Workers on kv and redis; concurrent calls in one isolate on memory) getting
// distinct dense slotIndex values that match the stored slots.

import assert from "node:assert/strict";
import { type BufferSlot, ContextBuffer, payloadTypeName } from "../context.ts";
import { InMemoryBackend } from "../backends/memory.ts";
import { BackendError, SlotLimitError, ThreadLimitError } from "../errors.ts";
import { serializeSlot } from "../serialize.ts";
import { ThreadRegistry } from "../registry.ts";
import { MAX_TRACKED_THREADS } from "../_context_pairs.ts";
import {
  freshPrefix,
  openBackend,
  runInWorkers,
  type Store,
  storeVariants,
  testOnEveryStore,
} from "./_fixtures/context_harness.ts";
import {
  type AnswerTask,
  type AnswerTaskResult,
  type AppendTask,
  type AppendTaskResult,
  type Exchange,
  type Note,
  runTask,
} from "./_fixtures/context_tasks.ts";
import type {
  BufferWatchOptions,
  SharedBackend,
  WatchedSlot,
} from "../protocol.ts";
import type { BackendConfig } from "../config.ts";

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

class Greeting {
  constructor(readonly text: string, readonly to: string) {}
}

/**
 * Whether the backend's watch ends when its thread is deleted, as it must
 * (the kv and redis interim watches of phase 2 do not yet): probed on a
 * thread of its own, waiting at most 1.5 s.
 */
async function watchEndsOnDeletion(backend: SharedBackend): Promise<boolean> {
  const probe = `probe-${crypto.randomUUID()}`;
  await backend.bufferAppend(probe, new Uint8Array([1]));
  const watch = backend.bufferWatch(probe, { fromIndex: 1 });
  const ended = watch.next().then((result) => result.done === true);
  await new Promise((resolve) => setTimeout(resolve, 50));
  await backend.bufferDeleteThread(probe);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), 1_500);
  });
  try {
    return await Promise.race([ended, late]);
  } finally {
    clearTimeout(timer);
    await watch.return?.();
  }
}

/**
 * `backend` with its `bufferWatch` iterators counted: `open()` is how many
 * were started and have not ended (done, or `return()`), `opened()` how many
 * were created.
 */
function watchSpy(
  backend: SharedBackend,
): { backend: SharedBackend; open(): number; opened(): number } {
  let open = 0;
  let opened = 0;
  const spied = new Proxy(backend, {
    get(target, property) {
      if (property === "bufferWatch") {
        return (threadId: string, options?: BufferWatchOptions) => {
          const inner = target.bufferWatch(threadId, options);
          opened++;
          let counted = false;
          let ended = false;
          const end = () => {
            if (counted && !ended) open--;
            ended = true;
          };
          const watch: AsyncIterableIterator<WatchedSlot> = {
            [Symbol.asyncIterator]: () => watch,
            next: async () => {
              if (!counted && !ended) {
                counted = true;
                open++;
              }
              try {
                const result = await inner.next();
                if (result.done === true) end();
                return result;
              } catch (error) {
                end();
                throw error;
              }
            },
            return: async () => {
              end();
              return await inner.return?.() ??
                { done: true, value: undefined };
            },
          };
          return watch;
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { backend: spied, open: () => open, opened: () => opened };
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
      assert.deepEqual(await buffer.getThread(thread), []);
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
      assert.deepEqual(await buffer.getThread(thread), []);
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

  await step(
    "one rule for a missing thread: getThread, getSlice, getByType and getFrom are empty arrays, getSlot is null (issue 10)",
    async (backend) => {
      const buffer = new ContextBuffer(backend);
      const reads = [
        await buffer.getThread("missing"),
        await buffer.getSlice("missing", 0),
        await buffer.getByType("missing", "Object"),
        await buffer.getFrom("missing", "a"),
      ];
      for (const read of reads) {
        assert.ok(Array.isArray(read), `${read} is an array`);
        assert.equal(read.length, 0);
        assert.ok(Object.isFrozen(read));
      }
      assert.equal(await buffer.getSlot("missing", 0), null);
      await buffer.append("t", 1, { fromId: "a", toId: "b" });
      await buffer.deleteThread("t");
      assert.deepEqual(await buffer.getThread("t"), []);
    },
  );

  await step(
    "append passes appendId through: a retried append returns the same slot and stores one (issue 11)",
    async (backend) => {
      // The kv and redis backends apply ids once issue 11 lands there; until
      // then this checks only that the id reaches them and is validated.
      const probe = freshPrefix("probe");
      const applied = await backend.bufferAppend(probe, new Uint8Array([1]), {
        appendId: "x",
      }) === await backend.bufferAppend(probe, new Uint8Array([2]), {
        appendId: "x",
      });
      await backend.bufferDeleteThread(probe);
      const buffer = new ContextBuffer<string>(backend);
      const options = { fromId: "router", toId: "greeter", appendId: "call-1" };
      const first = await buffer.append("t", "greet Ada", options);
      const again = await buffer.append("t", "greet Ada", options);
      const other = await buffer.append("t", "greet Bob", {
        ...options,
        appendId: "call-2",
      });
      if (applied) {
        assert.equal(again.slotIndex, first.slotIndex);
        assert.equal(other.slotIndex, first.slotIndex + 1);
        assert.deepEqual(
          (await buffer.getThread("t")).map((s) => s.payload),
          ["greet Ada", "greet Bob"],
        );
      } else {
        console.warn(
          `%c${store.name}: appendId not applied by this backend yet (issue 11): only passed through`,
          "color: yellow",
        );
      }
      await assert.rejects(
        buffer.append("t", "x", { ...options, appendId: "" }),
        (error: Error) =>
          error instanceof TypeError && /appendId/.test(error.message),
      );
      await assert.rejects(
        buffer.append("t", "x", { ...options, appendId: "i".repeat(129) }),
        (error: Error) =>
          error instanceof RangeError && /appendId/.test(error.message),
      );
    },
  );

  await step(
    "watch yields each slot appended from fromIndex on, once, in order, decoded, with slotIndex = its index; break ends it",
    async (backend) => {
      const buffer = new ContextBuffer<{ n: number }>(backend);
      await buffer.append("t", { n: 0 }, { fromId: "a", toId: "b" });
      await buffer.append("t", { n: 1 }, { fromId: "a", toId: "b" });
      const seen: [number, number][] = [];
      const signal = AbortSignal.timeout(30_000);
      const watching = (async () => {
        for await (const slot of buffer.watch("t", { fromIndex: 1, signal })) {
          assert.ok(Object.isFrozen(slot));
          assert.equal(slot.threadId, "t");
          seen.push([slot.slotIndex, slot.payload.n]);
          if (seen.length === 4) break;
        }
      })();
      for (let n = 2; n <= 4; n++) {
        await buffer.append("t", { n }, { fromId: "b", toId: "a" });
      }
      await watching;
      assert.deepEqual(seen, [[1, 1], [2, 2], [3, 3], [4, 4]]);

      // The default: only what is appended after the watch starts.
      const fresh = buffer.watch("t", { signal });
      const next = fresh.next(); // starts the watch: it reads the length (5)
      await new Promise((resolve) => setTimeout(resolve, 200));
      await buffer.append("t", { n: 5 }, { fromId: "b", toId: "a" });
      const result = await next;
      assert.equal(result.done, false);
      assert.equal(result.value?.slotIndex, 5);
      assert.deepEqual(await fresh.return?.(), {
        done: true,
        value: undefined,
      });
      assert.deepEqual(await fresh.next(), { done: true, value: undefined });

      // return() ends a next() that is waiting.
      const idle = buffer.watch("t", { fromIndex: 6 });
      const waiting = idle.next();
      await new Promise((resolve) => setTimeout(resolve, 20));
      await idle.return?.();
      assert.deepEqual(await waiting, { done: true, value: undefined });

      // Bad arguments reject the first next(), naming them.
      await assert.rejects(buffer.watch("").next(), /threadId/);
      await assert.rejects(
        buffer.watch("t", { fromIndex: -1 }).next(),
        (error: Error) =>
          error instanceof RangeError && /fromIndex/.test(error.message),
      );
    },
  );

  await step(
    "watch of a slot not written by a ContextBuffer rejects next() naming the slot, and ends",
    async (backend) => {
      const buffer = new ContextBuffer(backend);
      await backend.bufferAppend("t", new Uint8Array([0xc1]));
      const watch = buffer.watch("t", { fromIndex: 0 });
      await assert.rejects(
        watch.next(),
        (error: Error) =>
          error instanceof BackendError &&
          /slot 0 of thread "t"/.test(error.message),
      );
      assert.deepEqual(await watch.next(), { done: true, value: undefined });
    },
  );

  await step(
    "waitFor resolves with the first matching slot, also one already there, and ends its watch",
    async (backend) => {
      const spy = watchSpy(backend);
      const buffer = new ContextBuffer<{ type: string; n: number }>(
        spy.backend,
      );
      await buffer.append("t", { type: "call", n: 0 }, {
        fromId: "a",
        toId: "b",
      });
      const there = await buffer.waitFor(
        "t",
        (s) => s.payload.type === "call",
        { fromIndex: 0, timeoutMs: 30_000 },
      );
      assert.deepEqual([there.slotIndex, there.payload.n], [0, 0]);
      assert.equal(spy.open(), 0);

      const answer = buffer.waitFor(
        "t",
        (s) => s.payload.type === "answer" && s.payload.n === 2,
        { fromIndex: 1, timeoutMs: 30_000 },
      );
      await buffer.append("t", { type: "answer", n: 1 }, {
        fromId: "b",
        toId: "a",
      });
      await buffer.append("t", { type: "noise", n: 2 }, {
        fromId: "c",
        toId: "a",
      });
      await buffer.append("t", { type: "answer", n: 2 }, {
        fromId: "b",
        toId: "a",
      });
      const found = await answer;
      assert.deepEqual([found.slotIndex, found.fromId], [3, "b"]);
      assert.equal(spy.open(), 0);
      assert.ok(spy.opened() >= 2);
    },
  );

  await step(
    "waitFor gives up cleanly: a timeout is a BackendError naming the thread, an abort its reason, a deletion a BackendError; the watch is ended every time",
    async (backend) => {
      const spy = watchSpy(backend);
      const buffer = new ContextBuffer<number>(spy.backend);
      await buffer.append("t", 1, { fromId: "a", toId: "b" });

      await assert.rejects(
        buffer.waitFor("t", () => false, { fromIndex: 0, timeoutMs: 100 }),
        (error: Error) => {
          assert.ok(error instanceof BackendError);
          assert.equal(
            error.message,
            'Cannot wait for a slot of thread "t": none matched within timeoutMs (100)',
          );
          return true;
        },
      );
      assert.equal(spy.open(), 0);

      const controller = new AbortController();
      const aborted = buffer.waitFor("t", () => false, {
        signal: controller.signal,
      });
      setTimeout(() => controller.abort(new Error("stop waiting")), 20);
      await assert.rejects(aborted, /stop waiting/);
      assert.equal(spy.open(), 0);

      if (await watchEndsOnDeletion(backend)) {
        const deleted = buffer.waitFor("t", () => false, {
          fromIndex: 0,
          timeoutMs: 30_000,
        });
        setTimeout(() => buffer.deleteThread("t"), 50);
        await assert.rejects(
          deleted,
          (error: Error) => {
            assert.ok(error instanceof BackendError);
            assert.equal(
              error.message,
              'Cannot wait for a slot of thread "t": the thread was deleted or expired before one matched',
            );
            return true;
          },
        );
        assert.equal(spy.open(), 0);
      } else {
        console.warn(
          `%c${store.name}: bufferWatch does not end on deletion yet (issue 12): deletion not checked`,
          "color: yellow",
        );
        await buffer.deleteThread("t");
      }

      await buffer.append("t", 2, { fromId: "a", toId: "b" });
      await assert.rejects(
        buffer.waitFor("t", () => {
          throw new Error("predicate broke");
        }, { fromIndex: 0 }),
        /predicate broke/,
      );
      assert.equal(spy.open(), 0);

      await assert.rejects(
        buffer.waitFor("t", "yes" as never),
        (error: Error) =>
          error instanceof TypeError && /Invalid predicate/.test(error.message),
      );
      for (const timeoutMs of [-1, NaN, Infinity, "5" as never]) {
        await assert.rejects(
          buffer.waitFor("t", () => true, { timeoutMs }),
          (error: Error) =>
            error instanceof RangeError &&
            /Invalid timeoutMs/.test(error.message),
        );
      }
      await assert.rejects(
        buffer.waitFor("t", () => true, { fromIndex: 1.5 }),
        /Invalid fromIndex/,
      );
      await assert.rejects(buffer.waitFor("", () => true), /threadId/);
      assert.equal(spy.open(), 0);
    },
  );

  await t.step(
    store.sharedAcrossIsolates
      ? `${store.name}: two agents in two Workers wait with waitFor for the questions the main isolate asks, which waits for their answers`
      : `${store.name}: two agents in this isolate wait with waitFor for the questions asked, the asker waits for their answers`,
    async () => {
      const prefix = freshPrefix("context-answer");
      await using backend = await openBackend(store, prefix);
      const threadId = crypto.randomUUID();
      const questions = 5;
      const tasks: AnswerTask[] = ["greeter", "calculator"].map((name) => ({
        kind: "answer",
        threadId,
        name,
        questions,
      }));
      const answering = store.sharedAcrossIsolates
        ? runInWorkers<AnswerTaskResult>(store.config(prefix), tasks)
        : Promise.all(
          tasks.map((task) =>
            runTask(backend, task) as Promise<AnswerTaskResult>
          ),
        );
      answering.catch(() => {}); // awaited below
      const buffer = new ContextBuffer<Exchange>(backend);
      const asked: [string, number, number, number][] = [];
      for (let seq = 0; seq < questions; seq++) {
        for (const { name } of tasks) {
          const question = await buffer.append(threadId, {
            type: "question",
            seq,
          }, { fromId: "console", toId: name });
          const answer = await buffer.waitFor(
            threadId,
            (slot) =>
              slot.fromId === name && slot.payload.type === "answer" &&
              slot.payload.seq === seq,
            { fromIndex: question.slotIndex + 1, timeoutMs: 60_000 },
          );
          asked.push([name, seq, question.slotIndex, answer.slotIndex]);
        }
      }
      const results = await answering;
      // What each agent saw matches what the asker saw, index for index.
      for (const { name, answered } of results) {
        assert.deepEqual(
          answered,
          asked.filter(([n]) => n === name).map((
            [, seq, question, answer],
          ) => [seq, question, answer]),
        );
      }
      const thread = await buffer.getThread(threadId);
      assert.equal(thread.length, 2 * 2 * questions);
      assert.deepEqual(
        thread.map((s) => s.slotIndex),
        Array.from({ length: thread.length }, (_, i) => i),
      );
    },
  );

  if (store.name !== "memory") {
    // Memory runs this with a fake clock below; here, real time.
    await step(
      "a conversation appended to every 500 ms for 6 s keeps its chain with a 2 s TTL (issue 10 defect 8)",
      async (backend) => {
        const registry = new ThreadRegistry(backend);
        const buffer = new ContextBuffer<number>(backend);
        const thread = await registry.startChain("console", "router");
        const started = Date.now();
        for (let n = 0; Date.now() - started < 6_000; n++) {
          await buffer.append(thread, n, { fromId: "console", toId: "router" });
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
        assert.equal(await registry.lookup(thread), "console.router");
        const back = await registry.pruneForResponse(thread);
        assert.equal(back?.target, "console");
        assert.equal(await registry.getOrCreate("console.router"), thread);
      },
      { ttlMs: 2_000 },
    );
  }

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
  assert.deepEqual(await buffer.getThread("t"), []);
  assert.equal(
    (await buffer.append("t", 3, { fromId: "a", toId: "b" })).slotIndex,
    0,
  );
});

/** `backend` with the calls of one method recorded (its arguments). */
function callSpy<K extends keyof SharedBackend>(
  backend: SharedBackend,
  method: K,
): { backend: SharedBackend; calls: unknown[][] } {
  const calls: unknown[][] = [];
  const spied = new Proxy(backend, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      if (property !== method) return value.bind(target);
      return (...args: unknown[]) => {
        calls.push(args);
        return value.apply(target, args);
      };
    },
  });
  return { backend: spied, calls };
}

Deno.test("ContextBuffer.append passes appendId to bufferAppend, and nothing else of its options (issue 11)", async () => {
  await using backend = new InMemoryBackend();
  const spy = callSpy(backend, "bufferAppend");
  const buffer = new ContextBuffer(spy.backend);
  await buffer.append("t", 1, { fromId: "a", toId: "b", appendId: "m-1" });
  await buffer.append("t", 2, { fromId: "a", toId: "b" });
  assert.deepEqual(spy.calls.map((args) => args[2]), [{ appendId: "m-1" }, {}]);
  // The id is not stored in the slot: a retry with other metadata is still one slot.
  const again = await buffer.append("t", 1, {
    fromId: "a",
    toId: "b",
    appendId: "m-1",
    usageInstructions: "again",
  });
  assert.equal(again.slotIndex, 0);
  assert.equal(await buffer.threadLength("t"), 2);
  assert.equal((await buffer.getSlot("t", 0))?.usageInstructions, "");
});

Deno.test("ContextBuffer on memory with an injected clock: a conversation appended to every 500 ms for 6 s keeps its chain with a 2 s TTL (issue 10 defect 8)", async () => {
  let now = Date.UTC(2026, 0, 1);
  const clock = () => now;
  await using backend = new InMemoryBackend({ ttlMs: 2_000, now: clock });
  const registry = new ThreadRegistry(backend);
  const buffer = new ContextBuffer<number>(backend, { now: clock });
  const root = await registry.getOrCreate("console");
  const thread = await registry.startChain("console", "router");
  for (let n = 0; n <= 12; n++) {
    await buffer.append(thread, n, { fromId: "console", toId: "router" });
    now += 500;
  }
  // 6.5 s after the pair was created, 500 ms after the last append.
  assert.equal(await registry.lookup(thread), "console.router");
  assert.deepEqual(await registry.pruneForResponse(thread), {
    target: "console",
    uuid: await registry.getOrCreate("console"),
  });
  // The root was never appended to: it expired, as before.
  assert.equal(await registry.lookup(root), null);
  // Without appends the thread goes ttlMs after the last, and its pair at
  // most ttlMs / 4 later (it is refreshed for 1.25 ttlMs).
  now += 1_500;
  assert.deepEqual(await buffer.getThread(thread), []);
  now += 500;
  assert.equal(await registry.lookup(thread), null);
});

Deno.test("ContextBuffer: the pair of a thread lives as long as the thread, also when its last append came between two refreshes (contract item 14)", async () => {
  let now = 0;
  const clock = () => now;
  await using backend = new InMemoryBackend({ ttlMs: 2_000, now: clock });
  const registry = new ThreadRegistry(backend);
  const buffer = new ContextBuffer<number>(backend, { now: clock });
  const thread = await registry.startChain("console", "router");
  await buffer.append(thread, 0, { fromId: "console", toId: "router" }); // refreshes
  now = 450;
  await buffer.append(thread, 1, { fromId: "console", toId: "router" }); // too soon to refresh
  now = 450 + 1_999; // the thread's last millisecond
  assert.equal(await buffer.threadLength(thread), 2);
  assert.equal(await registry.lookup(thread), "console.router");
  now = 450 + 2_000;
  assert.equal(await buffer.threadLength(thread), 0);
});

Deno.test("ContextBuffer refreshes a thread's pair at most every ttlMs / 4, and remembers a bounded number of threads", async () => {
  let now = 0;
  const clock = () => now;
  await using backend = new InMemoryBackend({
    ttlMs: 2_000,
    now: clock,
    maxThreads: 2 * MAX_TRACKED_THREADS,
  });
  const spy = callSpy(backend, "registryRefresh");
  const buffer = new ContextBuffer(spy.backend, { now: clock });
  const append = (threadId: string) =>
    buffer.append(threadId, 0, { fromId: "a", toId: "b" });
  for (const at of [0, 100, 499]) {
    now = at;
    await append("t");
  }
  const refresh = ["t", { ttlMs: 2_500 }];
  assert.deepEqual(spy.calls, [refresh]);
  now = 500;
  await append("t");
  await append("t");
  assert.deepEqual(spy.calls, [refresh, refresh]);
  // A deleted thread is refreshed on its next append.
  await buffer.deleteThread("t");
  await append("t");
  assert.equal(spy.calls.length, 3);

  // Past MAX_TRACKED_THREADS threads the oldest is forgotten (refreshed again).
  spy.calls.length = 0;
  for (let i = 0; i <= MAX_TRACKED_THREADS; i++) await append(`x${i}`);
  assert.equal(spy.calls.length, MAX_TRACKED_THREADS + 1);
  await append(`x${MAX_TRACKED_THREADS}`); // remembered
  assert.equal(spy.calls.length, MAX_TRACKED_THREADS + 1);
  await append("t"); // forgotten: the oldest
  assert.equal(spy.calls.length, MAX_TRACKED_THREADS + 2);

  // ttlMs 0: nothing expires, nothing is refreshed.
  await using forever = new InMemoryBackend({ ttlMs: 0 });
  const none = callSpy(forever, "registryRefresh");
  await new ContextBuffer(none.backend).append("t", 0, {
    fromId: "a",
    toId: "b",
  });
  assert.equal(none.calls.length, 0);
});

Deno.test("ContextBuffer.append succeeds when only the pair's refresh fails, and tries the refresh again next time", async () => {
  await using backend = new InMemoryBackend({ ttlMs: 60_000 });
  let failures = 1;
  let calls = 0;
  const flaky = new Proxy(backend, {
    get(target, property) {
      if (property === "registryRefresh") {
        return (uuid: string) => {
          calls++;
          return failures-- > 0
            ? Promise.reject(new BackendError("registry unreachable"))
            : target.registryRefresh(uuid);
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  const buffer = new ContextBuffer(flaky);
  assert.equal(
    (await buffer.append("t", 1, { fromId: "a", toId: "b" })).slotIndex,
    0,
  );
  assert.equal(
    (await buffer.append("t", 2, { fromId: "a", toId: "b" })).slotIndex,
    1,
  );
  assert.equal(calls, 2);
});
