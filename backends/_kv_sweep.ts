// Owns the expiry index and the end of generations (retire, sweep, reclaim); never hides or changes live data.
//
// - The expiry index (`[p, "exp", second, ...]`, see `_kv_keys.ts`) holds
//   one entry per live generation (when `ttlMs > 0`) and per registry pair,
//   keyed by the whole second it expires in, moved by the commit that
//   refreshes it (at most once a second per thread, so appends stay O(1)),
//   plus one marker per dead generation at second 0. The functions below
//   say which entries a write adds, moves or removes; the append queue and
//   the registry put those in their own commits.
// - A sweep lists the index from the start up to the current second: only
//   entries that are due, oldest first, never the live data. Expired heads
//   are retired (deleted, counted out, marked dead); dead generations have
//   their slots deleted by index (their length is in the marker) and their
//   large slots' chunks through `blobref` keys; expired pairs are deleted
//   (by the registry). Uploads past their deadline (a writer died
//   mid-append) are reclaimed by the blob store.
// - Every step checks what it reads, so sweeps of several processes, and
//   writers refreshing a thread meanwhile, never lose live data.
//
// The sweep runs on use, at most once a second per backend, bounded per run
// (it does not depend on `listenQueue`, which Deno Deploy lacks); it can also
// be run on its own. `expireIn` is only a backstop on registry keys, since
// Deno KV deletes expired keys late (about a minute on a local file), and
// slots of a sliding thread can carry no expiry that appends would not have
// to rewrite.

import type { KvBlobStore } from "./_kv_blobs.ts";
import { headIsLive } from "./_kv_heads.ts";
import {
  expirySecond,
  isLive,
  type KvKeys,
  type ThreadHead,
} from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { CONFLICT, KV_LIMITS } from "./_kv_util.ts";

/** Sweep at most this often per backend: reclamation within a few seconds of expiry. */
const SWEEP_INTERVAL_MS = 1_000;
/** Expiry-index entries one routine sweep handles; the rest waits for the next. */
const SWEEP_ENTRIES = 200;

/**
 * Adds to `op` the index entry of generation `gen` expiring at `expiresAt`
 * (0: never), moving the entry it had at `before` (its live head's expiry
 * before this commit; `null` for a new generation). Written only when the
 * second changes, so a thread appended to many times a second stays O(1).
 */
export function indexGeneration(
  op: Deno.AtomicOperation,
  keys: KvKeys,
  threadId: string,
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
    op.delete(keys.threadExpiry(expirySecond(before), threadId, gen));
  }
  op.set(keys.threadExpiry(second, threadId, gen), null);
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
  threadId: string,
  head: ThreadHead,
): void {
  if (head.e !== 0) {
    op.delete(keys.threadExpiry(expirySecond(head.e), threadId, head.g));
  }
  op.set(keys.threadExpiry(0, threadId, head.g), head.n);
}

/**
 * The index entry of a registry pair expiring at `expiresAt`, or `undefined`
 * if it never expires (0). The registry sets it with the pair and deletes it
 * with the pair.
 */
export function pairIndexKey(
  keys: KvKeys,
  chain: string,
  expiresAt: number,
): Deno.KvKey | undefined {
  return expiresAt === 0
    ? undefined
    : keys.pairExpiry(expirySecond(expiresAt), chain);
}

/** The registry's part of a sweep (`KvRegistry`). */
export interface DuePairs {
  /** Deletes the pair of `chain` if it expired; drops `entry` if it is stale. */
  expire(
    entry: Deno.KvEntry<number | null>,
    chain: string,
    second: number,
    now: number,
  ): Promise<void>;
}

/** The append queue's head cache (`HeadCache`), told when generations end. */
export interface EndedHeads {
  /** Forgets the cached head of `threadId` (of every thread if absent) and the thread count. */
  forget(threadId?: string): void;
}

/** Retires threads and reclaims what dead generations, lost uploads and expired pairs left. */
export class KvSweeper {
  readonly #store: KvStore;
  readonly #blobs: KvBlobStore;
  readonly #pairs: DuePairs;
  readonly #heads: EndedHeads;
  #sweeping: Promise<void> | undefined;
  #nextSweepAt = 0;

  constructor(
    store: KvStore,
    blobs: KvBlobStore,
    pairs: DuePairs,
    heads: EndedHeads,
  ) {
    this.#store = store;
    this.#blobs = blobs;
    this.#pairs = pairs;
    this.#heads = heads;
  }

  /**
   * Starts a routine sweep when one is due (at most once a second per
   * backend); returns it so the caller that started it waits for it. Other
   * callers go on. A sweep that fails is retried by the next one.
   */
  maintain(): Promise<void> | undefined {
    const now = Date.now();
    if (this.#sweeping !== undefined || now < this.#nextSweepAt) return;
    this.#nextSweepAt = now + SWEEP_INTERVAL_MS;
    const sweep = this.sweep().catch(() => {});
    this.#sweeping = sweep.finally(() => {
      this.#sweeping = undefined;
    });
    return this.#sweeping;
  }

  /** Resolves when the routine sweep in progress, if any, has ended. */
  async idle(): Promise<void> {
    await this.#sweeping;
  }

  /**
   * One bounded sweep: the due entries of the expiry index (at most 200,
   * oldest first), then the uploads past their deadline.
   */
  async sweep(): Promise<void> {
    const now = Date.now();
    const entries = await this.#due(now, this.#store.keys.expiries(), {
      limit: SWEEP_ENTRIES,
      batchSize: SWEEP_ENTRIES,
    });
    for (const entry of entries) {
      await this.#sweepEntry(entry, now, false);
    }
    await this.#blobs.reclaimLost(now);
  }

  /** Retires every expired head of this prefix: exact thread counts for maxThreads. */
  async retireExpired(): Promise<void> {
    const now = Date.now();
    const start = [...this.#store.keys.expiries(), 1]; // past the dead ones
    for (const entry of await this.#due(now, start, { batchSize: 500 })) {
      if (entry.key[3] === "t") await this.#sweepEntry(entry, now, true);
    }
  }

  /** The expiry-index entries from `start` that are due at `now`, in key order. */
  async #due(
    now: number,
    start: Deno.KvKey,
    options: Deno.KvListOptions,
  ): Promise<Deno.KvEntry<number | null>[]> {
    const { kv, keys } = this.#store;
    const end = keys.expiriesEnd(expirySecond(now));
    return await this.#store.retryWhileLocked(() =>
      Array.fromAsync(kv.list<number | null>({ start, end }, options))
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
    await this.#reclaimQuietly(threadId, retired.g, retired.n);
    return live;
  }

  /** Retires every thread of this prefix (and no other's) and reclaims their storage. */
  async retireAll(): Promise<void> {
    const { kv, keys } = this.#store;
    const dead: [string, ThreadHead][] = [];
    // Retire the heads in batches, each one atomic with the thread counter.
    await this.#store.drain<ThreadHead>(keys.heads(), {
      what: "the buffer",
      items: "threads",
      // Each head: a check and three mutations, one of them a set.
      perCommit: Math.min(this.#store.maxChecks - 1, 300),
      weight: (entry) => keys.threadKeyBytes(entry.key[2] as string),
      budget: KV_LIMITS.setKeyBytes,
      commit: (batch) =>
        this.#store.retryWhileLocked(async () => {
          const count = await kv.get<number>(keys.threadCount());
          const op = kv.atomic().check(count);
          for (const entry of batch) {
            op.check(entry).delete(entry.key);
            retireGeneration(op, keys, entry.key[2] as string, entry.value);
          }
          op.set(
            keys.threadCount(),
            Math.max(0, (count.value ?? 0) - batch.length),
          );
          if ((await op.commit()).ok) {
            for (const e of batch) dead.push([e.key[2] as string, e.value]);
          }
        }),
    });
    this.#heads.forget();
    for (const [threadId, head] of dead) {
      await this.#reclaimQuietly(threadId, head.g, head.n);
    }
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
    const { kv, keys } = this.#store;
    const retired = await this.#store.retryOnConflict(what, async () => {
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

  async #sweepEntry(
    entry: Deno.KvEntry<number | null>,
    now: number,
    retireOnly: boolean,
  ): Promise<void> {
    const { kv, keys } = this.#store;
    const [, , second, kind, id, gen] = entry.key as [
      string,
      string,
      number,
      string,
      string,
      string | undefined,
    ];
    if (kind === "r") {
      await this.#pairs.expire(entry, id, second, now);
      return;
    }
    if (second === 0) {
      await this.#reclaim(id, gen!, entry.value);
      await this.#store.retryWhileLocked(() =>
        kv.atomic().check(entry).delete(entry.key).commit()
      );
      return;
    }
    const headEntry = await this.#store.retryWhileLocked(() =>
      kv.get<ThreadHead>(keys.head(id))
    );
    const head = headEntry.value;
    if (head === null || head.g !== gen) {
      // The generation ended by a path that left its own marker.
      await this.#store.retryWhileLocked(() => kv.delete(entry.key));
      return;
    }
    if (isLive(head.e, now)) {
      if (head.e === 0 || expirySecond(head.e) !== second) {
        // A stale entry.
        await this.#store.retryWhileLocked(() => kv.delete(entry.key));
      }
      return;
    }
    const retired = await this.#retireHead(
      id,
      `Cannot retire expired thread ${JSON.stringify(id)}`,
      (entry) => entry.versionstamp === headEntry.versionstamp,
    );
    if (retired !== null && !retireOnly) {
      await this.#reclaimQuietly(id, head.g, head.n);
    }
  }

  /** Reclaims a dead generation now; on failure its marker stays for a later sweep. */
  async #reclaimQuietly(
    threadId: string,
    gen: string,
    length: number,
  ): Promise<void> {
    try {
      await this.#reclaim(threadId, gen, length);
      await this.#store.retryWhileLocked(() =>
        this.#store.kv.delete(this.#store.keys.threadExpiry(0, threadId, gen))
      );
    } catch {
      // The marker is still there: the next sweep retries.
    }
  }

  /** Deletes a dead generation's slots and large-slot chunks. */
  async #reclaim(
    threadId: string,
    gen: string,
    length: number | null,
  ): Promise<void> {
    const { kv, keys } = this.#store;
    await this.#blobs.reclaimGeneration(threadId, gen);
    // Delete by index without reading the slots (they may be large); then
    // list what is left, which is nothing unless the length was unknown.
    // A commit's deleted keys stay within its bytes (long ids).
    const perCommit = Math.min(
      KV_LIMITS.mutations,
      Math.floor(KV_LIMITS.commitBytes / keys.threadKeyBytes(threadId)),
    );
    for (let i = 0; i < (length ?? 0); i += perCommit) {
      const op = kv.atomic();
      for (let j = i; j < Math.min(length!, i + perCommit); j++) {
        op.delete(keys.slot(threadId, gen, j));
      }
      await this.#store.retryWhileLocked(() => op.commit());
    }
    await this.#store.deletePrefix(keys.slots(threadId, gen));
  }
}
