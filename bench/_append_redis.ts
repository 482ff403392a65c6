// Redis append benchmarks, registered by `import "./_append_redis.ts"` from
// append_bench.ts: `deno bench -A bench/append_bench.ts`. They run against a
// redis-server the bench starts on a free 127.0.0.1 port (or the server of
// XP_TEST_REDIS_URL), stopped by pid when the bench ends.
//
// One group per shape (awaited one by one or 256 in flight, to 1 thread or
// 100 threads), each with the baselines a user would hand-write with ioredis:
//
// - baseline (`baseline: true`): `rpush` then `pexpire`, each awaited: two
//   round trips, not atomic (the Python original's algorithm);
// - `multi().rpush().pexpire().exec()`: one round trip, a transaction;
// - a hand-written EVALSHA append (RPUSH + PEXPIRE in Lua), plain client and
//   with `enableAutoPipelining`;
// - `RedisBackend.bufferAppend`: limits, index and TTL in one script, with
//   concurrent appends coalesced into shared script calls.
//
// Every iteration appends 256 200-byte slots; slots/s = 256 / time per
// iteration. Before the benches, the server's own ceiling
// (`redis-benchmark -P 16`, EVALSHA appends) is measured and printed, so that
// ratios come from one run.

import { type Append, SHAPES, SLOT } from "./_shapes.ts";
import { Redis } from "ioredis";
import { RedisBackend } from "../backends/redis.ts";
import { startRedisServer } from "../tests/_redis_server.ts";
import { HAND_WRITTEN_APPEND, measureCeilings } from "./redis_ceiling.ts";

const TTL_MS = 86_400_000;

const server = await startRedisServer();
const clients: Redis[] = [];
globalThis.addEventListener("unload", () => {
  for (const client of clients) client.disconnect();
  // Synchronous: unload handlers cannot await; the process ends right after.
  if (server.pid !== undefined) {
    try {
      Deno.kill(server.pid, "SIGTERM");
    } catch {
      // already gone
    }
  }
  if (server.dir !== undefined) {
    try {
      Deno.removeSync(server.dir, { recursive: true });
    } catch {
      // already gone
    }
  }
});

for (const { name, opsPerSecond } of await measureCeilings(server.port)) {
  console.log(`redis-benchmark -P 16, ${name}: ${opsPerSecond} ops/s`);
}

function client(options: { enableAutoPipelining?: boolean } = {}): Redis {
  const redis = new Redis(server.url, { protocol: 2, ...options });
  clients.push(redis);
  return redis;
}

const plain = client();
const autoPipelined = client({ enableAutoPipelining: true });
plain.defineCommand("handAppend", {
  lua: HAND_WRITTEN_APPEND,
  numberOfKeys: 1,
});
autoPipelined.defineCommand("handAppend", {
  lua: HAND_WRITTEN_APPEND,
  numberOfKeys: 1,
});
type HandAppend = (
  key: string,
  slot: Uint8Array,
  ttl: number,
) => Promise<number>;
const handAppend = (plain as unknown as { handAppend: HandAppend }).handAppend
  .bind(plain);
const handAppendAuto = (autoPipelined as unknown as { handAppend: HandAppend })
  .handAppend.bind(
    autoPipelined,
  );

const backend = await RedisBackend.open({
  redisUrl: server.url,
  prefix: "bench:",
  ttlMs: TTL_MS,
  maxSlotsPerThread: 1_000_000_000,
  maxThreads: 1_000_000,
});

const { Buffer } = await import("node:buffer");
const slotBuffer = Buffer.from(SLOT);

const twoRoundTrips: Append = async (threadId) => {
  const length = await plain.rpush(`raw:${threadId}`, slotBuffer);
  await plain.pexpire(`raw:${threadId}`, TTL_MS);
  return length - 1;
};
const transaction: Append = async (threadId) => {
  const replies = await plain.multi().rpush(`multi:${threadId}`, slotBuffer)
    .pexpire(`multi:${threadId}`, TTL_MS).exec();
  return (replies?.[0]?.[1] as number) - 1;
};
const evalsha: Append = (threadId) =>
  handAppend(`hand:${threadId}`, slotBuffer, TTL_MS);
const evalshaAuto: Append = (threadId) =>
  handAppendAuto(`handauto:${threadId}`, slotBuffer, TTL_MS);
const viaBackend: Append = (threadId, slot) =>
  backend.bufferAppend(threadId, slot);

// Idempotency off: retryTimeoutMs 0 (sent once, no op records: a lost
// reply is the caller's problem) against the default (op records, retries),
// and with an appendId on every append.
const noRetries = await RedisBackend.open({
  redisUrl: server.url,
  prefix: "bench-off:",
  ttlMs: TTL_MS,
  maxSlotsPerThread: 1_000_000_000,
  maxThreads: 1_000_000,
  retryTimeoutMs: 0,
});
const withoutIdempotency: Append = (threadId, slot) =>
  noRetries.bufferAppend(threadId, slot);
let appendIds = 0;
const withAppendIds: Append = (threadId, slot) =>
  backend.bufferAppend(threadId, slot, { appendId: `msg-${appendIds++}` });

let iterations = 0;
/** Times only `work`; every 32 iterations empties the server (untimed). */
function measured(
  work: () => Promise<void>,
): (b: Deno.BenchContext) => Promise<void> {
  return async (b) => {
    if (++iterations % 32 === 0) {
      await plain.flushdb();
    }
    b.start();
    await work();
    b.end();
  };
}

for (const [shape, threads, run] of SHAPES) {
  const group = `redis: append 256 slots, ${shape}`;
  const bench = (name: string, append: Append, baseline = false) =>
    Deno.bench({
      name,
      group,
      baseline,
      fn: measured(() => run(append, threads)),
    });
  bench(
    "baseline: ioredis rpush then pexpire, each awaited",
    twoRoundTrips,
    true,
  );
  bench("ioredis multi().rpush().pexpire().exec()", transaction);
  bench("hand-written EVALSHA append (RPUSH + PEXPIRE)", evalsha);
  bench("hand-written EVALSHA append, enableAutoPipelining", evalshaAuto);
  bench("RedisBackend.bufferAppend (limits, index, TTL)", viaBackend);
}

// What exactly-once costs (issue 11): the same backend with idempotency off
// (retryTimeoutMs 0: no op records, no retries) is the baseline.
for (const [shape, threads, run] of SHAPES) {
  if (!shape.startsWith("100 threads")) continue;
  const group = `redis: idempotency, ${shape}`;
  const bench = (name: string, append: Append, baseline = false) =>
    Deno.bench({
      name,
      group,
      baseline,
      fn: measured(() => run(append, threads)),
    });
  bench(
    "baseline: RedisBackend, idempotency off (retryTimeoutMs 0)",
    withoutIdempotency,
    true,
  );
  bench(
    "RedisBackend, default (op records: retries apply once)",
    viaBackend,
  );
  bench("RedisBackend, default + an appendId on every append", withAppendIds);
}
