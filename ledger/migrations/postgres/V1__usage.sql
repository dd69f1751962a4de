-- The usage records (one per finished request), the same columns as the SQLite ledger's.
CREATE TABLE IF NOT EXISTS usage (
    id                BIGSERIAL PRIMARY KEY,
    request_id        TEXT   NOT NULL,
    tenant            TEXT   NOT NULL,
    key_id            TEXT   NOT NULL,
    model             TEXT   NOT NULL,
    pool              TEXT   NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    status            TEXT   NOT NULL,
    finish_reason     TEXT,
    started_at_ms     BIGINT NOT NULL,
    ended_at_ms       BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (ended_at_ms);
CREATE INDEX IF NOT EXISTS usage_by_tenant_time ON usage (tenant, ended_at_ms);
