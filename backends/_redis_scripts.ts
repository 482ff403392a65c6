// The Lua scripts of the Redis backend: every mutation is one of these, so it
// is atomic and one round trip. They are registered with ioredis'
// `defineCommand`, which sends EVALSHA and falls back to EVAL (reloading the
// script) after a `SCRIPT FLUSH` or a server restart.
//
// Keys follow `_redis_keys.ts`. Scripts that reach keys they build from a
// prefix in ARGV (a thread's list from the index, a registry partner) stay in
// the tenant's hash slot: every key of a tenant carries its hash tag.
//
// Time is the server's (`TIME`), so that every client agrees on expiry.
// Threads expire by Redis' own expiry of their list (sliding PEXPIRE); the
// thread index only needs a lower bound of each expiry (see PRUNE). Registry
// pairs get one absolute expiry for both keys and the index entry
// (SET ... PXAT, PEXPIREAT). Needs Redis >= 6.2 (PXAT).
//
// Replies are integers, bulk strings and flat arrays only: the same under
// RESP2 and RESP3.

import type { RedisClientLike } from "./_redis_client.ts";

/** Server time in ms, and the expiry `ttl` ms from now (nil when ttl = 0). */
const NOW = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`;

/**
 * Prunes the thread index: entries whose score (a lower bound of the thread's
 * expiry: 100 ms early, because TIME runs ahead of the time a script's
 * PEXPIRE counts from by the script's run time) has passed are checked
 * against their list's real TTL: re-scored if the list lives on (it was
 * appended to since), removed if it expired. O(1) when nothing is due.
 * `prefix` is the thread key prefix.
 */
const PRUNE = `
local function prune(index, prefix, now)
  local due = redis.call('ZRANGEBYSCORE', index, '-inf', now)
  for i = 1, #due do
    local pttl = redis.call('PTTL', prefix .. due[i])
    if pttl == -2 then
      redis.call('ZREM', index, due[i])
    elseif pttl == -1 then
      redis.call('ZADD', index, '+inf', due[i])
    else
      redis.call('ZADD', index, now + pttl - 100, due[i])
    end
  end
end
`;

/**
 * Tells a thread's watchers (see `_redis_subscriber.ts`) that it changed: on
 * its channel T + ":w:" + id (T from the thread index key `T:threads`: the
 * tenant's hash tag, so the channel hashes to the tenant's slot), with
 * sharded SPUBLISH on Redis >= 7 (`redis.REDIS_VERSION` exists from 7.0),
 * else PUBLISH. `message` is "<from> <to> <ttlMs>" (slots [from, to) were
 * appended; the thread expires ttlMs from now, 0: never) or "gone".
 */
const ANNOUNCE = `
local function announce(index, id, message)
  redis.call(redis.REDIS_VERSION and 'SPUBLISH' or 'PUBLISH',
    string.sub(index, 1, -9) .. ':w:' .. id, message)
end
`;

/**
 * Appends slots to one or more threads of a tenant, checking the limits.
 *
 * KEYS[1] the thread index; KEYS[2..n+1] the threads' lists (distinct).
 * ARGV[1] "ttlMs maxSlotsPerThread maxThreads" (one argument: fewer to encode
 * on the hot path); for n = 1, ARGV[2..] are the slots; for n > 1,
 * ARGV[2..n+1] the number of slots of each thread, then every slot, thread
 * after thread. The thread key prefix (the index member is the key without
 * it) is derived from KEYS[1]: `T:threads` -> `T:t:` (see _redis_keys.ts).
 *
 * Returns one integer per thread (a bare integer when n = 1, else an array):
 * r >= 0: all its slots were appended, the first at index r; r = -1: the
 * thread is new and maxThreads live threads exist, nothing appended;
 * r <= -2: maxSlotsPerThread was reached after -r - 2 slots were appended
 * (the first at maxSlotsPerThread - (-r - 2)). Nothing is written for what
 * was refused. A thread that got slots has its list's TTL reset to
 * ttlMs (sliding), or removed with ttlMs = 0 (the last writer's TTL holds).
 *
 * The hot path, an append to an existing thread, is LLEN, RPUSH, PEXPIRE
 * (and PTTL with ttlMs > 0: a persistent list, left by a backend with
 * ttlMs 0 on the same prefix, gets its index score back from +inf):
 * the index is written only when a thread is created (score: its first
 * expiry, a lower bound that PRUNE corrects), and server time is read only
 * then.
 */
const APPEND = `${NOW}${PRUNE}${ANNOUNCE}
local index = KEYS[1]
local ttl, max_slots, max_threads = string.match(ARGV[1], '^(%d+) (%d+) (%d+)$')
ttl, max_slots, max_threads = tonumber(ttl), tonumber(max_slots), tonumber(max_threads)
local n = #KEYS - 1
local now = nil
local prefix = nil
local out = {}
local pos = 2
if n > 1 then pos = 2 + n end
for i = 1, n do
  local key = KEYS[i + 1]
  local count = #ARGV - 1
  if n > 1 then count = tonumber(ARGV[1 + i]) end
  local len = redis.call('LLEN', key)
  -- Never negative: a thread may hold more than this backend's
  -- max_slots (written by a backend with a higher limit): that is full.
  local take = math.max(math.min(count, max_slots - len), 0)
  local refused = false
  if take > 0 and len == 0 then
    if not now then
      now = now_ms()
      prefix = string.sub(index, 1, -9) .. ':t:'
      prune(index, prefix, now)
    end
    local member = string.sub(key, #prefix + 1)
    if redis.call('ZCARD', index) >= max_threads
      and not redis.call('ZSCORE', index, member) then
      take = 0
      refused = true
    elseif ttl > 0 then
      redis.call('ZADD', index, now + ttl - 100, member)
    else
      redis.call('ZADD', index, '+inf', member)
    end
  end
  if take > 0 then
    redis.call('RPUSH', key, unpack(ARGV, pos, pos + take - 1))
    if ttl > 0 then
      if len > 0 and redis.call('PTTL', key) == -1 then
        -- Persistent (a backend with ttlMs 0 wrote it), so its index score
        -- is +inf, which no prune would ever check: it expires now.
        if not now then
          now = now_ms()
          prefix = string.sub(index, 1, -9) .. ':t:'
        end
        redis.call('ZADD', index, now + ttl - 100, string.sub(key, #prefix + 1))
      end
      redis.call('PEXPIRE', key, ttl)
    else
      redis.call('PERSIST', key)
    end
    announce(index, string.sub(key, #index - 4),
      string.format('%d %d %d', len, len + take, ttl))
  end
  if refused then
    out[i] = -1
  elseif take == count then
    out[i] = len
  else
    out[i] = -2 - take
  end
  pos = pos + count
end
if n == 1 then return out[1] end
return out
`;

/**
 * Deletes a thread (announced "gone" if it existed). KEYS[1] the thread
 * index, KEYS[2] the list; ARGV[1] the thread id. Returns 1 if the thread
 * existed.
 */
const DELETE_THREAD = `${ANNOUNCE}
local existed = redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
if existed == 1 then announce(KEYS[1], ARGV[1], 'gone') end
return existed
`;

/**
 * Lists the live threads. KEYS[1] the thread index; ARGV[1] the thread key
 * prefix. Prunes first (expired lists are gone by Redis' own expiry; their
 * index entries go here). Returns the ids.
 */
const LIST_THREADS = `${NOW}${PRUNE}
prune(KEYS[1], ARGV[1], now_ms())
return redis.call('ZRANGE', KEYS[1], 0, -1)
`;

/**
 * Deletes every thread of the tenant (each announced "gone"). KEYS[1] the
 * thread index; ARGV[1] the thread key prefix. Returns the number of ids
 * deleted.
 */
const CLEAR_THREADS = `${ANNOUNCE}
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local batch = {}
for i = 1, #ids do
  announce(KEYS[1], ids[i], 'gone')
  batch[#batch + 1] = ARGV[1] .. ids[i]
  if #batch == 500 then
    redis.call('UNLINK', unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('UNLINK', unpack(batch)) end
redis.call('DEL', KEYS[1])
return #ids
`;

/**
 * Counts the tenant's live data. KEYS[1] the thread index, KEYS[2] the
 * registry index; ARGV[1] the thread key prefix. Returns
 * [threads, slots, registry pairs].
 */
const STATS = `${NOW}${PRUNE}
local now = now_ms()
prune(KEYS[1], ARGV[1], now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local slots = 0
for i = 1, #ids do
  slots = slots + redis.call('LLEN', ARGV[1] .. ids[i])
end
return { #ids, slots, redis.call('ZCARD', KEYS[2]) }
`;

/** Shared body of registrySet and registrySetIfAbsent: maps ARGV[2] <-> ARGV[3]. */
const MAP_PAIR = `${NOW}
local function map_pair()
  local ttl = tonumber(ARGV[1])
  local chain, uuid = ARGV[2], ARGV[3]
  local old_uuid = redis.call('GET', KEYS[2])
  if old_uuid and old_uuid ~= uuid then
    redis.call('DEL', ARGV[5] .. old_uuid)
    redis.call('ZREM', KEYS[1], old_uuid)
  end
  local old_chain = redis.call('GET', KEYS[3])
  if old_chain and old_chain ~= chain then
    redis.call('DEL', ARGV[4] .. old_chain)
  end
  if ttl > 0 then
    local expiry = now_ms() + ttl
    redis.call('SET', KEYS[2], uuid, 'PXAT', expiry)
    redis.call('SET', KEYS[3], chain, 'PXAT', expiry)
    redis.call('ZADD', KEYS[1], expiry, uuid)
  else
    redis.call('SET', KEYS[2], uuid)
    redis.call('SET', KEYS[3], chain)
    redis.call('ZADD', KEYS[1], '+inf', uuid)
  end
  -- The index lives as long as its longest-lived pair: backends with another
  -- ttlMs may share the prefix, so this write's expiry is not always the latest.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
  if last == 'inf' then
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last)))
  end
end
`;

/**
 * Maps a chain to a uuid both ways, unmapping their former partners.
 * KEYS[1] the registry index, KEYS[2] the chain's key, KEYS[3] the uuid's
 * key; ARGV[1] ttlMs, ARGV[2] chain, ARGV[3] uuid, ARGV[4] the chain key
 * prefix, ARGV[5] the uuid key prefix. Returns 1.
 */
const REGISTRY_SET = `${MAP_PAIR}
map_pair()
return 1
`;

/**
 * As REGISTRY_SET, only if the chain is unmapped. Returns the uuid the chain
 * maps to afterwards.
 */
const REGISTRY_SET_IF_ABSENT = `${MAP_PAIR}
local current = redis.call('GET', KEYS[2])
if current then return current end
map_pair()
return ARGV[3]
`;

/**
 * Removes a uuid's pair. KEYS[1] the registry index, KEYS[2] the uuid's key;
 * ARGV[1] the uuid, ARGV[2] the chain key prefix. Returns 1 if it was mapped.
 */
const REGISTRY_DELETE = `
local chain = redis.call('GET', KEYS[2])
if not chain then return 0 end
redis.call('DEL', KEYS[2], ARGV[2] .. chain)
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
`;

/**
 * Lists the live pairs. KEYS[1] the registry index; ARGV[1] the uuid key
 * prefix. Returns [uuid, chain, uuid, chain, ...].
 */
const REGISTRY_LIST = `${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
local uuids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i = 1, #uuids do
  local chain = redis.call('GET', ARGV[1] .. uuids[i])
  if chain then
    out[#out + 1] = uuids[i]
    out[#out + 1] = chain
  end
end
return out
`;

/**
 * Removes every pair of the tenant. KEYS[1] the registry index; ARGV[1] the
 * chain key prefix, ARGV[2] the uuid key prefix. Returns the pairs removed.
 */
const REGISTRY_CLEAR = `
local uuids = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #uuids do
  local chain = redis.call('GET', ARGV[2] .. uuids[i])
  if chain then redis.call('DEL', ARGV[1] .. chain) end
  redis.call('DEL', ARGV[2] .. uuids[i])
end
redis.call('DEL', KEYS[1])
return #uuids
`;

/** An argument of a script call. */
export type ScriptArg = string | number | Uint8Array;

/** The commands {@linkcode defineScripts} adds to a client. */
export interface ScriptCommands {
  xpSbAppend(...args: ScriptArg[]): Promise<number | number[]>;
  xpSbDeleteThread(...args: ScriptArg[]): Promise<number>;
  xpSbListThreads(...args: ScriptArg[]): Promise<string[]>;
  xpSbClearThreads(...args: ScriptArg[]): Promise<number>;
  xpSbStats(...args: ScriptArg[]): Promise<[number, number, number]>;
  xpSbRegistrySet(...args: ScriptArg[]): Promise<number>;
  xpSbRegistrySetIfAbsent(...args: ScriptArg[]): Promise<string>;
  xpSbRegistryDelete(...args: ScriptArg[]): Promise<number>;
  xpSbRegistryList(...args: ScriptArg[]): Promise<string[]>;
  xpSbRegistryClear(...args: ScriptArg[]): Promise<number>;
}

/** Each script with its number of keys (`undefined`: given per call). */
const SCRIPTS: Record<
  keyof ScriptCommands,
  { lua: string; numberOfKeys?: number }
> = {
  xpSbAppend: { lua: APPEND },
  xpSbDeleteThread: { lua: DELETE_THREAD, numberOfKeys: 2 },
  xpSbListThreads: { lua: LIST_THREADS, numberOfKeys: 1 },
  xpSbClearThreads: { lua: CLEAR_THREADS, numberOfKeys: 1 },
  xpSbStats: { lua: STATS, numberOfKeys: 2 },
  xpSbRegistrySet: { lua: REGISTRY_SET, numberOfKeys: 3 },
  xpSbRegistrySetIfAbsent: { lua: REGISTRY_SET_IF_ABSENT, numberOfKeys: 3 },
  xpSbRegistryDelete: { lua: REGISTRY_DELETE, numberOfKeys: 2 },
  xpSbRegistryList: { lua: REGISTRY_LIST, numberOfKeys: 1 },
  xpSbRegistryClear: { lua: REGISTRY_CLEAR, numberOfKeys: 1 },
};

/** The append script's source, for baselines and `redis-benchmark`. */
export const APPEND_SCRIPT: string = APPEND;

/** A client the scripts are registered on (see {@linkcode defineScripts}). */
export type ScriptClient = RedisClientLike & ScriptCommands;

/**
 * Registers the scripts on a client (idempotent; the names start with
 * `xpSb` so they do not clash with a caller's own commands).
 *
 * @returns The same client, typed with the script commands.
 */
export function defineScripts<C extends Pick<RedisClientLike, "defineCommand">>(
  client: C,
): C & ScriptCommands {
  for (const [name, { lua, numberOfKeys }] of Object.entries(SCRIPTS)) {
    if (typeof (client as Record<string, unknown>)[name] === "function") {
      continue;
    }
    client.defineCommand(
      name,
      numberOfKeys === undefined ? { lua } : { lua, numberOfKeys },
    );
  }
  return client as C & ScriptCommands;
}
