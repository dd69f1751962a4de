-- What the API keeps for a tenant on request: stored responses (`/v1/responses` with `store`),
-- uploaded files, batches and the results of their lines. Each belongs to one tenant and is read only by it; `expires_ms`
-- is its retention (NULL: kept until deleted).
CREATE TABLE IF NOT EXISTS cp_api_objects (
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    tenant     TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    body       TEXT   NOT NULL,
    -- Work on the object (a batch being run) is held by one replica at a time, under a lease
    -- it renews; another takes the work over once the lease runs out.
    lease_owner      TEXT,
    lease_expires_ms BIGINT,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS cp_api_objects_by_tenant ON cp_api_objects (kind, tenant, created_ms);
CREATE INDEX IF NOT EXISTS cp_api_objects_by_expiry ON cp_api_objects (expires_ms);
