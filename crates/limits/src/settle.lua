-- Settles an admission: the tokens bucket it was charged to gets `delta` (real count minus the
-- reservation: a refund when negative) while it is still in the window, and the lease goes.
-- KEYS[1]: tokens hash, KEYS[2]: leases sorted set. ARGV: bucket, delta, lease id ('' = none).
local sec = tonumber(redis.call('TIME')[1])
local b, d = tonumber(ARGV[1]), tonumber(ARGV[2])
if d ~= 0 and b >= sec - 59 then
  local v = redis.call('HINCRBY', KEYS[1], ARGV[1], d)
  if v < 0 then redis.call('HSET', KEYS[1], ARGV[1], 0) end
  if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], 61) end
end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
return 1
