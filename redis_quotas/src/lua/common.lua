-- Shared head of every script (prepended at build time): the clock is Redis's, never a
-- replica's, so replicas with skewed clocks still agree.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local today = math.floor(tonumber(clock[1]) / 86400)
local PERIOD = 60000

-- The tenant's usage hash for today: emptied when the UTC day changed. Returns its tokens.
local function todays_tokens(day_key)
  local d = redis.call('HMGET', day_key, 'day', 'prompt_tokens', 'completion_tokens')
  if tonumber(d[1]) ~= today then
    redis.call('DEL', day_key)
    redis.call('HSET', day_key, 'day', today)
    redis.call('PEXPIRE', day_key, 2 * 86400000)
    return 0
  end
  return (tonumber(d[2]) or 0) + (tonumber(d[3]) or 0)
end
