// The append path of the Redis backend: coalesces concurrent appends into
// append script calls and settles each append from the script's reply.
//
// An append made while nothing waits and fewer than MAX_APPENDS_IN_FLIGHT
// calls are on the wire is sent at once, alone (no latency added); otherwise
// it waits in a queue (by thread, in call order) and goes in the next call
// that the end of one on the wire lets out: up to MAX_BATCH_SLOTS slots and
// MAX_BATCH_BYTES bytes, whole threads first, any threads of the tenant.
//
// It owns the queue, the batching, the count of calls on the wire and the
// drain on close. It must never send an append twice (no retry, no replay:
// a lost reply rejects saying that the append may have been applied), never
// reorder the appends of one thread, and never check arguments (the backend
// does before it hands an append over).

import { Buffer } from "node:buffer";
import { SlotLimitError, ThreadLimitError } from "../errors.ts";
import type { RedisConnection } from "./_redis_connection.ts";
import type { RedisKeys } from "./_redis_keys.ts";
import type { ScriptClient } from "./_redis_scripts.ts";

/** Most append script calls of one backend on the wire at once. */
const MAX_APPENDS_IN_FLIGHT = 2;
/** Most slots in one append script call (Lua's `unpack` limit is about 8000). */
const MAX_BATCH_SLOTS = 1_024;
/** Most bytes of slots in one append script call (one bigger slot goes alone). */
const MAX_BATCH_BYTES = 8 * 1024 * 1024;

/** What a {@linkcode RedisAppender} needs: where and how to append. */
export interface RedisAppenderOptions {
  /** The connection the script calls go through (watched, failures worded). */
  connection: RedisConnection;
  /** {@linkcode connection}'s client, with the scripts defined on it. */
  client: ScriptClient;
  /** The tenant's keys. */
  keys: RedisKeys;
  /** The backend's `ttlMs` (0: never expire). */
  ttlMs: number;
  /** The backend's `maxSlotsPerThread`. */
  maxSlotsPerThread: number;
  /** The backend's `maxThreads`. */
  maxThreads: number;
}

interface PendingAppend {
  slot: Buffer;
  resolve: (index: number) => void;
  reject: (error: unknown) => void;
}

/** A batch: threads, each with its appends in call order. */
type Batch = [threadId: string, appends: PendingAppend[]][];

/** Sends a backend's appends, coalesced into append script calls. */
export class RedisAppender {
  readonly #connection: RedisConnection;
  readonly #client: ScriptClient;
  readonly #keys: RedisKeys;
  readonly #maxSlotsPerThread: number;
  readonly #maxThreads: number;
  /** The first ARGV of the append script: "ttlMs maxSlotsPerThread maxThreads". */
  readonly #appendArgs: string;
  /** Appends not sent yet, by thread, in call order. */
  #queue = new Map<string, PendingAppend[]>();
  #flushScheduled = false;
  /** Append script calls on the wire. */
  #inFlight = 0;
  /** Set by {@linkcode drain}: every queued append goes out at once. */
  #draining = false;
  /** Called when no append is on the wire any more ({@linkcode drain} waits with it). */
  #onDrained: (() => void) | undefined;

  constructor(options: RedisAppenderOptions) {
    this.#connection = options.connection;
    this.#client = options.client;
    this.#keys = options.keys;
    this.#maxSlotsPerThread = options.maxSlotsPerThread;
    this.#maxThreads = options.maxThreads;
    this.#appendArgs =
      `${options.ttlMs} ${options.maxSlotsPerThread} ${options.maxThreads}`;
  }

  /**
   * Appends a copy of `slot` (taken now: the caller may change its array
   * before the call is sent) to `threadId`, whose arguments the caller has
   * checked.
   *
   * @returns The slot's index.
   * @throws {SlotLimitError} The thread holds `maxSlotsPerThread` slots.
   * @throws {ThreadLimitError} The append would create a thread while
   * `maxThreads` live threads exist.
   * @throws {BackendError} The call failed; when its reply was lost, the
   * message says that it may have been applied.
   */
  append(threadId: string, slot: Uint8Array): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const pending = { slot: toBuffer(slot), resolve, reject };
      if (this.#queue.size === 0 && this.#inFlight < MAX_APPENDS_IN_FLIGHT) {
        // Nothing is waiting: send it now, alone (no latency added).
        this.#send([[threadId, [pending]]]);
        return;
      }
      // Calls are on the wire: wait for one of them, then go in the next batch.
      const queued = this.#queue.get(threadId);
      if (queued === undefined) this.#queue.set(threadId, [pending]);
      else queued.push(pending);
      if (!this.#flushScheduled && this.#inFlight < MAX_APPENDS_IN_FLIGHT) {
        this.#flushScheduled = true;
        queueMicrotask(() => {
          this.#flushScheduled = false;
          this.#flush(MAX_APPENDS_IN_FLIGHT);
        });
      }
    });
  }

  /**
   * Sends every queued append at once (no limit on calls on the wire) and
   * resolves when no append is on the wire any more. Call it once, when the
   * backend closes and takes no more appends.
   */
  drain(): Promise<void> {
    this.#draining = true;
    this.#flush(Infinity);
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.#onDrained = resolve);
  }

  /**
   * Sends queued appends as script calls, while fewer than `limit` are on the
   * wire. Each call takes whole threads from the front of the queue, up to
   * {@linkcode MAX_BATCH_SLOTS} slots and {@linkcode MAX_BATCH_BYTES} bytes.
   */
  #flush(limit: number): void {
    while (this.#queue.size > 0 && this.#inFlight < limit) {
      const batch: Batch = [];
      let slots = 0;
      let bytes = 0;
      for (const [threadId, queued] of this.#queue) {
        let take = 0;
        while (
          take < queued.length && slots < MAX_BATCH_SLOTS &&
          (slots === 0 ||
            bytes + queued[take]!.slot.byteLength <= MAX_BATCH_BYTES)
        ) {
          bytes += queued[take]!.slot.byteLength;
          slots++;
          take++;
        }
        if (take === 0) break;
        if (take === queued.length) {
          this.#queue.delete(threadId);
          batch.push([threadId, queued]);
        } else {
          batch.push([threadId, queued.splice(0, take)]);
          break;
        }
      }
      this.#send(batch);
    }
  }

  /** Sends one append script call for a batch; settles every append in it. */
  #send(batch: Batch): void {
    const args: (string | number | Buffer)[] = [batch.length + 1];
    args.push(this.#keys.threads);
    for (const [threadId] of batch) args.push(this.#keys.thread(threadId));
    args.push(this.#appendArgs);
    if (batch.length > 1) {
      for (const [, queued] of batch) args.push(String(queued.length));
    }
    for (const [, queued] of batch) {
      for (const pending of queued) args.push(pending.slot);
    }
    this.#inFlight++;
    this.#connection.send(() => this.#client.xpSbAppend(...args)).then(
      (reply) => {
        this.#settle(batch, reply);
        this.#done();
      },
      (error) => {
        for (const [threadId, queued] of batch) {
          const failure = this.#connection.failure(
            `Cannot append to thread ${JSON.stringify(threadId)}`,
            error,
            true,
          );
          for (const pending of queued) pending.reject(failure);
        }
        this.#done();
      },
    );
  }

  /** Settles the appends of a batch from the append script's reply. */
  #settle(batch: Batch, reply: number | number[]): void {
    for (let i = 0; i < batch.length; i++) {
      const [threadId, queued] = batch[i]!;
      const result = typeof reply === "number" ? reply : reply[i]!;
      if (result === -1) {
        const error = new ThreadLimitError(threadId, this.#maxThreads);
        for (const pending of queued) pending.reject(error);
        continue;
      }
      // See the append script: r >= 0 all appended from r; r <= -2 only -r - 2.
      const taken = result >= 0 ? queued.length : -result - 2;
      const start = result >= 0 ? result : this.#maxSlotsPerThread - taken;
      for (let k = 0; k < queued.length; k++) {
        if (k < taken) queued[k]!.resolve(start + k);
        else {
          queued[k]!.reject(
            new SlotLimitError(threadId, this.#maxSlotsPerThread),
          );
        }
      }
    }
  }

  /** A call left the wire: send what waits, and tell a drain when none is left. */
  #done(): void {
    this.#inFlight--;
    if (this.#queue.size > 0) {
      this.#flush(this.#draining ? Infinity : MAX_APPENDS_IN_FLIGHT);
    }
    if (this.#inFlight === 0 && this.#onDrained !== undefined) {
      this.#onDrained();
      this.#onDrained = undefined;
    }
  }
}

/** A `Buffer` copy of a slot: ioredis sends Buffers as bytes (a plain `Uint8Array` it would stringify). */
function toBuffer(slot: Uint8Array): Buffer {
  // allocUnsafe + set: about 10x cheaper than Buffer.from(slot) in Deno; every byte is overwritten.
  const copy = Buffer.allocUnsafe(slot.byteLength);
  copy.set(slot);
  return copy;
}
