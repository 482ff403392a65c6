// Read-only admin views of a whole Redis database, for the inspector: the
// prefixes (tenants) that hold data, found with SCAN, and when threads
// expire, read through the key layout of _redis_keys.ts. It never writes, and
// the backend never uses it: the library's own calls never SCAN.

import { errorMessage } from "../_messages.ts";
import { BackendError } from "../errors.ts";
import type { RedisClientLike } from "./_redis_client.ts";
import { RedisConnection } from "./_redis_connection.ts";
import { redisKeys } from "./_redis_keys.ts";

/** A prefix (tenant) of a Redis database, and what it holds. */
export interface RedisPrefixInfo {
  prefix: string;
  /** It has a thread index. */
  threads: boolean;
  /** It has a registry index. */
  registry: boolean;
}

/** The commands used here beyond those the backend declares. */
interface AdminClient extends RedisClientLike {
  scan(
    cursor: string,
    match: "MATCH",
    pattern: string,
    count: "COUNT",
    n: number,
  ): Promise<[cursor: string, keys: string[]]>;
  pttl(key: string): Promise<number>;
}

/** Keys SCAN looks at per call: big enough to be quick, small enough not to block the server. */
const SCAN_COUNT = 1_000;

/** An admin connection to the Redis server of a URL. */
export class RedisAdmin {
  readonly #connection: RedisConnection;
  readonly #client: AdminClient;

  private constructor(connection: RedisConnection) {
    this.#connection = connection;
    // A real ioredis client has every Redis command; these two are not in
    // the interface the backend declares.
    this.#client = connection.client as AdminClient;
  }

  /**
   * Connects to the server of `url`, as the backend would.
   *
   * @throws {TypeError} `url` is not a `redis://` or `rediss://` URL.
   * @throws {BackendError} The server cannot be reached.
   */
  static async open(url: string): Promise<RedisAdmin> {
    return new RedisAdmin(await RedisConnection.open(url));
  }

  /**
   * The prefixes that hold a thread index or a registry index, sorted: a
   * SCAN of the whole database (of the node the URL names, on a Cluster).
   */
  async prefixes(): Promise<RedisPrefixInfo[]> {
    const found = new Map<string, RedisPrefixInfo>();
    let cursor = "0";
    do {
      const [next, keys] = await this.#send(
        "list the prefixes",
        () => this.#client.scan(cursor, "MATCH", "{sb:*", "COUNT", SCAN_COUNT),
      );
      cursor = next;
      for (const key of keys) {
        const prefix = prefixOfIndex(key);
        if (prefix === undefined) continue;
        const info = found.get(prefix) ??
          { prefix, threads: false, registry: false };
        if (key === redisKeys(prefix).threads) info.threads = true;
        else info.registry = true;
        found.set(prefix, info);
      }
    } while (cursor !== "0");
    return [...found.values()].sort((a, b) =>
      a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : 0
    );
  }

  /**
   * When each thread of `prefix` expires, from its list's PTTL: ms since
   * the epoch (of this machine's clock), 0 for never. A thread without a
   * list is left out.
   */
  async threadExpiries(
    prefix: string,
    threadIds: readonly string[],
  ): Promise<Map<string, number>> {
    const keys = redisKeys(prefix);
    const now = Date.now();
    const ttls = await Promise.all(
      threadIds.map((id) =>
        this.#send(
          "read a thread's expiry",
          () => this.#client.pttl(keys.thread(id)),
        )
      ),
    );
    const expiries = new Map<string, number>();
    ttls.forEach((ttl, i) => {
      if (ttl === -1) expiries.set(threadIds[i]!, 0);
      else if (ttl >= 0) expiries.set(threadIds[i]!, now + ttl);
    });
    return expiries;
  }

  /** Ends the connection. */
  close(): Promise<void> {
    return this.#connection.close();
  }

  async #send<T>(action: string, command: () => Promise<T>): Promise<T> {
    try {
      return await this.#connection.send(command);
    } catch (error) {
      if (error instanceof BackendError) throw error;
      throw new BackendError(
        `Cannot ${action} on Redis at ${this.#connection.endpoint}: ${
          errorMessage(error)
        }`,
        { cause: error },
      );
    }
  }
}

/**
 * The prefix whose thread or registry index `key` is, or undefined: the key
 * is the tenant's tag and ":threads" or ":reg", and the prefix is the one
 * whose keys those are (checked against _redis_keys.ts).
 */
function prefixOfIndex(key: string): string | undefined {
  const end = key.indexOf("}");
  if (!key.startsWith("{sb:") || end < 0) return undefined;
  const prefix = key.slice(4, end).replace(
    /%25|%7B|%7D/g,
    (code) => code === "%25" ? "%" : code === "%7B" ? "{" : "}",
  );
  const keys = redisKeys(prefix);
  return key === keys.threads || key === keys.registry ? prefix : undefined;
}
