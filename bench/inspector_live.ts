/**
 * What the web inspector's live updates cost its server: a `cli serve`
 * process on a KV file (or a Redis server with `--redis`), one thread
 * appended to at a steady 200 slots/s from this process, and 0, 1 or 20
 * pages (server-sent event streams, read here) watching it. The server's CPU
 * is read from /proc/<pid>/stat over each phase; the figure that matters is
 * 20 pages minus no page (the watch, the decoding, the sending). Then the
 * watch alone: a bare `bufferWatch` in a process of its own; on Redis also
 * the floor under it, a bare ioredis subscriber on the thread's channel that
 * does nothing with what it hears (what receiving 200 messages/s costs a
 * Deno process here).
 *
 * ```sh
 * deno run -A bench/inspector_live.ts            # kv, 10 s a phase
 * deno run -A bench/inspector_live.ts --redis --seconds 5
 * ```
 *
 * Linux only (/proc). Prints one line per phase and the difference.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ContextBuffer, createSharedBackend } from "../mod.ts";
import type { BackendConfig } from "../config.ts";
import { redisKeys } from "../backends/_redis_keys.ts";
import { startRedisServer } from "../tests/_redis_server.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    redis: { type: "boolean", default: false },
    seconds: { type: "string", default: "10" },
    rate: { type: "string", default: "200" },
    pages: { type: "string", default: "20" },
  },
});
const SECONDS = Number(values.seconds);
const RATE = Number(values.rate);
const PAGES = Number(values.pages);
const CLI = new URL("../cli/main.ts", import.meta.url).pathname;
const TICKS_PER_SECOND = 100; // Linux's USER_HZ
const THREAD = "live-thread";

/** CPU seconds a process has used (user + system). */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

const dir = await Deno.makeTempDir({ prefix: "xp-inspector-bench-" });
await using redis = values.redis ? await startRedisServer() : undefined;
const config: BackendConfig = redis === undefined
  ? { backendType: "kv", kvPath: `${dir}/state.db`, prefix: "bench:" }
  : { backendType: "redis", redisUrl: redis.url, prefix: "bench:" };
// Five phases of appends overfill the default maxSlotsPerThread.
config.maxSlotsPerThread = 1_000_000;
await using writer = await createSharedBackend(config);
const buffer = new ContextBuffer<{ type: string; n: number; text: string }>(
  writer,
);
await buffer.append(THREAD, { type: "start", n: 0, text: "" }, {
  fromId: "bench",
  toId: "inspector",
});

const server = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-A",
    CLI,
    ...(redis === undefined
      ? ["--backend", "kv", "--kv-path", config.kvPath!]
      : ["--backend", "redis", "--redis-url", redis.url]),
    "--prefix",
    "bench:",
    "serve",
    "--json",
  ],
  stdin: "null",
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const lines = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
let first = "";
while (!first.includes("\n")) first += (await lines.read()).value ?? "";
const origin = new URL(JSON.parse(first).url).origin;

/** Appends at `RATE` a second for `seconds`, as steadily as timers allow. */
async function appendSteadily(seconds: number): Promise<number> {
  const total = Math.round(RATE * seconds);
  const start = performance.now();
  const pending: Promise<unknown>[] = [];
  for (let n = 0; n < total; n++) {
    const due = start + (n * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    pending.push(
      buffer.append(
        THREAD,
        { type: "tick", n, text: `slot ${n} of the bench` },
        {
          fromId: "bench",
          toId: "inspector",
        },
      ),
    );
  }
  await Promise.all(pending);
  return total;
}

/** A page's event stream: counts the slots it is sent. */
async function openPage(): Promise<
  { slots: () => number; close: () => Promise<void> }
> {
  const response = await fetch(`${origin}/api/events?thread=${THREAD}`);
  const reader = response.body!.pipeThrough(new TextDecoderStream())
    .getReader();
  let count = 0;
  let rest = "";
  const reading = (async () => {
    for (;;) {
      const chunk = await reader.read().catch(() => ({
        done: true,
        value: "",
      }));
      if (chunk.done) return;
      rest += chunk.value;
      let end;
      while ((end = rest.indexOf("\n\n")) >= 0) {
        const block = rest.slice(0, end);
        rest = rest.slice(end + 2);
        const data = /^data: (.*)$/m.exec(block);
        if (/^event: slots$/m.test(block) && data !== null) {
          count += JSON.parse(data[1]!).length;
        }
      }
    }
  })();
  return {
    slots: () => count,
    close: async () => {
      await reader.cancel().catch(() => {});
      await reading;
    },
  };
}

/**
 * The CPU of a process of its own (`deno eval <code>`, which prints a line
 * when it is ready) while the appends run, in % of a core.
 */
async function processCpu(name: string, code: string): Promise<number> {
  const watcher = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--config",
      new URL("../deno.json", import.meta.url).pathname,
      code,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const output = watcher.stdout.pipeThrough(new TextDecoderStream())
    .getReader();
  await output.read(); // ready
  await new Promise((r) => setTimeout(r, 500));
  const cpuBefore = await cpuSeconds(watcher.pid);
  const started = performance.now();
  await appendSteadily(SECONDS);
  const wall = (performance.now() - started) / 1000;
  await new Promise((r) => setTimeout(r, 300));
  const cpu = await cpuSeconds(watcher.pid) - cpuBefore;
  watcher.kill("SIGTERM");
  await watcher.status;
  await output.cancel().catch(() => {});
  const percent = (100 * cpu) / wall;
  console.log(
    `${name.padEnd(34)} its process ${
      percent.toFixed(2).padStart(5)
    }% of a core (${cpu.toFixed(2)} s in ${wall.toFixed(1)} s)`,
  );
  return percent;
}

/**
 * The baseline: the same appends watched by a bare `bufferWatch` in a
 * process of its own (no decoding, no HTTP): what the watch alone costs.
 */
function bareWatch(): Promise<number> {
  return processCpu(
    "baseline: a bare bufferWatch",
    `import { createSharedBackend } from ${
      JSON.stringify(new URL("../mod.ts", import.meta.url).href)
    };
      const backend = await createSharedBackend(${JSON.stringify(config)});
      let n = 0;
      console.log("watching");
      for await (const _ of backend.bufferWatch(${JSON.stringify(THREAD)})) n++;
      `,
  );
}

/**
 * The floor under a Redis watch: an ioredis subscriber on the tenant's and
 * the thread's channels (the append script announces to it as to a
 * watch), counting messages and nothing else.
 */
function bareSubscriber(url: string): Promise<number> {
  const keys = redisKeys("bench:");
  return processCpu(
    "floor: a bare ioredis subscriber",
    `import { Redis } from "ioredis";
      const subscriber = new Redis(${JSON.stringify(url)});
      let n = 0;
      subscriber.on("smessageBuffer", () => n++);
      await subscriber.ssubscribe(${JSON.stringify(keys.tenantChannel)}, ${
      JSON.stringify(keys.channelPrefix + THREAD)
    });
      console.log("subscribed");
      `,
  );
}

async function phase(name: string, pages: number, append: boolean) {
  const opened = await Promise.all(Array.from({ length: pages }, openPage));
  await new Promise((r) => setTimeout(r, 500)); // the watch starts
  const cpuBefore = await cpuSeconds(server.pid);
  const started = performance.now();
  const appended = append
    ? await appendSteadily(SECONDS)
    : (await new Promise((r) => setTimeout(r, SECONDS * 1000)), 0);
  const wall = (performance.now() - started) / 1000;
  await new Promise((r) => setTimeout(r, 300)); // the last batch goes out
  const cpu = await cpuSeconds(server.pid) - cpuBefore;
  const received = opened.map((page) => page.slots());
  await Promise.all(opened.map((page) => page.close()));
  const percent = (100 * cpu) / wall;
  console.log(
    `${name.padEnd(34)} server CPU ${
      percent.toFixed(2).padStart(5)
    }% of a core` +
      ` (${cpu.toFixed(2)} s in ${wall.toFixed(1)} s)` +
      (append ? `, ${appended} appends` : "") +
      (pages > 0
        ? `, each page got ${Math.min(...received)}..${
          Math.max(...received)
        } slots`
        : ""),
  );
  return percent;
}

console.log(
  `inspector live updates: ${config.backendType}, ${RATE} appends/s, ${SECONDS} s a phase`,
);
try {
  const idle = await phase("idle (no page, no appends)", 0, false);
  const none = await phase("appends, no page", 0, true);
  const one = await phase("appends, 1 page", 1, true);
  const many = await phase(`appends, ${PAGES} pages`, PAGES, true);
  const bare = await bareWatch();
  if (redis !== undefined) await bareSubscriber(redis.url);
  console.log(
    `live updates to ${PAGES} pages: ${(many - none).toFixed(2)}% of a core ` +
      `over no page (1 page: ${(one - none).toFixed(2)}%; idle server ${
        idle.toFixed(2)
      }%); without the watch itself (${bare.toFixed(2)}%): ${
        (many - none - bare).toFixed(2)
      }%`,
  );
} finally {
  server.kill("SIGINT");
  await server.status;
  await lines.cancel().catch(() => {});
  await Deno.remove(dir, { recursive: true });
}
