// Small helpers of the kv backend: Deno KV's limits as named constants,
// contention detection and backoff.

/** Deno KV's limits on one atomic commit, as measured on Deno 2.9. */
export const KV_LIMITS = Object.freeze({
  /** Checks per atomic commit on a local file (or `:memory:`). */
  localChecks: 100,
  /** Checks per atomic commit on a KV Connect server (self-hosted denokv). */
  remoteChecks: 10,
  /** Mutations per atomic commit. */
  mutations: 1000,
  /** Bytes of keys and values per atomic commit (800 KiB), with a margin for encoding. */
  commitBytes: 800 * 1024 - 16 * 1024,
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

/** Waits a random time in [0, min(50, 2^attempt)) ms: jitter spreads the retries of racing writers. */
export function jitteredDelay(attempt: number): Promise<void> {
  const ms = Math.random() * Math.min(50, 2 ** attempt);
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const encoder = new TextEncoder();

/** UTF-8 length of a string (an upper bound of its size in a key). */
export function bytesOf(text: string): number {
  return text.length < 256 ? text.length * 3 : encoder.encode(text).length;
}

/**
 * Bytes a string takes as a key part: its UTF-8 bytes, plus one for each NUL
 * (escaped), plus a type tag and a terminator.
 */
export function keyPartBytes(text: string): number {
  let nul = 0;
  for (let i = text.indexOf("\0"); i !== -1; i = text.indexOf("\0", i + 1)) {
    nul++;
  }
  return encoder.encode(text).length + nul + 2;
}

/** Most bytes of a key that Deno KV writes. */
export const MAX_KEY_BYTES = 2048;

/** A short random id (16 hex digits) for generations and uploads. */
export function newId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
