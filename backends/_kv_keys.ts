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
// | [p, "slot", threadId, gen, appendId]       | number: the index of that append id      |
// | [p, "chunk", threadId, uploadId, n]        | Uint8Array: chunk n of a large slot      |
// | [p, "blobref", threadId, gen, uploadId]    | true: generation gen holds that upload   |
// | [p, "upload", threadId, uploadId]          | UploadRecord: an unpublished large slot  |
// | [p, "meta", "threads"]                     | number: heads that exist (live or not)   |
// | [p, "producer", producerId]                | number: a backend's last commit (retries)|
// | [p, "producer", term]                      | number: a committer term's last commit,  |
// |                                            | or -1 once fenced (_kv_terms.ts)         |
// | [p, "op", producerId, seq]                 | true: a registry write that was applied  |
// | [p, "op", term, seq]                       | ForwardLog: the forwarded appends that a |
// |                                            | committer term's commit applied          |
// | [p, "exp", second, "t", threadId, gen]     | number (length) or null: see below       |
// | [p, "exp", second, "r", chain]             | null: a registry pair may expire then    |
// | [p, "chain", chain]                        | RegistryRecord                           |
// | [p, "uuid", uuid]                          | RegistryRecord (the same pair)           |
//
// "exp" is the expiry index the sweep walks in key order (see _kv_sweep.ts): second is
// the pair's or generation's expiry time in whole seconds, or 0 for a
// generation already dead (deleted, cleared, expired, replaced) whose slots
// are still to be reclaimed; then the value is its length. Its builders below
// give a tenant's form; _kv_sweep.ts stores each entry store-wide, as
// `[true, "exp", second, p, ...the rest]`, so that one listing finds what is
// due in every prefix (also one never used again). Store-wide records start
// with `true`, which is no prefix (prefixes are strings): that index, and
// `[true, "sweeper"]`, the lease of the one backend that sweeps the store
// (_kv_lease.ts).
//
// Append ids live under their generation's slots (a string never equals an
// index), so whatever drops a generation's slots drops its append ids too.
//
// Ids (threadId, chain, uuid) stand in keys as themselves, unless their key
// part would be longer than MAX_ID_PART_BYTES (an id of many NULs, each
// escaped to 2 bytes): then as the SHA-256 of their UTF-8 bytes, a
// Uint8Array (no string equals it), and the record keeps the id itself (a
// head's `i`; a registry record holds both ids anyway). Every key builder
// takes an id or such a key part (what a listing finds in a key).

import { createHash } from "node:crypto";
import { keyPartBytes, MAX_KEY_BYTES } from "./_kv_util.ts";

/** An id as it stands in a key: the id itself, or the hash that stands for a long one. */
export type KeyId = string | Uint8Array;

/** A thread's head: the one record every append to the thread checks and rewrites. */
export interface ThreadHead {
  /** Generation: a new one each time the thread is (re)created, so old slots never reappear. */
  g: string;
  /** Length: slots 0..n-1 of generation g are published. */
  n: number;
  /** Expiry time in ms since the epoch; 0 = never. */
  e: number;
  /** The thread's id, when its key holds a hash of it (see KvKeys.id). */
  i?: string;
  /**
   * Sealed: a reader saw this head expired and made it final, so no commit
   * planned before may continue the generation (see _kv_heads.ts).
   */
  x?: 1;
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

/**
 * Most bytes of an id's key part kept as the id itself: any id of up to 1024
 * UTF-8 bytes with no NUL. A longer part (NULs are escaped to 2 bytes) is
 * replaced by a hash.
 */
export const MAX_ID_PART_BYTES = 1026;

/**
 * Most bytes of the key parts after the prefix and the id in the longest
 * key, an append id's: "slot" (6), a generation (18), an append id of up to
 * 128 UTF-8 bytes, NULs escaped (258).
 */
const LONGEST_KEY_REST = 6 + 18 + 258;

/**
 * Most bytes of the prefix's key part (its UTF-8 bytes, one more per NUL,
 * and 2): what Deno KV's 2048-byte keys leave beside the longest id part
 * and the longest rest. Every prefix of up to 369 UTF-8 bytes fits, whatever
 * its characters; a prefix without NUL fits up to 738 bytes.
 */
export const MAX_PREFIX_PART_BYTES = MAX_KEY_BYTES - MAX_ID_PART_BYTES -
  LONGEST_KEY_REST;

/** Bytes an id or a hashed id takes as a key part. */
export function idPartBytes(id: KeyId): number {
  if (typeof id === "string") return keyPartBytes(id);
  let bytes = 2 + id.byteLength;
  for (const byte of id) if (byte === 0) bytes++;
  return bytes;
}

/**
 * The key part of an id: the id itself if it fits, else the SHA-256 of its
 * UTF-8 bytes. A key part passes through unchanged.
 */
export function idPart(id: KeyId): KeyId {
  if (typeof id !== "string") return id;
  // Fast path: a UTF-16 unit is at most 3 UTF-8 bytes (a NUL, 2 escaped).
  if (id.length * 3 + 2 <= MAX_ID_PART_BYTES) return id;
  if (keyPartBytes(id) <= MAX_ID_PART_BYTES) return id;
  let hash = hashes.get(id);
  if (hash === undefined) {
    if (hashes.size >= 1_000) hashes.clear();
    hash = new Uint8Array(createHash("sha256").update(id, "utf8").digest());
    hashes.set(id, hash);
  }
  return hash;
}

/** Ids recently hashed: an append hashes its thread's id once, not per key. */
const hashes = new Map<string, Uint8Array>();

/**
 * Checks that a prefix leaves room for every key (see
 * {@linkcode MAX_PREFIX_PART_BYTES}).
 *
 * @throws {RangeError} The message names `prefix` and the bound.
 */
export function checkKvPrefix(prefix: string): void {
  const bytes = keyPartBytes(prefix) - 2;
  if (bytes > MAX_PREFIX_PART_BYTES - 2) {
    throw new RangeError(
      `Invalid prefix: the kv backend takes at most ${
        MAX_PREFIX_PART_BYTES - 2
      } bytes (UTF-8, a NUL counting 2), got ${bytes}; any prefix of up to 369 UTF-8 bytes works`,
    );
  }
}

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
   * Most bytes any key of a thread takes, append ids aside: the longest is a
   * blobref (prefix, id, two 16-digit ids, and tags). What commits are sized by.
   */
  threadKeyBytes(threadId: KeyId): number {
    return this.#prefixBytes + idPartBytes(idPart(threadId)) + 50;
  }

  /** Bytes of the key of an append id of `threadId`. */
  appendIdKeyBytes(threadId: KeyId, appendId: string): number {
    return this.#prefixBytes + idPartBytes(idPart(threadId)) + 24 +
      keyPartBytes(appendId);
  }

  /**
   * Whether a thread's keys fit Deno KV's key limit: always, since a long id
   * is hashed and the prefix is bounded ({@linkcode checkKvPrefix}).
   */
  threadFits(_threadId: KeyId): boolean {
    return true;
  }

  /** Most bytes a registry key of a chain or uuid takes. */
  pairKeyBytes(id: KeyId): number {
    return this.#prefixBytes + idPartBytes(idPart(id)) + 30;
  }

  /** Whether a chain's or uuid's registry keys fit Deno KV's key limit: always (see threadFits). */
  pairFits(_id: KeyId): boolean {
    return true;
  }

  heads(): Deno.KvKey {
    return [this.prefix, "head"];
  }
  head(threadId: KeyId): Deno.KvKey {
    return [this.prefix, "head", idPart(threadId)];
  }
  slots(threadId: KeyId, gen: string): Deno.KvKey {
    return [this.prefix, "slot", idPart(threadId), gen];
  }
  slot(threadId: KeyId, gen: string, index: number): Deno.KvKey {
    return [this.prefix, "slot", idPart(threadId), gen, index];
  }
  /** Where generation `gen` of a thread records an append id: beside its slots. */
  appendId(threadId: KeyId, gen: string, appendId: string): Deno.KvKey {
    return [this.prefix, "slot", idPart(threadId), gen, appendId];
  }
  chunks(threadId: KeyId, uploadId: string): Deno.KvKey {
    return [this.prefix, "chunk", idPart(threadId), uploadId];
  }
  chunk(threadId: KeyId, uploadId: string, n: number): Deno.KvKey {
    return [this.prefix, "chunk", idPart(threadId), uploadId, n];
  }
  blobRefs(threadId: KeyId, gen: string): Deno.KvKey {
    return [this.prefix, "blobref", idPart(threadId), gen];
  }
  blobRef(threadId: KeyId, gen: string, uploadId: string): Deno.KvKey {
    return [this.prefix, "blobref", idPart(threadId), gen, uploadId];
  }
  uploads(): Deno.KvKey {
    return [this.prefix, "upload"];
  }
  upload(threadId: KeyId, uploadId: string): Deno.KvKey {
    return [this.prefix, "upload", idPart(threadId), uploadId];
  }
  threadCount(): Deno.KvKey {
    return [this.prefix, "meta", "threads"];
  }
  /** A backend's record of its last group commit: what tells a retry whether it was applied. */
  producer(producerId: string): Deno.KvKey {
    return [this.prefix, "producer", producerId];
  }
  /** The record of one registry write of a backend, once applied. */
  op(producerId: string, seq: number): Deno.KvKey {
    return [this.prefix, "op", producerId, seq];
  }
  expiries(): Deno.KvKey {
    return [this.prefix, "exp"];
  }
  /** The first expiry-index key after every entry of `second`. */
  expiriesEnd(second: number): Deno.KvKey {
    return [this.prefix, "exp", second + 1];
  }
  threadExpiry(second: number, threadId: KeyId, gen: string): Deno.KvKey {
    return [this.prefix, "exp", second, "t", idPart(threadId), gen];
  }
  pairExpiry(second: number, chain: KeyId): Deno.KvKey {
    return [this.prefix, "exp", second, "r", idPart(chain)];
  }
  chains(): Deno.KvKey {
    return [this.prefix, "chain"];
  }
  chain(chain: KeyId): Deno.KvKey {
    return [this.prefix, "chain", idPart(chain)];
  }
  uuids(): Deno.KvKey {
    return [this.prefix, "uuid"];
  }
  uuid(uuid: KeyId): Deno.KvKey {
    return [this.prefix, "uuid", idPart(uuid)];
  }
  /** Every key of this tenant. */
  all(): Deno.KvKey {
    return [this.prefix];
  }
}

/** The id of a thread whose head is `entry`: from the key, or from the head if the key holds a hash. */
export function threadIdOf(entry: Deno.KvEntry<ThreadHead>): string {
  const part = entry.key[2];
  return typeof part === "string" ? part : entry.value.i!;
}
