-- ethereal charge (library ethereal_limits_v4, function ethereal_charge_v4; key layout v1): moves a
-- key's spend by a signed amount outside any request.
-- Message Batches use it: the batch's estimated cost is charged (checked) at create and the
-- difference to the real cost when its items are metered. No window or concurrency slot is
-- touched: a batch runs outside the key's live traffic for hours.
-- KEYS[1]  the budget hash of admit.lua (st/sm spent, ft/fm in-flight full reservations, seeded)
-- ARGV  1 tokens  2 micro-USD (signed)  3 budget_tokens  4 budget_micro (-1 = none)
--       5 check (1: refuse when spent + every in-flight reservation + this exceeds the budget)
--       6-8 unused (0)  9 state ttl ms
-- Returns {code, spent_tokens, spent_micro}: code 0 done, 1 needs seeding (seed.lua, then charge
-- again), 2 token budget, 3 micro-USD budget. Unseeded and unchecked: nothing to move (the next
-- seed reads the database).
local b = KEYS[1]
local tokens, micro = tonumber(ARGV[1]), tonumber(ARGV[2])
local bud_t, bud_m = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('HEXISTS', b, 'seeded') == 0 then
  if ARGV[5] == '1' then return {1, 0, 0} end
  return {0, -1, -1}
end
if ARGV[5] == '1' then
  local v = redis.call('HMGET', b, 'st', 'sm', 'ft', 'fm')
  local st, sm = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  local ht, hm = tonumber(v[3]) or 0, tonumber(v[4]) or 0
  if bud_t >= 0 and st + ht + tokens > bud_t then return {2, st, sm} end
  if bud_m >= 0 and sm + hm + micro > bud_m then return {3, st, sm} end
end
local st = redis.call('HINCRBY', b, 'st', tokens)
local sm = redis.call('HINCRBY', b, 'sm', micro)
redis.call('PEXPIRE', b, tonumber(ARGV[9]))
return {0, st, sm}
