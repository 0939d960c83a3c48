-- Checks and charges one admission atomically (one EVALSHA per request).
-- KEYS[1]: requests hash, KEYS[2]: tokens hash (field = Unix second, value = count),
-- KEYS[3]: leases sorted set (member = lease id, score = expiry in ms).
-- ARGV: requests/min, tokens/min, streams (-1 = no limit), tokens to reserve, lease id, lease ms.
-- Returns {1, '', reserved, bucket} or {0, limit, retry_after_seconds, bucket}.
-- Redis's own clock is used so that every edge agrees on the window (scripts are replicated by
-- effect since Redis 5, so TIME is allowed).
local now = redis.call('TIME')
local sec = tonumber(now[1])
local now_ms = sec * 1000 + math.floor(tonumber(now[2]) / 1000)
local lo = sec - 59
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[6])

-- The window's total over its last 60 one-second buckets; older buckets are deleted.
local function window(key)
  local flat = redis.call('HGETALL', key)
  local total, live, stale = 0, {}, {}
  for i = 1, #flat, 2 do
    local b, v = tonumber(flat[i]), tonumber(flat[i + 1])
    if b < lo then
      stale[#stale + 1] = flat[i]
    else
      total = total + v
      live[#live + 1] = {b, v}
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return total, live
end

-- Seconds until `need` of the window's count has left it.
local function wait(live, need)
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, bv in ipairs(live) do
    freed = freed + bv[2]
    if freed >= need then return bv[1] + 60 - sec end
  end
  return 60
end

if conc >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[3]) >= conc then
    return {0, 'concurrent_streams', 1, sec}
  end
end
if rpm >= 0 then
  local n, live = window(KEYS[1])
  if n + 1 > rpm then
    return {0, 'requests_per_minute', wait(live, n + 1 - rpm), sec}
  end
end
if tpm >= 0 then
  -- A reservation larger than the whole budget could never pass: charge at most the budget.
  if reserve > tpm then reserve = tpm end
  local n, live = window(KEYS[2])
  if n + reserve > tpm then
    return {0, 'tokens_per_minute', wait(live, n + reserve - tpm), sec}
  end
end
if rpm >= 0 then
  redis.call('HINCRBY', KEYS[1], sec, 1)
  redis.call('EXPIRE', KEYS[1], 61)
end
if tpm >= 0 then
  redis.call('HINCRBY', KEYS[2], sec, reserve)
  redis.call('EXPIRE', KEYS[2], 61)
end
if conc >= 0 then
  redis.call('ZADD', KEYS[3], now_ms + lease_ms, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], lease_ms * 2)
end
return {1, '', reserve, sec}
