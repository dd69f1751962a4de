-- Which API a request came through (`chat.completions`, `responses`, `messages`, `batches`,
-- ...; NULL before this column) and, for a line of a batch, the batch's id.
ALTER TABLE usage ADD COLUMN api TEXT;
ALTER TABLE usage ADD COLUMN batch_id TEXT;
-- A batch's line is billed once, whatever happens to the replica running it: its record is
-- keyed by the batch and the line's `custom_id` (its `request_id`), and a second record of the
-- same line (a line run again after a crash) is dropped on insert.
CREATE UNIQUE INDEX IF NOT EXISTS usage_batch_line ON usage (batch_id, request_id) WHERE batch_id IS NOT NULL;
