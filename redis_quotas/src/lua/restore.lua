-- Today's usage from a replica's durable ledger, taken only if the store has none for today
-- (other replicas may already count there).
-- KEYS: today's usage hash. ARGV: requests, prompt tokens, completion tokens.
local d = redis.call('HGET', KEYS[1], 'day')
if tonumber(d) == today then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'day', today, 'requests', ARGV[1], 'prompt_tokens', ARGV[2],
           'completion_tokens', ARGV[3])
redis.call('PEXPIRE', KEYS[1], 2 * 86400000)
return 1
