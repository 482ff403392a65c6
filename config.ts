/**
 * Configuration: the options of every backend, their defaults in one place,
 * and {@linkcode configFromEnv} to read them from environment variables.
 *
 * @module
 */

import { checkNonEmptyString } from "./_validate.ts";

/**
 * Which backend to use and how. Every field is optional; the defaults are in
 * {@linkcode DEFAULT_CONFIG}.
 *
 * @example
 * ```ts
 * import { type BackendConfig, createSharedBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const config: BackendConfig = { backendType: "memory", ttlMs: 60_000, maxThreads: 10 };
 * await using backend = await createSharedBackend(config);
 * assert.equal((await backend.stats()).ttlMs, 60_000);
 * ```
 */
export interface BackendConfig {
  /**
   * The store: `"memory"` (one isolate), `"kv"` (Deno KV: a file shared by
   * processes and Workers, or Deno Deploy's KV) or `"redis"` (many
   * machines). `"manager"` is an alias of `"kv"`, the name the Python
   * original gave its local multi-process backend.
   *
   * @default {"memory"}
   */
  backendType?: "memory" | "kv" | "redis" | "manager";
  /**
   * Key prefix that isolates tenants sharing one store. Two backends with
   * different prefixes never see, count, expire or clear each other's data.
   *
   * @default {"xp:"}
   */
  prefix?: string;
  /**
   * Sliding time to live in milliseconds: a thread with no append, or a
   * registry pair with no write, for this long disappears whole. 0 = never.
   *
   * @default {86400000}
   */
  ttlMs?: number;
  /**
   * Redis server URL (`redis://`, `rediss://`, with password and db index).
   *
   * @default {"redis://localhost:6379"}
   */
  redisUrl?: string;
  /**
   * Deno KV path: a file, `":memory:"`, or an `http(s)://` KV Connect URL.
   * When absent, `Deno.openKv()` opens Deno's default KV (on Deno Deploy: the
   * app's KV).
   *
   * @default {undefined}
   */
  kvPath?: string;
  /**
   * Most slots one thread may hold; an append past it is a `SlotLimitError`.
   *
   * @default {10000}
   */
  maxSlotsPerThread?: number;
  /**
   * Most live threads; an append that would create one more is a
   * `ThreadLimitError`.
   *
   * @default {1000}
   */
  maxThreads?: number;
  /**
   * Largest slot in bytes; a bigger one is a `RangeError`.
   *
   * @default {4194304}
   */
  maxSlotBytes?: number;
  /**
   * An open Deno KV to use instead of `kvPath`. `close()` leaves it open: the
   * caller owns it.
   *
   * @default {undefined}
   */
  kv?: Deno.Kv;
  /**
   * An ioredis `Redis` (or `Cluster`) client to use instead of `redisUrl`.
   * `close()` leaves it open: the caller owns it.
   *
   * @default {undefined}
   */
  redisClient?: unknown;
  /**
   * How long, in milliseconds, a call is retried through lost replies,
   * reconnects, failovers and a locked database before it rejects with a
   * `BackendError` (that says whether the write was applied, when that is
   * known). Appends and registry writes are idempotent, so a retry never
   * applies one twice. 0: no retries.
   *
   * @default {10000}
   */
  retryTimeoutMs?: number;
  /**
   * Redis only: a write is acknowledged once this many replicas hold it
   * (`WAIT` after the write); if they do not confirm within
   * `retryTimeoutMs`, the call rejects saying so. Memory and KV ignore it
   * (a KV commit is durable once acknowledged).
   *
   * @default {0}
   */
  durableReplicas?: number;
}

/**
 * The default of every option, in one place.
 *
 * @example
 * ```ts
 * import { DEFAULT_CONFIG } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * assert.equal(DEFAULT_CONFIG.ttlMs, 86_400_000);
 * ```
 */
export const DEFAULT_CONFIG: Readonly<{
  backendType: "memory";
  prefix: string;
  ttlMs: number;
  redisUrl: string;
  maxSlotsPerThread: number;
  maxThreads: number;
  maxSlotBytes: number;
  retryTimeoutMs: number;
  durableReplicas: number;
}> = Object.freeze({
  backendType: "memory",
  prefix: "xp:",
  ttlMs: 86_400_000,
  redisUrl: "redis://localhost:6379",
  maxSlotsPerThread: 10_000,
  maxThreads: 1_000,
  maxSlotBytes: 4 * 1024 * 1024,
  retryTimeoutMs: 10_000,
  durableReplicas: 0,
});

/**
 * A config with every default filled in and every value checked. Backends
 * take this from {@linkcode resolveConfig}.
 *
 * @example
 * ```ts
 * import { resolveConfig, type ResolvedConfig } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const resolved: ResolvedConfig = resolveConfig({ prefix: "tenant-a:" });
 * assert.equal(resolved.prefix, "tenant-a:");
 * assert.equal(resolved.maxThreads, 1_000);
 * ```
 */
export interface ResolvedConfig {
  /** The store, with `"manager"` resolved to `"kv"`. */
  backendType: "memory" | "kv" | "redis";
  /** See {@linkcode BackendConfig.prefix}. */
  prefix: string;
  /** See {@linkcode BackendConfig.ttlMs}. */
  ttlMs: number;
  /** See {@linkcode BackendConfig.redisUrl}. */
  redisUrl: string;
  /** See {@linkcode BackendConfig.kvPath}. */
  kvPath: string | undefined;
  /** See {@linkcode BackendConfig.maxSlotsPerThread}. */
  maxSlotsPerThread: number;
  /** See {@linkcode BackendConfig.maxThreads}. */
  maxThreads: number;
  /** See {@linkcode BackendConfig.maxSlotBytes}. */
  maxSlotBytes: number;
  /** See {@linkcode BackendConfig.kv}. */
  kv: Deno.Kv | undefined;
  /** See {@linkcode BackendConfig.redisClient}. */
  redisClient: unknown;
  /** See {@linkcode BackendConfig.retryTimeoutMs}. */
  retryTimeoutMs: number;
  /** See {@linkcode BackendConfig.durableReplicas}. */
  durableReplicas: number;
}

const BACKEND_TYPES = ["memory", "kv", "redis", "manager"] as const;

/** Every variable {@linkcode configFromEnv} reads. */
const ENV_VARIABLES = [
  "XP_BACKEND",
  "XP_PREFIX",
  "XP_REDIS_URL",
  "REDIS_URL",
  "XP_KV_PATH",
  "XP_TTL_MS",
  "XP_MAX_SLOTS_PER_THREAD",
  "XP_MAX_THREADS",
  "XP_MAX_SLOT_BYTES",
  "XP_RETRY_TIMEOUT_MS",
  "XP_DURABLE_REPLICAS",
];

/**
 * The variables of {@linkcode ENV_VARIABLES} this process may read, without
 * asking (no permission prompt) and without needing `--allow-env` for all.
 */
function readableEnv(): Record<string, string | undefined> {
  const vars: Record<string, string | undefined> = {};
  for (const variable of ENV_VARIABLES) {
    const { state } = Deno.permissions.querySync({ name: "env", variable });
    if (state === "granted") vars[variable] = Deno.env.get(variable);
  }
  return vars;
}

/** The numeric options: their environment variable and their least value. */
const NUMBER_OPTIONS = [
  ["ttlMs", "XP_TTL_MS", 0],
  ["maxSlotsPerThread", "XP_MAX_SLOTS_PER_THREAD", 1],
  ["maxThreads", "XP_MAX_THREADS", 1],
  ["maxSlotBytes", "XP_MAX_SLOT_BYTES", 0],
  ["retryTimeoutMs", "XP_RETRY_TIMEOUT_MS", 0],
  ["durableReplicas", "XP_DURABLE_REPLICAS", 0],
] as const;

function checkCount(name: string, value: number, min: number): number {
  if (
    typeof value !== "number" || !Number.isSafeInteger(value) || value < min
  ) {
    throw new RangeError(
      `Invalid ${name}: expected an integer >= ${min}, got ${String(value)}`,
    );
  }
  return value;
}

/**
 * Fills in the defaults of a config and checks every value.
 *
 * @param config The config as given.
 * @returns The complete config.
 * @throws {TypeError} A field has the wrong type (`backendType`, `prefix`, `redisUrl`, `kvPath`).
 * @throws {RangeError} A number is negative, fractional or out of range; the message names the field.
 *
 * @example
 * ```ts
 * import { resolveConfig } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * assert.equal(resolveConfig({ backendType: "manager" }).backendType, "kv");
 * assert.throws(() => resolveConfig({ ttlMs: -1 }), RangeError);
 * ```
 */
export function resolveConfig(config: BackendConfig = {}): ResolvedConfig {
  if (config === null || typeof config !== "object") {
    throw new TypeError(`Invalid config: expected an object, got ${config}`);
  }
  const type = config.backendType ?? DEFAULT_CONFIG.backendType;
  if (!(BACKEND_TYPES as readonly string[]).includes(type)) {
    throw new TypeError(
      `Invalid backendType: expected one of ${BACKEND_TYPES.join(", ")}, got ${
        JSON.stringify(type)
      }`,
    );
  }
  const prefix = config.prefix ?? DEFAULT_CONFIG.prefix;
  if (typeof prefix !== "string") {
    throw new TypeError(
      `Invalid prefix: expected a string, got ${typeof prefix}`,
    );
  }
  const redisUrl = config.redisUrl ?? DEFAULT_CONFIG.redisUrl;
  checkNonEmptyString("redisUrl", redisUrl);
  if (config.kvPath !== undefined) checkNonEmptyString("kvPath", config.kvPath);
  const numbers = {} as Record<NumberOption, number>;
  for (const [option, , min] of NUMBER_OPTIONS) {
    numbers[option] = checkCount(
      option,
      config[option] ?? DEFAULT_CONFIG[option],
      min,
    );
  }
  return {
    backendType: type === "manager" ? "kv" : type,
    prefix,
    redisUrl,
    kvPath: config.kvPath,
    ...numbers,
    kv: config.kv,
    redisClient: config.redisClient,
  };
}

type NumberOption = typeof NUMBER_OPTIONS[number][0];

/**
 * Reads a config from environment variables. Unset (or empty) variables are
 * left out, so the defaults apply.
 *
 * | variable | option |
 * | --- | --- |
 * | `XP_BACKEND` | `backendType` (`memory`, `kv`, `redis`, `manager`) |
 * | `XP_PREFIX` | `prefix` |
 * | `XP_TTL_MS` | `ttlMs` (`0` = never expire) |
 * | `XP_REDIS_URL`, else `REDIS_URL` | `redisUrl` |
 * | `XP_KV_PATH` | `kvPath` |
 * | `XP_MAX_SLOTS_PER_THREAD` | `maxSlotsPerThread` |
 * | `XP_MAX_THREADS` | `maxThreads` |
 * | `XP_MAX_SLOT_BYTES` | `maxSlotBytes` |
 * | `XP_RETRY_TIMEOUT_MS` | `retryTimeoutMs` |
 * | `XP_DURABLE_REPLICAS` | `durableReplicas` |
 *
 * `XP_PREFIX` set to an empty string is an error (unset it for the default
 * prefix; an empty prefix can be given in code).
 * @param env The variables; default: the process environment, each of the
 * variables above that this process may read (`--allow-env`, or just
 * `--allow-env=XP_BACKEND,XP_KV_PATH,...`: one it may not read counts as unset).
 * @returns The config the variables describe.
 * @throws {TypeError} `XP_BACKEND` names no backend.
 * @throws {RangeError} A number variable is not an integer in its option's range, or `XP_PREFIX` is empty; the message names the variable.
 *
 * @example
 * ```ts
 * import { configFromEnv } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const config = configFromEnv({ XP_BACKEND: "redis", REDIS_URL: "redis://h:6379", XP_TTL_MS: "0" });
 * assert.deepEqual(config, { backendType: "redis", redisUrl: "redis://h:6379", ttlMs: 0 });
 * assert.throws(() => configFromEnv({ XP_MAX_THREADS: "ten" }), /XP_MAX_THREADS/);
 * ```
 */
export function configFromEnv(
  env?: Record<string, string | undefined>,
): BackendConfig {
  const vars = env ?? readableEnv();
  const get = (name: string): string | undefined => {
    const value = vars[name];
    return value === undefined || value === "" ? undefined : value;
  };
  const config: BackendConfig = {};
  const backend = get("XP_BACKEND");
  if (backend !== undefined) {
    if (!(BACKEND_TYPES as readonly string[]).includes(backend)) {
      throw new TypeError(
        `Invalid XP_BACKEND: expected one of ${BACKEND_TYPES.join(", ")}, got ${
          JSON.stringify(backend)
        }`,
      );
    }
    config.backendType = backend as BackendConfig["backendType"] & string;
  }
  if (vars.XP_PREFIX === "") {
    throw new RangeError(
      `Invalid XP_PREFIX: empty; unset it for the default prefix (${
        JSON.stringify(DEFAULT_CONFIG.prefix)
      }), or pass prefix: "" in code`,
    );
  }
  const prefix = get("XP_PREFIX");
  if (prefix !== undefined) config.prefix = prefix;
  const redisUrl = get("XP_REDIS_URL") ?? get("REDIS_URL");
  if (redisUrl !== undefined) config.redisUrl = redisUrl;
  const kvPath = get("XP_KV_PATH");
  if (kvPath !== undefined) config.kvPath = kvPath;
  for (const [option, name, min] of NUMBER_OPTIONS) {
    const text = get(name);
    if (text === undefined) continue;
    const value = Number(text.trim());
    if (
      !/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(value) ||
      value < min
    ) {
      throw new RangeError(
        `Invalid ${name}: expected an integer >= ${min}, got ${
          JSON.stringify(text)
        }`,
      );
    }
    config[option] = value;
  }
  return config;
}
