// Owns what a thread's head means between commits: whether it is live, the seal that makes an expiry someone saw final, and the cache of heads for group commit; never writes a slot.
//
// Expiry is logical: a head is live until its expiry time by the clock. A
// group commit decides from the clock whether it continues a generation or
// starts a new one, then commits with a check of the head's versionstamp;
// that commit may land after the expiry (a slow commit, a KV Connect round
// trip). So a reader that finds a head expired seals it before it answers
// "gone": one commit, checked against the versionstamp it read, that marks
// the head (`x`). A commit planned before the expiry then fails its check
// and is planned again, as a new generation; and if that commit landed
// first, the seal fails and the reader sees the continued thread. Either
// way, once any caller has seen a thread gone, no old slot comes back. A
// sealed head stays until the sweep retires it; no reader seals it twice.

import { idPart, isLive, type KeyId, type ThreadHead } from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";

/** Heads cached for group commit; the cache is dropped when it grows past this. */
const HEAD_CACHE_SIZE = 10_000;
/** Append ids remembered with cached heads, at most (about 10 MB). */
const KNOWN_IDS = 100_000;

/** What this isolate last knew of a thread's head. */
export interface CachedHead {
  versionstamp: string | null;
  head: ThreadHead | null;
  /**
   * Every append id of the head's generation, with its index, when this
   * isolate made every commit of that generation (it created it, and each
   * commit since checked the versionstamp the one before left): an id not
   * here is in no key either, so a commit need not check it.
   */
  ids?: Map<string, number>;
}

/** What this isolate last knew of the thread counter. */
export interface CachedCount {
  versionstamp: string | null;
  value: number;
}

/** Whether `head` is live at `now`: not sealed, and not past its expiry. */
export function headIsLive(head: ThreadHead, now: number): boolean {
  return head.x !== 1 && isLive(head.e, now);
}

/**
 * What this isolate last knew of heads and of the thread counter, with
 * their versionstamps: a commit checks them, so a stale entry costs one
 * retry, never a wrong index. Keyed by the thread's key part, so that the
 * sweep, which finds threads by their keys, forgets the right one.
 */
export class HeadCache {
  readonly #heads = new Map<string, CachedHead>();
  /** Heads of threads whose keys hold a hash of the id, by the hash in hex. */
  readonly #hashed = new Map<string, CachedHead>();
  /** The thread counter; `undefined` when it must be read again. */
  count: CachedCount | undefined;
  /** Append ids remembered with the cached heads. */
  #knownIds = 0;

  get(threadId: KeyId): CachedHead | undefined {
    const part = idPart(threadId);
    return typeof part === "string"
      ? this.#heads.get(part)
      : this.#hashed.get(hex(part));
  }

  set(threadId: KeyId, cached: CachedHead): void {
    const old = this.get(threadId);
    if (old?.ids !== undefined && old.ids !== cached.ids) {
      this.#knownIds -= old.ids.size;
    }
    const part = idPart(threadId);
    if (typeof part === "string") this.#heads.set(part, cached);
    else this.#hashed.set(hex(part), cached);
  }

  /**
   * What to remember of a generation's append ids after a commit of this
   * isolate recorded `recorded` in it: `previous` (what was known of it)
   * grown by them, or for a generation the commit created (`created`), them
   * alone; `undefined` when nothing complete is known, or when remembering
   * more would pass the cache's budget (the ids are then checked in the
   * store again).
   */
  learnIds(
    previous: Map<string, number> | undefined,
    created: boolean,
    recorded: ReadonlyMap<string, number>,
  ): Map<string, number> | undefined {
    const ids = created ? new Map<string, number>() : previous;
    if (ids === undefined) return undefined;
    if (this.#knownIds + recorded.size > KNOWN_IDS) return undefined;
    for (const [id, index] of recorded) ids.set(id, index);
    this.#knownIds += recorded.size;
    return ids;
  }

  /** Drops every head when `more` of them would grow the cache past its size. */
  makeRoom(more: number): void {
    if (this.#heads.size + this.#hashed.size + more > HEAD_CACHE_SIZE) {
      this.#clear();
    }
  }

  /** Forgets the head of `threadId` (of every thread if absent) and the counter. */
  forget(threadId?: KeyId): void {
    if (threadId === undefined) {
      this.#clear();
    } else {
      const old = this.get(threadId);
      if (old?.ids !== undefined) this.#knownIds -= old.ids.size;
      const part = idPart(threadId);
      if (typeof part === "string") this.#heads.delete(part);
      else this.#hashed.delete(hex(part));
    }
    this.count = undefined;
  }

  #clear(): void {
    this.#heads.clear();
    this.#hashed.clear();
    this.#knownIds = 0;
  }
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The live head of a thread, given the entry a reader read: the head if it
 * is live at `now`, `null` if there is none or it is sealed; an expired head
 * is sealed first (see the file's opening comment), and if a writer changed
 * it meanwhile, the head is read again.
 *
 * @param now The clock when the caller decides (read after `entry`).
 */
export async function settleHead(
  store: KvStore,
  entry: Deno.KvEntryMaybe<ThreadHead>,
  now: number = Date.now(),
): Promise<ThreadHead | null> {
  return (await settleEntry(store, entry, now))?.value ?? null;
}

/**
 * The entries of `entries` (a listing of heads) whose heads are live at
 * `now`, in their order, after sealing the expired ones; a head a writer
 * changed meanwhile is read again and kept if live.
 */
export async function settleHeads(
  store: KvStore,
  entries: readonly Deno.KvEntry<ThreadHead>[],
  now: number = Date.now(),
): Promise<Deno.KvEntry<ThreadHead>[]> {
  const settled: (Deno.KvEntry<ThreadHead> | null)[] = entries.map((entry) =>
    headIsLive(entry.value, now) ? entry : null
  );
  // Expired heads not sealed yet (usually the sweep has retired them), a
  // few at a time.
  const expired = entries.flatMap((entry, i) =>
    settled[i] === null && entry.value.x !== 1 ? [i] : []
  );
  for (let first = 0; first < expired.length; first += SEALS_AT_ONCE) {
    await Promise.all(
      expired.slice(first, first + SEALS_AT_ONCE).map(async (i) => {
        const entry = await settleEntry(store, entries[i]!, now);
        settled[i] = entry !== null && headIsLive(entry.value, now)
          ? entry
          : null;
      }),
    );
  }
  return settled.filter((entry) => entry !== null);
}

/** Expired heads a listing seals at once. */
const SEALS_AT_ONCE = 32;

async function settleEntry(
  store: KvStore,
  first: Deno.KvEntryMaybe<ThreadHead>,
  now: number,
): Promise<Deno.KvEntry<ThreadHead> | null> {
  const { kv } = store;
  let entry = first;
  for (let attempt = 0;; attempt++) {
    const head = entry.value;
    if (head === null || head.x === 1) return null;
    if (isLive(head.e, now)) return entry as Deno.KvEntry<ThreadHead>;
    const sealed: ThreadHead = { ...head, x: 1 };
    const seal = kv.atomic().check(entry).set(entry.key, sealed);
    const result = await store.retryWhileLocked(() => seal.commit());
    if (result.ok) return null;
    // A writer changed the head: read it again, with a clock read after it.
    const key = entry.key;
    entry = await store.retryWhileLocked(() => kv.get<ThreadHead>(key));
    now = Math.max(now, Date.now());
    if (attempt >= store.maxAttempts) {
      // Writers kept changing it: it is live (or gone) as read last.
      return entry.value !== null && headIsLive(entry.value, now)
        ? entry as Deno.KvEntry<ThreadHead>
        : null;
    }
  }
}
