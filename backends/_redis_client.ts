// The part of the ioredis client API that the Redis backend uses, declared
// here so that the backend's module graph holds no reference to ioredis, not
// even a type-only one: `deno info mod.ts` does not list it, and nothing
// downloads it until a Redis backend connects. `tests/redis_test.ts` checks
// that a real ioredis `Redis` satisfies this interface.

import type { Buffer } from "node:buffer";

/**
 * The npm specifier the backend loads ioredis from, with a dynamic `import()`
 * when it connects. Keep it in step with the `"ioredis"` entry of
 * `deno.json` (tests and benchmarks import that one).
 */
export const IOREDIS_SPECIFIER = "npm:ioredis@^6.0.0";

/** The ioredis `Redis` (or `Cluster`) methods and fields the backend calls. */
export interface RedisClientLike {
  readonly status: string;
  readonly options?: object;
  connect(): Promise<void>;
  quit(): Promise<unknown>;
  disconnect(reconnect?: boolean): void;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  once(event: string, listener: (...args: unknown[]) => void): unknown;
  defineCommand(
    name: string,
    definition: { lua: string; numberOfKeys?: number },
  ): void;
  ping(): Promise<string>;
  get(key: string): Promise<string | null>;
  llen(key: string): Promise<number>;
  exists(...keys: string[]): Promise<number>;
  lrangeBuffer(key: string, start: number, stop: number): Promise<Buffer[]>;
  lindexBuffer(key: string, index: number): Promise<Buffer | null>;
}

/** The options of a connection the backend opens (see `CLIENT_OPTIONS` in `_redis_connection.ts`). */
export interface RedisClientOptions {
  protocol: 2 | 3;
  lazyConnect: boolean;
  enableOfflineQueue: boolean;
  autoResendUnfulfilledCommands: boolean;
  maxRetriesPerRequest: number;
  connectTimeout: number;
  retryStrategy: (times: number) => number;
}

/** What `import(IOREDIS_SPECIFIER)` returns, as far as the backend uses it. */
export interface IoredisModule {
  Redis: new (url: string, options: RedisClientOptions) => RedisClientLike;
}
