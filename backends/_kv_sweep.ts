// Owns the expiry index and the end of generations (retire, sweep, reclaim) for every prefix of a store; never hides or changes live data.
//
// - The expiry index is store-wide, `[true, "exp", second, prefix, ...]`
//   (the first part `true` is no prefix: prefixes are strings), so one
//   listing in key order finds what is due in every tenant, also one that is
//   never used again. It holds one entry per live generation (when `ttlMs >
//   0`, `[..., prefix, "t", threadId, gen]`) and per registry pair (`[...,
//   prefix, "r", chain]`), keyed by the whole second it expires in, moved by
//   the commit that refreshes it (at most once a second per thread, so
//   appends stay O(1)); plus one marker per dead generation at second 0,
//   whose value is the length still to reclaim. The functions below say
//   which entries a write adds, moves or removes; the append queue and the
//   registry put those in their own commits.
// - A sweep lists the index from the start up to the current second: only
//   entries that are due, oldest first, never the live data. Expired heads
//   are retired in batches (one commit per prefix and up to 99 heads: each
//   head checked, deleted, counted out and marked dead); dead generations
//   have their slots deleted by index (top down, the marker following) in
//   commits shared by many generations, then their large slots' chunks and
//   whatever else is left under their slots (append ids); expired pairs are
//   deleted by the registry of their prefix.
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
import { headIsLive } from "./_kv_heads.ts";
import {
  expirySecond,
  type KeyId,
  KvKeys,
  type ThreadHead,
} from "./_kv_keys.ts";
import { SweepLease } from "./_kv_lease.ts";
import { KvStore } from "./_kv_store.ts";
import { batches, CONFLICT, KV_LIMITS } from "./_kv_util.ts";

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
/** Listings or reads of one sweep step in flight at once. */
const IN_FLIGHT = 8;
/** Prefixes whose stores a sweeper keeps at hand. */
const TENANTS_KEPT = 64;

/** The store-wide expiry index: what a sweep lists. */
const INDEX: Deno.KvKey = [true, "exp"];

/** The store-wide form of a tenant's index key `[p, "exp", second, ...rest]`. */
function indexed(tenantKey: Deno.KvKey): Deno.KvKey {
  const [prefix, , second, ...rest] = tenantKey;
  return [...INDEX, second!, prefix!, ...rest];
}

/** The index key of generation `gen` of a thread, due at `second` (0: dead). */
function generationKey(
  keys: KvKeys,
  second: number,
  threadId: KeyId,
  gen: string,
): Deno.KvKey {
  return indexed(keys.threadExpiry(second, threadId, gen));
}

/**
 * Adds to `op` the index entry of generation `gen` expiring at `expiresAt`
 * (0: never), moving the entry it had at `before` (its live head's expiry
 * before this commit; `null` for a new generation). Written only when the
 * second changes, so a thread appended to many times a second stays O(1).
 */
export function indexGeneration(
  op: Deno.AtomicOperation,
  keys: KvKeys,
  threadId: KeyId,
  gen: string,
  before: number | null,
  expiresAt: number,
): void {
  if (expiresAt === 0) return;
  const second = expirySecond(expiresAt);
  if (before !== null && before !== 0 && expirySecond(before) === second) {
    return;
  }
  if (before !== null && before !== 0) {
    op.delete(generationKey(keys, expirySecond(before), threadId, gen));
  }
  op.set(generationKey(keys, second, threadId, gen), null);
}

/**
 * Adds to `op` the mutations that end a thread's generation: its expiry
 * entry goes, and a dead-generation marker holding its length tells the
 * sweep what to reclaim. The caller deletes (or replaces) the head, checks
 * it, and sets the thread counter.
 */
export function retireGeneration(
  op: Deno.AtomicOperation,
  keys: KvKeys,
  threadId: KeyId,
  head: ThreadHead,
): void {
  if (head.e !== 0) {
    op.delete(generationKey(keys, expirySecond(head.e), threadId, head.g));
  }
  op.set(generationKey(keys, 0, threadId, head.g), head.n);
}

/**
 * The index entry of a registry pair expiring at `expiresAt`, or `undefined`
 * if it never expires (0). The registry sets it with the pair and deletes it
 * with the pair.
 */
export function pairIndexKey(
  keys: KvKeys,
  chain: KeyId,
  expiresAt: number,
): Deno.KvKey | undefined {
  return expiresAt === 0
    ? undefined
    : indexed(keys.pairExpiry(expirySecond(expiresAt), chain));
}

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

/** What a sweep may still do, and what it did. */
interface Budget {
  /** Index entries it may still list. */
  entries: number;
  /** Slots it may still delete. */
  slots: number;
  done: { entries: number; threads: number; slots: number };
}

/** A budget of `entries` index entries and `slots` slots. */
function budgetOf(entries: number, slots: number): Budget {
  return { entries, slots, done: { entries: 0, threads: 0, slots: 0 } };
}

/** A dead generation to reclaim, and its marker in the index. */
interface DeadGeneration {
  threadId: KeyId;
  gen: string;
  /** Slots below this index may still exist. */
  length: number;
  marker: Deno.KvKey;
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
      Array.fromAsync(kv.list({ start: INDEX, end: this.#dueEnd(now) }, {
        limit: 1,
      }))
    );
    return first !== undefined;
  }

  /** The end of the due entries at `now`: the current second is not over, so its entries wait. */
  #dueEnd(now: number): Deno.KvKey {
    return [...INDEX, expirySecond(now)];
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
          end: this.#dueEnd(now),
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
    await this.#reclaim(tenant, [...retired, ...dead], budget);
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
      await this.#reclaim(this.#own, dead, budgetOf(Infinity, Infinity));
    } catch {
      // The markers are still there: a later sweep retries.
    }
  }

  /**
   * The generations of `dead` that may hold large slots: from one listing of
   * the prefix's blob references when it has few (most prefixes have few
   * large slots), else all of them (each is then listed on its own).
   */
  async #withLargeSlots(
    store: KvStore,
    dead: DeadGeneration[],
  ): Promise<DeadGeneration[]> {
    if (dead.length <= 1) return dead;
    const refs = await store.retryWhileLocked(() =>
      Array.fromAsync(
        // Every blob reference of the prefix: [p, "blobref"].
        store.kv.list({ prefix: store.keys.blobRefs("", "").slice(0, 2) }, {
          limit: LISTING,
          batchSize: LISTING,
        }),
      )
    );
    if (refs.length === LISTING) return dead;
    const holding = new Set(
      refs.map(({ key }) => `${partText(key[2] as KeyId)}/${key[3] as string}`),
    );
    return dead.filter(({ threadId, gen }) =>
      holding.has(`${partText(store.keys.head(threadId)[2] as KeyId)}/${gen}`)
    );
  }

  /**
   * Reclaims dead generations of one prefix within `budget` (slots): their
   * large slots' chunks, their slots by index (top down, in commits shared by
   * many generations; a generation cut by the budget keeps its marker with
   * the length left), then what else is left under their slots (append
   * ids), and their markers.
   */
  async #reclaim(
    tenant: SweptTenant,
    dead: DeadGeneration[],
    budget: Budget,
  ): Promise<void> {
    const { store, blobs } = tenant;
    const { kv, keys } = store;
    await inParallel(
      await this.#withLargeSlots(store, dead),
      // A hashed id passes through the key builders as it is.
      ({ threadId, gen }) => blobs.reclaimGeneration(threadId as string, gen),
    );
    const done: DeadGeneration[] = [];
    let op = kv.atomic();
    let mutations = 0;
    let bytes = 0;
    const flush = async () => {
      if (mutations === 0) return;
      const full = op;
      op = kv.atomic();
      mutations = 0;
      bytes = 0;
      await store.retryWhileLocked(() => full.commit());
    };
    for (const generation of dead) {
      const { threadId, gen, marker } = generation;
      const keyBytes = keys.threadKeyBytes(threadId);
      let top = generation.length;
      while (top > 0 && budget.slots > 0) {
        // Room for the deletes and, if they do not finish it, the marker.
        const room = Math.min(
          KV_LIMITS.mutations - 1 - mutations,
          Math.floor((KV_LIMITS.commitBytes - bytes) / keyBytes) - 2,
          budget.slots,
        );
        if (room <= 0) {
          await flush();
          continue;
        }
        const bottom = Math.max(0, top - room);
        for (let index = bottom; index < top; index++) {
          op.delete(keys.slot(threadId, gen, index));
        }
        mutations += top - bottom;
        bytes += (top - bottom) * keyBytes;
        budget.slots -= top - bottom;
        budget.done.slots += top - bottom;
        top = bottom;
        if (top > 0) {
          // Not finished in this commit: the marker says what is left.
          op.set(marker, top);
          mutations++;
          bytes += 2 * keyBytes;
          await flush();
        }
      }
      if (top > 0) break; // out of budget
      done.push(generation);
    }
    await flush();
    // What is left under the finished generations' slots (append ids), and
    // their markers: deleted in shared commits.
    const leftovers = await inParallel(
      done,
      ({ threadId, gen }) => store.listAll(keys.slots(threadId, gen)),
    );
    const keysToDelete = [
      ...leftovers.flat().map((entry) => entry.key),
      ...done.map(({ marker }) => marker),
    ];
    for (
      const run of batches(
        keysToDelete,
        KV_LIMITS.mutations,
        (key) => keyBytes(key),
        KV_LIMITS.commitBytes,
      )
    ) {
      const deletes = kv.atomic();
      for (const key of run) deletes.delete(key);
      await store.retryWhileLocked(() => deletes.commit());
    }
  }
}

/** Runs `task` on every item, IN_FLIGHT at a time; returns the results in order. */
async function inParallel<T, R>(
  items: readonly T[],
  task: (item: T) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await task(items[i]!);
    }
  };
  await Promise.all(
    Array.from({ length: Math.min(IN_FLIGHT, items.length) }, lane),
  );
  return results;
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

/** A key part as text, for sets: a hashed id (bytes) in hex. */
function partText(part: KeyId): string {
  return typeof part === "string"
    ? `s${part}`
    : `b${Array.from(part, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** An upper bound of the bytes of a key (strings as UTF-8, 3 bytes a unit, and tags). */
function keyBytes(key: Deno.KvKey): number {
  let bytes = 0;
  for (const part of key) {
    bytes += typeof part === "string"
      ? part.length * 3 + 2
      : part instanceof Uint8Array
      ? part.byteLength * 2 + 2
      : 10;
  }
  return bytes;
}
