// Owns one tenant's access to the KV (its keys, commit limits, bounded retries, listing, draining); never knows a thread, slot or pair.
//
// Retries are of two kinds: a commit that lost a race (`ok: false`) is
// planned again at once, at most `maxAttempts` times; a call that failed in a
// way that may pass (a locked database file, a lost connection to a remote
// KV: `isTransient`) is made again until `retryTimeoutMs` has passed, after
// a short pause (RetryPacer: up to 10 ms for a locked file, 50 ms otherwise).

import { BackendError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import type { KvKeys } from "./_kv_keys.ts";
import {
  batches,
  CONFLICT,
  type Conflict,
  isTransient,
  newId,
  RetryPacer,
} from "./_kv_util.ts";

/** How {@linkcode KvStore.drain} empties one kind of record. */
export interface DrainPlan<T> {
  /** What is cleared, for the error: `"the buffer"`, `"the registry"`. */
  what: string;
  /** What writers kept adding, for the error: `"threads"`, `"pairs"`. */
  items: string;
  /** Most entries one commit takes. */
  perCommit: number;
  /** Bytes an entry adds to its commit. */
  weight: (entry: Deno.KvEntry<T>) => number;
  /** Bytes one commit may take. */
  budget: number;
  /**
   * Commits one batch. An entry it leaves (its check failed: a writer
   * changed it) is listed again by the next round.
   */
  commit: (batch: Deno.KvEntry<T>[]) => Promise<void>;
}

/** A Deno KV, one tenant's keys, and the bounded ways to call it. */
export class KvStore {
  readonly kv: Deno.Kv;
  readonly keys: KvKeys;
  /** Most checks one atomic commit may hold. */
  readonly maxChecks: number;
  /** Attempts of a conflicting commit before giving up. */
  readonly maxAttempts: number;
  /** How long a call failing in a way that may pass is retried. */
  readonly retryTimeoutMs: number;
  /**
   * Whether a commit's answer may be lost (a remote KV): then writes record
   * what they applied, under this backend's {@linkcode producerId}, so that
   * a retry never applies twice.
   */
  readonly idempotentRetries: boolean;
  /** This backend's id in the records of its writes. */
  readonly producerId: string = newId();
  #ops = 0;

  constructor(
    kv: Deno.Kv,
    keys: KvKeys,
    limits: {
      maxChecks: number;
      maxAttempts: number;
      retryTimeoutMs: number;
      idempotentRetries: boolean;
    },
  ) {
    this.kv = kv;
    this.keys = keys;
    this.maxChecks = limits.maxChecks;
    this.maxAttempts = limits.maxAttempts;
    this.retryTimeoutMs = limits.retryTimeoutMs;
    this.idempotentRetries = limits.idempotentRetries;
  }

  /** A new sequence number for a write of this backend (see {@linkcode producerId}). */
  nextOp(): number {
    return ++this.#ops;
  }

  /** How long the record of a write is kept: past its last retry. */
  get recordExpireIn(): number {
    return this.retryTimeoutMs + 60_000;
  }

  /**
   * Runs one KV call, making it again while it fails in a way that may pass
   * (the database is locked by another process, a remote KV's connection
   * failed), until `retryTimeoutMs` has passed. Any failure is a
   * {@linkcode BackendError}. For calls that may be repeated: reads, and
   * writes whose second application changes nothing.
   */
  async retryWhileLocked<T>(call: () => Promise<T>): Promise<T> {
    let deadline: number | undefined;
    const pacer = new RetryPacer();
    for (;;) {
      try {
        return await call();
      } catch (error) {
        deadline ??= Date.now() + this.retryTimeoutMs;
        if (!isTransient(error) || Date.now() >= deadline) {
          if (error instanceof BackendError) throw error;
          throw new BackendError(
            `Deno KV operation failed: ${errorMessage(error)}`,
            { cause: error },
          );
        }
        pacer.failed(error);
        await pacer.pause();
      }
    }
  }

  /**
   * Runs an optimistic read-check-commit until it returns something other
   * than {@linkcode CONFLICT} (its commit lost a race): at most
   * `maxAttempts` conflicts; an attempt that fails in a way that may pass
   * is made again until `retryTimeoutMs` has passed. Then a
   * {@linkcode BackendError} whose message starts with `what`. The attempt
   * must be harmless to repeat after a failure whose outcome is unknown.
   */
  async retryOnConflict<T>(
    what: string,
    attempt: () => Promise<T | Conflict>,
  ): Promise<T> {
    let last: unknown;
    let deadline: number | undefined;
    const pacer = new RetryPacer();
    for (let conflicts = 0; conflicts < this.maxAttempts;) {
      await pacer.pause();
      try {
        const result = await attempt();
        if (result !== CONFLICT) return result as T;
        conflicts++;
        pacer.conflict();
      } catch (error) {
        deadline ??= Date.now() + this.retryTimeoutMs;
        if (!isTransient(error) || Date.now() >= deadline) {
          if (error instanceof BackendError) throw error;
          const retried = isTransient(error)
            ? ` (retried for retryTimeoutMs, ${this.retryTimeoutMs} ms)`
            : "";
          throw new BackendError(`${what}: ${errorMessage(error)}${retried}`, {
            cause: error,
          });
        }
        last = error;
        pacer.failed(error);
      }
    }
    throw new BackendError(
      `${what}: the commit conflicted with other writers ${this.maxAttempts} times; raise maxAttempts or lower contention`,
      last === undefined ? undefined : { cause: last },
    );
  }

  /**
   * Every entry under `prefix`, in key order; read strongly consistent
   * unless `consistency` says `"eventual"` (listings and stats may, see
   * `KvBackendOptions.consistency`).
   */
  async listAll<T>(
    prefix: Deno.KvKey,
    consistency: Deno.KvConsistencyLevel = "strong",
  ): Promise<Deno.KvEntry<T>[]> {
    return await this.retryWhileLocked(() =>
      Array.fromAsync(
        this.kv.list<T>({ prefix }, { batchSize: 500, consistency }),
      )
    );
  }

  /** Deletes every key under `prefix`, 200 a commit, unchecked. */
  async deletePrefix(prefix: Deno.KvKey): Promise<void> {
    for (;;) {
      const entries = await this.retryWhileLocked(() =>
        Array.fromAsync(
          this.kv.list({ prefix }, { limit: 200, batchSize: 200 }),
        )
      );
      if (entries.length === 0) return;
      const op = this.kv.atomic();
      for (const entry of entries) op.delete(entry.key);
      await this.retryWhileLocked(() => op.commit());
    }
  }

  /**
   * Lists the entries under `prefix` and commits them away in bounded
   * batches, round after round until a listing finds none. Bounded too:
   * after `maxAttempts` rounds (writers kept adding) a
   * {@linkcode BackendError}.
   */
  async drain<T>(prefix: Deno.KvKey, plan: DrainPlan<T>): Promise<void> {
    for (let round = 0;; round++) {
      const entries = await this.listAll<T>(prefix);
      if (entries.length === 0) return;
      if (round >= this.maxAttempts) {
        throw new BackendError(
          `Cannot clear ${plan.what} of prefix ${
            JSON.stringify(this.keys.prefix)
          }: writers kept adding ${plan.items}`,
        );
      }
      for (
        const batch of batches(
          entries,
          plan.perCommit,
          plan.weight,
          plan.budget,
        )
      ) {
        await plan.commit(batch);
      }
    }
  }
}
