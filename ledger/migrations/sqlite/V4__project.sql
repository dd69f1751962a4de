-- The project (inside the tenant) whose key made the request; NULL for keys of no project
-- (the configuration file's keys).
ALTER TABLE usage ADD COLUMN project TEXT;
CREATE INDEX IF NOT EXISTS usage_by_tenant_project ON usage (tenant, project, ended_at_ms);
