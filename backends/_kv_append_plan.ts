// Owns planning group commits of appends: which queued appends fit in one atomic commit, and the atomic operation that gives each its index or its own error; never reads the store nor commits (the append queue does).
//
// A commit takes as many appends as the atomic limits allow (checks, 1000
// mutations, 800 KiB, 80 KiB of set keys), over one thread or many. It
// checks the versionstamp of every head it relies on (and of the thread
// counter when it creates or refuses threads), so across isolates and
// processes the indexes of a thread are exactly `0..n-1`. Each caller gets
// its own index or its own error: a thread that is full or cannot be
// created rejects its own callers only.
//
// Append ids: an append with an `appendId` records it beside its
// generation's slots (`[p, "slot", threadId, gen, appendId]` = index) in the
// same commit as the slot, which also checks that the id is absent (no read
// first) unless the ids were read (_kv_append_snapshot.ts) or this isolate
// knows them all (_kv_heads.ts). An id found returns its index and stores
// nothing. Every commit that records an id rewrites its thread's head, so of
// two processes racing with one id, one commit stores the slot and the
// other, planned again, finds the id. A thread's ids go with its generation
// (deletion, expiry, clear).
//
// A commit of forwarded appends (in a committer's term) also checks and
// rewrites the term record and logs the index each one got (_kv_terms.ts);
// where a commit's answer may be lost (`idempotentRetries`), every commit
// checks and rewrites the backend's producer record with its sequence
// number (see _kv_append_queue.ts).

import { SlotLimitError, ThreadLimitError } from "../errors.ts";
import type { KvBlobStore, Upload } from "./_kv_blobs.ts";
import {
  type CachedCount,
  type CachedHead,
  type HeadCache,
  headIsLive,
} from "./_kv_heads.ts";
import {
  type BlobRef,
  expiryFrom,
  idPart,
  type ThreadHead,
} from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { type ForwardLog, writeTermCommit } from "./_kv_terms.ts";
import { indexGeneration, retireGeneration } from "./_kv_sweep.ts";
import { KV_LIMITS, newId } from "./_kv_util.ts";

/** What a group commit is planned from. */
export interface Snapshot {
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
export interface PendingAppend {
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
export interface Plan {
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
export interface Term {
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

/** What a batch may hold beyond its appends (see takeBatch). */
export interface BatchBudget {
  store: KvStore;
  heads: HeadCache;
  /** Whether the queue is in a term (its commits may carry the term record and log). */
  inTerm: boolean;
}

/** What one plan is made with: the queue's parts and its state for this attempt. */
export interface PlanContext {
  store: KvStore;
  blobs: KvBlobStore;
  heads: HeadCache;
  limits: AppendLimits;
  /** The attempt's sequence number (the producer record's value when `idempotentRetries`). */
  seq: number;
  /** The producer record's versionstamp as of the queue's last commit. */
  producerVersionstamp: string | null;
  /** The queue's term as its process's committer, if it is one. */
  term: Term | undefined;
  /** Takes the producer record's versionstamp once the plan is applied (`idempotentRetries` only). */
  producerWritten: (versionstamp: string) => void;
  /** Reclaims an upload that will never be published. */
  discard: (threadId: string, upload: Upload) => void;
}

/**
 * Takes the queued appends that fit in one atomic commit: in queue order,
 * except that when the checks run out, the appends of threads not in the
 * commit yet wait for the next one while those of threads in it still
 * join (a thread's appends keep their order: once one of its appends
 * waits, so do its later ones). So 256 appends over 100 threads take two
 * commits, not three.
 */
export function takeBatch(
  queue: PendingAppend[],
  budget: BatchBudget,
): { taken: PendingAppend[]; left: PendingAppend[] } {
  // Reserve one check and a few mutations for the thread counter, one of
  // each for the producer record, and in a term one check and two
  // mutations for the term record and log.
  const producer = budget.store.idempotentRetries ? 1 : 0;
  const term = budget.inTerm ? 1 : 0;
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
  for (const item of queue) {
    if (full || waiting.has(item.threadId)) {
      left.push(item);
      continue;
    }
    const isNew = !threads.has(item.threadId);
    const hasId = item.appendId === undefined ? 0 : 1;
    // An append id is checked absent when recorded, unless this isolate
    // knows the generation's ids (or that there is none yet).
    const idCheck = hasId && mustCheckIds(budget.heads, item.threadId) ? 1 : 0;
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
      if (checks + addChecks > budget.store.maxChecks) {
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
  return { taken, left };
}

/** Whether recording an append id in the thread would need a check (see planCommit). */
function mustCheckIds(heads: HeadCache, threadId: string): boolean {
  const cached = heads.get(threadId);
  return cached === undefined ||
    (cached.head !== null && cached.ids === undefined);
}

/**
 * Plans one group commit from a snapshot: which callers get which index,
 * which get the index of their append id, which get a limit error, and the
 * atomic operation that makes it so (it checks every head it relies on,
 * the counter when threads are created or refused, the producer record
 * when `idempotentRetries`, and with forwarded appends the term record,
 * and writes their outcomes to the term's log).
 */
export function planCommit(
  context: PlanContext,
  pending: Map<string, PendingAppend[]>,
  snapshot: Snapshot,
  now: number,
): Plan {
  const { store, blobs, heads } = context;
  const { kv, keys } = store;
  const { maxThreads, maxSlotsPerThread, ttlMs } = context.limits;
  const op = kv.atomic();
  const seq = context.seq;
  let checks = 0;
  if (store.idempotentRetries) {
    const key = keys.producer(store.producerId);
    checks++;
    op.check({ key, versionstamp: context.producerVersionstamp });
    op.set(key, seq, { expireIn: store.recordExpireIn });
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
        blobs.publish(op, threadId, gen, item.upload);
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
  const term = logForwarded(op, store, context.term, pending, outcomes);
  if (term !== undefined) checks++;
  const settle = (versionstamp: string) => {
    if (store.idempotentRetries) context.producerWritten(versionstamp);
    if (term !== undefined) {
      term.term.versionstamp = versionstamp;
      term.term.applied = term.seq;
    }
    for (const [threadId, head, before, created, recorded] of newHeads) {
      const ids = heads.learnIds(before.ids, created, recorded);
      heads.set(
        threadId,
        ids === undefined
          ? { versionstamp, head }
          : { versionstamp, head, ids },
      );
    }
    if (created > 0) {
      heads.count = { versionstamp, value: count.value + created };
    }
    for (const [item, outcome] of outcomes) {
      if (typeof outcome === "number") item.resolve(outcome);
      else item.reject(outcome);
    }
    for (const item of unneeded) context.discard(item.threadId, item.upload!);
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
function logForwarded(
  op: Deno.AtomicOperation,
  store: KvStore,
  term: Term | undefined,
  pending: Map<string, PendingAppend[]>,
  outcomes: [PendingAppend, number | Error][],
): { term: Term; seq: number } | undefined {
  if (term === undefined) return undefined; // the queue refused them outside a term
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
  writeTermCommit(op, store, term, seq, logged ? log : undefined);
  return { term, seq };
}
