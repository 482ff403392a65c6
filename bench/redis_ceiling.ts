/**
 * The Redis server's own ceiling for an append: `redis-benchmark -P 16`
 * sending EVALSHA appends, no client library in the way. Used by
 * `_append_redis.ts` (printed in the same run as the benches), or on its own:
 * `deno run -A bench/redis_ceiling.ts` (starts its own redis-server).
 *
 * @module
 */

import { startRedisServer } from "../tests/_redis_server.ts";

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

if (import.meta.main) {
  await using server = await startRedisServer();
  for (const { name, opsPerSecond } of await measureCeilings(server.port)) {
    console.log(`redis-benchmark -P 16: ${name}: ${opsPerSecond} ops/s`);
  }
}
