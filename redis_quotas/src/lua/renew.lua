-- Renewal of the leases a replica holds for one tenant: each runs `lease ms` more. Only
-- leases still present are renewed (XX): a lease released meanwhile must not come back.
-- KEYS: leases. ARGV: lease ms, lease ids...
local lease_ms = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], 2 * lease_ms)
return renewed
