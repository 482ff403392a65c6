// Owns the large-slot blob store (chunks, upload records, blob refs); never writes a head or a slot key, nor commits a publish itself.
//
// A slot over CHUNK_BYTES is uploaded as chunks under an upload record with
// a deadline, published by a tiny reference in the append queue's commit
// (so a reader sees it whole or not at all), joined on read, and reclaimed
// when its upload is lost (its writer died or was too slow) or its
// generation is dead.

import { BackendError } from "../errors.ts";
import { type BlobRef, CHUNK_BYTES, type UploadRecord } from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { KV_LIMITS, newId } from "./_kv_util.ts";

/** A large slot whose chunks are written, waiting to be published. */
export interface Upload {
  /** What the slot key will hold once published. */
  ref: BlobRef;
  /** The upload record's key. */
  key: Deno.KvKey;
  /** The upload record's versionstamp: the publish checks it. */
  versionstamp: string;
}

/** Chunks of large slots, their upload records and blob references. */
export class KvBlobStore {
  readonly #store: KvStore;
  /** How long an upload may take before the sweep reclaims it. */
  readonly uploadTimeoutMs: number;

  constructor(store: KvStore, uploadTimeoutMs: number) {
    this.#store = store;
    this.uploadTimeoutMs = uploadTimeoutMs;
  }

  /**
   * Writes a large slot's chunks (views of `slot`, which the caller must not
   * change) under a fresh upload record with a deadline.
   */
  async upload(threadId: string, slot: Uint8Array): Promise<Upload> {
    const { kv, keys } = this.#store;
    const uploadId = newId();
    const key = keys.upload(threadId, uploadId);
    const record: UploadRecord = { d: Date.now() + this.uploadTimeoutMs };
    const { versionstamp } = await this.#store.retryWhileLocked(() =>
      kv.set(key, record)
    );
    const count = Math.ceil(slot.byteLength / CHUNK_BYTES);
    // Several chunks per commit, within the 800 KiB a commit may carry.
    const perCommit = Math.floor(KV_LIMITS.commitBytes / (CHUNK_BYTES + 1024));
    for (let first = 0; first < count; first += perCommit) {
      const op = kv.atomic();
      for (let n = first; n < Math.min(count, first + perCommit); n++) {
        op.set(
          keys.chunk(threadId, uploadId, n),
          slot.subarray(n * CHUNK_BYTES, (n + 1) * CHUNK_BYTES),
        );
      }
      await this.#store.retryWhileLocked(() => op.commit());
    }
    return {
      ref: { u: uploadId, n: slot.byteLength, c: count },
      key,
      versionstamp,
    };
  }

  /**
   * Adds the publish of `upload` as a slot of generation `gen` to the append
   * queue's commit: its record checked and deleted, a blob reference set
   * (the caller sets the slot key to `upload.ref`).
   */
  publish(
    op: Deno.AtomicOperation,
    threadId: string,
    gen: string,
    upload: Upload,
  ): void {
    op.check({ key: upload.key, versionstamp: upload.versionstamp });
    op.delete(upload.key);
    op.set(this.#store.keys.blobRef(threadId, gen, upload.ref.u), true);
  }

  /** Deletes an unpublished upload: its record first, then its chunks. */
  async discard(threadId: string, upload: Upload): Promise<void> {
    await this.#store.retryWhileLocked(() => this.#store.kv.delete(upload.key));
    await this.#store.deletePrefix(
      this.#store.keys.chunks(threadId, upload.ref.u),
    );
  }

  /**
   * The items whose upload record is gone or was rewritten: the sweep
   * reclaimed it (its writer was too slow), so they can never be published.
   */
  async lost<T extends { upload: Upload | undefined }>(
    items: readonly T[],
  ): Promise<T[]> {
    const uploads = items.filter((item) => item.upload);
    const lost: T[] = [];
    for (let i = 0; i < uploads.length; i += KV_LIMITS.getMany) {
      const some = uploads.slice(i, i + KV_LIMITS.getMany);
      const entries = await this.#store.kv.getMany(
        some.map((item) => item.upload!.key),
      );
      entries.forEach((entry, j) => {
        if (entry.versionstamp !== some[j]!.upload!.versionstamp) {
          lost.push(some[j]!);
        }
      });
    }
    return lost;
  }

  /**
   * A stored slot's bytes: inline, or joined from its chunks.
   *
   * @throws {BackendError} Chunks are missing (the thread was reclaimed
   * while they were read).
   */
  async materialize(
    threadId: string,
    value: Uint8Array | BlobRef,
  ): Promise<Uint8Array> {
    if (value instanceof Uint8Array) return value;
    const chunks = await this.#store.listAll<Uint8Array>(
      this.#store.keys.chunks(threadId, value.u),
    );
    const bytes = new Uint8Array(value.n);
    let offset = 0;
    for (const { value: chunk } of chunks) {
      if (offset + chunk.byteLength > value.n) break;
      bytes.set(chunk, offset);
      offset += chunk.byteLength;
    }
    if (chunks.length !== value.c || offset !== value.n) {
      throw new BackendError(
        `Cannot read a slot of thread ${
          JSON.stringify(threadId)
        }: its chunks are incomplete (${offset} of ${value.n} bytes)`,
      );
    }
    return bytes;
  }

  /** Deletes the chunks and blob references of a dead generation's large slots. */
  async reclaimGeneration(threadId: string, gen: string): Promise<void> {
    const { kv, keys } = this.#store;
    for (
      const ref of await this.#store.listAll<true>(keys.blobRefs(threadId, gen))
    ) {
      await this.#store.deletePrefix(
        keys.chunks(threadId, ref.key[4] as string),
      );
      await this.#store.retryWhileLocked(() => kv.delete(ref.key));
    }
  }

  /**
   * Deletes the uploads past their deadline at `now` (their writer died or
   * was too slow): the record first, checked, then its chunks.
   */
  async reclaimLost(now: number): Promise<void> {
    const { kv, keys } = this.#store;
    for (
      const upload of await this.#store.listAll<UploadRecord>(keys.uploads())
    ) {
      if (upload.value.d > now) continue;
      const op = kv.atomic().check(upload).delete(upload.key);
      if ((await this.#store.retryWhileLocked(() => op.commit())).ok) {
        await this.#store.deletePrefix(
          keys.chunks(upload.key[2] as string, upload.key[3] as string),
        );
      }
    }
  }
}
