-- Renews this edge's live leases in one round trip: KEYS[i] is the leases set of ARGV[i + 1].
-- A lease lost meanwhile (Redis restarted empty) is put back: the stream is still running.
-- ARGV[1]: lease ms.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease_ms = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now_ms + lease_ms, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease_ms * 2)
end
return #KEYS
