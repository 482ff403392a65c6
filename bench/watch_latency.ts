/**
 * Watch latency: from an append's acknowledgement in one process to the
 * slot's delivery to a watcher in another process, over 2 000 appends at a
 * steady 200/s (one thread, 200-byte slots), on Redis and on a KV file; on
 * memory, appender and watcher share the isolate. Beside each, the polling
 * baseline a user would write without `bufferWatch` (`bufferGetRange` from
 * the next index every 10 ms) and what it costs in reads/s.
 *
 * ```sh
 * deno run -A bench/watch_latency.ts                 # redis, kv, memory
 * deno run -A bench/watch_latency.ts redis --count 500
 * ```
 *
 * Times are `performance.timeOrigin + performance.now()` in both processes
 * (one machine, one clock). A slot delivered before its appender saw the
 * acknowledgement (the watcher can hear of it first) counts as 0 ms; the
 * table says how many were. Prints one markdown row per backend and source.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { InMemoryBackend } from "../backends/memory.ts";
import type { SharedBackend } from "../protocol.ts";
import { startRedisServer } from "../tests/_redis_server.ts";

/** Where the appender appends (a subprocess: `--append '<json>'`). */
type Store =
  | { kind: "redis"; url: string; prefix: string }
  | { kind: "kv"; path: string; prefix: string };

interface AppendJob {
  store: Store;
  threadId: string;
  count: number;
  rate: number;
}

const SLOT = new Uint8Array(200).map((_, i) => i & 0xff);
const POLL_MS = 10;

/** Absolute ms, comparable across processes of one machine. */
function now(): number {
  return performance.timeOrigin + performance.now();
}

async function openStore(store: Store): Promise<SharedBackend> {
  if (store.kind === "redis") {
    const { RedisBackend } = await import("../backends/redis.ts");
    return await RedisBackend.open({
      redisUrl: store.url,
      prefix: store.prefix,
      maxSlotsPerThread: 1_000_000,
    });
  }
  const { KvBackend } = await import("../backends/kv.ts");
  return await KvBackend.open({
    kvPath: store.path,
    prefix: store.prefix,
    maxSlotsPerThread: 1_000_000,
  });
}

/**
 * Appends `count` slots at a steady `rate` (slot k is sent at start + k /
 * rate, whether or not the previous one was acknowledged); returns the
 * acknowledgement time of each index.
 */
async function appendSteadily(
  backend: SharedBackend,
  job: Omit<AppendJob, "store">,
): Promise<number[]> {
  const acked: number[] = [];
  const pending: Promise<void>[] = [];
  const start = performance.now();
  for (let k = 0; k < job.count; k++) {
    const wait = start + (k * 1000) / job.rate - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    pending.push(
      backend.bufferAppend(job.threadId, SLOT).then((index) => {
        acked[index] = now();
      }),
    );
  }
  await Promise.all(pending);
  return acked;
}

/** What a watcher saw: when each index arrived, and how many reads it made. */
interface Delivery {
  delivered: number[];
  reads: number;
  seconds: number;
}

/** Watches `threadId` from 0 until `count` slots arrived. */
async function watchUntil(
  backend: SharedBackend,
  threadId: string,
  count: number,
): Promise<Delivery> {
  const delivered: number[] = [];
  const started = performance.now();
  for await (
    const { index } of backend.bufferWatch(threadId, { fromIndex: 0 })
  ) {
    delivered[index] = now();
    if (index === count - 1) break;
  }
  return {
    delivered,
    reads: NaN,
    seconds: (performance.now() - started) / 1000,
  };
}

/** The baseline: reads from the next index every POLL_MS until `count` slots arrived. */
async function pollUntil(
  backend: SharedBackend,
  threadId: string,
  count: number,
): Promise<Delivery> {
  const delivered: number[] = [];
  const started = performance.now();
  let reads = 0;
  let next = 0;
  while (next < count) {
    const slots = await backend.bufferGetRange(threadId, next);
    reads++;
    const at = now();
    for (let i = 0; i < slots.length; i++) delivered[next++] = at;
    if (next < count) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }
  return { delivered, reads, seconds: (performance.now() - started) / 1000 };
}

/** Runs the appender in a subprocess; resolves with its acknowledgement times. */
async function appendInProcess(job: AppendJob): Promise<number[]> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      new URL(import.meta.url).pathname,
      "--append",
      JSON.stringify(job),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!output.success) throw new Error("the appender process failed");
  return JSON.parse(new TextDecoder().decode(output.stdout));
}

interface Row {
  backend: string;
  source: string;
  latencies: number[];
  early: number;
  readsPerSecond: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

function row(
  backend: string,
  source: string,
  acked: number[],
  seen: Delivery,
): Row {
  const raw = acked.map((at, index) => seen.delivered[index]! - at);
  return {
    backend,
    source,
    latencies: raw.map((ms) => Math.max(0, ms)).sort((a, b) => a - b),
    early: raw.filter((ms) => ms < 0).length,
    readsPerSecond: seen.reads / seen.seconds,
  };
}

function print(row: Row): void {
  const ms = (x: number) => x.toFixed(x < 1 ? 3 : 1);
  const { latencies } = row;
  console.log(
    `| ${row.backend} | ${row.source} | ${ms(percentile(latencies, 0.5))} | ${
      ms(percentile(latencies, 0.99))
    } | ${ms(latencies.at(-1)!)} | ${row.early} | ${
      Number.isNaN(row.readsPerSecond) ? "-" : row.readsPerSecond.toFixed(0)
    } |`,
  );
}

/** One backend across processes: watch, then the polling baseline. */
async function acrossProcesses(
  name: string,
  store: Store,
  count: number,
  rate: number,
): Promise<void> {
  await using watcher = await openStore(store);
  for (const source of ["bufferWatch", `poll every ${POLL_MS} ms`]) {
    const threadId = `latency-${source}`;
    const seen = (source === "bufferWatch" ? watchUntil : pollUntil)(
      watcher,
      threadId,
      count,
    );
    // The watch is in force before the first append (it reads from 0 anyway).
    await new Promise((resolve) => setTimeout(resolve, 300));
    const acked = await appendInProcess({ store, threadId, count, rate });
    print(row(name, source, acked, await seen));
  }
}

/** Memory: appender and watcher in one isolate. */
async function inIsolate(count: number, rate: number): Promise<void> {
  await using backend = new InMemoryBackend({ maxSlotsPerThread: 1_000_000 });
  for (const source of ["bufferWatch", `poll every ${POLL_MS} ms`]) {
    const threadId = `latency-${source}`;
    const seen = (source === "bufferWatch" ? watchUntil : pollUntil)(
      backend,
      threadId,
      count,
    );
    const acked = await appendSteadily(backend, { threadId, count, rate });
    print(row("memory (one isolate)", source, acked, await seen));
  }
}

if (Deno.args[0] === "--append") {
  const job = JSON.parse(Deno.args[1]!) as AppendJob;
  await using backend = await openStore(job.store);
  console.log(JSON.stringify(await appendSteadily(backend, job)));
} else {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      count: { type: "string", default: "2000" },
      rate: { type: "string", default: "200" },
    },
  });
  const count = Number(values.count);
  const rate = Number(values.rate);
  const backends = positionals.length > 0
    ? positionals
    : ["redis", "kv", "memory"];
  console.log(
    `Latency from acknowledgement to delivery, ${count} appends at ${rate}/s (ms):\n`,
  );
  console.log(
    "| backend | source | p50 | p99 | max | delivered before the ack | reads/s |",
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const backend of backends) {
    if (backend === "redis") {
      await using server = await startRedisServer();
      await acrossProcesses(
        "redis (2 processes)",
        { kind: "redis", url: server.url, prefix: `bench-${Date.now()}:` },
        count,
        rate,
      );
    } else if (backend === "kv") {
      const dir = await Deno.makeTempDir({ prefix: "xp-watch-bench-" });
      try {
        await acrossProcesses(
          "kv (2 processes, one file)",
          { kind: "kv", path: `${dir}/store.db`, prefix: "bench" },
          count,
          rate,
        );
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    } else if (backend === "memory") {
      await inIsolate(count, rate);
    } else {
      throw new RangeError(
        `Unknown backend ${
          JSON.stringify(backend)
        }: expected redis, kv or memory`,
      );
    }
  }
}
