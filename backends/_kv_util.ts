// Owns Deno KV's limits as named constants and the kv backend's small pure helpers (contention, transient failures, backoff, ids, batching); never touches a KV.

import { delay } from "../_async.ts";

/** Deno KV's limits on one atomic commit, as measured on Deno 2.9. */
export const KV_LIMITS = Object.freeze({
  /** Checks per atomic commit on a local file (or `:memory:`). */
  localChecks: 100,
  /** Checks per atomic commit on a KV Connect server (self-hosted denokv). */
  remoteChecks: 10,
  /** Mutations per atomic commit. */
  mutations: 1000,
  /**
   * Bytes per atomic commit (800 KiB), with a margin for encoding: the keys of
   * its checks and mutations, plus the keys and values of its sets (a set's
   * key counts twice).
   */
  commitBytes: 800 * 1024 - 16 * 1024,
  /**
   * Bytes of the keys of an atomic commit's sets (80 KiB), with a margin: a
   * separate limit, "Total key size too large", that long ids reach well
   * before 1000 mutations.
   */
  setKeyBytes: 80 * 1024 - 2 * 1024,
  /** Keys per `getMany`. */
  getMany: 10,
});

/** Returned by an optimistic attempt whose commit lost a race. */
export const CONFLICT: unique symbol = Symbol("conflict");
/** The type of {@linkcode CONFLICT}. */
export type Conflict = typeof CONFLICT;

/**
 * Whether a KV error is contention to retry: several processes writing one
 * SQLite file get `TypeError: database is locked` from a commit.
 */
export function isContention(error: unknown): boolean {
  return error instanceof Error &&
    /database is (locked|busy)|SQLITE_BUSY/i.test(error.message);
}

/**
 * Whether a failed KV call may succeed if made again: contention (see
 * {@linkcode isContention}), or a connection to a KV Connect server or
 * Deno Deploy that failed or timed out (its answer may have been lost).
 * Errors of the call itself (a key too large, a closed KV) are not.
 */
export function isTransient(error: unknown): boolean {
  if (isContention(error)) return true;
  if (!(error instanceof Error) || error instanceof Deno.errors.BadResource) {
    return false;
  }
  return /connection|network|reset|refused|timed? ?out|broken pipe|unavailable|temporar|unexpected (eof|end)|socket|hang ?up|\b(502|503|504)\b/i
    .test(error.message);
}

/** Waits a random time in [0, min(50, 2^attempt)) ms: jitter spreads the retries of racing writers. */
export function jitteredDelay(attempt: number): Promise<void> {
  return delay(Math.random() * Math.min(50, 2 ** attempt));
}

/**
 * The pause before each retry of one call, by what failed last (contention-
 * aware backoff):
 *
 * - a commit whose check failed (`conflict()`): none. Another writer
 *   succeeded, so the file is free now; read again and retry at once.
 * - `database is locked` ({@linkcode isContention}): another connection of
 *   the file is committing; a random 0-1 ms, doubling with each such
 *   failure of the call to at most 10 ms (a commit takes 1-4 ms).
 * - any other transient failure (a lost connection to a remote KV): a
 *   random 0-2^n ms, at most 50 ms ({@linkcode jitteredDelay}).
 *
 * Sleeping after a lost race only wastes the time the file is free: with
 * several isolates on one file, the old uniform backoff up to 50 ms kept an
 * isolate asleep half the time and let unlucky appends wait a second.
 */
export class RetryPacer {
  #locked = 0;
  #other = 0;
  #wait: number | undefined;

  /** Records a commit that lost a race: the next attempt goes at once. */
  conflict(): void {
    this.#wait = 0;
  }

  /** Records a failed call (a transient error, checked by the caller). */
  failed(error: unknown): void {
    this.#wait = isContention(error)
      ? Math.random() * Math.min(10, 2 ** this.#locked++)
      : Math.random() * Math.min(50, 2 ** ++this.#other);
  }

  /** Waits as the last failure asks (not at all before the first attempt). */
  async pause(): Promise<void> {
    const ms = this.#wait;
    this.#wait = undefined;
    if (ms !== undefined && ms > 0) await delay(ms);
  }
}

/**
 * Splits items into runs of at most `max` items whose weights sum to at most
 * `budget` (an item heavier than the budget goes alone): the commits that a
 * long list of deletes or checks is cut into.
 */
export function batches<T>(
  items: readonly T[],
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

/**
 * Bytes a string takes as a key part: its UTF-8 bytes, plus one for each NUL
 * (escaped), plus a type tag and a terminator. Counted without encoding (it
 * runs on every append); a lone surrogate counts as U+FFFD, 3 bytes.
 */
export function keyPartBytes(text: string): number {
  let bytes = 2;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === 0) bytes += 2;
    else if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (
      code >= 0xd800 && code < 0xdc00 && i + 1 < text.length &&
      (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00
    ) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/** Most bytes of a key that Deno KV writes. */
export const MAX_KEY_BYTES = 2048;

/** A short random id (16 hex digits) for generations and uploads. */
export function newId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
