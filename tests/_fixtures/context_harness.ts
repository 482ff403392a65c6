// Test harness of tests/context_test.ts and tests/registry_test.ts: the three
// stores (memory, kv, redis) the ContextBuffer and ThreadRegistry suites run
// on, and a runner for the Workers of tests/_fixtures/context_worker.ts.

import type { BackendConfig } from "../../config.ts";
import { createSharedBackend } from "../../factory.ts";
import type { SharedBackend } from "../../protocol.ts";
import { startRedisServer } from "../_redis_server.ts";
import type { WorkerTask, WorkerTaskResult } from "./context_tasks.ts";

/** One store the suites run on, open for the length of one `Deno.test`. */
export interface Store extends AsyncDisposable {
  /** `memory`, `kv` or `redis`. */
  readonly name: string;
  /**
   * The config that reaches this store under `prefix`: plain data, so that a
   * Worker can open the same store with it.
   */
  config(prefix: string, extra?: BackendConfig): BackendConfig;
  /**
   * Whether backends opened from `config` in several isolates share the
   * data (false for memory: each isolate has its own maps).
   */
  readonly sharedAcrossIsolates: boolean;
}

/** A store the suites can run on, or the reason they cannot. */
export interface StoreVariant {
  name: string;
  /** Why the variant is skipped; `undefined` when it runs. */
  skip: string | undefined;
  start(): Promise<Store>;
}

const MEMORY: StoreVariant = {
  name: "memory",
  skip: undefined,
  start: () =>
    Promise.resolve({
      name: "memory",
      sharedAcrossIsolates: false,
      config: (prefix, extra = {}) => ({
        ttlMs: 0,
        ...extra,
        backendType: "memory",
        prefix,
      }),
      [Symbol.asyncDispose]: () => Promise.resolve(),
    }),
};

async function kvVariant(): Promise<StoreVariant> {
  let skip: string | undefined;
  try {
    const probe = await createSharedBackend({
      backendType: "kv",
      kvPath: ":memory:",
    });
    await probe.close();
  } catch (error) {
    skip = `the kv backend cannot be opened here: ${message(error)}`;
  }
  return {
    name: "kv",
    skip,
    async start(): Promise<Store> {
      const dir = await Deno.makeTempDir({ prefix: "xp-context-kv-" });
      const kvPath = `${dir}/state.db`;
      return {
        name: "kv",
        sharedAcrossIsolates: true,
        config: (prefix, extra = {}) => ({
          ttlMs: 0,
          ...extra,
          backendType: "kv",
          kvPath,
          prefix,
        }),
        [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
      };
    },
  };
}

async function redisVariant(): Promise<StoreVariant> {
  let skip: string | undefined;
  try {
    await using server = await startRedisServer();
    const probe = await createSharedBackend({
      backendType: "redis",
      redisUrl: server.url,
    });
    await probe.close();
  } catch (error) {
    skip = `the redis backend cannot be used here: ${message(error)}`;
  }
  return {
    name: "redis",
    skip,
    async start(): Promise<Store> {
      const server = await startRedisServer();
      return {
        name: "redis",
        sharedAcrossIsolates: true,
        config: (prefix, extra = {}) => ({
          ttlMs: 0,
          ...extra,
          backendType: "redis",
          redisUrl: server.url,
          prefix,
        }),
        [Symbol.asyncDispose]: () => server.stop(),
      };
    },
  };
}

/**
 * The variants to run: memory always, kv and redis when their backend can be
 * opened here (probed once, at load); a skipped variant's reason is printed.
 */
export async function storeVariants(): Promise<StoreVariant[]> {
  const variants = [MEMORY, await kvVariant(), await redisVariant()];
  for (const variant of variants) {
    if (variant.skip !== undefined) {
      console.warn(
        `%c${variant.name} variants skipped: ${variant.skip}`,
        "color: yellow",
      );
    }
  }
  return variants;
}

/** Registers `suite` as one `Deno.test` per store variant, ignored (with its reason) when unavailable. */
export function testOnEveryStore(
  title: string,
  variants: StoreVariant[],
  suite: (t: Deno.TestContext, store: Store) => Promise<void>,
): void {
  for (const variant of variants) {
    Deno.test({
      name: variant.skip === undefined
        ? `${title} on ${variant.name}`
        : `${title} on ${variant.name} (ignored: ${variant.skip})`,
      ignore: variant.skip !== undefined,
      fn: async (t) => {
        await using store = await variant.start();
        await suite(t, store);
      },
    });
  }
}

/** A fresh prefix for one step, so steps on a shared store never meet. */
export function freshPrefix(label: string): string {
  return `xp-context-test:${label}:${crypto.randomUUID().slice(0, 8)}:`;
}

/** Opens a backend on `store` under `prefix`, closed by `await using`. */
export function openBackend(
  store: Store,
  prefix: string,
  extra?: BackendConfig,
): Promise<SharedBackend> {
  return createSharedBackend(store.config(prefix, extra));
}

/**
 * Runs one task in each of several real Workers at once: every Worker opens
 * its backend, then all are released together, so their calls overlap.
 * Resolves with the results in task order; terminates every Worker.
 */
export async function runInWorkers<R extends WorkerTaskResult>(
  config: BackendConfig,
  tasks: WorkerTask[],
): Promise<R[]> {
  const workers = tasks.map(() =>
    new Worker(new URL("./context_worker.ts", import.meta.url), {
      type: "module",
    })
  );
  try {
    const ready = workers.map((worker) => nextMessage(worker));
    workers.forEach((worker, i) =>
      worker.postMessage({ type: "start", config, task: tasks[i] })
    );
    for (const message of await withTimeout(ready, "open their backends")) {
      if (message.type !== "ready") throw workerError(message);
    }
    const done = workers.map((worker) => nextMessage(worker));
    for (const worker of workers) worker.postMessage({ type: "go" });
    const results: R[] = [];
    for (const message of await withTimeout(done, "run their tasks")) {
      if (message.type !== "done") throw workerError(message);
      results.push(message.result as R);
    }
    return results;
  } finally {
    for (const worker of workers) worker.terminate();
  }
}

/** How long the Workers may take per phase before the test fails instead of hanging. */
const WORKER_PHASE_TIMEOUT_MS = 120_000;

async function withTimeout<T>(
  pending: Promise<T>[],
  phase: string,
): Promise<T[]> {
  const settled = pending.map(() => false);
  pending.forEach((p, i) => p.finally(() => settled[i] = true).catch(() => {}));
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const late = settled.flatMap((done, i) => done ? [] : [i]);
      reject(
        new Error(
          `Workers ${
            late.join(", ")
          } did not ${phase} within ${WORKER_PHASE_TIMEOUT_MS} ms`,
        ),
      );
    }, WORKER_PHASE_TIMEOUT_MS);
  });
  try {
    return await Promise.race([Promise.all(pending), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface WorkerMessage {
  type: "ready" | "done" | "error";
  result?: unknown;
  error?: string;
}

function nextMessage(worker: Worker): Promise<WorkerMessage> {
  return new Promise((resolve, reject) => {
    worker.onmessage = (event: MessageEvent<WorkerMessage>) =>
      resolve(event.data);
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      reject(new Error(`Worker failed: ${event.message}`));
    };
  });
}

function workerError(message: WorkerMessage): Error {
  return new Error(`Worker reported: ${message.error ?? message.type}`);
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
