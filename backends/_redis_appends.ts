// The append path of the Redis backend: coalesces concurrent appends into
// append script calls, retries a call that failed (through lost replies,
// reconnects, failovers: the script's op record makes a retry apply once),
// and settles each append from the script's reply.
//
// An append is queued (by thread, in call order), its slot copied at once
// into a shared chunk. The queue goes out once the caller's synchronous code
// is done (a microtask: appends made in one go share a call, and a lone
// append waits for nothing), while fewer than MAX_APPENDS_IN_FLIGHT calls
// are under way; otherwise with the next call that the end of one under way
// lets out: up to MAX_BATCH_SLOTS slots and MAX_BATCH_BYTES bytes, whole
// threads first, any threads of the tenant, encoded as one MessagePack
// argument. A call keeps its op number and its appends through its retries
// (a call being retried counts as under way: appends made meanwhile queue up
// behind it).
//
// It owns the queue, the copies, the batching and the encoding, the calls
// under way and their retries, and the drain on close. It must never send an
// append in two different calls (an append belongs to one op), never reorder
// the appends of one thread within a call, and never check arguments (the
// backend does before it hands an append over).

import { Buffer } from "node:buffer";
import { quote } from "../_messages.ts";
import { SlotLimitError, ThreadLimitError } from "../errors.ts";
import type { RedisKeys } from "./_redis_keys.ts";
import { type RedisOps, Trail } from "./_redis_ops.ts";
import type { AppendResult } from "./_redis_scripts.ts";

/** Most append script calls of one backend on the wire at once. */
const MAX_APPENDS_IN_FLIGHT = 2;
/** Most slots in one append script call (Lua's `unpack` limit is about 8000). */
const MAX_BATCH_SLOTS = 1_024;
/** Most bytes of slots in one append script call (one bigger slot goes alone). */
const MAX_BATCH_BYTES = 8 * 1024 * 1024;

/** What a {@linkcode RedisAppender} needs: where and how to append. */
export interface RedisAppenderOptions {
  /** The calls go through it (retries, op records, WAIT). */
  ops: RedisOps;
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
  /** Where the copy of the caller's slot (taken at the call) is: see {@linkcode SlotCopies}. */
  chunk: Uint8Array;
  offset: number;
  length: number;
  /** The caller's `appendId`, if any. */
  appendId: string | undefined;
  resolve: (index: number) => void;
  reject: (error: unknown) => void;
}

/** A batch: threads, each with its appends in call order. */
type Batch = [threadId: string, appends: PendingAppend[]][];

/** Sends a backend's appends, coalesced into append script calls. */
export class RedisAppender {
  readonly #ops: RedisOps;
  readonly #keys: RedisKeys;
  readonly #maxSlotsPerThread: number;
  readonly #maxThreads: number;
  /** The first ARGV of the append script: "ttlMs maxSlotsPerThread maxThreads". */
  readonly #appendArgs: string;
  /** Appends not sent yet, by thread, in call order. */
  #queue = new Map<string, PendingAppend[]>();
  /**
   * When the oldest append in the queue was made (`performance.now()`): the
   * deadline of a call starts with its oldest append (one clock read per
   * call, not per append).
   */
  #queuedSince = 0;
  #flushScheduled = false;
  /** Append script calls under way (on the wire, or waiting for a retry). */
  #inFlight = 0;
  /** Set by {@linkcode drain}: every queued append goes out at once. */
  #draining = false;
  /** Called when no call is under way any more ({@linkcode drain} waits with it). */
  #onDrained: (() => void) | undefined;
  /** Where the copies of queued slots are taken. */
  readonly #copies = new SlotCopies();

  constructor(options: RedisAppenderOptions) {
    this.#ops = options.ops;
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
   * @param appendId The caller's id for the append: an id already applied to
   * the thread returns that slot's index and appends nothing.
   * @returns The slot's index.
   * @throws {SlotLimitError} The thread holds `maxSlotsPerThread` slots.
   * @throws {ThreadLimitError} The append would create a thread while
   * `maxThreads` live threads exist.
   * @throws {BackendError} The call failed for good (retries until
   * `retryTimeoutMs` included): the message says whether it was applied,
   * when that is known.
   */
  append(
    threadId: string,
    slot: Uint8Array,
    appendId?: string,
  ): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const pending: PendingAppend = {
        chunk: NO_BYTES,
        offset: 0,
        length: slot.byteLength,
        appendId,
        resolve,
        reject,
      };
      this.#copies.copy(slot, pending);
      const queued = this.#queue.get(threadId);
      if (queued !== undefined) {
        queued.push(pending);
      } else {
        if (this.#queue.size === 0) this.#queuedSince = performance.now();
        this.#queue.set(threadId, [pending]);
      }
      // Sent once the caller's synchronous code is done (appends made
      // meanwhile go with it), unless calls are under way: then with the
      // next one that ends.
      if (!this.#flushScheduled && this.#inFlight < MAX_APPENDS_IN_FLIGHT) {
        this.#flushScheduled = true;
        queueMicrotask(this.#scheduledFlush);
      }
    });
  }

  #scheduledFlush = (): void => {
    this.#flushScheduled = false;
    this.#flush(this.#draining ? Infinity : MAX_APPENDS_IN_FLIGHT);
  };

  /**
   * Sends every queued append at once (no limit on calls under way) and
   * resolves when no call is under way any more (retries included). Call it
   * once, when the backend closes and takes no more appends.
   */
  drain(): Promise<void> {
    this.#draining = true;
    this.#flush(Infinity);
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.#onDrained = resolve);
  }

  /**
   * Sends queued appends as script calls, while fewer than `limit` are under
   * way. Each call takes whole threads from the front of the queue, up to
   * {@linkcode MAX_BATCH_SLOTS} slots and {@linkcode MAX_BATCH_BYTES} bytes.
   */
  #flush(limit: number): void {
    while (this.#queue.size > 0 && this.#inFlight < limit) {
      // A call's deadline starts with its oldest append (or earlier: the
      // oldest still queued when the queue was last emptied).
      const since = this.#queuedSince;
      const batch: Batch = [];
      let slots = 0;
      let bytes = 0;
      for (const [threadId, queued] of this.#queue) {
        let take = 0;
        while (
          take < queued.length && slots < MAX_BATCH_SLOTS &&
          (slots === 0 ||
            bytes + queued[take]!.length <= MAX_BATCH_BYTES)
        ) {
          bytes += queued[take]!.length;
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
      this.#send(batch, since);
    }
  }

  /**
   * Starts one append script call for a batch; it settles every append in
   * it. `start`: when its oldest append was made (`performance.now()`).
   */
  #send(batch: Batch, start: number): void {
    this.#inFlight++;
    this.#run(batch, start).finally(() => this.#done());
  }

  /** Runs a batch's call, with its retries, and settles its appends. */
  async #run(batch: Batch, start: number): Promise<void> {
    const ops = this.#ops;
    const seq = ops.begin();
    const deadline = ops.deadline(start);
    const trail = new Trail();
    const { args, header } = this.#args(batch);
    try {
      const reply = await ops.retry(
        () => {
          const attempt = args.slice();
          attempt[header] = ops.header(seq);
          return ops.call("xpSbAppend", attempt, deadline);
        },
        deadline,
        trail,
      );
      if (reply === null) {
        for (const [threadId, queued] of batch) {
          const error = ops.stale(`Cannot append to thread ${quote(threadId)}`);
          for (const pending of queued) pending.reject(error);
        }
      } else {
        this.#settle(batch, reply);
      }
    } catch (error) {
      this.#fail(batch, error, trail);
    } finally {
      ops.end(seq);
    }
  }

  /**
   * The append script's arguments for a batch (see APPEND in
   * _redis_scripts.ts: the appends in one MessagePack argument), and where
   * its op header goes.
   */
  #args(batch: Batch): { args: (string | Buffer)[]; header: number } {
    // Sizes first: one buffer, written once.
    let items = 0;
    let size = 0;
    for (const [threadId, queued] of batch) {
      const withIds = queued.some((pending) => pending.appendId !== undefined);
      const count = queued.length;
      items += 2 + (withIds ? 2 * count : count);
      size += strSize(utf8Length(threadId)) + intSize(count);
      for (const pending of queued) {
        size += strSize(pending.length);
        if (withIds) size += strSize(utf8Length(pending.appendId ?? ""));
      }
    }
    size += arraySize(items);
    const out = Buffer.allocUnsafe(size);
    let at = writeArrayHeader(out, 0, items);
    for (const [threadId, queued] of batch) {
      const withIds = queued.some((pending) => pending.appendId !== undefined);
      at = writeStr(out, at, threadId);
      at = writeInt(out, at, withIds ? -queued.length : queued.length);
      for (const pending of queued) {
        at = writeStrHeader(out, at, pending.length);
        out.set(
          pending.chunk.subarray(
            pending.offset,
            pending.offset + pending.length,
          ),
          at,
        );
        at += pending.length;
        // The call keeps its own copy: the room may be reused.
        this.#copies.release(pending.chunk);
        pending.chunk = NO_BYTES;
      }
      if (withIds) {
        for (const pending of queued) {
          at = writeStr(out, at, pending.appendId ?? "");
        }
      }
    }
    return {
      args: [this.#keys.threads, this.#ops.records, this.#appendArgs, "", out],
      header: 3,
    };
  }

  /** Settles the appends of a batch from the append script's reply. */
  #settle(batch: Batch, reply: AppendResult[]): void {
    for (let i = 0; i < batch.length; i++) {
      const [threadId, queued] = batch[i]!;
      const result = reply[i]!;
      if (typeof result === "number" && result >= 0) {
        // The common case: all appended from `result`.
        for (let k = 0; k < queued.length; k++) queued[k]!.resolve(result + k);
        continue;
      }
      const outcomes = this.#outcomes(threadId, queued.length, result);
      for (let k = 0; k < queued.length; k++) {
        const outcome = outcomes[k]!;
        if (typeof outcome === "number") queued[k]!.resolve(outcome);
        else queued[k]!.reject(outcome);
      }
    }
  }

  /** One thread's entry of the reply, as each of its appends' index or error. */
  #outcomes(
    threadId: string,
    count: number,
    result: AppendResult,
  ): (number | Error)[] {
    if (result === -1) {
      return new Array(count).fill(
        new ThreadLimitError(threadId, this.#maxThreads),
      );
    }
    const full = () => new SlotLimitError(threadId, this.#maxSlotsPerThread);
    if (Array.isArray(result)) {
      // Slot by slot (append ids): an index, or -2 for a full thread.
      return result.map((index) => index >= 0 ? index : full());
    }
    // r >= 0 all appended from r; r <= -2 only the first -r - 2.
    const taken = result >= 0 ? count : -result - 2;
    const start = result >= 0 ? result : this.#maxSlotsPerThread - taken;
    return Array.from(
      { length: count },
      (_, k) => k < taken ? start + k : full(),
    );
  }

  /** Rejects the appends of a batch whose call failed for good. */
  #fail(batch: Batch, error: unknown, trail: Trail): void {
    const applied = trail.unconfirmed?.reply as AppendResult[] | undefined;
    for (const [i, [threadId, queued]] of batch.entries()) {
      const action = `Cannot append to thread ${quote(threadId)}`;
      // Applied but not confirmed by the replicas: each append's outcome is
      // known (a limit refusal stands); the message names its index.
      const outcomes = applied === undefined || applied[i] === undefined
        ? undefined
        : this.#outcomes(threadId, queued.length, applied[i]!);
      let shared: Error | undefined;
      for (const [k, pending] of queued.entries()) {
        const outcome = outcomes?.[k];
        if (outcome instanceof Error) {
          pending.reject(outcome);
        } else if (outcome !== undefined) {
          pending.reject(
            this.#ops.failure(
              action,
              error,
              trail,
              true,
              `at index ${outcome}`,
            ),
          );
        } else {
          shared ??= this.#ops.failure(action, error, trail, true);
          pending.reject(shared);
        }
      }
    }
  }

  /** A call ended: send what waits, and tell a drain when none is under way. */
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

/** The UTF-8 byte length of a well-formed string (what ioredis sends). */
function utf8Length(text: string): number {
  let length = text.length;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    // 2 bytes below U+0800, 3 above; a surrogate pair (2 units) is 4.
    if (code >= 0x80) {
      length += code >= 0x800 && (code < 0xd800 || code > 0xdfff) ? 2 : 1;
    }
  }
  return length;
}

const NO_BYTES = new Uint8Array(0);
/** Bytes of the chunks that slot copies are taken in. */
const COPY_CHUNK_BYTES = 256 * 1024;
/** Slots larger than this get a copy of their own. */
const MAX_SHARED_COPY = 16 * 1024;

/**
 * Copies of queued slots, taken at the call (the caller may change its
 * array afterwards) into a shared chunk: one `set()` per slot instead of a
 * new ArrayBuffer each (an allocation and garbage to collect per append).
 * Once every copy in the chunk has been encoded into a call, the chunk is
 * written from its start again; a full chunk is left to the copies still in
 * it (and freed after them) for a new one.
 */
class SlotCopies {
  #chunk = new Uint8Array(COPY_CHUNK_BYTES);
  #used = 0;
  /** Copies in the chunk not released yet. */
  #held = 0;

  /** Copies `slot`; `to` learns where the copy is. */
  copy(slot: Uint8Array, to: { chunk: Uint8Array; offset: number }): void {
    const length = slot.byteLength;
    if (length > MAX_SHARED_COPY) {
      to.chunk = new Uint8Array(length);
      to.chunk.set(slot);
      to.offset = 0;
      return;
    }
    if (this.#used + length > COPY_CHUNK_BYTES) {
      this.#chunk = new Uint8Array(COPY_CHUNK_BYTES);
      this.#used = 0;
      this.#held = 0;
    }
    this.#chunk.set(slot, this.#used);
    to.chunk = this.#chunk;
    to.offset = this.#used;
    this.#used += length;
    this.#held++;
  }

  /** A copy in `chunk` has been encoded (once): its room is free. */
  release(chunk: Uint8Array): void {
    if (chunk === this.#chunk && --this.#held === 0) this.#used = 0;
  }
}

// MessagePack, as much as the append script's argument needs (see APPEND
// in _redis_scripts.ts): arrays, strings and small integers. Written by
// hand, not with @msgpack/msgpack: Redis' cmsgpack refuses bin ("Bad data
// format in input"; checked on Redis 7.0), so slot bytes must go as str,
// which the library writes only for JS strings; and this writes straight
// from the slot copies' chunks into one buffer, with no object per append.

/** Bytes of an array header of `items` items. */
function arraySize(items: number): number {
  return items < 16 ? 1 : items < 0x10000 ? 3 : 5;
}

/** Bytes of a string of `bytes` bytes, header included. */
function strSize(bytes: number): number {
  return bytes + (bytes < 32 ? 1 : bytes < 0x100 ? 2 : bytes < 0x10000 ? 3 : 5);
}

/** Bytes of the integer `value` (|value| < 2^15). */
function intSize(value: number): number {
  return value < 128 && value >= -32 ? 1 : 3;
}

function writeArrayHeader(out: Buffer, at: number, items: number): number {
  if (items < 16) {
    out[at] = 0x90 | items;
    return at + 1;
  }
  if (items < 0x10000) {
    out[at] = 0xdc;
    out.writeUInt16BE(items, at + 1);
    return at + 3;
  }
  out[at] = 0xdd;
  out.writeUInt32BE(items, at + 1);
  return at + 5;
}

function writeStrHeader(out: Buffer, at: number, bytes: number): number {
  if (bytes < 32) {
    out[at] = 0xa0 | bytes;
    return at + 1;
  }
  if (bytes < 0x100) {
    out[at] = 0xd9;
    out[at + 1] = bytes;
    return at + 2;
  }
  if (bytes < 0x10000) {
    out[at] = 0xda;
    out.writeUInt16BE(bytes, at + 1);
    return at + 3;
  }
  out[at] = 0xdb;
  out.writeUInt32BE(bytes, at + 1);
  return at + 5;
}

/** Writes a string as UTF-8 (well-formed: the backend checked it). */
function writeStr(out: Buffer, at: number, text: string): number {
  const bytes = utf8Length(text);
  at = writeStrHeader(out, at, bytes);
  if (bytes === text.length) {
    // ASCII: no encoder call for a short id.
    for (let i = 0; i < bytes; i++) out[at + i] = text.charCodeAt(i);
  } else {
    encoder.encodeInto(text, out.subarray(at, at + bytes));
  }
  return at + bytes;
}

/** Writes an integer with |value| < 2^15. */
function writeInt(out: Buffer, at: number, value: number): number {
  if (value < 128 && value >= -32) {
    out[at] = value & 0xff;
    return at + 1;
  }
  out[at] = 0xd1;
  out.writeInt16BE(value, at + 1);
  return at + 3;
}

const encoder = new TextEncoder();
