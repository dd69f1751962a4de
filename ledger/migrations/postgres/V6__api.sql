-- Which API a request came through (`chat.completions`, `responses`, `messages`, `batches`,
-- ...; NULL before this column) and, for a line of a batch, the batch's id.
ALTER TABLE usage ADD COLUMN IF NOT EXISTS api TEXT;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS batch_id TEXT;
