// The watch engine behind every backend's `bufferWatch`: turns "this thread
// may have changed" wake-ups from a backend's source into an exactly-once,
// in-order stream of slots, by reading the range it has not yielded yet.
// It never learns how a backend is notified (that is the source's job) and
// never writes to a store.

import { copyBytes } from "./_bytes.ts";
import { BackendClosedError, BackendError } from "./errors.ts";
import type { BufferWatchOptions, WatchedSlot } from "./protocol.ts";
import { checkId, checkWatchOptions } from "./_validate.ts";
import { errorMessage } from "./_messages.ts";

/** What a source tells the engine: new slots may exist, or the thread is gone. */
export type WatchEvent = "changed" | "gone";

/**
 * New slots a source may hand over with a "changed" wake-up when it has
 * them at hand (a notification that carries them): `slots[k]` is the slot
 * at index `from + k`, and the thread is now `length` slots long (those
 * past the slots handed over are read). The engine takes copies of the ones
 * that follow on from what it has yielded, and reads instead on a gap: a
 * source may hand views of a buffer it does not change afterwards.
 */
export interface WatchDelivery {
  readonly from: number;
  readonly slots: readonly Uint8Array[];
  readonly length: number;
}

/**
 * How a backend tells its watches that a thread changed. One source serves
 * every watch of a backend (one subscriber connection, one poller).
 */
export interface WatchSource {
  /**
   * Starts watching `threadId`: `wake` is called when the thread may have
   * changed ("changed": spurious calls are harmless, the engine re-reads;
   * with the new slots when the source has them) or is gone ("gone":
   * deleted, expired, or started anew). Resolves, with
   * the function that stops watching, once watching is in force, so that
   * nothing appended after it resolves can go unnoticed.
   */
  subscribe(
    threadId: string,
    wake: (event: WatchEvent, delivery?: WatchDelivery) => void,
  ): Promise<() => void>;
}

/** What a backend gives the engine: its reads, its source, its state. */
export interface WatchHost {
  /** The backend's kind, for the error after close. */
  readonly kind: string;
  /** Reads through the backend's own (guarded) public methods. */
  bufferGetRange(
    threadId: string,
    start: number,
    end?: number,
  ): Promise<Uint8Array[]>;
  bufferThreadLen(threadId: string): Promise<number>;
  /** How the backend learns of changes. */
  readonly watchSource: WatchSource;
  /** Aborted when the backend closes: every watch ends. */
  readonly closedSignal: AbortSignal;
  /** How long reads that fail (a dropped connection) are retried. */
  readonly retryTimeoutMs: number;
}

/** Slots read at once: bounds the memory a watch holds between two `next()`. */
const READ_BATCH = 64;
/** Waits between reads that failed (a dropped connection), doubling to the cap. */
const FIRST_RETRY_MS = 50;
const MAX_RETRY_MS = 1_000;

/**
 * The stream of a thread's slots with index >= `fromIndex` (default: its
 * length once watching is in force), each once, in index order. Ends on the
 * options' abort signal, on `return()`, when the backend closes and when its
 * source reports the thread gone. Bad arguments, and a backend closed before
 * the first `next()`, reject that `next()`. A read that keeps failing for
 * `retryTimeoutMs` rejects `next()` with its error.
 */
export function watchThread(
  host: WatchHost,
  threadId: string,
  options: BufferWatchOptions | undefined,
): AsyncIterableIterator<WatchedSlot> {
  return new ThreadWatch(host, threadId, options);
}

class ThreadWatch implements AsyncIterableIterator<WatchedSlot> {
  readonly #host: WatchHost;
  readonly #threadId: string;
  readonly #options: BufferWatchOptions | undefined;
  /** Slots read and not yet yielded, in index order. */
  #ready: WatchedSlot[] = [];
  /** The index of the next slot to read. */
  #next = 0;
  /** `#next` is set (the first index is known). */
  #positioned = false;
  #started = false;
  #done = false;
  /** A wake-up arrived since the last read: read again before waiting. */
  #dirty = true;
  #gone = false;
  #unsubscribe: (() => void) | undefined;
  #wakeUp: (() => void) | undefined;
  /** next() calls run one after another: each gets the next slot. */
  #queue: Promise<unknown> = Promise.resolve();
  readonly #onAbort = () => this.#finish();

  constructor(
    host: WatchHost,
    threadId: string,
    options: BufferWatchOptions | undefined,
  ) {
    this.#host = host;
    this.#threadId = threadId;
    this.#options = options;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<WatchedSlot> {
    return this;
  }

  next(): Promise<IteratorResult<WatchedSlot, undefined>> {
    const result = this.#queue.then(() => this.#pull());
    this.#queue = result.catch(() => {});
    return result;
  }

  return(): Promise<IteratorResult<WatchedSlot, undefined>> {
    // Not queued behind a next() that waits for slots: it ends that one too.
    this.#finish();
    return Promise.resolve({ done: true, value: undefined });
  }

  async #pull(): Promise<IteratorResult<WatchedSlot, undefined>> {
    if (!this.#started) await this.#start();
    let failingSince: number | undefined;
    let retryMs = FIRST_RETRY_MS;
    for (;;) {
      const slot = this.#ready.shift();
      if (slot !== undefined) return { done: false, value: slot };
      if (this.#done) return { done: true, value: undefined };
      if (this.#gone) {
        this.#finish();
        continue;
      }
      if (this.#dirty) {
        this.#dirty = false;
        try {
          await this.#read();
          failingSince = undefined;
          retryMs = FIRST_RETRY_MS;
        } catch (error) {
          if (this.#done || error instanceof BackendClosedError) {
            this.#finish();
            continue;
          }
          const now = Date.now();
          failingSince ??= now;
          if (
            !(error instanceof BackendError) ||
            now - failingSince >= this.#host.retryTimeoutMs
          ) {
            this.#finish();
            throw error instanceof BackendError ? error : new BackendError(
              `Cannot watch thread ${JSON.stringify(this.#threadId)}: ${
                errorMessage(error)
              }`,
              { cause: error },
            );
          }
          // A dropped connection: read again after a pause (or a wake-up).
          this.#dirty = true;
          await this.#wait(retryMs);
          retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
        }
        continue;
      }
      await this.#wait();
    }
  }

  /** Checks the arguments, subscribes, then fixes the first index. */
  async #start(): Promise<void> {
    this.#started = true;
    try {
      checkId("threadId", this.#threadId);
      checkWatchOptions(this.#options);
    } catch (error) {
      this.#done = true;
      throw error;
    }
    if (this.#done) return;
    if (this.#host.closedSignal.aborted) {
      this.#done = true;
      throw new BackendClosedError(this.#host.kind, "bufferWatch");
    }
    const signal = this.#options?.signal;
    if (signal?.aborted) {
      this.#done = true;
      return;
    }
    signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#host.closedSignal.addEventListener("abort", this.#onAbort, {
      once: true,
    });
    try {
      const unsubscribe = await this.#host.watchSource.subscribe(
        this.#threadId,
        (event, delivery) => {
          if (event === "gone") this.#gone = true;
          if (delivery === undefined || !this.#take(delivery)) {
            this.#dirty = true;
          }
          this.#wakeUp?.();
        },
      );
      if (this.#done) {
        unsubscribe();
        return;
      }
      this.#unsubscribe = unsubscribe;
      // Subscribed first: a slot appended from here on wakes this watch.
      this.#next = this.#options?.fromIndex ??
        await this.#host.bufferThreadLen(this.#threadId);
      this.#positioned = true;
    } catch (error) {
      this.#finish();
      if (error instanceof BackendClosedError) return;
      throw error;
    }
  }

  async #read(): Promise<void> {
    const start = this.#next;
    const slots = await this.#host.bufferGetRange(
      this.#threadId,
      start,
      start + READ_BATCH,
    );
    if (this.#done) return;
    // Slots handed over meanwhile (see #take) are yielded already.
    for (let k = this.#next - start; k < slots.length; k++) {
      this.#ready.push({ index: this.#next++, slot: slots[k]! });
    }
    // A full batch: there may be more, read again before waiting.
    if (slots.length === READ_BATCH) this.#dirty = true;
  }

  /**
   * Takes the slots of a delivery that follow on from `#next` (copies);
   * true if nothing is left to read. A gap, a watch still starting, or
   * READ_BATCH slots not yet yielded (the memory bound) leave it to a read.
   */
  #take({ from, slots, length }: WatchDelivery): boolean {
    if (!this.#positioned || this.#done || this.#next < from) return false;
    const end = from + slots.length;
    if (this.#next < end && this.#ready.length >= READ_BATCH) return false;
    for (let index = this.#next; index < end; index++) {
      this.#ready.push({ index, slot: copyBytes(slots[index - from]!) });
    }
    if (end > this.#next) this.#next = end;
    return this.#next >= length;
  }

  /** Waits for a wake-up, the end, or `ms` (when given). */
  #wait(ms?: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      this.#wakeUp = () => {
        this.#wakeUp = undefined;
        clearTimeout(timer);
        resolve();
      };
      if (ms !== undefined) timer = setTimeout(this.#wakeUp, ms);
    });
  }

  #finish(): void {
    if (this.#done && this.#unsubscribe === undefined) {
      this.#wakeUp?.();
      return;
    }
    this.#done = true;
    this.#ready = [];
    this.#options?.signal?.removeEventListener("abort", this.#onAbort);
    this.#host.closedSignal.removeEventListener("abort", this.#onAbort);
    const unsubscribe = this.#unsubscribe;
    this.#unsubscribe = undefined;
    unsubscribe?.();
    this.#wakeUp?.();
  }
}

/**
 * The wake-up functions of a backend's watches, by thread: what a source
 * keeps to tell the right watches that a thread changed.
 */
export class WatchListeners {
  #byThread = new Map<
    string,
    Set<(event: WatchEvent, delivery?: WatchDelivery) => void>
  >();

  /** Watched threads. */
  get size(): number {
    return this.#byThread.size;
  }

  /** The watched thread ids. */
  threadIds(): IterableIterator<string> {
    return this.#byThread.keys();
  }

  /** Whether `threadId` is watched. */
  has(threadId: string): boolean {
    return this.#byThread.has(threadId);
  }

  /** Adds a watch of `threadId`; returns the function that removes it. */
  add(
    threadId: string,
    wake: (event: WatchEvent, delivery?: WatchDelivery) => void,
  ): () => void {
    let set = this.#byThread.get(threadId);
    if (set === undefined) this.#byThread.set(threadId, set = new Set());
    set.add(wake);
    return () => {
      const current = this.#byThread.get(threadId);
      if (current?.delete(wake) && current.size === 0) {
        this.#byThread.delete(threadId);
      }
    };
  }

  /** Wakes every watch of `threadId` (with the new slots, if given). */
  notify(
    threadId: string,
    event: WatchEvent,
    delivery?: WatchDelivery,
  ): void {
    const set = this.#byThread.get(threadId);
    if (set === undefined) return;
    for (const wake of [...set]) wake(event, delivery);
  }

  /** Wakes every watch of every thread. */
  notifyAll(event: WatchEvent): void {
    for (const threadId of [...this.#byThread.keys()]) {
      this.notify(threadId, event);
    }
  }
}
