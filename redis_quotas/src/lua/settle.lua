-- Settlement of an admitted request: its lease is released, the unused part of its token
-- reservation goes back, and its usage is added to the tenant's day.
-- KEYS: tokens TAT, leases, today's usage hash.
-- ARGV: tokens per minute (0: none), unused tokens, lease id, requests, prompt tokens,
--       completion tokens.
local tpm, unused = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
if tpm > 0 and unused > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if tat then
    local back = math.max(tat - unused * PERIOD / tpm, now)
    if back > now then
      redis.call('SET', KEYS[1], string.format('%.3f', back), 'PX', math.ceil(back - now) + 1000)
    else
      redis.call('DEL', KEYS[1])
    end
  end
end
todays_tokens(KEYS[3])
redis.call('HINCRBY', KEYS[3], 'requests', tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[3], 'prompt_tokens', tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[3], 'completion_tokens', tonumber(ARGV[6]))
return 1
