// Owns the commit of appends (the queue, the attempts of each batch, the committer's term, retries that never apply twice); never writes a slot in a commit that does not check its thread's head.
//
// Appends made concurrently in one isolate wait in a queue while a commit is
// in flight; the next commit takes as many of them as the atomic limits
// allow, over one thread or many, planned (_kv_append_plan.ts, which also
// says how append ids are recorded) from a snapshot of their heads
// (_kv_append_snapshot.ts: heads are cached between commits, so a lone
// writer commits without reading). Each caller gets its own index or its
// own error.
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
import { BackendError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import {
  type AppendLimits,
  type Origin,
  type PendingAppend,
  type Plan,
  planCommit,
  type Snapshot,
  takeBatch,
  type Term,
} from "./_kv_append_plan.ts";
import { SnapshotReader } from "./_kv_append_snapshot.ts";
import type { KvBlobStore, Upload } from "./_kv_blobs.ts";
import type { HeadCache } from "./_kv_heads.ts";
import { CHUNK_BYTES } from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { FENCED, TermEndedError } from "./_kv_terms.ts";
import type { KvSweeper } from "./_kv_sweep.ts";
import { isTransient, RetryPacer } from "./_kv_util.ts";

export type { AppendLimits, Origin } from "./_kv_append_plan.ts";

/** The group-commit queue of one backend's appends. */
export class KvAppendQueue {
  readonly #store: KvStore;
  readonly #blobs: KvBlobStore;
  readonly #sweeper: KvSweeper;
  readonly #heads: HeadCache;
  readonly #options: AppendLimits;
  readonly #snapshots: SnapshotReader;
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
    this.#snapshots = new SnapshotReader(store, heads);
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
      const { taken: batch, left } = takeBatch(this.#queue, {
        store: this.#store,
        heads: this.#heads,
        inTerm: this.#term !== undefined,
      });
      this.#queue = left;
      try {
        await this.#commitBatch(batch);
      } catch (error) {
        // Not expected (#commitBatch settles every item); never strand a caller.
        for (const item of batch) item.reject(error);
      }
    }
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
        const snapshot = await this.#snapshots.read(
          pending,
          uncertain.size > 0,
          readIds,
          readTerm ? this.#term?.id : undefined,
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

  /** Plans one attempt of a group commit (see planCommit) under the next sequence number. */
  #plan(
    pending: Map<string, PendingAppend[]>,
    snapshot: Snapshot,
    now: number,
  ): Plan {
    return planCommit(
      {
        store: this.#store,
        blobs: this.#blobs,
        heads: this.#heads,
        limits: this.#options,
        seq: ++this.#seq,
        producerVersionstamp: this.#producerVersionstamp,
        term: this.#term,
        producerWritten: (versionstamp) => {
          this.#producerVersionstamp = versionstamp;
        },
        discard: (threadId, upload) => this.#discard(threadId, upload),
      },
      pending,
      snapshot,
      now,
    );
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
