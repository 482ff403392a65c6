// Owns the kv backend's registry records (the chain <-> uuid pair under two keys); never lets a commit break the bijection, never touches buffer keys.
//
// Every write reads, then commits with checks of what it read, and is
// planned again when it loses a race. Where a commit's answer may be lost
// (a remote KV: `idempotentRetries`), a write's commit also records it
// (`[p, "op", producerId, seq]`, checked absent): a retry first reads that
// record, so a write applied once is never applied again, and a retry
// never turns its outcome into another (a `registrySetIfAbsent` that wrote
// returns its own uuid, a `registryDelete` that deleted returns true).

import { BackendError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import {
  expiryFrom,
  expirySecond,
  isLive,
  type RegistryRecord,
} from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { pairIndexKey } from "./_kv_expiry_index.ts";
import { batches, CONFLICT, type Conflict, KV_LIMITS } from "./_kv_util.ts";

/** Registry keys also get `expireIn` = ttl + this, a backstop for a prefix never used again. */
const EXPIRE_IN_GRACE_MS = 60_000;

/** One attempt of a write: the commit to make (if any) and what the write returns once it is applied. */
interface WriteStep<T> {
  op?: Deno.AtomicOperation;
  outcome: T;
}

/**
 * One tenant's registry pairs: each stored under its chain and its uuid,
 * every write checking what it read, so the two directions always agree.
 * Expiry is logical (a record past its expiry time reads as absent); the
 * sweep has expired pairs deleted through {@linkcode KvRegistry.expire}.
 */
export class KvRegistry {
  readonly #store: KvStore;
  readonly #ttlMs: number;

  constructor(store: KvStore, ttlMs: number) {
    this.#store = store;
    this.#ttlMs = ttlMs;
  }

  /**
   * Maps `chain` to `uuid` both ways, unmapping in the same commit whatever
   * either mapped to before; with `ifAbsent`, only if `chain` is unmapped.
   *
   * @returns The uuid `chain` maps to afterwards.
   */
  async map(chain: string, uuid: string, ifAbsent: boolean): Promise<string> {
    const { kv, keys } = this.#store;
    return await this.#write(
      `Cannot map chain ${JSON.stringify(chain)} to uuid ${
        JSON.stringify(uuid)
      }`,
      uuid,
      async () => {
        const [byChain, byUuid] = await kv.getMany<
          [RegistryRecord, RegistryRecord]
        >([keys.chain(chain), keys.uuid(uuid)]);
        const now = Date.now();
        const old = byChain.value;
        if (ifAbsent && old !== null && isLive(old.e, now)) {
          return { outcome: old.u };
        }
        const taken = byUuid.value;
        // The other ends of the pairs this one replaces (expired ones too).
        const [oldUuid, takenChain] = await kv.getMany<
          [RegistryRecord, RegistryRecord]
        >([
          keys.uuid(old?.u ?? uuid),
          keys.chain(taken?.c ?? chain),
        ]);
        const op = kv.atomic().check(byChain, byUuid, oldUuid, takenChain);
        // Deleted first, then written: mutations apply in order.
        if (old !== null) this.#deletePair(op, old, old, oldUuid.value);
        if (taken !== null) {
          this.#deletePair(op, taken, takenChain.value, taken);
        }
        this.#setPair(op, chain, uuid, now);
        return { op, outcome: uuid };
      },
    );
  }

  /**
   * Refreshes the pair of `uuid` both ways (and its expiry-index entry) in
   * one commit, if it is mapped and live: it then expires `ttlMs` from now.
   *
   * @returns `true` if it was mapped (and live); `false` writes nothing.
   */
  async refresh(uuid: string, ttlMs = this.#ttlMs): Promise<boolean> {
    const { kv, keys } = this.#store;
    return await this.#write(
      `Cannot refresh uuid ${JSON.stringify(uuid)}`,
      true,
      async () => {
        const byUuid = await kv.get<RegistryRecord>(keys.uuid(uuid));
        const now = Date.now();
        const record = byUuid.value;
        if (record === null || !isLive(record.e, now)) {
          return { outcome: false };
        }
        const byChain = await kv.get<RegistryRecord>(keys.chain(record.c));
        if (byChain.value?.u !== uuid) return { outcome: false };
        if (this.#ttlMs === 0 && record.e === 0) return { outcome: true };
        const op = kv.atomic().check(byUuid, byChain);
        const indexed = pairIndexKey(keys, record.c, byChain.value.e);
        if (indexed !== undefined) op.delete(indexed);
        this.#setPair(op, record.c, uuid, now, ttlMs);
        return { op, outcome: true };
      },
    );
  }

  /**
   * Adds to `op` the pair `chain` <-> `uuid` written at `now`: both records
   * (with the `expireIn` backstop) and its expiry-index entry.
   */
  #setPair(
    op: Deno.AtomicOperation,
    chain: string,
    uuid: string,
    now: number,
    ttlMs = this.#ttlMs,
  ): void {
    const { keys } = this.#store;
    // A backend with ttlMs 0 writes persistent pairs, whatever it is asked.
    const lifetime = this.#ttlMs === 0 ? 0 : ttlMs;
    const expiresAt = expiryFrom(now, lifetime);
    const record: RegistryRecord = { c: chain, u: uuid, e: expiresAt };
    const options = expiresAt === 0
      ? undefined
      : { expireIn: lifetime + EXPIRE_IN_GRACE_MS };
    op.set(keys.chain(chain), record, options);
    op.set(keys.uuid(uuid), record, options);
    const indexed = pairIndexKey(keys, chain, expiresAt);
    if (indexed !== undefined) op.set(indexed, null);
  }

  /**
   * Runs a registry write: `plan` reads and returns the commit to make (or
   * none, and the outcome), planned again while its commit loses races
   * (`maxAttempts`) or fails in a way that may pass (`retryTimeoutMs`).
   * With `idempotentRetries`, the commit also records the write, and a retry
   * first reads that record: a write is applied once, and returns `applied`
   * if it was; a retry that would write nothing first makes sure that no
   * earlier attempt can still be applied.
   *
   * @throws {BackendError} The message starts with `what` and says whether
   * the write was applied.
   */
  async #write<T>(
    what: string,
    applied: T,
    plan: () => Promise<WriteStep<T>>,
  ): Promise<T> {
    const { kv, keys } = this.#store;
    if (!this.#store.idempotentRetries) {
      try {
        return await this.#store.retryOnConflict(what, async () => {
          const step = await plan();
          if (step.op === undefined) return step.outcome;
          return (await step.op.commit()).ok ? step.outcome : CONFLICT;
        });
      } catch (error) {
        throw outcomeError(error, "it was not applied");
      }
    }
    let record = keys.op(this.#store.producerId, this.#store.nextOp());
    /** An attempt was committed without an answer saying it failed. */
    let unsure = false;
    const expireIn = this.#store.recordExpireIn;
    /** Whether an earlier attempt was applied: true, false, or CONFLICT (a retry may tell). */
    const settle = async (): Promise<boolean> => {
      const entry = await kv.get<boolean>(record);
      if (entry.value === true) return true;
      if (entry.value === false) {
        // A fence of ours: no earlier attempt can be applied any more.
        record = keys.op(this.#store.producerId, this.#store.nextOp());
        unsure = false;
      }
      return false;
    };
    const attempt = async (): Promise<T | Conflict> => {
      if (unsure && await settle()) return applied;
      const step = await plan();
      let op = step.op;
      if (op === undefined) {
        if (!unsure) return step.outcome;
        // Writes nothing, but an earlier attempt might still land: fence it.
        op = kv.atomic();
        op.check({ key: record, versionstamp: null });
        op.set(record, false, { expireIn });
        return (await op.commit()).ok ? step.outcome : CONFLICT;
      }
      op.check({ key: record, versionstamp: null });
      op.set(record, true, { expireIn });
      unsure = true;
      return (await op.commit()).ok ? step.outcome : CONFLICT;
    };
    try {
      return await this.#store.retryOnConflict(what, attempt);
    } catch (error) {
      if (!unsure) throw outcomeError(error, "it was not applied");
      // Find out, and make sure: applied, or fenced for good.
      try {
        if (await settle()) return applied;
        if (!unsure) throw outcomeError(error, "it was not applied");
        const fence = await kv.atomic()
          .check({ key: record, versionstamp: null })
          .set(record, false, { expireIn })
          .commit();
        if (fence.ok) throw outcomeError(error, "it was not applied");
        if (await settle()) return applied;
      } catch (fenced) {
        if (fenced instanceof BackendError) throw fenced;
      }
      throw outcomeError(error, "it may or may not have been applied");
    }
  }

  /** The live uuid of `chain`, or `null`. */
  async uuidOf(chain: string): Promise<string | null> {
    return (await this.#live(this.#store.keys.chain(chain)))?.u ?? null;
  }

  /** The live chain of `uuid`, or `null`. */
  async chainOf(uuid: string): Promise<string | null> {
    return (await this.#live(this.#store.keys.uuid(uuid)))?.c ?? null;
  }

  /**
   * Unmaps `uuid` both ways.
   *
   * @returns `true` if it was mapped (and live).
   */
  async delete(uuid: string): Promise<boolean> {
    const { kv, keys } = this.#store;
    return await this.#write(
      `Cannot delete uuid ${JSON.stringify(uuid)}`,
      true,
      async () => {
        const byUuid = await kv.get<RegistryRecord>(keys.uuid(uuid));
        const record = byUuid.value;
        if (record === null || !isLive(record.e, Date.now())) {
          return { outcome: false };
        }
        const byChain = await kv.get<RegistryRecord>(keys.chain(record.c));
        const op = kv.atomic().check(byUuid, byChain);
        this.#deletePair(op, record, byChain.value, record);
        return { op, outcome: true };
      },
    );
  }

  /** Every live pair, uuid to chain. */
  async listAll(): Promise<Map<string, string>> {
    const now = Date.now();
    const all = new Map<string, string>();
    const records = await this.#store.listAll<RegistryRecord>(
      this.#store.keys.uuids(),
    );
    for (const { value } of records) {
      if (isLive(value.e, now)) all.set(value.u, value.c);
    }
    return all;
  }

  /** How many pairs are live at `now`. */
  async count(
    now: number,
    consistency: Deno.KvConsistencyLevel = "strong",
  ): Promise<number> {
    let live = 0;
    const records = await this.#store.listAll<RegistryRecord>(
      this.#store.keys.chains(),
      consistency,
    );
    for (const { value } of records) {
      if (isLive(value.e, now)) live++;
    }
    return live;
  }

  /** Removes every pair of this prefix (and no other's). */
  async clear(): Promise<void> {
    const { kv, keys } = this.#store;
    // A pair's chain record changes whenever the pair does (a registrySet
    // that takes its uuid deletes it), so checking it makes each removal exact.
    await this.#store.drain<RegistryRecord>(keys.chains(), {
      what: "the registry",
      items: "pairs",
      // Each pair: a check and three deletes of its keys.
      perCommit: Math.min(this.#store.maxChecks, 300),
      weight: ({ value }) =>
        2 * (keys.pairKeyBytes(value.c) + keys.pairKeyBytes(value.u)),
      budget: KV_LIMITS.commitBytes,
      commit: async (batch) => {
        const op = kv.atomic();
        for (const entry of batch) {
          // The bijection holds in every commit: uuid(u) points back.
          op.check(entry);
          this.#deletePair(op, entry.value, entry.value, entry.value);
        }
        await this.#store.retryWhileLocked(() => op.commit());
      },
    });
    await this.#clearOrphans();
  }

  /**
   * Deletes the pair of `chain` if it expired by `now`; its expiry-index
   * `entry` (for `second`) is deleted instead if it is stale. Called by the
   * sweep.
   */
  async expire(
    entry: Deno.KvEntry<number | null>,
    chain: string,
    second: number,
    now: number,
  ): Promise<void> {
    const { kv, keys } = this.#store;
    const byChain = await this.#store.retryWhileLocked(() =>
      kv.get<RegistryRecord>(keys.chain(chain))
    );
    const record = byChain.value;
    if (
      record === null || record.e === 0 || expirySecond(record.e) !== second
    ) {
      // A stale entry.
      await this.#store.retryWhileLocked(() => kv.delete(entry.key));
      return;
    }
    if (isLive(record.e, now)) return;
    const byUuid = await this.#store.retryWhileLocked(() =>
      kv.get<RegistryRecord>(keys.uuid(record.u))
    );
    const op = kv.atomic().check(byChain, byUuid);
    this.#deletePair(op, record, record, byUuid.value);
    await this.#store.retryWhileLocked(() => op.commit());
  }

  /** The live record under `key` (of `id`), or `null`. */
  async #live(key: Deno.KvKey): Promise<RegistryRecord | null> {
    const entry = await this.#store.retryWhileLocked(() =>
      this.#store.kv.get<RegistryRecord>(key)
    );
    const record = entry.value;
    return record !== null && isLive(record.e, Date.now()) ? record : null;
  }

  /**
   * Deletes uuid records whose chain record does not point back (none,
   * unless written by hand). A pair that a registrySet wrote since the
   * chains were listed is whole: its uuid record stays, and the chain record
   * is checked so that one written meanwhile keeps it too.
   */
  async #clearOrphans(): Promise<void> {
    const { kv, keys } = this.#store;
    const uuids = await this.#store.listAll<RegistryRecord>(keys.uuids());
    const orphans: [
      Deno.KvEntry<RegistryRecord>,
      Deno.KvEntryMaybe<RegistryRecord>,
    ][] = [];
    for (let i = 0; i < uuids.length; i += KV_LIMITS.getMany) {
      const some = uuids.slice(i, i + KV_LIMITS.getMany);
      const chains = await this.#store.retryWhileLocked(() =>
        kv.getMany<RegistryRecord[]>(
          some.map(({ value }) => keys.chain(value.c)),
        )
      );
      some.forEach((entry, j) => {
        const byChain = chains[j]!;
        if (byChain.value?.u !== entry.value.u) {
          orphans.push([entry, byChain]);
        }
      });
    }
    for (
      const batch of batches(
        orphans,
        Math.floor(this.#store.maxChecks / 2),
        ([{ value }]) =>
          2 * keys.pairKeyBytes(value.u) + keys.pairKeyBytes(value.c),
        KV_LIMITS.commitBytes,
      )
    ) {
      const op = kv.atomic();
      for (const [entry, byChain] of batch) {
        op.check(entry, byChain).delete(entry.key);
      }
      await this.#store.retryWhileLocked(() => op.commit());
    }
  }

  /**
   * Deletes the pair `pair` given what its chain and uuid keys held when
   * read (checked by the caller): each key is deleted only if it still
   * belongs to this pair.
   */
  #deletePair(
    op: Deno.AtomicOperation,
    pair: RegistryRecord,
    byChain: RegistryRecord | null,
    byUuid: RegistryRecord | null,
  ): void {
    const { keys } = this.#store;
    if (byChain !== null && byChain.u === pair.u) {
      op.delete(keys.chain(pair.c));
      const indexed = pairIndexKey(keys, pair.c, byChain.e);
      if (indexed !== undefined) op.delete(indexed);
    }
    if (byUuid !== null && byUuid.c === pair.c) {
      op.delete(keys.uuid(pair.u));
    }
  }
}

/**
 * `error` (a failed write) as a {@linkcode BackendError} whose message ends
 * with whether the write was applied.
 */
function outcomeError(error: unknown, outcome: string): BackendError {
  const message = error instanceof BackendError
    ? error.message
    : `Deno KV operation failed: ${errorMessage(error)}`;
  return new BackendError(`${message}; ${outcome}`, {
    cause: error instanceof BackendError ? error.cause ?? error : error,
  });
}
