-- ethereal seed (function ethereal_seed_v4, key layout v1): a budgeted key's spend from the database,
-- the first time the key is seen after Redis lost its state (or ever). KEYS as in admit.lua (1 budget
-- hash, 3 settled ids; 2 unused).
-- ARGV  1 base tokens  2 base micro (the key's usage rows that ended before the watermark, plus what
--       its unsettled Message Batches hold)  3 watermark ms (the gateway's clock)  4 held until ms
--       (server time; 0 = not held)  5 keep_ms  6 state ttl ms  7 number of recent rows, then 3 per
--       row that ended at or after the watermark: request id, tokens, micro
-- Returns 1 when it seeded, 0 when the key was seeded already (another replica got there first).
--
-- Exact: every request counts once. Before the seed nothing is applied (settles are parked), so
-- every row read here counts; a parked settle ("p:<rid>") counts when its request ended at or after
-- the watermark and is not among the rows read (else its row is in this sum); a settle arriving
-- after the seed counts unless its id was read here or its request ended before the watermark.
local b, s = KEYS[1], KEYS[3]
if redis.call('HEXISTS', b, 'seeded') == 1 then return 0 end
local st, sm = tonumber(ARGV[1]), tonumber(ARGV[2])
local w, hold, state_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local read = {}
for i = 0, n - 1 do
  read[ARGV[8 + i * 3]] = true
  st = st + tonumber(ARGV[9 + i * 3])
  sm = sm + tonumber(ARGV[10 + i * 3])
end
-- settles parked before the seed (every id in KEYS[3] is one: nothing else writes it unseeded)
local parked = redis.call('ZRANGE', s, 0, -1)
for _, rid in ipairs(parked) do
  local p = redis.call('HGET', b, 'p:' .. rid)
  if p then
    local a = {}
    for x in string.gmatch(p, '[^,]+') do a[#a + 1] = tonumber(x) end
    if a[3] >= w and not read[rid] then
      st = st + a[1]
      sm = sm + a[2]
    end
    redis.call('HDEL', b, 'p:' .. rid)
  end
end
for i = 0, n - 1 do
  redis.call('ZADD', s, w, ARGV[8 + i * 3])  -- remembered like a settle (trimmed keep_ms after w)
end
redis.call('HINCRBY', b, 'st', st)
redis.call('HINCRBY', b, 'sm', sm)
redis.call('HSET', b, 'seeded', 1, 'w', w)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if hold > now then redis.call('HSET', b, 'rec', hold) end
redis.call('PEXPIRE', b, state_ttl)
if n > 0 or #parked > 0 then redis.call('PEXPIRE', s, state_ttl) end
return 1
