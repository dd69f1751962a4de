-- The LoRA adapter a request ran with over its model (NULL: the base model, or recorded
-- before this column).
ALTER TABLE usage ADD COLUMN adapter TEXT;
