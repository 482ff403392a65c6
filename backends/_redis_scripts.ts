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
// (SET ... PXAT, PEXPIREAT). Needs Redis >= 6.2 (PXAT, ZADD LT).
//
// Every mutation a caller may retry (appends, deletions, clears, registry
// writes) records its reply under the op's number (see OPS), in the same
// atomic step as its writes: a retried call (a lost reply, a failover, a
// client that resends) returns the recorded reply and writes nothing again.
//
// Replies are integers, bulk strings and arrays of them (nested one level in
// the append's reply): the same under RESP2 and RESP3.
//
// This file holds the buffer's scripts (threads) and registers every script
// (SCRIPTS, defineScripts); the registry's scripts are in
// _redis_registry_scripts.ts, and the fragments both use (NOW, OPS) in
// _redis_lua.ts.

import type { RedisClientLike } from "./_redis_client.ts";
import { NOW, OPS } from "./_redis_lua.ts";
import {
  REGISTRY_CLEAR,
  REGISTRY_DELETE,
  REGISTRY_LIST,
  REGISTRY_REFRESH,
  REGISTRY_SET,
  REGISTRY_SET_IF_ABSENT,
} from "./_redis_registry_scripts.ts";

/**
 * Prunes the thread index: entries whose score (a lower bound of the thread's
 * expiry: 100 ms early, because TIME runs ahead of the time a script's
 * PEXPIRE counts from by the script's run time) has passed are checked
 * against their list's real TTL: re-scored if the list lives on (it was
 * appended to since), removed (with the thread's ids, and from the threads
 * with ids) if it expired. O(1)
 * when nothing is due. `prefix` is the thread key prefix T:t:.
 */
const PRUNE = `
local function prune(index, prefix, now)
  local due = redis.call('ZRANGEBYSCORE', index, '-inf', now)
  for i = 1, #due do
    local pttl = redis.call('PTTL', prefix .. due[i])
    if pttl == -2 then
      redis.call('ZREM', index, due[i])
      local tag = string.sub(prefix, 1, -4)
      redis.call('DEL', tag .. ':i:' .. due[i])
      redis.call('SREM', tag .. ':withids', due[i])
    elseif pttl == -1 then
      redis.call('ZADD', index, '+inf', due[i])
      redis.call('PERSIST', index)
    else
      redis.call('ZADD', index, now + pttl - 100, due[i])
    end
  end
end
`;

/**
 * The thread index's own TTL when it has none: it stays persistent while it
 * lists a persistent thread (score +inf), else it gets the TTL of its
 * longest-lived thread, at least `least` ms (one pass over its entries, run
 * once: afterwards appends only extend the TTL).
 */
const SETTLE_INDEX = `
local function settle_index(index, prefix, least)
  if #redis.call('ZRANGEBYSCORE', index, '+inf', '+inf', 'LIMIT', 0, 1) > 0 then
    return
  end
  local longest = least
  local ids = redis.call('ZRANGE', index, 0, -1)
  for i = 1, #ids do
    local pttl = redis.call('PTTL', prefix .. ids[i])
    if pttl == -1 then return end
    if pttl > longest then longest = pttl end
  end
  if #ids > 0 then redis.call('PEXPIRE', index, longest) end
end
`;

/**
 * Tells a thread's watchers (see `_redis_subscriber.ts`) that it changed: on
 * its channel T + ":w:" + id (T from the thread index key `T:threads`: the
 * tenant's hash tag, so the channel hashes to the tenant's slot), with
 * sharded SPUBLISH on Redis >= 7 (`redis.REDIS_VERSION` exists from 7.0),
 * else PUBLISH. `message` is "gone" (deleted or cleared) or, after an
 * append, "<from> <to> <ttlMs>" (slots [from, to) were appended; the thread
 * expires ttlMs from now, 0: never), then, when the first of those slots
 * fit in WATCH_BYTES, their byte lengths (" <n1> <n2> ...") and "\n" and
 * their bytes, one after the other: a watch whose next index is `from`
 * takes them without reading.
 *
 * Only channels that someone listens to are published to: a subscriber
 * connection holds the tenant's channel T + ":w" while it watches any of
 * the tenant's threads, so `watched(index)` (one PUBSUB SHARDNUMSUB, or
 * NUMSUB) tells an append whether to look further; `listened` asks for the
 * threads' channels at once. On a Cluster the subscriber connects to the
 * master serving the tenant's slot, where the script runs: it is counted.
 */
const ANNOUNCE = `
local sharded = redis.REDIS_VERSION ~= nil
local function announce(index, id, message)
  redis.call(sharded and 'SPUBLISH' or 'PUBLISH',
    string.sub(index, 1, -9) .. ':w:' .. id, message)
end
local function watched(index)
  local counts = redis.call('PUBSUB', sharded and 'SHARDNUMSUB' or 'NUMSUB',
    string.sub(index, 1, -9) .. ':w')
  return tonumber(counts[2]) > 0
end
-- For each id, whether its channel has a subscriber.
local function listened(index, ids)
  local prefix = string.sub(index, 1, -9) .. ':w:'
  local channels = {}
  for i = 1, #ids do channels[i] = prefix .. ids[i] end
  local counts = redis.call('PUBSUB', sharded and 'SHARDNUMSUB' or 'NUMSUB',
    unpack(channels))
  local out = {}
  for i = 1, #ids do out[i] = tonumber(counts[2 * i]) > 0 end
  return out
end
`;

/** Most bytes of slots an append announcement carries (see ANNOUNCE). */
const WATCH_BYTES = 8 * 1024;

/**
 * Appends slots to one or more threads of a tenant, checking the limits and
 * the append ids.
 *
 * KEYS[1] the thread index `T:threads`, KEYS[2] the backend's op records
 * (see OPS). The threads' keys are built from the tag T (KEYS[1] without
 * ":threads"; see _redis_keys.ts), so that a call of 1 000 slots over 100
 * threads has 5 arguments, not 1 100: each argument costs the client more
 * to encode than the script to cut (ioredis writes every one with its own
 * length header).
 *
 * ARGV[1] "ttlMs maxSlotsPerThread maxThreads"; ARGV[2] the op header (see
 * OPS); ARGV[3] the appends, one MessagePack array (decoded by cmsgpack in
 * one step, no Lua loop per slot): for each thread, its id, its number of
 * slots c (-c when append ids come with them), its c slots, then (with
 * -c) its c append ids ("" for a slot without one). Strings are MessagePack
 * str (cmsgpack knows no bin).
 *
 * Returns one entry per thread. For a thread without append ids an integer:
 * r >= 0: all its slots were appended, the first at index r; r = -1: the
 * thread is new and maxThreads live threads exist, nothing appended;
 * r <= -2: maxSlotsPerThread was reached after -r - 2 slots were appended
 * (the first at maxSlotsPerThread - (-r - 2)). For a thread with append ids
 * -1 as above, or an array of one integer per slot: its index (an id already
 * applied to the thread, or earlier in this call, gives that slot's index and
 * appends nothing), or -2 (maxSlotsPerThread reached). Nothing is written for
 * what was refused, and a refused id is not recorded. A thread that got
 * slots has its list's and its ids' TTL reset to ttlMs (sliding), or removed
 * with ttlMs = 0 (the last writer's TTL holds); a thread created anew drops
 * the ids of a former one. Threads that got slots are announced (see
 * ANNOUNCE) when a subscriber listens.
 *
 * The hot path, an append to an existing thread without ids, is RPUSH (the
 * limit is checked on the length it returns: a push past it is trimmed
 * back) and PEXPIRE of the list (GT, Redis >= 7: a failure means this
 * append shortens the thread's life, or ends its persistence, and its index
 * score, a lower bound of its expiry, comes down with it; PTTL first on
 * 6.2); then once per call PEXPIRE of the index (GT: it lives as long as
 * its longest-lived thread), whether the tenant has threads with append ids
 * (T:withids: only theirs get their ids' TTL reset, which costs one
 * SMISMEMBER per call when there are any) and whether it is watched, and
 * the op record. Server time is read, and a thread's index entry written,
 * only when it is created or its TTL shortened.
 */
const APPEND = `${NOW}${OPS}${PRUNE}${SETTLE_INDEX}${ANNOUNCE}
local index, records = KEYS[1], KEYS[2]
local ttl, max_slots, max_threads = string.match(ARGV[1], '^(%d+) (%d+) (%d+)$')
ttl, max_slots, max_threads = tonumber(ttl), tonumber(max_slots), tonumber(max_threads)
local op = op_begin(records, ARGV[2])
if op and op.done then return op_end(records, op, op.replay) end
local gt = redis.REDIS_VERSION ~= nil
-- Gives key at least ttl ms more to live (PEXPIRE ... GT; before Redis 7,
-- its emulation). True if key exists without a TTL (nothing to extend).
local function extend_or_persistent(key, ttl)
  if gt then
    if redis.call('PEXPIRE', key, ttl, 'GT') == 1 then return false end
  else
    local left = redis.call('PTTL', key)
    if left >= 0 and left < ttl then redis.call('PEXPIRE', key, ttl) end
    if left ~= -1 then return false end
  end
  return redis.call('PTTL', key) == -1
end
local tag = string.sub(index, 1, -9)
local prefix = tag .. ':t:'
local batch = cmsgpack.unpack(ARGV[3])
local size = #batch
-- The threads with append ids (T:withids): only their ids' TTL is kept in
-- step with their list. members[i]: the call's i-th thread is one of them.
local with_ids_key = tag .. ':withids'
local members = nil
if redis.call('EXISTS', with_ids_key) == 1 then
  local ids = {}
  local at = 1
  while at <= size do
    ids[#ids + 1] = batch[at]
    local count = batch[at + 1]
    at = at + 2 + (count < 0 and -2 * count or count)
  end
  members = redis.call('SMISMEMBER', with_ids_key, unpack(ids))
end
local ids_kept = false
local now = nil
local pruned = false
local appended = false
-- Threads that got slots, for the announcements (only if the tenant is watched).
local heard = watched(index) and {} or nil
-- A new thread: the limit on threads, then its index entry. False if refused.
local function create(id)
  if not pruned then
    now = now or now_ms()
    prune(index, prefix, now)
    pruned = true
  end
  if redis.call('ZCARD', index) >= max_threads
    and not redis.call('ZSCORE', index, id) then
    return false
  end
  if ttl > 0 then
    redis.call('ZADD', index, now + ttl - 100, id)
  else
    redis.call('ZADD', index, '+inf', id)
  end
  -- The ids of a former thread of this id (its hash may outlive its list by
  -- a moment).
  redis.call('DEL', tag .. ':i:' .. id)
  redis.call('SREM', with_ids_key, id)
  return true
end
local out = {}
local i = 0
local at = 1
while at <= size do
  i = i + 1
  local id = batch[at]
  local count = batch[at + 1]
  local with_ids = count < 0
  if with_ids then count = -count end
  -- Its slots are batch[first .. first + count - 1], then its append ids.
  local first = at + 2
  local id_at = first + count
  at = with_ids and id_at + count or id_at
  local key = prefix .. id
  -- Its ids' TTL follows its list's (the hot path has none).
  local has_ids = with_ids or (members ~= nil and members[i] == 1)
  local ids_key = has_ids and tag .. ':i:' .. id
  local len, take
  local refused = false
  local result = nil
  -- The slots appended (with append ids: those not applied before).
  local pushed, from = batch, first
  if with_ids then
    -- Slot by slot: an id already applied gives its index; the others are
    -- appended while there is room.
    len = redis.call('LLEN', key)
    local stored = {}
    if len > 0 then
      stored = redis.call('HMGET', ids_key, unpack(batch, id_at, id_at + count - 1))
    end
    local seen, push, fresh = {}, {}, {}
    result = {}
    for k = 1, count do
      local append_id = batch[id_at + k - 1]
      local index_of = nil
      if append_id ~= '' then index_of = seen[append_id] or tonumber(stored[k]) end
      if index_of then
        result[k] = index_of
      elseif len + #push < max_slots then
        result[k] = len + #push
        push[#push + 1] = batch[first + k - 1]
        if append_id ~= '' then
          seen[append_id] = result[k]
          fresh[#fresh + 1] = append_id
          fresh[#fresh + 1] = result[k]
        end
      else
        result[k] = -2
      end
    end
    take = #push
    pushed, from = push, 1
    if take > 0 and len == 0 and not create(id) then
      take = 0
      refused = true
    end
    if take > 0 then
      redis.call('RPUSH', key, unpack(push))
      if #fresh > 0 then
        redis.call('HSET', ids_key, unpack(fresh))
        redis.call('SADD', with_ids_key, id)
      end
    end
  else
    -- Push, then check the limits on the length RPUSH returns (undoing what
    -- they refuse): one command on the hot path instead of LLEN + RPUSH.
    local new_len = redis.call('RPUSH', key, unpack(batch, first, first + count - 1))
    len = new_len - count
    take = count
    if len == 0 and not create(id) then
      redis.call('DEL', key)
      take = 0
      refused = true
    elseif new_len > max_slots then
      -- Never negative: a thread may hold more than this backend's
      -- max_slots (written by a backend with a higher limit): that is full.
      take = math.max(max_slots - len, 0)
      if len + take == 0 then
        redis.call('DEL', key)
      else
        redis.call('LTRIM', key, 0, len + take - 1)
      end
    end
  end
  if take > 0 then
    appended = true
    if ttl > 0 then
      local extended
      if len == 0 then
        extended = true
        redis.call('PEXPIRE', key, ttl)
      elseif gt then
        extended = redis.call('PEXPIRE', key, ttl, 'GT') == 1
      else
        local left = redis.call('PTTL', key)
        extended = left >= 0 and left <= ttl
        redis.call('PEXPIRE', key, ttl)
      end
      if not extended then
        -- This append shortens the thread's life (a backend with a longer
        -- ttlMs, or ttlMs 0, wrote it): its index score comes down with it.
        if gt then redis.call('PEXPIRE', key, ttl) end
        now = now or now_ms()
        redis.call('ZADD', index, 'LT', now + ttl - 100, id)
      end
      if has_ids then redis.call('PEXPIRE', ids_key, ttl) end
    else
      if len > 0 and redis.call('PTTL', key) ~= -1 then
        redis.call('ZADD', index, '+inf', id)
      end
      redis.call('PERSIST', key)
      if has_ids then redis.call('PERSIST', ids_key) end
    end
    if has_ids then ids_kept = true end
    if heard then
      heard[#heard + 1] = { id, len, take, pushed, from }
    end
  end
  if refused then
    out[i] = -1
  elseif result then
    out[i] = result
  elseif take == count then
    out[i] = len
  else
    out[i] = -2 - take
  end
end
if appended then
  -- The index lives as long as its longest-lived thread.
  if ttl > 0 then
    if extend_or_persistent(index, ttl) then settle_index(index, prefix, ttl) end
  else
    redis.call('PERSIST', index)
  end
end
if ids_kept then
  -- T:withids outlives the ids of every thread it holds: extended with
  -- them; persistent (a persistent thread had ids) until a TTL'd append
  -- finds it so: then it follows the index, which outlives every thread.
  if ttl > 0 then
    if extend_or_persistent(with_ids_key, ttl) then
      local left = redis.call('PTTL', index)
      if left > 0 then redis.call('PEXPIRE', with_ids_key, left) end
    end
  else
    redis.call('PERSIST', with_ids_key)
  end
end
if heard and #heard > 0 then
  local ids = {}
  for k = 1, #heard do ids[k] = heard[k][1] end
  local listens = listened(index, ids)
  for k = 1, #heard do
    if listens[k] then
      local id, len, take, pushed, from = unpack(heard[k])
      local head = { string.format('%d %d %d', len, len + take, ttl) }
      local body = {}
      local bytes = 0
      for s = from, from + take - 1 do
        local slot = pushed[s]
        if bytes + #slot > ${WATCH_BYTES} then break end
        bytes = bytes + #slot
        head[#head + 1] = #slot
        body[#body + 1] = slot
      end
      if #body > 0 then
        announce(index, id, table.concat(head, ' ') .. '\\n' .. table.concat(body))
      else
        announce(index, id, head[1])
      end
    end
  end
end
return op_end(records, op, out)
`;

/**
 * Deletes a thread and its ids (announced "gone" if it existed). KEYS[1]
 * the thread index, KEYS[2] the list, KEYS[3] the op records; ARGV[1] the
 * thread id, ARGV[2] the op header. Returns 1 if the thread existed.
 */
const DELETE_THREAD = `${OPS}${SETTLE_INDEX}${ANNOUNCE}
local op = op_begin(KEYS[3], ARGV[2])
if op and op.done then return op_end(KEYS[3], op, op.replay) end
local tag = string.sub(KEYS[1], 1, -9)
local existed = redis.call('DEL', KEYS[2])
redis.call('DEL', tag .. ':i:' .. ARGV[1])
redis.call('SREM', tag .. ':withids', ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if existed == 1 then announce(KEYS[1], ARGV[1], 'gone') end
if redis.call('PTTL', KEYS[1]) == -1 then settle_index(KEYS[1], tag .. ':t:', 1) end
return op_end(KEYS[3], op, existed)
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
 * Deletes every thread of the tenant, with their ids (each announced
 * "gone"). KEYS[1] the thread index, KEYS[2] the op records; ARGV[1] the
 * thread key prefix, ARGV[2] the op header. Returns the number of ids
 * deleted.
 */
const CLEAR_THREADS = `${OPS}${ANNOUNCE}
local op = op_begin(KEYS[2], ARGV[2])
if op and op.done then return op_end(KEYS[2], op, op.replay) end
local ids_prefix = string.sub(KEYS[1], 1, -9) .. ':i:'
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local batch = {}
for i = 1, #ids do
  announce(KEYS[1], ids[i], 'gone')
  batch[#batch + 1] = ARGV[1] .. ids[i]
  batch[#batch + 1] = ids_prefix .. ids[i]
  if #batch >= 500 then
    redis.call('UNLINK', unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('UNLINK', unpack(batch)) end
redis.call('DEL', KEYS[1], string.sub(KEYS[1], 1, -9) .. ':withids')
return op_end(KEYS[2], op, #ids)
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

/** An argument of a script call. */
export type ScriptArg = string | number | Uint8Array;

/** One thread's entry in the append script's reply (see APPEND). */
export type AppendResult = number | number[];

/** The commands {@linkcode defineScripts} adds to a client. */
export interface ScriptCommands {
  /** `null`: a stale op (see OPS). */
  xpSbAppend(...args: ScriptArg[]): Promise<AppendResult[] | null>;
  xpSbDeleteThread(...args: ScriptArg[]): Promise<number | null>;
  xpSbListThreads(...args: ScriptArg[]): Promise<string[]>;
  xpSbClearThreads(...args: ScriptArg[]): Promise<number | null>;
  xpSbStats(...args: ScriptArg[]): Promise<[number, number, number]>;
  xpSbRegistrySet(...args: ScriptArg[]): Promise<number | null>;
  xpSbRegistrySetIfAbsent(...args: ScriptArg[]): Promise<string | null>;
  xpSbRegistryRefresh(...args: ScriptArg[]): Promise<number>;
  xpSbRegistryDelete(...args: ScriptArg[]): Promise<number | null>;
  xpSbRegistryList(...args: ScriptArg[]): Promise<string[]>;
  xpSbRegistryClear(...args: ScriptArg[]): Promise<number | null>;
}

/** Each script with its number of keys. */
const SCRIPTS: Record<
  keyof ScriptCommands,
  { lua: string; numberOfKeys: number }
> = {
  xpSbAppend: { lua: APPEND, numberOfKeys: 2 },
  xpSbDeleteThread: { lua: DELETE_THREAD, numberOfKeys: 3 },
  xpSbListThreads: { lua: LIST_THREADS, numberOfKeys: 1 },
  xpSbClearThreads: { lua: CLEAR_THREADS, numberOfKeys: 2 },
  xpSbStats: { lua: STATS, numberOfKeys: 2 },
  xpSbRegistrySet: { lua: REGISTRY_SET, numberOfKeys: 4 },
  xpSbRegistrySetIfAbsent: { lua: REGISTRY_SET_IF_ABSENT, numberOfKeys: 4 },
  xpSbRegistryRefresh: { lua: REGISTRY_REFRESH, numberOfKeys: 2 },
  xpSbRegistryDelete: { lua: REGISTRY_DELETE, numberOfKeys: 3 },
  xpSbRegistryList: { lua: REGISTRY_LIST, numberOfKeys: 1 },
  xpSbRegistryClear: { lua: REGISTRY_CLEAR, numberOfKeys: 2 },
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
    client.defineCommand(name, { lua, numberOfKeys });
  }
  return client as C & ScriptCommands;
}
