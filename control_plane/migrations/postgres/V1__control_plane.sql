-- Tenants, projects and keys, each a JSON document keyed by kind and id (the same layout in
-- SQLite and PostgreSQL: the rules live in the crate, not in two dialects of SQL).
CREATE TABLE IF NOT EXISTS cp_objects (
    kind   TEXT NOT NULL,
    id     TEXT NOT NULL,
    tenant TEXT,
    body   TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
-- Bumped by every write in its own transaction: replicas poll it, and the row lock orders
-- concurrent writers.
CREATE TABLE IF NOT EXISTS cp_version (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    version   BIGINT  NOT NULL
);
INSERT INTO cp_version (singleton, version) VALUES (1, 0) ON CONFLICT DO NOTHING;
-- Every write: who, what, before and after, when, from where. Append-only.
CREATE TABLE IF NOT EXISTS cp_audit (
    seq          BIGSERIAL PRIMARY KEY,
    at_ms        BIGINT NOT NULL,
    actor_key    TEXT   NOT NULL,
    actor_role   TEXT   NOT NULL,
    actor_tenant TEXT,
    address      TEXT,
    action       TEXT   NOT NULL,
    target       TEXT   NOT NULL,
    tenant       TEXT,
    before_json  TEXT,
    after_json   TEXT
);
CREATE INDEX IF NOT EXISTS cp_audit_by_tenant ON cp_audit (tenant, seq);
CREATE OR REPLACE FUNCTION cp_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS cp_audit_append_only ON cp_audit;
CREATE TRIGGER cp_audit_append_only BEFORE UPDATE OR DELETE ON cp_audit
    FOR EACH ROW EXECUTE FUNCTION cp_audit_append_only();
-- When each key was last used: written in batches by the replicas, outside the audit log and
-- without bumping the version (it changes nothing a replica caches).
CREATE TABLE IF NOT EXISTS cp_key_usage (
    key_id       TEXT   PRIMARY KEY,
    last_used_ms BIGINT NOT NULL
);
