-- Whether a record's prompt tokens are the gateway's estimate (a remote upstream reported no
-- usage) rather than the engine's count. Records written before it read as counted.
ALTER TABLE usage ADD COLUMN IF NOT EXISTS prompt_tokens_estimated BOOLEAN NOT NULL DEFAULT FALSE;
