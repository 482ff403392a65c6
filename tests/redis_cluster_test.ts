// The Redis backend on a real 6-node Redis Cluster (3 masters, 3 replicas,
// AOF, node timeout 2 s): the conformance suite, and failovers under load
// (issue 11). Skipped, saying why, only where redis-server or redis-cli is
// missing.

import assert from "node:assert/strict";
import { Cluster } from "ioredis";
import { RedisBackend } from "../backends/redis.ts";
import { hashSlot, redisKeys } from "../backends/_redis_keys.ts";
import { runConformanceSuite } from "../testing/conformance.ts";
import {
  clusterMissing,
  type RedisCluster,
  startRedisCluster,
} from "./_redis_cluster.ts";
import { taggedSlot } from "./_fixtures/redis_appender.ts";

const missing = await clusterMissing();
if (missing !== undefined) {
  console.log(`Redis Cluster tests skipped: ${missing}`);
}

Deno.test({
  name:
    "RedisBackend on a 6-node Redis Cluster (3 masters, 3 replicas, AOF): the contract, and failovers under load",
  ignore: missing !== undefined,
  async fn(t) {
    await using cluster = await startRedisCluster();
    // ioredis' defaults: an offline queue, resends after a failover.
    const client = new Cluster(cluster.startupNodes);
    try {
      await t.step("the conformance suite passes", async (t) => {
        await runConformanceSuite(t, {
          name: "redis cluster",
          open: (config) =>
            RedisBackend.open({ ...config, redisClient: client }),
        });
      });

      await t.step(
        "durableReplicas 1: a master killed while its replica lagged 1.5 s behind (SIGSTOP) loses no acknowledged append; indexes stay dense and unique; no rejection says 'may or may not'",
        async () => {
          const report = await failover(cluster, client, 1);
          console.log(`durableReplicas 1: ${report.summary}`);
          assert.deepEqual(report.lost, [], "acknowledged appends lost");
          assert.deepEqual(report.reused, [], "indexes handed out twice");
          assert.deepEqual(report.duplicated, [], "slots stored twice");
          assert.deepEqual(
            report.failures.filter((m) => /may or may not/.test(m)),
            [],
          );
          assert.ok(report.acked > 0);
        },
      );

      await t.step(
        "durableReplicas 0 (the default): the same failover loses what the replica had not received, and hands those indexes out again; nothing is stored twice",
        async () => {
          const report = await failover(cluster, client, 0);
          // What Redis' asynchronous replication gives up (documented in
          // docs/redis.md): no assertion on the losses, only that nothing is
          // applied twice.
          console.log(`durableReplicas 0: ${report.summary}`);
          assert.deepEqual(report.duplicated, [], "slots stored twice");
          assert.ok(report.acked > 0);
        },
      );
    } finally {
      const ended = new Promise((resolve) => client.once("end", resolve));
      await client.quit().catch(() => client.disconnect());
      await ended;
    }
  },
});

/**
 * Slot size under load: big enough that 1.5 s of writes overflow the kernel
 * buffers between master and replica (with small slots the stopped replica
 * still receives everything from its socket once continued, and nothing is
 * lost even without durableReplicas).
 */
const SLOT_BYTES = 1_024;

/** What a failover did to acknowledged appends. */
interface FailoverReport {
  acked: number;
  /** Acknowledged appends missing at their index afterwards. */
  lost: string[];
  /** Indexes acknowledged to two appends. */
  reused: string[];
  /** Slots stored more than once. */
  duplicated: string[];
  /** Messages of rejected appends. */
  failures: string[];
  summary: string;
}

/**
 * 256 appends in flight over 6 tenants (3 of them on the victim master, 8
 * threads each); SIGSTOP the victim's replica, SIGKILL the victim 1.5 s
 * later, SIGCONT the replica (it is promoted after the node timeout), start
 * the victim again (it rejoins as a replica), keep the load 1 s more, then
 * compare what was acknowledged with what is stored.
 */
async function failover(
  cluster: RedisCluster,
  client: Cluster,
  durableReplicas: number,
): Promise<FailoverReport> {
  await cluster.waitHealthy();
  const [victim] = await cluster.masters();
  const run = crypto.randomUUID().slice(0, 8);
  // Tenants whose hash slot is on the victim, and others.
  const onVictim: string[] = [];
  const elsewhere: string[] = [];
  for (let i = 0; onVictim.length < 3 || elsewhere.length < 3; i++) {
    const prefix = `fo-${run}-${i}:`;
    const slot = hashSlot(redisKeys(prefix).tag);
    const mine = victim!.slots.some(([a, b]) => slot >= a && slot <= b);
    if (mine && onVictim.length < 3) onVictim.push(prefix);
    if (!mine && elsewhere.length < 3) elsewhere.push(prefix);
  }
  const backends = await Promise.all(
    [...onVictim, ...elsewhere].map((prefix) =>
      RedisBackend.open({
        redisClient: client,
        prefix,
        durableReplicas,
        retryTimeoutMs: 30_000,
        maxSlotsPerThread: 1_000_000,
      })
    ),
  );
  /** Every acknowledged append: "tenant/thread/index" and its slot. */
  const acked: [string, Uint8Array][] = [];
  const handedOut = new Set<string>();
  const reused: string[] = [];
  const failures: string[] = [];
  let seq = 0;
  let stop = false;
  const lane = async (lane: number) => {
    const tenant = lane % backends.length;
    const thread = `t${lane % 8}`;
    while (!stop) {
      const slot = taggedSlot(lane, seq++, SLOT_BYTES);
      try {
        const index = await backends[tenant]!.bufferAppend(thread, slot);
        const key = `${tenant}/${thread}/${index}`;
        if (handedOut.has(key)) reused.push(key);
        handedOut.add(key);
        acked.push([key, slot]);
      } catch (error) {
        failures.push(String(error));
      }
    }
  };
  const lanes = Array.from({ length: 256 }, (_, i) => lane(i));
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  await sleep(1_000);
  cluster.signal(victim!.replicaPort, "SIGSTOP");
  await sleep(1_500);
  cluster.signal(victim!.port, "SIGKILL");
  cluster.signal(victim!.replicaPort, "SIGCONT");
  await cluster.waitForMaster(victim!.replicaPort);
  await cluster.restart(victim!.port);
  await sleep(1_000);
  stop = true;
  await Promise.all(lanes);
  // What is stored, read after the load (retried through the Cluster).
  const lost: string[] = [];
  const duplicated: string[] = [];
  const stored = new Map<string, Uint8Array[]>();
  for (const [tenant, backend] of backends.entries()) {
    for (let t = 0; t < 8; t++) {
      const thread = `t${t}`;
      const slots = await backend.bufferGetThread(thread);
      stored.set(`${tenant}/${thread}`, slots);
      const seen = new Set<string>();
      for (const slot of slots) {
        const tag = [...slot.subarray(0, 8)].join(",");
        if (seen.has(tag)) duplicated.push(`${tenant}/${thread}: ${tag}`);
        seen.add(tag);
      }
    }
  }
  for (const [key, slot] of acked) {
    const at = key.lastIndexOf("/");
    const found = stored.get(key.slice(0, at))![Number(key.slice(at + 1))];
    if (found === undefined || !equal(found, slot)) lost.push(key);
  }
  for (const backend of backends) {
    await backend.bufferClear();
    await backend.close();
  }
  await cluster.waitHealthy();
  const mayOrMayNot = failures.filter((m) => /may or may not/.test(m)).length;
  // Tenants 0..2 live on the killed master.
  const onKilled = acked.filter(([key]) => Number(key.split("/")[0]) < 3);
  return {
    acked: acked.length,
    lost,
    reused,
    duplicated,
    failures,
    summary:
      `${acked.length} acknowledged (${onKilled.length} by the killed master's shard), ${lost.length} lost, ${reused.length} indexes handed out twice, ${duplicated.length} stored twice, ${failures.length} rejected (${mayOrMayNot} 'may or may not')${
        failures.length > 0 ? `; first: ${failures[0]}` : ""
      }`,
  };
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
