// A writer for the kv backend's multi-process tests, run as a Worker (it
// waits for one job message and answers with its report) or as a `deno run`
// subprocess (the job as JSON in the first argument, the report as JSON on
// stdout). Job "big" appends 1 MiB slots until killed, printing a line after
// each one, for the SIGKILL test.

import { KvBackend, type KvBackendOptions } from "../../backends/kv.ts";
import type { BackendConfig } from "../../config.ts";
import { tagged } from "./tagged_slot.ts";

/** One writer's work. */
export interface AppendJob {
  kind: "append" | "big";
  kvPath: string;
  config: Omit<BackendConfig, "kvPath" | "kv">;
  options?: KvBackendOptions;
  /** Appends go round-robin over these threads. */
  threadIds: string[];
  writer: number;
  count: number;
  size: number;
  /** Appends in flight at once. */
  inflight: number;
  /** With it, append `seq` carries the appendId `id-<seq % appendIds>`. */
  appendIds?: number;
}

/** What happened to each append. */
export interface AppendReport {
  writer: number;
  results: { threadId: string; seq: number; index?: number; error?: string }[];
}

export { tagged };

async function runJob(job: AppendJob): Promise<AppendReport> {
  await using backend = await KvBackend.open(
    { ...job.config, kvPath: job.kvPath },
    job.options,
  );
  const results: AppendReport["results"] = [];
  let next = 0;
  const lane = async () => {
    while (next < job.count) {
      const seq = next++;
      const threadId = job.threadIds[seq % job.threadIds.length]!;
      try {
        const index = await backend.bufferAppend(
          threadId,
          tagged(job.writer, seq, job.size),
          job.appendIds === undefined
            ? {}
            : { appendId: `id-${seq % job.appendIds}` },
        );
        results.push({ threadId, seq, index });
      } catch (error) {
        results.push({ threadId, seq, error: (error as Error).name });
      }
    }
  };
  await Promise.all(Array.from({ length: job.inflight }, lane));
  return { writer: job.writer, results };
}

async function runBig(job: AppendJob): Promise<never> {
  const backend = await KvBackend.open(
    { ...job.config, kvPath: job.kvPath },
    job.options,
  );
  const encoder = new TextEncoder();
  for (let seq = 0;; seq++) {
    await backend.bufferAppend(
      job.threadIds[0]!,
      tagged(job.writer, seq, job.size),
    );
    await Deno.stdout.write(encoder.encode(`appended ${seq}\n`));
  }
}

// deno-lint-ignore no-explicit-any
const scope = (globalThis as any).WorkerGlobalScope;
if (scope !== undefined && self instanceof scope) {
  const worker = self as unknown as {
    onmessage: (event: MessageEvent<AppendJob>) => void;
    postMessage: (report: AppendReport) => void;
    close: () => void;
  };
  worker.onmessage = async (event) => {
    worker.postMessage(await runJob(event.data));
    worker.close();
  };
} else if (import.meta.main) {
  const job = JSON.parse(Deno.args[0]!) as AppendJob;
  if (job.kind === "big") await runBig(job);
  console.log(JSON.stringify(await runJob(job)));
}
