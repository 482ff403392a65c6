// What watching costs the appenders: 256 200-byte slots appended with all in
// flight to one thread that 10 watchers (10 backends in another process, as
// other agents) watch, against the same appends to a thread nobody watches
// (the baseline), on Redis and on a KV file (issue 12: at most 10% less
// throughput). The watchers read every slot as it comes.
//
//   deno bench -A bench/watch_bench.ts
//
// The Redis server (started on a free port, stopped by pid) and the KV file
// are the bench's own; the watcher processes end with the bench.

import { allInFlight, type Append } from "./_shapes.ts";
import type { WatchersJob } from "./_watch_watchers.ts";
import { KvBackend } from "../backends/kv.ts";
import { RedisBackend } from "../backends/redis.ts";
import { startRedisServer } from "../tests/_redis_server.ts";

const WATCHERS = 10;
/** Fixed iterations: 300 x 256 slots per bench, after 30 to warm up. */
const RUNS = { n: 300, warmup: 30 };
const server = await startRedisServer();
const dir = await Deno.makeTempDir({ prefix: "bench_watch_" });
const children: Deno.ChildProcess[] = [];
globalThis.addEventListener("unload", () => {
  for (const child of children) {
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
  }
  if (server.pid !== undefined) {
    try {
      Deno.kill(server.pid, "SIGTERM");
    } catch {
      // already gone
    }
  }
  for (const path of [dir, server.dir]) {
    if (path === undefined) continue;
    try {
      Deno.removeSync(path, { recursive: true });
    } catch {
      // already gone
    }
  }
});

/** Starts the watcher process and waits until its watches run. */
async function startWatchers(job: WatchersJob): Promise<void> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      new URL("./_watch_watchers.ts", import.meta.url).pathname,
      JSON.stringify(job),
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  children.push(child);
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("ready")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the watcher process ended before it was ready");
    text += value;
  }
  reader.releaseLock();
}

const limits = { ttlMs: 0, maxSlotsPerThread: Number.MAX_SAFE_INTEGER };
const redisStore = {
  kind: "redis" as const,
  url: server.url,
  prefix: "bench-watch:",
};
const redis = await RedisBackend.open({
  redisUrl: server.url,
  prefix: redisStore.prefix,
  ...limits,
});
const kvStore = {
  kind: "kv" as const,
  path: `${dir}/bench.db`,
  prefix: "bench",
};
const kv = await KvBackend.open({
  kvPath: kvStore.path,
  prefix: kvStore.prefix,
  ...limits,
});
await startWatchers({
  store: redisStore,
  threadId: "watched",
  watchers: WATCHERS,
});
await startWatchers({
  store: kvStore,
  threadId: "watched",
  watchers: WATCHERS,
});

for (
  const [name, backend] of [["redis", redis], ["kv", kv]] as const
) {
  const append: Append = (threadId, slot) =>
    backend.bufferAppend(threadId, slot);
  const group = `${name}: 256 appends in flight to 1 thread`;
  Deno.bench({
    name: `${name}: nobody watches the thread`,
    group,
    baseline: true,
    ...RUNS,
    fn: async () => {
      await allInFlight(append, ["quiet"]);
    },
  });
  Deno.bench({
    name: `${name}: ${WATCHERS} watchers in another process watch it`,
    group,
    ...RUNS,
    fn: async () => {
      await allInFlight(append, ["watched"]);
    },
  });
}
