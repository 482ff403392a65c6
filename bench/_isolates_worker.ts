// One isolate of bench/isolates.ts: opens an appender for the job, says
// "ready", waits for "go", appends for the job's duration with `inflight`
// appends in flight, and reports how many succeeded.
//
// An appender is either the package's backend (`mode: "backend"`, any
// backendType through createSharedBackend) or the naive approach a user would
// hand-write for that store (`mode: "naive"`), looked up in NAIVE by backend.

import { Buffer } from "node:buffer";
import { type BackendConfig, createSharedBackend } from "../mod.ts";

/** What bench/isolates.ts sends each worker. */
export interface IsolateJob {
  /** Which store: picks the naive appender. */
  backend: "kv" | "redis";
  mode: "backend" | "naive";
  /** The backend's config (for `naive`: kvPath, redisUrl, prefix). */
  config: BackendConfig;
  /** Appends go round-robin over these threads. */
  threads: string[];
  durationMs: number;
  inflight: number;
  slotBytes: number;
}

/** What each worker answers. */
export interface IsolateReport {
  appends: number;
  errors: number;
  firstError?: string;
  elapsedMs: number;
  /** Each append's latency in milliseconds (successful or not). */
  latencies: Float64Array;
}

interface Appender {
  append(threadId: string, slot: Uint8Array): Promise<unknown>;
  close(): Promise<void>;
}

/** The naive append per store: what a user of a plain client writes. */
const NAIVE: Partial<
  Record<IsolateJob["backend"], (job: IsolateJob) => Promise<Appender>>
> = {
  // Read the length, then check-and-set the slot and the new length; retry.
  async kv(job) {
    const kv = await Deno.openKv(job.config.kvPath);
    const prefix = job.config.prefix ?? "";
    return {
      async append(threadId, slot) {
        const lengthKey = ["naive", prefix, threadId, "len"];
        for (;;) {
          const length = await kv.get<number>(lengthKey);
          const index = length.value ?? 0;
          try {
            const result = await kv.atomic().check(length)
              .set(["naive", prefix, threadId, "slot", index], slot)
              .set(lengthKey, index + 1)
              .commit();
            if (result.ok) return index;
          } catch (error) {
            // Several processes on one file: "database is locked" means retry.
            if (!/database is locked/.test(String(error))) throw error;
          }
        }
      },
      close: () => Promise.resolve(kv.close()),
    };
  },
  // RPUSH, then PEXPIRE, each awaited: two round trips, as the Python original
  // did (ioredis is loaded here only, so kv runs never load it).
  async redis(job) {
    const { Redis } = await import("ioredis");
    const client = new Redis(job.config.redisUrl!, { protocol: 2 });
    const prefix = job.config.prefix ?? "";
    return {
      async append(threadId, slot) {
        const key = `naive:${prefix}${threadId}`;
        const length = await client.rpush(key, Buffer.from(slot));
        await client.pexpire(key, 86_400_000);
        return length - 1;
      },
      close: async () => void await client.quit(),
    };
  },
};

async function openAppender(job: IsolateJob): Promise<Appender> {
  if (job.mode === "naive") {
    const naive = NAIVE[job.backend];
    if (naive === undefined) {
      throw new Error(`No naive appender for backend ${job.backend}`);
    }
    return await naive(job);
  }
  const backend = await createSharedBackend(job.config);
  return {
    append: (threadId, slot) => backend.bufferAppend(threadId, slot),
    close: () => backend.close(),
  };
}

async function run(
  job: IsolateJob,
  appender: Appender,
): Promise<IsolateReport> {
  const slot = new Uint8Array(job.slotBytes).fill(7);
  const latencies: number[] = [];
  const report: IsolateReport = {
    appends: 0,
    errors: 0,
    elapsedMs: 0,
    latencies: new Float64Array(),
  };
  const start = performance.now();
  const deadline = start + job.durationMs;
  let next = 0;
  const lane = async () => {
    while (performance.now() < deadline) {
      const threadId = job.threads[next++ % job.threads.length]!;
      const sent = performance.now();
      try {
        await appender.append(threadId, slot);
        report.appends++;
      } catch (error) {
        report.errors++;
        report.firstError ??= String(error);
      }
      latencies.push(performance.now() - sent);
    }
  };
  await Promise.all(Array.from({ length: job.inflight }, lane));
  report.elapsedMs = performance.now() - start;
  report.latencies = Float64Array.from(latencies);
  return report;
}

const worker = self as unknown as {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage: (message: unknown, transfer?: Transferable[]) => void;
  close: () => void;
};
let job: IsolateJob | undefined;
let appender: Appender | undefined;
worker.onmessage = async (event: MessageEvent<IsolateJob | "go">) => {
  if (event.data !== "go") {
    job = event.data;
    appender = await openAppender(job);
    worker.postMessage("ready");
    return;
  }
  const report = await run(job!, appender!);
  await appender!.close();
  worker.postMessage(report, [report.latencies.buffer as ArrayBuffer]);
  worker.close();
};
