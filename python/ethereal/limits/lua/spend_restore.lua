-- ethereal spend restore (function ethereal_spend_restore_v4): a replica re-announces the cap
-- reservations it holds for a spender after Redis lost its state (restore.lua's counterpart for
-- admit.lua's spender state: they were admitted, so they are put back whatever the caps say).
-- KEYS  1 P hash  2 Pz  3 Ps
-- ARGV  1 reservation ttl ms  2 state ttl ms  3 number of reservations, then 4 per reservation:
--       rid in_m full_m admitted_ms
-- Returns the number put back (one already there, or settled meanwhile, is left alone).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local P, Pz, Ps = KEYS[1], KEYS[2], KEYS[3]
local res_ttl, state_ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local put = 0
for i = 0, n - 1 do
  local base = 3 + i * 4
  local rid = ARGV[base + 1]
  if not redis.call('ZSCORE', Ps, rid) and redis.call('HEXISTS', P, 'r:' .. rid) == 0 then
    local in_m, full_m = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    redis.call('HSET', P, 'r:' .. rid, in_m .. ',' .. full_m .. ',' .. ARGV[base + 4])
    redis.call('HINCRBY', P, 'hm', in_m)
    redis.call('HINCRBY', P, 'fm', full_m)
    redis.call('ZADD', Pz, now + res_ttl, rid)
    put = put + 1
  end
end
if put > 0 then
  redis.call('PEXPIRE', P, state_ttl)
  redis.call('PEXPIRE', Pz, res_ttl + 60000)
end
return put
