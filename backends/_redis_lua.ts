// Owns the Lua fragments that the Redis backend's thread scripts and registry scripts share (server time, op records); never a whole script, nor a key name.
//
// Both _redis_scripts.ts (the buffer's scripts, and the table that registers
// every script) and _redis_registry_scripts.ts splice these in front of their
// own Lua, so they live here, below both: neither script module imports the
// other, and there is no import cycle. The text is spliced as is: a change
// here changes every script that uses it (and its SHA).

/** Server time in ms, and the expiry `ttl` ms from now (nil when ttl = 0). */
export const NOW: string = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`;

/**
 * Op records: what makes a retried script call apply once. Each backend
 * instance (a producer, with its own id) numbers its mutations (ops); a
 * mutation script records its reply under the op's number in the producer's
 * hash (T:p:<producer>), in the same atomic step as its writes, and a call
 * whose op is recorded returns the recorded reply instead of running again.
 *
 * The header (one ARGV) is "" (no record: the backend does not retry) or
 * "seq floor keepMs refresh ack ack ...": `seq` the op's number; `floor` the
 * lowest op of the producer still awaiting its outcome (every op below it
 * is settled: answered, or given up); `keepMs` the hash's TTL, set when the
 * hash is new or `refresh` is 1 (the backend asks every few seconds: one
 * command less per op); the acks, ops below the floor whose records are no
 * longer needed (sent in batches). The hash keeps "f" =
 * the highest floor seen: a call of an op below it (a copy that reached the
 * server late, after its op was settled and its record dropped) is stale and
 * does nothing (reply nil). A replayed op still writes "f", so that a WAIT
 * after it waits for what it replays.
 */
export const OPS: string = `
local function op_begin(records, header)
  if header == '' then return nil end
  local seq, floor, keep, refresh, acks =
    string.match(header, '^(%d+) (%d+) (%d+) ([01])(.*)$')
  local got = redis.call('HMGET', records, 'f', seq)
  local op = { seq = seq, floor = tonumber(floor), keep = keep, acks = acks,
    refresh = refresh == '1' }
  local stored = tonumber(got[1])
  if not stored then
    op.new = true
  elseif stored > op.floor then
    op.floor = stored
  end
  if got[2] then
    op.done = true
    op.replay = cmsgpack.unpack(got[2])
  elseif stored and tonumber(seq) < stored then
    op.done = true
    op.stale = true
  end
  return op
end

local function op_end(records, op, reply)
  if not op then return reply end
  if op.stale then return false end
  if op.replay then
    redis.call('HSET', records, 'f', op.floor)
  else
    redis.call('HSET', records, op.seq, cmsgpack.pack(reply), 'f', op.floor)
  end
  if op.acks ~= '' then
    local acks = {}
    for ack in string.gmatch(op.acks, '%d+') do acks[#acks + 1] = ack end
    redis.call('HDEL', records, unpack(acks))
  end
  if op.refresh or op.new then redis.call('PEXPIRE', records, op.keep) end
  return reply
end
`;
