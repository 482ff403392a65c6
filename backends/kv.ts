/**
 * The Deno KV backend (not available yet: issue #3).
 *
 * @module
 */

import type { BackendConfig } from "../config.ts";
import { BackendError } from "../errors.ts";
import type { SharedBackend } from "../protocol.ts";

/**
 * The Deno KV backend. Not available yet in this version: {@linkcode KvBackend.open}
 * rejects with a {@linkcode BackendError}.
 *
 * @example
 * ```ts
 * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * await assert.rejects(KvBackend.open(), /not available yet/);
 * ```
 */
export class KvBackend {
  /**
   * Opens the backend.
   *
   * @param _config The config.
   * @returns Never: rejects until the backend lands.
   * @throws {BackendError} Always, for now.
   */
  static open(_config: BackendConfig = {}): Promise<SharedBackend> {
    return Promise.reject(
      new BackendError(
        'The "kv" backend is not available yet in this version; use backendType "memory"',
      ),
    );
  }
}
