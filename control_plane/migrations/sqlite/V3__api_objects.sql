-- What the API keeps for a tenant on request: stored responses (`/v1/responses` with `store`),
-- and later files and batches. Each belongs to one tenant and is read only by it; `expires_ms`
-- is its retention (NULL: kept until deleted).
CREATE TABLE IF NOT EXISTS cp_api_objects (
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    tenant     TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    body       TEXT   NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS cp_api_objects_by_expiry ON cp_api_objects (expires_ms);
