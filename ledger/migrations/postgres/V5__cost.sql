-- What a request cost: its prompt tokens found in the prefix cache (priced apart), its cost in
-- millionths of a minor unit of the centre's currency, and the price version it was billed at
-- (NULL: the model had no price then).
ALTER TABLE usage ADD COLUMN IF NOT EXISTS cached_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS cost_micros BIGINT;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS price_version TEXT;
