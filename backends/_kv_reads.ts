// Owns the reads of the kv backend's buffer (live heads, slots, ranges, listings); never writes, and never returns part of a thread.
//
// Expiry is logical: every read compares the head's expiry time with the
// clock, so a thread is gone exactly when `ttlMs` has passed; a read that
// finds a head expired seals it before it says so (_kv_heads.ts), so that
// the thread stays gone. A slot missing
// below a live head's length means the thread was deleted or expired and
// reclaimed while it was read: the read then sees the thread gone.

import { copyBytes } from "../_bytes.ts";
import { BackendError } from "../errors.ts";
import { isSlotIndex } from "../_validate.ts";
import type { KvBlobStore } from "./_kv_blobs.ts";
import { settleHead, settleHeads } from "./_kv_heads.ts";
import { type BlobRef, type ThreadHead, threadIdOf } from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";

/** Reads of one tenant's threads. */
export class KvReader {
  readonly #store: KvStore;
  readonly #blobs: KvBlobStore;
  /** How listings read the heads (`KvBackendOptions.consistency`). */
  readonly #listing: Deno.KvConsistencyLevel;

  constructor(
    store: KvStore,
    blobs: KvBlobStore,
    listing: Deno.KvConsistencyLevel = "strong",
  ) {
    this.#store = store;
    this.#blobs = blobs;
    this.#listing = listing;
  }

  /** The thread's head if it exists and has not expired. */
  async liveHead(threadId: string): Promise<ThreadHead | null> {
    const { kv, keys } = this.#store;
    if (!keys.threadFits(threadId)) return null;
    const entry = await this.#store.retryWhileLocked(() =>
      kv.get<ThreadHead>(keys.head(threadId))
    );
    return await settleHead(this.#store, entry);
  }

  /** The slot at `index`, or `null` if `index` is not an integer in `[0, len)`. */
  async slot(threadId: string, index: number): Promise<Uint8Array | null> {
    const { kv, keys } = this.#store;
    const head = await this.liveHead(threadId);
    if (head === null || !isSlotIndex(index) || index >= head.n) return null;
    const entry = await this.#store.retryWhileLocked(() =>
      kv.get<Uint8Array | BlobRef>(
        keys.slot(threadId, head.g, index + 0), // -0 is its own key
      )
    );
    if (entry.value === null) return await this.#vanished(threadId, head);
    return await this.#materializeLive(threadId, head, entry.value);
  }

  /** The slots `[start, end)` (bounds checked by the caller), clamped to the length. */
  async range(
    threadId: string,
    start: number,
    end: number | undefined,
  ): Promise<Uint8Array[]> {
    const { kv, keys } = this.#store;
    const head = await this.liveHead(threadId);
    if (head === null) return [];
    const from = Math.min(start, head.n) + 0; // -0 is its own key
    const to = Math.min(end ?? head.n, head.n);
    if (to <= from) return [];
    const entries = await this.#store.retryWhileLocked(() =>
      Array.fromAsync(
        kv.list<Uint8Array | BlobRef>({
          start: keys.slot(threadId, head.g, from),
          end: keys.slot(threadId, head.g, to),
        }, { batchSize: 500 }),
      )
    );
    if (entries.length !== to - from) {
      await this.#vanished(threadId, head);
      return [];
    }
    const slots = await Promise.all(
      entries.map((entry) =>
        this.#materializeLive(threadId, head, entry.value)
      ),
    );
    return slots.includes(null) ? [] : slots as Uint8Array[];
  }

  /** The live threads' ids, in key order, from the heads (never the slots). */
  async threadIds(): Promise<string[]> {
    const now = Date.now();
    const ids: string[] = [];
    for (
      const entry of await settleHeads(this.#store, await this.#heads(), now)
    ) {
      ids.push(threadIdOf(entry));
    }
    return ids;
  }

  /** How many threads are live at `now`, and how many slots they hold. */
  async count(now: number): Promise<{ threads: number; slots: number }> {
    let threads = 0;
    let slots = 0;
    for (
      const { value } of await settleHeads(
        this.#store,
        await this.#heads(),
        now,
      )
    ) {
      threads++;
      slots += value.n;
    }
    return { threads, slots };
  }

  #heads(): Promise<Deno.KvEntry<ThreadHead>[]> {
    return this.#store.listAll<ThreadHead>(
      this.#store.keys.heads(),
      this.#listing,
    );
  }

  /**
   * A slot of a live head was missing: the thread expired (or was deleted)
   * and reclaimed while we read. Reads then see the thread gone, never part
   * of it.
   */
  async #vanished(
    threadId: string,
    seen: ThreadHead,
    error?: BackendError,
  ): Promise<null> {
    const head = await this.liveHead(threadId);
    if (head !== null && head.g === seen.g) {
      throw error ?? new BackendError(
        `Cannot read thread ${
          JSON.stringify(threadId)
        }: a slot below its length is missing`,
      );
    }
    return null;
  }

  /** A slot's bytes, or null if its thread vanished while we read its chunks. */
  async #materializeLive(
    threadId: string,
    head: ThreadHead,
    value: Uint8Array | BlobRef,
  ): Promise<Uint8Array | null> {
    try {
      return await this.#blobs.materialize(threadId, value);
    } catch (error) {
      if (!(error instanceof BackendError)) throw error;
      return await this.#vanished(threadId, head, error);
    }
  }
}

/**
 * Range reads shared by the watches of one backend: watches of a thread woken
 * by the same change ask for the same range at about the same time, and the
 * calls made while one such read is in flight share it (each gets its own
 * copies of the slots). Nothing is kept once the read has settled.
 */
export class SharedRanges {
  readonly #inFlight = new Map<string, Promise<Uint8Array[]>>();

  /** The slots `[start, end)` of `threadId`, read by `read` unless that read is in flight. */
  async range(
    threadId: string,
    start: number,
    end: number | undefined,
    read: () => Promise<Uint8Array[]>,
  ): Promise<Uint8Array[]> {
    const key = `${start}:${end}:${threadId}`;
    const shared = this.#inFlight.get(key);
    if (shared !== undefined) return (await shared).map(copyBytes);
    const reading = read();
    this.#inFlight.set(key, reading);
    try {
      return await reading;
    } finally {
      this.#inFlight.delete(key);
    }
  }
}
