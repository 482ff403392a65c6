/**
 * The in-memory backend: one isolate's `Map`s, the default. Fast, exact, and
 * gone when the isolate ends; use `kv` or `redis` to share state between
 * isolates, processes or machines.
 *
 * @module
 */

// Methods are async without awaiting so that bad arguments reject, as on every other backend.
// deno-lint-ignore-file require-await

import { type BackendConfig, resolveConfig } from "../config.ts";
import {
  BackendClosedError,
  SlotLimitError,
  ThreadLimitError,
} from "../errors.ts";
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
  isSlotIndex,
  refreshTtl,
} from "../_validate.ts";
import { WatchListeners, watchThread } from "../_watch.ts";
import {
  copyIn,
  copyOut,
  emptySlots,
  PagePool,
  slotCount,
  type ThreadSlots,
} from "./_memory_slots.ts";

// What this entry point's signatures name, so that it documents alone (JSR).
export type { BackendConfig } from "../config.ts";
export type * from "../protocol.ts";

/**
 * Options of {@linkcode InMemoryBackend}: the config (its connection fields
 * are ignored), plus a clock for tests.
 *
 * @example
 * ```ts
 * import { InMemoryBackend, type InMemoryBackendOptions } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * let now = 0;
 * const options: InMemoryBackendOptions = { ttlMs: 10, now: () => now };
 * await using backend = new InMemoryBackend(options);
 * await backend.registrySet("a.b", "u1");
 * now = 10;
 * assert.equal(await backend.registryGetChain("u1"), null);
 * ```
 */
export interface InMemoryBackendOptions extends
  Pick<
    BackendConfig,
    "ttlMs" | "maxSlotsPerThread" | "maxThreads" | "maxSlotBytes" | "prefix"
  > {
  /**
   * The clock, in milliseconds, that TTLs are measured with. Tests pass a
   * fake one to expire data without sleeping.
   *
   * @default {Date.now}
   */
  now?: () => number;
}

interface Thread extends ThreadSlots {
  expiresAt: number;
  /** The index of each append id applied to this thread (made on first use). */
  appendIds?: Map<string, number>;
}

/** Expired entries are hidden at once and their memory reclaimed within this. */
const SWEEP_INTERVAL_MS = 1_000;

interface RegistryPair {
  chain: string;
  uuid: string;
  expiresAt: number;
}

/**
 * A {@linkcode SharedBackend} in this isolate's memory.
 *
 * Every operation runs to completion without an `await` in between, so
 * indexes are dense and limits exact under any number of concurrent callers.
 * Slots are copied in and out: changing an array after `bufferAppend`, or one
 * that a read returned, never changes the stored slot.
 *
 * Expiry costs no timer: reads check the expiry of what they touch, and a
 * call made after the earliest expiry sweeps out everything expired (at most
 * once a second), so memory is reclaimed within a second of the next use.
 * Watches are woken in-process by the append itself; the one timer is that of
 * the earliest expiry of a watched thread, to end its watches on time.
 *
 * The `prefix` option is accepted for symmetry but has nothing to isolate:
 * each instance has its own maps.
 *
 * @example
 * ```ts
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * let now = 0;
 * await using backend = new InMemoryBackend({ ttlMs: 1_000, now: () => now });
 * assert.equal(await backend.bufferAppend("t1", new Uint8Array([7])), 0);
 * now += 999;
 * assert.equal(await backend.bufferThreadLen("t1"), 1);
 * now += 1;
 * assert.equal(await backend.bufferThreadExists("t1"), false);
 * ```
 */
export class InMemoryBackend implements SharedBackend {
  /** Always `"memory"`. */
  readonly kind = "memory" as const;

  /** {@inheritDoc SharedBackend.ttlMs} */
  get ttlMs(): number {
    return this.#ttlMs;
  }

  readonly #ttlMs: number;
  readonly #maxSlotsPerThread: number;
  readonly #maxThreads: number;
  readonly #maxSlotBytes: number;
  readonly #now: () => number;
  #threads = new Map<string, Thread>();
  #chains = new Map<string, RegistryPair>();
  #uuids = new Map<string, RegistryPair>();
  #closed = false;
  #pages = new PagePool();
  /** When #sweepAll next runs: see there. */
  #nextSweep = Infinity;
  readonly #watchers = new WatchListeners();
  readonly #closedController = new AbortController();
  /** Ends the watches of a watched thread that expires (none while nothing is watched). */
  #watchExpiry: ReturnType<typeof setTimeout> | undefined;
  #watchExpiryAt = Infinity;

  /**
   * Makes an empty in-memory backend.
   *
   * @param options TTL, limits, and the clock.
   * @throws {RangeError} An option is out of range; the message names it.
   */
  constructor(options: InMemoryBackendOptions = {}) {
    const { now, ...config } = options;
    const resolved = resolveConfig({ ...config, backendType: "memory" });
    this.#ttlMs = resolved.ttlMs;
    this.#maxSlotsPerThread = resolved.maxSlotsPerThread;
    this.#maxThreads = resolved.maxThreads;
    this.#maxSlotBytes = resolved.maxSlotBytes;
    this.#now = now ?? Date.now;
  }

  /**
   * Makes an in-memory backend from a config, as the factory does.
   *
   * @param config The config (connection fields are ignored) and the clock.
   * @returns The new backend.
   *
   * @example
   * ```ts
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = await InMemoryBackend.open({ maxThreads: 5 });
   * assert.equal(await backend.ping(), true);
   * ```
   */
  static open(config: InMemoryBackendOptions = {}): Promise<InMemoryBackend> {
    try {
      return Promise.resolve(new InMemoryBackend(config));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** {@inheritDoc SharedBackend.bufferAppend} */
  async bufferAppend(
    threadId: string,
    slot: Uint8Array,
    options?: BufferAppendOptions,
  ): Promise<number> {
    const now = this.#enter("bufferAppend");
    checkId("threadId", threadId);
    checkSlot(slot, this.#maxSlotBytes);
    checkAppendOptions(options);
    const appendId = options?.appendId;
    let thread = this.#liveThread(threadId, now);
    if (appendId !== undefined) {
      const applied = thread?.appendIds?.get(appendId);
      if (applied !== undefined) return applied;
    }
    if (thread === undefined) {
      if (this.#threads.size >= this.#maxThreads) {
        this.#sweepAll(now);
        if (this.#threads.size >= this.#maxThreads) {
          throw new ThreadLimitError(threadId, this.#maxThreads);
        }
      }
      thread = { ...emptySlots(), expiresAt: Infinity };
      this.#threads.set(threadId, thread);
    } else if (slotCount(thread) >= this.#maxSlotsPerThread) {
      throw new SlotLimitError(threadId, this.#maxSlotsPerThread);
    }
    const index = slotCount(thread);
    copyIn(thread, slot, this.#pages);
    if (appendId !== undefined) {
      (thread.appendIds ??= new Map()).set(appendId, index);
    }
    if (this.#ttlMs > 0) this.#expireAt(thread, now + this.#ttlMs);
    if (this.#watchers.size > 0) this.#appended(threadId, thread);
    return index;
  }

  /**
   * {@inheritDoc SharedBackend.bufferWatch}
   *
   * Appends in this backend wake its watches at once (no polling, no timer
   * while the thread has no TTL to run out).
   */
  bufferWatch(
    threadId: string,
    options?: BufferWatchOptions,
  ): AsyncIterableIterator<WatchedSlot> {
    return watchThread(
      {
        kind: this.kind,
        bufferGetRange: (id, start, end) => this.bufferGetRange(id, start, end),
        bufferThreadLen: (id) => this.bufferThreadLen(id),
        watchSource: {
          subscribe: (id, wake) => {
            const remove = this.#watchers.add(id, wake);
            const thread = this.#threads.get(id);
            if (thread !== undefined) this.#watchExpiryBy(thread.expiresAt);
            return Promise.resolve(() => {
              remove();
              if (this.#watchers.size === 0) this.#stopWatchExpiry();
            });
          },
        },
        closedSignal: this.#closedController.signal,
        retryTimeoutMs: 0,
      },
      threadId,
      options,
    );
  }

  /** {@inheritDoc SharedBackend.bufferGetThread} */
  async bufferGetThread(threadId: string): Promise<Uint8Array[]> {
    const now = this.#enter("bufferGetThread");
    checkId("threadId", threadId);
    const thread = this.#liveThread(threadId, now);
    return thread === undefined ? [] : copyOut(thread, 0, slotCount(thread));
  }

  /** {@inheritDoc SharedBackend.bufferGetRange} */
  async bufferGetRange(
    threadId: string,
    start: number,
    end?: number,
  ): Promise<Uint8Array[]> {
    const now = this.#enter("bufferGetRange");
    checkId("threadId", threadId);
    checkRange(start, end);
    const thread = this.#liveThread(threadId, now);
    if (thread === undefined) return [];
    const len = slotCount(thread);
    return copyOut(
      thread,
      Math.min(start, len),
      Math.max(Math.min(start, len), Math.min(end ?? len, len)),
    );
  }

  /** {@inheritDoc SharedBackend.bufferGetSlot} */
  async bufferGetSlot(
    threadId: string,
    index: number,
  ): Promise<Uint8Array | null> {
    const now = this.#enter("bufferGetSlot");
    checkId("threadId", threadId);
    const thread = this.#liveThread(threadId, now);
    if (thread === undefined || !isSlotIndex(index)) return null;
    return index < slotCount(thread)
      ? copyOut(thread, index, index + 1)[0]!
      : null;
  }

  /** {@inheritDoc SharedBackend.bufferThreadLen} */
  async bufferThreadLen(threadId: string): Promise<number> {
    const now = this.#enter("bufferThreadLen");
    checkId("threadId", threadId);
    const thread = this.#liveThread(threadId, now);
    return thread === undefined ? 0 : slotCount(thread);
  }

  /** {@inheritDoc SharedBackend.bufferThreadExists} */
  async bufferThreadExists(threadId: string): Promise<boolean> {
    const now = this.#enter("bufferThreadExists");
    checkId("threadId", threadId);
    return this.#liveThread(threadId, now) !== undefined;
  }

  /** {@inheritDoc SharedBackend.bufferDeleteThread} */
  async bufferDeleteThread(threadId: string): Promise<boolean> {
    const now = this.#enter("bufferDeleteThread");
    checkId("threadId", threadId);
    const thread = this.#liveThread(threadId, now);
    if (thread === undefined) return false;
    this.#drop(threadId, thread);
    return true;
  }

  /** {@inheritDoc SharedBackend.bufferListThreads} */
  async bufferListThreads(): Promise<string[]> {
    const now = this.#enter("bufferListThreads");
    this.#sweepAll(now);
    return [...this.#threads.keys()];
  }

  /** {@inheritDoc SharedBackend.bufferClear} */
  async bufferClear(): Promise<void> {
    this.#enter("bufferClear");
    for (const thread of this.#threads.values()) this.#pages.recycle(thread);
    this.#threads.clear();
    this.#watchers.notifyAll("gone");
  }

  /** {@inheritDoc SharedBackend.registrySet} */
  async registrySet(chain: string, uuid: string): Promise<void> {
    const now = this.#enter("registrySet");
    checkId("chain", chain);
    checkId("uuid", uuid);
    this.#map(chain, uuid, now);
  }

  /** {@inheritDoc SharedBackend.registrySetIfAbsent} */
  async registrySetIfAbsent(chain: string, uuid: string): Promise<string> {
    const now = this.#enter("registrySetIfAbsent");
    checkId("chain", chain);
    checkId("uuid", uuid);
    const existing = this.#livePair(this.#chains, chain, now);
    if (existing !== undefined) return existing.uuid;
    this.#map(chain, uuid, now);
    return uuid;
  }

  /** {@inheritDoc SharedBackend.registryGetUuid} */
  async registryGetUuid(chain: string): Promise<string | null> {
    const now = this.#enter("registryGetUuid");
    checkId("chain", chain);
    return this.#livePair(this.#chains, chain, now)?.uuid ?? null;
  }

  /** {@inheritDoc SharedBackend.registryGetChain} */
  async registryGetChain(uuid: string): Promise<string | null> {
    const now = this.#enter("registryGetChain");
    checkId("uuid", uuid);
    return this.#livePair(this.#uuids, uuid, now)?.chain ?? null;
  }

  /** {@inheritDoc SharedBackend.registryRefresh} */
  async registryRefresh(
    uuid: string,
    options?: RegistryRefreshOptions,
  ): Promise<boolean> {
    const now = this.#enter("registryRefresh");
    checkId("uuid", uuid);
    const ttlMs = refreshTtl(options, this.#ttlMs);
    const pair = this.#livePair(this.#uuids, uuid, now);
    if (pair === undefined) return false;
    if (this.#ttlMs > 0) this.#expireAt(pair, now + ttlMs);
    return true;
  }

  /** {@inheritDoc SharedBackend.registryDelete} */
  async registryDelete(uuid: string): Promise<boolean> {
    const now = this.#enter("registryDelete");
    checkId("uuid", uuid);
    const pair = this.#livePair(this.#uuids, uuid, now);
    if (pair === undefined) return false;
    this.#unmap(pair);
    return true;
  }

  /** {@inheritDoc SharedBackend.registryListAll} */
  async registryListAll(): Promise<Map<string, string>> {
    const now = this.#enter("registryListAll");
    this.#sweepAll(now);
    const all = new Map<string, string>();
    for (const pair of this.#chains.values()) all.set(pair.uuid, pair.chain);
    return all;
  }

  /** {@inheritDoc SharedBackend.registryClear} */
  async registryClear(): Promise<void> {
    this.#enter("registryClear");
    this.#chains.clear();
    this.#uuids.clear();
  }

  /** {@inheritDoc SharedBackend.ping} */
  async ping(): Promise<boolean> {
    this.#enter("ping");
    return true;
  }

  /** {@inheritDoc SharedBackend.stats} */
  async stats(): Promise<BackendStats> {
    const now = this.#enter("stats");
    this.#sweepAll(now);
    let slots = 0;
    for (const thread of this.#threads.values()) slots += slotCount(thread);
    return {
      kind: this.kind,
      threads: this.#threads.size,
      slots,
      registryEntries: this.#chains.size,
      ttlMs: this.#ttlMs,
    };
  }

  /** {@inheritDoc SharedBackend.close} */
  async close(): Promise<void> {
    this.#closed = true;
    this.#stopWatchExpiry();
    this.#closedController.abort();
    this.#threads.clear();
    this.#chains.clear();
    this.#uuids.clear();
    this.#pages.clear();
  }

  /** Closes the backend: `await using backend = new InMemoryBackend()`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Rejects calls after close, reclaims what expired, and returns the time. */
  #enter(method: string): number {
    if (this.#closed) throw new BackendClosedError(this.kind, method);
    if (this.#ttlMs === 0) return 0; // nothing expires: spare the clock read (about 50 ns)
    const now = this.#now();
    if (now >= this.#nextSweep) this.#sweepAll(now);
    return now;
  }

  /** Sets an entry's expiry, keeping #nextSweep no later than the earliest one. */
  #expireAt(entry: Thread | RegistryPair, at: number): void {
    entry.expiresAt = at;
    if (at < this.#nextSweep) this.#nextSweep = at;
  }

  /**
   * Drops every expired entry: reads hide expired data at once, this reclaims
   * its memory. It runs when the earliest expiry has passed, at most once a
   * second (an entry refreshed in place leaves #nextSweep early, so a sweep
   * may find nothing), and before counting threads against maxThreads, lists
   * and stats.
   */
  #sweepAll(now: number): void {
    if (this.#ttlMs === 0) return;
    let earliest = Infinity;
    for (const [id, thread] of this.#threads) {
      if (thread.expiresAt <= now) this.#drop(id, thread);
      else if (thread.expiresAt < earliest) earliest = thread.expiresAt;
    }
    for (const pair of this.#chains.values()) {
      if (pair.expiresAt <= now) this.#unmap(pair);
      else if (pair.expiresAt < earliest) earliest = pair.expiresAt;
    }
    this.#nextSweep = Math.max(earliest, now + SWEEP_INTERVAL_MS);
  }

  #liveThread(threadId: string, now: number): Thread | undefined {
    const thread = this.#threads.get(threadId);
    if (thread !== undefined && thread.expiresAt <= now) {
      this.#drop(threadId, thread);
      return undefined;
    }
    return thread;
  }

  /** Forgets a thread and recycles its pages; its watches end. */
  #drop(threadId: string, thread: Thread): void {
    this.#threads.delete(threadId);
    this.#pages.recycle(thread);
    if (this.#watchers.size > 0) this.#watchers.notify(threadId, "gone");
  }

  /** Wakes the watches of a thread that was appended to. */
  #appended(threadId: string, thread: Thread): void {
    this.#watchers.notify(threadId, "changed");
    if (this.#watchers.has(threadId)) this.#watchExpiryBy(thread.expiresAt);
  }

  /**
   * Makes sure the expiry timer runs by `at` (in the backend's clock): an
   * append only moves a thread's expiry later, so an earlier timer stays and
   * reschedules itself when it finds nothing expired.
   */
  #watchExpiryBy(at: number): void {
    if (at === Infinity || at >= this.#watchExpiryAt) return;
    clearTimeout(this.#watchExpiry);
    this.#watchExpiryAt = at;
    this.#watchExpiry = setTimeout(
      () => this.#expireWatched(),
      Math.max(0, at - this.#now()) + 1,
    );
  }

  /** Drops the watched threads that expired (ending their watches), then rearms. */
  #expireWatched(): void {
    this.#watchExpiry = undefined;
    this.#watchExpiryAt = Infinity;
    if (this.#closed) return;
    const now = this.#now();
    for (const threadId of [...this.#watchers.threadIds()]) {
      const thread = this.#liveThread(threadId, now);
      if (thread !== undefined) this.#watchExpiryBy(thread.expiresAt);
    }
  }

  #stopWatchExpiry(): void {
    clearTimeout(this.#watchExpiry);
    this.#watchExpiry = undefined;
    this.#watchExpiryAt = Infinity;
  }

  #livePair(
    map: Map<string, RegistryPair>,
    key: string,
    now: number,
  ): RegistryPair | undefined {
    const pair = map.get(key);
    if (pair !== undefined && pair.expiresAt <= now) {
      this.#unmap(pair);
      return undefined;
    }
    return pair;
  }

  /** Maps chain <-> uuid, unmapping whatever either mapped to before. */
  #map(chain: string, uuid: string, now: number): void {
    const byChain = this.#chains.get(chain);
    if (byChain !== undefined) this.#unmap(byChain);
    const byUuid = this.#uuids.get(uuid);
    if (byUuid !== undefined) this.#unmap(byUuid);
    const pair = { chain, uuid, expiresAt: Infinity };
    if (this.#ttlMs > 0) this.#expireAt(pair, now + this.#ttlMs);
    this.#chains.set(chain, pair);
    this.#uuids.set(uuid, pair);
  }

  #unmap(pair: RegistryPair): void {
    if (this.#chains.get(pair.chain) === pair) this.#chains.delete(pair.chain);
    if (this.#uuids.get(pair.uuid) === pair) this.#uuids.delete(pair.uuid);
  }
}
