-- metering (#4): web searches are billed per use; the hourly rollup is PostgreSQL-only
-- (the embedded store aggregates the raw table, indexed by time).
ALTER TABLE usage_records ADD COLUMN web_search_requests INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS usage_model_time ON usage_records (model, started_at);
