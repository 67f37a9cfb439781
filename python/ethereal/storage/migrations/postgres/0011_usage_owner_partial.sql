-- usage_owner_time (0010) held every record, most of them without an owner; a record is looked up
-- by owner only with "owner = $n" (spend seeding), which a partial index serves: records with no
-- owner stay out of it, one B-tree insert less for each of them.
DROP INDEX IF EXISTS usage_owner_time;
CREATE INDEX IF NOT EXISTS usage_owner_time ON usage_records (owner, started_at) WHERE owner IS NOT NULL;
