// What is particular to watching on the kv backend: appends, deletions and
// refreshes of another process reach a watch through the poller (Deno KV's
// kv.watch does not cross processes on a local file), and one poller per
// backend reads the watched heads in getMany calls of at most 10 keys,
// backing off when nothing changes. The contract's watch checks run in
// tests/kv_test.ts (conformance) and across processes in tests/watch_test.ts.
//
// Run as `deno run tests/kv_watch_test.ts '<job as JSON>'`, this file is the
// other process: it appends, waits, refreshes or deletes as told, and prints
// one JSON line per step with the time it was acknowledged.

import assert from "node:assert/strict";
import { withTimeout } from "../_async.ts";
import { KvBackend } from "../backends/kv.ts";

/** What the other process does, in order. */
type Step =
  | { append: number } // this many slots, one after another
  | { sleep: number }
  | { delete: true };

interface Job {
  kvPath: string;
  ttlMs: number;
  threadId: string;
  steps: Step[];
}

if (import.meta.main) {
  const job = JSON.parse(Deno.args[0]!) as Job;
  await using backend = await KvBackend.open({
    kvPath: job.kvPath,
    ttlMs: job.ttlMs,
  });
  for (const step of job.steps) {
    if ("append" in step) {
      for (let i = 0; i < step.append; i++) {
        await backend.bufferAppend(job.threadId, new Uint8Array([i & 0xff]));
      }
    } else if ("sleep" in step) {
      await new Promise((resolve) => setTimeout(resolve, step.sleep));
    } else {
      await backend.bufferDeleteThread(job.threadId);
    }
    console.log(JSON.stringify({ done: step, at: Date.now() }));
  }
}

/** Runs the job in another process; resolves with the time each step was acknowledged. */
async function otherProcess(job: Job): Promise<number[]> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--unstable-kv",
      new URL(import.meta.url).pathname,
      JSON.stringify(job),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, stderr);
  return new TextDecoder().decode(output.stdout).trim().split("\n").map(
    (line) => (JSON.parse(line) as { at: number }).at,
  );
}

/** A fresh KV file in a temp dir, removed at the end of the scope. */
async function tempStore(): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "kv_watch_test_" });
  return {
    path: `${dir}/store.db`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** Takes every result of `watch` until it ends (failing after `ms`), with the time each came. */
async function drain(
  watch: AsyncIterator<{ index: number; slot: Uint8Array }>,
  ms: number,
): Promise<{ indexes: number[]; endedAt: number }> {
  const indexes: number[] = [];
  const deadline = Date.now() + ms;
  for (;;) {
    const result = await withTimeout(
      watch.next(),
      Math.max(1, deadline - Date.now()),
      () => assert.fail(`the watch did not end within ${ms} ms`),
    );
    if (result.done) return { indexes, endedAt: Date.now() };
    indexes.push(result.value.index);
  }
}

Deno.test("KvBackend watch: another process's appends arrive in order, and its deletion ends the watch within 1 s, after an idle spell", async () => {
  await using store = await tempStore();
  await using watcher = await KvBackend.open({ kvPath: store.path });
  const watch = watcher.bufferWatch("t", { fromIndex: 0 });
  const watched = drain(watch, 10_000); // read while the other process runs
  const [, , deletedAt] = await otherProcess({
    kvPath: store.path,
    ttlMs: 0,
    threadId: "t",
    // The idle spell lets the poller back off to its slowest before the delete.
    steps: [{ append: 50 }, { sleep: 2_500 }, { delete: true }],
  });
  const { indexes, endedAt } = await watched;
  assert.deepEqual(indexes, Array.from({ length: 50 }, (_, i) => i));
  assert.ok(
    endedAt - deletedAt! < 1_000,
    `ended ${endedAt - deletedAt!} ms after the deletion`,
  );
});

Deno.test("KvBackend watch: a thread another process refreshes is not ended at its first expiry; it ends within 1 s of its real one", async () => {
  await using store = await tempStore();
  await using watcher = await KvBackend.open({
    kvPath: store.path,
    ttlMs: 1_500,
  });
  const watch = watcher.bufferWatch("t", { fromIndex: 0 });
  const watched = drain(watch, 10_000);
  const [createdAt, , refreshedAt] = await otherProcess({
    kvPath: store.path,
    ttlMs: 1_500,
    threadId: "t",
    steps: [{ append: 1 }, { sleep: 1_000 }, { append: 1 }],
  });
  const { indexes, endedAt } = await watched;
  assert.deepEqual(indexes, [0, 1]);
  assert.ok(refreshedAt! - createdAt! < 1_500, "the refresh came in time");
  // Not at the first expiry (the refresh moved it by about 1 s) ...
  assert.ok(
    endedAt > createdAt! + 1_500 + 500,
    `ended ${endedAt - createdAt! - 1_500} ms after the first expiry`,
  );
  // ... but soon after the real one.
  const expiredAt = refreshedAt! + 1_500;
  assert.ok(
    endedAt - expiredAt < 1_000,
    `ended ${endedAt - expiredAt} ms late`,
  );
});

Deno.test("KvBackend watch: one poller per backend reads the watched heads 10 a getMany and backs off to one poll every 500 ms", async () => {
  using kv = await Deno.openKv(":memory:");
  const calls = { getMany: 0, keys: 0, most: 0, watch: 0, watchMost: 0 };
  // The backend's KV, counting its getMany and watch calls.
  const counted = new Proxy(kv, {
    get(target, property) {
      if (property === "getMany") {
        return (keys: Deno.KvKey[], options?: { consistency?: "strong" }) => {
          calls.getMany++;
          calls.keys += keys.length;
          calls.most = Math.max(calls.most, keys.length);
          return target.getMany(keys, options);
        };
      }
      if (property === "watch") {
        return (keys: Deno.KvKey[]) => {
          calls.watch++;
          calls.watchMost = Math.max(calls.watchMost, keys.length);
          return target.watch(keys);
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  // An injected KV may be shared with other processes: it is polled.
  await using backend = await KvBackend.open({ kv: counted });
  const controller = new AbortController();
  const watches = Array.from(
    { length: 200 },
    (_, i) =>
      backend.bufferWatch(`t${i}`, { fromIndex: 0, signal: controller.signal }),
  );
  const ends = watches.map((watch) => watch.next());
  // Let the polls slow down (10, 20, ... 320, 500 ms), then count for 2 s.
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  const before = { ...calls };
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  const polls = (calls.getMany - before.getMany) / 20;
  controller.abort();
  for (const end of ends) assert.equal((await end).done, true);
  assert.ok(calls.most <= 10, `a getMany of ${calls.most} keys`);
  assert.ok(calls.watchMost <= 10, `a kv.watch of ${calls.watchMost} keys`);
  assert.ok(calls.watch <= 20 * 3, `${calls.watch} kv.watch streams`);
  // 200 heads are 20 getMany a poll; idle, a poll every 500 ms: 4 in 2 s.
  assert.ok(polls >= 2 && polls <= 6, `${polls} polls in 2 s`);
});
