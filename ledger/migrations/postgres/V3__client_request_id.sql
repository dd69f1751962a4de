-- The request id a client sent, kept apart from the gateway's own id (`request_id`, the
-- record's key): clients choose theirs, so two tenants may send the same one.
ALTER TABLE usage ADD COLUMN IF NOT EXISTS client_request_id TEXT;
