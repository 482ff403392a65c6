// Owns how the kv backend learns that a watched thread changed or is gone (kv.watch streams on heads, the adaptive poll of watched heads, the expiry timer); never writes, and never reads a slot.
//
// One source per backend serves every watch (the engine in `_watch.ts` turns
// its wake-ups into slots):
// - `kv.watch` streams on the watched heads, at most 10 keys a stream (Deno
//   KV's limit), restarted when their set of threads changes. Deno KV
//   delivers them for writes of this process (any `Deno.Kv` of the same file,
//   Workers too) and on Deno Deploy, not for writes of other processes to a
//   local file (denoland/deno#21640); idle, they cost nothing.
// - So, unless the KV is `":memory:"` or Deno Deploy's, one poller reads the
//   watched heads (`getMany`, 10 keys a call), every POLL_MIN_MS after a
//   change, doubling up to POLL_MAX_MS while nothing changes. On a local file
//   it first checks the file's size and modification time (a `stat`, at
//   most FILE_CHECK_MS apart when the store is idle) and reads the heads only
//   while the file changes, until FILE_QUIET_MS after its last change
//   (timestamps may be coarse), and at least every FILE_SAFETY_MS.
// - One timer at the earliest expiry of a watched head ends its watches on
//   time (a fresh read first: another process may have refreshed it).
// - A wake-up that may end a watch ("gone": the head disappeared, expired or
//   has a new generation) is confirmed by a fresh read issued after the
//   watch's own first read, so a late answer from an older read can never end
//   a watch; "changed" wake-ups are sent at once (spurious ones are harmless).
// No timer runs and no stream is open while nothing is watched.

import { BackendError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import type { WatchEvent, WatchSource } from "../_watch.ts";
import { headIsLive } from "./_kv_heads.ts";
import type { ThreadHead } from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { KV_LIMITS } from "./_kv_util.ts";

/** Fastest poll of the watched heads: right after a poll saw one change. */
export const POLL_MIN_MS = 10;
/**
 * Slowest poll of the watched heads (the interval doubles from POLL_MIN_MS
 * while nothing changes): bounds how late a watch sees another process's
 * first append after a quiet spell, and its deletion of the thread.
 */
export const POLL_MAX_MS = 500;
/**
 * On a local file: the slowest check of the file for a change (the interval
 * doubles from POLL_MIN_MS while the file does not change): bounds how late a
 * watch sees another process's first append after a quiet spell.
 */
export const FILE_CHECK_MS = 250;
/** On a local file: heads are read until this long after the file last changed. */
const FILE_QUIET_MS = 1_000;
/** On a local file: heads are read at least this often, changed or not. */
const FILE_SAFETY_MS = 30_000;
/** getMany calls of one poll in flight at once: other calls of the isolate go on. */
const POLL_READS_IN_FLIGHT = 4;
/**
 * On a local file: up to this many watched threads (one round of reads), any
 * change of the file makes the heads due at once; with more, their backoff
 * bounds the reads an unrelated writer of the file can cause.
 */
const HEADS_READ_ON_FILE_CHANGE = KV_LIMITS.getMany * POLL_READS_IN_FLIGHT;
/** Wait before a failed kv.watch stream is opened again. */
const STREAM_RETRY_MS = 1_000;

/** How a backend's watches learn of changes (see `watchModeOf`). */
export interface KvWatchMode {
  /**
   * Poll the watched heads: writes of other processes are not delivered to
   * `kv.watch` on this KV.
   */
  poll: boolean;
  /** A local KV file whose size and modification time gate the polls. */
  file: string | undefined;
}

/**
 * How watches learn of changes on a KV opened at `kvPath` (`undefined`: the
 * default KV, or a KV the caller passed in): only `kv.watch` on `":memory:"`
 * (no other process can reach it) and on Deno Deploy (it delivers every
 * write there); `kv.watch` and a poll gated by the file elsewhere on a local
 * file; `kv.watch` and a plain poll on a remote, default or injected KV.
 * `polling` overrides the choice to poll.
 */
export function watchModeOf(
  kvPath: string | undefined,
  injected: boolean,
  polling: boolean | undefined,
): KvWatchMode {
  const memory = !injected && kvPath === ":memory:";
  const remote = kvPath !== undefined && /^https?:\/\//i.test(kvPath);
  const poll = polling ?? !(memory || onDenoDeploy());
  const file = !injected && kvPath !== undefined && !memory && !remote &&
      !kvPath.startsWith("file:")
    ? kvPath
    : undefined;
  return { poll, file: poll ? file : undefined };
}

/** Whether this runs on Deno Deploy (which sets DENO_DEPLOYMENT_ID); asks for no permission. */
function onDenoDeploy(): boolean {
  try {
    const variable = "DENO_DEPLOYMENT_ID";
    const state = Deno.permissions.querySync({ name: "env", variable }).state;
    return state === "granted" && Deno.env.get(variable) !== undefined;
  } catch {
    return false;
  }
}

/** One watch of a thread, as the source knows it. */
interface Watcher {
  wake: (event: WatchEvent) => void;
  /** The live generation it watches; `null` while the thread does not exist. */
  gen: string | null;
  /** When it started watching: reads issued before it cannot end it. */
  since: number;
  /** "gone" was sent. */
  ended: boolean;
}

/** A watched thread. */
interface Watched {
  watchers: Set<Watcher>;
  /** Subscriptions still reading the head: the thread stays watched meanwhile. */
  pending: number;
  /** The head's versionstamp last seen (`undefined`: never read). */
  versionstamp: string | null | undefined;
  /** The live head's expiry time last seen; 0 if none or never. */
  expiresAt: number;
}

/** A `kv.watch` stream on the heads of at most 10 watched threads. */
interface StreamGroup {
  members: Set<string>;
  /** The stream in force and the threads it covers, in key order. */
  reader: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]> | undefined;
  /** A restart is scheduled. */
  dirty: boolean;
  /** Settles once the next restart's stream is in force. */
  next: PromiseWithResolvers<void>;
}

/**
 * The {@linkcode WatchSource} of one kv backend: `kv.watch` streams, one
 * poller, one expiry timer, for every watch of the backend.
 */
export class KvWatchSource implements WatchSource {
  readonly #store: KvStore;
  readonly #poll: boolean;
  /** The local file that gates polls; `undefined` once a `stat` failed. */
  #file: string | undefined;
  /** Whether kv.watch streams are used (they stop after an error when polling covers). */
  #streams = true;
  #closed = false;

  readonly #watched = new Map<string, Watched>();
  readonly #groups = new Set<StreamGroup>();
  readonly #groupOf = new Map<string, StreamGroup>();
  /** Stream loops, cancellations and fresh reads in progress: close() waits for them. */
  readonly #tasks = new Set<Promise<unknown>>();
  /** Numbers watchers and fresh reads in the order they happen. */
  #seq = 0;

  /** Threads whose watches a fresh read must confirm (gone, appeared, expired). */
  readonly #toConfirm = new Set<string>();
  #confirming = false;

  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;
  /** Timers of streams to open again after a failure. */
  readonly #retries = new Set<ReturnType<typeof setTimeout>>();
  #ticking = false;
  #interval = POLL_MIN_MS;
  #lastPollAt = -Infinity;
  #signature: string | undefined;
  #changedAt = -Infinity;
  /** On a local file: the wait before the next check of a settled store. */
  #fileInterval = POLL_MIN_MS;

  constructor(store: KvStore, mode: KvWatchMode) {
    this.#store = store;
    this.#poll = mode.poll;
    this.#file = mode.file;
  }

  /** Threads watched now. */
  get size(): number {
    return this.#watched.size;
  }

  /**
   * Starts watching `threadId`; resolves once a write to its head cannot go
   * unnoticed: after a read of the head (and, without polling, once its
   * `kv.watch` stream is in force).
   */
  async subscribe(
    threadId: string,
    wake: (event: WatchEvent) => void,
  ): Promise<() => void> {
    if (this.#closed) return () => {};
    const fits = this.#store.keys.threadFits(threadId);
    let watched = this.#watched.get(threadId);
    if (watched === undefined) {
      watched = {
        watchers: new Set(),
        pending: 0,
        versionstamp: undefined,
        expiresAt: 0,
      };
      this.#watched.set(threadId, watched);
    }
    watched.pending++;
    let watcher: Watcher | undefined;
    try {
      if (fits && this.#streams) {
        const inForce = this.#joinStream(threadId);
        if (!this.#poll) {
          await inForce.catch((error) => {
            if (!this.#closed) throw error;
          });
        }
      }
      const entry: Deno.KvEntryMaybe<ThreadHead> = fits
        ? await this.#store.retryWhileLocked(() =>
          this.#store.kv.get<ThreadHead>(this.#store.keys.head(threadId))
        ).catch((error) => {
          if (this.#closed) return { key: [], value: null, versionstamp: null };
          throw error;
        })
        : { key: [], value: null, versionstamp: null };
      if (!this.#closed) {
        this.#observe(threadId, entry);
        watcher = {
          wake,
          gen: liveGeneration(entry.value, Date.now()),
          since: ++this.#seq,
          ended: false,
        };
        watched.watchers.add(watcher);
      }
    } finally {
      watched.pending--;
      if (watcher === undefined) this.#release(threadId, watched);
    }
    if (watcher === undefined) return () => {};
    this.#schedule();
    const added = watcher;
    return () => {
      watched.watchers.delete(added);
      this.#release(threadId, watched);
    };
  }

  /** Stops every stream and timer; resolves once none is left. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#stopTimer();
    for (const group of this.#groups) this.#cancel(group);
    this.#groups.clear();
    this.#groupOf.clear();
    while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
  }

  // ------------------------------------------------------------ observing

  /**
   * Takes in what a poll or a stream read of a head: wakes the watches whose
   * thread changed, and has a fresh read confirm those it may end or that
   * may now watch a generation.
   *
   * @returns Whether the head changed since it was last seen.
   */
  #observe(threadId: string, entry: Deno.KvEntryMaybe<unknown>): boolean {
    const watched = this.#watched.get(threadId);
    if (watched === undefined) return false;
    const gen = this.#take(watched, entry);
    const changed = entry.versionstamp !== watched.versionstamp;
    watched.versionstamp = entry.versionstamp;
    let confirm = false;
    for (const watcher of watched.watchers) {
      if (watcher.ended) continue;
      if (watcher.gen !== gen) confirm = true;
      if (changed || watcher.gen !== gen) watcher.wake("changed");
    }
    if (confirm) this.#confirm(threadId);
    return changed && watched.watchers.size > 0;
  }

  /** Records the head's expiry; returns its live generation (or `null`). */
  #take(watched: Watched, entry: Deno.KvEntryMaybe<unknown>): string | null {
    const head = entry.value as ThreadHead | null;
    const gen = liveGeneration(head, Date.now());
    const expiresAt = gen !== null ? head!.e : 0;
    if (expiresAt !== watched.expiresAt) {
      watched.expiresAt = expiresAt;
      // An earlier expiry (a shorter ttl elsewhere) moves the timer forward.
      if (expiresAt !== 0 && expiresAt < this.#timerAt) this.#reschedule();
    }
    return gen;
  }

  /** Has a fresh read of `threadId`'s head settle its watches (batched). */
  #confirm(threadId: string): void {
    this.#toConfirm.add(threadId);
    this.#startConfirms();
  }

  #startConfirms(): void {
    if (this.#confirming || this.#closed) return;
    this.#confirming = true;
    this.#track(
      Promise.resolve().then(() => this.#runConfirms()).finally(() => {
        this.#confirming = false;
        // Failed reads are left for the next tick.
        this.#schedule();
      }),
    );
  }

  async #runConfirms(): Promise<void> {
    const { kv, keys } = this.#store;
    while (this.#toConfirm.size > 0 && !this.#closed) {
      const ids = [...this.#toConfirm].slice(0, KV_LIMITS.getMany);
      const issued = ++this.#seq;
      let entries: Deno.KvEntryMaybe<unknown>[];
      try {
        entries = await this.#store.retryWhileLocked(() =>
          kv.getMany(ids.map((id) => keys.head(id)))
        );
      } catch {
        return;
      }
      ids.forEach((id, i) => {
        this.#toConfirm.delete(id);
        this.#settle(id, entries[i]!, issued);
      });
    }
  }

  /**
   * Applies a fresh read, issued at `issued`: the watches that started
   * before it take its generation if they had none, and end if theirs is
   * gone (deleted, expired, replaced).
   */
  #settle(
    threadId: string,
    entry: Deno.KvEntryMaybe<unknown>,
    issued: number,
  ): void {
    const watched = this.#watched.get(threadId);
    if (watched === undefined) return;
    const gen = this.#take(watched, entry);
    const changed = entry.versionstamp !== watched.versionstamp;
    watched.versionstamp = entry.versionstamp;
    for (const watcher of watched.watchers) {
      if (watcher.ended) continue;
      if (watcher.since < issued && watcher.gen !== gen) {
        if (watcher.gen === null) {
          watcher.gen = gen;
        } else {
          watcher.ended = true;
          watcher.wake("gone");
          continue;
        }
      }
      if (changed) watcher.wake("changed");
    }
  }

  // ------------------------------------------------------------ kv.watch

  /**
   * Puts `threadId` in a stream group with room (restarting its stream at
   * the end of this tick, once for every thread added meanwhile). Resolves
   * once the new stream is in force.
   */
  #joinStream(threadId: string): Promise<void> {
    let group = this.#groupOf.get(threadId);
    if (group === undefined) {
      for (const candidate of this.#groups) {
        if (candidate.members.size < KV_LIMITS.getMany) {
          group = candidate;
          break;
        }
      }
      if (group === undefined) {
        group = {
          members: new Set(),
          reader: undefined,
          dirty: false,
          next: settledLater(),
        };
        this.#groups.add(group);
      }
      group.members.add(threadId);
      this.#groupOf.set(threadId, group);
      this.#restartSoon(group);
    } else if (group.reader !== undefined && !group.dirty) {
      return Promise.resolve();
    }
    return group.next.promise;
  }

  #leaveStream(threadId: string): void {
    const group = this.#groupOf.get(threadId);
    if (group === undefined) return;
    this.#groupOf.delete(threadId);
    group.members.delete(threadId);
    // A key left in a stream only wakes nobody; an empty stream stops.
    if (group.members.size === 0) {
      this.#groups.delete(group);
      this.#cancel(group);
      group.next.resolve();
    }
  }

  #restartSoon(group: StreamGroup): void {
    if (group.dirty) return;
    group.dirty = true;
    queueMicrotask(() => this.#restart(group));
  }

  #restart(group: StreamGroup): void {
    group.dirty = false;
    const inForce = group.next;
    group.next = settledLater();
    this.#cancel(group);
    if (this.#closed || !this.#groups.has(group) || !this.#streams) {
      inForce.resolve();
      return;
    }
    const ids = [...group.members];
    let reader: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
    try {
      reader = this.#store.kv.watch(ids.map((id) => this.#store.keys.head(id)))
        .getReader();
    } catch (error) {
      this.#streamFailed(group, inForce, error);
      return;
    }
    group.reader = reader;
    this.#track((async () => {
      try {
        for (let first = true;; first = false) {
          const { done, value } = await reader.read();
          if (done) break;
          if (first) inForce.resolve();
          value.forEach((entry, i) => this.#observe(ids[i]!, entry));
        }
        inForce.resolve();
      } catch (error) {
        if (group.reader === reader) this.#streamFailed(group, inForce, error);
        else inForce.resolve();
      }
    })());
  }

  /**
   * A stream failed (its KV closed, say). When polls cover every write, the
   * streams stop for good; otherwise the group is opened again a little
   * later, and the watches waiting for it fail.
   */
  #streamFailed(
    group: StreamGroup,
    inForce: PromiseWithResolvers<void>,
    error: unknown,
  ): void {
    group.reader = undefined;
    if (this.#closed) {
      inForce.resolve();
      return;
    }
    if (this.#poll) {
      this.#streams = false;
      inForce.resolve();
      for (const each of this.#groups) this.#cancel(each);
      return;
    }
    inForce.reject(
      new BackendError(
        `Cannot watch Deno KV heads: ${errorMessage(error)}`,
        { cause: error },
      ),
    );
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      if (this.#groups.has(group)) this.#restartSoon(group);
    }, STREAM_RETRY_MS);
    this.#retries.add(timer);
  }

  #cancel(group: StreamGroup): void {
    const reader = group.reader;
    group.reader = undefined;
    if (reader !== undefined) this.#track(reader.cancel().catch(() => {}));
  }

  // ------------------------------------------------------------ lifecycle

  #track(task: Promise<unknown>): void {
    this.#tasks.add(task);
    const forget = () => this.#tasks.delete(task);
    task.then(forget, forget);
  }

  /** Forgets a thread that no watch watches (nor is about to). */
  #release(threadId: string, watched: Watched): void {
    if (watched.watchers.size > 0 || watched.pending > 0) return;
    if (this.#watched.get(threadId) !== watched) return;
    this.#watched.delete(threadId);
    this.#toConfirm.delete(threadId);
    this.#leaveStream(threadId);
    if (this.#watched.size === 0) this.#stopTimer();
  }

  #stopTimer(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
    for (const timer of this.#retries) clearTimeout(timer);
    this.#retries.clear();
  }

  // ------------------------------------------------------------ the timer

  /** Arms the one timer for the next poll, file check or expiry, if any is due. */
  #schedule(): void {
    if (this.#closed || this.#ticking || this.#watched.size === 0) return;
    const now = Date.now();
    let at = Infinity;
    if (this.#poll) {
      const nextPoll = this.#lastPollAt + this.#interval;
      if (this.#file === undefined) {
        at = nextPoll;
      } else {
        // The file is checked at its own pace, settled or not: its change
        // is what wakes the heads after a quiet spell.
        at = Math.min(
          now + this.#fileInterval,
          this.#settled() ? this.#lastPollAt + FILE_SAFETY_MS : nextPoll,
        );
      }
    }
    if (this.#toConfirm.size > 0 && !this.#confirming) {
      at = Math.min(at, now + POLL_MIN_MS * 10);
    }
    for (const [threadId, watched] of this.#watched) {
      if (
        watched.expiresAt !== 0 && watched.watchers.size > 0 &&
        !this.#toConfirm.has(threadId)
      ) {
        at = Math.min(at, watched.expiresAt);
      }
    }
    if (at === Infinity || at >= this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, at - now));
  }

  /** Moves the timer to what is due now. */
  #reschedule(): void {
    if (this.#ticking) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
    this.#schedule();
  }

  /** On a local file: the heads were read after its last change settled. */
  #settled(): boolean {
    return this.#lastPollAt > this.#changedAt + FILE_QUIET_MS;
  }

  #tick(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    this.#ticking = true;
    this.#track(
      this.#runTick().catch(() => {}).finally(() => {
        this.#ticking = false;
        this.#schedule();
      }),
    );
  }

  async #runTick(): Promise<void> {
    if (this.#closed || this.#watched.size === 0) return;
    let now = Date.now();
    if (this.#poll) {
      let due = now >= this.#lastPollAt + this.#interval;
      if (this.#file !== undefined) {
        const signature = fileSignature(this.#file);
        if (signature === undefined) {
          this.#file = undefined; // not a file we can see: poll the heads
        } else {
          if (signature !== this.#signature) {
            // After a quiet spell, read at once: likely a watched thread.
            if (now - this.#changedAt > FILE_QUIET_MS) due = true;
            const few = this.#watched.size <= HEADS_READ_ON_FILE_CHANGE;
            if (few && now >= this.#lastPollAt + POLL_MIN_MS) due = true;
            this.#signature = signature;
            this.#changedAt = now;
            this.#fileInterval = POLL_MIN_MS;
          } else {
            this.#fileInterval = Math.min(
              this.#fileInterval * 2,
              FILE_CHECK_MS,
            );
          }
          if (this.#settled() && now < this.#lastPollAt + FILE_SAFETY_MS) {
            due = false;
          }
        }
      }
      if (due) {
        this.#lastPollAt = now;
        // A failed read counts as no change: the polls slow down.
        const changed = await this.#pollHeads().catch(() => false);
        this.#interval = changed
          ? POLL_MIN_MS
          : Math.min(this.#interval * 2, POLL_MAX_MS);
        now = Date.now();
      }
    }
    for (const [threadId, watched] of this.#watched) {
      if (watched.expiresAt !== 0 && watched.expiresAt <= now) {
        this.#toConfirm.add(threadId);
      }
    }
    if (this.#toConfirm.size > 0) this.#startConfirms();
  }

  /**
   * Reads every watched head (10 a call, a few calls at once) and takes in
   * what changed.
   *
   * @returns Whether any watched head changed.
   */
  async #pollHeads(): Promise<boolean> {
    const { kv, keys } = this.#store;
    const ids = [...this.#watched.keys()].filter((id) => keys.threadFits(id));
    const runs: string[][] = [];
    for (let i = 0; i < ids.length; i += KV_LIMITS.getMany) {
      runs.push(ids.slice(i, i + KV_LIMITS.getMany));
    }
    let changed = false;
    const worker = async () => {
      for (let run = runs.shift(); run !== undefined; run = runs.shift()) {
        const entries = await this.#store.retryWhileLocked(() =>
          kv.getMany(run!.map((id) => keys.head(id)))
        );
        if (this.#closed) return;
        run.forEach((id, i) => {
          if (this.#observe(id, entries[i]!)) changed = true;
        });
      }
    };
    await Promise.all(
      Array.from(
        { length: Math.min(POLL_READS_IN_FLIGHT, runs.length) },
        worker,
      ),
    );
    return changed;
  }
}

/** The generation of `head` if it is live at `now` (not expired, not sealed), else `null`. */
function liveGeneration(head: ThreadHead | null, now: number): string | null {
  return head !== null && headIsLive(head, now) ? head.g : null;
}

/** A promise to settle later, whose rejection nobody has to handle. */
function settledLater(): PromiseWithResolvers<void> {
  const resolvers = Promise.withResolvers<void>();
  resolvers.promise.catch(() => {});
  return resolvers;
}

/**
 * The size, modification time and inode of a KV file and its write-ahead
 * log (where every commit lands): changes whenever the store is written.
 * `undefined` if the file cannot be seen (no permission, not a plain path).
 */
function fileSignature(path: string): string | undefined {
  const part = (info: Deno.FileInfo) =>
    `${info.size}:${info.mtime?.getTime()}:${info.ino}`;
  try {
    const db = Deno.statSync(path);
    let wal = "-";
    try {
      wal = part(Deno.statSync(`${path}-wal`));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    return `${part(db)} ${wal}`;
  } catch {
    return undefined;
  }
}
