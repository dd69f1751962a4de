-- The usage records (one per finished request). IF NOT EXISTS: ledgers made before versioned
-- migrations already have this table and take this version as applied.
CREATE TABLE IF NOT EXISTS usage (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT    NOT NULL,
    tenant            TEXT    NOT NULL,
    key_id            TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    pool              TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    finish_reason     TEXT,
    started_at_ms     INTEGER NOT NULL,
    ended_at_ms       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (ended_at_ms);
CREATE INDEX IF NOT EXISTS usage_by_tenant_time ON usage (tenant, ended_at_ms);
