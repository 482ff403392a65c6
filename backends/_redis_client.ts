// The part of the ioredis client API that the Redis backend uses, declared
// here so that the backend's modules hold no type reference to ioredis: the
// one reference is the literal dynamic `import("ioredis")` in
// `_redis_connection.ts`, evaluated only when a backend connects.
// `tests/redis_test.ts` checks that a real ioredis `Redis` satisfies this
// interface.

import type { Buffer } from "node:buffer";

/** A pipeline: commands queued, then sent together with `exec()`. */
export interface RedisPipelineLike {
  /** Queues `WAIT numreplicas timeout`. */
  wait(replicas: number, timeoutMs: number): RedisPipelineLike;
  /** Sends the queued commands; one `[error, reply]` per command. */
  exec(): Promise<[Error | null, unknown][] | null>;
}

/** The ioredis `Redis` (or `Cluster`) methods and fields the backend calls. */
export interface RedisClientLike {
  readonly status: string;
  readonly options?: object;
  connect(): Promise<void>;
  quit(): Promise<unknown>;
  disconnect(reconnect?: boolean): void;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  once(event: string, listener: (...args: unknown[]) => void): unknown;
  off(event: string, listener: (...args: unknown[]) => void): unknown;
  pipeline(): RedisPipelineLike;
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

/** What `import("ioredis")` returns, as far as the backend uses it. */
export interface IoredisModule {
  Redis: new (url: string, options: RedisClientOptions) => RedisClientLike;
}
