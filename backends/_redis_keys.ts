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
//   T + ":i:" + threadId   hash    the thread's append ids: appendId ->
//                                  index; same TTL as the list (every
//                                  append to the thread sets both, once it
//                                  is in T:withids), deleted with it, and
//                                  deleted when the thread is created anew
//   T + ":withids"         set     the threads that have append ids (added
//                                  with their first id, removed with their
//                                  ids): appends to other threads leave
//                                  T:i: alone; it outlives every hash it
//                                  names (extended with them; persistent
//                                  while a persistent thread may have ids,
//                                  then the index's TTL)
//   T + ":threads"         zset    thread index: member threadId, score a
//                                  lower bound of its expiry in server ms
//                                  ("+inf" while the list is persistent),
//                                  set when the thread is created, lowered
//                                  by an append that shortens the list's TTL
//                                  (backends with another ttlMs on the
//                                  prefix), corrected from the list's PTTL
//                                  when it comes due; its own TTL follows
//                                  its longest-lived thread (every append
//                                  extends it to at least ttlMs; none while
//                                  a persistent thread is listed): due
//                                  entries are removed by the next list,
//                                  stats or thread creation, and the whole
//                                  index expires with its last thread
//   T + ":p:" + producer   hash    the op records of one backend instance
//                                  (its producer id): op sequence number ->
//                                  the op's reply, and "f" -> the floor (ops
//                                  below it are settled); what makes a
//                                  retried script call apply once (see OPS in
//                                  _redis_scripts.ts); PEXPIRE retryTimeoutMs
//                                  + 60 s, refreshed every few seconds while
//                                  the backend writes
//   T + ":c:" + chain      string  the chain's uuid  } both PEXPIREAT =
//   T + ":u:" + uuid       string  the uuid's chain  } last write + ttlMs
//   T + ":reg"             zset    registry index: member uuid, score its
//                                  pair's expiry ("+inf" when ttlMs = 0);
//                                  PEXPIREAT = its highest score (none
//                                  while it holds a persistent pair)
//   T + ":w:" + threadId   channel the thread's watch announcements (not a
//                                  key: see ANNOUNCE in _redis_scripts.ts,
//                                  which derives it from the index key, and
//                                  _redis_subscriber.ts)
//   T + ":w"               channel nothing is published on: a subscriber
//                                  connection holds it while it watches any
//                                  thread of the tenant, and the append
//                                  script announces only while someone does
//                                  (PUBSUB SHARDNUMSUB)
//
// The scripts derive the tag from the index key (T + ":threads" -> T), and
// from it the thread, id, withids and channel keys of a thread id: change them
// together.
//
// The suffixes ":t:", ":i:", ":threads", ":withids", ":c:", ":u:", ":reg",
// ":p:" (and ":w:" of channels) are prefix-free among themselves (":t:" vs
// ":threads" differ at the third character, ":w:" vs ":withids" too), so
// kinds never collide within a tenant either; the tenant's channel ":w" is
// never a thread's (ids are never empty, and a thread's has the colon after
// "w"). Nothing is ever found by pattern: listing, counting and clearing go
// through the two indexes (no KEYS, no SCAN).

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
  /** Prefix of watch channels: `channelPrefix + id` is a thread's channel. */
  readonly channelPrefix: string;
  /** The tenant's watch channel, held by every subscriber connection (nothing is published on it). */
  readonly tenantChannel: string;
  /** The list key of a thread. */
  thread(threadId: string): string;
  /** The hash of a thread's append ids (appendId -> index). */
  ids(threadId: string): string;
  /** The set of threads that have append ids. */
  readonly withIds: string;
  /** The op records of a backend instance (its producer id). */
  records(producer: string): string;
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
    channelPrefix: `${tag}:w:`,
    tenantChannel: `${tag}:w`,
    thread: (threadId) => threadPrefix + threadId,
    ids: (threadId) => `${tag}:i:${threadId}`,
    withIds: `${tag}:withids`,
    records: (producer) => `${tag}:p:${producer}`,
    chain: (chain) => chainPrefix + chain,
    uuid: (uuid) => uuidPrefix + uuid,
  };
}

/**
 * The Redis Cluster hash slot of a key or channel: CRC16 (XMODEM) of its
 * hash tag if it has one, else of the whole name, mod 16384. Written here
 * (15 lines, as Redis' cluster spec gives it) rather than taken from
 * `npm:cluster-key-slot`, which would put an npm module in the graph of
 * `mod.ts` for every backend.
 */
export function hashSlot(name: string | Uint8Array): number {
  const bytes = typeof name === "string"
    ? new TextEncoder().encode(name)
    : name;
  let start = 0;
  let end = bytes.length;
  const open = bytes.indexOf(0x7b); // "{"
  if (open !== -1) {
    const close = bytes.indexOf(0x7d, open + 1); // "}"
    if (close > open + 1) {
      start = open + 1;
      end = close;
    }
  }
  let crc = 0;
  for (let i = start; i < end; i++) {
    crc ^= bytes[i]! << 8;
    for (let bit = 0; bit < 8; bit++) {
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
  }
  return crc % 16384;
}
