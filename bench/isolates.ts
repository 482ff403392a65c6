/**
 * Multi-isolate append throughput: total appends/s with 1, 2 and 4 Workers
 * appending to one store at once, the package's backend beside the naive
 * approach a user would hand-write for that store, with ratios, and the
 * backend's p99 and max latency per append, and the CPU time per append (user +
 * system of this process, whose Workers do the appending; Linux only).
 * (`bench/isolates_serve.ts` is the same question over HTTP, under
 * `deno serve --parallel`.)
 *
 * ```sh
 * deno run -A bench/isolates.ts                      # kv: a fresh temp KV file
 * deno run -A bench/isolates.ts --backend kv --seconds 10 --inflight 8 --threads 100,1
 * deno run -A bench/isolates.ts --backend redis      # redis: its own redis-server
 * ```
 *
 * Options: `--backend kv|redis` (redis: `--redis-url`, default: a
 * redis-server started on a free port and stopped at the end), `--seconds`
 * per run (default 2),
 * `--inflight` appends in flight per worker (default 16), `--threads`: the
 * shapes, each a number of threads shared by all workers (default 1: every
 * worker appends to the same thread, the hardest case; `100,1` runs both),
 * `--workers` (default 1,2,4), `--rounds` (default 1: with more, the runs are
 * interleaved, round after round, and each row shows the median appends/s,
 * p99 and CPU and the largest max, so that a busy machine disturbs every row
 * alike), `--no-naive` (the backend only), `--kv-path` (default: a fresh temp
 * file, removed at the end).
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { BackendConfig } from "../mod.ts";
import type { IsolateJob, IsolateReport } from "./_isolates_worker.ts";
import { startRedisServer } from "../tests/_redis_server.ts";
import { processCpuMs } from "./_isolates_cpu.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    backend: { type: "string", default: "kv" },
    seconds: { type: "string", default: "2" },
    inflight: { type: "string", default: "16" },
    threads: { type: "string", default: "1" },
    workers: { type: "string", default: "1,2,4" },
    rounds: { type: "string", default: "1" },
    "no-naive": { type: "boolean", default: false },
    "kv-path": { type: "string" },
    "redis-url": { type: "string" },
  },
});
const backend = values.backend as IsolateJob["backend"];
if (backend !== "kv" && backend !== "redis") {
  throw new TypeError(
    `Invalid --backend: expected kv or redis, got ${backend}`,
  );
}
const durationMs = Number(values.seconds) * 1000;
const inflight = Number(values.inflight);
const shapes = values.threads.split(",").map(Number);
const workerCounts = values.workers.split(",").map(Number);
const rounds = Number(values.rounds);
const modes = values["no-naive"]
  ? (["backend"] as const)
  : (["backend", "naive"] as const);

/** Per backend: the store config shared by all workers, and its cleanup. */
async function storeFor(
  name: IsolateJob["backend"],
): Promise<{ config: BackendConfig; cleanUp: () => Promise<void> }> {
  if (name === "redis") {
    if (values["redis-url"] !== undefined) {
      return {
        config: { backendType: "redis", redisUrl: values["redis-url"] },
        cleanUp: () => Promise.resolve(),
      };
    }
    const server = await startRedisServer();
    return {
      config: { backendType: "redis", redisUrl: server.url },
      cleanUp: () => server.stop(),
    };
  }
  if (values["kv-path"] !== undefined) {
    return {
      config: { backendType: "kv", kvPath: values["kv-path"] },
      cleanUp: () => Promise.resolve(),
    };
  }
  const dir = await Deno.makeTempDir({ prefix: "bench_isolates_" });
  return {
    config: { backendType: "kv", kvPath: `${dir}/bench.db` },
    cleanUp: () => Deno.remove(dir, { recursive: true }),
  };
}

/** What `count` workers did together. */
interface Measured {
  rate: number;
  errors: number;
  firstError?: string;
  /** Latency per append in milliseconds: 99th percentile and largest. */
  p99: number;
  max: number;
  /** CPU time of this process per successful append, in microseconds. */
  cpuUs: number;
}

/** The `p` quantile (0..1) of some numbers, by the nearest-rank method. */
function quantile(values: Float64Array, p: number): number {
  if (values.length === 0) return NaN;
  const sorted = values.toSorted();
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!;
}

/** Runs `count` workers at once; returns total appends/s, errors and latencies. */
async function measure(
  count: number,
  job: IsolateJob,
): Promise<Measured> {
  const url = new URL("./_isolates_worker.ts", import.meta.url);
  const workers = Array.from(
    { length: count },
    () => new Worker(url, { type: "module" }),
  );
  const next = (worker: Worker) =>
    new Promise<unknown>((resolve, reject) => {
      worker.onmessage = (event) => resolve(event.data);
      worker.onerror = (event) => {
        event.preventDefault();
        reject(new Error(event.message));
      };
    });
  try {
    const ready = workers.map(next);
    for (const worker of workers) worker.postMessage(job);
    await Promise.all(ready);
    const done = workers.map(next);
    const cpuBefore = processCpuMs();
    for (const worker of workers) worker.postMessage("go");
    const reports = (await Promise.all(done)) as IsolateReport[];
    const cpuMs = processCpuMs() - cpuBefore;
    const appends = reports.reduce((sum, r) => sum + r.appends, 0);
    const elapsed = Math.max(...reports.map((r) => r.elapsedMs));
    const firstError = reports.find((r) => r.firstError)?.firstError;
    const latencies = new Float64Array(
      reports.reduce((sum, r) => sum + r.latencies.length, 0),
    );
    let at = 0;
    for (const r of reports) {
      latencies.set(r.latencies, at);
      at += r.latencies.length;
    }
    return {
      rate: appends / (elapsed / 1000),
      errors: reports.reduce((sum, r) => sum + r.errors, 0),
      p99: quantile(latencies, 0.99),
      max: latencies.reduce((a, b) => Math.max(a, b), 0),
      cpuUs: cpuMs * 1000 / appends,
      ...(firstError === undefined ? {} : { firstError }),
    };
  } finally {
    for (const worker of workers) worker.terminate();
  }
}

/** The median of some numbers (NaN if none). */
function median(values: number[]): number {
  return quantile(
    Float64Array.from(values.filter((v) => !Number.isNaN(v))),
    0.5,
  );
}

/** Per shape, worker count and mode, the median of its rounds (largest max, all errors). */
function combine(all: Measured[]): Measured {
  const firstError = all.find((m) => m.firstError)?.firstError;
  return {
    rate: median(all.map((m) => m.rate)),
    errors: all.reduce((sum, m) => sum + m.errors, 0),
    p99: median(all.map((m) => m.p99)),
    max: Math.max(...all.map((m) => m.max)),
    cpuUs: median(all.map((m) => m.cpuUs)),
    ...(firstError === undefined ? {} : { firstError }),
  };
}

const store = await storeFor(backend);
/** Every run, by `${threads}/${workers}/${mode}`. */
const runs = new Map<string, Measured[]>();
let run = 0;
try {
  for (let round = 0; round < rounds; round++) {
    for (const threadCount of shapes) {
      const threads = Array.from(
        { length: threadCount },
        (_, i) => `thread-${i}`,
      );
      for (const count of workerCounts) {
        for (const mode of modes) {
          const config: BackendConfig = {
            ...store.config,
            prefix: `bench-isolates-${run++}:`,
            ttlMs: 0,
            maxSlotsPerThread: Number.MAX_SAFE_INTEGER,
          };
          const job: IsolateJob = {
            backend,
            mode,
            config,
            threads,
            durationMs,
            inflight,
            slotBytes: 200,
          };
          let result: Measured;
          try {
            result = await measure(count, job);
          } catch (error) {
            // No naive appender for this backend (yet): show n/a, keep going.
            if (mode === "backend") throw error;
            result = {
              rate: NaN,
              errors: 0,
              p99: NaN,
              max: NaN,
              cpuUs: NaN,
              firstError: String(error),
            };
          }
          const key = `${threadCount}/${count}/${mode}`;
          runs.set(key, [...(runs.get(key) ?? []), result]);
          if (rounds > 1) {
            console.error(
              `  round ${
                round + 1
              }: ${threadCount} thread(s), ${count} worker(s), ${mode}: ${
                Math.round(result.rate)
              } appends/s, p99 ${result.p99.toFixed(1)} ms, max ${
                result.max.toFixed(0)
              } ms, ${result.cpuUs.toFixed(0)} us CPU/append`,
            );
          }
        }
      }
    }
  }
} finally {
  await store.cleanUp();
}

const tables: string[] = [];
for (const threadCount of shapes) {
  const rows: string[][] = [];
  const measured = (count: number, mode: string): Measured =>
    runs.has(`${threadCount}/${count}/${mode}`)
      ? combine(runs.get(`${threadCount}/${count}/${mode}`)!)
      : { rate: NaN, errors: 0, p99: NaN, max: NaN, cpuUs: NaN };
  const baseCount = workerCounts[0]!;
  const base = {
    backend: measured(baseCount, "backend"),
    naive: measured(baseCount, "naive"),
  };
  for (const count of workerCounts) {
    const b = measured(count, "backend");
    const n = measured(count, "naive");
    const rate = (r: number) =>
      Number.isNaN(r) ? "n/a" : Math.round(r).toLocaleString("en-US");
    const ratio = (r: number, digits: number) =>
      Number.isNaN(r) ? "n/a" : `${r.toFixed(digits)}x`;
    const ms = (value: number) => `${value.toFixed(value < 10 ? 1 : 0)} ms`;
    rows.push([
      String(count),
      rate(b.rate),
      ratio(b.rate / base.backend.rate, 2),
      ms(b.p99),
      ratio(b.p99 / base.backend.p99, 2),
      ms(b.max),
      Number.isNaN(b.cpuUs) ? "n/a" : `${b.cpuUs.toFixed(0)} us`,
      ratio(b.cpuUs / base.backend.cpuUs, 2),
      rate(n.rate),
      ratio(n.rate / base.naive.rate, 2),
      ratio(b.rate / n.rate, 1),
      b.errors + n.errors === 0
        ? ""
        : `${b.errors}/${n.errors} (${b.firstError ?? n.firstError})`,
    ]);
  }
  const header = [
    "workers",
    "backend appends/s",
    `vs ${baseCount} worker(s)`,
    "p99",
    "p99 vs base",
    "max",
    "CPU/append",
    "CPU vs base",
    "naive appends/s",
    "vs base",
    "backend / naive",
    "errors (backend/naive)",
  ];
  tables.push(
    [
      `${backend}: total appends/s of 200-byte slots, ${inflight} in flight per worker, ${threadCount} thread(s) shared by all workers, ${
        durationMs / 1000
      } s per run${
        rounds > 1
          ? `; ${rounds} interleaved rounds: median appends/s, p99 and CPU, largest max`
          : ""
      }`,
      `| ${header.join(" | ")} |`,
      `| ${header.map(() => "---").join(" | ")} |`,
      ...rows.map((row) => `| ${row.join(" | ")} |`),
    ].join("\n"),
  );
}
console.log(tables.join("\n\n"));
