// Deno KV append benchmarks, registered by `import "./_append_kv.ts"` from
// append_bench.ts: `deno bench -A bench/append_bench.ts`. One group per shape
// (awaited one by one or 256 in flight, to 1 thread or 100 threads), each with
// the baselines a user would compare against, on a fresh temp KV file:
//
// - ceiling (`baseline: true`): the same 256 slots written by plain batched
//   `atomic().set()` commits of up to 500, no checks: what group commit can
//   approach at best;
// - raw `kv.set`: one write per slot, no index at all;
// - naive compare-and-set append: read the length, then
//   `atomic().check(length).set(slot).set(length + 1)`, retry on conflict.
//
// Each shape's group also has the backend with idempotency on:
// `idempotentRetries` (each commit rewrites the backend's producer record:
// what a remote KV does by default, so that a retry never applies twice),
// and that with an `appendId` on every call. The "kv: idempotency cost"
// groups put each against the same backend with both off as baseline
// (issue 11: at most 15% one by one, 10% with 256 in flight).
//
// Every iteration appends 256 200-byte slots; slots/s = 256 / time per iteration.
// (Bench functions are `async`: Deno.bench awaits only async functions.)

import { allInFlight, type Append, SHAPES, SLOT, SLOTS } from "./_shapes.ts";
import { KvBackend } from "../backends/kv.ts";

const dir = await Deno.makeTempDir({ prefix: "bench_kv_" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch {
    // already gone
  }
});
const kvPath = `${dir}/bench.db`;
const kv = await Deno.openKv(kvPath);
const backend = await KvBackend.open({
  kvPath,
  prefix: "bench:",
  ttlMs: 0,
  maxSlotsPerThread: Number.MAX_SAFE_INTEGER,
  maxThreads: 1_000_000,
});

let rawSeq = 0;
const rawSet: Append = (threadId, slot) =>
  kv.set(["raw", threadId, rawSeq++], slot);

const naiveCas: Append = async (threadId, slot) => {
  const lengthKey = ["naive", threadId, "len"];
  for (;;) {
    const length = await kv.get<number>(lengthKey);
    const index = length.value ?? 0;
    const result = await kv.atomic().check(length)
      .set(["naive", threadId, "slot", index], slot)
      .set(lengthKey, index + 1)
      .commit();
    if (result.ok) return index;
  }
};

const viaBackend: Append = (threadId, slot) =>
  backend.bufferAppend(threadId, slot);

// Idempotency on: an appendId on every call (unique per call), and a
// backend whose commits carry the producer record (idempotentRetries).
let appendIds = 0;
const withAppendId: Append = (threadId, slot) =>
  backend.bufferAppend(threadId, slot, { appendId: `a${appendIds++}` });
const idempotent = await KvBackend.open({
  kvPath,
  prefix: "bench-idem:",
  ttlMs: 0,
  maxSlotsPerThread: Number.MAX_SAFE_INTEGER,
  maxThreads: 1_000_000,
}, { idempotentRetries: true });
const viaIdempotent: Append = (threadId, slot) =>
  idempotent.bufferAppend(threadId, slot);
const viaIdempotentWithId: Append = (threadId, slot) =>
  idempotent.bufferAppend(threadId, slot, { appendId: `b${appendIds++}` });

let ceilingSeq = 0;
/** The group-commit ceiling: all slots of an iteration in commits of up to 500 sets. */
async function ceiling(threads: readonly string[]): Promise<void> {
  for (let first = 0; first < SLOTS; first += 500) {
    const op = kv.atomic();
    for (let i = first; i < Math.min(SLOTS, first + 500); i++) {
      op.set(["ceiling", threads[i % threads.length]!, ceilingSeq++], SLOT);
    }
    await op.commit();
  }
}

for (const [shape, threads, run] of SHAPES) {
  const group = `kv: append 256 slots, ${shape}`;
  // The naive append with 256 in flight collapses into retry storms: few runs.
  const slow = run === allInFlight ? { n: 3, warmup: 1 } : {};
  Deno.bench({
    name: "baseline: group-commit ceiling (atomic().set() x 500, no checks)",
    group,
    baseline: true,
    fn: async () => {
      await ceiling(threads);
    },
  });
  Deno.bench({
    name: "KvBackend.bufferAppend",
    group,
    fn: async () => {
      await run(viaBackend, threads);
    },
  });
  Deno.bench({
    name: "KvBackend.bufferAppend, idempotentRetries on",
    group,
    fn: async () => {
      await run(viaIdempotent, threads);
    },
  });
  Deno.bench({
    name: "KvBackend.bufferAppend, idempotentRetries and appendId on",
    group,
    fn: async () => {
      await run(viaIdempotentWithId, threads);
    },
  });
  Deno.bench({
    name: "raw kv.set (no index)",
    group,
    fn: async () => {
      await run(rawSet, threads);
    },
  });
  Deno.bench({
    name: "naive compare-and-set append",
    group,
    ...slow,
    fn: async () => {
      await run(naiveCas, threads);
    },
  });
}

for (const [shape, threads, run] of SHAPES) {
  const group = `kv: idempotency cost, ${shape}`;
  Deno.bench({
    name:
      "baseline: KvBackend.bufferAppend, no appendId, idempotentRetries off",
    group,
    baseline: true,
    fn: async () => {
      await run(viaBackend, threads);
    },
  });
  Deno.bench({
    name: "appendId on every call",
    group,
    fn: async () => {
      await run(withAppendId, threads);
    },
  });
  Deno.bench({
    name: "idempotentRetries (the producer record in every commit)",
    group,
    fn: async () => {
      await run(viaIdempotent, threads);
    },
  });
  Deno.bench({
    name: "both",
    group,
    fn: async () => {
      await run(viaIdempotentWithId, threads);
    },
  });
}
