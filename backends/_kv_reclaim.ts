// Owns reclaiming dead generations of one prefix (their large slots' chunks, their slots, what is left under them, their markers); never retires a head, nor touches a live generation.
//
// A generation is dead once its head is retired: a marker at second 0 of the
// expiry index (_kv_expiry_index.ts) holds the length still to reclaim. Its
// slots are deleted by index, top down, the marker following, in commits
// shared by many generations; then its large slots' chunks and whatever else
// is left under its slots (append ids). Every step deletes only keys of dead
// generations, so reclaims of several processes may overlap: a generation
// cut short (by a budget, a failure) keeps its marker, and a later sweep
// finishes it.

import type { KvBlobStore } from "./_kv_blobs.ts";
import type { KeyId } from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { batches, KV_LIMITS } from "./_kv_util.ts";

/** Blob references one listing reads; a prefix with more has each dead generation listed on its own. */
const BLOB_REFS_LISTED = 1_000;
/** Listings or reads of one sweep step in flight at once. */
const IN_FLIGHT = 8;

/** A dead generation to reclaim, and its marker in the index. */
export interface DeadGeneration {
  threadId: KeyId;
  gen: string;
  /** Slots below this index may still exist. */
  length: number;
  marker: Deno.KvKey;
}

/** What a sweep may still do, and what it did. */
export interface Budget {
  /** Index entries it may still list. */
  entries: number;
  /** Slots it may still delete. */
  slots: number;
  done: { entries: number; threads: number; slots: number };
}

/** A budget of `entries` index entries and `slots` slots. */
export function budgetOf(entries: number, slots: number): Budget {
  return { entries, slots, done: { entries: 0, threads: 0, slots: 0 } };
}

/** What reclaiming needs of one prefix: its store and blob store. */
export interface ReclaimedTenant {
  store: KvStore;
  blobs: KvBlobStore;
}

/**
 * Reclaims dead generations of one prefix within `budget` (slots): their
 * large slots' chunks, their slots by index (top down, in commits shared by
 * many generations; a generation cut by the budget keeps its marker with
 * the length left), then what else is left under their slots (append
 * ids), and their markers.
 */
export async function reclaimGenerations(
  tenant: ReclaimedTenant,
  dead: DeadGeneration[],
  budget: Budget,
): Promise<void> {
  const { store, blobs } = tenant;
  const { kv, keys } = store;
  await inParallel(
    await withLargeSlots(store, dead),
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

/**
 * The generations of `dead` that may hold large slots: from one listing of
 * the prefix's blob references when it has few (most prefixes have few
 * large slots), else all of them (each is then listed on its own).
 */
async function withLargeSlots(
  store: KvStore,
  dead: DeadGeneration[],
): Promise<DeadGeneration[]> {
  if (dead.length <= 1) return dead;
  const refs = await store.retryWhileLocked(() =>
    Array.fromAsync(
      // Every blob reference of the prefix: [p, "blobref"].
      store.kv.list({ prefix: store.keys.blobRefs("", "").slice(0, 2) }, {
        limit: BLOB_REFS_LISTED,
        batchSize: BLOB_REFS_LISTED,
      }),
    )
  );
  if (refs.length === BLOB_REFS_LISTED) return dead;
  const holding = new Set(
    refs.map(({ key }) => `${partText(key[2] as KeyId)}/${key[3] as string}`),
  );
  return dead.filter(({ threadId, gen }) =>
    holding.has(`${partText(store.keys.head(threadId)[2] as KeyId)}/${gen}`)
  );
}

/** Runs `task` on every item, IN_FLIGHT at a time; returns the results in order. */
export async function inParallel<T, R>(
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
