// A peer of tests/watch_test.ts and bench/watch_latency.ts: appends to, or
// watches, one thread of a shared store (a KV file or a Redis server), as a
// Worker (post it the job, receive its report) or as a subprocess
// (`deno run -A watch_peer.ts '<job as JSON>'`: the report as JSON on the
// last line of stdout; a watcher prints "ready" first, once its watch runs).
// It never checks what it saw: the test does, against the stored thread.

import type { SharedBackend } from "../../protocol.ts";
import { tagged } from "./tagged_slot.ts";

/** Where the shared thread lives. */
export type StoreSpec =
  | { kind: "redis"; url: string; prefix: string }
  | { kind: "kv"; path: string; prefix: string };

/** Appends `count` tagged slots, `perSecond` at most, `inflight` at once. */
export interface AppendJob {
  role: "append";
  store: StoreSpec;
  threadId: string;
  writer: number;
  count: number;
  inflight: number;
  perSecond: number;
  size: number;
}

/**
 * Watches the thread from `from` ("now": its length when the watch starts)
 * until it has yielded index `until - 1`, or until `deadlineMs` passed.
 */
export interface WatchJob {
  role: "watch";
  store: StoreSpec;
  threadId: string;
  from: number | "now";
  until: number;
  deadlineMs: number;
}

/** The index each of a writer's appends got, by seq. */
export interface AppendReport {
  role: "append";
  writer: number;
  indexes: number[];
}

/** What a watch yielded, in order: index and the slot's bytes in hex. */
export interface WatchReport {
  role: "watch";
  /** The thread's length read just before the watch started. */
  lengthBefore: number;
  slots: [index: number, hex: string][];
  /** "complete": it reached `until`; "deadline": it did not in time; "ended": the watch ended. */
  outcome: "complete" | "deadline" | "ended";
}

export { tagged };

/** Bytes as hex, for reports. */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Opens the store of a spec (loading only that backend's module). */
export async function openStore(store: StoreSpec): Promise<SharedBackend> {
  if (store.kind === "redis") {
    const { RedisBackend } = await import("../../backends/redis.ts");
    return await RedisBackend.open({
      redisUrl: store.url,
      prefix: store.prefix,
    });
  }
  const { KvBackend } = await import("../../backends/kv.ts");
  return await KvBackend.open({ kvPath: store.path, prefix: store.prefix });
}

async function append(job: AppendJob): Promise<AppendReport> {
  await using backend = await openStore(job.store);
  const indexes: number[] = [];
  const start = performance.now();
  let next = 0;
  const lane = async () => {
    while (next < job.count) {
      const seq = next++;
      // A steady pace: slot `seq` goes no earlier than its time.
      const due = start + (seq * 1000) / job.perSecond - performance.now();
      if (due > 0) await new Promise((resolve) => setTimeout(resolve, due));
      indexes[seq] = await backend.bufferAppend(
        job.threadId,
        tagged(job.writer, seq, job.size),
      );
    }
  };
  await Promise.all(Array.from({ length: job.inflight }, lane));
  return { role: "append", writer: job.writer, indexes };
}

async function watch(
  job: WatchJob,
  ready: () => void,
): Promise<WatchReport> {
  await using backend = await openStore(job.store);
  const lengthBefore = await backend.bufferThreadLen(job.threadId);
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), job.deadlineMs);
  const slots: WatchReport["slots"] = [];
  let outcome: WatchReport["outcome"] = "ended";
  try {
    const watch = backend.bufferWatch(job.threadId, {
      ...(job.from === "now" ? {} : { fromIndex: job.from }),
      signal: controller.signal,
    });
    const first = watch.next();
    ready();
    let result = await first;
    while (!result.done) {
      slots.push([result.value.index, hex(result.value.slot)]);
      if (result.value.index >= job.until - 1) {
        outcome = "complete";
        break;
      }
      result = await watch.next();
    }
    await watch.return?.();
    if (outcome !== "complete" && controller.signal.aborted) {
      outcome = "deadline";
    }
  } finally {
    clearTimeout(timer);
  }
  return { role: "watch", lengthBefore, slots, outcome };
}

/** Runs a job; `ready` is called once a watch runs. */
export function runJob(
  job: AppendJob | WatchJob,
  ready: () => void = () => {},
): Promise<AppendReport | WatchReport> {
  return job.role === "append" ? append(job) : watch(job, ready);
}

interface WorkerScope {
  onmessage: ((event: MessageEvent<AppendJob | WatchJob>) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
}

if ("WorkerGlobalScope" in globalThis) {
  const scope = globalThis as unknown as WorkerScope;
  scope.onmessage = async (event) => {
    try {
      const report = await runJob(
        event.data,
        () => scope.postMessage("ready"),
      );
      scope.postMessage(report);
    } catch (error) {
      scope.postMessage({ error: String((error as Error)?.stack ?? error) });
    }
    scope.close();
  };
} else if (import.meta.main) {
  const job = JSON.parse(Deno.args[0]!) as AppendJob | WatchJob;
  const report = await runJob(job, () => console.log("ready"));
  console.log(JSON.stringify(report));
}
