// Owns opening a KvBackend: its KV (Deno.openKv, retried on a locked file, failures that name what to change), the check of maxChecksPerAtomic, and the assembly of the engine's rooms on it (the options' defaults, the commit group); never serves a call.
//
// Everything here happens once, in KvBackend.open, before the backend
// exists: kv.ts then holds the rooms and puts its public calls through them.

import type { ResolvedConfig } from "../config.ts";
import { BackendError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import { KvAppendQueue } from "./_kv_append_queue.ts";
import { KvBlobStore } from "./_kv_blobs.ts";
import { KvCommitter } from "./_kv_committer.ts";
import { HeadCache } from "./_kv_heads.ts";
import { KvKeys } from "./_kv_keys.ts";
import type { KvBackendOptions } from "./_kv_options.ts";
import { KvReader } from "./_kv_reads.ts";
import { KvRegistry } from "./_kv_registry.ts";
import { KvStore } from "./_kv_store.ts";
import { KvSweeper } from "./_kv_sweep.ts";
import { KvWatchSource, watchModeOf } from "./_kv_watch.ts";
import { isContention, jitteredDelay, KV_LIMITS } from "./_kv_util.ts";

/** The rooms of one backend, assembled on its KV (see kv.ts). */
export interface KvEngine {
  store: KvStore;
  reader: KvReader;
  registry: KvRegistry;
  sweeper: KvSweeper;
  watches: KvWatchSource;
  appends: KvAppendQueue;
  /** This isolate's member of its process's commit group, if it has joined one. */
  committer: KvCommitter | undefined;
  /** How listings and stats read (`KvBackendOptions.consistency`). */
  consistency: Deno.KvConsistencyLevel;
}

/**
 * The KV of a backend: `config.kv` if given, else `Deno.openKv(config.kvPath)`
 * (retried while the file is locked by other processes), after the check of
 * `maxChecksPerAtomic` against it (a KV opened here is closed if it fails).
 *
 * @throws {RangeError} `maxChecksPerAtomic` is above what the store allows.
 * @throws {BackendError} The KV cannot be opened; the message names the path.
 */
export async function openKv(
  config: ResolvedConfig,
  options: KvBackendOptions,
): Promise<Deno.Kv> {
  if (config.kv !== undefined) {
    await checkChecksAllowed(config.kv, config, options);
    return config.kv;
  }
  const path = config.kvPath;
  let kv: Deno.Kv;
  try {
    // Opening a file other processes are writing may meet a locked database.
    for (let attempt = 0;; attempt++) {
      try {
        kv = await Deno.openKv(path);
        break;
      } catch (error) {
        if (!isContention(error) || attempt >= 20) throw error;
        await jitteredDelay(attempt);
      }
    }
  } catch (error) {
    throw openFailure(path, error);
  }
  try {
    await checkChecksAllowed(kv, config, options);
  } catch (error) {
    kv.close();
    throw error;
  }
  return kv;
}

/**
 * Assembles the rooms of a backend on `kv`, each option at its default
 * when not given, and joins the process's commit group when the KV is a
 * file opened by path (`processCommitter`).
 */
export function assembleEngine(
  kv: Deno.Kv,
  config: ResolvedConfig,
  options: KvBackendOptions,
): KvEngine {
  const path = config.kvPath;
  const local = isLocalPath(path);
  const store = new KvStore(kv, new KvKeys(config.prefix), {
    maxChecks: options.maxChecksPerAtomic ??
      (local ? KV_LIMITS.localChecks : KV_LIMITS.remoteChecks),
    maxAttempts: options.maxAttempts ?? 100,
    retryTimeoutMs: config.retryTimeoutMs,
    idempotentRetries: options.idempotentRetries ?? !local,
  });
  const blobs = new KvBlobStore(store, options.uploadTimeoutMs ?? 60_000);
  const heads = new HeadCache();
  const consistency = options.consistency ?? "strong";
  const reader = new KvReader(store, blobs, consistency);
  const registry = new KvRegistry(store, config.ttlMs);
  const uploadTimeoutMs = options.uploadTimeoutMs ?? 60_000;
  const sweeper = new KvSweeper(
    { store, blobs, pairs: registry },
    heads,
    {
      onUse: options.sweepOnUse ?? true,
      // Another prefix's blob store and registry, for the sweep only.
      tenantOf: (other) => ({
        blobs: new KvBlobStore(other, uploadTimeoutMs),
        pairs: new KvRegistry(other, config.ttlMs),
      }),
    },
  );
  const watches = new KvWatchSource(
    store,
    watchModeOf(path, config.kv !== undefined, options.watchPolling),
  );
  const appends = new KvAppendQueue(store, blobs, sweeper, heads, {
    ttlMs: config.ttlMs,
    maxSlotsPerThread: config.maxSlotsPerThread,
    maxThreads: config.maxThreads,
  });
  const committer = config.kv === undefined && path !== undefined &&
      local && path !== ":memory:" && (options.processCommitter ?? true)
    ? KvCommitter.join(commitGroup(path, config, store), {
      store,
      blobs,
      queue: appends,
    })
    : undefined;
  return {
    store,
    reader,
    registry,
    sweeper,
    watches,
    appends,
    committer,
    consistency,
  };
}

/**
 * The name of the commit group of a backend (see _kv_committer.ts): the
 * isolates of a process share a committer only if it commits their appends
 * exactly as each would (same file, prefix, limits and retries).
 */
function commitGroup(
  path: string,
  config: ResolvedConfig,
  store: KvStore,
): string {
  return `@xml-pipeline/shared-backend kv committer 1 ${
    JSON.stringify([
      path,
      config.prefix,
      config.ttlMs,
      config.maxSlotsPerThread,
      config.maxThreads,
      config.retryTimeoutMs,
      store.maxAttempts,
      store.maxChecks,
      store.idempotentRetries,
    ])
  }`;
}

/** Whether `path` is a local file (or `":memory:"`), where a commit's outcome is always known. */
function isLocalPath(path: string | undefined): boolean {
  return path !== undefined && !/^https?:\/\//i.test(path);
}

/**
 * Refuses a `maxChecksPerAtomic` above what the store allows: known on a
 * local file; elsewhere (above the 10 every store allows) found by one
 * commit of that many checks of an absent key.
 *
 * @throws {RangeError} The message names `maxChecksPerAtomic`.
 */
async function checkChecksAllowed(
  kv: Deno.Kv,
  config: ResolvedConfig,
  options: KvBackendOptions,
): Promise<void> {
  const checks = options.maxChecksPerAtomic;
  if (checks === undefined || checks <= KV_LIMITS.remoteChecks) return;
  const refuse = (why: string) =>
    new RangeError(
      `Invalid maxChecksPerAtomic: ${checks} is more checks than this Deno KV allows in one commit (${why})`,
    );
  if (config.kv === undefined && isLocalPath(config.kvPath)) {
    if (checks > KV_LIMITS.localChecks) {
      throw refuse(`a local file allows ${KV_LIMITS.localChecks}`);
    }
    return;
  }
  const op = kv.atomic();
  const key = [config.prefix, "meta", "probe"];
  for (let i = 0; i < checks; i++) op.check({ key, versionstamp: null });
  try {
    await op.commit();
  } catch (error) {
    // Other failures show in the first real commit, with their own message.
    if (/too many checks/i.test(errorMessage(error))) {
      throw refuse(errorMessage(error));
    }
  }
}

/**
 * Why Deno KV did not open, as a {@linkcode BackendError} that names what to
 * change: the flag when Deno KV is not enabled (`--unstable-kv`) or a
 * permission is missing, the variable when KV Connect has no access token,
 * else the path.
 */
function openFailure(path: string | undefined, error: unknown): BackendError {
  const where = path === undefined
    ? "the default Deno KV"
    : JSON.stringify(path);
  const failure = (why: string) =>
    new BackendError(`Cannot open ${where}: ${why}`, { cause: error });
  if (typeof Deno.openKv !== "function") {
    return failure(
      'Deno KV is not enabled; run Deno with --unstable-kv (or add "unstable": ["kv"] to deno.json)',
    );
  }
  const message = errorMessage(error);
  // Deno's wording: Requires read access to "state.db", run again with the --allow-read flag
  const denied = /Requires (read|write|net|env) access to "([^"]+)"/.exec(
    message,
  );
  if (denied !== null) {
    const [, kind, target] = denied;
    const flags = kind === "read" || kind === "write"
      ? `--allow-read=${target} --allow-write=${target}` // a file: both
      : `--allow-${kind}=${target}`;
    return failure(
      `Deno KV needs ${kind} access to "${target}"; run Deno with ${flags}`,
    );
  }
  if (message.includes("DENO_KV_ACCESS_TOKEN")) {
    return failure(
      `set DENO_KV_ACCESS_TOKEN to the access token of the KV Connect server (${message})`,
    );
  }
  return failure(`${message}; check kvPath`);
}
