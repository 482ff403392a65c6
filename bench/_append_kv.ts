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
