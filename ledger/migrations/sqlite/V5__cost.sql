-- What a request cost: its prompt tokens found in the prefix cache (priced apart), its cost in
-- millionths of a minor unit of the centre's currency, and the price version it was billed at
-- (NULL: the model had no price then).
ALTER TABLE usage ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN cost_micros INTEGER;
ALTER TABLE usage ADD COLUMN price_version TEXT;
