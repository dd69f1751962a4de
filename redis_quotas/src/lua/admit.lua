-- Admission: every limit of one tenant checked and taken at once, or nothing taken.
-- KEYS: requests TAT, tokens TAT, leases (sorted set: lease -> expiry ms), today's usage hash.
-- ARGV: requests per minute (0: none), tokens per minute (0: none), tokens to reserve,
--       max concurrent (-1: none), daily tokens (-1: none), lease id, lease ms, prompt tokens,
--       the fewest tokens the request can be cut to when less is left of the day than it asks
--       (0: not cut, refused).
-- Reply: {code, retry ms, requests remaining, requests reset ms, tokens remaining,
--         tokens reset ms, tokens granted}; code 0 admitted, 1 requests per minute, 2 tokens
--         per minute, 3 request too large, 4 concurrency, 5 daily budget (nothing left),
--         6 daily budget (less left than asked); -1 where a limit is not set.
-- The day is reserved like the minute: each lease's member is `<lease id>|<tokens granted>`,
-- and what live leases were granted counts against the day until they settle. A lease that
-- expires (its replica died) takes its reservation with it.
local rpm, tpm, reserve = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_concurrent, daily = tonumber(ARGV[4]), tonumber(ARGV[5])
local lease, lease_ms = ARGV[6], tonumber(ARGV[7])
local prompt, least = tonumber(ARGV[8]), tonumber(ARGV[9])

-- GCRA over one number, the theoretical arrival time (TAT), with a burst of the whole minute:
-- taking n units pushes it n emission intervals ahead; admitted while it stays within a minute.
local function gcra(key, limit, n)
  if limit <= 0 then
    return {ok = true, remaining = -1, reset = -1}
  end
  local interval = PERIOD / limit
  local tat = math.max(tonumber(redis.call('GET', key)) or now, now)
  local next_tat = tat + n * interval
  -- The state before taking anything: what a refusal reports.
  local before = {math.floor((PERIOD - (tat - now)) / interval + 1e-9), math.ceil(tat - now)}
  if next_tat - now <= PERIOD then
    return {ok = true, key = key, tat = next_tat, before = before,
            remaining = math.floor((PERIOD - (next_tat - now)) / interval + 1e-9),
            reset = math.ceil(next_tat - now)}
  end
  return {ok = false, retry = math.ceil(next_tat - now - PERIOD), before = before,
          remaining = before[1], reset = before[2]}
end

local function store(g)
  if g.key and g.tat > now then
    redis.call('SET', g.key, string.format('%.3f', g.tat), 'PX', math.ceil(g.tat - now) + 1000)
  end
end

local used_today = todays_tokens(KEYS[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)

-- What live leases hold of the day.
local function reserved_today()
  local held = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    held = held + (tonumber(string.match(member, '|(%d+)$')) or 0)
  end
  return held
end

local granted = reserve
local day_refusal = nil
if daily >= 0 then
  local left = daily - used_today - reserved_today()
  if left <= prompt then
    day_refusal = 5
  elseif reserve > left then
    if least > 0 and least <= left then granted = left else day_refusal = 6 end
  end
end

local requests = gcra(KEYS[1], rpm, 1)
local tokens = gcra(KEYS[2], tpm, granted)

local function reply(code, retry)
  if code ~= 0 then
    -- Nothing was taken: report the limits as they stand.
    redis.call('HINCRBY', KEYS[4], 'rejections', 1)
    for _, g in ipairs({requests, tokens}) do
      if g.before then
        g.remaining, g.reset = g.before[1], g.before[2]
      end
    end
  end
  return {code, math.max(retry, 0), requests.remaining, requests.reset,
          tokens.remaining, tokens.reset, granted}
end

if day_refusal == 5 then
  return reply(5, (today + 1) * 86400000 - now)
end
if day_refusal == 6 then
  return reply(6, 0)
end
if tpm > 0 and granted > tpm then
  return reply(3, 0)
end
if max_concurrent >= 0 and redis.call('ZCARD', KEYS[3]) >= max_concurrent then
  return reply(4, 1000)
end
if not requests.ok then
  return reply(1, requests.retry)
end
if not tokens.ok then
  return reply(2, tokens.retry)
end
store(requests)
store(tokens)
redis.call('ZADD', KEYS[3], now + lease_ms, lease .. '|' .. granted)
redis.call('PEXPIRE', KEYS[3], 2 * lease_ms)
return reply(0, 0)
