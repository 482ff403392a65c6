// The inspector's view of a whole store beyond what one backend's protocol
// tells: the prefixes that hold data and when threads expire, through the kv
// and redis admin modules, opened on the first use. It never writes, and
// never opens anything for a memory store or a backend given to main().

import { errorMessage } from "../_messages.ts";
import { kvPrefixes, kvThreadExpiries } from "../backends/_kv_admin.ts";
import type { BackendConfig } from "../config.ts";
import { DEFAULT_CONFIG } from "../config.ts";
import { CliError } from "./_errors.ts";
import { describeStore } from "./_store.ts";

/** A prefix (tenant) of a store, and what it holds. */
export interface PrefixInfo {
  prefix: string;
  threads: boolean;
  registry: boolean;
}

/** What the inspector reads of a whole store. */
export interface StoreAdmin {
  /** The prefixes that hold threads or registry entries, sorted. */
  prefixes(): Promise<PrefixInfo[]>;
  /**
   * When each thread of `prefix` expires: ms since the epoch, 0 for never;
   * a thread the store does not know is left out.
   */
  threadExpiries(
    prefix: string,
    threadIds: readonly string[],
  ): Promise<Map<string, number>>;
  close(): Promise<void>;
}

/**
 * The admin view of the store a config names, opened on the first `get()`
 * (`null` for memory, or when there is no config: a backend given to
 * `main()`), closed by `close()`.
 */
export class AdminAccess {
  readonly #config: BackendConfig | undefined;
  #admin: Promise<StoreAdmin | null> | undefined;

  constructor(config: BackendConfig | undefined) {
    this.#config = config;
  }

  /** The admin view, or `null` where there is none. */
  get(): Promise<StoreAdmin | null> {
    return this.#admin ??= openAdmin(this.#config);
  }

  /** Closes the admin view if it was opened. */
  async close(): Promise<void> {
    const admin = await this.#admin?.catch(() => null);
    await admin?.close().catch(() => {});
  }
}

async function openAdmin(
  config: BackendConfig | undefined,
): Promise<StoreAdmin | null> {
  if (config === undefined) return null;
  try {
    switch (config.backendType ?? DEFAULT_CONFIG.backendType) {
      case "kv":
      case "manager": {
        const kv = config.kvPath === undefined
          ? await Deno.openKv()
          : await Deno.openKv(config.kvPath);
        return {
          prefixes: () => kvPrefixes(kv),
          threadExpiries: (prefix, ids) => kvThreadExpiries(kv, prefix, ids),
          close: () => Promise.resolve(kv.close()),
        };
      }
      case "redis": {
        const { RedisAdmin } = await import("../backends/_redis_admin.ts");
        return await RedisAdmin.open(
          config.redisUrl ?? DEFAULT_CONFIG.redisUrl,
        );
      }
      default:
        return null;
    }
  } catch (error) {
    throw new CliError(
      "unreachable",
      `cannot open the store ${describeStore(config)}: ${errorMessage(error)}`,
    );
  }
}
