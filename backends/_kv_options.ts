// Owns the options of the kv backend (KvBackendOptions with their documented defaults) and the checks of what open() and sweep() are given; never opens a KV nor applies an option.
//
// The options are public (re-exported by kv.ts, the `./kv` entry point);
// their `@default`s are what the backend's rooms fall back to when it is
// assembled (_kv_open.ts). A check's message names the option to change.

import { describe } from "../_messages.ts";
import type { KvSweepOptions } from "./_kv_sweep.ts";

/**
 * Options of {@linkcode KvBackend.open} beyond the shared config: tuning that
 * tests and unusual deployments may need.
 *
 * @example
 * ```ts
 * import { KvBackend, type KvBackendOptions } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * const options: KvBackendOptions = { maxAttempts: 50, uploadTimeoutMs: 30_000 };
 * await using backend = await KvBackend.open({ kvPath: ":memory:" }, options);
 * assert.equal(await backend.ping(), true);
 * ```
 */
export interface KvBackendOptions {
  /**
   * Most checks one atomic commit may hold: 100 on a local file, 10 on a KV
   * Connect server (`http(s)://` path). Group commits stay within it. A
   * value above what the store allows is a `RangeError` at open (on a remote
   * or injected KV, `open` tries one commit of that many checks).
   *
   * @default {100 for a file or ":memory:", 10 otherwise (remote, default or injected KV)}
   */
  maxChecksPerAtomic?: number;
  /**
   * Attempts of one commit that conflicts with other writers before it
   * gives up with a {@linkcode BackendError}. A conflict means another
   * writer succeeded, so the next attempt reads again and goes at once. (A
   * locked database file is retried after a random pause of 0-1 ms,
   * doubling to at most 10 ms, and a lost connection after at most 50 ms,
   * until `retryTimeoutMs` of the config.)
   *
   * @default {100}
   */
  maxAttempts?: number;
  /**
   * Whether a commit's answer may be lost, so that a retry must first find
   * out whether the attempt before it was applied: each group commit then
   * also rewrites one small record of this backend (its producer id and a
   * sequence number), and each registry write records itself for
   * `retryTimeoutMs`. On a local file a commit's outcome is always known.
   *
   * @default {false on a file or ":memory:", true otherwise (KV Connect, Deno Deploy, an injected KV)}
   */
  idempotentRetries?: boolean;
  /**
   * How long a large slot's upload may take. After it, an unpublished upload
   * (its writer died, say) is reclaimed by the next sweep, and a writer that
   * took longer gets a {@linkcode BackendError}.
   *
   * @default {60000}
   */
  uploadTimeoutMs?: number;
  /**
   * Whether watches poll the watched heads for appends made by other
   * processes, which Deno KV's `kv.watch` does not deliver on a local file
   * (denoland/deno#21640). Same-process appends (other `Deno.Kv`s of the
   * file, Workers) wake watches through `kv.watch` either way. See
   * "Watching" in docs/kv.md for the latency and the idle cost.
   *
   * @default {true, except on ":memory:" and on Deno Deploy, where kv.watch delivers every write}
   */
  watchPolling?: boolean;
  /**
   * Whether this backend's calls run the routine sweep that reclaims expired
   * data of the whole store (when this backend holds the store's sweeper
   * lease: one backend of a store sweeps at a time). A call that runs it
   * waits for at most 200 expiry-index entries and 10 000 slots. With
   * `false`, calls never sweep; run {@linkcode KvBackend.sweep} yourself
   * (from `Deno.cron`, say).
   *
   * @default {true}
   */
  sweepOnUse?: boolean;
  /**
   * How `bufferListThreads()` and `stats()` read: `"strong"`, or
   * `"eventual"` (Deno KV's consistency level), which on Deno Deploy reads
   * the nearest replica: faster and cheaper, but a listing or a count may
   * miss what was written (created, deleted) in the last moments, typically
   * well under a second. Appends, the registry and every other read stay
   * strongly consistent. On a local file both read the same.
   *
   * @default {"strong"}
   */
  consistency?: "strong" | "eventual";
  /**
   * Whether the isolates of this process that open the same KV file with
   * the same prefix and limits (Workers, the isolates of
   * `deno serve --parallel`) commit their appends through one of them: they
   * elect it with a Web Lock (`navigator.locks`) and forward their appends
   * to it through shared memory (a `SharedArrayBuffer` each, handed over on
   * a `BroadcastChannel`), so that one group commit carries the appends of
   * all and nothing fails for contention. Forwarded appends stay
   * exactly once when the committer closes or dies (its Worker terminated):
   * another takes over. Only on a file opened by `kvPath` (not
   * `":memory:"`, KV Connect, the default KV or an injected `kv`); an
   * isolate alone commits on its own and holds no lock. See "Several
   * isolates on one KV file" in docs/deploy.md.
   *
   * @default {true}
   */
  processCommitter?: boolean;
}

/** Checks the options of {@linkcode KvBackend.open}; the message names the option. */
export function checkOptions(options: KvBackendOptions): void {
  for (const name of ["maxChecksPerAtomic", "maxAttempts"] as const) {
    const value = options[name];
    if (value !== undefined && (!Number.isSafeInteger(value) || value < 1)) {
      throw new RangeError(
        `Invalid ${name}: expected an integer >= 1, got ${value}`,
      );
    }
  }
  if (
    options.maxChecksPerAtomic !== undefined && options.maxChecksPerAtomic < 2
  ) {
    throw new RangeError(
      `Invalid maxChecksPerAtomic: expected an integer >= 2, got ${options.maxChecksPerAtomic}`,
    );
  }
  const consistency = options.consistency;
  if (
    consistency !== undefined && consistency !== "strong" &&
    consistency !== "eventual"
  ) {
    throw new RangeError(
      `Invalid consistency: expected "strong" or "eventual", got ${
        describe(consistency)
      }`,
    );
  }
  for (
    const name of ["watchPolling", "sweepOnUse", "processCommitter"] as const
  ) {
    const value = options[name];
    if (value !== undefined && typeof value !== "boolean") {
      throw new TypeError(
        `Invalid ${name}: expected a boolean, got ${describe(value)}`,
      );
    }
  }
  if (
    options.idempotentRetries !== undefined &&
    typeof options.idempotentRetries !== "boolean"
  ) {
    throw new TypeError(
      `Invalid idempotentRetries: expected a boolean, got ${typeof options
        .idempotentRetries}`,
    );
  }
  const timeout = options.uploadTimeoutMs;
  if (
    timeout !== undefined && (!Number.isSafeInteger(timeout) || timeout < 1)
  ) {
    throw new RangeError(
      `Invalid uploadTimeoutMs: expected an integer >= 1, got ${timeout}`,
    );
  }
}

/** Checks the options of {@linkcode KvBackend.sweep}; the message names the option. */
export function checkSweepOptions(options: KvSweepOptions): void {
  const max = options.maxEntries;
  if (
    max !== undefined && max !== Infinity &&
    (!Number.isSafeInteger(max) || max < 0)
  ) {
    throw new RangeError(
      `Invalid maxEntries: expected a non-negative integer or Infinity, got ${max}`,
    );
  }
}
