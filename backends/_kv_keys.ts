// Owns the kv backend's key layout, record shapes and key sizes; never reads or writes a KV.
//
// Every key starts with the tenant's prefix as ONE key part, so prefixes that
// are prefixes of each other as strings ("a:" and "a:buffer:") are unrelated
// keys, and one tenant's `kv.list({ prefix: [prefix, ...] })` never reaches
// another tenant's keys.
//
// | key                                        | value                                   |
// | ------------------------------------------ | --------------------------------------- |
// | [p, "head", threadId]                      | ThreadHead: generation, length, expiry   |
// | [p, "slot", threadId, gen, index]          | Uint8Array (inline slot) or BlobRef      |
// | [p, "chunk", threadId, uploadId, n]        | Uint8Array: chunk n of a large slot      |
// | [p, "blobref", threadId, gen, uploadId]    | true: generation gen holds that upload   |
// | [p, "upload", threadId, uploadId]          | UploadRecord: an unpublished large slot  |
// | [p, "meta", "threads"]                     | number: heads that exist (live or not)   |
// | [p, "exp", second, "t", threadId, gen]     | number (length) or null: see below       |
// | [p, "exp", second, "r", chain]             | null: a registry pair may expire then    |
// | [p, "chain", chain]                        | RegistryRecord                           |
// | [p, "uuid", uuid]                          | RegistryRecord (the same pair)           |
//
// "exp" is the expiry index the sweep walks in key order (see _kv_sweep.ts): second is
// the pair's or generation's expiry time in whole seconds, or 0 for a
// generation already dead (deleted, cleared, expired, replaced) whose slots
// are still to be reclaimed; then the value is its length.

import { keyPartBytes, MAX_KEY_BYTES } from "./_kv_util.ts";

/** A thread's head: the one record every append to the thread checks and rewrites. */
export interface ThreadHead {
  /** Generation: a new one each time the thread is (re)created, so old slots never reappear. */
  g: string;
  /** Length: slots 0..n-1 of generation g are published. */
  n: number;
  /** Expiry time in ms since the epoch; 0 = never. */
  e: number;
}

/** A published large slot: its bytes are in `chunk` keys. */
export interface BlobRef {
  /** Upload id. */
  u: string;
  /** Size in bytes. */
  n: number;
  /** Number of chunks. */
  c: number;
}

/** An upload in progress; after its deadline the sweep reclaims its chunks. */
export interface UploadRecord {
  /** Deadline in ms since the epoch. */
  d: number;
}

/** One registry pair, stored under both its chain and its uuid. */
export interface RegistryRecord {
  /** Chain. */
  c: string;
  /** Uuid. */
  u: string;
  /** Expiry time in ms since the epoch; 0 = never. */
  e: number;
}

/** Largest chunk, and largest slot stored inline: under the 64 KiB value limit. */
export const CHUNK_BYTES = 60 * 1024;

/** Whole seconds of an expiry time, the granularity of the expiry index. */
export function expirySecond(expiresAt: number): number {
  return Math.floor(expiresAt / 1000);
}

/** Whether a head or registry record with expiry time `expiresAt` (0: never) is live at `now`. */
export function isLive(expiresAt: number, now: number): boolean {
  return expiresAt === 0 || expiresAt > now;
}

/** The expiry time of a record written at `now` with a sliding `ttlMs` (0: never). */
export function expiryFrom(now: number, ttlMs: number): number {
  return ttlMs > 0 ? now + ttlMs : 0;
}

/** Key builders of one tenant, and the sizes of its keys. */
export class KvKeys {
  readonly prefix: string;
  /** Bytes of the prefix as a key part. */
  readonly #prefixBytes: number;
  constructor(prefix: string) {
    this.prefix = prefix;
    this.#prefixBytes = keyPartBytes(prefix);
  }

  /**
   * Most bytes any key of a thread takes: the longest is a blobref (prefix,
   * id, two 16-digit ids, and tags). What commits are sized by.
   */
  threadKeyBytes(threadId: string): number {
    return this.#prefixBytes + keyPartBytes(threadId) + 50;
  }

  /**
   * Whether a thread's keys fit Deno KV's key limit. A long prefix with a
   * long id, or an id of many NULs (escaped to 2 bytes each), may not: such a
   * thread is refused before anything is written (so it cannot fail the
   * other appends of a group commit), and reads as absent.
   */
  threadFits(threadId: string): boolean {
    const fast = (this.prefix.length + threadId.length) * 6 + 50;
    if (fast <= MAX_KEY_BYTES) return true;
    return this.threadKeyBytes(threadId) <= MAX_KEY_BYTES;
  }

  /** Most bytes a registry key of a chain or uuid takes. */
  pairKeyBytes(id: string): number {
    return this.#prefixBytes + keyPartBytes(id) + 30;
  }

  /** Whether a chain's or uuid's registry keys fit Deno KV's key limit. */
  pairFits(id: string): boolean {
    const fast = (this.prefix.length + id.length) * 6 + 30;
    return fast <= MAX_KEY_BYTES || this.pairKeyBytes(id) <= MAX_KEY_BYTES;
  }

  heads(): Deno.KvKey {
    return [this.prefix, "head"];
  }
  head(threadId: string): Deno.KvKey {
    return [this.prefix, "head", threadId];
  }
  slots(threadId: string, gen: string): Deno.KvKey {
    return [this.prefix, "slot", threadId, gen];
  }
  slot(threadId: string, gen: string, index: number): Deno.KvKey {
    return [this.prefix, "slot", threadId, gen, index];
  }
  chunks(threadId: string, uploadId: string): Deno.KvKey {
    return [this.prefix, "chunk", threadId, uploadId];
  }
  chunk(threadId: string, uploadId: string, n: number): Deno.KvKey {
    return [this.prefix, "chunk", threadId, uploadId, n];
  }
  blobRefs(threadId: string, gen: string): Deno.KvKey {
    return [this.prefix, "blobref", threadId, gen];
  }
  blobRef(threadId: string, gen: string, uploadId: string): Deno.KvKey {
    return [this.prefix, "blobref", threadId, gen, uploadId];
  }
  uploads(): Deno.KvKey {
    return [this.prefix, "upload"];
  }
  upload(threadId: string, uploadId: string): Deno.KvKey {
    return [this.prefix, "upload", threadId, uploadId];
  }
  threadCount(): Deno.KvKey {
    return [this.prefix, "meta", "threads"];
  }
  expiries(): Deno.KvKey {
    return [this.prefix, "exp"];
  }
  /** The first expiry-index key after every entry of `second`. */
  expiriesEnd(second: number): Deno.KvKey {
    return [this.prefix, "exp", second + 1];
  }
  threadExpiry(second: number, threadId: string, gen: string): Deno.KvKey {
    return [this.prefix, "exp", second, "t", threadId, gen];
  }
  pairExpiry(second: number, chain: string): Deno.KvKey {
    return [this.prefix, "exp", second, "r", chain];
  }
  chains(): Deno.KvKey {
    return [this.prefix, "chain"];
  }
  chain(chain: string): Deno.KvKey {
    return [this.prefix, "chain", chain];
  }
  uuids(): Deno.KvKey {
    return [this.prefix, "uuid"];
  }
  uuid(uuid: string): Deno.KvKey {
    return [this.prefix, "uuid", uuid];
  }
  /** Every key of this tenant. */
  all(): Deno.KvKey {
    return [this.prefix];
  }
}
