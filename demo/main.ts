/**
 * The demo (`deno task demo`): a small agent pipeline in several Workers
 * (isolates) on one shared store, then a verification of the store and a
 * short report.
 *
 * Each Worker opens its own backend on the same store and plays agents
 * through `ThreadRegistry` and `ContextBuffer` (demo/_agents.ts): consoles
 * start chains to a router, the router extends them to a greeter or a
 * calculator, which wait for their call (`ContextBuffer.waitFor`) and answer
 * by pruning the chain, while the router waits for the answer; it replies
 * the same way, and the console waits for the reply. Every Worker plays every
 * conversation at once, so several Workers append to the same threads and
 * create the same chains at the same time. The main isolate then reads the
 * store back and checks it against what the Workers were told
 * (demo/verify.ts); it exits 1 when a check fails.
 *
 * ```sh
 * deno task demo                                  # kv: a temporary KV file, removed afterwards
 * deno task demo --workers 8 --slots 20000
 * deno task demo --backend redis --redis-url redis://localhost:6379
 * deno task demo --backend memory                 # one isolate: memory is not shared
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { main as inspector } from "../cli/main.ts";
import {
  type BackendConfig,
  createSharedBackend,
  type SharedBackend,
} from "../mod.ts";
import { type AgentJob, type AgentReport, playAgents } from "./_agents.ts";
import { type DemoJournal, verifyStore } from "./verify.ts";

/** Exit codes of the demo. */
export const EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3 } as const;

const FAULTS = ["garbage-slot", "lost-slot", "broken-registry"] as const;
type Fault = typeof FAULTS[number];

const HELP = `Usage: deno task demo [options]

Runs a small agent pipeline in several Workers on one shared store, then
reads the store back, verifies it and prints a report. Exits 0 when the
verification passes, 1 when it fails, 2 on bad flags, 3 when the store
cannot be opened.

Options:
  --backend kv|redis|memory  the store (default: kv, a temporary KV file)
  --kv-path PATH             kv: use this KV file (kept; the demo's data is removed)
  --redis-url URL            redis: the server (default: $XP_REDIS_URL, $REDIS_URL,
                             or redis://localhost:6379)
  --workers N                Workers (isolates), each with its own backend (default 4)
  --slots N                  slots to append in all, 4 per turn (default 2000)
  --conversations N          conversations shared by all Workers (default 8)
  --keep                     keep the demo's data (and temporary KV file) to inspect
                             it with 'deno task cli'
  --serve                    keep it and serve the web inspector on it at the end
                             (prints its URL; Ctrl-C stops it)
  --inject-fault KIND        corrupt the store before verifying, to see the
                             verification fail: ${FAULTS.join(", ")}
  -h, --help                 this help

memory: a memory backend is one isolate's Maps, so the agents all run in the
main isolate (one agent group per --workers) and say so.`;

interface DemoOptions {
  backend: "kv" | "redis" | "memory";
  kvPath: string | undefined;
  redisUrl: string;
  workers: number;
  slots: number;
  conversations: number;
  keep: boolean;
  serve: boolean;
  fault: Fault | undefined;
}

class UsageError extends Error {}

function parse(args: string[]): DemoOptions | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        backend: { type: "string", default: "kv" },
        "kv-path": { type: "string" },
        "redis-url": { type: "string" },
        workers: { type: "string", default: "4" },
        slots: { type: "string", default: "2000" },
        conversations: { type: "string", default: "8" },
        keep: { type: "boolean", default: false },
        serve: { type: "boolean", default: false },
        "inject-fault": { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (error) {
    throw new UsageError(
      error instanceof Error ? error.message : String(error),
    );
  }
  if (values.help) return "help";
  const backend = values.backend;
  if (backend !== "kv" && backend !== "redis" && backend !== "memory") {
    throw new UsageError(
      `Invalid --backend: expected kv, redis or memory, got ${
        JSON.stringify(backend)
      }`,
    );
  }
  const fault = values["inject-fault"];
  if (fault !== undefined && !(FAULTS as readonly string[]).includes(fault)) {
    throw new UsageError(
      `Invalid --inject-fault: expected one of ${FAULTS.join(", ")}, got ${
        JSON.stringify(fault)
      }`,
    );
  }
  if (values["kv-path"] !== undefined && backend !== "kv") {
    throw new UsageError("--kv-path needs --backend kv");
  }
  if (values["redis-url"] !== undefined && backend !== "redis") {
    throw new UsageError("--redis-url needs --backend redis");
  }
  return {
    backend,
    kvPath: values["kv-path"],
    redisUrl: values["redis-url"] ?? env("XP_REDIS_URL") ?? env("REDIS_URL") ??
      "redis://localhost:6379",
    workers: count("--workers", values.workers, 1, 64),
    slots: count("--slots", values.slots, 4, 1_000_000),
    conversations: count("--conversations", values.conversations, 1, 200),
    keep: values.keep || values.serve,
    serve: values.serve,
    fault: fault as Fault | undefined,
  };
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env
  }
}

function count(flag: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new UsageError(
      `Invalid ${flag}: expected an integer from ${min} to ${max}, got ${
        JSON.stringify(text)
      }`,
    );
  }
  return value;
}

const encoder = new TextEncoder();
const out = (line = "") => console.log(line);
const err = (text: string) => Deno.stderr.writeSync(encoder.encode(text));
const number = (n: number) => n.toLocaleString("en-US");

/** Redis URL without its password, for messages. */
function showUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.password = "";
    parsed.username = "";
    return parsed.href.replace(/\/$/, "");
  } catch {
    return "(an unparsable URL)";
  }
}

/** Live progress on stderr: a `\r` line on a terminal, a line per quarter otherwise. */
class Progress {
  readonly #total: number;
  readonly #tty = Deno.stderr.isTerminal();
  #started = performance.now();
  #done = 0;
  #shown = -1;
  #lastDraw = 0;

  constructor(total: number) {
    this.#total = total;
  }

  /** Restarts the clock: the Workers are released now. */
  start(): void {
    this.#started = performance.now();
  }

  add(appended: number): void {
    this.#done += appended;
    const now = performance.now();
    if (this.#tty) {
      if (now - this.#lastDraw >= 80 || this.#done === this.#total) {
        this.#lastDraw = now;
        const width = 24;
        const filled = Math.round(width * this.#done / this.#total);
        err(
          `\r  [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${
            number(this.#done)
          }/${number(this.#total)} slots  ${number(this.#rate(now))}/s `,
        );
      }
      return;
    }
    const quarter = Math.floor(4 * this.#done / this.#total);
    if (quarter > this.#shown && quarter > 0) {
      this.#shown = quarter;
      err(
        `  ${number(this.#done)}/${number(this.#total)} slots appended (${
          number(this.#rate(now))
        }/s)\n`,
      );
    }
  }

  end(): void {
    if (this.#tty) err("\n");
  }

  #rate(now: number): number {
    const seconds = (now - this.#started) / 1000;
    return seconds > 0 ? Math.round(this.#done / seconds) : 0;
  }
}

interface WorkerMessage {
  type: "ready" | "progress" | "done" | "error";
  appended?: number;
  report?: AgentReport;
  error?: string;
}

/** How long each phase of the Workers may take before the demo gives up. */
const PHASE_TIMEOUT_MS = 120_000;

/** Runs one job per Worker; resolves with their reports; terminates them all. */
async function runWorkers(
  config: BackendConfig,
  jobs: AgentJob[],
  progress: Progress,
  onStart: () => void,
): Promise<AgentReport[]> {
  const workers = jobs.map(() =>
    new Worker(new URL("./_agent_worker.ts", import.meta.url), {
      type: "module",
    })
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const phase = (type: "ready" | "done") =>
      workers.map((worker, i) =>
        new Promise<WorkerMessage>((resolve, reject) => {
          worker.onmessage = (event: MessageEvent<WorkerMessage>) => {
            const message = event.data;
            if (message.type === "progress") {
              progress.add(message.appended ?? 0);
            } else if (message.type === type) {
              resolve(message);
            } else {
              reject(
                new Error(`Worker ${i}: ${message.error ?? message.type}`),
              );
            }
          };
          worker.onerror = (event: ErrorEvent) => {
            event.preventDefault();
            reject(new Error(`Worker ${i} failed: ${event.message}`));
          };
        })
      );
    const within = <T>(pending: Promise<T>[], what: string): Promise<T[]> =>
      Promise.race([
        Promise.all(pending),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new Error(
                  `the Workers did not ${what} within ${
                    PHASE_TIMEOUT_MS / 1000
                  } s`,
                ),
              ),
            PHASE_TIMEOUT_MS,
          );
        }),
      ]).finally(() => clearTimeout(timer));

    const ready = phase("ready");
    workers.forEach((worker, i) =>
      worker.postMessage({ type: "start", config, job: jobs[i] })
    );
    await within(ready, "open their backends");
    const done = phase("done");
    onStart();
    for (const worker of workers) worker.postMessage({ type: "go" });
    return (await within(done, "finish")).map((message) => message.report!);
  } finally {
    clearTimeout(timer);
    for (const worker of workers) worker.terminate();
  }
}

/** Corrupts the store the way `fault` says (for the tests of the verification). */
async function injectFault(
  backend: SharedBackend,
  fault: Fault,
): Promise<string> {
  const threads = (await backend.bufferListThreads()).sort();
  switch (fault) {
    case "garbage-slot": {
      const thread = threads[0]!;
      const index = await backend.bufferAppend(
        thread,
        new Uint8Array([0xc1, 0xff, 0x00]),
      );
      return `appended 3 garbage bytes to thread ${thread} (slot ${index})`;
    }
    case "lost-slot": {
      for (const thread of threads) {
        const slots = await backend.bufferGetThread(thread);
        if (slots.length < 2) continue;
        const lost = Math.floor(slots.length / 2);
        await backend.bufferDeleteThread(thread);
        for (const [i, slot] of slots.entries()) {
          if (i !== lost) await backend.bufferAppend(thread, slot);
        }
        return `rewrote thread ${thread} without its slot ${lost}`;
      }
      throw new Error("no thread with 2 slots to lose one of");
    }
    case "broken-registry": {
      const entries = [...await backend.registryListAll()].sort((a, b) =>
        a[1] < b[1] ? -1 : 1
      );
      const [[, chainA], [uuidB, chainB]] = entries as [
        [string, string],
        [string, string],
      ];
      await backend.registrySet(chainA, uuidB);
      return `moved chain "${chainA}" to the uuid of "${chainB}" (${uuidB})`;
    }
  }
}

/** Serves the web inspector (`cli serve`) on the demo's store until Ctrl-C (`--serve`). */
async function serveInspector(
  options: DemoOptions,
  config: BackendConfig,
  backend: SharedBackend,
): Promise<void> {
  const stop = new AbortController();
  const onInterrupt = () => stop.abort();
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    // memory is this isolate's: the inspector gets the backend itself.
    await inspector(
      options.backend === "memory" ? ["serve"] : [
        "--backend",
        options.backend,
        ...(options.backend === "kv"
          ? ["--kv-path", config.kvPath!]
          : ["--redis-url", options.redisUrl]),
        "--prefix",
        config.prefix!,
        "serve",
      ],
      {
        signal: stop.signal,
        ...(options.backend === "memory" ? { backend } : {}),
      },
    );
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
  }
}

/**
 * Runs the demo with command-line `args`.
 *
 * @param args The flags (see `--help`).
 * @returns The exit code: 0 verified, 1 failed, 2 bad flags, 3 store cannot be opened.
 */
export async function main(args: string[]): Promise<number> {
  let options: DemoOptions | "help";
  try {
    options = parse(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    err(`demo: ${error.message}\nRun 'deno task demo --help' for usage.\n`);
    return EXIT.usage;
  }
  if (options === "help") {
    out(HELP);
    return EXIT.ok;
  }

  // The store, and where it lives.
  const prefix = `demo-${crypto.randomUUID().slice(0, 8)}:`;
  let tempDir: string | undefined;
  let config: BackendConfig;
  let where: string;
  switch (options.backend) {
    case "kv": {
      let kvPath = options.kvPath;
      if (kvPath === undefined) {
        tempDir = await Deno.makeTempDir({ prefix: "xp-demo-" });
        kvPath = `${tempDir}/demo.db`;
        where = `${kvPath}, a temporary file${
          options.keep ? "" : " removed afterwards"
        }`;
      } else {
        where = kvPath;
      }
      config = { backendType: "kv", kvPath, prefix };
      break;
    }
    case "redis":
      config = { backendType: "redis", redisUrl: options.redisUrl, prefix };
      where = showUrl(options.redisUrl);
      break;
    case "memory":
      config = { backendType: "memory", prefix };
      where = "this isolate's Maps";
      break;
  }

  let backend: SharedBackend;
  try {
    backend = await createSharedBackend(config);
  } catch (error) {
    err(
      `demo: cannot open the ${options.backend} store: ${
        error instanceof Error ? error.message : String(error)
      }\n`,
    );
    if (tempDir !== undefined) await Deno.remove(tempDir, { recursive: true });
    return EXIT.unreachable;
  }

  const inWorkers = options.backend !== "memory";
  const turns = Math.ceil(options.slots / 4);
  const jobs: AgentJob[] = Array.from({ length: options.workers }, (_, w) => ({
    worker: w,
    turns: Math.floor(turns / options.workers) +
      (w < turns % options.workers ? 1 : 0),
    conversations: options.conversations,
    lanes: 4,
  }));
  const total = 4 * turns;

  out(
    inWorkers
      ? `shared-backend demo: ${options.workers} Workers playing agents on one ${options.backend} store`
      : `shared-backend demo: ${options.workers} agent groups in ONE isolate (memory is one isolate's Maps; --backend kv or redis runs Workers)`,
  );
  out(`  store: ${where}, prefix "${prefix}"`);

  // Ctrl-C: the temporary KV file goes too.
  const interrupted = () => {
    if (tempDir !== undefined && !options.keep) {
      try {
        Deno.removeSync(tempDir, { recursive: true });
      } catch {
        // already gone
      }
    }
    err("\ndemo: interrupted\n");
    Deno.exit(130);
  };
  if (Deno.build.os !== "windows") {
    Deno.addSignalListener("SIGINT", interrupted);
  }

  let code: number = EXIT.failed;
  try {
    const progress = new Progress(total);
    let started = performance.now();
    let reports: AgentReport[];
    if (inWorkers) {
      reports = await runWorkers(config, jobs, progress, () => {
        started = performance.now();
        progress.start();
      });
    } else {
      started = performance.now();
      progress.start();
      reports = await Promise.all(
        jobs.map((job) => playAgents(backend, job, () => progress.add(1))),
      );
    }
    const seconds = (performance.now() - started) / 1000;
    progress.end();

    if (options.fault !== undefined) {
      err(`  injected fault: ${await injectFault(backend, options.fault)}\n`);
    }

    const journal: DemoJournal = {
      appends: reports.flatMap((r) => r.appends),
      chains: reports.flatMap((r) => r.chains),
      mismatches: reports.flatMap((r) => r.mismatches),
    };
    const result = await verifyStore(backend, journal);

    const writers = new Map<string, Set<number>>();
    for (const report of reports) {
      for (const { threadId } of report.appends) {
        let set = writers.get(threadId);
        if (set === undefined) writers.set(threadId, set = new Set());
        set.add(report.worker);
      }
    }
    const perThread = [...writers.values()].map((s) => s.size);
    const fewest = Math.min(...perThread);
    const most = Math.max(...perThread);
    const unit = inWorkers ? "Workers" : "agent groups";
    const appended = journal.appends.length;

    out();
    out(`backend           ${options.backend}: ${where}`);
    out(
      inWorkers
        ? `Workers           ${options.workers} isolates x 4 agent lanes, ${options.conversations} conversations shared by all`
        : `Workers           none: ${options.workers} agent groups x 4 lanes in this one isolate`,
    );
    out(
      `slots appended    ${number(appended)} in ${seconds.toFixed(2)} s: ${
        number(Math.round(appended / seconds))
      } appends/s`,
    );
    out(
      `threads           ${number(result.threads)}, each written by ${
        fewest === most ? fewest : `${fewest}-${most}`
      } ${unit} at once`,
    );
    out(
      `registry entries  ${
        number(result.registryEntries)
      } chain <-> uuid pairs, ${
        reports.reduce((n, r) => n + r.prunes, 0)
      } prunes`,
    );
    if (result.ok) {
      out(`verified          OK`);
      out(
        `  - ${
          number(result.threads)
        } threads: indexes dense 0..n-1, each once, every slot at the index its append returned`,
      );
      out(`  - ${number(result.slots)} slots decode as ContextBuffer messages`);
      out(
        `  - ${
          number(reports.reduce((n, r) => n + r.received, 0))
        } messages received with waitFor, each at the index its append returned`,
      );
      out(
        `  - ${
          number(result.registryEntries)
        } chains map both ways, each to the one uuid every ${
          unit.slice(0, -1)
        } was given`,
      );
      code = EXIT.ok;
    } else {
      out(`verified          FAILED: ${result.problems.length} problems`);
      for (const problem of result.problems.slice(0, 10)) out(`  - ${problem}`);
      if (result.problems.length > 10) {
        out(`  ... and ${result.problems.length - 10} more`);
      }
      code = EXIT.failed;
    }
  } catch (error) {
    err(
      `\ndemo: the run failed: ${
        error instanceof Error ? error.message : String(error)
      }\n`,
    );
    code = EXIT.failed;
  } finally {
    if (options.keep) {
      out(
        `kept: inspect with  deno task cli --backend ${options.backend}${
          options.backend === "kv" ? ` --kv-path ${config.kvPath}` : ""
        }${
          options.backend === "redis"
            ? ` --redis-url ${showUrl(options.redisUrl)}`
            : ""
        } --prefix ${prefix} stats`,
      );
    } else {
      await backend.bufferClear().catch(() => {});
      await backend.registryClear().catch(() => {});
    }
    if (Deno.build.os !== "windows") {
      Deno.removeSignalListener("SIGINT", interrupted);
    }
    if (options.serve) await serveInspector(options, config, backend);
    await backend.close();
    if (tempDir !== undefined && !options.keep) {
      await Deno.remove(tempDir, { recursive: true });
    }
  }
  return code;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
