/**
 * The Redis backend (not available yet: issue #4).
 *
 * @module
 */

import type { BackendConfig } from "../config.ts";
import { BackendError } from "../errors.ts";
import type { SharedBackend } from "../protocol.ts";

/**
 * The Redis backend. Not available yet in this version: {@linkcode RedisBackend.open}
 * rejects with a {@linkcode BackendError}.
 *
 * @example
 * ```ts
 * import { RedisBackend } from "@xml-pipeline/shared-backend/redis";
 * import assert from "node:assert/strict";
 *
 * await assert.rejects(RedisBackend.open(), /not available yet/);
 * ```
 */
export class RedisBackend {
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
        'The "redis" backend is not available yet in this version; use backendType "memory"',
      ),
    );
  }
}
