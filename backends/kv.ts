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

// Owns the KvBackend class (open(), the public calls behind #enter, close); never touches a key itself.
//
// The engine lives in rooms beside it: _kv_append_queue.ts (the commit of
// appends), _kv_blobs.ts (large slots), _kv_reads.ts (reads of threads),
// _kv_sweep.ts (the expiry index, retiring and reclaiming), _kv_registry.ts
// (registry pairs), all on _kv_store.ts (the KV and its bounded retries) and
// _kv_keys.ts (the key layout). The options and their checks are in
// _kv_options.ts; opening the KV and assembling the rooms, in _kv_open.ts.

import { withTimeout } from "../_async.ts";
import {
  type BackendConfig,
  resolveConfig,
  type ResolvedConfig,
} from "../config.ts";
import { BackendClosedError } from "../errors.ts";
import type {
  BackendStats,
  BufferAppendOptions,
  BufferWatchOptions,
  RegistryRefreshOptions,
  SharedBackend,
  WatchedSlot,
} from "../protocol.ts";
import {
  checkAppendOptions,
  checkId,
  checkRange,
  checkSlot,
  refreshTtl,
} from "../_validate.ts";
import { watchThread } from "../_watch.ts";
import type { KvAppendQueue } from "./_kv_append_queue.ts";
import type { KvCommitter } from "./_kv_committer.ts";
import { checkKvPrefix } from "./_kv_keys.ts";
import { assembleEngine, type KvEngine, openKv } from "./_kv_open.ts";
import {
  checkOptions,
  checkSweepOptions,
  type KvBackendOptions,
} from "./_kv_options.ts";
import { type KvReader, SharedRanges } from "./_kv_reads.ts";
import type { KvRegistry } from "./_kv_registry.ts";
import type { KvStore } from "./_kv_store.ts";
import type { KvSweeper, KvSweepOptions, KvSweepResult } from "./_kv_sweep.ts";
import type { KvWatchSource } from "./_kv_watch.ts";

// The types of this module's API, so that the `./kv` entry point stands alone.
export type { BackendConfig } from "../config.ts";
export type {
  BackendKind,
  BackendStats,
  BufferAppendOptions,
  BufferWatchOptions,
  RegistryRefreshOptions,
  SharedBackend,
  WatchedSlot,
} from "../protocol.ts";
export type { KvBackendOptions } from "./_kv_options.ts";
export type { KvSweepOptions, KvSweepResult } from "./_kv_sweep.ts";

/**
 * A {@linkcode SharedBackend} on Deno KV: one KV file shared by many processes
 * and Workers (every `Deno.openKv(path)` of one file sees the same data), a
 * KV Connect server (`http(s)://` path), or the app's KV on Deno Deploy.
 *
 * **Dense indexes.** Each thread has one head record (generation, length,
 * expiry). An append commits its slot together with the new head in one
 * atomic operation that checks the head's versionstamp, so across isolates
 * and processes the indexes are exactly `0..n-1`. A commit that loses a race
 * is planned again with jittered backoff, at most `maxAttempts` times; one
 * that fails in a way that may pass (`TypeError: database is locked` from a
 * busy file, a lost connection to a remote KV) is retried until the config's
 * `retryTimeoutMs`. Then the append rejects with a {@linkcode BackendError}
 * that says whether it was applied: never a silent loss, never applied twice
 * (where an answer may be lost, `idempotentRetries` lets a retry find out
 * whether the attempt before it was applied).
 *
 * **Append ids.** An `appendId` is recorded beside the thread's slots in the
 * same commit as the slot, so a repeat from any process returns the first
 * one's index; the ids go with the thread (deletion, expiry, clear).
 *
 * **Gone stays gone.** A read that finds a thread expired seals its head
 * before answering, so an append planned before the expiry whose commit
 * lands after it starts the thread anew instead of bringing old slots back.
 *
 * **Group commit.** Appends made concurrently in one isolate wait in a queue
 * while a commit is in flight; the next commit takes as many of them as the
 * atomic limits allow (checks, 1000 mutations, 800 KiB), over one thread or
 * many, so throughput under concurrency rises far above one commit per slot.
 * Heads are cached between commits: a lone writer commits without reading.
 * Each caller still gets its own index, or its own error: a thread that is
 * full or cannot be created rejects its own callers only. The isolates of a
 * process on one file (Workers, `deno serve --parallel`) elect one of them
 * to commit the appends of all (`processCommitter`), so that one commit
 * carries them together and no isolate's commit fails for another's.
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
 * a sweep of the whole store (every prefix, also one never used again) that
 * walks a store-wide expiry index ordered by expiry second up to now, retires
 * expired heads in batches, and deletes the slots and chunks of dead
 * generations (deleted, cleared, expired or replaced threads) and expired
 * registry pairs. One backend of a store sweeps at a time (it holds a lease
 * key); it sweeps on its calls, at most once a second and at most 200 index
 * entries and 10 000 slots a call (`sweepOnUse`), or when
 * {@linkcode KvBackend.sweep} is called. It does not depend on
 * `listenQueue`, which the new Deno Deploy and KV Connect lack (Deploy
 * Classic and local files have it). Registry keys also carry
 * `expireIn` as a backstop; heads do not, because the live-thread counter
 * must drop exactly when a head goes.
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
 *
 * @example Concurrent appends share commits; a large slot is chunked
 * ```ts
 * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * await using backend = await KvBackend.open({ kvPath: ":memory:" });
 * const slots = Array.from({ length: 50 }, (_, i) => new Uint8Array([i]));
 * const indexes = await Promise.all(slots.map((s) => backend.bufferAppend("t1", s)));
 * assert.deepEqual(indexes.toSorted((a, b) => a - b), [...Array(50).keys()]);
 * await backend.bufferAppend("t1", new Uint8Array(100_000).fill(2));
 * assert.equal((await backend.bufferGetSlot("t1", 50))?.byteLength, 100_000);
 * ```
 */
export class KvBackend implements SharedBackend {
  /** Always `"kv"`. */
  readonly kind = "kv" as const;

  readonly #store: KvStore;
  /** Whether close() closes the KV: not when the caller passed it in. */
  readonly #ownsKv: boolean;
  /** {@inheritDoc SharedBackend.ttlMs} */
  get ttlMs(): number {
    return this.#ttlMs;
  }

  readonly #ttlMs: number;
  readonly #maxSlotBytes: number;
  readonly #retryTimeoutMs: number;
  readonly #appends: KvAppendQueue;
  /** This isolate's member of its process's commit group, if it has joined one. */
  readonly #committer: KvCommitter | undefined;
  readonly #reader: KvReader;
  readonly #registry: KvRegistry;
  readonly #sweeper: KvSweeper;
  readonly #watches: KvWatchSource;
  /** Reads of watches of one thread made at once share one read. */
  readonly #watchReads = new SharedRanges();
  /** How listings and stats read (`KvBackendOptions.consistency`). */
  readonly #consistency: Deno.KvConsistencyLevel;

  #closed = false;
  /** Aborted by close(): every watch ends. */
  readonly #watchesEnd = new AbortController();
  #closing: Promise<void> | undefined;
  /** Calls in progress, which close() waits for. */
  readonly #active = new Set<Promise<unknown>>();

  private constructor(engine: KvEngine, config: ResolvedConfig) {
    this.#ownsKv = config.kv === undefined;
    this.#ttlMs = config.ttlMs;
    this.#maxSlotBytes = config.maxSlotBytes;
    this.#retryTimeoutMs = config.retryTimeoutMs;
    this.#store = engine.store;
    this.#consistency = engine.consistency;
    this.#reader = engine.reader;
    this.#registry = engine.registry;
    this.#sweeper = engine.sweeper;
    this.#watches = engine.watches;
    this.#appends = engine.appends;
    this.#committer = engine.committer;
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
    checkOptions(options);
    checkKvPrefix(resolved.prefix);
    const kv = await openKv(resolved, options);
    return new KvBackend(assembleEngine(kv, resolved, options), resolved);
  }

  // ---------------------------------------------------------------- buffer

  /**
   * {@inheritDoc SharedBackend.bufferAppend}
   *
   * On Deno KV, concurrent calls share atomic commits; a slot over 60 KiB is
   * uploaded as chunks first, then published whole by the commit. An
   * `appendId` is recorded beside the thread's slots, in the same commit.
   *
   * @throws {BackendError} The commit kept conflicting for `maxAttempts`
   * attempts, kept failing (a locked file, a lost connection) for
   * `retryTimeoutMs`, or the store failed; the message says whether the
   * append was applied.
   */
  bufferAppend(
    threadId: string,
    slot: Uint8Array,
    options?: BufferAppendOptions,
  ): Promise<number> {
    return this.#enter("bufferAppend", async () => {
      checkId("threadId", threadId);
      checkSlot(slot, this.#maxSlotBytes);
      checkAppendOptions(options);
      // The sweep runs beside the append (close() waits for it): queued
      // appends keep their call order.
      this.#sweeper.maintain();
      const appendId = options?.appendId;
      return await (this.#committer === undefined
        ? this.#appends.append(threadId, slot, appendId)
        : this.#committer.append(threadId, slot, appendId));
    });
  }

  /**
   * {@inheritDoc SharedBackend.bufferWatch}
   *
   * On Deno KV, appends of this process (any `Deno.Kv` of the same file,
   * Workers too) and every append on Deno Deploy wake watches through
   * `kv.watch` on the thread's head. Appends of other processes to a local
   * file are seen by one poller per backend, however many watches: it
   * checks the file (a `stat`) and reads the watched heads 10 a call,
   * every 10 ms while they change, backing off to 500 ms when they do not
   * (`watchPolling`). The watch ends within 1 s of the thread's deletion or
   * expiry. See "Watching" in docs/kv.md for latency and idle cost.
   *
   * @example A watcher sees what another backend on the file appends
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * const kvPath = await Deno.makeTempFile({ suffix: ".db" });
   * await using watcher = await KvBackend.open({ kvPath });
   * await using writer = await KvBackend.open({ kvPath });
   * const watch = watcher.bufferWatch("t1", { fromIndex: 0 });
   * const first = watch.next();
   * await writer.bufferAppend("t1", new Uint8Array([1]));
   * assert.deepEqual((await first).value, { index: 0, slot: new Uint8Array([1]) });
   * await writer.bufferDeleteThread("t1");
   * assert.equal((await watch.next()).done, true); // the thread is gone
   * await watcher.close();
   * await writer.close();
   * await Deno.remove(kvPath);
   * ```
   */
  bufferWatch(
    threadId: string,
    options?: BufferWatchOptions,
  ): AsyncIterableIterator<WatchedSlot> {
    return watchThread(
      {
        kind: this.kind,
        bufferGetRange: (id, start, end) =>
          this.#watchReads.range(
            id,
            start,
            end,
            () => this.bufferGetRange(id, start, end),
          ),
        bufferThreadLen: (id) => this.bufferThreadLen(id),
        watchSource: this.#watches,
        closedSignal: this.#watchesEnd.signal,
        retryTimeoutMs: this.#retryTimeoutMs,
      },
      threadId,
      options,
    );
  }

  /** {@inheritDoc SharedBackend.bufferGetThread} */
  bufferGetThread(threadId: string): Promise<Uint8Array[]> {
    return this.#enter("bufferGetThread", async () => {
      checkId("threadId", threadId);
      await this.#sweeper.maintain();
      return await this.#reader.range(threadId, 0, undefined);
    });
  }

  /** {@inheritDoc SharedBackend.bufferGetRange} */
  bufferGetRange(
    threadId: string,
    start: number,
    end?: number,
  ): Promise<Uint8Array[]> {
    return this.#enter("bufferGetRange", async () => {
      checkId("threadId", threadId);
      checkRange(start, end);
      await this.#sweeper.maintain();
      return await this.#reader.range(threadId, start, end);
    });
  }

  /** {@inheritDoc SharedBackend.bufferGetSlot} */
  bufferGetSlot(threadId: string, index: number): Promise<Uint8Array | null> {
    return this.#enter("bufferGetSlot", async () => {
      checkId("threadId", threadId);
      await this.#sweeper.maintain();
      return await this.#reader.slot(threadId, index);
    });
  }

  /** {@inheritDoc SharedBackend.bufferThreadLen} */
  bufferThreadLen(threadId: string): Promise<number> {
    return this.#enter("bufferThreadLen", async () => {
      checkId("threadId", threadId);
      await this.#sweeper.maintain();
      return (await this.#reader.liveHead(threadId))?.n ?? 0;
    });
  }

  /** {@inheritDoc SharedBackend.bufferThreadExists} */
  bufferThreadExists(threadId: string): Promise<boolean> {
    return this.#enter("bufferThreadExists", async () => {
      checkId("threadId", threadId);
      await this.#sweeper.maintain();
      return (await this.#reader.liveHead(threadId)) !== null;
    });
  }

  /**
   * {@inheritDoc SharedBackend.bufferDeleteThread}
   *
   * On Deno KV the thread disappears at once; its storage is reclaimed
   * before this resolves (or by a later sweep if that fails).
   */
  bufferDeleteThread(threadId: string): Promise<boolean> {
    return this.#enter("bufferDeleteThread", async () => {
      checkId("threadId", threadId);
      await this.#sweeper.maintain();
      return await this.#sweeper.retireThread(threadId);
    });
  }

  /**
   * {@inheritDoc SharedBackend.bufferListThreads}
   *
   * On Deno KV the ids come from the heads (never by reading slots), in key
   * order.
   */
  bufferListThreads(): Promise<string[]> {
    return this.#enter("bufferListThreads", async () => {
      await this.#sweeper.maintain();
      return await this.#reader.threadIds();
    });
  }

  /**
   * {@inheritDoc SharedBackend.bufferClear}
   *
   * On Deno KV their storage is reclaimed too.
   *
   * @throws {BackendError} Writers kept adding threads for `maxAttempts`
   * rounds.
   */
  bufferClear(): Promise<void> {
    return this.#enter("bufferClear", async () => {
      await this.#sweeper.maintain();
      await this.#sweeper.retireAll();
    });
  }

  // -------------------------------------------------------------- registry

  /**
   * {@inheritDoc SharedBackend.registrySet}
   *
   * On Deno KV the pair and every unmapping are one atomic commit.
   */
  registrySet(chain: string, uuid: string): Promise<void> {
    return this.#enter("registrySet", async () => {
      checkId("chain", chain);
      checkId("uuid", uuid);
      await this.#sweeper.maintain();
      await this.#registry.map(chain, uuid, false);
    });
  }

  /**
   * {@inheritDoc SharedBackend.registrySetIfAbsent}
   *
   * On Deno KV a retry after a lost answer returns what the write that was
   * applied returned.
   */
  registrySetIfAbsent(chain: string, uuid: string): Promise<string> {
    return this.#enter("registrySetIfAbsent", async () => {
      checkId("chain", chain);
      checkId("uuid", uuid);
      await this.#sweeper.maintain();
      return await this.#registry.map(chain, uuid, true);
    });
  }

  /** {@inheritDoc SharedBackend.registryGetUuid} */
  registryGetUuid(chain: string): Promise<string | null> {
    return this.#enter("registryGetUuid", async () => {
      checkId("chain", chain);
      await this.#sweeper.maintain();
      return await this.#registry.uuidOf(chain);
    });
  }

  /** {@inheritDoc SharedBackend.registryGetChain} */
  registryGetChain(uuid: string): Promise<string | null> {
    return this.#enter("registryGetChain", async () => {
      checkId("uuid", uuid);
      await this.#sweeper.maintain();
      return await this.#registry.chainOf(uuid);
    });
  }

  /**
   * {@inheritDoc SharedBackend.registryRefresh}
   *
   * On Deno KV both records and the pair's expiry-index entry are rewritten
   * in one commit, checked against what was read.
   */
  registryRefresh(
    uuid: string,
    options?: RegistryRefreshOptions,
  ): Promise<boolean> {
    return this.#enter("registryRefresh", async () => {
      checkId("uuid", uuid);
      const ttlMs = refreshTtl(options, this.ttlMs);
      await this.#sweeper.maintain();
      return await this.#registry.refresh(uuid, ttlMs);
    });
  }

  /** {@inheritDoc SharedBackend.registryDelete} */
  registryDelete(uuid: string): Promise<boolean> {
    return this.#enter("registryDelete", async () => {
      checkId("uuid", uuid);
      await this.#sweeper.maintain();
      return await this.#registry.delete(uuid);
    });
  }

  /** {@inheritDoc SharedBackend.registryListAll} */
  registryListAll(): Promise<Map<string, string>> {
    return this.#enter("registryListAll", async () => {
      await this.#sweeper.maintain();
      return await this.#registry.listAll();
    });
  }

  /**
   * {@inheritDoc SharedBackend.registryClear}
   *
   * @throws {BackendError} Writers kept adding pairs for `maxAttempts` rounds.
   */
  registryClear(): Promise<void> {
    return this.#enter("registryClear", async () => {
      await this.#sweeper.maintain();
      await this.#registry.clear();
    });
  }

  // ------------------------------------------------------------- lifecycle

  /**
   * Reclaims the expired data of every prefix of the store now: expired
   * threads and registry pairs, the storage of deleted and cleared threads,
   * uploads whose writer died. One backend of a store sweeps at a time: if
   * another holds the store's sweeper lease (it sweeps on its calls), this
   * resolves at once with `swept: false`. Calls sweep a little on their own
   * (see `sweepOnUse`); an app that turns that off, or wants reclamation
   * without traffic, runs this from `Deno.cron`:
   * `Deno.cron("sweep kv", "* * * * *", () => backend.sweep().then(() => {}))`.
   *
   * @param options How much to do at most.
   * @returns What was done.
   * @throws {RangeError} `maxEntries` is not a non-negative integer (or Infinity).
   * @throws {BackendClosedError} The backend is closed.
   * @throws {BackendError} The store failed.
   *
   * @example An expired thread of a prefix nobody uses any more is reclaimed
   * ```ts
   * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
   * import assert from "node:assert/strict";
   *
   * using kv = await Deno.openKv(":memory:");
   * const abandoned = await KvBackend.open({ kv, prefix: "old:", ttlMs: 100 });
   * await abandoned.bufferAppend("t1", new Uint8Array([1]));
   * await abandoned.close();
   * await new Promise((resolve) => setTimeout(resolve, 1_100));
   *
   * await using backend = await KvBackend.open({ kv, prefix: "new:" }, { sweepOnUse: false });
   * const result = await backend.sweep();
   * assert.equal(result.threads, 1);
   * assert.deepEqual(await Array.fromAsync(kv.list({ prefix: ["old:", "slot"] })), []);
   * ```
   */
  sweep(options: KvSweepOptions = {}): Promise<KvSweepResult> {
    return this.#enter("sweep", async () => {
      checkSweepOptions(options);
      return await this.#sweeper.sweep(options);
    });
  }

  /**
   * {@inheritDoc SharedBackend.ping}
   *
   * On Deno KV: `false` if a read fails or takes over 5 s.
   *
   * @throws {BackendClosedError} The backend is closed.
   */
  ping(): Promise<boolean> {
    return this.#enter("ping", () =>
      withTimeout(
        this.#store.kv.get(this.#store.keys.threadCount()).then(
          () => true,
          () => false,
        ),
        5_000,
        () => false,
      ));
  }

  /**
   * {@inheritDoc SharedBackend.stats}
   *
   * On Deno KV the counts come from the heads and registry records.
   */
  stats(): Promise<BackendStats> {
    return this.#enter("stats", async () => {
      await this.#sweeper.maintain();
      const now = Date.now();
      const { threads, slots } = await this.#reader.count(now);
      return {
        kind: this.kind,
        threads,
        slots,
        registryEntries: await this.#registry.count(now, this.#consistency),
        ttlMs: this.#ttlMs,
      };
    });
  }

  /**
   * Waits for the calls in progress (queued appends are committed), then
   * closes the KV if this backend opened it. An injected `kv` is left open.
   * Idempotent: a second call resolves once the first has finished.
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
    this.#watchesEnd.abort();
    while (this.#active.size > 0) {
      await Promise.allSettled([...this.#active]);
    }
    // A committer first answers what other isolates forwarded to it.
    await this.#committer?.close();
    await this.#appends.idle();
    await this.#sweeper.close();
    await this.#watches.close();
    if (this.#ownsKv) this.#store.kv.close();
  }

  /** Closes the backend: `await using backend = await KvBackend.open(...)`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Runs a public call: rejects after close, and lets close() wait for it. */
  #enter<T>(method: string, body: () => Promise<T>): Promise<T> {
    if (this.#closed) {
      return Promise.reject(new BackendClosedError(this.kind, method));
    }
    const promise = body();
    this.#active.add(promise);
    const forget = () => this.#active.delete(promise);
    promise.then(forget, forget);
    return promise;
  }
}
