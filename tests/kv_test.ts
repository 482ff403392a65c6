import assert from "node:assert/strict";
import { KvBackend, type KvBackendOptions } from "../backends/kv.ts";
import type { BackendConfig } from "../config.ts";
import { runConformanceSuite } from "../testing/conformance.ts";
import { assertSameBytes } from "../testing/_fixtures.ts";

Deno.test("KvBackend meets the shared-backend contract", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "kv_conformance_" });
  const kvPath = `${dir}/store.db`;
  try {
    await runConformanceSuite(t, {
      name: "kv",
      open: (config) => KvBackend.open({ ...config, kvPath }),
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------ helpers

import { BackendError, SlotLimitError, ThreadLimitError } from "../errors.ts";
import {
  type AppendJob,
  type AppendReport,
  tagged,
} from "./_fixtures/kv_appender.ts";

const FIXTURE = new URL("./_fixtures/kv_appender.ts", import.meta.url);

/** A fresh KV file in a temp dir, removed at the end of the scope. */
async function tempStore(): Promise<
  { path: string } & AsyncDisposable
> {
  const dir = await Deno.makeTempDir({ prefix: "kv_test_" });
  return {
    path: `${dir}/store.db`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** Every raw key and entry under a tenant's prefix. */
async function rawEntries(
  path: string,
  prefix: string,
): Promise<Deno.KvEntry<unknown>[]> {
  using kv = await Deno.openKv(path);
  return await Array.fromAsync(kv.list({ prefix: [prefix] }));
}

/**
 * Asserts that a tenant's raw entries are its thread counter at 0 and
 * nothing else. A failure lists what is left, abbreviated: node:assert's
 * diff of raw values (70 KB slots, ids of 1 000 NULs) can take gigabytes.
 */
async function assertOnlyCounterLeft(
  path: string,
  prefix: string,
): Promise<void> {
  const raw = await rawEntries(path, prefix);
  const [only] = raw;
  const counterOnly = raw.length === 1 && only!.key.length === 3 &&
    only!.key[0] === prefix && only!.key[1] === "meta" &&
    only!.key[2] === "threads" && only!.value === 0;
  const left = raw.map((e) =>
    Deno.inspect([e.key.slice(1), e.value], {
      depth: 3,
      iterableLimit: 8,
      strAbbreviateSize: 40,
    })
  );
  assert.ok(
    counterOnly,
    `expected only the thread counter at 0, found ${raw.length} entries: ${
      left.join("; ").slice(0, 2_000)
    }`,
  );
}

/** A tenant's entries in the store-wide expiry index `[true, "exp", second, prefix, ...]`. */
async function indexEntries(
  path: string,
  prefix: string,
): Promise<Deno.KvEntry<unknown>[]> {
  using kv = await Deno.openKv(path);
  return (await Array.fromAsync(kv.list({ prefix: [true, "exp"] }))).filter(
    (entry) => entry.key[3] === prefix,
  );
}

/** A guard against a hung writer: the test fails loudly instead of hanging. */
const WRITER_TIMEOUT_MS = 60_000;

function runWorker(job: AppendJob): Promise<AppendReport> {
  const worker = new Worker(FIXTURE, { type: "module" });
  const { promise, resolve, reject } = Promise.withResolvers<AppendReport>();
  const timer = setTimeout(() => {
    worker.terminate();
    reject(new Error(`worker ${job.writer} hung for ${WRITER_TIMEOUT_MS} ms`));
  }, WRITER_TIMEOUT_MS);
  worker.onmessage = (event: MessageEvent<AppendReport>) => {
    clearTimeout(timer);
    worker.terminate();
    resolve(event.data);
  };
  worker.onerror = (event) => {
    event.preventDefault();
    clearTimeout(timer);
    worker.terminate();
    reject(new Error(`worker ${job.writer} failed: ${event.message}`));
  };
  worker.postMessage(job);
  return promise;
}

function processArgs(job: AppendJob): string[] {
  return [
    "run",
    "--quiet",
    "--allow-read",
    "--allow-write",
    "--unstable-kv",
    FIXTURE.pathname,
    JSON.stringify(job),
  ];
}

async function runProcess(job: AppendJob): Promise<AppendReport> {
  const child = new Deno.Command(Deno.execPath(), {
    args: processArgs(job),
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), WRITER_TIMEOUT_MS);
  try {
    const output = await child.output();
    const decoder = new TextDecoder();
    if (!output.success) {
      throw new Error(
        `writer ${job.writer} failed (${output.signal ?? output.code}): ${
          decoder.decode(output.stderr)
        }`,
      );
    }
    return JSON.parse(decoder.decode(output.stdout));
  } finally {
    clearTimeout(timer);
  }
}

function byOutcome(reports: AppendReport[]) {
  const results = reports.flatMap((r) =>
    r.results.map((x) => ({ ...x, writer: r.writer }))
  );
  return {
    ok: results.filter((x) => x.index !== undefined),
    failed: results.filter((x) => x.error !== undefined),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A Deno.Kv that records the most checks and mutations of its atomic commits. */
function counting(
  kv: Deno.Kv,
  seen: { commits: number; maxChecks: number; maxMutations: number },
): Deno.Kv {
  return interceptCommits(kv, (commit, checks, mutations) => {
    seen.commits++;
    seen.maxChecks = Math.max(seen.maxChecks, checks);
    seen.maxMutations = Math.max(seen.maxMutations, mutations);
    return commit();
  });
}

// ------------------------------------------------------------ KV specifics

Deno.test("KvBackend on one KV file shared by Workers and processes", async (t) => {
  await t.step(
    "4 Workers and 2 deno run subprocesses appending to one thread get dense, unique indexes and their own bytes",
    async () => {
      await using store = await tempStore();
      const job = (writer: number): AppendJob => ({
        kind: "append",
        kvPath: store.path,
        config: { prefix: "procs:" },
        threadIds: ["shared"],
        writer,
        count: 150,
        size: 200,
        inflight: 8,
      });
      const reports = await Promise.all([
        runWorker(job(1)),
        runWorker(job(2)),
        runWorker(job(3)),
        runWorker(job(4)),
        runProcess(job(5)),
        runProcess(job(6)),
      ]);
      const { ok, failed } = byOutcome(reports);
      assert.deepEqual(failed, []);
      assert.equal(ok.length, 900);
      assert.deepEqual(
        ok.map((x) => x.index!).toSorted((a, b) => a - b),
        [...Array(900).keys()],
      );
      await using backend = await KvBackend.open({
        kvPath: store.path,
        prefix: "procs:",
      });
      const slots = await backend.bufferGetThread("shared");
      assert.equal(slots.length, 900);
      for (const x of ok) {
        assert.deepEqual(slots[x.index!], tagged(x.writer, x.seq, 200));
      }
    },
  );

  await t.step(
    "a subprocess killed with SIGKILL mid 1 MiB append leaves nothing partial; appends go on densely and its orphaned chunks are reclaimed",
    async () => {
      await using store = await tempStore();
      const prefix = "kill:";
      const size = 1024 * 1024;
      let orphans = 0;
      // The kill lands mid-upload nearly always; try again if it fell
      // between two (more likely on a loaded machine).
      const ROUNDS = 10;
      for (let round = 0; round < ROUNDS && orphans === 0; round++) {
        const child = new Deno.Command(Deno.execPath(), {
          args: processArgs({
            kind: "big",
            kvPath: store.path,
            config: { prefix },
            options: { uploadTimeoutMs: 1_000 },
            threadIds: ["big"],
            writer: 7,
            count: 0,
            size,
            inflight: 1,
          }),
          stdout: "piped",
          stderr: "null",
        }).spawn();
        const guard = setTimeout(
          () => child.kill("SIGKILL"),
          WRITER_TIMEOUT_MS,
        );
        let lines = 0;
        let killed = false;
        for await (
          const text of child.stdout.pipeThrough(new TextDecoderStream())
        ) {
          lines += text.split("\n").length - 1;
          if (lines >= 2 && !killed) {
            await sleep(Math.random() * 20);
            child.kill("SIGKILL");
            killed = true;
          }
        }
        const status = await child.status;
        clearTimeout(guard);
        assert.equal(status.signal, "SIGKILL");
        assert.ok(killed, `the writer died after ${lines} appends`);
        orphans = (await rawEntries(store.path, prefix)).filter((e) =>
          e.key[1] === "upload"
        ).length;
      }
      assert.ok(orphans > 0, `no kill landed mid-upload in ${ROUNDS} rounds`);

      await using backend = await KvBackend.open({
        kvPath: store.path,
        prefix,
      });
      const slots = await backend.bufferGetThread("big");
      assert.ok(slots.length >= 2);
      slots.forEach((slot, i) => {
        assert.equal(slot.byteLength, size);
        // Each round's writer restarts its seq at 0: the header says which.
        const seq = new DataView(slot.buffer).getUint32(4);
        // Without assert's diff, which takes minutes on MiB-sized arrays.
        assertSameBytes(slot, tagged(7, seq, size), `slot ${i}`);
        assert.ok(i >= seq);
      });
      const n = slots.length;
      assert.equal(await backend.bufferAppend("big", new Uint8Array([1])), n);
      assert.equal(
        await backend.bufferAppend("big", new Uint8Array([2])),
        n + 1,
      );

      // Past the upload deadline, the next sweep reclaims the orphans.
      await sleep(1_100);
      await using later = await KvBackend.open({ kvPath: store.path, prefix });
      assert.equal(await later.bufferThreadLen("big"), n + 2);
      const raw = await rawEntries(store.path, prefix);
      assert.equal(raw.filter((e) => e.key[1] === "upload").length, 0);
      assert.equal(
        raw.filter((e) => e.key[1] === "chunk").length,
        n * Math.ceil(size / (60 * 1024)),
      );
    },
  );

  await t.step(
    "one appendId from two processes and two Workers at once: one slot, one index for all; after the thread's deletion the ids are free again",
    async () => {
      await using store = await tempStore();
      const job = (writer: number): AppendJob => ({
        kind: "append",
        kvPath: store.path,
        config: { prefix: "ids:" },
        threadIds: ["shared"],
        writer,
        count: 60,
        size: 64,
        inflight: 8,
        appendIds: 60,
      });
      const race = () =>
        Promise.all([
          runWorker(job(1)),
          runWorker(job(2)),
          runProcess(job(3)),
          runProcess(job(4)),
        ]);
      const check = async (reports: AppendReport[]) => {
        const { ok, failed } = byOutcome(reports);
        assert.deepEqual(failed, []);
        assert.equal(ok.length, 240);
        // Every caller of one id got the same index; the 60 ids, 60 indexes.
        const indexOf = new Map<number, number>();
        for (const x of ok) {
          const first = indexOf.get(x.seq);
          if (first === undefined) indexOf.set(x.seq, x.index!);
          else assert.equal(x.index, first, `id-${x.seq}`);
        }
        assert.deepEqual(
          [...indexOf.values()].toSorted((a, b) => a - b),
          [...Array(60).keys()],
        );
        await using backend = await KvBackend.open({
          kvPath: store.path,
          prefix: "ids:",
        });
        const slots = await backend.bufferGetThread("shared");
        assert.equal(slots.length, 60);
        // Each slot holds the bytes of one of its id's appends.
        for (const [seq, index] of indexOf) {
          const slot = slots[index]!;
          const writer = new DataView(slot.buffer).getUint32(0);
          assert.deepEqual(slot, tagged(writer, seq, 64));
        }
      };
      await check(await race());
      {
        await using backend = await KvBackend.open({
          kvPath: store.path,
          prefix: "ids:",
        });
        assert.equal(await backend.bufferDeleteThread("shared"), true);
      }
      await check(await race());
    },
  );

  await t.step(
    "maxSlotsPerThread and maxThreads hold when 2 Workers and 2 processes race at the edge",
    async () => {
      await using store = await tempStore();
      const job = (
        writer: number,
        config: AppendJob["config"],
        threadIds: string[],
        count: number,
      ): AppendJob => ({
        kind: "append",
        kvPath: store.path,
        config,
        threadIds,
        writer,
        count,
        size: 32,
        inflight: 8,
      });
      const race = (make: (writer: number) => AppendJob) =>
        Promise.all([
          runWorker(make(1)),
          runWorker(make(2)),
          runProcess(make(3)),
          runProcess(make(4)),
        ]);
      const slots = byOutcome(
        await race((w) =>
          job(w, { prefix: "slots:", maxSlotsPerThread: 50 }, ["edge"], 40)
        ),
      );
      assert.equal(slots.ok.length, 50);
      assert.ok(slots.failed.every((x) => x.error === "SlotLimitError"));
      assert.deepEqual(
        slots.ok.map((x) => x.index!).toSorted((a, b) => a - b),
        [...Array(50).keys()],
      );
      const threads = byOutcome(
        await race((w) =>
          job(
            w,
            { prefix: "threads:", maxThreads: 15 },
            Array.from({ length: 10 }, (_, i) => `w${w}-${i}`),
            10,
          )
        ),
      );
      assert.equal(threads.ok.length, 15);
      assert.equal(threads.failed.length, 25);
      assert.ok(threads.failed.every((x) => x.error === "ThreadLimitError"));
      await using backend = await KvBackend.open({
        kvPath: store.path,
        prefix: "threads:",
        maxThreads: 15,
      });
      assert.equal((await backend.bufferListThreads()).length, 15);
    },
  );
});

Deno.test("KvBackend TTL with a short ttl across processes: exact expiry, storage reclaimed", async () => {
  await using store = await tempStore();
  const prefix = "ttl:";
  // Another process writes most of the thread ...
  const { ok } = byOutcome([
    await runProcess({
      kind: "append",
      kvPath: store.path,
      config: { prefix, ttlMs: 1_000 },
      threadIds: ["long"],
      writer: 1,
      count: 300,
      size: 100,
      inflight: 16,
    }),
  ]);
  assert.equal(ok.length, 300);
  // ... and this one refreshes it, with a large slot, and writes the rest.
  await using backend = await KvBackend.open({
    kvPath: store.path,
    prefix,
    ttlMs: 1_000,
  });
  await backend.bufferAppend("long", new Uint8Array(200_000).fill(3));
  await backend.bufferAppend("short", new Uint8Array([1]));
  await backend.registrySet("a.b", "u1");
  const start = Date.now();
  await sleep(700);
  assert.equal(await backend.bufferThreadLen("long"), 301);
  assert.equal(await backend.registryGetChain("u1"), "a.b");
  await sleep(Math.max(0, start + 1_000 - Date.now()) + 50);
  // Gone whole, on every read; not listed, not counted.
  assert.equal(await backend.bufferThreadExists("long"), false);
  assert.deepEqual(await backend.bufferGetThread("long"), []);
  assert.equal(await backend.bufferGetSlot("long", 0), null);
  assert.deepEqual(await backend.bufferListThreads(), []);
  assert.equal(await backend.registryGetUuid("a.b"), null);
  const stats = await backend.stats();
  assert.equal(stats.threads + stats.slots + stats.registryEntries, 0);
  // Storage: the sweep of the next call (at most a second later) reclaims it all.
  await sleep(1_000);
  await backend.stats();
  await assertOnlyCounterLeft(store.path, prefix);
});

Deno.test("KvBackend group commit, limits and retries", async (t) => {
  await using store = await tempStore();
  let tenant = 0;
  const open = (config: BackendConfig = {}, options?: KvBackendOptions) =>
    KvBackend.open(
      { kvPath: store.path, prefix: `g${tenant++}:`, ...config },
      options,
    );
  const commits = async (prefix: string) =>
    new Set(
      (await rawEntries(store.path, prefix)).filter((e) => e.key[1] === "slot")
        .map((e) => e.versionstamp),
    ).size;

  await t.step(
    "256 concurrent appends to one thread share a handful of atomic commits",
    async () => {
      await using backend = await open();
      const indexes = await Promise.all(
        Array.from(
          { length: 256 },
          (_, i) => backend.bufferAppend("t", new Uint8Array([i & 0xff])),
        ),
      );
      assert.deepEqual(indexes, [...Array(256).keys()]);
      assert.ok((await commits(`g${tenant - 1}:`)) <= 4);
    },
  );

  await t.step(
    "256 concurrent appends over 100 threads share a few commits within 100 checks each",
    async () => {
      using kv = await Deno.openKv(store.path);
      const seen = { commits: 0, maxChecks: 0, maxMutations: 0 };
      // An injected kv may be remote (10 checks): say it is a local file.
      await using backend = await KvBackend.open({
        kv: counting(kv, seen),
        prefix: `g${tenant++}:`,
      }, { maxChecksPerAtomic: 100 });
      seen.maxChecks = 0; // open() tried one commit of 100 checks
      await Promise.all(
        Array.from(
          { length: 256 },
          (_, i) =>
            backend.bufferAppend(`t${i % 100}`, new Uint8Array([i & 0xff])),
        ),
      );
      const n = await commits(`g${tenant - 1}:`);
      assert.ok(n >= 2 && n <= 8, `${n} commits`);
      assert.equal((await backend.stats()).slots, 256);
      assert.ok(seen.maxChecks > 10 && seen.maxChecks <= 100);
      assert.ok(seen.maxMutations <= 1000);
    },
  );

  await t.step(
    "with maxChecksPerAtomic 10 (KV Connect) commits hold at most 9 threads",
    async () => {
      await using backend = await open({}, { maxChecksPerAtomic: 10 });
      await Promise.all(
        Array.from(
          { length: 100 },
          (_, i) => backend.bufferAppend(`t${i}`, new Uint8Array([i])),
        ),
      );
      assert.ok((await commits(`g${tenant - 1}:`)) >= 12);
    },
  );

  await t.step(
    "with maxChecksPerAtomic 10, group commits of large and small slots over many threads hold at most 10 checks",
    async () => {
      using kv = await Deno.openKv(store.path);
      const seen = { commits: 0, maxChecks: 0, maxMutations: 0 };
      await using backend = await KvBackend.open(
        { kv: counting(kv, seen), prefix: `g${tenant++}:` },
        { maxChecksPerAtomic: 10 },
      );
      const slots = Array.from(
        { length: 60 },
        (_, i) => new Uint8Array(i % 3 === 0 ? 70_000 : 10).fill(i),
      );
      const indexes = await Promise.all(
        slots.map((slot, i) => backend.bufferAppend(`t${i % 30}`, slot)),
      );
      assert.deepEqual(indexes, slots.map((_, i) => i < 30 ? 0 : 1));
      for (let i = 0; i < 60; i++) {
        assert.deepEqual(
          await backend.bufferGetSlot(`t${i % 30}`, i < 30 ? 0 : 1),
          slots[i],
        );
      }
      assert.ok(seen.maxChecks <= 10, `${seen.maxChecks} checks`);
      assert.ok(seen.maxChecks >= 9, "commits were not grouped");
      assert.ok(seen.maxMutations <= 1000);
    },
  );

  await t.step(
    "a SlotLimitError or ThreadLimitError in a batch fails its own callers only",
    async () => {
      await using backend = await open({ maxSlotsPerThread: 3, maxThreads: 2 });
      await backend.bufferAppend("a", new Uint8Array([0]));
      const settled = await Promise.allSettled([
        ...Array.from(
          { length: 5 },
          () => backend.bufferAppend("a", new Uint8Array([1])),
        ),
        ...Array.from(
          { length: 3 },
          () => backend.bufferAppend("b", new Uint8Array([2])),
        ),
        ...Array.from(
          { length: 2 },
          () => backend.bufferAppend("c", new Uint8Array([3])),
        ),
      ]);
      const outcome = settled.map((s) =>
        s.status === "fulfilled" ? s.value : s.reason.constructor
      );
      assert.deepEqual(outcome, [
        1,
        2,
        SlotLimitError,
        SlotLimitError,
        SlotLimitError,
        0,
        1,
        2,
        ThreadLimitError,
        ThreadLimitError,
      ]);
      assert.deepEqual(await backend.bufferListThreads(), ["a", "b"]);
    },
  );

  await t.step(
    "a writer that keeps losing races rejects with BackendError after maxAttempts, losing nothing",
    async () => {
      const prefix = `g${tenant++}:`;
      await using a = await KvBackend.open({ kvPath: store.path, prefix }, {
        maxAttempts: 1,
      });
      await using b = await KvBackend.open({ kvPath: store.path, prefix });
      await a.bufferAppend("t", new Uint8Array([1])); // a caches the head
      await b.bufferAppend("t", new Uint8Array([2])); // and b moves it on
      await assert.rejects(
        a.bufferAppend("t", new Uint8Array([3])),
        (error: unknown) =>
          error instanceof BackendError && /maxAttempts/.test(error.message),
      );
      assert.deepEqual(await b.bufferGetThread("t"), [
        new Uint8Array([1]),
        new Uint8Array([2]),
      ]);
      assert.equal(await a.bufferAppend("t", new Uint8Array([3])), 2);
    },
  );

  await t.step(
    "an append to a long thread writes O(1) keys: its slot and head, never the older slots",
    async () => {
      await using backend = await open({ ttlMs: 60_000 });
      const prefix = `g${tenant - 1}:`;
      await Promise.all(
        Array.from(
          { length: 2000 },
          (_, i) => backend.bufferAppend("long", new Uint8Array([i & 0xff])),
        ),
      );
      await sleep(1_000); // a new expiry second: the expiry entry moves too
      await backend.bufferAppend("long", new Uint8Array([1]));
      const raw = [
        ...await rawEntries(store.path, prefix),
        ...await indexEntries(store.path, prefix),
      ];
      const newest = raw.map((e) => e.versionstamp).sort().at(-1);
      const written = raw.filter((e) => e.versionstamp === newest);
      assert.ok(written.length <= 3, `${written.length} keys written`);
      assert.equal(raw.length, 2001 + 3); // slots, head, counter, expiry entry
    },
  );

  await t.step(
    "slots up to the default 4 MiB round-trip, stored as chunks under 64 KiB",
    async () => {
      await using backend = await open();
      const prefix = `g${tenant - 1}:`;
      const big = crypto.getRandomValues(new Uint8Array(65_536));
      const slot = new Uint8Array(4 * 1024 * 1024);
      for (let i = 0; i < slot.length; i += big.length) slot.set(big, i);
      slot[slot.length - 1] = 42;
      assert.equal(await backend.bufferAppend("t", slot), 0);
      assertSameBytes(await backend.bufferGetSlot("t", 0), slot, "4 MiB slot");
      const chunks = (await rawEntries(store.path, prefix)).filter((e) =>
        e.key[1] === "chunk"
      );
      assert.equal(chunks.length, Math.ceil(slot.length / (60 * 1024)));
      assert.ok(
        chunks.every((e) => (e.value as Uint8Array).byteLength <= 60 * 1024),
      );
      await assert.rejects(
        backend.bufferAppend("t", new Uint8Array(4 * 1024 * 1024 + 1)),
        RangeError,
      );
    },
  );

  await t.step(
    "a large slot is copied when bufferAppend() is called: the caller may reuse its buffer at once",
    async () => {
      await using backend = await open();
      const buffer = new Uint8Array(200_000).fill(7);
      const appended = backend.bufferAppend("t", buffer);
      buffer.fill(9);
      assert.equal(await appended, 0);
      const slot = await backend.bufferGetSlot("t", 0);
      assert.equal(slot?.byteLength, 200_000);
      assert.ok(slot.every((byte) => byte === 7), "the slot changed with it");
    },
  );

  await t.step(
    "bufferDeleteThread() and bufferClear() reclaim the storage at once, large slots included",
    async () => {
      await using backend = await open({ ttlMs: 60_000 });
      const prefix = `g${tenant - 1}:`;
      for (const id of ["x", "y", "z"]) {
        await backend.bufferAppend(id, new Uint8Array(100_000));
        await backend.bufferAppend(id, new Uint8Array([1]));
      }
      await backend.bufferDeleteThread("x");
      assert.equal(
        (await rawEntries(store.path, prefix)).filter((e) => e.key[2] === "x")
          .length,
        0,
      );
      await backend.bufferClear();
      await assertOnlyCounterLeft(store.path, prefix);
    },
  );

  await t.step(
    "an expired thread frees its place under maxThreads at once, and its id starts again at 0",
    async () => {
      await using backend = await open({ ttlMs: 1_000, maxThreads: 2 });
      await backend.bufferAppend("a", new Uint8Array([1]));
      await backend.bufferAppend("a", new Uint8Array([2]));
      await backend.bufferAppend("b", new Uint8Array([1]));
      await assert.rejects(
        backend.bufferAppend("c", new Uint8Array([1])),
        ThreadLimitError,
      );
      await sleep(1_050);
      const created = await Promise.all([
        backend.bufferAppend("c", new Uint8Array([3])),
        backend.bufferAppend("a", new Uint8Array([4])),
      ]);
      assert.deepEqual(created, [0, 0]);
      assert.deepEqual(await backend.bufferGetThread("a"), [
        new Uint8Array([4]),
      ]);
      await assert.rejects(
        backend.bufferAppend("b", new Uint8Array([1])),
        ThreadLimitError,
      );
    },
  );

  await t.step(
    "mixed appends, deletes, clears and reads from two backends keep the heads, counter and slots consistent",
    async () => {
      const prefix = `g${tenant++}:`;
      await using a = await KvBackend.open({ kvPath: store.path, prefix });
      await using b = await KvBackend.open({ kvPath: store.path, prefix });
      const ops: Promise<unknown>[] = [];
      for (let i = 0; i < 600; i++) {
        const backend = i % 2 === 0 ? a : b;
        const id = `t${i % 7}`;
        const roll = (i * 7919) % 100;
        if (roll < 75) {
          const size = roll < 3 ? 70_000 : 50;
          ops.push(
            backend.bufferAppend(id, new Uint8Array(size).fill(i & 0xff)),
          );
        } else if (roll < 85) ops.push(backend.bufferDeleteThread(id));
        else if (roll < 86) ops.push(backend.bufferClear());
        else ops.push(backend.bufferGetThread(id));
        if (i % 50 === 49) await Promise.all(ops.splice(0));
      }
      await Promise.all(ops);
      const raw = await rawEntries(store.path, prefix);
      const heads = raw.filter((e) => e.key[1] === "head");
      const counter = raw.find((e) => e.key[1] === "meta")?.value;
      assert.equal(counter, heads.length);
      for (const head of heads) {
        const id = head.key[2] as string;
        const { g, n } = head.value as { g: string; n: number };
        const slots = await a.bufferGetThread(id);
        assert.equal(slots.length, n);
        assert.equal(
          raw.filter((e) => e.key[1] === "slot" && e.key[2] === id).length,
          n,
          `slots of ${id} (generation ${g})`,
        );
      }
      await a.bufferClear();
      await assertOnlyCounterLeft(store.path, prefix);
    },
  );

  await t.step(
    "grouped appends to threads with long ids stay within Deno KV's 80 KiB of set keys per commit, and such threads are deleted, cleared and reclaimed whole",
    async () => {
      await using backend = await open({ ttlMs: 60_000 });
      const prefix = `g${tenant - 1}:`;
      const dense = (n: number) => [...Array(n).keys()];
      // A dotted chain of 100 characters: 1000 slot keys exceed 80 KiB.
      const chain = "console.router.greeter.".repeat(5).slice(0, 100);
      assert.deepEqual(
        await Promise.all(
          dense(1000).map((i) =>
            backend.bufferAppend(chain, new Uint8Array([i & 0xff]))
          ),
        ),
        dense(1000),
      );
      // Ids at the 1024-byte edge: one thread of 900 slots, then 120 threads.
      const long = (i: number) => String(i).padStart(4, "0") + "é".repeat(510);
      assert.deepEqual(
        await Promise.all(
          dense(900).map(() =>
            backend.bufferAppend(long(0), new Uint8Array(1))
          ),
        ),
        dense(900),
      );
      assert.equal(await backend.bufferDeleteThread(long(0)), true);
      const left = (await rawEntries(store.path, prefix)).filter((e) =>
        e.key[2] === long(0)
      );
      assert.equal(left.length, 0);
      await Promise.all(
        dense(120).map((i) =>
          backend.bufferAppend(long(i + 1), new Uint8Array(1))
        ),
      );
      assert.equal((await backend.stats()).threads, 121);
      await backend.bufferClear();
      await assertOnlyCounterLeft(store.path, prefix);
    },
  );

  await t.step(
    "registryClear() racing registrySet() from another backend never leaves a chain without its uuid",
    async () => {
      const prefix = `g${tenant++}:`;
      await using writer = await KvBackend.open({ kvPath: store.path, prefix });
      await using clearer = await KvBackend.open({
        kvPath: store.path,
        prefix,
      });
      let n = 0;
      for (let round = 0; round < 60; round++) {
        let stop = false;
        const lanes = Array.from({ length: 8 }, async () => {
          while (!stop) {
            const i = n++;
            await writer.registrySet(`c${i}`, `u${i}`);
          }
        });
        await sleep(5);
        await clearer.registryClear();
        stop = true;
        await Promise.all(lanes);
        // Every pair written once: whole (both records) or gone (neither).
        const raw = await rawEntries(store.path, prefix);
        const chains = raw.filter((e) => e.key[1] === "chain");
        const uuids = raw.filter((e) => e.key[1] === "uuid");
        assert.deepEqual(
          uuids.map((e) => e.key[2]).toSorted(),
          chains.map((e) => `u${(e.key[2] as string).slice(1)}`).toSorted(),
          `round ${round}`,
        );
      }
      const all = await writer.registryListAll();
      for (const [uuid, chain] of all) {
        assert.equal(await writer.registryGetUuid(chain), uuid);
      }
    },
  );

  await t.step(
    "the tenant's prefix is one key part: a: and a:buffer: keys never share a list",
    async () => {
      await using a = await KvBackend.open({
        kvPath: store.path,
        prefix: "a:",
      });
      await using ab = await KvBackend.open({
        kvPath: store.path,
        prefix: "a:buffer:",
      });
      await a.bufferAppend("buffer:t", new Uint8Array([1]));
      await ab.bufferAppend("t", new Uint8Array([2]));
      await ab.registrySet("c", "u");
      assert.ok(
        (await rawEntries(store.path, "a:")).every((e) => e.key[0] === "a:"),
      );
      assert.deepEqual(await a.bufferListThreads(), ["buffer:t"]);
      assert.deepEqual(await a.registryListAll(), new Map());
    },
  );
});

Deno.test("KvBackend.open", async (t) => {
  await t.step(
    "a path that cannot be opened rejects naming the path",
    async () => {
      await assert.rejects(
        KvBackend.open({ kvPath: "/nonexistent-dir/sub/store.db" }),
        (error: unknown) =>
          error instanceof BackendError &&
          error.message.includes("/nonexistent-dir/sub/store.db"),
      );
    },
  );

  await t.step(
    "an injected Deno.Kv is used and left open by close()",
    async () => {
      using kv = await Deno.openKv(":memory:");
      const backend = await KvBackend.open({ kv, prefix: "inj:" });
      await backend.bufferAppend("t", new Uint8Array([5]));
      await backend.close();
      const heads = await Array.fromAsync(
        kv.list({ prefix: ["inj:", "head"] }),
      );
      assert.equal(heads.length, 1);
    },
  );

  await t.step(
    "a second close() resolves only once the first has finished: in-flight calls settled, the KV closed",
    async () => {
      await using store = await tempStore();
      const backend = await KvBackend.open({ kvPath: store.path });
      const append = backend.bufferAppend("t", new Uint8Array(200_000));
      let firstDone = false;
      const first = backend.close().then(() => firstDone = true);
      await backend.close();
      assert.equal(firstDone, true);
      assert.equal(await append, 0);
      await first;
    },
  );

  await t.step("bad options are RangeErrors naming them", async () => {
    await assert.rejects(
      KvBackend.open({ kvPath: ":memory:" }, { maxAttempts: 0 }),
      /maxAttempts/,
    );
    await assert.rejects(
      KvBackend.open({ kvPath: ":memory:" }, { maxChecksPerAtomic: 1 }),
      /maxChecksPerAtomic/,
    );
  });
});

Deno.test("KvBackend takes every id of up to 1024 UTF-8 bytes under any prefix up to its bound: long keys are hashed, and reclaimed whole", async () => {
  await using store = await tempStore();
  // The longest prefixes: 369 NULs, or 738 bytes without NUL (MAX_PREFIX_PART_BYTES).
  for (const prefix of ["\0".repeat(369), "p".repeat(737) + ":"]) {
    await using backend = await KvBackend.open({
      kvPath: store.path,
      prefix,
      ttlMs: 60_000,
    });
    const nuls = "\0".repeat(1024); // 1024 UTF-8 bytes, 2048 as a key part
    const ids = [
      nuls,
      "\0".repeat(600) + "x",
      "é".repeat(512),
      "x".repeat(1024),
    ];
    const appendId = "\0".repeat(128); // the longest append id's key part
    for (const [i, id] of ids.entries()) {
      assert.equal(await backend.bufferAppend(id, new Uint8Array([i])), 0);
      assert.equal(
        await backend.bufferAppend(id, new Uint8Array(70_000).fill(i), {
          appendId,
        }),
        1,
      );
      assert.equal(
        await backend.bufferAppend(id, new Uint8Array([9]), { appendId }),
        1,
      );
      await backend.registrySet(id, id);
    }
    assert.deepEqual(
      (await backend.bufferListThreads()).sort(),
      ids.toSorted(),
    );
    for (const [i, id] of ids.entries()) {
      const slots = await backend.bufferGetThread(id);
      assert.equal(slots.length, 2);
      assert.deepEqual(slots[0], new Uint8Array([i]));
      assert.equal(slots[1]!.byteLength, 70_000);
      assert.equal(await backend.registryGetChain(id), id);
    }
    assert.equal(
      (await backend.registryListAll()).size,
      ids.length,
    );
    // Stored under a hash: the key holds 32 bytes, the head the id.
    const raw = await rawEntries(store.path, prefix);
    const head = raw.find((e) =>
      e.key[1] === "head" && (e.value as { i?: string }).i === nuls
    );
    assert.ok(head?.key[2] instanceof Uint8Array);
    assert.equal(await backend.bufferDeleteThread(nuls), true);
    assert.equal(await backend.registryDelete(nuls), true);
    assert.equal(await backend.bufferThreadExists(nuls), false);
    await backend.bufferClear();
    await backend.registryClear();
    await assertOnlyCounterLeft(store.path, prefix);
  }
  // An expired thread with a hashed key is swept away whole.
  await using short = await KvBackend.open({
    kvPath: store.path,
    prefix: "short:",
    ttlMs: 300,
  });
  await short.bufferAppend("\0".repeat(1024), new Uint8Array(70_000), {
    appendId: "a",
  });
  await short.registrySet("\0".repeat(1024), "\0".repeat(1000));
  // The expiry index counts whole seconds: its entries are due once the
  // second their expiry falls in has passed (up to 1 s after it); and a
  // backend's routine sweep runs at most once a second.
  const expiry = Date.now() + 300;
  await sleep(
    Math.max(1_100, (Math.floor(expiry / 1_000) + 1) * 1_000 - Date.now() + 50),
  );
  await short.stats(); // the sweep of this call reclaims it
  await assertOnlyCounterLeft(store.path, "short:");
  await assert.rejects(
    KvBackend.open({ kvPath: store.path, prefix: "p".repeat(739) }),
    (error: unknown) =>
      error instanceof RangeError && /prefix/.test(error.message),
  );
});

// ------------------------------------------------- issue 10: KV correctness

/**
 * A Deno.Kv whose atomic commits are handed to `hook` (which calls `commit`
 * itself, or not): how the tests make commits slow, or lose their answers,
 * as on KV Connect.
 */
function interceptCommits(
  kv: Deno.Kv,
  hook: (
    commit: () => Promise<Deno.KvCommitResult | Deno.KvCommitError>,
    checks: number,
    mutations: number,
  ) => Promise<Deno.KvCommitResult | Deno.KvCommitError>,
): Deno.Kv {
  return new Proxy(kv, {
    get(target, property) {
      if (property === "atomic") {
        return () => {
          const op = target.atomic();
          let checks = 0;
          let mutations = 0;
          const proxy: Deno.AtomicOperation = new Proxy(op, {
            get(inner, name) {
              const value = Reflect.get(inner, name, inner);
              if (typeof value !== "function") return value;
              if (name === "commit") {
                return () => hook(() => op.commit(), checks, mutations);
              }
              return (...args: unknown[]) => {
                if (name === "check") checks += args.length;
                if (name === "set" || name === "delete") mutations++;
                const result = value.apply(inner, args);
                return result === inner ? proxy : result;
              };
            },
          });
          return proxy;
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test("KvBackend: a thread once seen gone stays gone", async (t) => {
  await t.step(
    "appends planned just before the expiry whose commit lands after a reader saw the thread gone start it anew at 0, old slots never back",
    async () => {
      await using store = await tempStore();
      const prefix = "gone:";
      const ttlMs = 400;
      using kv = await Deno.openKv(store.path);
      // The writer's commits take 30 ms, as a KV Connect round trip would.
      await using writer = await KvBackend.open(
        {
          kv: interceptCommits(kv, async (commit) => {
            await sleep(30);
            return await commit();
          }),
          prefix,
          ttlMs,
        },
        { maxChecksPerAtomic: 100 },
      );
      await using reader = await KvBackend.open({
        kvPath: store.path,
        prefix,
        ttlMs,
      });
      // Trials 0-2 see the thread gone through bufferThreadLen(), 3-4
      // through a listing (the thread is missing from it).
      for (const [trial, before] of [10, 5, 15, 10, 5].entries()) {
        const threadId = `t${trial}`;
        await writer.bufferAppend(threadId, new Uint8Array([0xaa]));
        assert.equal(await reader.bufferThreadLen(threadId), 1);
        const head = await kv.get<{ e: number }>([prefix, "head", threadId]);
        const expiresAt = head.value!.e;
        await sleep(expiresAt - before - Date.now());
        const appends = Array.from(
          { length: 400 },
          (_, i) => writer.bufferAppend(threadId, tagged(1, i, 16)),
        );
        await sleep(Math.max(0, expiresAt + 2 - Date.now()));
        const seen = trial < 3
          ? await reader.bufferThreadLen(threadId)
          : (await reader.bufferListThreads()).includes(threadId)
          ? -1
          : 0;
        const indexes = (await Promise.all(appends)).toSorted((a, b) => a - b);
        const slots = await reader.bufferGetThread(threadId);
        if (seen === 0) {
          assert.deepEqual(
            indexes,
            [...Array(400).keys()],
            `trial ${trial}: the reader saw the thread gone, yet the appends continued it`,
          );
          assert.ok(
            slots.every((slot) => slot[0] !== 0xaa),
            `trial ${trial}: an old slot came back`,
          );
        } else if (seen > 0) {
          assert.deepEqual(indexes, [...Array(400).keys()].map((i) => i + 1));
        }
        assert.equal(slots.length, Math.max(...indexes) + 1);
      }
    },
  );
});

Deno.test("KvBackend: errors name their own thread and options the store cannot honour", async (t) => {
  await t.step(
    "a group commit that fails gives each caller an error naming its own thread, saying it was not applied",
    async () => {
      using kv = await Deno.openKv(":memory:");
      let fail = false;
      await using backend = await KvBackend.open({
        kv: interceptCommits(kv, (commit) => {
          if (fail) {
            return Promise.reject(
              new TypeError("Value too large (max 65536 bytes)"),
            );
          }
          return commit();
        }),
      }, { maxChecksPerAtomic: 100, idempotentRetries: false });
      fail = true;
      const settled = await Promise.allSettled(
        Array.from(
          { length: 30 },
          (_, i) => backend.bufferAppend(`thread-${i}`, new Uint8Array([i])),
        ),
      );
      settled.forEach((outcome, i) => {
        assert.equal(outcome.status, "rejected");
        const error = (outcome as PromiseRejectedResult).reason;
        assert.ok(error instanceof BackendError);
        assert.match(
          error.message,
          new RegExp(`^Cannot append to thread "thread-${i}": Value too large`),
        );
        assert.match(error.message, /it was not applied$/);
      });
      fail = false;
      assert.equal((await backend.stats()).threads, 0);
    },
  );

  await t.step(
    "maxChecksPerAtomic above the store's limit is a RangeError at open naming the option",
    async () => {
      await using store = await tempStore();
      await assert.rejects(
        KvBackend.open({ kvPath: store.path }, { maxChecksPerAtomic: 101 }),
        (error: unknown) =>
          error instanceof RangeError &&
          /maxChecksPerAtomic/.test(error.message),
      );
      // A remote store (here one that allows 10 checks, as KV Connect does).
      using kv = await Deno.openKv(store.path);
      const remote = interceptCommits(
        kv,
        (commit, checks) =>
          checks > 10
            ? Promise.reject(new TypeError("Too many checks (max 10)"))
            : commit(),
      );
      await assert.rejects(
        KvBackend.open({ kv: remote }, { maxChecksPerAtomic: 50 }),
        (error: unknown) =>
          error instanceof RangeError &&
          /maxChecksPerAtomic/.test(error.message),
      );
      await using ok = await KvBackend.open({ kv: remote }, {
        maxChecksPerAtomic: 10,
      });
      assert.equal(await ok.bufferAppend("t", new Uint8Array([1])), 0);
    },
  );
});

Deno.test("KvBackend registryRefresh() is one checked commit", async (t) => {
  await t.step(
    "it refreshes both directions and moves the pair's expiry entry; an unmapped uuid writes nothing",
    async () => {
      await using store = await tempStore();
      const prefix = "refresh:";
      await using backend = await KvBackend.open({
        kvPath: store.path,
        prefix,
        ttlMs: 60_000,
      });
      await backend.registrySet("c", "u");
      const before = await rawEntries(store.path, prefix);
      assert.equal(await backend.registryRefresh("nobody"), false);
      assert.deepEqual(await rawEntries(store.path, prefix), before);
      await sleep(1_000); // the expiry entry moves to a later second
      assert.equal(await backend.registryRefresh("u"), true);
      const after = await rawEntries(store.path, prefix);
      const records = after.filter((e) =>
        e.key[1] === "chain" || e.key[1] === "uuid"
      );
      assert.equal(records.length, 2);
      assert.equal(new Set(records.map((e) => e.versionstamp)).size, 1);
      const [chain] = records as Deno.KvEntry<{ e: number }>[];
      const expiries = await indexEntries(store.path, prefix);
      assert.deepEqual(expiries.map((e) => e.key), [
        [true, "exp", Math.floor(chain!.value.e / 1000), prefix, "r", "c"],
      ]);
      assert.ok(
        chain!.value.e >
          (before.find((e) => e.key[1] === "chain")!.value as { e: number }).e +
            900,
      );
    },
  );

  await t.step(
    "racing registryDelete() or registrySet(), it never brings back a pair that was unmapped",
    async () => {
      await using store = await tempStore();
      await using a = await KvBackend.open({ kvPath: store.path });
      await using b = await KvBackend.open({ kvPath: store.path });
      for (let round = 0; round < 40; round++) {
        const uuid = `u${round}`;
        await a.registrySet(`c${round}`, uuid);
        const [refreshed, deleted] = await Promise.all([
          a.registryRefresh(uuid),
          b.registryDelete(uuid),
          a.registryRefresh(uuid),
        ]);
        assert.equal(deleted, true);
        assert.equal(typeof refreshed, "boolean");
        assert.equal(await a.registryGetChain(uuid), null, `round ${round}`);
        assert.equal(await a.registryGetUuid(`c${round}`), null);
        // Moved to another uuid meanwhile: the old uuid stays unmapped.
        await a.registrySet(`d${round}`, `v${round}`);
        await Promise.all([
          a.registryRefresh(`v${round}`),
          b.registrySet(`d${round}`, `w${round}`),
        ]);
        assert.equal(await a.registryGetChain(`v${round}`), null);
        assert.equal(await a.registryGetUuid(`d${round}`), `w${round}`);
      }
    },
  );
});

Deno.test("KvBackend reads: each slot owns its ArrayBuffer, chunked slots included", async () => {
  await using backend = await KvBackend.open({ kvPath: ":memory:" });
  const slots = [
    new Uint8Array([1]),
    new Uint8Array(200_000).fill(2),
    new Uint8Array(70_000).fill(3),
  ];
  for (const slot of slots) await backend.bufferAppend("t", slot);
  const reads = [
    await backend.bufferGetThread("t"),
    await backend.bufferGetRange("t", 1, 3),
    [await backend.bufferGetSlot("t", 1), await backend.bufferGetSlot("t", 2)],
  ];
  for (const read of reads) {
    const buffers = new Set<ArrayBufferLike>();
    for (const slot of read) {
      assert.ok(slot !== null);
      assert.equal(slot.byteOffset, 0);
      assert.equal(slot.buffer.byteLength, slot.byteLength);
      buffers.add(slot.buffer);
    }
    assert.equal(buffers.size, read.length);
  }
  // Transferring one leaves the others whole.
  const [first, second] = await backend.bufferGetRange("t", 1, 3);
  structuredClone(first, { transfer: [first!.buffer as ArrayBuffer] });
  assert.equal(second!.byteLength, 70_000);
});

Deno.test("KvBackend retries never apply a write twice (issue 11)", async (t) => {
  await t.step(
    "appends whose commit fails or loses its answer are retried: every caller gets its index, each slot is stored once",
    async () => {
      using kv = await Deno.openKv(":memory:");
      let commits = 0;
      const lossy = interceptCommits(kv, async (commit) => {
        const roll = commits++ % 5;
        if (roll === 1) {
          throw new Error("error sending request: connection reset");
        }
        const result = await commit();
        if (roll === 3) {
          // Applied, but the answer never arrives.
          throw new Error("connection closed before message completed");
        }
        return result;
      });
      await using backend = await KvBackend.open({ kv: lossy }, {
        maxChecksPerAtomic: 100,
      });
      const appended = new Map<string, { index: number; slot: Uint8Array }[]>();
      const append = async (
        threadId: string,
        slot: Uint8Array,
        appendId?: string,
      ) => {
        const index = await backend.bufferAppend(
          threadId,
          slot,
          appendId === undefined ? undefined : { appendId },
        );
        const list = appended.get(threadId) ?? [];
        if (!list.some((x) => x.index === index)) {
          list.push({ index, slot });
        }
        appended.set(threadId, list);
        return index;
      };
      const indexes = await Promise.all(
        Array.from({ length: 300 }, (_, i) =>
          append(
            `t${i % 7}`,
            i === 150 ? new Uint8Array(100_000).fill(7) : tagged(1, i, 16),
            i % 3 === 0 ? `id-${i}` : undefined,
          )),
      );
      for (let i = 0; i < 40; i++) {
        await append("one", tagged(2, i, 16), i % 2 ? `id-${i}` : undefined);
      }
      // Repeats of applied ids return their index and store nothing.
      for (let i = 0; i < 300; i += 3) {
        const index = await backend.bufferAppend(
          `t${i % 7}`,
          new Uint8Array(),
          {
            appendId: `id-${i}`,
          },
        );
        assert.equal(index, indexes[i]);
      }
      for (const [threadId, list] of appended) {
        const stored = await backend.bufferGetThread(threadId);
        assert.equal(stored.length, list.length, `length of ${threadId}`);
        for (const { index, slot } of list) {
          assert.deepEqual(stored[index], slot, `${threadId}[${index}]`);
        }
      }
      assert.ok(commits > 20);
    },
  );

  await t.step(
    "a registry write whose answer is lost returns what was applied, even if another writer changed the pair before the retry",
    async () => {
      using kv = await Deno.openKv(":memory:");
      let lose = false;
      let between: (() => Promise<unknown>) | undefined;
      const lossy = interceptCommits(kv, async (commit) => {
        const result = await commit();
        if (lose) {
          lose = false;
          await between?.();
          throw new Error("connection reset by peer");
        }
        return result;
      });
      await using a = await KvBackend.open({ kv: lossy });
      await using b = await KvBackend.open({ kv });
      lose = true;
      between = () => b.registrySet("c", "u-other");
      assert.equal(await a.registrySetIfAbsent("c", "u-mine"), "u-mine");
      assert.equal(await a.registryGetUuid("c"), "u-other");
      between = undefined;
      await a.registrySet("d", "u-d");
      lose = true;
      assert.equal(await a.registryDelete("u-d"), true);
      assert.equal(await a.registryGetUuid("d"), null);
      lose = true;
      await a.registrySet("e", "u-e");
      assert.equal(await b.registryGetChain("u-e"), "e");
      lose = true;
      assert.equal(await a.registryRefresh("u-e"), true);
      lose = true;
      assert.equal(await a.registrySetIfAbsent("e", "u-x"), "u-e");
      assert.equal((await b.registryListAll()).size, 2);
    },
  );

  await t.step(
    "a locked database is retried until retryTimeoutMs, then the append rejects saying it was not applied",
    async () => {
      using kv = await Deno.openKv(":memory:");
      let locked = 3;
      const busy = interceptCommits(
        kv,
        (commit) =>
          locked-- > 0
            ? Promise.reject(new TypeError("database is locked"))
            : commit(),
      );
      await using backend = await KvBackend.open(
        { kv: busy, retryTimeoutMs: 500 },
        { maxChecksPerAtomic: 100, idempotentRetries: false },
      );
      assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
      locked = Infinity;
      const start = Date.now();
      await assert.rejects(
        backend.bufferAppend("t", new Uint8Array([2])),
        (error: unknown) =>
          error instanceof BackendError &&
          /"t": the commit kept failing for retryTimeoutMs \(500 ms\): database is locked; it was not applied$/
            .test(error.message),
      );
      assert.ok(Date.now() - start >= 450);
      locked = 0;
      assert.deepEqual(await backend.bufferGetThread("t"), [
        new Uint8Array([1]),
      ]);
    },
  );
});

// ------------------------------ issue 10 defect 6, issue 13: reclaiming

Deno.test("KvBackend reclaims expired data of every prefix of a store, one sweeper at a time", async (t) => {
  /** Creates `count` threads of one slot each (one with a large slot, one with an append id) and `pairs` pairs. */
  const fill = async (
    path: string,
    prefix: string,
    count: number,
    pairs = 0,
  ) => {
    await using writer = await KvBackend.open({
      kvPath: path,
      prefix,
      ttlMs: 1_000,
      maxThreads: count + 10,
    });
    await writer.bufferAppend("large", new Uint8Array(200_000).fill(1));
    await writer.bufferAppend("ids", new Uint8Array([1]), { appendId: "a1" });
    for (let i = 0; i < count; i += 500) {
      await Promise.all(
        Array.from(
          { length: Math.min(500, count - i) },
          (_, j) =>
            writer.bufferAppend(`t${i + j}`, new Uint8Array([j & 0xff])),
        ),
      );
    }
    for (let i = 0; i < pairs; i++) {
      await writer.registrySet(`chain.${i}`, `uuid-${i}`);
    }
    return Date.now();
  };
  /**
   * What is left of a tenant: its keys and its entries in the expiry index,
   * with numbers and small values (a failure shows no 60 KiB chunk).
   */
  const leftOf = async (path: string, prefix: string) =>
    [
      ...await rawEntries(path, prefix),
      ...await indexEntries(path, prefix),
    ].map(({ key, value }) => [
      key,
      value instanceof Uint8Array ? `${value.byteLength} bytes` : value,
    ]);
  const dueCount = async (path: string, prefix: string) =>
    (await indexEntries(path, prefix)).length;

  await t.step(
    "an abandoned prefix's expired threads, slots, large slots, append ids and pairs are reclaimed by a backend of another prefix",
    async () => {
      await using store = await tempStore();
      const written = await fill(store.path, "abandoned:", 20, 5);
      await sleep(Math.max(0, written + 2_100 - Date.now()));
      await using other = await KvBackend.open({
        kvPath: store.path,
        prefix: "busy:",
      });
      assert.equal(await other.bufferThreadLen("x"), 0);
      assert.deepEqual(await leftOf(store.path, "abandoned:"), [
        [["abandoned:", "meta", "threads"], 0],
      ]);
    },
  );

  await t.step(
    "a call does at most 200 index entries of sweep work, only the backend holding the lease sweeps, and calls go on until nothing is due",
    async () => {
      await using store = await tempStore();
      const written = await fill(store.path, "old:", 1_000);
      await sleep(Math.max(0, written + 2_100 - Date.now()));
      const backends = await Promise.all(
        ["a:", "b:", "c:"].map((prefix) =>
          KvBackend.open({ kvPath: store.path, prefix })
        ),
      );
      try {
        const before = await dueCount(store.path, "old:");
        assert.equal(before, 1_002);
        // One call each: the first takes the lease and sweeps 200 entries
        // (each retired thread leaves a marker that the same run clears);
        // the others see the lease and do nothing.
        for (const backend of backends) await backend.bufferThreadLen("x");
        assert.equal(await dueCount(store.path, "old:"), before - 200);
        assert.equal((await backends[1]!.sweep()).swept, false);
        assert.equal(await dueCount(store.path, "old:"), before - 200);
        // The holder's next calls go on at once while a backlog is left.
        for (let call = 0; call < 5; call++) {
          await backends[0]!.bufferThreadLen("x");
        }
        assert.deepEqual(await leftOf(store.path, "old:"), [
          [["old:", "meta", "threads"], 0],
        ]);
        // Closing gives the lease up: another backend sweeps at once.
        await backends[0]!.close();
        const result = await backends[2]!.sweep();
        assert.equal(result.swept, true);
      } finally {
        for (const backend of backends) await backend.close();
      }
    },
  );

  await t.step(
    "at least 2 000 expired threads are reclaimed a second, through calls and through sweep()",
    async () => {
      await using store = await tempStore();
      await using other = await tempStore();
      const count = 4_000;
      await fill(store.path, "many:", count);
      const written = await fill(other.path, "more:", count);
      await sleep(Math.max(0, written + 2_100 - Date.now()));
      // Continuous use: calls of a backend of another prefix.
      await using user = await KvBackend.open({
        kvPath: store.path,
        prefix: "user:",
      });
      using probe = await Deno.openKv(store.path);
      const anyDue = async () =>
        (await Array.fromAsync(
          probe.list({ prefix: [true, "exp"] }, { limit: 1 }),
        )).length > 0;
      let start = performance.now();
      while (await anyDue()) {
        await user.bufferThreadLen("x");
        if (performance.now() - start > 10_000) break;
      }
      const byCalls = count / ((performance.now() - start) / 1_000);
      // sweep(), as Deno.cron would run it.
      await user.close();
      await using cron = await KvBackend.open(
        { kvPath: other.path, prefix: "cron:" },
        { sweepOnUse: false },
      );
      start = performance.now();
      const result = await cron.sweep();
      const bySweep = count / ((performance.now() - start) / 1_000);
      console.log(
        `reclaimed ${Math.round(byCalls)} threads/s through calls, ${
          Math.round(bySweep)
        } threads/s through sweep()`,
      );
      assert.equal(result.threads, count + 2);
      assert.equal(result.more, false);
      assert.deepEqual(await leftOf(store.path, "many:"), [
        [["many:", "meta", "threads"], 0],
      ]);
      assert.deepEqual(await leftOf(other.path, "more:"), [
        [["more:", "meta", "threads"], 0],
      ]);
      assert.ok(byCalls >= 2_000, `${byCalls} threads/s through calls`);
      assert.ok(bySweep >= 2_000, `${bySweep} threads/s through sweep()`);
    },
  );
});

Deno.test("KvBackend options of listing, sweeping and watching", async (t) => {
  await t.step(
    "consistency 'eventual' reads listings and stats (the same data on a local file); a bad value is a RangeError naming it",
    async () => {
      await using store = await tempStore();
      await using strong = await KvBackend.open({
        kvPath: store.path,
        prefix: "c:",
      });
      await using eventual = await KvBackend.open(
        { kvPath: store.path, prefix: "c:" },
        { consistency: "eventual" },
      );
      await strong.bufferAppend("t1", new Uint8Array([1]));
      await strong.registrySet("a.b", "u1");
      assert.deepEqual(await eventual.bufferListThreads(), ["t1"]);
      assert.deepEqual(
        { ...await eventual.stats(), ttlMs: 0 },
        { kind: "kv", threads: 1, slots: 1, registryEntries: 1, ttlMs: 0 },
      );
      await assert.rejects(
        KvBackend.open({ kvPath: store.path }, {
          consistency: "weak" as "strong",
        }),
        (error: unknown) =>
          error instanceof RangeError && /consistency/.test(error.message),
      );
    },
  );

  await t.step(
    "sweepOnUse false: calls reclaim nothing, sweep() does; watchPolling and sweepOnUse that are not booleans are TypeErrors naming them",
    async () => {
      await using store = await tempStore();
      await using backend = await KvBackend.open(
        { kvPath: store.path, prefix: "s:", ttlMs: 300 },
        { sweepOnUse: false },
      );
      await backend.bufferAppend("t1", new Uint8Array([1]));
      await sleep(1_500);
      assert.equal(await backend.bufferThreadExists("t1"), false);
      assert.equal((await indexEntries(store.path, "s:")).length, 1);
      const result = await backend.sweep();
      assert.deepEqual(result, {
        swept: true,
        entries: 1,
        threads: 1,
        slots: 1,
        more: false,
      });
      assert.deepEqual(await indexEntries(store.path, "s:"), []);
      await assert.rejects(backend.sweep({ maxEntries: -1 }), /maxEntries/);
      for (const name of ["watchPolling", "sweepOnUse"]) {
        await assert.rejects(
          KvBackend.open({ kvPath: store.path }, { [name]: "yes" }),
          (error: unknown) =>
            error instanceof TypeError && error.message.includes(name),
        );
      }
    },
  );
});
