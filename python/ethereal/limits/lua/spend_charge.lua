-- ethereal spend charge (function ethereal_spend_charge_v4): moves a spender's cap counters outside any
-- request (Message Batches). KEYS 1: the P hash of admit.lua's spender state.
-- ARGV  1 check (1: refuse when a counter's spend + the input in flight + this exceeds its cap)
--       2 micro-USD (signed)  3 state ttl ms  4 hold id ('' = none)  5 release (1: give back the hold
--       named by 4 from the counters it was taken in, before anything else)
--       6 number of caps, then 2 per cap: counter field, cap
-- Returns {code, detail}: 0 done, 8 counters to seed (detail "1,3"), 9 a cap spent (detail "2").
-- A hold ("b:<id>" = "micro field field...") remembers where a batch's estimate was counted, so its
-- settle gives it back there (a batch created yesterday and settled today). Unseeded counters are
-- not moved unless checked (their seed reads the database, unsettled batches' holds included).
local P = KEYS[1]
local check, micro, hold = ARGV[1] == '1', tonumber(ARGV[2]), ARGV[4]
local n = tonumber(ARGV[6])
if ARGV[5] == '1' and hold ~= '' then
  local h = redis.call('HGET', P, 'b:' .. hold)
  if h then
    local amount, fields = string.match(h, '^([^ ]*) ?(.*)$')
    for f in string.gmatch(fields, '[^ ]+') do
      if redis.call('HEXISTS', P, 'S|' .. f) == 1 then redis.call('HINCRBY', P, f, 0 - tonumber(amount)) end
    end
    redis.call('HDEL', P, 'b:' .. hold)
  end
end
local need, over = {}, {}
local hm = tonumber(redis.call('HGET', P, 'hm')) or 0
for i = 1, n do
  local f, cap = ARGV[5 + i * 2], tonumber(ARGV[6 + i * 2])
  local v = redis.call('HMGET', P, f, 'S|' .. f)
  if not v[2] then
    need[#need + 1] = i
  elseif check and (tonumber(v[1]) or 0) + hm + micro > cap then
    over[#over + 1] = i
  end
end
if check and #need > 0 then return {8, table.concat(need, ',')} end
if #over > 0 then return {9, table.concat(over, ',')} end
local counted = {}
for i = 1, n do
  local f = ARGV[5 + i * 2]
  if micro ~= 0 and redis.call('HEXISTS', P, 'S|' .. f) == 1 then
    redis.call('HINCRBY', P, f, micro)
    counted[#counted + 1] = f
  end
end
if ARGV[5] ~= '1' and hold ~= '' and micro ~= 0 then
  redis.call('HSET', P, 'b:' .. hold, micro .. ' ' .. table.concat(counted, ' '))
end
redis.call('PEXPIRE', P, tonumber(ARGV[3]))
return {0, ''}
