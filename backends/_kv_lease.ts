// Owns the sweeper lease of a KV store: which one backend of all those on the store runs the routine sweep; never sweeps, and never touches a tenant's keys.
//
// The lease is one store-wide record, `[true, "sweeper"]` = { o: owner, u:
// until } (the first key part `true` is no prefix: prefixes are strings). A
// backend that finds it absent, expired or its own takes or renews it with
// one commit checked against what it read; a backend that finds another's
// lease looks again only when that lease would expire. So of N isolates on a
// store one sweeps, and the others read one small key every LEASE_MS. The
// holder renews while it is used; if it stops (an idle isolate, a killed
// process), another takes over within LEASE_MS. A holder that closes
// releases the lease at once.

import type { KvStore } from "./_kv_store.ts";
import { newId } from "./_kv_util.ts";

/** How long a lease lasts unless renewed; the holder renews it past half. */
export const LEASE_MS = 3_000;

/** The key of a store's sweeper lease. */
export const LEASE_KEY: Deno.KvKey = [true, "sweeper"];

/** The lease record. */
interface Lease {
  /** The owner: a backend's random id. */
  o: string;
  /** Expiry time in ms since the epoch. */
  u: number;
}

/** One backend's view of its store's sweeper lease. */
export class SweepLease {
  readonly #store: KvStore;
  readonly #id = newId();
  /** Until when this backend holds the lease (as it wrote it); 0: not held. */
  #heldUntil = 0;
  /** Before this time, another backend's lease is not read again. */
  #lookAgainAt = 0;

  constructor(store: KvStore) {
    this.#store = store;
  }

  /**
   * Whether this backend holds the lease at `now`: takes it when it is free
   * or expired and `wanted` says there is work (so an idle store sees no
   * writes), renews it past half its time. Costs nothing while held and
   * fresh, nothing before another's lease would expire, otherwise one read
   * (and `wanted`) and at most one commit. `false` while another backend's
   * lease lasts; with `look`, the lease is read even if another backend's
   * lease was seen lasting (it may have been released).
   */
  async hold(
    now: number,
    wanted: () => Promise<boolean> = () => Promise.resolve(true),
    look = false,
  ): Promise<boolean> {
    if (this.#heldUntil - now > LEASE_MS / 2) return true;
    if (!look && this.#heldUntil <= now && now < this.#lookAgainAt) {
      return false;
    }
    const { kv } = this.#store;
    const entry = await this.#store.retryWhileLocked(() =>
      kv.get<Lease>(LEASE_KEY)
    );
    const lease = entry.value;
    if (lease !== null && lease.o !== this.#id && lease.u > now) {
      this.#heldUntil = 0;
      this.#lookAgainAt = Math.min(lease.u, now + LEASE_MS);
      return false;
    }
    if (this.#heldUntil <= now && !(await wanted())) return false;
    const until = now + LEASE_MS;
    const { ok } = await this.#store.retryWhileLocked(() =>
      kv.atomic().check(entry).set(LEASE_KEY, { o: this.#id, u: until })
        .commit()
    );
    if (ok) {
      this.#heldUntil = until;
      return true;
    }
    // Another backend took it meanwhile.
    this.#heldUntil = 0;
    this.#lookAgainAt = now + LEASE_MS;
    return false;
  }

  /** Gives the lease up if this backend holds it, so another may sweep at once. */
  async release(): Promise<void> {
    if (this.#heldUntil <= Date.now()) return;
    this.#heldUntil = 0;
    const { kv } = this.#store;
    const entry = await this.#store.retryWhileLocked(() =>
      kv.get<Lease>(LEASE_KEY)
    );
    if (entry.value?.o !== this.#id) return;
    await this.#store.retryWhileLocked(() =>
      kv.atomic().check(entry).delete(LEASE_KEY).commit()
    );
  }
}
