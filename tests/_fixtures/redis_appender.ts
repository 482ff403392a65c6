// Appends tagged slots to a Redis backend, as a Worker or as a subprocess, and
// reports what each append returned. Used by tests/redis_test.ts.
//
// As a subprocess: deno run -A redis_appender.ts '<job as JSON>' (prints the
// report as JSON on stdout). As a Worker: post the job, receive the report.

import { RedisBackend } from "../../backends/redis.ts";
import { tagged as taggedSlot } from "./tagged_slot.ts";

/** What to append. */
export interface AppendJob {
  url: string;
  prefix: string;
  threadId: string;
  /** Tags the slots (bytes 0..3). */
  writer: number;
  count: number;
  /** Appends in flight at once. */
  concurrency: number;
  size: number;
  /** Append slot i to thread `${threadId}-${writer}-${i}` instead (maxThreads races). */
  distinctThreads?: boolean;
  maxSlotsPerThread?: number;
  maxThreads?: number;
  /** Append slot i with `appendId: ${appendIdPrefix}-${i}` (writers sharing it race on the same ids). */
  appendIdPrefix?: string;
}

/** One append's outcome: its index, or the name of the error it rejected with. */
export type AppendOutcome = { seq: number; index: number } | {
  seq: number;
  error: string;
};

/** The slot a writer appends as its `seq`-th (see tagged_slot.ts). */
export { taggedSlot };

/** Runs a job and returns every append's outcome. */
export async function runJob(job: AppendJob): Promise<AppendOutcome[]> {
  const config = {
    redisUrl: job.url,
    prefix: job.prefix,
    ttlMs: 0,
    ...(job.maxSlotsPerThread === undefined
      ? {}
      : { maxSlotsPerThread: job.maxSlotsPerThread }),
    ...(job.maxThreads === undefined ? {} : { maxThreads: job.maxThreads }),
  };
  await using backend = await RedisBackend.open(config);
  const outcomes: AppendOutcome[] = [];
  let next = 0;
  const lane = async () => {
    while (next < job.count) {
      const seq = next++;
      const threadId = job.distinctThreads
        ? `${job.threadId}-${job.writer}-${seq}`
        : job.threadId;
      try {
        const index = await backend.bufferAppend(
          threadId,
          taggedSlot(job.writer, seq, job.size),
          job.appendIdPrefix === undefined
            ? undefined
            : { appendId: `${job.appendIdPrefix}-${seq}` },
        );
        outcomes.push({ seq, index });
      } catch (error) {
        outcomes.push({ seq, error: (error as Error).name });
      }
    }
  };
  await Promise.all(Array.from({ length: job.concurrency }, lane));
  return outcomes;
}

interface WorkerScope {
  onmessage: ((event: MessageEvent<AppendJob>) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
}

const isWorker = "WorkerGlobalScope" in globalThis;
if (isWorker) {
  const worker = globalThis as unknown as WorkerScope;
  worker.onmessage = async (event) => {
    try {
      worker.postMessage({ outcomes: await runJob(event.data) });
    } catch (error) {
      worker.postMessage({ error: String(error) });
    }
    worker.close();
  };
} else if (import.meta.main) {
  const job = JSON.parse(Deno.args[0]!) as AppendJob;
  console.log(JSON.stringify(await runJob(job)));
}
