// Keeps the chain <-> uuid pair of a thread that a ContextBuffer appends to
// alive as long as the thread (contract item 14): a registry pair expires
// ttlMs after its last write, a thread ttlMs after its last append. It only
// calls `registryRefresh` (for 1.25 ttlMs), at most once every ttlMs / 4 per
// thread; it never writes a slot, a mapping, or anything else.

import type { SharedBackend } from "./protocol.ts";

/** Threads whose last refresh is remembered; past it the oldest is forgotten (and refreshed again on its next append). */
export const MAX_TRACKED_THREADS = 1_024;

/**
 * Per `ContextBuffer`: when each thread's pair was last refreshed. Bounded:
 * at most {@linkcode MAX_TRACKED_THREADS} threads, in order of refresh.
 */
export class PairKeeper {
  readonly #backend: SharedBackend;
  /** Thread id -> the time of its last refresh; oldest first. */
  readonly #refreshedAt = new Map<string, number>();

  constructor(backend: SharedBackend) {
    this.#backend = backend;
  }

  /** How many threads are remembered (for tests of the bound). */
  get size(): number {
    return this.#refreshedAt.size;
  }

  /**
   * Called with every append to `threadId` at `now`: refreshes the pair
   * whose uuid is `threadId` (if there is one) unless that was done less than
   * ttlMs / 4 ago. Never rejects: a refresh that fails is forgotten, so the
   * next append tries again (the append itself reports a store that fails).
   */
  refresh(threadId: string, now: number): Promise<void> {
    const ttlMs = this.#backend.ttlMs;
    if (
      typeof ttlMs !== "number" || !(ttlMs > 0) ||
      typeof this.#backend.registryRefresh !== "function"
    ) {
      return Promise.resolve();
    }
    const last = this.#refreshedAt.get(threadId);
    // A clock that went back counts as due.
    if (last !== undefined && now >= last && now - last < ttlMs / 4) {
      return Promise.resolve();
    }
    this.#refreshedAt.delete(threadId);
    this.#refreshedAt.set(threadId, now);
    if (this.#refreshedAt.size > MAX_TRACKED_THREADS) {
      const oldest = this.#refreshedAt.keys().next().value;
      if (oldest !== undefined) this.#refreshedAt.delete(oldest);
    }
    const failed = () => {
      if (this.#refreshedAt.get(threadId) === now) {
        this.#refreshedAt.delete(threadId);
      }
    };
    try {
      // Refreshed for 1.25 ttlMs: the next refresh comes with the first
      // append after ttlMs / 4, so the thread (which lives ttlMs after its
      // last append) never outlives its pair.
      return this.#backend.registryRefresh(threadId, {
        ttlMs: Math.ceil(ttlMs * 1.25),
      }).then(() => {}, failed);
    } catch {
      failed();
      return Promise.resolve();
    }
  }

  /** Forgets a thread (it was deleted): its next append refreshes at once. */
  forget(threadId: string): void {
    this.#refreshedAt.delete(threadId);
  }
}
