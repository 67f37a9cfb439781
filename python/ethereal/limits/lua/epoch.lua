-- ethereal epoch (function ethereal_epoch_v4): tells a replica whether this Redis server lost its
-- state since the replica last looked. KEYS[1] a hash on this server ({id, hold}).
-- ARGV  1 a fresh id (used when the server has none)  2 the id the replica knows ('' = none yet)
--       3 hold ms
-- Returns {id, hold_until_ms, lost (0/1)}. A replica that knew another id (or saw none where it had
-- one) has found a loss: budgeted keys seeded until hold_until wait for every replica to re-announce
-- its requests in flight (restore.lua) and its recent settles (settle.lua, idempotent).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = KEYS[1]
local known = ARGV[2]
local v = redis.call('HMGET', k, 'id', 'hold')
local id, hold = v[1], tonumber(v[2]) or 0
local lost = 0
if not id then
  id = ARGV[1]
  redis.call('HSET', k, 'id', id, 'hold', 0)
end
if known ~= '' and known ~= id then
  lost = 1
  if hold < now + tonumber(ARGV[3]) then
    hold = now + tonumber(ARGV[3])
    redis.call('HSET', k, 'hold', hold)
  end
end
return {id, hold, lost}
