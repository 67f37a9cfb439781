-- ethereal spend charge (function ethereal_spend_charge_v4): moves a spender's cap counters by a signed
-- amount outside any request (Message Batches: the estimate held at create, checked; the real cost
-- at settle in the period it is settled in, the hold given back in the period it was taken in).
-- KEYS  1 P hash (admit.lua's spender state)
-- ARGV  1 check (1: refuse when a counter's spend + the input in flight + this exceeds its cap)
--       2 micro-USD (signed)  3 state ttl ms  4 number of caps, then 2 per cap: counter field, cap
-- Returns {code, detail}: 0 done, 8 counters to seed (detail "1,3"), 9 a cap spent (detail "2").
-- Unseeded and unchecked: nothing to move there (its seed reads the database).
local P = KEYS[1]
local check, micro, n = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[4])
local need, over = {}, {}
local hm = tonumber(redis.call('HGET', P, 'hm')) or 0
for i = 1, n do
  local f, cap = ARGV[3 + i * 2], tonumber(ARGV[4 + i * 2])
  local v = redis.call('HMGET', P, f, 'S|' .. f)
  if not v[2] then
    need[#need + 1] = i
  elseif check and (tonumber(v[1]) or 0) + hm + micro > cap then
    over[#over + 1] = i
  end
end
if check and #need > 0 then return {8, table.concat(need, ',')} end
if #over > 0 then return {9, table.concat(over, ',')} end
for i = 1, n do
  local f = ARGV[3 + i * 2]
  if redis.call('HEXISTS', P, 'S|' .. f) == 1 then redis.call('HINCRBY', P, f, micro) end
end
redis.call('PEXPIRE', P, tonumber(ARGV[3]))
return {0, ''}
