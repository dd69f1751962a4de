-- A tenant's live state over the fleet: leases not expired, and today's usage.
-- KEYS: leases, today's usage hash.
-- Reply: {in flight, requests, prompt tokens, completion tokens, rejections}.
local in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local d = redis.call('HMGET', KEYS[2], 'day', 'requests', 'prompt_tokens', 'completion_tokens',
                     'rejections')
if tonumber(d[1]) ~= today then
  return {in_flight, 0, 0, 0, 0}
end
return {in_flight, tonumber(d[2]) or 0, tonumber(d[3]) or 0, tonumber(d[4]) or 0,
        tonumber(d[5]) or 0}
