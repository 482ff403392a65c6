// The kv backend's one committer per process (backends/_kv_committer.ts):
// Workers of one process appending to one KV file through the committer they
// elect, the committer's Worker terminated mid-load, append ids across
// Workers, a clean hand-over, and a process that never closes its backend
// still exiting.

import assert from "node:assert/strict";
import { KvBackend } from "../backends/kv.ts";
import {
  type Answer,
  type ForwardedAppend,
  PairLink,
} from "../backends/_kv_pair.ts";
import { tagged } from "./_fixtures/kv_appender.ts";
import type {
  Ack,
  IsolateEvent,
  IsolateJob,
} from "./_fixtures/kv_isolate_worker.ts";

const FIXTURE = new URL("./_fixtures/kv_isolate_worker.ts", import.meta.url);
/** A guard against a hung Worker: the test fails loudly instead of hanging. */
const TIMEOUT_MS = 60_000;
/** The committer's lock names start so (backends/_kv_open.ts, commitGroup). */
const GROUP = "@xml-pipeline/shared-backend kv committer";

interface LockInfo {
  name?: string;
  clientId?: string;
}

function locks(): {
  query(): Promise<{ held?: LockInfo[]; pending?: LockInfo[] }>;
} {
  return (navigator as unknown as {
    locks: ReturnType<typeof locks>;
  }).locks;
}

/** The committer locks held and requested in this process now. */
async function committerLocks(): Promise<
  { held: LockInfo[]; pending: LockInfo[] }
> {
  const { held = [], pending = [] } = await locks().query();
  const ours = (lock: LockInfo) => lock.name?.startsWith(GROUP) ?? false;
  return { held: held.filter(ours), pending: pending.filter(ours) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A fresh KV file in a temp dir, removed at the end of the scope. */
async function tempStore(): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "kv_isolates_test_" });
  return {
    path: `${dir}/store.db`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** One Worker running the fixture, with what it acknowledged so far. */
class Writer {
  readonly job: IsolateJob;
  readonly worker: Worker;
  readonly acks: Ack[] = [];
  clientId: string | undefined;
  errors: string[] | undefined;
  terminated = false;
  readonly #ready = Promise.withResolvers<void>();
  readonly #done = Promise.withResolvers<void>();
  readonly #timer: ReturnType<typeof setTimeout>;

  constructor(job: IsolateJob) {
    this.job = job;
    this.worker = new Worker(FIXTURE, { type: "module" });
    this.#timer = setTimeout(() => {
      this.terminate();
      const error = new Error(`writer ${job.writer} hung`);
      this.#ready.reject(error);
      this.#done.reject(error);
    }, TIMEOUT_MS);
    this.worker.onmessage = (event: MessageEvent<IsolateEvent>) => {
      const data = event.data;
      if (data.k === "ready") {
        this.clientId = data.clientId;
        this.#ready.resolve();
      } else if (data.k === "acks") {
        this.acks.push(...data.acks);
      } else {
        this.errors = data.errors;
        this.#done.resolve();
      }
    };
    this.worker.onerror = (event) => {
      event.preventDefault();
      const error = new Error(`writer ${job.writer} failed: ${event.message}`);
      this.#ready.reject(error);
      this.#done.reject(error);
    };
    this.worker.postMessage(job);
  }

  ready(): Promise<void> {
    return this.#ready.promise;
  }

  go(): void {
    this.worker.postMessage("go");
  }

  stop(): void {
    this.worker.postMessage("stop");
  }

  async done(): Promise<void> {
    await this.#done.promise;
    this.terminate();
  }

  /** Ends the Worker at once (worker.terminate()): what it acknowledged stays in `acks`. */
  terminate(): void {
    clearTimeout(this.#timer);
    if (!this.terminated) this.worker.terminate();
    this.terminated = true;
    this.#done.resolve();
  }
}

/** Starts Writers and waits until each has opened its backend. */
async function start(jobs: IsolateJob[]): Promise<Writer[]> {
  const writers = jobs.map((job) => new Writer(job));
  try {
    await Promise.all(writers.map((w) => w.ready()));
  } catch (error) {
    for (const w of writers) w.terminate();
    throw error;
  }
  return writers;
}

/** The Writer whose isolate holds the committer lock now, if any. */
async function leaderOf(writers: Writer[]): Promise<Writer | undefined> {
  const { held } = await committerLocks();
  return writers.find((w) =>
    !w.terminated && held.some((lock) => lock.clientId === w.clientId)
  );
}

/**
 * Checks a store after Writers appended tagged slots: every thread dense;
 * every acknowledged append at its index with its own bytes; no (writer,
 * seq) stored twice. Returns the slots stored of each thread.
 */
async function verify(
  path: string,
  prefix: string,
  writers: Writer[],
): Promise<Map<string, Uint8Array[]>> {
  await using backend = await KvBackend.open({ kvPath: path, prefix }, {
    processCommitter: false,
  });
  const threads = new Map<string, Uint8Array[]>();
  for (const threadId of await backend.bufferListThreads()) {
    const slots = await backend.bufferGetThread(threadId);
    assert.equal(await backend.bufferThreadLen(threadId), slots.length);
    threads.set(threadId, slots);
    const seen = new Set<string>();
    for (const slot of slots) {
      const view = new DataView(slot.buffer, slot.byteOffset);
      const tag = `${view.getUint32(0)}/${view.getUint32(4)}`;
      assert.ok(!seen.has(tag), `${tag} stored twice in ${threadId}`);
      seen.add(tag);
    }
  }
  for (const w of writers) {
    for (const [threadId, seq, index, size] of w.acks) {
      const slot = threads.get(threadId)?.[index];
      assert.ok(slot !== undefined, `${w.job.writer}/${seq} lost`);
      assert.deepEqual(slot, tagged(w.job.writer, seq, size));
    }
  }
  return threads;
}

function job(
  path: string,
  writer: number,
  fields: Partial<IsolateJob>,
): IsolateJob {
  return {
    kvPath: path,
    config: { prefix: "iso:" },
    writer,
    threadIds: ["hot"],
    count: 200,
    size: 64,
    inflight: 16,
    ...fields,
  };
}

Deno.test("KvBackend: Workers of one process append through one committer", async (t) => {
  await t.step(
    "4 Workers over 1 hot thread and 20 others, large slots among them: one Worker holds the committer lock, the others wait for it; dense, each append once, its own bytes",
    async () => {
      await using store = await tempStore();
      const threadIds = [
        "hot",
        ...Array.from({ length: 20 }, (_, i) => `t${i}`),
      ];
      const writers = await start(
        [1, 2, 3, 4].map((writer) =>
          job(store.path, writer, {
            threadIds: writer === 1 ? ["hot"] : threadIds,
            count: 400,
            largeEvery: 97,
            largeSize: 150_000,
          })
        ),
      );
      try {
        for (const w of writers) w.go();
        // The Workers heard each other when they opened: one leads.
        let seen = { held: [] as LockInfo[], pending: [] as LockInfo[] };
        for (let i = 0; i < 100; i++) {
          seen = await committerLocks();
          if (seen.held.length === 1 && seen.pending.length >= 1) break;
          await sleep(10);
        }
        await Promise.all(writers.map((w) => w.done()));
        assert.equal(seen.held.length, 1, "one committer lock held");
        assert.ok(seen.pending.length >= 1, "others wait for it");
        for (const w of writers) assert.deepEqual(w.errors, []);
        const threads = await verify(store.path, "iso:", writers);
        const total = [...threads.values()].reduce((n, s) => n + s.length, 0);
        assert.equal(total, 1600);
        assert.equal(
          writers.reduce((n, w) => n + w.acks.length, 0),
          1600,
        );
        // Every Worker closed its backend: no lock is left.
        assert.deepEqual(await committerLocks(), { held: [], pending: [] });
      } finally {
        for (const w of writers) w.terminate();
      }
    },
  );

  await t.step(
    "the committer's Worker terminated mid-load, twice: nothing acknowledged is lost, nothing is stored twice, the other Workers see no error",
    async () => {
      await using store = await tempStore();
      const threadIds = [
        "hot",
        ...Array.from({ length: 9 }, (_, i) => `t${i}`),
      ];
      const writers = await start(
        [1, 2, 3, 4, 5].map((writer) =>
          job(store.path, writer, {
            threadIds,
            count: Infinity,
            size: 200,
            largeEvery: 101,
            largeSize: 70_000,
          })
        ),
      );
      const killed: Writer[] = [];
      try {
        for (const w of writers) w.go();
        for (let round = 0; round < 2; round++) {
          await sleep(300 + Math.random() * 200);
          const leader = await leaderOf(writers);
          assert.ok(leader !== undefined, "a Worker holds the committer lock");
          leader.terminate();
          killed.push(leader);
        }
        await sleep(400);
        const survivors = writers.filter((w) => !w.terminated);
        const before = survivors.map((w) => w.acks.length);
        await sleep(200);
        // The survivors still make progress under the new committer.
        survivors.forEach((w, i) =>
          assert.ok(w.acks.length > before[i]!, `writer ${w.job.writer} stuck`)
        );
        for (const w of survivors) w.stop();
        await Promise.all(survivors.map((w) => w.done()));
        for (const w of survivors) assert.deepEqual(w.errors, []);
        const threads = await verify(store.path, "iso:", writers);
        // Stored but not acknowledged: only appends of the killed Workers
        // (made just before they died), never one of a survivor.
        const acked = new Set(
          writers.flatMap((w) => w.acks.map((a) => `${w.job.writer}/${a[1]}`)),
        );
        const dead = new Set(killed.map((w) => w.job.writer));
        let unacknowledged = 0;
        for (const slots of threads.values()) {
          for (const slot of slots) {
            const view = new DataView(slot.buffer, slot.byteOffset);
            const writer = view.getUint32(0);
            if (acked.has(`${writer}/${view.getUint32(4)}`)) continue;
            unacknowledged++;
            assert.ok(
              dead.has(writer),
              `writer ${writer}'s append unacknowledged`,
            );
          }
        }
        assert.ok(unacknowledged <= 200, `${unacknowledged} unacknowledged`);
        assert.deepEqual(await committerLocks(), { held: [], pending: [] });
      } finally {
        for (const w of writers) w.terminate();
      }
    },
  );

  await t.step(
    "append ids across Workers: 3 Workers appending the same 60 ids to one thread store 60 slots, and each id's callers all get its index",
    async () => {
      await using store = await tempStore();
      const writers = await start(
        [1, 2, 3].map((writer) =>
          job(store.path, writer, {
            count: 60,
            inflight: 8,
            appendIdPrefix: "id-",
          })
        ),
      );
      try {
        for (const w of writers) w.go();
        await Promise.all(writers.map((w) => w.done()));
        for (const w of writers) assert.deepEqual(w.errors, []);
        const indexOf = new Map<number, number>();
        for (const w of writers) {
          for (const [, seq, index] of w.acks) {
            assert.equal(indexOf.get(seq) ?? index, index, `id-${seq}`);
            indexOf.set(seq, index);
          }
        }
        assert.equal(indexOf.size, 60);
        await using backend = await KvBackend.open({
          kvPath: store.path,
          prefix: "iso:",
        });
        const slots = await backend.bufferGetThread("hot");
        assert.equal(slots.length, 60);
        for (const [seq, index] of indexOf) {
          const view = new DataView(slots[index]!.buffer);
          assert.equal(view.getUint32(4), seq);
          const writer = view.getUint32(0);
          assert.deepEqual(slots[index], tagged(writer, seq, 64));
        }
      } finally {
        for (const w of writers) w.terminate();
      }
    },
  );

  await t.step(
    "limits through the committer: 3 Workers racing at maxSlotsPerThread 50 and maxThreads 15 get exactly 50 slots and 15 threads, the rest SlotLimitError and ThreadLimitError",
    async () => {
      await using store = await tempStore();
      const slotsRace = await start(
        [1, 2, 3].map((writer) =>
          job(store.path, writer, {
            config: { prefix: "slots:", maxSlotsPerThread: 50 },
            count: 30,
            inflight: 8,
          })
        ),
      );
      for (const w of slotsRace) w.go();
      await Promise.all(slotsRace.map((w) => w.done()));
      const ok = slotsRace.flatMap((w) => w.acks.map((a) => a[2]));
      assert.deepEqual(ok.toSorted((a, b) => a - b), [...Array(50).keys()]);
      const slotErrors = slotsRace.flatMap((w) => w.errors ?? []);
      assert.equal(slotErrors.length, 40);
      assert.ok(slotErrors.every((e) => e.startsWith("SlotLimitError: ")));
      await verify(store.path, "slots:", slotsRace);

      const threadsRace = await start(
        [1, 2, 3].map((writer) =>
          job(store.path, writer, {
            config: { prefix: "threads:", maxThreads: 15 },
            threadIds: Array.from({ length: 10 }, (_, i) => `w${writer}-${i}`),
            count: 10,
            inflight: 8,
          })
        ),
      );
      for (const w of threadsRace) w.go();
      await Promise.all(threadsRace.map((w) => w.done()));
      assert.equal(threadsRace.reduce((n, w) => n + w.acks.length, 0), 15);
      const threadErrors = threadsRace.flatMap((w) => w.errors ?? []);
      assert.equal(threadErrors.length, 15);
      assert.ok(threadErrors.every((e) => e.startsWith("ThreadLimitError: ")));
      const threads = await verify(store.path, "threads:", threadsRace);
      assert.equal(threads.size, 15);
    },
  );

  await t.step(
    "TTL through the committer: after a thread of 2 Workers expires, their next appends start it anew at index 0, and a sweep reclaims the old generation",
    async () => {
      await using store = await tempStore();
      const config = { prefix: "ttl:", ttlMs: 600 };
      const round = async (first: number) => {
        const writers = await start(
          [first, first + 1].map((writer) =>
            job(store.path, writer, { config, count: 50, inflight: 8 })
          ),
        );
        for (const w of writers) w.go();
        await Promise.all(writers.map((w) => w.done()));
        for (const w of writers) assert.deepEqual(w.errors, []);
        return writers;
      };
      await round(1);
      await sleep(1_200);
      const second = await round(3);
      const threads = await verify(store.path, "ttl:", second);
      assert.equal(threads.get("hot")?.length, 100);
      for (const slot of threads.get("hot")!) {
        assert.ok(new DataView(slot.buffer).getUint32(0) >= 3, "an old slot");
      }
      await using backend = await KvBackend.open(
        { kvPath: store.path, ...config },
        { sweepOnUse: false },
      );
      await backend.sweep();
      using kv = await Deno.openKv(store.path);
      const slots = await Array.fromAsync(
        kv.list({ prefix: ["ttl:", "slot"] }),
      );
      assert.equal(slots.length, 100);
    },
  );

  await t.step(
    "a committer that closes hands over: the other Workers' appends go on without an error, and no lock is left",
    async () => {
      await using store = await tempStore();
      const writers = await start(
        [1, 2, 3].map((writer) =>
          job(store.path, writer, {
            threadIds: ["hot", "cold"],
            count: writer === 1 ? Infinity : 1_500,
          })
        ),
      );
      try {
        for (const w of writers) w.go();
        // Writer 1 closes its backend (cleanly) mid-load, leader or not;
        // then whoever leads closes as the others finish.
        await sleep(300);
        writers[0]!.stop();
        await Promise.all(writers.map((w) => w.done()));
        for (const w of writers) assert.deepEqual(w.errors, []);
        await verify(store.path, "iso:", writers);
        assert.deepEqual(await committerLocks(), { held: [], pending: [] });
      } finally {
        for (const w of writers) w.terminate();
      }
    },
  );

  await t.step(
    "a backend of this isolate joins the group while Workers append, and leaves nothing behind when closed (sanitizers)",
    async () => {
      await using store = await tempStore();
      const writers = await start(
        [1, 2].map((writer) => job(store.path, writer, { count: 300 })),
      );
      try {
        await using backend = await KvBackend.open({
          kvPath: store.path,
          prefix: "iso:",
        });
        for (const w of writers) w.go();
        const mine = await Promise.all(
          Array.from(
            { length: 100 },
            (_, seq) => backend.bufferAppend("hot", tagged(9, seq, 64)),
          ),
        );
        await Promise.all(writers.map((w) => w.done()));
        for (const w of writers) assert.deepEqual(w.errors, []);
        const slots = await backend.bufferGetThread("hot");
        assert.equal(slots.length, 700);
        mine.forEach((index, seq) =>
          assert.deepEqual(slots[index], tagged(9, seq, 64))
        );
        await verify(store.path, "iso:", writers);
      } finally {
        for (const w of writers) w.terminate();
      }
      assert.deepEqual(await committerLocks(), { held: [], pending: [] });
    },
  );
});

Deno.test("KvBackend option processCommitter", async (t) => {
  await t.step(
    "false: each Worker commits on its own (no committer lock), dense and each once all the same; not a boolean is a TypeError naming it",
    async () => {
      await using store = await tempStore();
      const writers = await start(
        [1, 2, 3].map((writer) =>
          job(store.path, writer, {
            options: { processCommitter: false },
            threadIds: ["hot", "cold"],
            count: 150,
            inflight: 8,
          })
        ),
      );
      try {
        for (const w of writers) w.go();
        let held = 0;
        while (writers.some((w) => w.errors === undefined)) {
          held += (await committerLocks()).held.length;
          await sleep(5);
        }
        await Promise.all(writers.map((w) => w.done()));
        assert.equal(held, 0);
        for (const w of writers) assert.deepEqual(w.errors, []);
        const threads = await verify(store.path, "iso:", writers);
        assert.equal(
          [...threads.values()].reduce((n, slots) => n + slots.length, 0),
          450,
        );
      } finally {
        for (const w of writers) w.terminate();
      }
      await assert.rejects(
        KvBackend.open({ kvPath: store.path }, {
          processCommitter: "yes" as unknown as boolean,
        }),
        (error: unknown) =>
          error instanceof TypeError &&
          error.message.includes("processCommitter"),
      );
    },
  );
});

Deno.test("KvBackend: a process that never closes its backend on a file still exits, with a Worker of the same file gone before", async () => {
  await using store = await tempStore();
  const script = `
    import { KvBackend } from ${
    JSON.stringify(new URL("../backends/kv.ts", import.meta.url).href)
  };
    const kvPath = ${JSON.stringify(store.path)};
    const backend = await KvBackend.open({ kvPath });
    const code = \`
      import { KvBackend } from \${JSON.stringify(${
    JSON.stringify(new URL("../backends/kv.ts", import.meta.url).href)
  })};
      const backend = await KvBackend.open({ kvPath: \${JSON.stringify(kvPath)} });
      await Promise.all(Array.from({ length: 50 }, (_, i) => backend.bufferAppend("t", new Uint8Array([i]))));
      postMessage("done");
    \`;
    const worker = new Worker(URL.createObjectURL(new Blob([code], { type: "text/typescript" })), { type: "module" });
    await Promise.all(Array.from({ length: 50 }, (_, i) => backend.bufferAppend("t", new Uint8Array([i]))));
    await new Promise((resolve) => worker.onmessage = resolve);
    worker.terminate();
    await backend.bufferAppend("t", new Uint8Array([1]));
    console.log(await backend.bufferThreadLen("t"));
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--unstable-kv", "--ext=ts", script],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  const output = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(output.stdout).trim();
  assert.equal(
    output.success,
    true,
    `exit ${output.signal ?? output.code}: ${
      new TextDecoder().decode(output.stderr)
    }`,
  );
  assert.equal(text, "101");
});

Deno.test("KvBackend committer's pair link: appends and answers cross its rings in order, around their ends, and what does not fit is held back", () => {
  const member = new PairLink();
  const leader = new PairLink(member.memory);
  const ids = ["t", "thread-é", "\ud800lone", "x".repeat(1024), "\0\0"];
  const sent: ForwardedAppend[] = [];
  const taken: ForwardedAppend[] = [];
  let seq = 0;
  let full = 0;
  for (let round = 0; round < 60; round++) {
    const batch: ForwardedAppend[] = Array.from({ length: 50 }, () => {
      const n = seq++;
      return {
        seq: n,
        threadId: ids[n % ids.length]!,
        appendId: n % 3 === 0 ? `id-${n}` : undefined,
        value: n % 7 === 0
          ? { u: `u${n}`, n: 100_000 + n, c: 2, versionstamp: `v${n}` }
          : new Uint8Array(n % 4000).fill(n & 0xff),
      };
    });
    let left = batch;
    while (left.length > 0) {
      const written = member.send(left);
      sent.push(...left.slice(0, written));
      left = left.slice(written);
      if (left.length > 0) full++;
      // The leader takes now and then: the ring fills up and wraps.
      if (left.length > 0 || round % 3 === 0) taken.push(...leader.take());
    }
  }
  taken.push(...leader.take());
  assert.ok(full > 0, "the ring never filled up");
  assert.equal(taken.length, 3000);
  assert.deepEqual(taken, sent);

  const answers: Answer[] = [{ k: "welcome" }, { k: "log", log: 7 }];
  for (let n = 0; n < 6000; n++) {
    answers.push(
      n % 100 === 1
        ? { k: "backend", seq: n, message: `failed \ud800 ${n}` }
        : n % 100 === 2
        ? { k: "slots", seq: n, limit: 10 }
        : n % 100 === 3
        ? { k: "moved", seq: n }
        : { k: "ok", seq: n, index: n * 2 },
    );
  }
  for (const answer of answers) leader.answer(answer);
  assert.equal(leader.flush(), true, "6 000 answers do not fit in 64 KiB");
  const received = member.receive();
  assert.equal(member.takeBlocked(), true);
  assert.equal(member.takeBlocked(), false);
  while (leader.flush()) received.push(...member.receive());
  received.push(...member.receive());
  assert.deepEqual(received, answers);
  assert.equal(member.leaderLeft, false);
  leader.leaveAsLeader();
  assert.equal(member.leaderLeft, true);
  member.leaveAsMember();
  assert.equal(leader.memberLeft, true);
});
