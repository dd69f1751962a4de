-- Whether a record's prompt tokens are the gateway's estimate (a remote upstream reported no
-- usage) rather than the engine's count. Records written before it were counted or estimated
-- alike; they read as counted.
ALTER TABLE usage ADD COLUMN prompt_tokens_estimated INTEGER NOT NULL DEFAULT 0;
