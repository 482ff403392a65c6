/**
 * What `durableReplicas` costs on a real Redis Cluster (issue 11):
 * `deno bench -A bench/redis_cluster_bench.ts`. It starts 6 redis-server
 * processes (3 masters, 3 replicas, AOF; `tests/_redis_cluster.ts`) and
 * stops them when the bench ends; it registers nothing where redis-cli is
 * missing (it says so).
 *
 * One group, 256 200-byte slots over 100 threads of one tenant, all in
 * flight: the baseline is the backend with `durableReplicas: 0` (the
 * default: acknowledged by the master), against `durableReplicas: 1` (a WAIT
 * after each script call, shared by the appends coalesced into it).
 *
 * @module
 */

import { Cluster } from "ioredis";
import { RedisBackend } from "../backends/redis.ts";
import { clusterMissing, startRedisCluster } from "../tests/_redis_cluster.ts";
import { allInFlight, type Append } from "./_shapes.ts";

const missing = await clusterMissing();
if (missing !== undefined) {
  console.log(`Redis Cluster benches skipped: ${missing}`);
} else {
  const cluster = await startRedisCluster();
  const client = new Cluster(cluster.startupNodes);
  globalThis.addEventListener("unload", () => {
    client.disconnect();
    // Synchronous: unload handlers cannot await.
    cluster.killNow();
  });
  const open = (durableReplicas: number) =>
    RedisBackend.open({
      redisClient: client,
      prefix: `bench-durable-${durableReplicas}:`,
      durableReplicas,
      maxSlotsPerThread: 1_000_000_000,
    });
  const [acked, durable] = [await open(0), await open(1)];
  const threads = Array.from({ length: 100 }, (_, i) => `t-${i}`);
  const group = "redis cluster: 256 in flight, 100 threads, durableReplicas";
  let iterations = 0;
  const bench = (name: string, backend: RedisBackend, baseline = false) => {
    const append: Append = (threadId, slot) =>
      backend.bufferAppend(threadId, slot);
    Deno.bench({
      name,
      group,
      baseline,
      async fn(b) {
        if (++iterations % 64 === 0) {
          await acked.bufferClear();
          await durable.bufferClear();
        }
        b.start();
        await allInFlight(append, threads);
        b.end();
      },
    });
  };
  bench(
    "baseline: durableReplicas 0 (the master's acknowledgement)",
    acked,
    true,
  );
  bench("durableReplicas 1 (WAIT after each script call)", durable);
}
