// Owns the commit of appends (queue, batches, plans, head cache); never writes a slot in a commit that does not check its thread's head.
//
// Appends made concurrently in one isolate wait in a queue while a commit is
// in flight; the next commit takes as many of them as the atomic limits
// allow (checks, 1000 mutations, 800 KiB, 80 KiB of set keys), over one
// thread or many. Each commit checks the versionstamp of every head it
// relies on (and of the thread counter when it creates or refuses threads),
// so across isolates and processes the indexes of a thread are exactly
// `0..n-1`. Heads are cached between commits: a lone writer commits without
// reading. Each caller gets its own index or its own error.

import { BackendError, SlotLimitError, ThreadLimitError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import type { KvBlobStore, Upload } from "./_kv_blobs.ts";
import {
  type BlobRef,
  CHUNK_BYTES,
  expiryFrom,
  isLive,
  type ThreadHead,
} from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import {
  indexGeneration,
  type KvSweeper,
  retireGeneration,
} from "./_kv_sweep.ts";
import {
  isContention,
  jitteredDelay,
  KV_LIMITS,
  MAX_KEY_BYTES,
  newId,
} from "./_kv_util.ts";

/** Heads cached for group commit; the cache is dropped when it grows past this. */
const HEAD_CACHE_SIZE = 10_000;

/** What this isolate last knew of a thread's head. */
interface CachedHead {
  versionstamp: string | null;
  head: ThreadHead | null;
}

/** What this isolate last knew of the thread counter. */
interface CachedCount {
  versionstamp: string | null;
  value: number;
}

/** What a group commit is planned from. */
interface Snapshot {
  heads: Map<string, CachedHead>;
  count: CachedCount;
}

/** One append waiting in the queue. */
interface PendingAppend {
  threadId: string;
  /** The slot itself, or the reference to its uploaded chunks. */
  value: Uint8Array | BlobRef;
  /** For a large slot: its upload, checked and deleted on publish. */
  upload: Upload | undefined;
  /** Estimated bytes this append adds to a commit (key and value). */
  bytes: number;
  /** Most bytes of one of the thread's keys. */
  keyBytes: number;
  resolve: (index: number) => void;
  reject: (error: unknown) => void;
}

/** The limits an append is planned against. */
export interface AppendLimits {
  ttlMs: number;
  maxSlotsPerThread: number;
  maxThreads: number;
}

/**
 * What this isolate last knew of heads and of the thread counter, with
 * their versionstamps: a commit checks them, so a stale entry costs one
 * retry, never a wrong index.
 */
export class HeadCache {
  readonly #heads = new Map<string, CachedHead>();
  /** The thread counter; `undefined` when it must be read again. */
  count: CachedCount | undefined;

  get(threadId: string): CachedHead | undefined {
    return this.#heads.get(threadId);
  }

  set(threadId: string, cached: CachedHead): void {
    this.#heads.set(threadId, cached);
  }

  /** Drops every head when `more` of them would grow the cache past its size. */
  makeRoom(more: number): void {
    if (this.#heads.size + more > HEAD_CACHE_SIZE) this.#heads.clear();
  }

  /** Forgets the head of `threadId` (of every thread if absent) and the counter. */
  forget(threadId?: string): void {
    if (threadId === undefined) this.#heads.clear();
    else this.#heads.delete(threadId);
    this.count = undefined;
  }
}

/** The group-commit queue of one backend's appends. */
export class KvAppendQueue {
  readonly #store: KvStore;
  readonly #blobs: KvBlobStore;
  readonly #sweeper: KvSweeper;
  readonly #heads: HeadCache;
  readonly #limits: AppendLimits;
  readonly #queue: PendingAppend[] = [];
  #flushing: Promise<void> | undefined;

  constructor(
    store: KvStore,
    blobs: KvBlobStore,
    sweeper: KvSweeper,
    heads: HeadCache,
    limits: AppendLimits,
  ) {
    this.#store = store;
    this.#blobs = blobs;
    this.#sweeper = sweeper;
    this.#heads = heads;
    this.#limits = limits;
  }

  /**
   * Appends a copy of `slot` (checked by the caller) to a thread: queued at
   * once for a small slot, so appends of one caller keep their order; a
   * large slot is uploaded first and published by the commit.
   *
   * @returns The slot's index.
   * @throws {SlotLimitError} The thread is full.
   * @throws {ThreadLimitError} The thread is new and `maxThreads` live threads exist.
   * @throws {BackendError} The thread's keys are too long, the commit kept
   * conflicting, the upload was reclaimed, or the store failed.
   */
  async append(threadId: string, slot: Uint8Array): Promise<number> {
    const keys = this.#store.keys;
    const keyBytes = keys.threadKeyBytes(threadId);
    if (!keys.threadFits(threadId)) {
      throw new BackendError(
        `Cannot append to thread ${
          JSON.stringify(threadId.slice(0, 40))
        }...: its Deno KV keys would exceed the ${MAX_KEY_BYTES} bytes allowed; use a shorter prefix or id`,
      );
    }
    if (slot.byteLength <= CHUNK_BYTES) {
      return await this.#submit({
        threadId,
        value: slot.slice(),
        upload: undefined,
        bytes: keyBytes + slot.byteLength + 16,
        keyBytes,
      });
    }
    // Copied now, before the first await: the caller may reuse its buffer
    // as soon as this call returns.
    const upload = await this.#blobs.upload(threadId, slot.slice());
    try {
      return await this.#submit({
        threadId,
        value: upload.ref,
        upload,
        bytes: 3 * keyBytes + 128,
        keyBytes,
      });
    } catch (error) {
      // Not published: reclaim the chunks now (the sweep would, later).
      await this.#blobs.discard(threadId, upload).catch(() => {});
      throw error;
    }
  }

  /** Resolves when the commit in flight, if any, has settled its callers. */
  async idle(): Promise<void> {
    await this.#flushing;
  }

  #submit(
    item: Omit<PendingAppend, "resolve" | "reject">,
  ): Promise<number> {
    const { promise, resolve, reject } = Promise.withResolvers<number>();
    this.#queue.push({ ...item, resolve, reject });
    this.#kick();
    return promise;
  }

  #kick(): void {
    if (this.#flushing !== undefined) return;
    this.#flushing = this.#flushLoop().finally(() => {
      this.#flushing = undefined;
      if (this.#queue.length > 0) this.#kick();
    });
  }

  async #flushLoop(): Promise<void> {
    // Let the callers of this same tick queue up first.
    await Promise.resolve();
    while (this.#queue.length > 0) {
      const batch = this.#takeBatch();
      try {
        await this.#commitBatch(batch);
      } catch (error) {
        // Not expected (#commitBatch settles every item); never strand a caller.
        for (const item of batch) item.reject(error);
      }
    }
  }

  /** Takes the longest run of queued appends that fits in one atomic commit. */
  #takeBatch(): PendingAppend[] {
    // Reserve one check and a few mutations for the thread counter.
    let checks = 1;
    let mutations = 1;
    let bytes = 256;
    let setKeys = 64;
    const threads = new Set<string>();
    let taken = 0;
    for (const item of this.#queue) {
      const isNew = !threads.has(item.threadId);
      const addChecks = (isNew ? 1 : 0) + (item.upload ? 1 : 0);
      // A new thread in the batch: head, expiry entry and its old one, a dead-generation marker.
      const addMutations = 1 + (isNew ? 4 : 0) + (item.upload ? 2 : 0);
      // Keys of sets: the slot, a blobref; for a new thread its head, expiry
      // entry and dead-generation marker. They count against their own
      // 80 KiB limit, and twice in the commit's bytes (with the check keys).
      const addSetKeys = item.keyBytes *
        (1 + (item.upload ? 1 : 0) + (isNew ? 3 : 0));
      const addBytes = item.bytes + (isNew ? 4 * (item.keyBytes + 64) : 0) +
        addSetKeys + addChecks * item.keyBytes;
      if (
        taken > 0 &&
        (checks + addChecks > this.#store.maxChecks ||
          mutations + addMutations > KV_LIMITS.mutations ||
          bytes + addBytes > KV_LIMITS.commitBytes ||
          setKeys + addSetKeys > KV_LIMITS.setKeyBytes)
      ) break;
      checks += addChecks;
      mutations += addMutations;
      bytes += addBytes;
      setKeys += addSetKeys;
      threads.add(item.threadId);
      taken++;
    }
    return this.#queue.splice(0, taken);
  }

  /**
   * Commits one batch of appends, retrying on conflicts; settles every item
   * with its own index or error, never throws.
   */
  async #commitBatch(batch: PendingAppend[]): Promise<void> {
    const maxAttempts = this.#store.maxAttempts;
    let pending = Map.groupBy(batch, (item) => item.threadId);
    let sweptForLimit = false;
    let lastError: unknown;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      if (attempt > 0) await jitteredDelay(attempt);
      try {
        const snapshot = await this.#loadHeads([...pending.keys()]);
        const plan = this.#plan(pending, snapshot, Date.now());
        if (plan.overflow > 0 && !sweptForLimit) {
          // At maxThreads: retire expired heads so that only live ones count.
          sweptForLimit = true;
          await this.#sweeper.retireExpired();
          this.#heads.count = undefined;
          attempt--;
          continue;
        }
        // Uploads the sweep reclaimed (their writer was too slow) fail
        // alone; checked after a failed commit only.
        const lost = attempt === 0
          ? []
          : await this.#blobs.lost([...pending.values()].flat());
        if (lost.length > 0) {
          for (const item of lost) {
            item.reject(
              new BackendError(
                `Cannot append to thread ${
                  JSON.stringify(item.threadId)
                }: the upload of a large slot took longer than uploadTimeoutMs (${this.#blobs.uploadTimeoutMs}) and was reclaimed`,
              ),
            );
          }
          pending = Map.groupBy(
            [...pending.values()].flat().filter((i) => !lost.includes(i)),
            (item) => item.threadId,
          );
          if (pending.size === 0) return;
          attempt--;
          continue;
        }
        const result = await plan.op.commit();
        if (result.ok) {
          plan.settle(result.versionstamp);
          return;
        }
      } catch (error) {
        if (!isContention(error)) {
          const failure = new BackendError(
            `Cannot append to thread ${JSON.stringify(batch[0]!.threadId)}: ${
              errorMessage(error)
            }`,
            { cause: error },
          );
          for (const items of pending.values()) {
            for (const item of items) item.reject(failure);
          }
          this.#forget(pending.keys());
          return;
        }
        lastError = error;
      }
      this.#forget(pending.keys());
    }
    for (const [threadId, items] of pending) {
      const failure = new BackendError(
        `Cannot append to thread ${
          JSON.stringify(threadId)
        }: the commit conflicted with other writers ${maxAttempts} times; raise maxAttempts or lower contention`,
        lastError === undefined ? undefined : { cause: lastError },
      );
      for (const item of items) item.reject(failure);
    }
  }

  #forget(threadIds: Iterable<string>): void {
    for (const threadId of threadIds) this.#heads.forget(threadId);
  }

  /**
   * The heads of a batch's threads and the thread counter: from the cache,
   * reading what it lacks. Returns a snapshot, so that other calls of this
   * isolate changing the cache meanwhile cannot disturb the plan.
   */
  async #loadHeads(threadIds: string[]): Promise<Snapshot> {
    const { kv, keys } = this.#store;
    const heads = new Map<string, CachedHead>();
    const missing: string[] = [];
    for (const id of threadIds) {
      const cached = this.#heads.get(id);
      if (cached === undefined) missing.push(id);
      else heads.set(id, cached);
    }
    let count = this.#heads.count;
    const toRead: Deno.KvKey[] = missing.map((id) => keys.head(id));
    if (count === undefined) toRead.push(keys.threadCount());
    if (toRead.length === 0) return { heads, count: count! };
    const reads: Promise<Deno.KvEntryMaybe<unknown>[]>[] = [];
    for (let i = 0; i < toRead.length; i += KV_LIMITS.getMany) {
      reads.push(kv.getMany(toRead.slice(i, i + KV_LIMITS.getMany)));
    }
    const entries = (await Promise.all(reads)).flat();
    this.#heads.makeRoom(missing.length);
    missing.forEach((id, i) => {
      const entry = entries[i]!;
      const cached = {
        versionstamp: entry.versionstamp,
        head: entry.value as ThreadHead | null,
      };
      heads.set(id, cached);
      this.#heads.set(id, cached);
    });
    if (count === undefined) {
      const entry = entries[entries.length - 1]!;
      count = {
        versionstamp: entry.versionstamp,
        value: (entry.value as number | null) ?? 0,
      };
      this.#heads.count = count;
    }
    return { heads, count };
  }

  /**
   * Plans one group commit from the cached heads: which callers get which
   * index, which get a limit error, and the atomic operation that makes it so
   * (it checks every head it relies on, and the counter when threads are
   * created or refused).
   */
  #plan(
    pending: Map<string, PendingAppend[]>,
    snapshot: Snapshot,
    now: number,
  ) {
    const { kv, keys } = this.#store;
    const { maxThreads, maxSlotsPerThread } = this.#limits;
    const op = kv.atomic();
    const count = snapshot.count;
    const outcomes: [PendingAppend, number | Error][] = [];
    const newHeads: [string, ThreadHead][] = [];
    let created = 0;
    let overflow = 0;
    let counterChecked = false;
    const expiresAt = expiryFrom(now, this.#limits.ttlMs);
    for (const [threadId, items] of pending) {
      const cached = snapshot.heads.get(threadId)!;
      const old = cached.head;
      op.check({ key: keys.head(threadId), versionstamp: cached.versionstamp });
      const live = old !== null && isLive(old.e, now);
      if (!live && old === null) {
        // Creates a thread: needs room under maxThreads.
        counterChecked = true;
        if (count.value + created >= maxThreads) {
          overflow++;
          for (const item of items) {
            outcomes.push([item, new ThreadLimitError(threadId, maxThreads)]);
          }
          continue;
        }
        created++;
      }
      const gen = live ? old.g : newId();
      let length = live ? old.n : 0;
      for (const item of items) {
        if (length >= maxSlotsPerThread) {
          outcomes.push([
            item,
            new SlotLimitError(threadId, maxSlotsPerThread),
          ]);
          continue;
        }
        const index = length++;
        if (item.upload) this.#blobs.publish(op, threadId, gen, item.upload);
        op.set(keys.slot(threadId, gen, index), item.value);
        outcomes.push([item, index]);
      }
      if (live && length === old.n) continue; // all refused: nothing to write
      const head: ThreadHead = { g: gen, n: length, e: expiresAt };
      op.set(keys.head(threadId), head);
      newHeads.push([threadId, head]);
      if (old !== null && !live) {
        // Replaces an expired generation: mark it dead for the sweep.
        retireGeneration(op, keys, threadId, old);
      }
      indexGeneration(op, keys, threadId, gen, live ? old.e : null, expiresAt);
    }
    if (counterChecked) {
      op.check({ key: keys.threadCount(), versionstamp: count.versionstamp });
      if (created > 0) op.set(keys.threadCount(), count.value + created);
    }
    const settle = (versionstamp: string) => {
      for (const [threadId, head] of newHeads) {
        this.#heads.set(threadId, { versionstamp, head });
      }
      if (created > 0) {
        this.#heads.count = { versionstamp, value: count.value + created };
      }
      for (const [item, outcome] of outcomes) {
        if (typeof outcome === "number") item.resolve(outcome);
        else item.reject(outcome);
      }
    };
    return { op, overflow, settle };
  }
}
