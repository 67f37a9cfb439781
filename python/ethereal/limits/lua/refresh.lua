-- ethereal refresh (function ethereal_refresh_v3, key layout v1): a long request (a stream) keeps its
-- reservation and concurrency slot past the reservation ttl. KEYS as in admit.lua (only 1 and 2 used).
-- ARGV  1 rid  2 reservation ttl ms  3 state ttl ms
-- Returns 1 when the reservation was extended, 0 when it is gone (settled, or expired meanwhile: it
-- is not re-created, since its budget may have been given to others).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b, z = KEYS[1], KEYS[2]
local res_ttl = tonumber(ARGV[2])
local expiry = redis.call('ZSCORE', z, ARGV[1])
if not expiry or tonumber(expiry) <= now then return 0 end  -- settled, or lapsed (released by the next admit)
redis.call('ZADD', z, now + res_ttl, ARGV[1])
redis.call('PEXPIRE', z, res_ttl + 60000)
redis.call('PEXPIRE', b, tonumber(ARGV[3]))
return 1
