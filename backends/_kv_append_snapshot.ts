// Owns reading what a group commit of appends is planned from (heads through the head cache, the thread counter, the append ids a batch already recorded, the producer and term records); never writes to the store.
//
// A lone writer reads nothing: heads and the counter come from the cache
// (_kv_heads.ts) and what it lacks is read in `getMany`s of 10 keys. After a
// commit failed, the next attempt reads the batch's append ids together with
// their thread's head in one `getMany` (a consistent snapshot), so that an
// id already applied returns its index (_kv_append_plan.ts); and where the
// outcome of an attempt is unknown, the producer record (or the term record)
// says which attempt was applied.

import { BackendError } from "../errors.ts";
import type { PendingAppend, Snapshot } from "./_kv_append_plan.ts";
import { type CachedHead, type HeadCache, headIsLive } from "./_kv_heads.ts";
import type { ThreadHead } from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { KV_LIMITS } from "./_kv_util.ts";

/** Reads the snapshots of one append queue's batches, keeping its head cache. */
export class SnapshotReader {
  readonly #store: KvStore;
  readonly #heads: HeadCache;

  constructor(store: KvStore, heads: HeadCache) {
    this.#store = store;
    this.#heads = heads;
  }

  /**
   * What a batch is planned from: the heads of its threads and the thread
   * counter (from the cache, reading what it lacks), when asked the append
   * ids of the batch already recorded (read with their head), and, when
   * asked, this backend's producer record and the record of the term
   * `termId`. A snapshot, so that other calls of this isolate changing the
   * cache meanwhile cannot disturb the plan.
   */
  async read(
    pending: Map<string, PendingAppend[]>,
    readProducer: boolean,
    readIds: boolean,
    termId: string | undefined,
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
    const termAt = termId !== undefined
      ? toRead.push(keys.producer(termId))
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
}
