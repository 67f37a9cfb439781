-- ethereal refresh (function ethereal_refresh_v4, key layout v1): a long request (a stream) keeps its
-- reservation and concurrency slot past the reservation ttl. KEYS as in admit.lua (only 1 and 2 used),
-- then the spender's Pz and P when the request holds caps (admit.lua).
-- ARGV  1 rid  2 reservation ttl ms  3 state ttl ms
-- Returns 1 when a reservation was extended, 0 when it is gone (settled, or expired meanwhile: it
-- is not re-created, since its budget may have been given to others).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b, z = KEYS[1], KEYS[2]
local res_ttl = tonumber(ARGV[2])
local done = 0
local expiry = redis.call('ZSCORE', z, ARGV[1])
if expiry and tonumber(expiry) > now then  -- else settled, or lapsed (released by the next admit)
  redis.call('ZADD', z, now + res_ttl, ARGV[1])
  redis.call('PEXPIRE', z, res_ttl + 60000)
  redis.call('PEXPIRE', b, tonumber(ARGV[3]))
  done = 1
end
if KEYS[3] then
  local pz = KEYS[3]
  local pexp = redis.call('ZSCORE', pz, ARGV[1])
  if pexp and tonumber(pexp) > now then
    redis.call('ZADD', pz, now + res_ttl, ARGV[1])
    redis.call('PEXPIRE', pz, res_ttl + 60000)
    redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[3]))
    done = 1
  end
end
return done
