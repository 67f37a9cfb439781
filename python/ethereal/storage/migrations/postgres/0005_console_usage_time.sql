-- the console (#14): the usage page lists the newest records first, filtered or not
-- (ORDER BY started_at DESC, request_id DESC LIMIT 50). The BRIN index of 0001 finds
-- time ranges but cannot return rows in order, so each page would sort the whole range;
-- a b-tree reads just the page. The last-hour chart uses it too.
CREATE INDEX IF NOT EXISTS usage_time_btree ON usage_records (started_at, request_id);
