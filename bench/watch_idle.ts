/**
 * What idle watches cost: 1 000 watches of 1 000 threads (each holding one
 * slot) on one backend, nothing appended, CPU time of this process over
 * 10 s, against the same backend open with no watch (the baseline). On Redis
 * the server's CPU is shown too (read from /proc).
 *
 * ```sh
 * deno run -A bench/watch_idle.ts                    # redis, kv, memory
 * deno run -A bench/watch_idle.ts kv --watches 100 --seconds 5
 * ```
 *
 * CPU time is `process.cpuUsage()` (user + system, every thread of the
 * process); "% of a core" is CPU time over wall time. Linux only for the
 * server's figure.
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { InMemoryBackend } from "../backends/memory.ts";
import type { SharedBackend } from "../protocol.ts";
import { startRedisServer } from "../tests/_redis_server.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    watches: { type: "string", default: "1000" },
    seconds: { type: "string", default: "10" },
  },
});
const WATCHES = Number(values.watches);
const SECONDS = Number(values.seconds);

/** CPU seconds this process used (user + system). */
function ownCpu(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

/** CPU seconds a process used, from /proc (Linux). */
function cpuOf(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** % of a core this process (and `pid`, if given) used over SECONDS. */
async function measure(
  pid?: number,
): Promise<{ own: number; server: number | undefined }> {
  const own = ownCpu();
  const server = pid === undefined ? undefined : cpuOf(pid);
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, SECONDS * 1000));
  const wall = (performance.now() - started) / 1000;
  return {
    own: ((ownCpu() - own) / wall) * 100,
    server: pid === undefined ? undefined : ((cpuOf(pid) - server!) / wall) *
      100,
  };
}

async function idle(
  name: string,
  backend: SharedBackend,
  serverPid?: number,
): Promise<void> {
  for (let i = 0; i < WATCHES; i++) {
    await backend.bufferAppend(`idle-${i}`, new Uint8Array([i & 0xff]));
  }
  // Let the setup's garbage be collected before the baseline.
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const none = await measure(serverPid);
  const controller = new AbortController();
  const watches = Array.from(
    { length: WATCHES },
    (_, i) => backend.bufferWatch(`idle-${i}`, { signal: controller.signal }),
  );
  const pending = watches.map((watch) => watch.next());
  // Let every watch start (subscribe, read its thread's length).
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const watching = await measure(serverPid);
  controller.abort();
  await Promise.all(pending);
  const pct = (x: number | undefined) => x === undefined ? "-" : x.toFixed(2);
  console.log(
    `| ${name} | ${pct(none.own)} | ${pct(watching.own)} | ${
      pct(watching.own - none.own)
    } | ${pct(none.server)} | ${pct(watching.server)} |`,
  );
}

const backends = positionals.length > 0
  ? positionals
  : ["redis", "kv", "memory"];
console.log(
  `${WATCHES} idle watches of ${WATCHES} threads on one backend, CPU over ${SECONDS} s (% of a core):\n`,
);
console.log(
  "| backend | no watch (baseline) | watching | difference | server, no watch | server, watching |",
);
console.log("|---|---|---|---|---|---|");
for (const name of backends) {
  if (name === "redis") {
    await using server = await startRedisServer();
    const { RedisBackend } = await import("../backends/redis.ts");
    await using backend = await RedisBackend.open({
      redisUrl: server.url,
      prefix: `idle-${Date.now()}:`,
      maxThreads: WATCHES + 10,
    });
    await idle("redis", backend, server.pid);
  } else if (name === "kv") {
    const dir = await Deno.makeTempDir({ prefix: "xp-watch-idle-" });
    try {
      const { KvBackend } = await import("../backends/kv.ts");
      await using backend = await KvBackend.open({
        kvPath: `${dir}/store.db`,
        maxThreads: WATCHES + 10,
      });
      await idle("kv (a file)", backend);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  } else if (name === "memory") {
    await using backend = new InMemoryBackend({ maxThreads: WATCHES + 10 });
    await idle("memory", backend);
  } else {
    throw new RangeError(
      `Unknown backend ${JSON.stringify(name)}: expected redis, kv or memory`,
    );
  }
}
