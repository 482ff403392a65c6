// Owns the end of generations for every prefix of a store: the sweep of the expiry index, retiring expired and deleted threads; never hides or changes live data.
//
// - A sweep lists the store-wide expiry index (_kv_expiry_index.ts: its
//   keys, and which entries a write adds, moves or removes) from the start
//   up to the current second: only entries that are due, oldest first, never
//   the live data. Expired heads are retired in batches (one commit per
//   prefix and up to 99 heads: each head checked, deleted, counted out and
//   marked dead); dead generations are reclaimed (_kv_reclaim.ts: their
//   slots deleted by index, top down, the marker following, in commits shared
//   by many generations, then their large slots' chunks and whatever else is
//   left under their slots); expired pairs are deleted by the registry of
//   their prefix.
// - Every step checks what it reads, so sweeps of several processes, and
//   writers refreshing a thread meanwhile, never lose live data.
//
// Who sweeps: the backend holding the store's sweeper lease (_kv_lease.ts),
// on its calls, at most once a second unless a backlog is left, each run
// bounded (ROUTINE_ENTRIES entries, ROUTINE_SLOTS slots); or anyone through
// the public `sweep()` (from `Deno.cron`, say). It does not depend on
// `listenQueue`, which the new Deno Deploy and KV Connect lack (Deploy
// Classic and local files have it). `expireIn` is only a backstop on
// registry keys, since Deno KV deletes expired keys late (about a minute on a
// local file), and slots of a sliding thread can carry no expiry that appends
// would not have to rewrite.

import type { KvBlobStore } from "./_kv_blobs.ts";
import {
  dueEnd,
  generationKey,
  INDEX,
  retireGeneration,
} from "./_kv_expiry_index.ts";
import { headIsLive } from "./_kv_heads.ts";
import {
  expirySecond,
  type KeyId,
  KvKeys,
  type ThreadHead,
} from "./_kv_keys.ts";
import { SweepLease } from "./_kv_lease.ts";
import {
  type Budget,
  budgetOf,
  type DeadGeneration,
  inParallel,
  reclaimGenerations,
} from "./_kv_reclaim.ts";
import { KvStore } from "./_kv_store.ts";
import { batches, CONFLICT, KV_LIMITS } from "./_kv_util.ts";

// What the append queue writes in the expiry index, where it imports them from.
export { indexGeneration, retireGeneration } from "./_kv_expiry_index.ts";

/** A backend runs the routine sweep at most this often, unless a backlog is left. */
const SWEEP_INTERVAL_MS = 1_000;
/** Expiry-index entries one routine sweep handles at most; the rest waits. */
export const ROUTINE_ENTRIES = 200;
/** Slots one routine sweep deletes at most; a longer dead thread is finished later. */
export const ROUTINE_SLOTS = 10_000;
/** Each backend looks for lost uploads of its own prefix this often. */
const UPLOAD_CHECK_MS = 10_000;
/** Entries one listing of the index returns; `sweep()` lists again for more. */
const LISTING = 1_000;
/** Prefixes whose stores a sweeper keeps at hand. */
const TENANTS_KEPT = 64;

/** The registry's part of a sweep (`KvRegistry`). */
export interface DuePairs {
  /** Deletes the pair of `chain` if it expired; drops `entry` if it is stale. */
  expire(
    entry: Deno.KvEntry<number | null>,
    chain: KeyId,
    second: number,
    now: number,
  ): Promise<void>;
}

/** The append queue's head cache (`HeadCache`), told when generations end. */
export interface EndedHeads {
  /** Forgets the cached head of `threadId` (of every thread if absent) and the thread count. */
  forget(threadId?: KeyId): void;
}

/** What a sweep needs of one prefix: its store, blob store and registry. */
export interface SweptTenant {
  store: KvStore;
  blobs: KvBlobStore;
  pairs: DuePairs;
}

/** How a sweeper runs (from `KvBackendOptions`). */
export interface SweeperOptions {
  /** Whether the backend's calls run the routine sweep. */
  onUse: boolean;
  /** The blob store and registry of another prefix, on a store for it. */
  tenantOf(store: KvStore): Omit<SweptTenant, "store">;
}

/**
 * What {@linkcode KvBackend.sweep} did.
 *
 * @example
 * ```ts
 * import { KvBackend, type KvSweepResult } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * await using backend = await KvBackend.open({ kvPath: ":memory:" });
 * const result: KvSweepResult = await backend.sweep();
 * assert.equal(result.swept, true);
 * assert.equal(result.more, false);
 * ```
 */
export interface KvSweepResult {
  /**
   * Whether this backend swept: `false` when another backend on the store
   * holds the sweeper lease (it sweeps), and nothing was done.
   */
  swept: boolean;
  /** Expiry-index entries handled (threads, dead generations, registry pairs). */
  entries: number;
  /** Expired threads retired (their heads deleted). */
  threads: number;
  /** Slots deleted (of expired, deleted and cleared threads). */
  slots: number;
  /** Whether entries were left due because `maxEntries` was reached. */
  more: boolean;
}

/**
 * Options of {@linkcode KvBackend.sweep}.
 *
 * @example
 * ```ts
 * import { KvBackend, type KvSweepOptions } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * await using backend = await KvBackend.open({ kvPath: ":memory:" });
 * const options: KvSweepOptions = { maxEntries: 1_000 };
 * assert.equal((await backend.sweep(options)).more, false);
 * ```
 */
export interface KvSweepOptions {
  /**
   * Most expiry-index entries to handle; the rest is left for the next sweep
   * (`more` is then `true`).
   *
   * @default {Infinity: until nothing is due}
   */
  maxEntries?: number;
}

/** Sweeps the store's expiry index; retires and reclaims threads of its own prefix on demand. */
export class KvSweeper {
  readonly #own: SweptTenant;
  readonly #heads: EndedHeads;
  readonly #options: SweeperOptions;
  readonly #lease: SweepLease;
  /** Other prefixes' stores, most recently swept last. */
  readonly #tenants = new Map<string, SweptTenant>();
  #sweeping: Promise<void> | undefined;
  #nextSweepAt = 0;
  #nextUploadCheckAt = 0;

  constructor(own: SweptTenant, heads: EndedHeads, options: SweeperOptions) {
    this.#own = own;
    this.#heads = heads;
    this.#options = options;
    this.#lease = new SweepLease(own.store);
  }

  /**
   * Starts the routine sweep of a call when one is due; returns it so the
   * call that started it waits for it (other calls go on). Bounded: a read
   * of the lease at most every LEASE_MS (nothing more unless this backend
   * holds it), then at most ROUTINE_ENTRIES index entries and ROUTINE_SLOTS
   * slots; every UPLOAD_CHECK_MS also a listing of this prefix's unfinished
   * uploads. Due at most once a second, or at once after a run that left a
   * backlog. A sweep that fails is retried by a later one.
   */
  maintain(): Promise<void> | undefined {
    if (!this.#options.onUse) return;
    const now = Date.now();
    if (this.#sweeping !== undefined || now < this.#nextSweepAt) return;
    this.#nextSweepAt = now + SWEEP_INTERVAL_MS;
    this.#sweeping = this.#routine(now).catch(() => {}).finally(() => {
      this.#sweeping = undefined;
    });
    return this.#sweeping;
  }

  async #routine(now: number): Promise<void> {
    if (now >= this.#nextUploadCheckAt) {
      this.#nextUploadCheckAt = now + UPLOAD_CHECK_MS;
      await this.#own.blobs.reclaimLost(now);
    }
    if (!(await this.#lease.hold(now, () => this.#anyDue(now)))) return;
    const more = await this.#round(
      budgetOf(ROUTINE_ENTRIES, ROUTINE_SLOTS),
      now,
    );
    if (more) this.#nextSweepAt = 0; // a backlog: the next call goes on
  }

  /** Whether any entry of the index is due at `now`. */
  async #anyDue(now: number): Promise<boolean> {
    const { kv } = this.#own.store;
    const [first] = await this.#own.store.retryWhileLocked(() =>
      Array.fromAsync(kv.list({ start: INDEX, end: dueEnd(now) }, {
        limit: 1,
      }))
    );
    return first !== undefined;
  }

  /** Resolves when the routine sweep in progress, if any, has ended. */
  async idle(): Promise<void> {
    await this.#sweeping;
  }

  /** Waits for the sweep in progress, then gives the lease up. */
  async close(): Promise<void> {
    await this.#sweeping;
    await this.#lease.release().catch(() => {});
  }

  /**
   * Sweeps the whole store now, if no other backend holds the lease: every
   * due entry (up to `maxEntries`), then this prefix's lost uploads.
   */
  async sweep(options: KvSweepOptions = {}): Promise<KvSweepResult> {
    const now = Date.now();
    if (!(await this.#lease.hold(now, undefined, true))) {
      return { swept: false, entries: 0, threads: 0, slots: 0, more: false };
    }
    const budget = budgetOf(options.maxEntries ?? Infinity, Infinity);
    let more = true;
    while (more && budget.entries > 0) {
      await this.#lease.hold(Date.now());
      more = await this.#round(budget, Date.now());
    }
    await this.#own.blobs.reclaimLost(Date.now());
    return { swept: true, ...budget.done, more };
  }

  /**
   * One listing of the due entries (within `budget`, which it spends), each
   * handled by its prefix.
   *
   * @returns Whether entries may be left due.
   */
  async #round(budget: Budget, now: number): Promise<boolean> {
    const { kv } = this.#own.store;
    const limit = Math.min(budget.entries, LISTING);
    const entries = await this.#own.store.retryWhileLocked(() =>
      Array.fromAsync(
        kv.list<number | null>({
          start: INDEX,
          end: dueEnd(now),
        }, { limit, batchSize: Math.min(limit, 500) }),
      )
    );
    budget.entries -= entries.length;
    budget.done.entries += entries.length;
    const byPrefix = Map.groupBy(entries, (entry) => entry.key[3] as string);
    for (const [prefix, due] of byPrefix) {
      if (budget.slots <= 0) return true;
      await this.#sweepPrefix(this.#tenant(prefix), due, budget, now);
    }
    return entries.length === limit || budget.slots <= 0;
  }

  /** The stores of `prefix`: this backend's own, or one made for it. */
  #tenant(prefix: string): SweptTenant {
    if (prefix === this.#own.store.keys.prefix) return this.#own;
    let tenant = this.#tenants.get(prefix);
    if (tenant !== undefined) {
      this.#tenants.delete(prefix);
    } else {
      const own = this.#own.store;
      const store = new KvStore(own.kv, new KvKeys(prefix), {
        maxChecks: own.maxChecks,
        maxAttempts: own.maxAttempts,
        retryTimeoutMs: own.retryTimeoutMs,
        idempotentRetries: own.idempotentRetries,
      });
      tenant = { store, ...this.#options.tenantOf(store) };
      if (this.#tenants.size >= TENANTS_KEPT) {
        this.#tenants.delete(this.#tenants.keys().next().value!);
      }
    }
    this.#tenants.set(prefix, tenant);
    return tenant;
  }

  /** Handles the due entries of one prefix: threads, dead generations, pairs. */
  async #sweepPrefix(
    tenant: SweptTenant,
    due: Deno.KvEntry<number | null>[],
    budget: Budget,
    now: number,
  ): Promise<void> {
    const dead: DeadGeneration[] = [];
    const expiring: Deno.KvEntry<number | null>[] = [];
    const pairs: Deno.KvEntry<number | null>[] = [];
    for (const entry of due) {
      const [, , second, , kind, id, gen] = entry.key as [
        true,
        "exp",
        number,
        string,
        string,
        KeyId,
        string,
      ];
      if (kind === "r") pairs.push(entry);
      else if (second !== 0) expiring.push(entry);
      else {
        dead.push({
          threadId: id,
          gen,
          length: entry.value ?? 0,
          marker: entry.key,
        });
      }
    }
    const retired = await this.#retireDue(tenant, expiring, now);
    budget.done.threads += retired.length;
    await reclaimGenerations(tenant, [...retired, ...dead], budget);
    await inParallel(pairs, (entry) => {
      const [, , second, , , chain] = entry.key as [
        true,
        "exp",
        number,
        string,
        "r",
        KeyId,
      ];
      return tenant.pairs.expire(entry, chain, second, now);
    });
    // A prefix whose threads end may hold uploads of a writer that died.
    if (retired.length > 0 && tenant !== this.#own) {
      await tenant.blobs.reclaimLost(now);
    }
  }

  /**
   * Retires the expired heads that `due` (entries at their expiry second)
   * point to, in commits of up to 99 heads (each head checked, the thread
   * counter too), dropping entries that are stale. Retried on conflict.
   *
   * @returns The generations it ended.
   */
  async #retireDue(
    tenant: SweptTenant,
    due: Deno.KvEntry<number | null>[],
    now: number,
  ): Promise<DeadGeneration[]> {
    const candidates = due.map((entry) => ({
      threadId: entry.key[5] as KeyId,
      gen: entry.key[6] as string,
      second: entry.key[2] as number,
      entry: entry as Deno.KvEntry<unknown> | undefined,
    }));
    return await this.#retireHeads(tenant, candidates, now);
  }

  /**
   * Retires the heads of `candidates` that are still generation `gen` and
   * expired at `now`; a candidate's index `entry` (if given) is deleted when
   * its head is gone, of another generation, or live with another expiry.
   */
  async #retireHeads(
    tenant: SweptTenant,
    candidates: {
      threadId: KeyId;
      gen: string;
      second: number;
      entry: Deno.KvEntry<unknown> | undefined;
    }[],
    now: number,
  ): Promise<DeadGeneration[]> {
    const { store } = tenant;
    const { kv, keys } = store;
    const ended: DeadGeneration[] = [];
    // Each head: a check, three mutations, one set; plus the counter.
    const runs = batches(
      candidates,
      Math.min(store.maxChecks - 1, 99),
      ({ threadId }) => keys.threadKeyBytes(threadId),
      Math.min(KV_LIMITS.setKeyBytes, KV_LIMITS.commitBytes / 5),
    );
    for (const run of runs) {
      const retired = await store.retryOnConflict(
        `Cannot retire expired threads of prefix ${
          JSON.stringify(keys.prefix)
        }`,
        async () => {
          const read = [
            ...run.map(({ threadId }) => keys.head(threadId)),
            keys.threadCount(),
          ];
          const entries = await getAll(store, read);
          const count = entries.pop()! as Deno.KvEntryMaybe<number>;
          const op = kv.atomic();
          const retiring: DeadGeneration[] = [];
          run.forEach(({ threadId, gen, second, entry }, i) => {
            const headEntry = entries[i] as Deno.KvEntryMaybe<ThreadHead>;
            const head = headEntry.value;
            if (head === null || head.g !== gen) {
              // The generation ended by a path that left its own marker.
              if (entry !== undefined) op.delete(entry.key);
              return;
            }
            if (headIsLive(head, now)) {
              if (
                entry !== undefined &&
                (head.e === 0 || expirySecond(head.e) !== second)
              ) op.delete(entry.key); // a stale entry
              return;
            }
            op.check(headEntry).delete(headEntry.key);
            retireGeneration(op, keys, threadId, head);
            retiring.push({
              threadId,
              gen,
              length: head.n,
              marker: generationKey(keys, 0, threadId, gen),
            });
          });
          if (retiring.length > 0) {
            op.check(count).set(
              keys.threadCount(),
              Math.max(0, (count.value ?? 0) - retiring.length),
            );
          }
          return (await op.commit()).ok ? retiring : CONFLICT;
        },
      );
      if (tenant === this.#own) {
        for (const { threadId } of retired) this.#heads.forget(threadId);
      }
      ended.push(...retired);
    }
    return ended;
  }

  /** Retires every expired head of this prefix (exact thread counts for maxThreads); the sweep reclaims them. */
  async retireExpired(): Promise<void> {
    const now = Date.now();
    const { keys } = this.#own.store;
    const heads = await this.#own.store.listAll<ThreadHead>(keys.heads());
    const expired = heads.filter(({ value }) => !headIsLive(value, now));
    await this.#retireHeads(
      this.#own,
      expired.map(({ key, value }) => ({
        threadId: key[2] as KeyId,
        gen: value.g,
        second: expirySecond(value.e),
        entry: undefined,
      })),
      now,
    );
  }

  /**
   * Retires a thread (its head goes, counted out) and reclaims its storage
   * before resolving (or leaves it to a later sweep if that fails). An
   * expired head is retired too: a delete that answers `false` leaves the
   * thread gone for good (see _kv_heads.ts).
   *
   * @returns `true` if the thread was live.
   */
  async retireThread(threadId: string): Promise<boolean> {
    let live = false;
    const retired = await this.#retireHead(
      threadId,
      `Cannot delete thread ${JSON.stringify(threadId)}`,
      (entry) => {
        live = headIsLive(entry.value, Date.now());
        return true;
      },
    );
    if (retired === null) return false;
    await this.#reclaimQuietly([{
      threadId,
      gen: retired.g,
      length: retired.n,
      marker: generationKey(this.#own.store.keys, 0, threadId, retired.g),
    }]);
    return live;
  }

  /** Retires every thread of this prefix (and no other's) and reclaims their storage. */
  async retireAll(): Promise<void> {
    const { kv, keys } = this.#own.store;
    const dead: DeadGeneration[] = [];
    // Retire the heads in batches, each one atomic with the thread counter.
    await this.#own.store.drain<ThreadHead>(keys.heads(), {
      what: "the buffer",
      items: "threads",
      // Each head: a check and three mutations, one of them a set.
      perCommit: Math.min(this.#own.store.maxChecks - 1, 300),
      weight: (entry) => keys.threadKeyBytes(entry.key[2] as KeyId),
      budget: KV_LIMITS.setKeyBytes,
      commit: (batch) =>
        this.#own.store.retryWhileLocked(async () => {
          const count = await kv.get<number>(keys.threadCount());
          const op = kv.atomic().check(count);
          for (const entry of batch) {
            op.check(entry).delete(entry.key);
            retireGeneration(op, keys, entry.key[2] as KeyId, entry.value);
          }
          op.set(
            keys.threadCount(),
            Math.max(0, (count.value ?? 0) - batch.length),
          );
          if ((await op.commit()).ok) {
            for (const { key, value } of batch) {
              const threadId = key[2] as KeyId;
              dead.push({
                threadId,
                gen: value.g,
                length: value.n,
                marker: generationKey(keys, 0, threadId, value.g),
              });
            }
          }
        }),
    });
    this.#heads.forget();
    await this.#reclaimQuietly(dead);
  }

  /**
   * Retires the head of `threadId` if `accept` takes it (read together with
   * the thread counter): one commit checks both, deletes the head, counts it
   * out and marks its generation dead. Retried on conflict.
   *
   * @returns The retired head, or `null` if there was none or `accept` refused it.
   */
  async #retireHead(
    threadId: string,
    what: string,
    accept: (entry: Deno.KvEntry<ThreadHead>) => boolean,
  ): Promise<ThreadHead | null> {
    const { kv, keys } = this.#own.store;
    const retired = await this.#own.store.retryOnConflict(what, async () => {
      const [entry, count] = await kv.getMany<[ThreadHead, number]>([
        keys.head(threadId),
        keys.threadCount(),
      ]);
      const head = entry.value;
      if (head === null || !accept(entry as Deno.KvEntry<ThreadHead>)) {
        return null;
      }
      const op = kv.atomic().check(entry, count);
      op.delete(entry.key);
      op.set(keys.threadCount(), Math.max(0, (count.value ?? 0) - 1));
      retireGeneration(op, keys, threadId, head);
      return (await op.commit()).ok ? head : CONFLICT;
    });
    this.#heads.forget(threadId);
    return retired;
  }

  /** Reclaims dead generations of this prefix now; on failure their markers stay for a later sweep. */
  async #reclaimQuietly(dead: DeadGeneration[]): Promise<void> {
    try {
      await reclaimGenerations(
        this.#own,
        dead,
        budgetOf(Infinity, Infinity),
      );
    } catch {
      // The markers are still there: a later sweep retries.
    }
  }
}

/** Reads `keys` (10 a `getMany`, a few at once), in order. */
async function getAll(
  store: KvStore,
  keys: Deno.KvKey[],
): Promise<Deno.KvEntryMaybe<unknown>[]> {
  const runs: Deno.KvKey[][] = [];
  for (let i = 0; i < keys.length; i += KV_LIMITS.getMany) {
    runs.push(keys.slice(i, i + KV_LIMITS.getMany));
  }
  const read = await inParallel(
    runs,
    (run) => store.retryWhileLocked(() => store.kv.getMany(run)),
  );
  return read.flat();
}
