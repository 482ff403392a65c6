// Which store the inspector opens: the store flags over the environment it is
// given, the store's name for messages (without its password), and opening
// it. It never reads the process's environment itself and never prints.

import { checkNonEmptyString } from "../_validate.ts";
import { errorMessage, quote } from "../_messages.ts";
import {
  type BackendConfig,
  configFromEnv,
  DEFAULT_CONFIG,
} from "../config.ts";
import { createSharedBackend } from "../factory.ts";
import type { SharedBackend } from "../protocol.ts";
import type { StoreFlags } from "./_args.ts";
import { CliError, usageError } from "./_errors.ts";

const BACKEND_FLAG_VALUES = ["memory", "kv", "redis", "manager"];

/** The config of the store to open: `env` as `configFromEnv` reads it, the flags winning. */
export function storeConfig(
  flags: StoreFlags,
  env: Record<string, string | undefined>,
): BackendConfig {
  let config: BackendConfig;
  try {
    config = configFromEnv(env);
  } catch (error) {
    throw usageError(errorMessage(error));
  }
  if (flags.backend !== undefined) {
    const backend = flags.backend;
    if (!BACKEND_FLAG_VALUES.includes(backend)) {
      throw usageError(
        `Invalid --backend: expected memory, kv or redis, got ${
          quote(backend)
        }`,
      );
    }
    config.backendType = backend as NonNullable<BackendConfig["backendType"]>;
  }
  for (
    const [flag, option] of [
      ["kv-path", "kvPath"],
      ["redis-url", "redisUrl"],
      ["prefix", "prefix"],
    ] as const
  ) {
    const value = flags[flag];
    if (value === undefined) continue;
    if (flag !== "prefix") {
      try {
        checkNonEmptyString(`--${flag}`, value);
      } catch (error) {
        throw usageError(errorMessage(error));
      }
    }
    config[option] = value;
  }
  if ((config.backendType ?? DEFAULT_CONFIG.backendType) === "redis") {
    const url = config.redisUrl ?? DEFAULT_CONFIG.redisUrl;
    if (!isRedisUrl(url)) {
      const source = flags["redis-url"] !== undefined
        ? "--redis-url"
        : env.XP_REDIS_URL !== undefined
        ? "XP_REDIS_URL"
        : "REDIS_URL";
      throw usageError(
        `Invalid ${source}: expected a redis:// or rediss:// URL, got ${
          quote(url)
        }`,
      );
    }
  }
  return config;
}

function isRedisUrl(url: string): boolean {
  try {
    const { protocol } = new URL(url);
    return protocol === "redis:" || protocol === "rediss:";
  } catch {
    return false;
  }
}

/**
 * Refuses a KV file that does not exist (a mistyped `--kv-path` would
 * otherwise be a new, empty store), unless `create`. `:memory:`, KV Connect
 * URLs and Deno's default KV are not files.
 */
export async function checkKvFile(
  config: BackendConfig,
  create: boolean,
): Promise<void> {
  const path = config.kvPath;
  if (
    create || path === undefined || path === ":memory:" ||
    /^https?:\/\//.test(path) ||
    !["kv", "manager"].includes(config.backendType ?? "")
  ) {
    return;
  }
  try {
    await Deno.stat(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) return; // opening will say
    throw new CliError(
      "notFound",
      `no KV file at ${
        quote(path)
      }: check --kv-path (or XP_KV_PATH), or pass --create to create one`,
    );
  }
}

/** Whether the config names this process's own memory store. */
export function isMemoryStore(config: BackendConfig): boolean {
  return (config.backendType ?? DEFAULT_CONFIG.backendType) === "memory";
}

/** The prefix (tenant) the config opens. */
export function storePrefix(config: BackendConfig): string {
  return config.prefix ?? DEFAULT_CONFIG.prefix;
}

/** The store's name in messages: `kv: state.db`, `redis: redis://host:6379` (never a password). */
export function describeStore(config: BackendConfig): string {
  switch (config.backendType === "manager" ? "kv" : config.backendType) {
    case "kv":
      return `kv: ${config.kvPath ?? "Deno's default KV"}`;
    case "redis": {
      const url = config.redisUrl ?? DEFAULT_CONFIG.redisUrl;
      try {
        const parsed = new URL(url);
        return `redis: ${parsed.protocol}//${parsed.host}${
          parsed.pathname === "/" ? "" : parsed.pathname
        }`;
      } catch {
        return "redis: (an unparsable URL)";
      }
    }
    default:
      return "memory (this process)";
  }
}

/** The passwords in the config's Redis URL (raw and decoded, longest first), to keep out of messages. */
export function secretsOf(config: BackendConfig): string[] {
  if (config.redisUrl === undefined) return [];
  try {
    const { password } = new URL(config.redisUrl);
    if (password === "") return [];
    return [...new Set([password, decodeURIComponent(password)])]
      .sort((a, b) => b.length - a.length);
  } catch {
    return [];
  }
}

/**
 * Opens the store; a failure is a `CliError` naming it: "unreachable", or
 * "usage" for a config the backend refuses (a `TypeError` or `RangeError`).
 */
export async function openStore(config: BackendConfig): Promise<SharedBackend> {
  try {
    return await createSharedBackend(config);
  } catch (error) {
    const message = `cannot open the store ${describeStore(config)}: ${
      errorMessage(error)
    }`;
    if (error instanceof TypeError || error instanceof RangeError) {
      throw usageError(message);
    }
    throw new CliError("unreachable", message);
  }
}
