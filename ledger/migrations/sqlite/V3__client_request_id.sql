-- The request id a client sent (`x-client-request-id` or `x-request-id`), kept apart from the
-- gateway's own id (`request_id`, the record's key): clients choose theirs, so two tenants may
-- send the same one. NULL where the client sent none (or one that was not kept).
ALTER TABLE usage ADD COLUMN client_request_id TEXT;
