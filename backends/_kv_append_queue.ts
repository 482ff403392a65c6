// Owns the commit of appends (queue, batches, plans, append ids, retries that never apply twice); never writes a slot in a commit that does not check its thread's head.
//
// Appends made concurrently in one isolate wait in a queue while a commit is
// in flight; the next commit takes as many of them as the atomic limits
// allow (checks, 1000 mutations, 800 KiB, 80 KiB of set keys), over one
// thread or many. Each commit checks the versionstamp of every head it
// relies on (and of the thread counter when it creates or refuses threads),
// so across isolates and processes the indexes of a thread are exactly
// `0..n-1`. Heads are cached between commits (_kv_heads.ts): a lone writer
// commits without reading. Each caller gets its own index or its own error.
//
// Append ids: an append with an `appendId` records it beside its
// generation's slots (`[p, "slot", threadId, gen, appendId]` = index) in the
// same commit as the slot, which also checks that the id is absent (no read
// first). If that commit fails, the next attempt reads the batch's ids
// together with their thread's head in one `getMany` (a consistent
// snapshot): an id found returns its index and stores nothing. Every commit
// that records an id rewrites its thread's head, so of two processes racing
// with one id, one commit stores the slot and the other, planned again,
// finds the id. A thread's ids go with its generation (deletion, expiry,
// clear).
//
// Forwarded appends: a queue that is its process's committer for the file
// (_kv_committer.ts) also takes appends other isolates forward to it
// (`commit()` with an origin), during a term: each commit that holds some
// checks and rewrites the term record and logs the index each one got, so
// that their senders can tell what was applied if the answer never comes.
//
// Retries: a commit that conflicts is planned again at once (another writer
// succeeded), at most `maxAttempts` times; one that fails on contention or a
// lost connection is retried after a short pause (RetryPacer) until
// `retryTimeoutMs`. Where a commit's answer may be lost (`idempotentRetries`:
// KV Connect, Deno Deploy), every commit of this backend also checks and
// rewrites its producer record (`[p, "producer", producerId]` = the
// attempt's sequence number). A backend's commits are serial, so after a
// failure that record says which attempt, if any, was applied, and no two
// attempts can both apply: a retry never applies an append twice, and the
// cost is one small record per backend, nothing per slot.

import { copyBytes } from "../_bytes.ts";
import { BackendError, SlotLimitError, ThreadLimitError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import type { KvBlobStore, Upload } from "./_kv_blobs.ts";
import {
  type CachedCount,
  type CachedHead,
  type HeadCache,
  headIsLive,
} from "./_kv_heads.ts";
import {
  type BlobRef,
  CHUNK_BYTES,
  expiryFrom,
  idPart,
  type ThreadHead,
} from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import {
  FENCED,
  type ForwardLog,
  TermEndedError,
  writeTermCommit,
} from "./_kv_terms.ts";
import {
  indexGeneration,
  type KvSweeper,
  retireGeneration,
} from "./_kv_sweep.ts";
import { isTransient, KV_LIMITS, newId, RetryPacer } from "./_kv_util.ts";

/** What a group commit is planned from. */
interface Snapshot {
  heads: Map<string, CachedHead>;
  count: CachedCount;
  /**
   * By thread: the append ids of the batch already recorded in its live
   * generation, with their indexes; `undefined` when not read (the commit
   * then checks that each id it records is absent).
   */
  applied: Map<string, Map<string, number>> | undefined;
  /** This backend's producer record, when read (after an attempt whose outcome is unknown). */
  producer: Deno.KvEntryMaybe<number> | undefined;
  /** The committer term's record, when read (after a failed commit of forwarded appends). */
  term: Deno.KvEntryMaybe<number> | undefined;
}

/** One append waiting in the queue. */
interface PendingAppend {
  threadId: string;
  /** The slot itself (a copy), or the reference to its uploaded chunks. */
  value: Uint8Array | BlobRef;
  /** For a large slot: its upload, checked and deleted on publish. */
  upload: Upload | undefined;
  appendId: string | undefined;
  /** For an append forwarded by another isolate: who sent it (its outcome goes in the commit's log). */
  origin: Origin | undefined;
  /** Estimated bytes this append adds to a commit (keys and values). */
  bytes: number;
  /** Most bytes of one of the thread's keys. */
  keyBytes: number;
  /** Bytes of its append id's key, or 0. */
  idKeyBytes: number;
  resolve: (index: number) => void;
  reject: (error: unknown) => void;
}

/** One planned attempt of a group commit. */
interface Plan {
  op: Deno.AtomicOperation;
  /** Its sequence number, in the producer record when `idempotentRetries`. */
  seq: number;
  /** Threads it refused for `maxThreads`. */
  overflow: number;
  /** Checks its commit holds. */
  checks: number;
  /** Whether it commits forwarded appends (and checks the term record). */
  forwarded: boolean;
  /** Settles its callers once it is known to be applied, as `versionstamp`. */
  settle: (versionstamp: string) => void;
}

/**
 * Where a forwarded append comes from: the member of the process's commit
 * group that sent it, and its sequence number there (see _kv_committer.ts).
 */
export interface Origin {
  from: string;
  seq: number;
}

/**
 * This queue's term as its process's committer: forwarded appends are
 * committed only in a term, and each such commit checks and rewrites the
 * term record `[p, "producer", id]` and writes the outcomes of its
 * forwarded appends to `[p, "op", id, seq]` (see _kv_terms.ts).
 */
interface Term {
  id: string;
  /** The term record's versionstamp as of this term's last commit. */
  versionstamp: string | null;
  /** The last sequence number of this term's commits. */
  seq: number;
  /** The sequence number of the last commit of the term that was applied. */
  applied: number;
  /** Whether another member fenced the term: it commits no forwarded append any more. */
  fenced: boolean;
}

/** The limits an append is planned against. */
export interface AppendLimits {
  ttlMs: number;
  maxSlotsPerThread: number;
  maxThreads: number;
}

/** The group-commit queue of one backend's appends. */
export class KvAppendQueue {
  readonly #store: KvStore;
  readonly #blobs: KvBlobStore;
  readonly #sweeper: KvSweeper;
  readonly #heads: HeadCache;
  readonly #options: AppendLimits;
  #queue: PendingAppend[] = [];
  #flushing: Promise<void> | undefined;
  /** Discards of uploads that an applied append id made unneeded. */
  readonly #discards = new Set<Promise<void>>();

  /** The last sequence number this backend's commits used. */
  #seq = 0;
  /** The producer record's versionstamp as of this backend's last commit. */
  #producerVersionstamp: string | null = null;
  /** This queue's term as its process's committer, if it is one. */
  #term: Term | undefined;
  /** Called before each batch is taken (see beforeEachBatch). */
  #beforeBatch: (() => void) | undefined;

  constructor(
    store: KvStore,
    blobs: KvBlobStore,
    sweeper: KvSweeper,
    heads: HeadCache,
    options: AppendLimits,
  ) {
    this.#store = store;
    this.#blobs = blobs;
    this.#sweeper = sweeper;
    this.#heads = heads;
    this.#options = options;
  }

  /**
   * Appends a copy of `slot` (checked by the caller) to a thread: queued at
   * once for a small slot, so appends of one caller keep their order; a
   * large slot is uploaded first and published by the commit. With an
   * `appendId` already recorded in the thread, returns its index and stores
   * nothing.
   *
   * @returns The slot's index.
   * @throws {SlotLimitError} The thread is full.
   * @throws {ThreadLimitError} The thread is new and `maxThreads` live threads exist.
   * @throws {BackendError} The commit kept conflicting or failing, the
   * upload was reclaimed, or the store failed; the message says whether the
   * append was applied.
   */
  async append(
    threadId: string,
    slot: Uint8Array,
    appendId?: string,
  ): Promise<number> {
    if (slot.byteLength <= CHUNK_BYTES) {
      const { promise, resolve, reject } = Promise.withResolvers<number>();
      // Copied now, before the first await: the caller may reuse its
      // buffer as soon as this call returns (a Buffer's slice() is a view).
      this.commit(threadId, copyBytes(slot), appendId, resolve, reject);
      return await promise;
    }
    const upload = await this.#blobs.upload(threadId, copyBytes(slot));
    try {
      const { promise, resolve, reject } = Promise.withResolvers<number>();
      this.commit(threadId, upload, appendId, resolve, reject);
      return await promise;
    } catch (error) {
      // Not published: reclaim the chunks now (the sweep would, later).
      await this.#blobs.discard(threadId, upload).catch(() => {});
      throw error;
    }
  }

  /**
   * Queues one append of a slot already private to the queue (a copy) or
   * already uploaded (the caller discards the upload if it fails), and
   * settles it through `resolve` or `reject`, exactly once. With `origin`, a
   * forwarded append (see _kv_committer.ts): committed only in a term, its
   * outcome written to the term's log in the same commit; outside a term it
   * is rejected at once with a {@linkcode TermEndedError} (not applied).
   */
  commit(
    threadId: string,
    value: Uint8Array | Upload,
    appendId: string | undefined,
    resolve: (index: number) => void,
    reject: (error: unknown) => void,
    origin?: Origin,
  ): void {
    if (
      origin !== undefined && (this.#term === undefined || this.#term.fenced)
    ) {
      reject(new TermEndedError());
      return;
    }
    const keys = this.#store.keys;
    const keyBytes = keys.threadKeyBytes(threadId);
    const idKeyBytes = appendId === undefined
      ? 0
      : keys.appendIdKeyBytes(threadId, appendId);
    // An append id: its key twice (the set's key counts twice) and a number;
    // a forwarded append: its sequence number and index in the log.
    const extra = (idKeyBytes === 0 ? 0 : 2 * idKeyBytes + 16) +
      (origin === undefined ? 0 : 24);
    const small = value instanceof Uint8Array;
    this.#queue.push({
      threadId,
      value: small ? value : value.ref,
      upload: small ? undefined : value,
      appendId,
      origin,
      bytes: small
        ? keyBytes + value.byteLength + 16 + extra
        : 3 * keyBytes + 128 + extra,
      keyBytes,
      idKeyBytes,
      resolve,
      reject,
    });
    this.#kick();
  }

  /**
   * Starts a term of this queue as its process's committer (see
   * _kv_committer.ts), under a fresh id: from now on forwarded appends are
   * accepted, and committed with the term's record and log.
   */
  startTerm(id: string): void {
    this.#term = { id, versionstamp: null, seq: 0, applied: 0, fenced: false };
  }

  /**
   * Ends the term: forwarded appends are refused from now on. The caller
   * first waits until every forwarded append it queued has settled.
   */
  endTerm(): void {
    this.#term = undefined;
    this.#beforeBatch = undefined;
  }

  /**
   * Has `drain` called right before each batch is taken, during the term
   * (it queues what other isolates forwarded meanwhile); `undefined` stops.
   */
  beforeEachBatch(drain: (() => void) | undefined): void {
    this.#beforeBatch = drain;
  }

  /**
   * The sequence number of the term's last applied commit (0 before the
   * first): every later commit of the term logs under a greater one.
   */
  get termApplied(): number {
    return this.#term?.applied ?? 0;
  }

  /** Resolves when the commit in flight, if any, has settled its callers. */
  async idle(): Promise<void> {
    await this.#flushing;
    while (this.#discards.size > 0) await Promise.all(this.#discards);
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
    for (;;) {
      // A committer's forwarded appends join the queue right before a batch.
      this.#beforeBatch?.();
      if (this.#queue.length === 0) return;
      const batch = this.#takeBatch();
      try {
        await this.#commitBatch(batch);
      } catch (error) {
        // Not expected (#commitBatch settles every item); never strand a caller.
        for (const item of batch) item.reject(error);
      }
    }
  }

  /**
   * Takes the queued appends that fit in one atomic commit: in queue order,
   * except that when the checks run out, the appends of threads not in the
   * commit yet wait for the next one while those of threads in it still
   * join (a thread's appends keep their order: once one of its appends
   * waits, so do its later ones). So 256 appends over 100 threads take two
   * commits, not three.
   */
  #takeBatch(): PendingAppend[] {
    // Reserve one check and a few mutations for the thread counter, one of
    // each for the producer record, and in a term one check and two
    // mutations for the term record and log.
    const producer = this.#store.idempotentRetries ? 1 : 0;
    const term = this.#term === undefined ? 0 : 1;
    let checks = 1 + producer + term;
    let mutations = 1 + producer + 2 * term;
    let bytes = 256 + 128 * producer + 512 * term;
    let setKeys = 64 + 64 * producer + 128 * term;
    const threads = new Set<string>();
    /** Threads whose next append waits: their later ones wait too. */
    const waiting = new Set<string>();
    const taken: PendingAppend[] = [];
    const left: PendingAppend[] = [];
    let full = false;
    for (const item of this.#queue) {
      if (full || waiting.has(item.threadId)) {
        left.push(item);
        continue;
      }
      const isNew = !threads.has(item.threadId);
      const hasId = item.appendId === undefined ? 0 : 1;
      // An append id is checked absent when recorded, unless this isolate
      // knows the generation's ids (or that there is none yet).
      const idCheck = hasId && this.#mustCheckIds(item.threadId) ? 1 : 0;
      const addChecks = (isNew ? 1 : 0) + (item.upload ? 1 : 0) + idCheck;
      // A new thread in the batch: head, expiry entry and its old one, a dead-generation marker.
      const addMutations = 1 + (isNew ? 4 : 0) + (item.upload ? 2 : 0) +
        hasId;
      // Keys of sets: the slot, a blobref, an append id; for a new thread
      // its head, expiry entry and dead-generation marker. They count
      // against their own 80 KiB limit, and twice in the commit's bytes
      // (with the check keys).
      const addSetKeys = item.keyBytes *
          (1 + (item.upload ? 1 : 0) + (isNew ? 3 : 0)) + item.idKeyBytes;
      const addBytes = item.bytes + (isNew ? 4 * (item.keyBytes + 64) : 0) +
        addSetKeys + (addChecks - idCheck) * item.keyBytes +
        idCheck * item.idKeyBytes;
      if (taken.length > 0) {
        if (
          mutations + addMutations > KV_LIMITS.mutations ||
          bytes + addBytes > KV_LIMITS.commitBytes ||
          setKeys + addSetKeys > KV_LIMITS.setKeyBytes
        ) {
          full = true;
          left.push(item);
          continue;
        }
        if (checks + addChecks > this.#store.maxChecks) {
          waiting.add(item.threadId);
          left.push(item);
          continue;
        }
      }
      checks += addChecks;
      mutations += addMutations;
      bytes += addBytes;
      setKeys += addSetKeys;
      threads.add(item.threadId);
      taken.push(item);
    }
    this.#queue = left;
    return taken;
  }

  /** Whether recording an append id in the thread would need a check (see #plan). */
  #mustCheckIds(threadId: string): boolean {
    const cached = this.#heads.get(threadId);
    return cached === undefined ||
      (cached.head !== null && cached.ids === undefined);
  }

  /**
   * Commits one batch of appends, retrying conflicts (`maxAttempts`) and
   * failures that may pass (until `retryTimeoutMs`); settles every item with
   * its own index or error, never throws.
   */
  async #commitBatch(batch: PendingAppend[]): Promise<void> {
    const { maxAttempts } = this.#store;
    const deadline = Date.now() + this.#store.retryTimeoutMs;
    let pending = Map.groupBy(batch, (item) => item.threadId);
    /** Attempts whose commit may have been applied, by sequence number. */
    const uncertain = new Map<number, Plan>();
    let sweptForLimit = false;
    /** Whether to read the batch's append ids first: after a failed attempt. */
    let readIds = false;
    /** Whether to read the term record: after a conflict of forwarded appends. */
    let readTerm = false;
    let conflicts = 0;
    let lastError: unknown;
    const pacer = new RetryPacer();
    for (let round = 0;; round++) {
      await pacer.pause();
      let committing: Plan | undefined;
      try {
        pending = this.#refuseOutsideTerm(pending);
        if (pending.size === 0) return;
        const snapshot = await this.#load(
          pending,
          uncertain.size > 0,
          readIds,
          readTerm,
        );
        if (snapshot.term !== undefined) {
          readTerm = false;
          const term = this.#term!;
          if (snapshot.term.value === FENCED) {
            // Another member took over this term's appends (see
            // _kv_committer.ts); none of them can be committed here.
            term.fenced = true;
            round--;
            continue;
          }
          // Unchanged, or expired after an idle spell: this term's own.
          term.versionstamp = snapshot.term.versionstamp;
        }
        if (snapshot.producer !== undefined) {
          const applied = uncertain.get(snapshot.producer.value ?? -1);
          if (applied !== undefined) {
            applied.settle(snapshot.producer.versionstamp!);
            return;
          }
          this.#producerVersionstamp = snapshot.producer.versionstamp;
        }
        const plan = this.#plan(pending, snapshot, Date.now());
        if (plan.checks > this.#store.maxChecks) {
          // The cache changed since the batch was taken: read the ids instead.
          readIds = true;
          round--;
          continue;
        }
        if (plan.overflow > 0 && !sweptForLimit) {
          // At maxThreads: retire expired heads so that only live ones count.
          sweptForLimit = true;
          await this.#sweeper.retireExpired();
          this.#heads.count = undefined;
          round--;
          continue;
        }
        // Uploads the sweep reclaimed (their writer was too slow) fail
        // alone; checked after a failed commit only.
        const lost = round === 0
          ? []
          : await this.#blobs.lost([...pending.values()].flat());
        if (lost.length > 0) {
          for (const item of lost) {
            item.reject(
              new BackendError(
                `Cannot append to thread ${
                  JSON.stringify(item.threadId)
                }: the upload of a large slot took longer than uploadTimeoutMs (${this.#blobs.uploadTimeoutMs}) and was reclaimed; it was not applied`,
              ),
            );
          }
          pending = Map.groupBy(
            [...pending.values()].flat().filter((i) => !lost.includes(i)),
            (item) => item.threadId,
          );
          if (pending.size === 0) return;
          round--;
          continue;
        }
        committing = plan;
        readIds = true;
        const result = await plan.op.commit();
        if (result.ok) {
          plan.settle(result.versionstamp);
          return;
        }
        // A conflict; with a remote KV, possibly after a retry inside the
        // client of an attempt that was applied. Another writer succeeded:
        // read again and retry at once.
        conflicts++;
        pacer.conflict();
        readTerm ||= plan.forwarded;
        if (this.#store.idempotentRetries) uncertain.set(plan.seq, plan);
      } catch (error) {
        if (committing !== undefined && this.#store.idempotentRetries) {
          uncertain.set(committing.seq, committing);
        }
        lastError = error;
        if (!isTransient(error)) {
          await this.#fail(pending, errorMessage(error), error, uncertain);
          return;
        }
        pacer.failed(error);
      }
      this.#forget(pending.keys());
      if (conflicts >= maxAttempts) {
        await this.#fail(
          pending,
          `the commit conflicted with other writers ${maxAttempts} times; raise maxAttempts or lower contention`,
          lastError,
          uncertain,
        );
        return;
      }
      if (Date.now() >= deadline) {
        await this.#fail(
          pending,
          `the commit kept failing for retryTimeoutMs (${this.#store.retryTimeoutMs} ms): ${
            errorMessage(lastError)
          }`,
          lastError,
          uncertain,
        );
        return;
      }
    }
  }

  /**
   * `pending` without its forwarded appends when this queue is in no term
   * or its term was fenced: those are rejected (not applied) with a
   * {@linkcode TermEndedError}, for their sender to commit elsewhere.
   */
  #refuseOutsideTerm(
    pending: Map<string, PendingAppend[]>,
  ): Map<string, PendingAppend[]> {
    if (this.#term !== undefined && !this.#term.fenced) return pending;
    let refused = false;
    for (const items of pending.values()) {
      for (const item of items) {
        if (item.origin !== undefined) {
          item.reject(new TermEndedError());
          refused = true;
        }
      }
    }
    if (!refused) return pending;
    return Map.groupBy(
      [...pending.values()].flat().filter((item) => item.origin === undefined),
      (item) => item.threadId,
    );
  }

  /**
   * Rejects every caller of `pending`, each with an error naming its own
   * thread and saying whether the append was applied. When an attempt's
   * outcome is unknown, first finds out (and if one was applied, settles
   * its callers instead).
   */
  async #fail(
    pending: Map<string, PendingAppend[]>,
    reason: string,
    cause: unknown,
    uncertain: Map<number, Plan>,
  ): Promise<void> {
    let outcome = "it was not applied";
    if (uncertain.size > 0) {
      try {
        if (await this.#fence(uncertain)) return;
      } catch {
        outcome = "it may or may not have been applied";
      }
    }
    for (const [threadId, items] of pending) {
      const failure = new BackendError(
        `Cannot append to thread ${
          JSON.stringify(threadId)
        }: ${reason}; ${outcome}`,
        cause === undefined ? undefined : { cause },
      );
      for (const item of items) item.reject(failure);
    }
  }

  /**
   * Settles the attempt of `uncertain` that was applied, if one was, and
   * returns true; otherwise rewrites the producer record, so that none of
   * them can be applied later, and returns false.
   *
   * @throws {Error} The store cannot be read or written.
   */
  async #fence(uncertain: Map<number, Plan>): Promise<boolean> {
    const { kv, keys } = this.#store;
    const key = keys.producer(this.#store.producerId);
    for (let attempt = 0; attempt < 10; attempt++) {
      const entry = await kv.get<number>(key);
      const applied = uncertain.get(entry.value ?? -1);
      if (applied !== undefined) {
        applied.settle(entry.versionstamp!);
        return true;
      }
      const seq = ++this.#seq;
      const result = await kv.atomic().check(entry)
        .set(key, seq, { expireIn: this.#store.recordExpireIn })
        .commit();
      if (result.ok) {
        this.#producerVersionstamp = result.versionstamp;
        return false;
      }
    }
    throw new Error("the producer record kept changing");
  }

  #forget(threadIds: Iterable<string>): void {
    for (const threadId of threadIds) this.#heads.forget(threadId);
  }

  /**
   * What a batch is planned from: the heads of its threads and the thread
   * counter (from the cache, reading what it lacks), when asked the append
   * ids of the batch already recorded (read with their head), and, when
   * asked, this backend's producer record. A snapshot, so that other calls of this
   * isolate changing the cache meanwhile cannot disturb the plan.
   */
  async #load(
    pending: Map<string, PendingAppend[]>,
    readProducer: boolean,
    readIds: boolean,
    readTerm: boolean,
  ): Promise<Snapshot> {
    const { keys } = this.#store;
    const heads = new Map<string, CachedHead>();
    const missing: string[] = [];
    for (const id of pending.keys()) {
      const cached = this.#heads.get(id);
      if (cached === undefined) missing.push(id);
      else heads.set(id, cached);
    }
    let count = this.#heads.count;
    const toRead: Deno.KvKey[] = missing.map((id) => keys.head(id));
    const countAt = count === undefined ? toRead.push(keys.threadCount()) : 0;
    const producerAt = readProducer
      ? toRead.push(keys.producer(this.#store.producerId))
      : 0;
    const termAt = readTerm && this.#term !== undefined
      ? toRead.push(keys.producer(this.#term.id))
      : 0;
    const entries = await this.#getMany(toRead);
    this.#heads.makeRoom(missing.length);
    missing.forEach((id, i) => this.#remember(heads, id, entries[i]!));
    if (countAt > 0) {
      const entry = entries[countAt - 1]!;
      count = {
        versionstamp: entry.versionstamp,
        value: (entry.value as number | null) ?? 0,
      };
      this.#heads.count = count;
    }
    const producer = producerAt > 0
      ? entries[producerAt - 1] as Deno.KvEntryMaybe<number>
      : undefined;
    const term = termAt > 0
      ? entries[termAt - 1] as Deno.KvEntryMaybe<number>
      : undefined;
    if (!readIds) {
      return { heads, count: count!, applied: undefined, producer, term };
    }
    const applied = new Map<string, Map<string, number>>();
    await Promise.all(
      [...pending].map(async ([threadId, items]) => {
        const ids = new Set<string>();
        for (const item of items) {
          if (item.appendId !== undefined) ids.add(item.appendId);
        }
        if (ids.size === 0) return;
        const found = await this.#readAppendIds(heads, threadId, [...ids]);
        if (found !== undefined) applied.set(threadId, found);
      }),
    );
    return { heads, count: count!, applied, producer, term };
  }

  /**
   * The append ids of `ids` recorded in the live generation of a thread,
   * with their indexes, each `getMany` also reading the head: the snapshot
   * the plan checks. `undefined` if the thread is not live (a new
   * generation records ids anew).
   */
  async #readAppendIds(
    heads: Map<string, CachedHead>,
    threadId: string,
    ids: string[],
  ): Promise<Map<string, number> | undefined> {
    const { keys } = this.#store;
    const perRead = KV_LIMITS.getMany - 1;
    for (let round = 0;; round++) {
      const head = heads.get(threadId)!.head;
      if (head === null || !headIsLive(head, Date.now())) return undefined;
      const reads: Promise<Deno.KvEntryMaybe<unknown>[]>[] = [];
      for (let i = 0; i < ids.length; i += perRead) {
        reads.push(
          this.#store.kv.getMany([
            keys.head(threadId),
            ...ids.slice(i, i + perRead).map((id) =>
              keys.appendId(threadId, head.g, id)
            ),
          ]),
        );
      }
      const results = await Promise.all(reads);
      const read = results[0]![0]!;
      this.#remember(heads, threadId, read);
      const consistent = results.every((r) =>
        r[0]!.versionstamp === read.versionstamp
      );
      if (consistent && (read.value as ThreadHead | null)?.g === head.g) {
        const found = new Map<string, number>();
        results.forEach((entries, r) =>
          entries.slice(1).forEach((entry, j) => {
            if (entry.value !== null) {
              found.set(ids[r * perRead + j]!, entry.value as number);
            }
          })
        );
        return found;
      }
      // A commit landed between the reads, or the generation changed.
      if (round >= this.#store.maxAttempts) {
        throw new BackendError(
          `Cannot append to thread ${
            JSON.stringify(threadId)
          }: its head kept changing while its append ids were read`,
        );
      }
    }
  }

  /** Takes `entry` as the head of `threadId` in the snapshot and the cache. */
  #remember(
    heads: Map<string, CachedHead>,
    threadId: string,
    entry: Deno.KvEntryMaybe<unknown>,
  ): void {
    const cached = {
      versionstamp: entry.versionstamp,
      head: entry.value as ThreadHead | null,
    };
    heads.set(threadId, cached);
    this.#heads.set(threadId, cached);
  }

  async #getMany(keys: Deno.KvKey[]): Promise<Deno.KvEntryMaybe<unknown>[]> {
    if (keys.length === 0) return [];
    const reads: Promise<Deno.KvEntryMaybe<unknown>[]>[] = [];
    for (let i = 0; i < keys.length; i += KV_LIMITS.getMany) {
      reads.push(this.#store.kv.getMany(keys.slice(i, i + KV_LIMITS.getMany)));
    }
    return (await Promise.all(reads)).flat();
  }

  /**
   * Plans one group commit from a snapshot: which callers get which index,
   * which get the index of their append id, which get a limit error, and the
   * atomic operation that makes it so (it checks every head it relies on,
   * the counter when threads are created or refused, the producer record
   * when `idempotentRetries`, and with forwarded appends the term record,
   * and writes their outcomes to the term's log).
   */
  #plan(
    pending: Map<string, PendingAppend[]>,
    snapshot: Snapshot,
    now: number,
  ): Plan {
    const { kv, keys } = this.#store;
    const { maxThreads, maxSlotsPerThread, ttlMs } = this.#options;
    const op = kv.atomic();
    const seq = ++this.#seq;
    let checks = 0;
    if (this.#store.idempotentRetries) {
      const key = keys.producer(this.#store.producerId);
      checks++;
      op.check({ key, versionstamp: this.#producerVersionstamp });
      op.set(key, seq, { expireIn: this.#store.recordExpireIn });
    }
    const count = snapshot.count;
    const outcomes: [PendingAppend, number | Error][] = [];
    /** Uploads of appends whose id was already applied: never published. */
    const unneeded: PendingAppend[] = [];
    /** Heads written, with the ids known of their generation and the ids recorded. */
    const newHeads: [
      string,
      ThreadHead,
      CachedHead,
      boolean,
      Map<string, number>,
    ][] = [];
    let created = 0;
    let overflow = 0;
    let counterChecked = false;
    const expiresAt = expiryFrom(now, ttlMs);
    for (const [threadId, items] of pending) {
      const cached = snapshot.heads.get(threadId)!;
      const old = cached.head;
      checks++;
      op.check({ key: keys.head(threadId), versionstamp: cached.versionstamp });
      const live = old !== null && headIsLive(old, now);
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
      const applied = live ? snapshot.applied?.get(threadId) : undefined;
      /** Every id of the generation, when this isolate wrote all of them. */
      const known = live ? cached.ids : undefined;
      /** Whether each id recorded must be checked absent (ids not read nor known). */
      const checkIds = live && snapshot.applied === undefined &&
        known === undefined;
      /** Append ids given an index by this plan. */
      const recorded = new Map<string, number>();
      for (const item of items) {
        const appendId = item.appendId;
        if (appendId !== undefined) {
          // Already applied: its index, whatever the limits say now.
          const index = known?.get(appendId) ?? applied?.get(appendId) ??
            recorded.get(appendId);
          if (index !== undefined) {
            outcomes.push([item, index]);
            if (item.upload) unneeded.push(item);
            continue;
          }
        }
        if (length >= maxSlotsPerThread) {
          outcomes.push([
            item,
            new SlotLimitError(threadId, maxSlotsPerThread),
          ]);
          continue;
        }
        const index = length++;
        if (item.upload) {
          checks++;
          this.#blobs.publish(op, threadId, gen, item.upload);
        }
        op.set(keys.slot(threadId, gen, index), item.value);
        if (appendId !== undefined) {
          const key = keys.appendId(threadId, gen, appendId);
          if (checkIds) {
            checks++;
            op.check({ key, versionstamp: null });
          }
          op.set(key, index);
          recorded.set(appendId, index);
        }
        outcomes.push([item, index]);
      }
      if (live && length === old.n) continue; // nothing new: nothing to write
      const head: ThreadHead = { g: gen, n: length, e: expiresAt };
      if (typeof idPart(threadId) !== "string") head.i = threadId;
      op.set(keys.head(threadId), head);
      newHeads.push([threadId, head, cached, !live, recorded]);
      if (old !== null && !live) {
        // Replaces an expired (or sealed) generation: mark it dead for the sweep.
        retireGeneration(op, keys, threadId, old);
      }
      indexGeneration(op, keys, threadId, gen, live ? old.e : null, expiresAt);
    }
    if (counterChecked) {
      checks++;
      op.check({ key: keys.threadCount(), versionstamp: count.versionstamp });
      if (created > 0) op.set(keys.threadCount(), count.value + created);
    }
    const term = this.#logForwarded(op, pending, outcomes);
    if (term !== undefined) checks++;
    const settle = (versionstamp: string) => {
      if (this.#store.idempotentRetries) {
        this.#producerVersionstamp = versionstamp;
      }
      if (term !== undefined) {
        term.term.versionstamp = versionstamp;
        term.term.applied = term.seq;
      }
      for (const [threadId, head, before, created, recorded] of newHeads) {
        const ids = this.#heads.learnIds(before.ids, created, recorded);
        this.#heads.set(
          threadId,
          ids === undefined
            ? { versionstamp, head }
            : { versionstamp, head, ids },
        );
      }
      if (created > 0) {
        this.#heads.count = { versionstamp, value: count.value + created };
      }
      for (const [item, outcome] of outcomes) {
        if (typeof outcome === "number") item.resolve(outcome);
        else item.reject(outcome);
      }
      for (const item of unneeded) this.#discard(item.threadId, item.upload!);
    };
    return {
      op,
      seq,
      overflow,
      checks,
      forwarded: term !== undefined,
      settle,
    };
  }

  /**
   * For a plan with forwarded appends: checks and rewrites the term record
   * (so that no commit of the term lands once another member has fenced
   * it), and writes the indexes they get to the term's log under the
   * commit's sequence number, for their senders to find if the answer
   * never reaches them. Returns the term and that number, or `undefined`
   * (no forwarded append: nothing added).
   */
  #logForwarded(
    op: Deno.AtomicOperation,
    pending: Map<string, PendingAppend[]>,
    outcomes: [PendingAppend, number | Error][],
  ): { term: Term; seq: number } | undefined {
    const term = this.#term;
    if (term === undefined) return undefined; // #refuseOutsideTerm took them
    let forwarded = false;
    for (const items of pending.values()) {
      if (items.some((item) => item.origin !== undefined)) {
        forwarded = true;
        break;
      }
    }
    if (!forwarded) return undefined;
    const seq = ++term.seq;
    const log: ForwardLog = { f: {} };
    let logged = false;
    for (const [item, outcome] of outcomes) {
      if (item.origin !== undefined && typeof outcome === "number") {
        (log.f[item.origin.from] ??= []).push(item.origin.seq, outcome);
        logged = true;
      }
    }
    writeTermCommit(op, this.#store, term, seq, logged ? log : undefined);
    return { term, seq };
  }

  /** Reclaims an upload that will never be published, beside the queue (idle() waits for it). */
  #discard(threadId: string, upload: Upload): void {
    const discard = this.#blobs.discard(threadId, upload).catch(() => {
      // The sweep reclaims it after uploadTimeoutMs.
    });
    this.#discards.add(discard);
    discard.finally(() => this.#discards.delete(discard));
  }
}
