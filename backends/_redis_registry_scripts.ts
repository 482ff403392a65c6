// Owns the Lua scripts of the Redis backend's registry (chain <-> uuid pairs: set, set if absent, refresh, delete, list, clear) and the registry index's TTL; never registers a script, nor touches a thread's keys.
//
// Split from _redis_scripts.ts (issue 9: no library file over about 700
// lines), which still registers these under their xpSbRegistry* names (see
// SCRIPTS there); what its opening comment says of keys, server time and op
// records holds here. A pair is two keys (the chain's, the uuid's) and an
// entry of the registry index `T:reg`, scored by the pair's absolute expiry
// (one PXAT / PEXPIREAT for all three; +inf for a persistent pair).

import { NOW, OPS } from "./_redis_lua.ts";

/**
 * The registry index's own TTL: it lives as long as its longest-lived pair
 * (backends with another ttlMs may share the prefix, so the last write's
 * expiry is not always the latest), persistent while it holds a persistent
 * pair.
 */
const SETTLE_REGISTRY = `
local function settle_registry(index)
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')[2]
  if not last then return end
  if last == 'inf' then
    redis.call('PERSIST', index)
  else
    redis.call('PEXPIREAT', index, string.format('%d', tonumber(last)))
  end
end
`;

/** Shared body of registrySet and registrySetIfAbsent: maps ARGV[2] <-> ARGV[3]. */
const MAP_PAIR = `${NOW}${OPS}${SETTLE_REGISTRY}
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
  settle_registry(KEYS[1])
end
`;

/**
 * Maps a chain to a uuid both ways, unmapping their former partners.
 * KEYS[1] the registry index, KEYS[2] the chain's key, KEYS[3] the uuid's
 * key, KEYS[4] the op records; ARGV[1] ttlMs, ARGV[2] chain, ARGV[3] uuid,
 * ARGV[4] the chain key prefix, ARGV[5] the uuid key prefix, ARGV[6] the op
 * header. Returns 1.
 */
export const REGISTRY_SET: string = `${MAP_PAIR}
local op = op_begin(KEYS[4], ARGV[6])
if op and op.done then return op_end(KEYS[4], op, op.replay) end
map_pair()
return op_end(KEYS[4], op, 1)
`;

/**
 * As REGISTRY_SET, only if the chain is unmapped. Returns the uuid the chain
 * maps to afterwards.
 */
export const REGISTRY_SET_IF_ABSENT: string = `${MAP_PAIR}
local op = op_begin(KEYS[4], ARGV[6])
if op and op.done then return op_end(KEYS[4], op, op.replay) end
local current = redis.call('GET', KEYS[2])
if current then return op_end(KEYS[4], op, current) end
map_pair()
return op_end(KEYS[4], op, ARGV[3])
`;

/**
 * Refreshes a uuid's pair, both keys and its index entry, as if it had just
 * been written (expiry now + ttlMs, or persistent with ttlMs = 0), in one
 * step. KEYS[1] the registry index, KEYS[2] the uuid's key; ARGV[1] ttlMs,
 * ARGV[2] the chain key prefix, ARGV[3] the uuid. Returns 1 if it was
 * mapped, else 0. (No op record: running it twice refreshes twice.)
 */
export const REGISTRY_REFRESH: string = `${NOW}${SETTLE_REGISTRY}
local chain = redis.call('GET', KEYS[2])
if not chain then return 0 end
local chain_key = ARGV[2] .. chain
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  local expiry = now_ms() + ttl
  redis.call('PEXPIREAT', KEYS[2], expiry)
  redis.call('PEXPIREAT', chain_key, expiry)
  redis.call('ZADD', KEYS[1], expiry, ARGV[3])
else
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', chain_key)
  redis.call('ZADD', KEYS[1], '+inf', ARGV[3])
end
settle_registry(KEYS[1])
return 1
`;

/**
 * Removes a uuid's pair. KEYS[1] the registry index, KEYS[2] the uuid's key,
 * KEYS[3] the op records; ARGV[1] the uuid, ARGV[2] the chain key prefix,
 * ARGV[3] the op header. Returns 1 if it was mapped.
 */
export const REGISTRY_DELETE: string = `${OPS}${SETTLE_REGISTRY}
local op = op_begin(KEYS[3], ARGV[3])
if op and op.done then return op_end(KEYS[3], op, op.replay) end
local chain = redis.call('GET', KEYS[2])
if not chain then return op_end(KEYS[3], op, 0) end
redis.call('DEL', KEYS[2], ARGV[2] .. chain)
redis.call('ZREM', KEYS[1], ARGV[1])
settle_registry(KEYS[1])
return op_end(KEYS[3], op, 1)
`;

/**
 * Lists the live pairs. KEYS[1] the registry index; ARGV[1] the uuid key
 * prefix. Returns [uuid, chain, uuid, chain, ...].
 */
export const REGISTRY_LIST: string = `${NOW}
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
 * Removes every pair of the tenant. KEYS[1] the registry index, KEYS[2] the
 * op records; ARGV[1] the chain key prefix, ARGV[2] the uuid key prefix,
 * ARGV[3] the op header. Returns the pairs removed.
 */
export const REGISTRY_CLEAR: string = `${OPS}
local op = op_begin(KEYS[2], ARGV[3])
if op and op.done then return op_end(KEYS[2], op, op.replay) end
local uuids = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #uuids do
  local chain = redis.call('GET', ARGV[2] .. uuids[i])
  if chain then redis.call('DEL', ARGV[1] .. chain) end
  redis.call('DEL', ARGV[2] .. uuids[i])
end
redis.call('DEL', KEYS[1])
return op_end(KEYS[2], op, #uuids)
`;
