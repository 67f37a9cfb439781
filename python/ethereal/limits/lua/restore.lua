-- ethereal restore (function ethereal_restore_v4, key layout v1): a replica re-announces the
-- reservations it holds for a key after Redis lost its state (they were admitted: they are put back
-- whatever the budget says, so what they hold is not given to others). KEYS as in admit.lua (1
-- budget hash, 2 in-flight zset, 3 settled ids).
-- ARGV  1 reservation ttl ms  2 state ttl ms  3 number of reservations, then 6 per reservation:
--       rid in_t in_m full_t full_m admitted_ms
-- Returns the number put back (one already there, or settled meanwhile, is left alone).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b, z, s = KEYS[1], KEYS[2], KEYS[3]
local res_ttl, state_ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local put = 0
for i = 0, n - 1 do
  local base = 3 + i * 6
  local rid = ARGV[base + 1]
  if not redis.call('ZSCORE', s, rid) and redis.call('HEXISTS', b, 'r:' .. rid) == 0 then
    local in_t, in_m = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    local full_t, full_m = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
    redis.call('HSET', b, 'r:' .. rid, in_t .. ',' .. in_m .. ',' .. full_t .. ',' .. full_m .. ',' .. ARGV[base + 6])
    redis.call('HINCRBY', b, 'ht', in_t)
    redis.call('HINCRBY', b, 'hm', in_m)
    redis.call('HINCRBY', b, 'ft', full_t)
    redis.call('HINCRBY', b, 'fm', full_m)
    redis.call('ZADD', z, now + res_ttl, rid)
    put = put + 1
  end
end
if put > 0 then
  redis.call('PEXPIRE', b, state_ttl)
  redis.call('PEXPIRE', z, res_ttl + 60000)
end
return put
