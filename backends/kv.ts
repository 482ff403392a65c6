/**
 * The Deno KV backend: one KV file shared by many processes and Workers on a
 * machine, a KV Connect server, or the app's KV on Deno Deploy.
 *
 * @example
 * ```ts
 * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * await using backend = await KvBackend.open({ kvPath: ":memory:" });
 * assert.equal(await backend.bufferAppend("t1", new Uint8Array([1])), 0);
 * assert.equal(await backend.bufferThreadLen("t1"), 1);
 * ```
 *
 * @module
 */

import { type BackendConfig, resolveConfig } from "../config.ts";
import {
  BackendClosedError,
  BackendError,
  SlotLimitError,
  ThreadLimitError,
} from "../errors.ts";
import type { BackendStats, SharedBackend } from "../protocol.ts";
import { checkId, checkRange, checkSlot, isSlotIndex } from "../_validate.ts";
import {
  type BlobRef,
  CHUNK_BYTES,
  expirySecond,
  KvKeys,
  type RegistryRecord,
  type ThreadHead,
  type UploadRecord,
} from "./_kv_keys.ts";
import {
  CONFLICT,
  type Conflict,
  isContention,
  jitteredDelay,
  keyPartBytes,
  KV_LIMITS,
  MAX_KEY_BYTES,
  newId,
} from "./_kv_util.ts";

// The types of this module's API, so that the `./kv` entry point stands alone.
export type { BackendConfig } from "../config.ts";
export type { BackendKind, BackendStats, SharedBackend } from "../protocol.ts";

/**
 * Options of {@linkcode KvBackend.open} beyond the shared config: tuning that
 * tests and unusual deployments may need.
 *
 * @example
 * ```ts
 * import { KvBackend, type KvBackendOptions } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * const options: KvBackendOptions = { maxAttempts: 50, uploadTimeoutMs: 30_000 };
 * await using backend = await KvBackend.open({ kvPath: ":memory:" }, options);
 * assert.equal(await backend.ping(), true);
 * ```
 */
export interface KvBackendOptions {
  /**
   * Most checks one atomic commit may hold: 100 on a local file, 10 on a KV
   * Connect server (`http(s)://` path). Group commits stay within it.
   *
   * @default {100 for a file or ":memory:", 10 otherwise (remote, default or injected KV)}
   */
  maxChecksPerAtomic?: number;
  /**
   * Attempts of one commit that conflicts with other writers (or finds the
   * database locked) before it gives up with a {@linkcode BackendError}.
   * Attempts wait a jittered, growing delay (at most 50 ms) in between.
   *
   * @default {100}
   */
  maxAttempts?: number;
  /**
   * How long a large slot's upload may take. After it, an unpublished upload
   * (its writer died, say) is reclaimed by the next sweep, and a writer that
   * took longer gets a {@linkcode BackendError}.
   *
   * @default {60000}
   */
  uploadTimeoutMs?: number;
}

/** One append waiting in the group-commit queue. */
interface PendingAppend {
  threadId: string;
  /** The slot itself, or the reference to its uploaded chunks. */
  value: Uint8Array | BlobRef;
  /** For a large slot: its upload record, checked and deleted on publish. */
  upload: { key: Deno.KvKey; versionstamp: string } | undefined;
  /** Estimated bytes this append adds to a commit (key and value). */
  bytes: number;
  /** Most bytes of one of the thread's keys (see #threadKeyBytes). */
  keyBytes: number;
  resolve: (index: number) => void;
  reject: (error: unknown) => void;
}

/** What this isolate last knew of a thread's head. */
interface CachedHead {
  versionstamp: string | null;
  head: ThreadHead | null;
}

/** What a group commit is planned from. */
interface Snapshot {
  heads: Map<string, CachedHead>;
  count: { versionstamp: string | null; value: number };
}

/** Sweep at most this often per backend: reclamation within a few seconds of expiry. */
const SWEEP_INTERVAL_MS = 1_000;
/** Expiry-index entries one routine sweep handles; the rest waits for the next. */
const SWEEP_ENTRIES = 200;
/** Registry keys also get `expireIn` = ttl + this, a backstop for a prefix never used again. */
const EXPIRE_IN_GRACE_MS = 60_000;
/** Heads cached for group commit; the cache is dropped when it grows past this. */
const HEAD_CACHE_SIZE = 10_000;

/**
 * A {@linkcode SharedBackend} on Deno KV: one KV file shared by many processes
 * and Workers (every `Deno.openKv(path)` of one file sees the same data), a
 * KV Connect server (`http(s)://` path), or the app's KV on Deno Deploy.
 *
 * **Dense indexes.** Each thread has one head record (generation, length,
 * expiry). An append commits its slot together with the new head in one
 * atomic operation that checks the head's versionstamp, so across isolates
 * and processes the indexes are exactly `0..n-1`. A commit that loses a race
 * is retried with jittered backoff, at most `maxAttempts` times, then the
 * append rejects with a {@linkcode BackendError}: never a silent loss.
 * `TypeError: database is locked` from a busy file counts as such a race.
 *
 * **Group commit.** Appends made concurrently in one isolate wait in a queue
 * while a commit is in flight; the next commit takes as many of them as the
 * atomic limits allow (checks, 1000 mutations, 800 KiB), over one thread or
 * many, so throughput under concurrency rises far above one commit per slot.
 * Heads are cached between commits: a lone writer commits without reading.
 * Each caller still gets its own index, or its own error: a thread that is
 * full or cannot be created rejects its own callers only.
 *
 * **Large slots.** A slot over 60 KiB is written first as chunks under an
 * upload record, then published by a tiny reference in the group commit, so
 * a reader sees it whole or not at all. The upload record has a deadline
 * (`uploadTimeoutMs`): if the writer dies, the sweep reclaims the chunks.
 *
 * **TTL and reclamation.** Expiry is logical: every read compares the head's
 * (or registry pair's) expiry time with the clock, so data is gone exactly
 * when `ttlMs` has passed. An append rewrites only the head (O(1), however
 * long the thread), so slots cannot carry `expireIn`. Storage is reclaimed by
 * a sweep that every call runs at most once a second (it does not depend on
 * `listenQueue`, which Deno Deploy lacks): it walks an expiry index ordered
 * by expiry second up to now, retires expired heads, and deletes the slots
 * and chunks of dead generations (deleted, cleared, expired or replaced
 * threads) and expired registry pairs. Registry keys also carry `expireIn`
 * as a backstop for a prefix that is never used again; heads do not, because
 * the live-thread counter must drop exactly when a head goes.
 *
 * **Limits** are part of the commits: the head's length for
 * `maxSlotsPerThread`, and a per-prefix counter of heads for `maxThreads`
 * (checked and rewritten by every commit that creates or retires a thread).
 * When the counter is at the limit, expired heads are retired first, so only
 * live threads count.
 *
 * **Tenants.** Every key starts with the prefix as one key part (see
 * `_kv_keys.ts`), so `a:` and `a:buffer:` never meet, and listing reads only
 * the tenant's own heads or registry records.
 *
 * @example Two backends on one KV share the data
 * ```ts
 * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * using kv = await Deno.openKv(":memory:");
 * await using a = await KvBackend.open({ kv });
 * await using b = await KvBackend.open({ kv });
 * await a.bufferAppend("t1", new Uint8Array([1]));
 * assert.equal(await b.bufferAppend("t1", new Uint8Array([2])), 1);
 * ```
 */
export class KvBackend implements SharedBackend {
  /** Always `"kv"`. */
  readonly kind = "kv" as const;

  readonly #kv: Deno.Kv;
  readonly #ownsKv: boolean;
  readonly #keys: KvKeys;
  /** Bytes of the prefix as a key part. */
  readonly #prefixBytes: number;
  readonly #ttlMs: number;
  readonly #maxSlotsPerThread: number;
  readonly #maxThreads: number;
  readonly #maxSlotBytes: number;
  readonly #maxChecks: number;
  readonly #maxAttempts: number;
  readonly #uploadTimeoutMs: number;

  #closed = false;
  #closing: Promise<void> | undefined;
  /** Calls in progress, which close() waits for. */
  readonly #active = new Set<Promise<unknown>>();
  readonly #queue: PendingAppend[] = [];
  #flushing: Promise<void> | undefined;
  readonly #heads = new Map<string, CachedHead>();
  #threadCount: { versionstamp: string | null; value: number } | undefined;
  #sweeping: Promise<void> | undefined;
  #nextSweepAt = 0;

  private constructor(
    kv: Deno.Kv,
    ownsKv: boolean,
    config: ReturnType<typeof resolveConfig>,
    options: KvBackendOptions,
    remote: boolean,
  ) {
    this.#kv = kv;
    this.#ownsKv = ownsKv;
    this.#keys = new KvKeys(config.prefix);
    this.#prefixBytes = keyPartBytes(config.prefix);
    this.#ttlMs = config.ttlMs;
    this.#maxSlotsPerThread = config.maxSlotsPerThread;
    this.#maxThreads = config.maxThreads;
    this.#maxSlotBytes = config.maxSlotBytes;
    this.#maxChecks = options.maxChecksPerAtomic ??
      (remote ? KV_LIMITS.remoteChecks : KV_LIMITS.localChecks);
    this.#maxAttempts = options.maxAttempts ?? 100;
    this.#uploadTimeoutMs = options.uploadTimeoutMs ?? 60_000;
  }

  /**
   * Opens the backend: on `config.kv` if given (left open by `close()`), else
   * on `Deno.openKv(config.kvPath)`: a file, `":memory:"`, an `http(s)://`
   * KV Connect URL, or, with no path, Deno's default KV (Deno Deploy: the
   * app's KV).
   *
   * @param config The config; `backendType` is ignored.
   * @param options Tuning; see {@linkcode KvBackendOptions}.
   * @returns The open backend.
   * @throws {TypeError} A config field has the wrong type.
   * @throws {RangeError} A config number or option is out of range.
   * @throws {BackendError} The KV cannot be opened; the message names the path.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:", ttlMs: 0 });
   * assert.equal((await backend.stats()).ttlMs, 0);
   * await assert.rejects(KvBackend.open({ kvPath: "/no/such/dir/x.db" }), /\/no\/such\/dir\/x\.db/);
   * ```
   */
  static async open(
    config: BackendConfig = {},
    options: KvBackendOptions = {},
  ): Promise<KvBackend> {
    const resolved = resolveConfig({ ...config, backendType: "kv" });
    for (const name of ["maxChecksPerAtomic", "maxAttempts"] as const) {
      const value = options[name];
      if (value !== undefined && (!Number.isSafeInteger(value) || value < 1)) {
        throw new RangeError(
          `Invalid ${name}: expected an integer >= 1, got ${value}`,
        );
      }
    }
    if (
      options.maxChecksPerAtomic !== undefined &&
      options.maxChecksPerAtomic < 2
    ) {
      throw new RangeError(
        `Invalid maxChecksPerAtomic: expected an integer >= 2, got ${options.maxChecksPerAtomic}`,
      );
    }
    const timeout = options.uploadTimeoutMs;
    if (
      timeout !== undefined && (!Number.isSafeInteger(timeout) || timeout < 1)
    ) {
      throw new RangeError(
        `Invalid uploadTimeoutMs: expected an integer >= 1, got ${timeout}`,
      );
    }
    const path = resolved.kvPath;
    const local = path !== undefined && !/^https?:\/\//i.test(path);
    if (resolved.kv !== undefined) {
      return new KvBackend(resolved.kv, false, resolved, options, !local);
    }
    let kv: Deno.Kv;
    try {
      // Opening a file other processes are writing may meet a locked database.
      for (let attempt = 0;; attempt++) {
        try {
          kv = await Deno.openKv(path);
          break;
        } catch (error) {
          if (!isContention(error) || attempt >= 20) throw error;
          await jitteredDelay(attempt);
        }
      }
    } catch (error) {
      const where = path === undefined
        ? "the default Deno KV"
        : JSON.stringify(path);
      throw new BackendError(
        `Cannot open ${where}: ${errorMessage(error)}; check kvPath`,
        { cause: error },
      );
    }
    return new KvBackend(kv, true, resolved, options, !local);
  }

  // ---------------------------------------------------------------- buffer

  /**
   * Appends a slot to a thread, creating the thread if needed, and refreshes
   * the thread's TTL. Concurrent calls share atomic commits.
   *
   * @param threadId The thread.
   * @param slot The bytes to store (up to `maxSlotBytes`); a copy is stored.
   * @returns The new slot's index: the thread's length before the append.
   * @throws {TypeError} `threadId` is not a non-empty string, or `slot` is not a `Uint8Array`.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes, or `slot` over `maxSlotBytes`.
   * @throws {SlotLimitError} The thread holds `maxSlotsPerThread` slots.
   * @throws {ThreadLimitError} The thread is new and `maxThreads` live threads exist.
   * @throws {BackendError} The commit kept conflicting for `maxAttempts` attempts, or the store failed.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * const slots = Array.from({ length: 50 }, (_, i) => new Uint8Array([i]));
   * const indexes = await Promise.all(slots.map((s) => backend.bufferAppend("t1", s)));
   * assert.deepEqual(indexes.toSorted((a, b) => a - b), [...Array(50).keys()]);
   * ```
   */
  bufferAppend(threadId: string, slot: Uint8Array): Promise<number> {
    return this.#run("bufferAppend", async () => {
      checkId("threadId", threadId);
      checkSlot(slot, this.#maxSlotBytes);
      // The sweep runs beside the append (close() waits for it): queued
      // appends keep their call order.
      this.#maintain();
      const keyBytes = this.#threadKeyBytes(threadId);
      if (!this.#storable(threadId)) {
        throw new BackendError(
          `Cannot append to thread ${
            JSON.stringify(threadId.slice(0, 40))
          }...: its Deno KV keys would exceed the ${MAX_KEY_BYTES} bytes allowed; use a shorter prefix or id`,
        );
      }
      if (slot.byteLength <= CHUNK_BYTES) {
        return await this.#submit({
          threadId,
          value: slot.slice(),
          upload: undefined,
          bytes: keyBytes + slot.byteLength + 16,
          keyBytes,
        });
      }
      // Copied now, before the first await: the caller may reuse its buffer
      // as soon as this call returns.
      const upload = await this.#upload(threadId, slot.slice());
      try {
        return await this.#submit({
          threadId,
          value: upload.ref,
          upload: { key: upload.key, versionstamp: upload.versionstamp },
          bytes: 3 * keyBytes + 128,
          keyBytes,
        });
      } catch (error) {
        // Not published: reclaim the chunks now (the sweep would, later).
        await this.#dropUpload(threadId, upload.ref.u, upload.key).catch(
          () => {},
        );
        throw error;
      }
    });
  }

  /**
   * Reads all slots of a thread, in index order.
   *
   * @param threadId The thread.
   * @returns The slots; empty if the thread does not exist or expired.
   * @throws {TypeError} `threadId` is not a non-empty string.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.bufferAppend("t1", new Uint8Array([1]));
   * await backend.bufferAppend("t1", new Uint8Array(100_000).fill(2)); // chunked
   * const slots = await backend.bufferGetThread("t1");
   * assert.equal(slots.length, 2);
   * assert.equal(slots[1]!.byteLength, 100_000);
   * ```
   */
  bufferGetThread(threadId: string): Promise<Uint8Array[]> {
    return this.#run("bufferGetThread", async () => {
      checkId("threadId", threadId);
      await this.#maintain();
      return await this.#readRange(threadId, 0, undefined);
    });
  }

  /**
   * Reads the slots `[start, end)` of a thread, clamped like
   * `Array.prototype.slice` with non-negative bounds.
   *
   * @param threadId The thread.
   * @param start The first index, a non-negative integer.
   * @param end One past the last index, a non-negative integer; default: the end.
   * @returns The slots in the range (possibly empty).
   * @throws {TypeError} `threadId` is not a non-empty string.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes, or a bound is not a non-negative integer.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * for (let i = 0; i < 5; i++) await backend.bufferAppend("t1", new Uint8Array([i]));
   * assert.deepEqual(await backend.bufferGetRange("t1", 3, 99), [new Uint8Array([3]), new Uint8Array([4])]);
   * ```
   */
  bufferGetRange(
    threadId: string,
    start: number,
    end?: number,
  ): Promise<Uint8Array[]> {
    return this.#run("bufferGetRange", async () => {
      checkId("threadId", threadId);
      checkRange(start, end);
      await this.#maintain();
      return await this.#readRange(threadId, start, end);
    });
  }

  /**
   * Reads one slot.
   *
   * @param threadId The thread.
   * @param index The slot's index.
   * @returns The slot, or `null` if `index` is not an integer in `[0, len)`.
   * @throws {TypeError} `threadId` is not a non-empty string.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.bufferAppend("t1", new Uint8Array([9]));
   * assert.deepEqual(await backend.bufferGetSlot("t1", 0), new Uint8Array([9]));
   * assert.equal(await backend.bufferGetSlot("t1", 1), null);
   * assert.equal(await backend.bufferGetSlot("t1", -1), null);
   * ```
   */
  bufferGetSlot(threadId: string, index: number): Promise<Uint8Array | null> {
    return this.#run("bufferGetSlot", async () => {
      checkId("threadId", threadId);
      await this.#maintain();
      const head = await this.#liveHead(threadId);
      if (head === null || !isSlotIndex(index) || index >= head.n) return null;
      const entry = await this.#io(() =>
        this.#kv.get<Uint8Array | BlobRef>(
          this.#keys.slot(threadId, head.g, index + 0), // -0 is its own key
        )
      );
      if (entry.value === null) return await this.#vanished(threadId, head);
      return await this.#materializeLive(threadId, head, entry.value);
    });
  }

  /**
   * Counts a thread's slots.
   *
   * @param threadId The thread.
   * @returns The number of slots; 0 if the thread does not exist or expired.
   * @throws {TypeError} `threadId` is not a non-empty string.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * assert.equal(await backend.bufferThreadLen("t1"), 0);
   * await backend.bufferAppend("t1", new Uint8Array());
   * assert.equal(await backend.bufferThreadLen("t1"), 1);
   * ```
   */
  bufferThreadLen(threadId: string): Promise<number> {
    return this.#run("bufferThreadLen", async () => {
      checkId("threadId", threadId);
      await this.#maintain();
      return (await this.#liveHead(threadId))?.n ?? 0;
    });
  }

  /**
   * Tells whether a thread has live slots.
   *
   * @param threadId The thread.
   * @returns `true` if the thread exists and has not expired.
   * @throws {TypeError} `threadId` is not a non-empty string.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.bufferAppend("t1", new Uint8Array([1]));
   * assert.equal(await backend.bufferThreadExists("t1"), true);
   * assert.equal(await backend.bufferThreadExists("t2"), false);
   * ```
   */
  bufferThreadExists(threadId: string): Promise<boolean> {
    return this.#run("bufferThreadExists", async () => {
      checkId("threadId", threadId);
      await this.#maintain();
      return (await this.#liveHead(threadId)) !== null;
    });
  }

  /**
   * Deletes a thread and all its slots. The thread disappears at once; its
   * storage is reclaimed before this resolves (or by a later sweep if that
   * fails).
   *
   * @param threadId The thread.
   * @returns `true` if the thread existed (and had not expired).
   * @throws {TypeError} `threadId` is not a non-empty string.
   * @throws {RangeError} `threadId` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.bufferAppend("t1", new Uint8Array([1]));
   * assert.equal(await backend.bufferDeleteThread("t1"), true);
   * assert.equal(await backend.bufferDeleteThread("t1"), false);
   * ```
   */
  bufferDeleteThread(threadId: string): Promise<boolean> {
    return this.#run("bufferDeleteThread", async () => {
      checkId("threadId", threadId);
      await this.#maintain();
      if (!this.#storable(threadId)) return false;
      const retired = await this.#retry(
        `Cannot delete thread ${JSON.stringify(threadId)}`,
        async () => {
          const key = this.#keys.head(threadId);
          const [entry, count] = await this.#kv.getMany<[ThreadHead, number]>([
            key,
            this.#keys.threadCount(),
          ]);
          const head = entry.value;
          if (head === null || !this.#isLive(head.e, Date.now())) return null;
          const op = this.#retireOp(
            threadId,
            entry as Deno.KvEntry<ThreadHead>,
            count,
          );
          return (await op.commit()).ok ? head : CONFLICT;
        },
      );
      this.#heads.delete(threadId);
      this.#threadCount = undefined;
      if (retired === null) return false;
      await this.#reclaimQuietly(threadId, retired.g, retired.n);
      return true;
    });
  }

  /**
   * Lists the live threads of this backend's prefix, from the heads (never by
   * reading slots).
   *
   * @returns The thread ids exactly as given to `bufferAppend`, in key order.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.bufferAppend("b", new Uint8Array());
   * await backend.bufferAppend("a", new Uint8Array());
   * assert.deepEqual(await backend.bufferListThreads(), ["a", "b"]);
   * ```
   */
  bufferListThreads(): Promise<string[]> {
    return this.#run("bufferListThreads", async () => {
      await this.#maintain();
      const now = Date.now();
      const ids: string[] = [];
      for (const entry of await this.#listAll<ThreadHead>(this.#keys.heads())) {
        if (this.#isLive(entry.value.e, now)) ids.push(entry.key[2] as string);
      }
      return ids;
    });
  }

  /**
   * Deletes every thread of this backend's prefix (and no other's), and
   * reclaims their storage.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.bufferAppend("t1", new Uint8Array([1]));
   * await backend.bufferClear();
   * assert.deepEqual(await backend.bufferListThreads(), []);
   * ```
   */
  bufferClear(): Promise<void> {
    return this.#run("bufferClear", async () => {
      await this.#maintain();
      const dead: [string, ThreadHead][] = [];
      // Retire the heads in batches, each one atomic with the thread counter.
      for (let round = 0;; round++) {
        const heads = await this.#listAll<ThreadHead>(this.#keys.heads());
        if (heads.length === 0) break;
        if (round >= this.#maxAttempts) {
          throw new BackendError(
            `Cannot clear the buffer of prefix ${
              JSON.stringify(this.#keys.prefix)
            }: writers kept adding threads`,
          );
        }
        // Each head: a check and three mutations, one of them a set.
        for (
          const batch of batches(
            heads,
            Math.min(this.#maxChecks - 1, 300),
            (entry) => this.#threadKeyBytes(entry.key[2] as string),
            KV_LIMITS.setKeyBytes,
          )
        ) {
          await this.#io(async () => {
            const count = await this.#kv.get<number>(this.#keys.threadCount());
            const op = this.#kv.atomic().check(count);
            for (const entry of batch) {
              op.check(entry).delete(entry.key);
              this.#retireMutations(op, entry.key[2] as string, entry.value);
            }
            op.set(
              this.#keys.threadCount(),
              Math.max(0, (count.value ?? 0) - batch.length),
            );
            if ((await op.commit()).ok) {
              for (const e of batch) dead.push([e.key[2] as string, e.value]);
            }
          });
        }
      }
      this.#heads.clear();
      this.#threadCount = undefined;
      for (const [threadId, head] of dead) {
        await this.#reclaimQuietly(threadId, head.g, head.n);
      }
    });
  }

  // -------------------------------------------------------------- registry

  /**
   * Maps `chain` to `uuid` both ways and refreshes the pair's TTL. Any uuid
   * that `chain` mapped to before, and any chain that `uuid` mapped to
   * before, are unmapped both ways, in the same atomic commit.
   *
   * @param chain The dotted call chain.
   * @param uuid The uuid.
   * @throws {TypeError} `chain` or `uuid` is not a non-empty string.
   * @throws {RangeError} `chain` or `uuid` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.registrySet("a.b", "u1");
   * await backend.registrySet("a.b", "u2");
   * assert.equal(await backend.registryGetChain("u1"), null);
   * assert.equal(await backend.registryGetUuid("a.b"), "u2");
   * ```
   */
  registrySet(chain: string, uuid: string): Promise<void> {
    return this.#run("registrySet", async () => {
      checkId("chain", chain);
      checkId("uuid", uuid);
      this.#checkPairKeys(chain, uuid);
      await this.#maintain();
      await this.#mapPair(chain, uuid, false);
    });
  }

  /**
   * Maps `chain` to `uuid` only if `chain` is unmapped (then exactly as
   * `registrySet` would). Racing callers all get the same answer. When
   * `chain` is already mapped, nothing is written or refreshed.
   *
   * @param chain The dotted call chain.
   * @param uuid The uuid to map it to if it is unmapped.
   * @returns The uuid `chain` maps to afterwards.
   * @throws {TypeError} `chain` or `uuid` is not a non-empty string.
   * @throws {RangeError} `chain` or `uuid` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * const winners = await Promise.all(
   *   ["u1", "u2", "u3"].map((u) => backend.registrySetIfAbsent("a.b", u)),
   * );
   * assert.equal(new Set(winners).size, 1);
   * ```
   */
  registrySetIfAbsent(chain: string, uuid: string): Promise<string> {
    return this.#run("registrySetIfAbsent", async () => {
      checkId("chain", chain);
      checkId("uuid", uuid);
      this.#checkPairKeys(chain, uuid);
      await this.#maintain();
      return await this.#mapPair(chain, uuid, true);
    });
  }

  /**
   * Looks up a chain's uuid.
   *
   * @param chain The dotted call chain.
   * @returns Its uuid, or `null`.
   * @throws {TypeError} `chain` is not a non-empty string.
   * @throws {RangeError} `chain` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.registrySet("a.b", "u1");
   * assert.equal(await backend.registryGetUuid("a.b"), "u1");
   * assert.equal(await backend.registryGetUuid("a.c"), null);
   * ```
   */
  registryGetUuid(chain: string): Promise<string | null> {
    return this.#run("registryGetUuid", async () => {
      checkId("chain", chain);
      await this.#maintain();
      if (!this.#pairStorable(chain)) return null;
      const entry = await this.#io(() =>
        this.#kv.get<RegistryRecord>(this.#keys.chain(chain))
      );
      const record = entry.value;
      return record !== null && this.#isLive(record.e, Date.now())
        ? record.u
        : null;
    });
  }

  /**
   * Looks up a uuid's chain.
   *
   * @param uuid The uuid.
   * @returns Its chain, or `null`.
   * @throws {TypeError} `uuid` is not a non-empty string.
   * @throws {RangeError} `uuid` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.registrySet("a.b", "u1");
   * assert.equal(await backend.registryGetChain("u1"), "a.b");
   * ```
   */
  registryGetChain(uuid: string): Promise<string | null> {
    return this.#run("registryGetChain", async () => {
      checkId("uuid", uuid);
      await this.#maintain();
      if (!this.#pairStorable(uuid)) return null;
      const entry = await this.#io(() =>
        this.#kv.get<RegistryRecord>(this.#keys.uuid(uuid))
      );
      const record = entry.value;
      return record !== null && this.#isLive(record.e, Date.now())
        ? record.c
        : null;
    });
  }

  /**
   * Removes a uuid's pair, both directions.
   *
   * @param uuid The uuid.
   * @returns `true` if it was mapped.
   * @throws {TypeError} `uuid` is not a non-empty string.
   * @throws {RangeError} `uuid` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.registrySet("a.b", "u1");
   * assert.equal(await backend.registryDelete("u1"), true);
   * assert.equal(await backend.registryGetUuid("a.b"), null);
   * ```
   */
  registryDelete(uuid: string): Promise<boolean> {
    return this.#run("registryDelete", async () => {
      checkId("uuid", uuid);
      await this.#maintain();
      if (!this.#pairStorable(uuid)) return false;
      return await this.#retry(
        `Cannot delete uuid ${JSON.stringify(uuid)}`,
        async () => {
          const byUuid = await this.#kv.get<RegistryRecord>(
            this.#keys.uuid(uuid),
          );
          const record = byUuid.value;
          if (record === null || !this.#isLive(record.e, Date.now())) {
            return false;
          }
          const byChain = await this.#kv.get<RegistryRecord>(
            this.#keys.chain(record.c),
          );
          const op = this.#kv.atomic().check(byUuid, byChain);
          this.#deletePair(op, record, byChain.value, record);
          return (await op.commit()).ok ? true : CONFLICT;
        },
      );
    });
  }

  /**
   * Reads every live pair of this backend's prefix.
   *
   * @returns A map from uuid to chain.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.registrySet("a.b", "u1");
   * assert.deepEqual(await backend.registryListAll(), new Map([["u1", "a.b"]]));
   * ```
   */
  registryListAll(): Promise<Map<string, string>> {
    return this.#run("registryListAll", async () => {
      await this.#maintain();
      const now = Date.now();
      const all = new Map<string, string>();
      for (
        const { value } of await this.#listAll<RegistryRecord>(
          this.#keys.uuids(),
        )
      ) {
        if (this.#isLive(value.e, now)) all.set(value.u, value.c);
      }
      return all;
    });
  }

  /**
   * Removes every pair of this backend's prefix (and no other's).
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * await backend.registrySet("a.b", "u1");
   * await backend.registryClear();
   * assert.equal((await backend.registryListAll()).size, 0);
   * ```
   */
  registryClear(): Promise<void> {
    return this.#run("registryClear", async () => {
      await this.#maintain();
      // A pair's chain record changes whenever the pair does (a registrySet
      // that takes its uuid deletes it), so checking it makes each removal exact.
      for (let round = 0;; round++) {
        const chains = await this.#listAll<RegistryRecord>(this.#keys.chains());
        if (chains.length === 0) break;
        if (round >= this.#maxAttempts) {
          throw new BackendError(
            `Cannot clear the registry of prefix ${
              JSON.stringify(this.#keys.prefix)
            }: writers kept adding pairs`,
          );
        }
        // Each pair: a check and three deletes of its keys.
        for (
          const batch of batches(
            chains,
            Math.min(this.#maxChecks, 300),
            ({ value }) =>
              2 * (this.#pairKeyBytes(value.c) + this.#pairKeyBytes(value.u)),
            KV_LIMITS.commitBytes,
          )
        ) {
          const op = this.#kv.atomic();
          for (const entry of batch) {
            // The bijection holds in every commit: uuid(u) points back.
            op.check(entry);
            this.#deletePair(op, entry.value, entry.value, entry.value);
          }
          await this.#io(() => op.commit());
        }
      }
      // uuid records whose chain record does not point back (none, unless
      // written by hand). A pair that a registrySet wrote since the chains
      // were listed is whole: its uuid record stays, and the chain record is
      // checked so that one written meanwhile keeps it too.
      const uuids = await this.#listAll<RegistryRecord>(this.#keys.uuids());
      const orphans: [
        Deno.KvEntry<RegistryRecord>,
        Deno.KvEntryMaybe<
          RegistryRecord
        >,
      ][] = [];
      for (let i = 0; i < uuids.length; i += KV_LIMITS.getMany) {
        const some = uuids.slice(i, i + KV_LIMITS.getMany);
        const chains = await this.#io(() =>
          this.#kv.getMany<RegistryRecord[]>(
            some.map(({ value }) => this.#keys.chain(value.c)),
          )
        );
        some.forEach((entry, j) => {
          const byChain = chains[j]!;
          if (byChain.value?.u !== entry.value.u) {
            orphans.push([entry, byChain]);
          }
        });
      }
      for (
        const batch of batches(
          orphans,
          Math.floor(this.#maxChecks / 2),
          ([{ value }]) =>
            2 * this.#pairKeyBytes(value.u) + this.#pairKeyBytes(value.c),
          KV_LIMITS.commitBytes,
        )
      ) {
        const op = this.#kv.atomic();
        for (const [entry, byChain] of batch) {
          op.check(entry, byChain).delete(entry.key);
        }
        await this.#io(() => op.commit());
      }
    });
  }

  // ------------------------------------------------------------- lifecycle

  /**
   * Checks that the KV answers.
   *
   * @returns `true` if it does, `false` if a read fails or takes over 5 s.
   * @throws {BackendClosedError} The backend is closed.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:" });
   * assert.equal(await backend.ping(), true);
   * ```
   */
  ping(): Promise<boolean> {
    return this.#run("ping", async () => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), 5_000);
      });
      try {
        return await Promise.race([
          this.#kv.get(this.#keys.threadCount()).then(() => true, () => false),
          timeout,
        ]);
      } finally {
        clearTimeout(timer);
      }
    });
  }

  /**
   * Counts this prefix's live data (from the heads and registry records).
   *
   * @returns The counts and the TTL in force.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * await using backend = await KvBackend.open({ kvPath: ":memory:", ttlMs: 60_000 });
   * await backend.bufferAppend("t1", new Uint8Array([1]));
   * await backend.bufferAppend("t1", new Uint8Array([2]));
   * await backend.registrySet("a.b", "u1");
   * assert.deepEqual(await backend.stats(), {
   *   kind: "kv", threads: 1, slots: 2, registryEntries: 1, ttlMs: 60_000,
   * });
   * ```
   */
  stats(): Promise<BackendStats> {
    return this.#run("stats", async () => {
      await this.#maintain();
      const now = Date.now();
      let threads = 0;
      let slots = 0;
      for (
        const { value } of await this.#listAll<ThreadHead>(this.#keys.heads())
      ) {
        if (!this.#isLive(value.e, now)) continue;
        threads++;
        slots += value.n;
      }
      let registryEntries = 0;
      for (
        const { value } of await this.#listAll<RegistryRecord>(
          this.#keys.chains(),
        )
      ) {
        if (this.#isLive(value.e, now)) registryEntries++;
      }
      return {
        kind: this.kind,
        threads,
        slots,
        registryEntries,
        ttlMs: this.#ttlMs,
      };
    });
  }

  /**
   * Waits for the calls in progress (queued appends are committed), then
   * closes the KV if this backend opened it. An injected `kv` is left open.
   * Idempotent.
   *
   * @example
   * ```ts
   * import { BackendClosedError } from "@xml-pipeline/shared-backend";
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * using kv = await Deno.openKv(":memory:");
   * const backend = await KvBackend.open({ kv });
   * await backend.close();
   * await backend.close();
   * await assert.rejects(backend.ping(), BackendClosedError);
   * assert.equal((await kv.get(["x"])).value, null); // still open
   * ```
   */
  close(): Promise<void> {
    // Every call waits for the same closing: a second close() resolves only
    // once the KV is closed, never while the first is still waiting.
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    while (this.#active.size > 0) {
      await Promise.allSettled([...this.#active]);
    }
    await this.#flushing;
    await this.#sweeping;
    this.#heads.clear();
    if (this.#ownsKv) this.#kv.close();
  }

  /**
   * Closes the backend: `await using backend = await KvBackend.open(...)`.
   *
   * @example
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * let kept: KvBackend;
   * {
   *   await using backend = await KvBackend.open({ kvPath: ":memory:" });
   *   kept = backend;
   * }
   * await assert.rejects(kept.ping(), /closed/);
   * ```
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ================================================================ private

  /** Runs a public call: rejects after close, and lets close() wait for it. */
  #run<T>(method: string, body: () => Promise<T>): Promise<T> {
    if (this.#closed) {
      return Promise.reject(new BackendClosedError(this.kind, method));
    }
    const promise = body();
    this.#active.add(promise);
    const forget = () => this.#active.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  /**
   * Whether a thread's keys fit Deno KV's key limit. A long prefix with a
   * long id, or an id of many NULs (escaped to 2 bytes each), may not: such a
   * thread is refused before anything is written (so it cannot fail the
   * other appends of a group commit), and reads as absent.
   */
  #storable(threadId: string): boolean {
    const fast = (this.#keys.prefix.length + threadId.length) * 6 + 50;
    if (fast <= MAX_KEY_BYTES) return true;
    return this.#threadKeyBytes(threadId) <= MAX_KEY_BYTES;
  }

  /**
   * Most bytes any key of a thread takes: the longest is a blobref (prefix,
   * id, two 16-digit ids, and tags). What commits are sized by.
   */
  #threadKeyBytes(threadId: string): number {
    return this.#prefixBytes + keyPartBytes(threadId) + 50;
  }

  /** Most bytes a registry key of a chain or uuid takes. */
  #pairKeyBytes(id: string): number {
    return this.#prefixBytes + keyPartBytes(id) + 30;
  }

  /** Whether a chain's or uuid's registry keys fit Deno KV's key limit. */
  #pairStorable(id: string): boolean {
    const fast = (this.#keys.prefix.length + id.length) * 6 + 30;
    return fast <= MAX_KEY_BYTES || this.#pairKeyBytes(id) <= MAX_KEY_BYTES;
  }

  #checkPairKeys(chain: string, uuid: string): void {
    for (const id of [chain, uuid]) {
      if (!this.#pairStorable(id)) {
        throw new BackendError(
          `Cannot map chain ${JSON.stringify(chain.slice(0, 40))} to uuid ${
            JSON.stringify(uuid.slice(0, 40))
          }: their Deno KV keys would exceed the ${MAX_KEY_BYTES} bytes allowed; use a shorter prefix or id`,
        );
      }
    }
  }

  #isLive(expiresAt: number, now: number): boolean {
    return expiresAt === 0 || expiresAt > now;
  }

  #expiresAt(now: number): number {
    return this.#ttlMs > 0 ? now + this.#ttlMs : 0;
  }

  /** Runs one KV call, retrying a locked database (bounded). */
  async #io<T>(call: () => Promise<T>): Promise<T> {
    for (let attempt = 0;; attempt++) {
      try {
        return await call();
      } catch (error) {
        if (!isContention(error) || attempt + 1 >= this.#maxAttempts) {
          if (error instanceof BackendError) throw error;
          throw new BackendError(
            `Deno KV operation failed: ${errorMessage(error)}`,
            { cause: error },
          );
        }
        await jitteredDelay(attempt);
      }
    }
  }

  /**
   * Runs an optimistic read-check-commit until it returns something other
   * than CONFLICT; a locked database counts as a conflict. Bounded.
   */
  async #retry<T>(
    what: string,
    attempt: () => Promise<T | Conflict>,
  ): Promise<T> {
    let last: unknown;
    for (let i = 0; i < this.#maxAttempts; i++) {
      if (i > 0) await jitteredDelay(i);
      try {
        const result = await attempt();
        if (result !== CONFLICT) return result as T;
      } catch (error) {
        if (!isContention(error)) {
          if (error instanceof BackendError) throw error;
          throw new BackendError(`${what}: ${errorMessage(error)}`, {
            cause: error,
          });
        }
        last = error;
      }
    }
    throw new BackendError(
      `${what}: the commit conflicted with other writers ${this.#maxAttempts} times; raise maxAttempts or lower contention`,
      last === undefined ? undefined : { cause: last },
    );
  }

  async #listAll<T>(prefix: Deno.KvKey): Promise<Deno.KvEntry<T>[]> {
    return await this.#io(() =>
      Array.fromAsync(this.#kv.list<T>({ prefix }, { batchSize: 500 }))
    );
  }

  /** The thread's head if it exists and has not expired. */
  async #liveHead(threadId: string): Promise<ThreadHead | null> {
    if (!this.#storable(threadId)) return null;
    const entry = await this.#io(() =>
      this.#kv.get<ThreadHead>(this.#keys.head(threadId))
    );
    const head = entry.value;
    return head !== null && this.#isLive(head.e, Date.now()) ? head : null;
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
    const head = await this.#liveHead(threadId);
    if (head !== null && head.g === seen.g) {
      throw error ?? new BackendError(
        `Cannot read thread ${
          JSON.stringify(threadId)
        }: a slot below its length is missing`,
      );
    }
    return null;
  }

  async #readRange(
    threadId: string,
    start: number,
    end: number | undefined,
  ): Promise<Uint8Array[]> {
    const head = await this.#liveHead(threadId);
    if (head === null) return [];
    const from = Math.min(start, head.n) + 0; // -0 is its own key
    const to = Math.min(end ?? head.n, head.n);
    if (to <= from) return [];
    const entries = await this.#io(() =>
      Array.fromAsync(
        this.#kv.list<Uint8Array | BlobRef>({
          start: this.#keys.slot(threadId, head.g, from),
          end: this.#keys.slot(threadId, head.g, to),
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

  /** A slot's bytes, or null if its thread vanished while we read its chunks. */
  async #materializeLive(
    threadId: string,
    head: ThreadHead,
    value: Uint8Array | BlobRef,
  ): Promise<Uint8Array | null> {
    try {
      return await this.#materialize(threadId, value);
    } catch (error) {
      if (!(error instanceof BackendError)) throw error;
      return await this.#vanished(threadId, head, error);
    }
  }

  /** A stored slot's bytes: inline, or joined from its chunks. */
  async #materialize(
    threadId: string,
    value: Uint8Array | BlobRef,
  ): Promise<Uint8Array> {
    if (value instanceof Uint8Array) return value;
    const chunks = await this.#listAll<Uint8Array>(
      this.#keys.chunks(threadId, value.u),
    );
    const bytes = new Uint8Array(value.n);
    let offset = 0;
    for (const { value: chunk } of chunks) {
      if (offset + chunk.byteLength > value.n) break;
      bytes.set(chunk, offset);
      offset += chunk.byteLength;
    }
    if (chunks.length !== value.c || offset !== value.n) {
      throw new BackendError(
        `Cannot read a slot of thread ${
          JSON.stringify(threadId)
        }: its chunks are incomplete (${offset} of ${value.n} bytes)`,
      );
    }
    return bytes;
  }

  // --------------------------------------------------------- large slots

  /** Writes a large slot's chunks (views of `slot`, which the caller must not change) under a fresh upload record. */
  async #upload(
    threadId: string,
    slot: Uint8Array,
  ): Promise<{ ref: BlobRef; key: Deno.KvKey; versionstamp: string }> {
    const uploadId = newId();
    const key = this.#keys.upload(threadId, uploadId);
    const record: UploadRecord = { d: Date.now() + this.#uploadTimeoutMs };
    const { versionstamp } = await this.#io(() => this.#kv.set(key, record));
    const count = Math.ceil(slot.byteLength / CHUNK_BYTES);
    // Several chunks per commit, within the 800 KiB a commit may carry.
    const perCommit = Math.floor(KV_LIMITS.commitBytes / (CHUNK_BYTES + 1024));
    for (let first = 0; first < count; first += perCommit) {
      const op = this.#kv.atomic();
      for (let n = first; n < Math.min(count, first + perCommit); n++) {
        op.set(
          this.#keys.chunk(threadId, uploadId, n),
          slot.subarray(n * CHUNK_BYTES, (n + 1) * CHUNK_BYTES),
        );
      }
      await this.#io(() => op.commit());
    }
    return {
      ref: { u: uploadId, n: slot.byteLength, c: count },
      key,
      versionstamp,
    };
  }

  /** Deletes an unpublished upload: its record first, then its chunks. */
  async #dropUpload(
    threadId: string,
    uploadId: string,
    key: Deno.KvKey,
  ): Promise<void> {
    await this.#io(() => this.#kv.delete(key));
    await this.#deletePrefix(this.#keys.chunks(threadId, uploadId));
  }

  // ---------------------------------------------------------- group commit

  #submit(
    item: Omit<PendingAppend, "resolve" | "reject">,
  ): Promise<number> {
    const { promise, resolve, reject } = Promise.withResolvers<number>();
    this.#queue.push({ ...item, resolve, reject });
    this.#kick();
    return promise;
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
    while (this.#queue.length > 0) {
      const batch = this.#takeBatch();
      try {
        await this.#commitBatch(batch);
      } catch (error) {
        // Not expected (#commitBatch settles every item); never strand a caller.
        for (const item of batch) item.reject(error);
      }
    }
  }

  /** Takes the longest run of queued appends that fits in one atomic commit. */
  #takeBatch(): PendingAppend[] {
    // Reserve one check and a few mutations for the thread counter.
    let checks = 1;
    let mutations = 1;
    let bytes = 256;
    let setKeys = 64;
    const threads = new Set<string>();
    let taken = 0;
    for (const item of this.#queue) {
      const isNew = !threads.has(item.threadId);
      const addChecks = (isNew ? 1 : 0) + (item.upload ? 1 : 0);
      // A new thread in the batch: head, expiry entry and its old one, a dead-generation marker.
      const addMutations = 1 + (isNew ? 4 : 0) + (item.upload ? 2 : 0);
      // Keys of sets: the slot, a blobref; for a new thread its head, expiry
      // entry and dead-generation marker. They count against their own
      // 80 KiB limit, and twice in the commit's bytes (with the check keys).
      const addSetKeys = item.keyBytes *
        (1 + (item.upload ? 1 : 0) + (isNew ? 3 : 0));
      const addBytes = item.bytes + (isNew ? 4 * (item.keyBytes + 64) : 0) +
        addSetKeys + addChecks * item.keyBytes;
      if (
        taken > 0 &&
        (checks + addChecks > this.#maxChecks ||
          mutations + addMutations > KV_LIMITS.mutations ||
          bytes + addBytes > KV_LIMITS.commitBytes ||
          setKeys + addSetKeys > KV_LIMITS.setKeyBytes)
      ) break;
      checks += addChecks;
      mutations += addMutations;
      bytes += addBytes;
      setKeys += addSetKeys;
      threads.add(item.threadId);
      taken++;
    }
    return this.#queue.splice(0, taken);
  }

  /**
   * Commits one batch of appends, retrying on conflicts; settles every item
   * with its own index or error, never throws.
   */
  async #commitBatch(batch: PendingAppend[]): Promise<void> {
    const byThread = Map.groupBy(batch, (item) => item.threadId);
    let pending = byThread;
    let sweptForLimit = false;
    let lastError: unknown;
    for (let attempt = 0; attempt < this.#maxAttempts; attempt++) {
      if (attempt > 0) await jitteredDelay(attempt);
      try {
        const snapshot = await this.#loadHeads([...pending.keys()]);
        const plan = this.#plan(pending, snapshot, Date.now());
        if (plan.overflow > 0 && !sweptForLimit) {
          // At maxThreads: retire expired heads so that only live ones count.
          sweptForLimit = true;
          await this.#retireExpired();
          this.#threadCount = undefined;
          attempt--;
          continue;
        }
        // Uploads the sweep reclaimed (their writer was too slow) fail alone.
        const lost = await this.#lostUploads(pending, attempt);
        if (lost.length > 0) {
          for (const item of lost) {
            item.reject(
              new BackendError(
                `Cannot append to thread ${
                  JSON.stringify(item.threadId)
                }: the upload of a large slot took longer than uploadTimeoutMs (${this.#uploadTimeoutMs}) and was reclaimed`,
              ),
            );
          }
          pending = Map.groupBy(
            [...pending.values()].flat().filter((i) => !lost.includes(i)),
            (item) => item.threadId,
          );
          if (pending.size === 0) return;
          attempt--;
          continue;
        }
        const result = await plan.op.commit();
        if (result.ok) {
          plan.settle(result.versionstamp);
          return;
        }
      } catch (error) {
        if (!isContention(error)) {
          const failure = new BackendError(
            `Cannot append to thread ${JSON.stringify(batch[0]!.threadId)}: ${
              errorMessage(error)
            }`,
            { cause: error },
          );
          for (const items of pending.values()) {
            for (const item of items) item.reject(failure);
          }
          this.#invalidate(pending.keys());
          return;
        }
        lastError = error;
      }
      this.#invalidate(pending.keys());
    }
    for (const [threadId, items] of pending) {
      const failure = new BackendError(
        `Cannot append to thread ${
          JSON.stringify(threadId)
        }: the commit conflicted with other writers ${this.#maxAttempts} times; raise maxAttempts or lower contention`,
        lastError === undefined ? undefined : { cause: lastError },
      );
      for (const item of items) item.reject(failure);
    }
  }

  #invalidate(threadIds: Iterable<string>): void {
    for (const threadId of threadIds) this.#heads.delete(threadId);
    this.#threadCount = undefined;
  }

  /**
   * The heads of a batch's threads and the thread counter: from the cache,
   * reading what it lacks. Returns a snapshot, so that other calls of this
   * isolate changing the cache meanwhile cannot disturb the plan.
   */
  async #loadHeads(threadIds: string[]): Promise<Snapshot> {
    const heads = new Map<string, CachedHead>();
    const missing: string[] = [];
    for (const id of threadIds) {
      const cached = this.#heads.get(id);
      if (cached === undefined) missing.push(id);
      else heads.set(id, cached);
    }
    let count = this.#threadCount;
    const keys: Deno.KvKey[] = missing.map((id) => this.#keys.head(id));
    if (count === undefined) keys.push(this.#keys.threadCount());
    if (keys.length === 0) return { heads, count: count! };
    const reads: Promise<Deno.KvEntryMaybe<unknown>[]>[] = [];
    for (let i = 0; i < keys.length; i += KV_LIMITS.getMany) {
      reads.push(this.#kv.getMany(keys.slice(i, i + KV_LIMITS.getMany)));
    }
    const entries = (await Promise.all(reads)).flat();
    if (this.#heads.size + missing.length > HEAD_CACHE_SIZE) {
      this.#heads.clear();
    }
    missing.forEach((id, i) => {
      const entry = entries[i]!;
      const cached = {
        versionstamp: entry.versionstamp,
        head: entry.value as ThreadHead | null,
      };
      heads.set(id, cached);
      this.#heads.set(id, cached);
    });
    if (count === undefined) {
      const entry = entries[entries.length - 1]!;
      count = {
        versionstamp: entry.versionstamp,
        value: (entry.value as number | null) ?? 0,
      };
      this.#threadCount = count;
    }
    return { heads, count };
  }

  /** Items whose upload record is gone; checked after a failed commit only. */
  async #lostUploads(
    pending: Map<string, PendingAppend[]>,
    attempt: number,
  ): Promise<PendingAppend[]> {
    if (attempt === 0) return [];
    const uploads = [...pending.values()].flat().filter((i) => i.upload);
    const lost: PendingAppend[] = [];
    for (let i = 0; i < uploads.length; i += KV_LIMITS.getMany) {
      const some = uploads.slice(i, i + KV_LIMITS.getMany);
      const entries = await this.#kv.getMany(some.map((u) => u.upload!.key));
      entries.forEach((entry, j) => {
        if (entry.versionstamp !== some[j]!.upload!.versionstamp) {
          lost.push(some[j]!);
        }
      });
    }
    return lost;
  }

  /**
   * Plans one group commit from the cached heads: which callers get which
   * index, which get a limit error, and the atomic operation that makes it so
   * (it checks every head it relies on, and the counter when threads are
   * created or refused).
   */
  #plan(
    pending: Map<string, PendingAppend[]>,
    snapshot: Snapshot,
    now: number,
  ) {
    const op = this.#kv.atomic();
    const count = snapshot.count;
    const outcomes: [PendingAppend, number | Error][] = [];
    const newHeads: [string, ThreadHead][] = [];
    let created = 0;
    let overflow = 0;
    let counterChecked = false;
    const expiresAt = this.#expiresAt(now);
    for (const [threadId, items] of pending) {
      const cached = snapshot.heads.get(threadId)!;
      const old = cached.head;
      op.check({
        key: this.#keys.head(threadId),
        versionstamp: cached.versionstamp,
      });
      const live = old !== null && this.#isLive(old.e, now);
      if (!live && old === null) {
        // Creates a thread: needs room under maxThreads.
        counterChecked = true;
        if (count.value + created >= this.#maxThreads) {
          overflow++;
          for (const item of items) {
            outcomes.push([
              item,
              new ThreadLimitError(threadId, this.#maxThreads),
            ]);
          }
          continue;
        }
        created++;
      }
      const gen = live ? old.g : newId();
      let length = live ? old.n : 0;
      for (const item of items) {
        if (length >= this.#maxSlotsPerThread) {
          outcomes.push([
            item,
            new SlotLimitError(threadId, this.#maxSlotsPerThread),
          ]);
          continue;
        }
        const index = length++;
        if (item.upload) {
          op.check(item.upload);
          op.delete(item.upload.key);
          op.set(
            this.#keys.blobRef(threadId, gen, item.upload.key[3] as string),
            true,
          );
        }
        op.set(this.#keys.slot(threadId, gen, index), item.value);
        outcomes.push([item, index]);
      }
      if (live && length === old.n) continue; // all refused: nothing to write
      const head: ThreadHead = { g: gen, n: length, e: expiresAt };
      op.set(this.#keys.head(threadId), head);
      newHeads.push([threadId, head]);
      if (old !== null && !live) {
        // Replaces an expired generation: mark it dead for the sweep.
        this.#retireMutations(op, threadId, old);
      }
      if (expiresAt !== 0) {
        const second = expirySecond(expiresAt);
        if (!live || old.e === 0 || expirySecond(old.e) !== second) {
          if (live && old.e !== 0) {
            op.delete(
              this.#keys.threadExpiry(expirySecond(old.e), threadId, gen),
            );
          }
          op.set(this.#keys.threadExpiry(second, threadId, gen), null);
        }
      }
    }
    if (counterChecked) {
      op.check({
        key: this.#keys.threadCount(),
        versionstamp: count.versionstamp,
      });
      if (created > 0) op.set(this.#keys.threadCount(), count.value + created);
    }
    const settle = (versionstamp: string) => {
      for (const [threadId, head] of newHeads) {
        this.#heads.set(threadId, { versionstamp, head });
      }
      if (created > 0) {
        this.#threadCount = { versionstamp, value: count.value + created };
      }
      for (const [item, outcome] of outcomes) {
        if (typeof outcome === "number") item.resolve(outcome);
        else item.reject(outcome);
      }
    };
    return { op, overflow, settle };
  }

  // ------------------------------------------------------------- registry

  async #mapPair(
    chain: string,
    uuid: string,
    ifAbsent: boolean,
  ): Promise<string> {
    return await this.#retry(
      `Cannot map chain ${JSON.stringify(chain)} to uuid ${
        JSON.stringify(uuid)
      }`,
      async () => {
        const [byChain, byUuid] = await this.#kv.getMany<
          [RegistryRecord, RegistryRecord]
        >([this.#keys.chain(chain), this.#keys.uuid(uuid)]);
        const now = Date.now();
        const old = byChain.value;
        if (ifAbsent && old !== null && this.#isLive(old.e, now)) return old.u;
        const taken = byUuid.value;
        // The other ends of the pairs this one replaces (expired ones too).
        const [oldUuid, takenChain] = await this.#kv.getMany<
          [RegistryRecord, RegistryRecord]
        >([
          this.#keys.uuid(old?.u ?? uuid),
          this.#keys.chain(taken?.c ?? chain),
        ]);
        const op = this.#kv.atomic().check(
          byChain,
          byUuid,
          oldUuid,
          takenChain,
        );
        // Deleted first, then written: mutations apply in order.
        if (old !== null) this.#deletePair(op, old, old, oldUuid.value);
        if (taken !== null) {
          this.#deletePair(op, taken, takenChain.value, taken);
        }
        const expiresAt = this.#expiresAt(now);
        const record: RegistryRecord = { c: chain, u: uuid, e: expiresAt };
        const options = expiresAt === 0
          ? undefined
          : { expireIn: this.#ttlMs + EXPIRE_IN_GRACE_MS };
        op.set(this.#keys.chain(chain), record, options);
        op.set(this.#keys.uuid(uuid), record, options);
        if (expiresAt !== 0) {
          op.set(this.#keys.pairExpiry(expirySecond(expiresAt), chain), null);
        }
        return (await op.commit()).ok ? uuid : CONFLICT;
      },
    );
  }

  /**
   * Deletes the pair `pair` given what its chain and uuid keys held when
   * read (checked by the caller): each key is deleted only if it still
   * belongs to this pair.
   */
  #deletePair(
    op: Deno.AtomicOperation,
    pair: RegistryRecord,
    byChain: RegistryRecord | null,
    byUuid: RegistryRecord | null,
  ): void {
    if (byChain !== null && byChain.u === pair.u) {
      op.delete(this.#keys.chain(pair.c));
      if (byChain.e !== 0) {
        op.delete(this.#keys.pairExpiry(expirySecond(byChain.e), pair.c));
      }
    }
    if (byUuid !== null && byUuid.c === pair.c) {
      op.delete(this.#keys.uuid(pair.u));
    }
  }

  // ----------------------------------------------------- expiry and sweep

  /**
   * Mutations that end a thread's generation: the head goes (the caller
   * sets the counter and checks the head), its expiry entry goes, and a
   * dead-generation marker holding its length tells the sweep what to reclaim.
   */
  #retireMutations(
    op: Deno.AtomicOperation,
    threadId: string,
    head: ThreadHead,
  ): void {
    if (head.e !== 0) {
      op.delete(
        this.#keys.threadExpiry(expirySecond(head.e), threadId, head.g),
      );
    }
    op.set(this.#keys.threadExpiry(0, threadId, head.g), head.n);
  }

  /** The atomic operation that retires a head and counts it out. */
  #retireOp(
    threadId: string,
    entry: Deno.KvEntry<ThreadHead>,
    count: Deno.KvEntryMaybe<number>,
  ): Deno.AtomicOperation {
    const op = this.#kv.atomic().check(entry, count);
    op.delete(entry.key);
    op.set(this.#keys.threadCount(), Math.max(0, (count.value ?? 0) - 1));
    this.#retireMutations(op, threadId, entry.value);
    return op;
  }

  /**
   * Starts a routine sweep when one is due (at most once a second per
   * backend); returns it so the caller that started it waits for it. Other
   * callers go on. A sweep that fails is retried by the next one.
   */
  #maintain(): Promise<void> | undefined {
    const now = Date.now();
    if (this.#sweeping !== undefined || now < this.#nextSweepAt) return;
    this.#nextSweepAt = now + SWEEP_INTERVAL_MS;
    const sweep = this.#sweep().catch(() => {});
    this.#sweeping = sweep.finally(() => {
      this.#sweeping = undefined;
    });
    return this.#sweeping;
  }

  /**
   * Reclaims storage. Storage reclamation design:
   *
   * - The expiry index (`[p, "exp", second, ...]`, see `_kv_keys.ts`) holds
   *   one entry per live generation (when `ttlMs > 0`) and per registry pair,
   *   keyed by the whole second it expires in, moved by the commit that
   *   refreshes it (at most once a second per thread, so appends stay O(1)),
   *   plus one marker per dead generation at second 0.
   * - A sweep lists the index from the start up to the current second: only
   *   entries that are due, oldest first, never the live data. Expired heads
   *   are retired (deleted, counted out, marked dead); dead generations have
   *   their slots deleted by index (their length is in the marker) and their
   *   large slots' chunks through `blobref` keys; expired pairs are deleted.
   * - Uploads past their deadline (a writer died mid-append) have their
   *   record and chunks deleted.
   * - Every step checks what it reads, so sweeps of several processes, and
   *   writers refreshing a thread meanwhile, never lose live data.
   *
   * The sweep runs on use, at most once a second per backend, bounded per run;
   * `expireIn` is only a backstop on registry keys, since Deno KV deletes
   * expired keys late (about a minute on a local file), and slots of a
   * sliding thread can carry no expiry that appends would not have to rewrite.
   */
  async #sweep(): Promise<void> {
    const now = Date.now();
    const entries = await this.#io(() =>
      Array.fromAsync(
        this.#kv.list<number | null>({
          start: this.#keys.expiries(),
          end: this.#keys.expiriesEnd(expirySecond(now)),
        }, { limit: SWEEP_ENTRIES, batchSize: SWEEP_ENTRIES }),
      )
    );
    for (const entry of entries) {
      await this.#sweepEntry(entry, now, false);
    }
    for (
      const upload of await this.#listAll<UploadRecord>(this.#keys.uploads())
    ) {
      if (upload.value.d > now) continue;
      const op = this.#kv.atomic().check(upload).delete(upload.key);
      if ((await this.#io(() => op.commit())).ok) {
        await this.#deletePrefix(
          this.#keys.chunks(upload.key[2] as string, upload.key[3] as string),
        );
      }
    }
  }

  /** Retires every expired head of this prefix: exact thread counts for maxThreads. */
  async #retireExpired(): Promise<void> {
    const now = Date.now();
    const entries = await this.#io(() =>
      Array.fromAsync(
        this.#kv.list<number | null>({
          start: [...this.#keys.expiries(), 1],
          end: this.#keys.expiriesEnd(expirySecond(now)),
        }, { batchSize: 500 }),
      )
    );
    for (const entry of entries) {
      if (entry.key[3] === "t") await this.#sweepEntry(entry, now, true);
    }
  }

  async #sweepEntry(
    entry: Deno.KvEntry<number | null>,
    now: number,
    retireOnly: boolean,
  ): Promise<void> {
    const [, , second, kind, id, gen] = entry.key as [
      string,
      string,
      number,
      string,
      string,
      string | undefined,
    ];
    if (kind === "r") {
      await this.#sweepPair(entry, id, second, now);
      return;
    }
    if (second === 0) {
      await this.#reclaim(id, gen!, entry.value);
      await this.#io(() =>
        this.#kv.atomic().check(entry).delete(entry.key).commit()
      );
      return;
    }
    const headEntry = await this.#io(() =>
      this.#kv.get<ThreadHead>(this.#keys.head(id))
    );
    const head = headEntry.value;
    if (head === null || head.g !== gen) {
      // The generation ended by a path that left its own marker.
      await this.#io(() => this.#kv.delete(entry.key));
      return;
    }
    if (this.#isLive(head.e, now)) {
      if (head.e === 0 || expirySecond(head.e) !== second) {
        await this.#io(() => this.#kv.delete(entry.key)); // stale entry
      }
      return;
    }
    const retired = await this.#retry(
      `Cannot retire expired thread ${JSON.stringify(id)}`,
      async () => {
        const [current, count] = await this.#kv.getMany<[ThreadHead, number]>([
          this.#keys.head(id),
          this.#keys.threadCount(),
        ]);
        if (current.versionstamp !== headEntry.versionstamp) return false;
        const op = this.#retireOp(
          id,
          current as Deno.KvEntry<ThreadHead>,
          count,
        );
        return (await op.commit()).ok ? true : CONFLICT;
      },
    );
    this.#heads.delete(id);
    this.#threadCount = undefined;
    if (retired && !retireOnly) {
      await this.#reclaimQuietly(id, head.g, head.n);
    }
  }

  async #sweepPair(
    entry: Deno.KvEntry<number | null>,
    chain: string,
    second: number,
    now: number,
  ): Promise<void> {
    const byChain = await this.#io(() =>
      this.#kv.get<RegistryRecord>(this.#keys.chain(chain))
    );
    const record = byChain.value;
    if (
      record === null || record.e === 0 || expirySecond(record.e) !== second
    ) {
      await this.#io(() => this.#kv.delete(entry.key)); // stale entry
      return;
    }
    if (this.#isLive(record.e, now)) return;
    const byUuid = await this.#io(() =>
      this.#kv.get<RegistryRecord>(this.#keys.uuid(record.u))
    );
    const op = this.#kv.atomic().check(byChain, byUuid);
    this.#deletePair(op, record, record, byUuid.value);
    await this.#io(() => op.commit());
  }

  /** Reclaims a dead generation now; on failure its marker stays for a later sweep. */
  async #reclaimQuietly(
    threadId: string,
    gen: string,
    length: number,
  ): Promise<void> {
    try {
      await this.#reclaim(threadId, gen, length);
      await this.#io(() =>
        this.#kv.delete(this.#keys.threadExpiry(0, threadId, gen))
      );
    } catch {
      // The marker is still there: the next sweep retries.
    }
  }

  /** Deletes a dead generation's slots and large-slot chunks. */
  async #reclaim(
    threadId: string,
    gen: string,
    length: number | null,
  ): Promise<void> {
    for (
      const ref of await this.#listAll<true>(this.#keys.blobRefs(threadId, gen))
    ) {
      await this.#deletePrefix(
        this.#keys.chunks(threadId, ref.key[4] as string),
      );
      await this.#io(() => this.#kv.delete(ref.key));
    }
    // Delete by index without reading the slots (they may be large); then
    // list what is left, which is nothing unless the length was unknown.
    // A commit's deleted keys stay within its bytes (long ids).
    const perCommit = Math.min(
      KV_LIMITS.mutations,
      Math.floor(KV_LIMITS.commitBytes / this.#threadKeyBytes(threadId)),
    );
    for (let i = 0; i < (length ?? 0); i += perCommit) {
      const op = this.#kv.atomic();
      for (let j = i; j < Math.min(length!, i + perCommit); j++) {
        op.delete(this.#keys.slot(threadId, gen, j));
      }
      await this.#io(() => op.commit());
    }
    await this.#deletePrefix(this.#keys.slots(threadId, gen));
  }

  async #deletePrefix(prefix: Deno.KvKey): Promise<void> {
    for (;;) {
      const entries = await this.#io(() =>
        Array.fromAsync(
          this.#kv.list({ prefix }, { limit: 200, batchSize: 200 }),
        )
      );
      if (entries.length === 0) return;
      const op = this.#kv.atomic();
      for (const entry of entries) op.delete(entry.key);
      await this.#io(() => op.commit());
    }
  }
}

/**
 * Splits items into runs of at most `max` items whose weights sum to at most
 * `budget` (an item heavier than the budget goes alone).
 */
function batches<T>(
  items: T[],
  max: number,
  weight: (item: T) => number,
  budget: number,
): T[][] {
  const runs: T[][] = [];
  let run: T[] = [];
  let total = 0;
  for (const item of items) {
    const w = weight(item);
    if (run.length > 0 && (run.length >= max || total + w > budget)) {
      runs.push(run);
      run = [];
      total = 0;
    }
    run.push(item);
    total += w;
  }
  if (run.length > 0) runs.push(run);
  return runs;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
