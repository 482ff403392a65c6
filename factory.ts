/**
 * The factory: picks a backend from a config, and keeps one process-wide
 * instance for code that wants a shared default.
 *
 * @module
 */

import {
  type BackendConfig,
  resolveConfig,
  type ResolvedConfig,
} from "./config.ts";
import { BackendError } from "./errors.ts";
import type { SharedBackend } from "./protocol.ts";

/**
 * Opens a new backend for a config. `kv` and `redis` load their module only
 * when chosen, so a memory-only program never loads ioredis.
 *
 * @param config Which backend and how; default: in memory.
 * @returns A new, open backend. Close it with `close()` or `await using`.
 * @throws {TypeError} A config field has the wrong type.
 * @throws {RangeError} A config number is out of range.
 * @throws {BackendError} The store cannot be opened or reached; the message says which.
 *
 * @example
 * ```ts
 * import { createSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend({ backendType: "memory" });
 * assert.equal(backend.kind, "memory");
 * assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
 * ```
 */
export async function createSharedBackend(
  config: BackendConfig = {},
): Promise<SharedBackend> {
  const resolved = resolveConfig(config);
  switch (resolved.backendType) {
    case "memory": {
      const { InMemoryBackend } = await import("./backends/memory.ts");
      return await InMemoryBackend.open(config);
    }
    case "kv": {
      const { KvBackend } = await import("./backends/kv.ts");
      return await KvBackend.open(config);
    }
    case "redis": {
      const { RedisBackend } = await import("./backends/redis.ts");
      return await RedisBackend.open(config);
    }
  }
}

let shared:
  | { config: ResolvedConfig; backend: Promise<SharedBackend> }
  | undefined;

/**
 * Returns the process-wide backend, creating it on the first call. Concurrent
 * first calls share one instance. A later call with no config gets the same
 * instance; one with a config that differs from the instance's rejects.
 *
 * @param config The config of the instance; omit it to take the existing one.
 * @returns The shared backend.
 * @throws {BackendError} A backend with a different config already exists.
 *
 * @example
 * ```ts
 * import { getSharedBackend, resetSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const [a, b] = await Promise.all([getSharedBackend(), getSharedBackend()]);
 * assert.equal(a, b);
 * await assert.rejects(getSharedBackend({ ttlMs: 5 }), /differs in ttlMs/);
 * await resetSharedBackend();
 * ```
 */
export async function getSharedBackend(
  config?: BackendConfig,
): Promise<SharedBackend> {
  if (shared !== undefined) {
    if (config !== undefined) {
      const difference = firstDifference(shared.config, resolveConfig(config));
      if (difference !== undefined) {
        throw new BackendError(
          `Cannot get the shared backend with this config: it differs in ${difference} from the existing instance's; call resetSharedBackend() first`,
        );
      }
    }
    return await shared.backend;
  }
  const resolved = resolveConfig(config);
  const entry = { config: resolved, backend: createSharedBackend(config) };
  shared = entry;
  try {
    return await entry.backend;
  } catch (error) {
    if (shared === entry) shared = undefined;
    throw error;
  }
}

/**
 * Closes and forgets the process-wide backend, if any; the next
 * {@linkcode getSharedBackend} call creates a new one.
 *
 * @example
 * ```ts
 * import { getSharedBackend, resetSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const first = await getSharedBackend();
 * await resetSharedBackend();
 * const second = await getSharedBackend({ ttlMs: 1_000 });
 * assert.notEqual(first, second);
 * await resetSharedBackend();
 * ```
 */
export async function resetSharedBackend(): Promise<void> {
  const entry = shared;
  shared = undefined;
  if (entry === undefined) return;
  let backend: SharedBackend;
  try {
    backend = await entry.backend;
  } catch {
    return; // it never opened: nothing to close
  }
  await backend.close();
}

function firstDifference(
  a: ResolvedConfig,
  b: ResolvedConfig,
): string | undefined {
  for (const key of Object.keys(a) as (keyof ResolvedConfig)[]) {
    if (a[key] !== b[key]) {
      const show = (v: unknown) =>
        typeof v === "object" && v !== null
          ? "another object"
          : JSON.stringify(v);
      return key === "redisUrl" || key === "kv" || key === "redisClient"
        ? key
        : `${key} (${show(b[key])} instead of ${show(a[key])})`;
    }
  }
  return undefined;
}
