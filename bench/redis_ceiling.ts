/**
 * The Redis server's own ceiling for an append: `redis-benchmark -P 16`
 * sending EVALSHA appends, no client library in the way. Used by
 * `_append_redis.ts` (printed in the same run as the benches), or on its own:
 * `deno run -A bench/redis_ceiling.ts` (starts its own redis-server).
 *
 * With `--backend`, it also measures `RedisBackend.bufferAppend` (256 appends
 * in flight, to 1 thread and to 100 threads, as in the bench groups) in
 * rounds interleaved with the ceiling, and prints each round's ratio, the
 * median, and the CPU time per append of the backend's process and of the
 * server (`/proc/<pid>/stat`): on a shared, noisy machine the ratio of two
 * figures measured seconds apart moves by tens of percent, the CPU time per
 * append much less.
 *
 * ```sh
 * deno run -A bench/redis_ceiling.ts --backend --rounds 5
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import { RedisBackend } from "../backends/redis.ts";
import { type RedisServer, startRedisServer } from "../tests/_redis_server.ts";
import { allInFlight } from "./_shapes.ts";

/** The hand-written append a user would write: RPUSH, PEXPIRE, return the index. */
export const HAND_WRITTEN_APPEND = `
local len = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return len - 1
`;

/** One redis-benchmark figure. */
export interface Ceiling {
  /** What was sent. */
  name: string;
  /** Requests per second, as redis-benchmark reports them. */
  opsPerSecond: number;
}

async function sha1(text: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    new TextEncoder().encode(text),
  );
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0"))
    .join("");
}

async function redisCli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await new Deno.Command("redis-cli", {
    args: ["-h", "127.0.0.1", "-p", String(port), ...args],
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(stdout).trim();
}

async function redisBenchmark(
  port: number,
  requests: number,
  threads: number,
  command: string[],
): Promise<number> {
  const { stdout, code } = await new Deno.Command("redis-benchmark", {
    args: [
      "-h",
      "127.0.0.1",
      "-p",
      String(port),
      "-n",
      String(requests),
      "-c",
      "50",
      "-P",
      "16",
      "-q",
      ...(threads > 1 ? ["-r", String(threads)] : []),
      ...command,
    ],
    stdout: "piped",
    stderr: "null",
  }).output();
  const text = new TextDecoder().decode(stdout);
  const match = text.match(/([\d.]+) requests per second/g)?.at(-1)?.match(
    /[\d.]+/,
  );
  if (code !== 0 || !match) {
    throw new Error(`redis-benchmark failed (${code}): ${text.slice(-300)}`);
  }
  return Number(match[0]);
}

/**
 * Measures, with `redis-benchmark -P 16 -c 50`, EVALSHA appends of a
 * 200-byte slot with the hand-written RPUSH + PEXPIRE script, to 1 thread
 * and to 100 threads (`__rand_int__`, `-r 100`). (The backend's own append
 * script takes its appends as one binary MessagePack argument, which
 * redis-benchmark's command line cannot carry.)
 *
 * @param port The server's port on 127.0.0.1.
 * @param requests Requests per figure.
 * @returns The figures, in ops/s.
 */
export async function measureCeilings(
  port: number,
  requests = 200_000,
): Promise<Ceiling[]> {
  const slot = "x".repeat(200);
  const handSha = await sha1(HAND_WRITTEN_APPEND);
  await redisCli(port, "SCRIPT", "LOAD", HAND_WRITTEN_APPEND);
  const figures: Ceiling[] = [];
  for (const threads of [1, 100]) {
    const key = threads === 1 ? "one" : "t:__rand_int__";
    figures.push({
      name: `hand-written EVALSHA append (RPUSH + PEXPIRE), ${threads} thread${
        threads > 1 ? "s" : ""
      }`,
      opsPerSecond: await redisBenchmark(port, requests, threads, [
        "EVALSHA",
        handSha,
        "1",
        `ceiling-hand:${key}`,
        slot,
        "86400000",
      ]),
    });
  }
  await redisCli(port, "FLUSHALL");
  return figures;
}

/** CPU seconds a process has used (user + system), from /proc (Linux). */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The median of some figures. */
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/**
 * Rounds of: the ceiling to `threads` threads, then `iterations` x 256
 * appends in flight through a backend; prints each round and the medians.
 */
async function againstBackend(
  server: RedisServer,
  threads: number,
  rounds: number,
  iterations: number,
): Promise<void> {
  await using backend = await RedisBackend.open({
    redisUrl: server.url,
    prefix: `ceiling-backend-${threads}:`,
    ttlMs: 86_400_000,
    maxSlotsPerThread: 1_000_000_000,
    maxThreads: 1_000_000,
  });
  const ids = Array.from({ length: threads }, (_, i) => `t-${i}`);
  const append = (threadId: string, slot: Uint8Array) =>
    backend.bufferAppend(threadId, slot);
  for (let i = 0; i < 300; i++) await allInFlight(append, ids); // warm up
  const ratios: number[] = [];
  const rates: number[] = [];
  const clientUs: number[] = [];
  const serverUs: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const ceiling = (await measureCeilings(server.port, 100_000))
      .find(({ name }) =>
        name.endsWith(threads === 1 ? "1 thread" : "threads")
      )!
      .opsPerSecond;
    const serverBefore = server.pid === undefined
      ? NaN
      : await cpuSeconds(server.pid);
    const before = process.cpuUsage();
    const started = performance.now();
    for (let i = 0; i < iterations; i++) await allInFlight(append, ids);
    const seconds = (performance.now() - started) / 1000;
    const used = process.cpuUsage(before);
    const appends = iterations * 256;
    const rate = appends / seconds;
    rates.push(rate);
    ratios.push(rate / ceiling);
    clientUs.push((used.user + used.system) / appends);
    serverUs.push(
      server.pid === undefined
        ? NaN
        : ((await cpuSeconds(server.pid)) - serverBefore) / appends * 1e6,
    );
    console.log(
      `${threads} thread${threads > 1 ? "s" : ""}, round ${
        round + 1
      }: ceiling ${Math.round(ceiling)}/s, backend ${
        Math.round(rate)
      } slots/s: ${(rate / ceiling).toFixed(2)}x`,
    );
  }
  console.log(
    `${threads} thread${threads > 1 ? "s" : ""}, 256 in flight: median ${
      median(ratios).toFixed(2)
    }x the ceiling (backend ${
      Math.round(median(rates))
    } slots/s); CPU per append: backend process ${
      median(clientUs).toFixed(2)
    } us, redis-server ${median(serverUs).toFixed(2)} us`,
  );
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      backend: { type: "boolean", default: false },
      rounds: { type: "string", default: "5" },
      iterations: { type: "string", default: "600" },
    },
  });
  // A server of its own: its pid gives the server's CPU time.
  await using server = await startRedisServer({ own: true });
  if (!values.backend) {
    for (const { name, opsPerSecond } of await measureCeilings(server.port)) {
      console.log(`redis-benchmark -P 16: ${name}: ${opsPerSecond} ops/s`);
    }
  } else {
    for (const threads of [100, 1]) {
      await againstBackend(
        server,
        threads,
        Number(values.rounds),
        Number(values.iterations),
      );
    }
  }
}
