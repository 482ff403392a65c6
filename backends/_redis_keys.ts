// The Redis key layout of the Redis backend, in one place.
//
// Every key of a tenant (a `prefix`) starts with the tenant's hash tag:
//
//   T = "{sb:" + escape(prefix) + "}"
//
// where escape() writes "%" as "%25", "{" as "%7B" and "}" as "%7D" (an
// injective map whose output has no braces). Redis Cluster hashes only the
// text between the first "{" and the first "}" after it, so every key of one
// tenant lives in one hash slot and each script (which may touch the thread,
// the thread index and the registry of one tenant) is a single-slot script.
// Ids may contain anything ("}", "{", ":", "*", newlines, another tenant's
// prefix): they only ever come after T's closing brace, which is the first
// "}" of the key, so two prefixes never share a key (T differs, and T is
// recoverable from any key as the text up to the first "}"), whatever the ids.
//
//   T + ":t:" + threadId   list    the thread's slots, in index order;
//                                  PEXPIRE ttlMs at every append (sliding)
//   T + ":threads"         zset    thread index: member threadId, score a
//                                  lower bound of its expiry in server ms
//                                  ("+inf" when ttlMs = 0), set when the
//                                  thread is created and corrected from the
//                                  list's PTTL when it comes due; no TTL of
//                                  its own: due entries of expired threads
//                                  are removed by the next list, stats or
//                                  thread creation (an empty zset is deleted)
//   T + ":c:" + chain      string  the chain's uuid  } both PEXPIREAT =
//   T + ":u:" + uuid       string  the uuid's chain  } last write + ttlMs
//   T + ":reg"             zset    registry index: member uuid, score its
//                                  pair's expiry ("+inf" when ttlMs = 0);
//                                  PEXPIREAT = its highest score (none
//                                  while it holds a persistent pair)
//
// The append script derives the thread key prefix from the index key
// (T + ":threads" -> T + ":t:"): change both together.
//
// The suffixes ":t:", ":threads", ":c:", ":u:", ":reg" are prefix-free
// among themselves (":t:" vs ":threads" differ at the third character), so
// kinds never collide within a tenant either. Nothing is ever found by
// pattern: listing, counting and clearing go through the two indexes (no
// KEYS, no SCAN).

/** The key names of one tenant (one `prefix`). */
export interface RedisKeys {
  /** The tenant's hash tag, `{sb:<escaped prefix>}`: the start of every key. */
  readonly tag: string;
  /** The thread index (zset threadId -> expiry ms). */
  readonly threads: string;
  /** The registry index (zset uuid -> expiry ms). */
  readonly registry: string;
  /** Prefix of thread keys: `threads + id` is the thread's list. */
  readonly threadPrefix: string;
  /** Prefix of chain -> uuid keys. */
  readonly chainPrefix: string;
  /** Prefix of uuid -> chain keys. */
  readonly uuidPrefix: string;
  /** The list key of a thread. */
  thread(threadId: string): string;
  /** The key holding a chain's uuid. */
  chain(chain: string): string;
  /** The key holding a uuid's chain. */
  uuid(uuid: string): string;
}

/** Escapes a prefix so that it contains no `{` or `}` (injectively). */
export function escapePrefix(prefix: string): string {
  return prefix.replace(
    /[%{}]/g,
    (c) => c === "%" ? "%25" : c === "{" ? "%7B" : "%7D",
  );
}

/** The key names of the tenant `prefix`. */
export function redisKeys(prefix: string): RedisKeys {
  const tag = `{sb:${escapePrefix(prefix)}}`;
  const threadPrefix = `${tag}:t:`;
  const chainPrefix = `${tag}:c:`;
  const uuidPrefix = `${tag}:u:`;
  return {
    tag,
    threads: `${tag}:threads`,
    registry: `${tag}:reg`,
    threadPrefix,
    chainPrefix,
    uuidPrefix,
    thread: (threadId) => threadPrefix + threadId,
    chain: (chain) => chainPrefix + chain,
    uuid: (uuid) => uuidPrefix + uuid,
  };
}
