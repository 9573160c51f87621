-- apply_batch.lua: one batch of window increments with the offset fence, checkpoint and state delta of each
-- partition it covers, applied atomically. Redis runs a script without interleaving other commands; if any increment would
-- overflow a signed 64-bit total, every slot already written is restored from its snapshot and the
-- script returns an error, so a refused batch changes nothing.
--
-- A slot is a string of big-endian signed 64-bit integers (BITFIELD i64), one per field; a field's
-- position in it comes from the comparison's field registry (hash name -> index, append-only).
--
-- KEYS[1]              set of models
-- per meta entry:      the model's set of comparison ids, the comparison's meta hash
-- per comparison:      the comparison's field registry, then its slot keys
-- per part (last):     fence hash of (fence name, partition): fields "offset", "checkpoint";
--                      state hash of earlier versions; state log (a list of state log records)
--
-- ARGV: number of parts, then per part: offset, "1"/"0" (store/delete checkpoint), checkpoint bytes,
--       expected fence offset ("" = none: only require offset > stored; "-1" = no fence stored yet),
--       state mode ("0" none, "1" append the record, "2" replace the state by the record: a compaction),
--       and (modes 1 and 2) the state log record (streams/join/state.py StateLog);
--       then the number of meta entries, then per entry: model, comparison id, first_event_ms, last_event_ms,
--       number of comparisons, then per comparison: its field names joined by "\n", number of slots,
--       then per slot: expire_at_s, "<name position>:<increment>;" repeated (positions 1-based).
--
-- Returns 1 when applied, 0 when a fence refuses (nothing changed): its stored fence is already >= its
-- offset, or an expected offset is given and the stored fence (-1 if none) is not it. Every part's fence
-- must admit: the parts (the partitions of one worker's batch) apply together or not at all.
-- Increments stay strings until BITFIELD parses them: Lua numbers are doubles and would round.

local CHUNK = 1000 -- ops per call: unpack() of more than ~8000 values overflows the Lua C stack

local cursor = 0
local function arg()
  cursor = cursor + 1
  return ARGV[cursor]
end

local parts = {}
for p = 1, tonumber(arg()) do
  local part = {offset = arg(), keep = arg(), checkpoint = arg(), expected = arg(), mode = arg()}
  if part.mode ~= '0' then
    part.record = arg()
  end
  parts[p] = part
end
local partkeys = #KEYS - 3 * #parts -- the parts' keys (fence, state hash, state log) come last
for p, part in ipairs(parts) do
  local stored = redis.call('HGET', KEYS[partkeys + 3 * p - 2], 'offset')
  if part.expected ~= '' then
    if tonumber(stored or '-1') ~= tonumber(part.expected) then
      return 0
    end
  elseif stored and tonumber(stored) >= tonumber(part.offset) then
    return 0
  end
end

local metas = {}
for i = 1, tonumber(arg()) do
  metas[i] = {arg(), arg(), arg(), arg()} -- model, comparison id, first_event_ms, last_event_ms
end

local written = {} -- {key, snapshot or false}: restored if a later slot overflows
local registered = {} -- {registry, names...}: removed on overflow
local expiries = {}

local function undo()
  for _, w in ipairs(written) do
    if w[2] then
      redis.call('SET', w[1], w[2], 'KEEPTTL')
    else
      redis.call('DEL', w[1])
    end
  end
  for _, r in ipairs(registered) do
    for i = 2, #r, CHUNK do
      redis.call('HDEL', r[1], unpack(r, i, math.min(i + CHUNK - 1, #r)))
    end
  end
end

local k = 2 + 2 * #metas
for _ = 1, tonumber(arg()) do
  local registry = KEYS[k]
  k = k + 1
  local names = {}
  for name in string.gmatch(arg(), '[^\n]+') do
    names[#names + 1] = name
  end
  local index, new = {}, {}
  local next_index = redis.call('HLEN', registry)
  for i = 1, #names, CHUNK do
    local found = redis.call('HMGET', registry, unpack(names, i, math.min(i + CHUNK - 1, #names)))
    for j, v in ipairs(found) do
      if v then
        index[i + j - 1] = v
      else
        index[i + j - 1] = tostring(next_index)
        new[#new + 1] = names[i + j - 1]
        new[#new + 1] = index[i + j - 1]
        next_index = next_index + 1
      end
    end
  end
  if #new > 0 then
    local undo_names = {registry}
    for i = 1, #new, 2 do
      undo_names[#undo_names + 1] = new[i]
    end
    registered[#registered + 1] = undo_names
    for i = 1, #new, 2 * CHUNK do
      redis.call('HSET', registry, unpack(new, i, math.min(i + 2 * CHUNK - 1, #new)))
    end
  end
  for _ = 1, tonumber(arg()) do
    local key = KEYS[k]
    k = k + 1
    expiries[#expiries + 1] = {key, arg()}
    local ops, fields = {}, {}
    for at, inc in string.gmatch(arg(), '(%d+):(%-?%d+);') do
      local n = #ops
      ops[n + 1], ops[n + 2], ops[n + 3], ops[n + 4] = 'INCRBY', 'i64', '#' .. index[tonumber(at)], inc
      fields[#fields + 1] = names[tonumber(at)]
    end
    written[#written + 1] = {key, redis.call('GET', key)}
    for i = 1, #ops, 4 * CHUNK do
      local last = math.min(i + 4 * CHUNK - 1, #ops)
      local res = redis.call('BITFIELD', key, 'OVERFLOW', 'FAIL', unpack(ops, i, last))
      for j, v in ipairs(res) do
        if not v then
          undo()
          return redis.error_reply('OVERFLOW ' .. key .. ' field ' .. fields[(i - 1) / 4 + j] ..
            ': total would leave signed 64 bits; nothing from this batch was applied')
        end
      end
    end
  end
end

for _, e in ipairs(expiries) do
  -- Absolute, event-time anchored expiry: idempotent, and a slot already past it is deleted at once.
  redis.call('EXPIREAT', e[1], e[2])
end
for i, m in ipairs(metas) do
  local model, cid, first, last = m[1], m[2], m[3], m[4]
  redis.call('SADD', KEYS[1], model)
  redis.call('SADD', KEYS[2 * i], cid)
  local meta = KEYS[1 + 2 * i]
  redis.call('HSETNX', meta, 'model', model)
  local cur = redis.call('HMGET', meta, 'first_ms', 'last_ms')
  if not cur[1] or tonumber(first) < tonumber(cur[1]) then
    redis.call('HSET', meta, 'first_ms', first)
  end
  if not cur[2] or tonumber(last) > tonumber(cur[2]) then
    redis.call('HSET', meta, 'last_ms', last)
  end
end
-- Per part: its state, one record appended to its log whatever its size (the stores never look inside it;
-- a compaction first drops the old log and the hash of earlier versions: UNLINK frees them off the main
-- thread), then its fence and checkpoint.
for p, part in ipairs(parts) do
  local fence, hash, log = KEYS[partkeys + 3 * p - 2], KEYS[partkeys + 3 * p - 1], KEYS[partkeys + 3 * p]
  if part.mode ~= '0' then
    if part.mode == '2' then
      redis.call('UNLINK', hash, log)
    end
    redis.call('RPUSH', log, part.record)
  end
  redis.call('HSET', fence, 'offset', part.offset)
  if part.keep == '1' then
    redis.call('HSET', fence, 'checkpoint', part.checkpoint)
  else
    redis.call('HDEL', fence, 'checkpoint')
  end
end
return 1
