// The watchers of bench/watch_bench.ts, in a process of their own (as other
// agents would be): `deno run -A bench/_watch_watchers.ts '<job as JSON>'`
// opens `watchers` backends on the store, each watching `threadId` from its
// length, reading every slot; prints "ready" once every watch runs, and ends
// when its stdin closes (the bench closes it, or ends).

import type { SharedBackend } from "../protocol.ts";

/** Where and what to watch. */
export interface WatchersJob {
  store:
    | { kind: "redis"; url: string; prefix: string }
    | { kind: "kv"; path: string; prefix: string };
  threadId: string;
  watchers: number;
}

async function open(job: WatchersJob): Promise<SharedBackend> {
  const { store } = job;
  const limits = { maxSlotsPerThread: Number.MAX_SAFE_INTEGER, ttlMs: 0 };
  if (store.kind === "redis") {
    const { RedisBackend } = await import("../backends/redis.ts");
    return await RedisBackend.open({
      redisUrl: store.url,
      prefix: store.prefix,
      ...limits,
    });
  }
  const { KvBackend } = await import("../backends/kv.ts");
  return await KvBackend.open({
    kvPath: store.path,
    prefix: store.prefix,
    ...limits,
  });
}

if (import.meta.main) {
  const job = JSON.parse(Deno.args[0]!) as WatchersJob;
  const backends = await Promise.all(
    Array.from({ length: job.watchers }, () => open(job)),
  );
  const controller = new AbortController();
  let seen = 0;
  const watching = backends.map(async (backend) => {
    const watch = backend.bufferWatch(job.threadId, {
      signal: controller.signal,
    });
    for await (const _ of watch) seen++;
  });
  await new Promise((resolve) => setTimeout(resolve, 500));
  console.log("ready");
  // Runs until the bench closes stdin.
  for await (const _ of Deno.stdin.readable) {
    // nothing is sent: only the end matters
  }
  controller.abort();
  await Promise.all(watching);
  await Promise.all(backends.map((backend) => backend.close()));
  console.error(`watchers saw ${seen} slots`);
}
