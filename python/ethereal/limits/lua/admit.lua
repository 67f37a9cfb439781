-- ethereal admit (library ethereal_limits_v4, function ethereal_admit_v4; key layout v1, shared with
-- the v1-v3 scripts so old and new replicas keep one set of counters during a rolling deploy).
-- One call per request: checks and reserves the key's budgets, concurrency and rolling windows, and
-- its person's spend limits (caps), atomically. A key's hash tag is its person's ({u:<owner>}, or
-- {k:<key_id>} for a key nobody owns), so the key's and the person's state are in one slot.
--
-- KEYS[1]  hash  budget + reservations: st/sm spent tokens/micro-USD (lifetime, seeded from the
--                database by seed.lua), ht/hm in-flight input reservations, ft/fm in-flight full
--                reservations (input + output allowance), "r:<rid>" = "in_t,in_m,full_t,full_m,admitted_ms",
--                seeded, w (seed watermark), rec (held until: a seed right after Redis lost its state
--                waits for every replica to re-announce what it had in flight), dur (moving average of
--                request durations, ms: the retry-after of a 429 caused by requests in flight)
-- KEYS[2]  zset  in-flight reservations: rid -> expiry (ms); its size is the concurrency
-- KEYS[3]  zset  settled request ids (settle.lua, seed.lua): not used here
-- KEYS[4+] hash  one per rolling window: "r<bucket>" requests, "t<bucket>" tokens
-- then, when there are caps (ARGV 10 > 0), the spender's (a person's, or a shared pool's) state:
-- KEYS[4+nwin] hash  P: one field per cap counter (micro-USD spent in a period: "<period>:<start>"
--                    for the person, "k:<key_id>:<period>:<start>" for one key), "S|<field>" seeded,
--                    "W|<field>" its seed watermark (ms), fm/hm in-flight full/input reservations,
--                    "r:<rid>" = "in_m,full_m,admitted_ms", dur, rec (held after a loss), "p:<rid>" parked
-- KEYS[5+nwin] zset  Pz: the spender's requests in flight: rid -> expiry (ms)
-- KEYS[6+nwin] zset  Ps: settled request ids (settle.lua, spend_seed.lua)
-- ARGV  1 rid  2 in_tokens  3 allowance_tokens  4 in_micro  5 allowance_micro
--       6 budget_tokens  7 budget_micro  8 max_concurrency   (-1 = none)
--       9 reservation ttl ms  10 number of caps  11-12 unused (0)  13 state ttl ms
--       14 number of windows, then 4 per window: window_ms bucket_ms max_requests max_tokens (-1 = none)
--       then 2 per cap: counter field, cap (micro-USD)
-- Returns {code, retry_ms, req_limit, req_remaining, req_reset_ms, tok_limit, tok_remaining, tok_reset_ms,
--          now_ms, detail}; code 0 admitted, 1 needs seeding (seed.lua, then admit again), 2 token budget
--          spent, 3 micro-USD budget spent, 4 concurrency, 5 window requests, 6 window tokens (detail =
--          window number), 7 held by requests in flight (detail -1 token budget, -2 micro-USD budget, i
--          window i, -3 a cap), 8 caps to seed (element 11: their numbers, "1,3"), 9 over a cap
--          (element 11: the caps spent, "2"). Admitted with caps: element 11 is each cap's spend so far
--          ("123,4567"), for the utilisation headers and threshold alerts.
--
-- Caps (spend limits): refused (9) when the period's spend + this request's input exceeds a cap;
-- when only its output allowance or the spender's requests in flight do not fit, held (7) if any
-- request of the spender is in flight, else admitted alone.
--
-- Hard budgets: admitted when spent + every in-flight reservation (input + output allowance) + this
-- request's input and allowance fits. When it does not: 2/3 if spent + its input alone is over the
-- budget (402); 7 if something else is in flight (429, retry when they settle); else it is admitted
-- alone, so the budget is exceeded by at most that one request's output. Token windows follow the
-- same rule (their ceiling is a budget per window).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b, z = KEYS[1], KEYS[2]
local rid = ARGV[1]
local in_t, allow_t = tonumber(ARGV[2]), tonumber(ARGV[3])
local in_m, allow_m = tonumber(ARGV[4]), tonumber(ARGV[5])
local bud_t, bud_m, conc = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local res_ttl, state_ttl = tonumber(ARGV[9]), tonumber(ARGV[13])
local nwin = tonumber(ARGV[14])
local ncap = tonumber(ARGV[10])
local P, Pz = KEYS[4 + nwin], KEYS[5 + nwin]
local cbase = 14 + nwin * 4
local budgeted = bud_t >= 0 or bud_m >= 0
local reserving = budgeted or conc >= 0
for i = 1, nwin do
  if tonumber(ARGV[14 + (i - 1) * 4 + 4]) >= 0 then reserving = true end
end

local function release(id)
  local r = redis.call('HGET', b, 'r:' .. id)
  if r then
    local a = {}
    for n in string.gmatch(r, '[^,]+') do a[#a + 1] = tonumber(n) end
    redis.call('HINCRBY', b, 'ht', 0 - a[1])
    redis.call('HINCRBY', b, 'hm', 0 - a[2])
    redis.call('HINCRBY', b, 'ft', 0 - a[3])
    redis.call('HINCRBY', b, 'fm', 0 - a[4])
    redis.call('HDEL', b, 'r:' .. id)
  end
  redis.call('ZREM', z, id)
end

if reserving then
  -- reservations of requests that never settled (a replica died): released after their ttl
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(expired) do release(id) end
end
if budgeted and redis.call('HEXISTS', b, 'seeded') == 0 then return {1, 0, -1, -1, 0, -1, -1, 0, now, 0} end

-- spent (st/sm), held by requests in flight: full reservations (ft/fm) and their input part (ht)
local st, sm, ft, fm, ht = 0, 0, 0, 0, 0
if reserving then
  local h = redis.call('HMGET', b, 'st', 'sm', 'ft', 'fm', 'ht', 'rec')
  st, sm = tonumber(h[1]) or 0, tonumber(h[2]) or 0
  ft, fm, ht = tonumber(h[3]) or 0, tonumber(h[4]) or 0, tonumber(h[5]) or 0
  local rec = tonumber(h[6])
  if budgeted and rec and now < rec then
    -- seeded right after Redis lost its state: the other replicas' requests in flight are not
    -- re-announced yet, so nothing is admitted until they are
    return {7, math.max(100, rec - now), -1, -1, 0, -1, -1, 0, now, bud_m >= 0 and -2 or -1}
  end
end
local busy = ft > 0 or fm > 0  -- another request holds budget
local held = nil  -- what does not fit only because of requests in flight

if budgeted then
  if bud_t >= 0 then
    if st >= bud_t or st + in_t > bud_t then return {2, 0, -1, -1, 0, -1, -1, 0, now, bud_t - st} end
    if st + ft + in_t + allow_t > bud_t then held = -1 end
  end
  if bud_m >= 0 then
    if sm >= bud_m or sm + in_m > bud_m then return {3, 0, -1, -1, 0, -1, -1, 0, now, bud_m - sm} end
    if held == nil and sm + fm + in_m + allow_m > bud_m then held = -2 end
  end
end

-- caps: the spender's period counters (seeded from the database by spend_seed.lua)
local cheld, pbusy, spent_list = false, false, nil
if ncap > 0 then
  local pexp = redis.call('ZRANGEBYSCORE', Pz, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(pexp) do
    local r = redis.call('HGET', P, 'r:' .. id)
    if r then
      local a1, a2 = string.match(r, '^([^,]*),([^,]*)')
      redis.call('HINCRBY', P, 'hm', 0 - tonumber(a1))
      redis.call('HINCRBY', P, 'fm', 0 - tonumber(a2))
      redis.call('HDEL', P, 'r:' .. id)
    end
    redis.call('ZREM', Pz, id)
  end
  local fields = {'fm', 'rec'}
  for i = 1, ncap do
    local f = ARGV[cbase + (i - 1) * 2 + 1]
    fields[#fields + 1] = f
    fields[#fields + 1] = 'S|' .. f
  end
  local v = redis.call('HMGET', P, unpack(fields))
  local need = {}
  for i = 1, ncap do
    if not v[2 + i * 2] then need[#need + 1] = i end
  end
  if #need > 0 then return {8, 0, -1, -1, 0, -1, -1, 0, now, 0, table.concat(need, ',')} end
  local prec = tonumber(v[2])
  if prec and now < prec then return {7, math.max(100, prec - now), -1, -1, 0, -1, -1, 0, now, -3} end
  local pfm = tonumber(v[1]) or 0
  local over = {}
  spent_list = {}
  for i = 1, ncap do
    local cap = tonumber(ARGV[cbase + i * 2])
    local spent = tonumber(v[1 + i * 2]) or 0
    spent_list[i] = spent
    if spent >= cap or spent + in_m > cap then
      over[#over + 1] = i
    elseif spent + pfm + in_m + allow_m > cap then
      cheld = true
    end
  end
  if #over > 0 then return {9, 0, -1, -1, 0, -1, -1, 0, now, 0, table.concat(over, ',')} end
  pbusy = redis.call('ZCARD', Pz) > 0
end

if conc >= 0 and redis.call('ZCARD', z) >= conc then
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  local wait = 1000
  if first[2] then wait = math.min(1000, math.max(1, tonumber(first[2]) - now)) end
  return {4, wait, -1, -1, 0, -1, -1, 0, now, conc}
end

-- rolling windows: bucket i covers [i*bms, (i+1)*bms); a window of nb buckets counts buckets
-- cur-nb .. cur, so nothing leaves it before a full window has passed (never early, at most one
-- bucket late). Fields: r<i>/t<i> per bucket, R/T their sums, lo the oldest bucket kept; buckets
-- leaving the window are subtracted as they go, so an admit costs O(1) per window.
local function advance(key, low, nb, ttl)
  local v = redis.call('HMGET', key, 'R', 'T', 'lo')
  local R, T, lo = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3])
  if lo == nil or low - lo > nb then
    if lo ~= nil then redis.call('DEL', key) end
    R, T = 0, 0
    redis.call('HSET', key, 'R', 0, 'T', 0, 'lo', low)
    redis.call('PEXPIRE', key, ttl)
  elseif lo < low then
    local fields = {}
    for i = lo, low - 1 do
      fields[#fields + 1] = 'r' .. i
      fields[#fields + 1] = 't' .. i
    end
    local vals = redis.call('HMGET', key, unpack(fields))
    for j = 1, #vals, 2 do
      R = R - (tonumber(vals[j]) or 0)
      T = T - (tonumber(vals[j + 1]) or 0)
    end
    redis.call('HDEL', key, unpack(fields))
    redis.call('HSET', key, 'R', R, 'T', T, 'lo', low)
  end
  return R, T
end

local function wait_for(key, kind, low, cur, nb, bms, used, need, max, wms)
  -- ms until enough of the oldest buckets leave the window for `need` more to fit (refusals only)
  local freed = 0
  for idx = low, cur do
    freed = freed + (tonumber(redis.call('HGET', key, kind .. idx)) or 0)
    if used - freed + need <= max then return (idx + nb + 1) * bms - now end
  end
  return wms
end

local req_limit, req_rem, req_reset = -1, -1, 0
local tok_limit, tok_rem, tok_reset = -1, -1, 0
local wins = {}
local allowances = ft - ht  -- output allowances in flight (their inputs are in the windows already)
for i = 1, nwin do
  local base = 14 + (i - 1) * 4
  local wms, bms = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local max_r, max_t = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local key = KEYS[3 + i]
  local nb = math.floor(wms / bms)
  local cur = math.floor(now / bms)
  local low = cur - nb
  local used_r, used_t = advance(key, low, nb, wms + 2 * bms)
  if max_r >= 0 and used_r + 1 > max_r then
    return {5, wait_for(key, 'r', low, cur, nb, bms, used_r, 1, max_r, wms), max_r, 0, now + wms, -1, -1, 0, now, i}
  end
  if max_t >= 0 and (used_t >= max_t or used_t + in_t > max_t) then
    return {6, wait_for(key, 't', low, cur, nb, bms, used_t, in_t, max_t, wms), -1, -1, 0, max_t,
            math.max(0, max_t - used_t), now + wms, now, i}
  end
  if held == nil and max_t >= 0 and used_t + allowances + in_t + allow_t > max_t then held = i end
  local reset = (cur + nb + 1) * bms
  if max_r >= 0 and (req_limit < 0 or max_r - used_r - 1 < req_rem) then
    req_limit, req_rem, req_reset = max_r, max_r - used_r - 1, reset
  end
  if max_t >= 0 and (tok_limit < 0 or max_t - used_t - in_t < tok_rem) then
    tok_limit, tok_rem, tok_reset = max_t, max_t - used_t - in_t, reset
  end
  wins[i] = {key, cur, wms + 2 * bms}
end

if held ~= nil and busy then
  -- retry when the oldest request in flight is expected to end (the key's average duration), 0.1-60 s
  local avg = tonumber(redis.call('HGET', b, 'dur')) or 1000
  local age = 0
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if first[1] then
    local r = redis.call('HGET', b, 'r:' .. first[1])
    local at = r and tonumber(string.match(r, '^[^,]*,[^,]*,[^,]*,[^,]*,([^,]+)'))
    if at == nil then at = tonumber(first[2]) - res_ttl end
    age = now - at
  end
  return {7, math.max(100, math.min(60000, avg - age)), -1, -1, 0, -1, -1, 0, now, held}
end
-- (held but nothing in flight: admitted alone)
if cheld and pbusy then
  -- a cap held by the spender's requests in flight: retry when the oldest is expected to end
  local avg = tonumber(redis.call('HGET', P, 'dur')) or 1000
  local age = 0
  local first = redis.call('ZRANGE', Pz, 0, 0, 'WITHSCORES')
  if first[1] then
    local r = redis.call('HGET', P, 'r:' .. first[1])
    local at = r and tonumber(string.match(r, '^[^,]*,[^,]*,([^,]+)'))
    if at == nil then at = tonumber(first[2]) - res_ttl end
    age = now - at
  end
  return {7, math.max(100, math.min(60000, avg - age)), -1, -1, 0, -1, -1, 0, now, -3}
end

-- admitted: every check passed, now write
for i = 1, nwin do
  local w = wins[i]
  -- the hash outlives its newest bucket by a window: (re)set the expiry when a bucket starts
  if redis.call('HINCRBY', w[1], 'r' .. w[2], 1) == 1 then redis.call('PEXPIRE', w[1], w[3]) end
  redis.call('HINCRBY', w[1], 'R', 1)
  if in_t > 0 then
    redis.call('HINCRBY', w[1], 't' .. w[2], in_t)
    redis.call('HINCRBY', w[1], 'T', in_t)
  end
end
if reserving then
  redis.call('HSET', b, 'r:' .. rid,
             in_t .. ',' .. in_m .. ',' .. (in_t + allow_t) .. ',' .. (in_m + allow_m) .. ',' .. now)
  redis.call('HINCRBY', b, 'ht', in_t)
  redis.call('HINCRBY', b, 'hm', in_m)
  redis.call('HINCRBY', b, 'ft', in_t + allow_t)
  redis.call('HINCRBY', b, 'fm', in_m + allow_m)
  redis.call('ZADD', z, now + res_ttl, rid)
  redis.call('PEXPIRE', b, state_ttl)
  redis.call('PEXPIRE', z, res_ttl + 60000)
end
if ncap > 0 then
  redis.call('HSET', P, 'r:' .. rid, in_m .. ',' .. (in_m + allow_m) .. ',' .. now)
  redis.call('HINCRBY', P, 'hm', in_m)
  redis.call('HINCRBY', P, 'fm', in_m + allow_m)
  redis.call('ZADD', Pz, now + res_ttl, rid)
  redis.call('PEXPIRE', P, state_ttl)
  redis.call('PEXPIRE', Pz, res_ttl + 60000)
  return {0, 0, req_limit, req_rem, req_reset, tok_limit, tok_rem, tok_reset, now, 0, table.concat(spent_list, ',')}
end
return {0, 0, req_limit, req_rem, req_reset, tok_limit, tok_rem, tok_reset, now, 0}
