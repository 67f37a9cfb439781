-- ethereal settle (function ethereal_settle_v4, key layout v1): replaces a request's reservation by
-- what it really cost. KEYS as in admit.lua (1 budget hash, 2 in-flight zset, 3 settled ids, 4+ windows).
-- ARGV  1 rid (the request id)  2 tokens  3 cost_micro  4 admitted_ms  5 reserved input tokens (counted
--       in the windows at admit)  6 ended_ms (the gateway's clock, as the usage row's ended_at)
--       7 keep_ms (how long a settled id is remembered)  8 budgeted (0/1)  9 state ttl ms
--       10 number of windows, then 2 per window: window_ms bucket_ms
--       then the number of caps and their counter fields (admit.lua: the periods the request started
--       in); with caps, KEYS[4+nwin..6+nwin] are the spender's P hash, Pz and Ps (admit.lua)
-- Returns {spent_tokens, spent_micro} (-1 when the key's spend is not tracked here, -2 when this
-- request was counted already).
--
-- Idempotent per request id: a settle sent twice (retried after a Redis outage, re-announced by a
-- replica after Redis lost its state) counts once, and so does a request the seed already counted
-- from its usage row (seed.lua records the ids it read; rows that ended before the seed's watermark
-- `w` are in the seed's sum). Before the key is seeded a settle is parked ("p:<rid>"), for the seed
-- to count or drop by its row.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b, z, s = KEYS[1], KEYS[2], KEYS[3]
local rid = ARGV[1]
local tokens, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
local admitted, in_t = tonumber(ARGV[4]), tonumber(ARGV[5])
local ended, keep = tonumber(ARGV[6]), tonumber(ARGV[7])
local budgeted = ARGV[8] == '1'
local state_ttl, nwin = tonumber(ARGV[9]), tonumber(ARGV[10])

-- caps: release the spender's reservation and count the cost in each period counter, once per
-- request id (Ps); a counter not seeded yet parks the settle for spend_seed.lua ("p:<rid>")
local cb = 10 + nwin * 2
local ncap = tonumber(ARGV[cb + 1]) or 0
if ncap > 0 and rid ~= '' then
  local P, Pz, Ps = KEYS[4 + nwin], KEYS[5 + nwin], KEYS[6 + nwin]
  local pr = redis.call('HMGET', P, 'r:' .. rid, 'dur')
  if pr[1] then
    local a1, a2, a3 = string.match(pr[1], '^([^,]*),([^,]*),([^,]*)')
    redis.call('HINCRBY', P, 'hm', 0 - tonumber(a1))
    redis.call('HINCRBY', P, 'fm', 0 - tonumber(a2))
    redis.call('HDEL', P, 'r:' .. rid)
    if tonumber(a2) > tonumber(a1) then
      local d = math.max(0, now - tonumber(a3))
      local avg = tonumber(pr[2])
      if avg then d = math.floor(avg + (d - avg) / 4) end
      redis.call('HSET', P, 'dur', d)
    end
  end
  redis.call('ZREM', Pz, rid)
  if not redis.call('ZSCORE', Ps, rid) then
    local parked = nil
    for i = 1, ncap do
      local f = ARGV[cb + 1 + i]
      local g = redis.call('HMGET', P, 'S|' .. f, 'W|' .. f)
      if g[1] then
        if ended >= (tonumber(g[2]) or 0) then redis.call('HINCRBY', P, f, cost) end
      else
        parked = (parked and (parked .. ' ') or '') .. f
      end
    end
    if parked then redis.call('HSET', P, 'p:' .. rid, cost .. ',' .. ended .. ',' .. parked) end
    redis.call('ZADD', Ps, ended, rid)
    local old = redis.call('ZRANGEBYSCORE', Ps, '-inf', '(' .. (ended - keep), 'LIMIT', 0, 100)
    for _, id in ipairs(old) do
      redis.call('HDEL', P, 'p:' .. id)
      redis.call('ZREM', Ps, id)
    end
    redis.call('PEXPIRE', Ps, state_ttl)
  end
  redis.call('PEXPIRE', P, state_ttl)
end

local v = redis.call('HMGET', b, 'r:' .. rid, 'dur', 'seeded', 'w', 'tr')  -- one read for the whole hash
local r = v[1]
if r then
  local a = {}
  for n in string.gmatch(r, '[^,]+') do a[#a + 1] = tonumber(n) end
  redis.call('HINCRBY', b, 'ht', 0 - a[1])
  redis.call('HINCRBY', b, 'hm', 0 - a[2])
  redis.call('HINCRBY', b, 'ft', 0 - a[3])
  redis.call('HINCRBY', b, 'fm', 0 - a[4])
  redis.call('HDEL', b, 'r:' .. rid)
  if a[3] > a[1] then
    -- a request that held an output allowance: its duration feeds the moving average admit.lua
    -- gives as retry-after when the budget is held by requests in flight
    local d = math.max(0, now - admitted)
    local avg = tonumber(v[2])
    if avg then d = math.floor(avg + (d - avg) / 4) end
    redis.call('HSET', b, 'dur', d)
  end
end
redis.call('ZREM', z, rid)

local st, sm = -1, -1
if budgeted and rid ~= '' then
  -- remembered in one call: 0 when the id was there already (counted already)
  if redis.call('ZADD', s, 'NX', ended, rid) == 0 then return {-2, -2} end
  local w = tonumber(v[4])
  if v[3] and w and ended < w then return {-2, -2} end  -- its row is in the seed's sum
  -- the ids past keep_ms are dropped, and the set's expiry renewed, at most once a second per key
  -- ("tr": when next), not on every settle. Any settle a second after the last renewal renews it,
  -- so the set (renewed to a second past the state's ttl) never expires before the hash does.
  if now >= (tonumber(v[5]) or 0) then
    redis.call('ZREMRANGEBYSCORE', s, '-inf', '(' .. (ended - keep))
    redis.call('PEXPIRE', s, state_ttl + 1000)
    redis.call('HSET', b, 'tr', now + 1000)
  end
  if v[3] then
    st = redis.call('HINCRBY', b, 'st', tokens)
    sm = redis.call('HINCRBY', b, 'sm', cost)
  else
    redis.call('HSET', b, 'p:' .. rid, tokens .. ',' .. cost .. ',' .. ended)
  end
  redis.call('PEXPIRE', b, state_ttl)
end

-- windows: the admit counted the input estimate; correct it to the real total (same layout as
-- admit.lua: r<i>/t<i> buckets, R/T sums, lo the oldest bucket kept)
local delta = tokens - in_t
if delta ~= 0 then
  for i = 1, nwin do
    local wms, bms = tonumber(ARGV[10 + (i - 1) * 2 + 1]), tonumber(ARGV[10 + (i - 1) * 2 + 2])
    local key = KEYS[3 + i]
    local nb = math.floor(wms / bms)
    local cur = math.floor(now / bms)
    local low = cur - nb
    local aidx = math.floor(admitted / bms)
    local lo = tonumber(redis.call('HGET', key, 'lo'))
    local target = nil
    if lo ~= nil and aidx >= low and aidx >= lo then
      target = aidx
    elseif delta > 0 and lo ~= nil and cur - lo <= nb then
      target = cur  -- a request longer than the window: its extra tokens count from now
    end
    if target ~= nil then
      local x = redis.call('HINCRBY', key, 't' .. target, delta)
      local applied = delta
      if x < 0 then
        redis.call('HSET', key, 't' .. target, 0)
        applied = delta - x
      end
      if applied ~= 0 then redis.call('HINCRBY', key, 'T', applied) end
      redis.call('PEXPIRE', key, wms + 2 * bms)
    end
  end
end
return {st, sm}
