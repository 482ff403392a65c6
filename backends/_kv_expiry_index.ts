// Owns the keys of the store-wide expiry index and which entries a write adds, moves or removes there; never lists the index, nor retires or reclaims anything (_kv_sweep.ts does).
//
// The expiry index is store-wide, `[true, "exp", second, prefix, ...]` (the
// first part `true` is no prefix: prefixes are strings), so one listing in
// key order finds what is due in every tenant, also one that is never used
// again. It holds one entry per live generation (when `ttlMs > 0`, `[...,
// prefix, "t", threadId, gen]`) and per registry pair (`[..., prefix, "r",
// chain]`), keyed by the whole second it expires in, moved by the commit
// that refreshes it (at most once a second per thread, so appends stay
// O(1)); plus one marker per dead generation at second 0, whose value is the
// length still to reclaim. The functions below say which entries a write
// adds, moves or removes; the append queue, the registry and the sweep put
// those in their own commits.

import {
  expirySecond,
  type KeyId,
  type KvKeys,
  type ThreadHead,
} from "./_kv_keys.ts";

/** The store-wide expiry index: what a sweep lists. */
export const INDEX: Deno.KvKey = [true, "exp"];

/** The end of the entries due at `now`: the current second is not over, so its entries wait. */
export function dueEnd(now: number): Deno.KvKey {
  return [...INDEX, expirySecond(now)];
}

/** The store-wide form of a tenant's index key `[p, "exp", second, ...rest]`. */
function indexed(tenantKey: Deno.KvKey): Deno.KvKey {
  const [prefix, , second, ...rest] = tenantKey;
  return [...INDEX, second!, prefix!, ...rest];
}

/** The index key of generation `gen` of a thread, due at `second` (0: dead). */
export function generationKey(
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
