// A Worker of tests/kv_isolates_test.ts: opens a KvBackend on the job's file,
// says "ready" (with the Web Locks client id of its isolate, so that the test
// can tell which Worker holds the committer's lock), appends on "go" until
// it has made `count` appends or is told "stop", streams every acknowledged
// append as it comes, and reports when done. Slots are tagged (writer, seq)
// so that the test can check each one's bytes and that none is stored twice.

import { KvBackend, type KvBackendOptions } from "../../backends/kv.ts";
import type { BackendConfig } from "../../config.ts";
import { tagged } from "./kv_appender.ts";

/** One Worker's work. */
export interface IsolateJob {
  kvPath: string;
  config: Omit<BackendConfig, "kvPath" | "kv">;
  options?: KvBackendOptions;
  writer: number;
  /** Appends go round-robin over these threads. */
  threadIds: string[];
  /** Appends to make (Infinity: until "stop"). */
  count: number;
  /** Bytes of each slot; every `largeEvery`th slot has `largeSize` instead. */
  size: number;
  largeEvery?: number;
  largeSize?: number;
  /** With an appendId: `${appendIdPrefix}${seq}`. */
  appendIdPrefix?: string;
  inflight: number;
  /** Close the backend at the end (default true). */
  close?: boolean;
}

/** What a Worker posts. */
export type IsolateEvent =
  | { k: "ready"; writer: number; clientId: string | undefined }
  | { k: "acks"; writer: number; acks: Ack[] }
  | { k: "done"; writer: number; errors: string[] };

/** An acknowledged append: thread, seq, index, size. */
export type Ack = [string, number, number, number];

/** The size of the slot `seq` of a job. */
export function slotSize(job: IsolateJob, seq: number): number {
  return job.largeEvery !== undefined && seq % job.largeEvery === 0
    ? job.largeSize!
    : job.size;
}

interface LockInfo {
  name?: string;
  clientId?: string;
}

/** This isolate's Web Locks client id: hold a private lock and look it up. */
async function clientId(writer: number): Promise<string | undefined> {
  const locks = (navigator as unknown as {
    locks: {
      request(name: string, fn: () => Promise<unknown>): Promise<unknown>;
      query(): Promise<{ held?: LockInfo[] }>;
    };
  }).locks;
  const name = `probe-${writer}-${crypto.randomUUID()}`;
  return await locks.request(name, async () => {
    const { held = [] } = await locks.query();
    return held.find((lock) => lock.name === name)?.clientId;
  }) as string | undefined;
}

const worker = self as unknown as {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage: (message: IsolateEvent) => void;
};

let job: IsolateJob;
let backend: KvBackend;
let stopped = false;

async function run(): Promise<void> {
  const errors: string[] = [];
  let acks: Ack[] = [];
  // Acknowledgements go out as they come (those of one commit together), so
  // that a Worker terminated mid-load has told nearly all of them.
  const flush = () => {
    if (acks.length === 0) return;
    worker.postMessage({ k: "acks", writer: job.writer, acks });
    acks = [];
  };
  const ack = (a: Ack) => {
    if (acks.length === 0) queueMicrotask(flush);
    acks.push(a);
  };
  let next = 0;
  const lane = async () => {
    while (!stopped && next < job.count) {
      const seq = next++;
      const threadId = job.threadIds[seq % job.threadIds.length]!;
      const size = slotSize(job, seq);
      try {
        const index = await backend.bufferAppend(
          threadId,
          tagged(job.writer, seq, size),
          job.appendIdPrefix === undefined
            ? undefined
            : { appendId: `${job.appendIdPrefix}${seq}` },
        );
        ack([threadId, seq, index, size]);
      } catch (error) {
        errors.push(`${(error as Error).name}: ${(error as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: job.inflight }, lane));
  flush();
  if (job.close !== false) await backend.close();
  worker.postMessage({ k: "done", writer: job.writer, errors });
}

worker.onmessage = async (event: MessageEvent<IsolateJob | "go" | "stop">) => {
  const data = event.data;
  if (data === "go") {
    await run();
  } else if (data === "stop") {
    stopped = true;
  } else {
    job = data;
    backend = await KvBackend.open(
      { ...job.config, kvPath: job.kvPath },
      job.options,
    );
    worker.postMessage({
      k: "ready",
      writer: job.writer,
      clientId: await clientId(job.writer),
    });
  }
};
