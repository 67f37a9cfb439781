-- operators see why (#23): the error message of a 4xx/5xx (the gateway's own or the upstream's),
-- clipped to 200 characters with control characters escaped; NULL for a success. (SQLite has no
-- ADD COLUMN IF NOT EXISTS: schema_migrations applies this once.)
ALTER TABLE usage_records ADD COLUMN error_message TEXT;
