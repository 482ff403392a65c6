// Conformance checks, section "watch": `bufferWatch` yields every slot from
// its start index in order, each once, byte-exact, whoever appended it; it
// waits for a thread that does not exist yet; and it ends on abort,
// `return()`, `close()`, deletion, clearing and expiry, never hanging.
//
// Checks only, in the order they run (fixtures and assertions live in
// _fixtures.ts). A check never opens a backend except through the `open` it is
// given (the runner owns prefixes, cleanup and skips), and never depends on
// another check having run.

import assert from "node:assert/strict";
import { withTimeout } from "../_async.ts";
import { BackendClosedError } from "../errors.ts";
import type { WatchedSlot } from "../protocol.ts";
import { bytes, type Check, type Loose, tagged } from "./_fixtures.ts";

/** How long a check waits for a slot or for the end before it fails. */
const WAIT_MS = 5_000;

/** The next result of a watch, failing the check after WAIT_MS. */
function nextOf(
  watch: AsyncIterator<WatchedSlot>,
  what: string,
): Promise<IteratorResult<WatchedSlot>> {
  return withTimeout(watch.next(), WAIT_MS, () => {
    throw new Error(`${what}: nothing within ${WAIT_MS} ms`);
  });
}

/** Takes `n` slots from a watch (failing after WAIT_MS without one). */
async function take(
  watch: AsyncIterator<WatchedSlot>,
  n: number,
  what: string,
): Promise<WatchedSlot[]> {
  const got: WatchedSlot[] = [];
  while (got.length < n) {
    const result = await nextOf(watch, `${what} (after ${got.length})`);
    if (result.done) assert.fail(`${what}: ended after ${got.length} slots`);
    got.push(result.value);
  }
  return got;
}

/** Asserts that the watch ends (within WAIT_MS) without yielding more. */
async function assertEnds(
  watch: AsyncIterator<WatchedSlot>,
  what: string,
): Promise<void> {
  const result = await nextOf(watch, what);
  assert.equal(result.done, true, `${what}: yielded ${result.value?.index}`);
}

/** The checks of section "watch", in the order they run. */
export const WATCH_CHECKS: Check[] = [
  {
    name:
      "bufferWatch() from index 0 yields the existing and the new slots in order, each once, byte-exact",
    async fn(open) {
      const backend = await open();
      await backend.bufferAppend("t", tagged(0, 0));
      await backend.bufferAppend("t", new Uint8Array(0));
      const watch = backend.bufferWatch("t", { fromIndex: 0 });
      try {
        const first = await take(watch, 2, "existing slots");
        assert.deepEqual(first, [
          { index: 0, slot: tagged(0, 0) },
          { index: 1, slot: new Uint8Array(0) },
        ]);
        const big = new Uint8Array(200_000).fill(7);
        const appended = [
          tagged(0, 2),
          big,
          ...Array.from(
            { length: 100 },
            (_, i) => tagged(0, 3 + i),
          ),
        ];
        // Some awaited one by one, the rest in flight at once.
        await backend.bufferAppend("t", appended[0]!);
        await backend.bufferAppend("t", appended[1]!);
        await Promise.all(
          appended.slice(2).map((slot) => backend.bufferAppend("t", slot)),
        );
        const stored = await backend.bufferGetThread("t");
        const got = await take(watch, appended.length, "new slots");
        assert.deepEqual(
          got.map((s) => s.index),
          Array.from({ length: appended.length }, (_, i) => i + 2),
        );
        for (const { index, slot } of got) {
          assert.deepEqual(slot, stored[index], `slot ${index}`);
        }
      } finally {
        await watch.return?.();
      }
    },
  },
  {
    name:
      "bufferWatch() without fromIndex starts at the thread's length: only new slots",
    async fn(open) {
      const backend = await open();
      await backend.bufferAppend("t", bytes(0));
      await backend.bufferAppend("t", bytes(1));
      const watch = backend.bufferWatch("t");
      try {
        // The watch starts when it can: append until the first slot arrives.
        const pending = watch.next();
        let settled = false;
        pending.then(() => settled = true, () => settled = true);
        let n = 2;
        const deadline = Date.now() + WAIT_MS;
        while (!settled && Date.now() < deadline) {
          await backend.bufferAppend("t", bytes(n++));
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        const first = await pending;
        assert.equal(first.done, false);
        const start = first.value!.index;
        assert.ok(start >= 2 && start < n, `first index ${start}`);
        assert.deepEqual(first.value!.slot, bytes(start));
        const rest = await take(watch, n - start - 1, "the following slots");
        assert.deepEqual(
          rest.map((s) => [s.index, s.slot[0]]),
          rest.map((_, i) => [start + 1 + i, start + 1 + i]),
        );
      } finally {
        await watch.return?.();
      }
    },
  },
  {
    name:
      "bufferWatch() of a thread that does not exist yet, or from an index past its end, waits for it",
    async fn(open) {
      const backend = await open();
      const early = backend.bufferWatch("later", { fromIndex: 0 });
      const ahead = backend.bufferWatch("later", { fromIndex: 3 });
      try {
        const waiting = nextOf(early, "the first slot of a new thread");
        const aheadFirst = nextOf(ahead, "slot 3");
        await new Promise((resolve) => setTimeout(resolve, 50));
        for (let i = 0; i < 5; i++) {
          await backend.bufferAppend("later", bytes(i));
        }
        assert.deepEqual((await waiting).value, { index: 0, slot: bytes(0) });
        assert.deepEqual((await aheadFirst).value, {
          index: 3,
          slot: bytes(3),
        });
        assert.deepEqual(
          (await take(ahead, 1, "slot 4"))[0],
          { index: 4, slot: bytes(4) },
        );
      } finally {
        await early.return?.();
        await ahead.return?.();
      }
    },
  },
  {
    name:
      "many watches of one thread each get every slot; a slot a watch yields is its own copy",
    async fn(open) {
      const backend = await open();
      const watches = Array.from(
        { length: 50 },
        () => backend.bufferWatch("t", { fromIndex: 0 }),
      );
      try {
        const all = Promise.all(
          watches.map((watch, i) => take(watch, 20, `watch ${i}`)),
        );
        for (let i = 0; i < 20; i++) await backend.bufferAppend("t", bytes(i));
        const results = await all;
        for (const got of results) {
          assert.deepEqual(
            got.map((s) => [s.index, s.slot[0]]),
            Array.from({ length: 20 }, (_, i) => [i, i]),
          );
        }
        results[0]![0]!.slot[0] = 99;
        assert.deepEqual(results[1]![0]!.slot, bytes(0));
        assert.deepEqual(await backend.bufferGetSlot("t", 0), bytes(0));
      } finally {
        await Promise.all(watches.map((watch) => watch.return?.()));
      }
    },
  },
  {
    name:
      "bufferWatch() ends on its signal's abort, on return() (break), and on close()",
    async fn(open) {
      const backend = await open();
      await backend.bufferAppend("t", bytes(0));
      const controller = new AbortController();
      const aborted = backend.bufferWatch("t", {
        fromIndex: 0,
        signal: controller.signal,
      });
      assert.equal((await take(aborted, 1, "slot 0"))[0]!.index, 0);
      const pending = nextOf(aborted, "the end after abort");
      controller.abort();
      assert.equal((await pending).done, true);

      const alreadyAborted = backend.bufferWatch("t", {
        fromIndex: 0,
        signal: AbortSignal.abort(),
      });
      await assertEnds(alreadyAborted, "a watch whose signal had aborted");

      const returned = backend.bufferWatch("t", { fromIndex: 1 });
      const waiting = nextOf(returned, "the end after return()");
      await new Promise((resolve) => setTimeout(resolve, 20));
      await returned.return?.();
      assert.equal((await waiting).done, true);
      await assertEnds(returned, "a returned watch");

      let seen = 0;
      for await (
        const { index } of backend.bufferWatch("t", { fromIndex: 0 })
      ) {
        assert.equal(index, 0);
        seen++;
        break;
      }
      assert.equal(seen, 1);

      const closing = backend.bufferWatch("t", { fromIndex: 1 });
      const waitingForClose = nextOf(closing, "the end after close()");
      await new Promise((resolve) => setTimeout(resolve, 20));
      await backend.close();
      assert.equal((await waitingForClose).done, true);
      await assert.rejects(
        backend.bufferWatch("t").next(),
        BackendClosedError,
      );
    },
  },
  {
    name:
      "bufferWatch() ends when its thread is deleted or cleared, after the slots it had",
    async fn(open) {
      const backend = await open();
      await backend.bufferAppend("t", bytes(0));
      await backend.bufferAppend("u", bytes(0));
      const deleted = backend.bufferWatch("t", { fromIndex: 0 });
      const cleared = backend.bufferWatch("u", { fromIndex: 0 });
      assert.equal((await take(deleted, 1, "slot 0 of t"))[0]!.index, 0);
      assert.equal((await take(cleared, 1, "slot 0 of u"))[0]!.index, 0);
      const deletedEnd = nextOf(deleted, "the end after deletion");
      const clearedEnd = nextOf(cleared, "the end after bufferClear()");
      await new Promise((resolve) => setTimeout(resolve, 20));
      await backend.bufferDeleteThread("t");
      assert.equal((await deletedEnd).done, true);
      await backend.bufferClear();
      assert.equal((await clearedEnd).done, true);
    },
  },
  {
    name: "bufferWatch() ends within 1 s of its thread's expiry",
    async fn(open, time) {
      const backend = await open({ ttlMs: time.ttlMs });
      const start = time.now();
      await backend.bufferAppend("t", bytes(0));
      const watch = backend.bufferWatch("t", { fromIndex: 0 });
      try {
        assert.equal((await take(watch, 1, "slot 0"))[0]!.index, 0);
        const end = nextOf(watch, "the end after expiry");
        await time.until(start + time.ttlMs + time.slackMs);
        // On a fake clock, time passes for the backend when it is next used.
        if (time.exact) await backend.bufferThreadExists("t");
        assert.equal((await end).done, true);
      } finally {
        await watch.return?.();
      }
    },
  },
  {
    name:
      "bufferWatch() rejects bad arguments at the first next(), naming them",
    async fn(open) {
      const backend = await open();
      const bad: [string, () => AsyncIterator<WatchedSlot>, RegExp][] = [
        ["threadId", () => backend.bufferWatch(""), /threadId/],
        ["threadId", () => backend.bufferWatch(42 as Loose), /threadId/],
        [
          "fromIndex",
          () => backend.bufferWatch("t", { fromIndex: -1 }),
          /fromIndex/,
        ],
        [
          "fromIndex",
          () => backend.bufferWatch("t", { fromIndex: 1.5 }),
          /fromIndex/,
        ],
        [
          "signal",
          () => backend.bufferWatch("t", { signal: "stop" as Loose }),
          /signal/,
        ],
      ];
      for (const [name, make, pattern] of bad) {
        let watch: AsyncIterator<WatchedSlot> | undefined;
        try {
          watch = make();
        } catch (error) {
          assert.match((error as Error).message, pattern, name);
          continue;
        }
        await assert.rejects(
          withTimeout(watch.next(), WAIT_MS, () => "hung"),
          (error: Error) =>
            (error instanceof TypeError || error instanceof RangeError) &&
            pattern.test(error.message),
          name,
        );
      }
      assert.equal(await backend.bufferThreadExists("t"), false);
    },
  },
  {
    name:
      "bufferWatch() sees the slots another backend on the same store appends, in order, each once",
    needsSharedStore: true,
    async fn(open) {
      const watcher = await open();
      const writerA = await open();
      const writerB = await open();
      const watch = watcher.bufferWatch("t", { fromIndex: 0 });
      try {
        const writes = await Promise.all([
          ...Array.from(
            { length: 30 },
            (_, i) => writerA.bufferAppend("t", tagged(1, i)),
          ),
          ...Array.from(
            { length: 30 },
            (_, i) => writerB.bufferAppend("t", tagged(2, i)),
          ),
        ]);
        const got = await take(watch, 60, "slots of two writers");
        assert.deepEqual(
          got.map((s) => s.index),
          Array.from({ length: 60 }, (_, i) => i),
        );
        for (const [k, index] of writes.entries()) {
          const expected = k < 30 ? tagged(1, k) : tagged(2, k - 30);
          assert.deepEqual(got[index]!.slot, expected, `slot ${index}`);
        }
      } finally {
        await watch.return?.();
      }
    },
  },
];
