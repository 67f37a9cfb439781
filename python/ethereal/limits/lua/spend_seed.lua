-- ethereal spend seed (function ethereal_spend_seed_v4): a cap counter's spend from the database, the
-- first time it is used in its period (or after Redis lost it). KEYS as admit.lua's spender state:
-- 1 P hash, 2 Pz (unused), 3 Ps settled ids.
-- ARGV  1 counter field  2 base micro (rows of the period that ended before the watermark, plus what
--       unsettled batches hold)  3 watermark ms  4 held until ms (server time; 0 = not held)
--       5 state ttl ms  6 number of recent rows, then 2 per row that ended at or after the watermark:
--       request id, micro
-- Returns 1 when it seeded, 0 when the counter was seeded already.
--
-- Exact as seed.lua: a row read here counts once; a settle parked before the seed ("p:<rid>", naming
-- the counters it was for) counts when its request ended at or after the watermark and its row was
-- not read; a settle arriving later counts unless its request ended before the watermark (settle.lua)
-- or its id was read here (remembered in Ps).
local P, Ps = KEYS[1], KEYS[3]
local f = ARGV[1]
if redis.call('HEXISTS', P, 'S|' .. f) == 1 then return 0 end
local sm = tonumber(ARGV[2])
local w, hold, state_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local read = {}
for i = 0, n - 1 do
  read[ARGV[7 + i * 2]] = true
  sm = sm + tonumber(ARGV[8 + i * 2])
end
local ids = redis.call('ZRANGE', Ps, 0, -1)
for _, rid in ipairs(ids) do
  local p = redis.call('HGET', P, 'p:' .. rid)
  if p then
    local cost, ended, fields = string.match(p, '^([^,]*),([^,]*),(.*)$')
    if tonumber(ended) >= w and not read[rid] then
      for g in string.gmatch(fields, '[^ ]+') do
        if g == f then sm = sm + tonumber(cost) end
      end
    end
  end
end
for i = 0, n - 1 do
  local rid = ARGV[7 + i * 2]
  if not redis.call('ZSCORE', Ps, rid) then redis.call('ZADD', Ps, w, rid) end
end
redis.call('HINCRBY', P, f, sm)
redis.call('HSET', P, 'S|' .. f, 1, 'W|' .. f, w)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if hold > now then redis.call('HSET', P, 'rec', hold) end
redis.call('PEXPIRE', P, state_ttl)
if n > 0 then redis.call('PEXPIRE', Ps, state_ttl) end
return 1
