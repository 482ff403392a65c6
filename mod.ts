/**
 * One shared state layer for multi-process and multi-isolate AI-agent
 * pipelines: per-thread append-only context buffers (ordered binary slots)
 * and a thread registry (dotted call chain <-> uuid), with sliding TTL, behind
 * one protocol and three backends:
 *
 * - `memory` (default): this isolate's `Map`s;
 * - `kv`: Deno KV, one file shared by many processes and Workers, or the
 *   app's KV on Deno Deploy;
 * - `redis`: Redis through `npm:ioredis`, for many machines.
 *
 * Every backend shows the same behaviour: dense indexes under any
 * concurrency, byte-exact slots, atomic limits, the same TTL.
 *
 * On top of the protocol, {@linkcode ContextBuffer} keeps typed messages per
 * thread and {@linkcode ThreadRegistry} routes call chains, race-free on every
 * backend.
 *
 * @example Quick start
 * ```ts
 * import { createSharedBackend, deserializeSlot, serializeSlot } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = await createSharedBackend(); // or { backendType: "kv", kvPath: "state.db" }
 * const index = await backend.bufferAppend("thread-1", serializeSlot({ from: "router", text: "hi" }));
 * const slot = await backend.bufferGetSlot("thread-1", index);
 * assert.deepEqual(deserializeSlot(slot!), { from: "router", text: "hi" });
 *
 * await backend.registrySet("console.router.greeter", "5f0c9a3e-uuid");
 * assert.equal(await backend.registryGetChain("5f0c9a3e-uuid"), "console.router.greeter");
 * ```
 *
 * @module
 */

export type {
  BackendKind,
  BackendStats,
  BufferAppendOptions,
  BufferWatchOptions,
  RegistryRefreshOptions,
  SharedBackend,
  WatchedSlot,
} from "./protocol.ts";
export {
  type BackendConfig,
  configFromEnv,
  DEFAULT_CONFIG,
  resolveConfig,
  type ResolvedConfig,
} from "./config.ts";
export {
  BackendClosedError,
  BackendError,
  SlotLimitError,
  ThreadLimitError,
} from "./errors.ts";
export { deserializeSlot, serializeSlot } from "./serialize.ts";
export {
  createSharedBackend,
  getSharedBackend,
  resetSharedBackend,
} from "./factory.ts";
export {
  InMemoryBackend,
  type InMemoryBackendOptions,
} from "./backends/memory.ts";
export {
  KvBackend,
  type KvBackendOptions,
  type KvSweepOptions,
  type KvSweepResult,
} from "./backends/kv.ts";
export { RedisBackend } from "./backends/redis.ts";
export {
  type AppendOptions,
  type BufferSlot,
  ContextBuffer,
  type ContextBufferOptions,
  type ContextBufferStats,
  payloadTypeName,
  type WaitForOptions,
} from "./context.ts";
export {
  type PruneResult,
  type StartChainOptions,
  ThreadRegistry,
} from "./registry.ts";
