// Owns a committer term's records in the store (_kv_committer.ts): the term record that each of its commits of forwarded appends checks and rewrites, the log of what they applied, and fencing a term then reading its log; never commits an append nor decides which isolate commits.
//
// | key                    | value                                                 |
// | ---------------------- | ----------------------------------------------------- |
// | [p, "producer", term]  | number: the term's last commit, or FENCED             |
// | [p, "op", term, seq]   | ForwardLog: the forwarded appends commit seq applied  |
//
// Both expire after retryTimeoutMs + 60 s (the store's recordExpireIn), as a
// backend's producer and op records do; the term id is a fresh random id, so
// these never meet those.

import { BackendError } from "../errors.ts";
import type { KvStore } from "./_kv_store.ts";

/**
 * The value of a term record once another member has fenced the term: a
 * commit of the term checks the record's versionstamp, so none of its
 * commits can land after the fence. Never a sequence number.
 */
export const FENCED = -1;

/** What a commit of forwarded appends applied: by member, `[seq, index, seq, index, ...]`. */
export interface ForwardLog {
  f: Record<string, number[]>;
}

/**
 * Why a forwarded append was refused without being applied: the queue is in
 * no committer term (or its term was fenced). Its sender commits it
 * elsewhere; never seen by a caller of the backend.
 */
export class TermEndedError extends Error {
  constructor() {
    super("this isolate no longer commits the process's appends");
    this.name = "TermEndedError";
  }
}

/**
 * Adds to commit number `seq` of term `term`: the check of the term record
 * (at `versionstamp`, what the term's last commit left) and its rewrite,
 * and the log of what the commit applies for other members, if anything.
 */
export function writeTermCommit(
  op: Deno.AtomicOperation,
  store: KvStore,
  term: { id: string; versionstamp: string | null },
  seq: number,
  log: ForwardLog | undefined,
): void {
  const { keys } = store;
  const expireIn = store.recordExpireIn;
  const record = keys.producer(term.id);
  op.check({ key: record, versionstamp: term.versionstamp });
  op.set(record, seq, { expireIn });
  if (log !== undefined) op.set(keys.op(term.id, seq), log, { expireIn });
}

/**
 * Fences term `term` (rewrites its record to FENCED in a commit checked
 * against what was read, so that no commit of the term still in flight can
 * land after), then returns what its log says it applied for `member`, seq
 * -> index, from commit number `from` + 1 on (the term's records before it
 * cannot hold what the member sent after seeing it).
 *
 * @throws {BackendError} The store failed (for retryTimeoutMs), or the term
 * record kept changing.
 */
export async function appliedByTerm(
  store: KvStore,
  term: string,
  member: string,
  from: number,
): Promise<Map<number, number>> {
  const { kv, keys } = store;
  const record = keys.producer(term);
  for (let attempt = 0;; attempt++) {
    const entry = await store.retryWhileLocked(() => kv.get<number>(record));
    if (entry.value === FENCED) break;
    const fence = kv.atomic().check(entry)
      .set(record, FENCED, { expireIn: store.recordExpireIn });
    if ((await store.retryWhileLocked(() => fence.commit())).ok) break;
    if (attempt >= store.maxAttempts) {
      throw new BackendError("the committer's term record kept changing");
    }
  }
  const start = keys.op(term, from + 1);
  const prefix = start.slice(0, -1);
  const entries = await store.retryWhileLocked(() =>
    Array.fromAsync(
      kv.list<ForwardLog | true>({ prefix, start }, { batchSize: 500 }),
    )
  );
  const applied = new Map<number, number>();
  for (const entry of entries) {
    const seq = entry.key.at(-1);
    if (typeof seq !== "number" || seq <= from) continue;
    const mine = typeof entry.value === "object"
      ? entry.value.f[member]
      : undefined;
    for (let i = 0; mine !== undefined && i < mine.length; i += 2) {
      applied.set(mine[i]!, mine[i + 1]!);
    }
  }
  return applied;
}
