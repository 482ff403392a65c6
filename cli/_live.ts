// Live slots for the web inspector's pages: ONE bufferWatch per watched
// thread, shared by every page that shows it, its slots decoded once and sent
// to each page as server-sent events in batches (at most one per 50 ms per
// thread). It never reads the request or writes the store.

import { errorMessage } from "../_messages.ts";
import type { SharedBackend } from "../protocol.ts";
import { type SlotRow, slotRow } from "./_views.ts";

/** Where one page's events go: the body of its `text/event-stream` response. */
export interface LiveSink {
  send(chunk: Uint8Array): void;
  close(): void;
}

/** Least time between two batches of one thread. */
export const BATCH_MS = 50;
/** A comment this often keeps idle connections (and proxies) open. */
const HEARTBEAT_MS = 25_000;

const encoder = new TextEncoder();
const HEARTBEAT = encoder.encode(":\n\n");

/** The event of a batch: `id` is the next index, so a reconnecting page resumes there. */
function slotsEvent(rows: SlotRow[]): Uint8Array {
  return encoder.encode(
    `id: ${rows[rows.length - 1]!.index + 1}\nevent: slots\ndata: ${
      JSON.stringify(rows)
    }\n\n`,
  );
}

/** A final event: `gone` (deleted or expired) or `failed`. */
function endEvent(event: "gone" | "failed", data: unknown): Uint8Array {
  return encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

interface Subscriber {
  sink: LiveSink;
  /** The next index this page expects. */
  next: number;
  /** Batches that came while it read what it missed. */
  queued: SlotRow[][] | null;
}

/** One watched thread: its watch, its pages, its batch in the making. */
interface Watched {
  threadId: string;
  subscribers: Set<Subscriber>;
  abort: AbortController;
  /** The index after the last batch sent. */
  sent: number;
  pending: SlotRow[];
  timer: ReturnType<typeof setTimeout> | undefined;
  lastBatch: number;
}

/** The live threads of one inspector server. */
export class LiveThreads {
  readonly #backend: SharedBackend;
  readonly #threads = new Map<string, Watched>();
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  constructor(backend: SharedBackend) {
    this.#backend = backend;
  }

  /** How many threads are watched now (one bufferWatch each). */
  get watches(): number {
    return this.#threads.size;
  }

  /**
   * Sends `sink` every slot of `threadId` from index `from` on, as it is
   * appended, until the returned function is called, the thread is
   * deleted or expires (event `gone`), or the watch fails (event `failed`).
   */
  subscribe(threadId: string, from: number, sink: LiveSink): () => void {
    if (this.#closed) {
      sink.close();
      return () => {};
    }
    const subscriber: Subscriber = { sink, next: from, queued: null };
    let watched = this.#threads.get(threadId);
    if (watched === undefined) {
      watched = this.#watch(threadId, from);
    } else if (from < watched.sent) {
      // It missed [from, sent): read them, queueing the batches meanwhile.
      subscriber.queued = [];
      this.#catchUp(watched, subscriber, watched.sent);
    }
    watched.subscribers.add(subscriber);
    this.#beat();
    const current = watched;
    return () => this.#unsubscribe(current, subscriber);
  }

  /** Ends every watch and closes every page's stream. */
  close(): void {
    this.#closed = true;
    for (const watched of [...this.#threads.values()]) {
      for (const subscriber of watched.subscribers) subscriber.sink.close();
      this.#stop(watched);
    }
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
  }

  #watch(threadId: string, from: number): Watched {
    const watched: Watched = {
      threadId,
      subscribers: new Set(),
      abort: new AbortController(),
      sent: from,
      pending: [],
      timer: undefined,
      lastBatch: 0,
    };
    this.#threads.set(threadId, watched);
    (async () => {
      let end: Uint8Array;
      try {
        const slots = this.#backend.bufferWatch(threadId, {
          fromIndex: from,
          signal: watched.abort.signal,
        });
        for await (const { index, slot } of slots) {
          watched.pending.push(slotRow(index, slot));
          this.#schedule(watched);
        }
        end = endEvent("gone", { threadId });
      } catch (error) {
        end = endEvent("failed", { threadId, error: errorMessage(error) });
      }
      if (watched.abort.signal.aborted) return; // stopped here
      this.#flush(watched);
      for (const subscriber of watched.subscribers) {
        subscriber.sink.send(end);
        subscriber.sink.close();
      }
      this.#stop(watched);
    })();
    return watched;
  }

  #schedule(watched: Watched): void {
    if (watched.timer !== undefined) return;
    const wait = Math.max(0, watched.lastBatch + BATCH_MS - performance.now());
    watched.timer = setTimeout(() => {
      watched.timer = undefined;
      this.#flush(watched);
    }, wait);
  }

  /** Sends the batch in the making: encoded once for all the pages that are in step. */
  #flush(watched: Watched): void {
    clearTimeout(watched.timer);
    watched.timer = undefined;
    const rows = watched.pending;
    if (rows.length === 0) return;
    watched.pending = [];
    watched.lastBatch = performance.now();
    watched.sent = rows[rows.length - 1]!.index + 1;
    let shared: Uint8Array | undefined;
    for (const subscriber of watched.subscribers) {
      if (subscriber.queued !== null) {
        subscriber.queued.push(rows);
      } else if (subscriber.next <= rows[0]!.index) {
        subscriber.sink.send(shared ??= slotsEvent(rows));
        subscriber.next = watched.sent;
      } else {
        deliver(subscriber, rows);
      }
    }
  }

  async #catchUp(
    watched: Watched,
    subscriber: Subscriber,
    end: number,
  ): Promise<void> {
    try {
      const slots = await this.#backend.bufferGetRange(
        watched.threadId,
        subscriber.next,
        end,
      );
      deliver(
        subscriber,
        slots.map((slot, i) => slotRow(subscriber.next + i, slot)),
      );
    } catch (error) {
      subscriber.sink.send(
        endEvent("failed", {
          threadId: watched.threadId,
          error: errorMessage(error),
        }),
      );
      subscriber.sink.close();
      this.#unsubscribe(watched, subscriber);
      return;
    }
    for (const rows of subscriber.queued ?? []) deliver(subscriber, rows);
    subscriber.queued = null;
  }

  #unsubscribe(watched: Watched, subscriber: Subscriber): void {
    if (!watched.subscribers.delete(subscriber)) return;
    if (watched.subscribers.size === 0) this.#stop(watched);
  }

  #stop(watched: Watched): void {
    watched.abort.abort();
    clearTimeout(watched.timer);
    watched.subscribers.clear();
    if (this.#threads.get(watched.threadId) === watched) {
      this.#threads.delete(watched.threadId);
    }
    if (this.#threads.size === 0) {
      clearInterval(this.#heartbeat);
      this.#heartbeat = undefined;
    }
  }

  /** Keeps a heartbeat going while any page listens. */
  #beat(): void {
    this.#heartbeat ??= setInterval(() => {
      for (const watched of this.#threads.values()) {
        for (const subscriber of watched.subscribers) {
          subscriber.sink.send(HEARTBEAT);
        }
      }
    }, HEARTBEAT_MS);
  }
}

/** Sends a subscriber the rows it has not had yet, in its own event. */
function deliver(subscriber: Subscriber, rows: SlotRow[]): void {
  const fresh = rows.filter((row) => row.index >= subscriber.next);
  if (fresh.length === 0) return;
  subscriber.sink.send(slotsEvent(fresh));
  subscriber.next = fresh[fresh.length - 1]!.index + 1;
}
