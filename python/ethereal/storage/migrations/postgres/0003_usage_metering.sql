-- metering (#4)
--
-- 1. web searches are billed per use.
-- 2. usage_hourly: spend and tokens per (hour, key, model, credential, route), so
--    GET /admin/api/usage reads a few thousand rollup rows instead of scanning
--    millions of usage_records. Maintained by a statement-level trigger over the
--    rows each INSERT really inserted (a transition table): a replayed batch whose
--    rows are already stored (ON CONFLICT DO NOTHING) adds nothing, so the rollup
--    is exact under replays, in the same transaction as the rows, whoever writes.
--    One trigger run per flushed batch (~1,000 rows), not per row. Groups are
--    upserted in key order so concurrent flushers never deadlock on them.
--
--    Why a rollup and not time partitioning: deduplication on replay needs a
--    unique index on request_id alone, which a partitioned table cannot have (its
--    unique indexes must include the partition key). Retention can still delete
--    old usage_records; the rollup keeps the totals.
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS web_search_requests INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS usage_hourly (
    bucket              DOUBLE PRECISION NOT NULL,  -- unix seconds at the start of the UTC hour
    key_id              TEXT NOT NULL,              -- '' when the request had no key
    model               TEXT NOT NULL,
    credential          TEXT NOT NULL,
    route               TEXT NOT NULL,
    requests            BIGINT NOT NULL DEFAULT 0,
    errors              BIGINT NOT NULL DEFAULT 0,
    estimated           BIGINT NOT NULL DEFAULT 0,
    input_tokens        BIGINT NOT NULL DEFAULT 0,
    output_tokens       BIGINT NOT NULL DEFAULT 0,
    cache_creation_5m   BIGINT NOT NULL DEFAULT 0,
    cache_creation_1h   BIGINT NOT NULL DEFAULT 0,
    cache_read          BIGINT NOT NULL DEFAULT 0,
    web_search_requests BIGINT NOT NULL DEFAULT 0,
    cost_micro          BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, key_id, model, credential, route)
);
CREATE INDEX IF NOT EXISTS usage_hourly_key ON usage_hourly (key_id, bucket);

CREATE OR REPLACE FUNCTION ethereal_usage_hourly_add() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO usage_hourly AS h (bucket, key_id, model, credential, route, requests, errors, estimated,
                                   input_tokens, output_tokens, cache_creation_5m, cache_creation_1h,
                                   cache_read, web_search_requests, cost_micro)
    SELECT floor(started_at / 3600) * 3600, COALESCE(key_id, ''), COALESCE(model, ''), COALESCE(credential, ''),
           route, count(*), count(*) FILTER (WHERE status >= 400), count(*) FILTER (WHERE NOT exact),
           sum(input_tokens), sum(output_tokens), sum(cache_creation_5m), sum(cache_creation_1h),
           sum(cache_read), sum(web_search_requests), sum(cost_micro)
    FROM new_rows
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (bucket, key_id, model, credential, route) DO UPDATE SET
        requests = h.requests + excluded.requests,
        errors = h.errors + excluded.errors,
        estimated = h.estimated + excluded.estimated,
        input_tokens = h.input_tokens + excluded.input_tokens,
        output_tokens = h.output_tokens + excluded.output_tokens,
        cache_creation_5m = h.cache_creation_5m + excluded.cache_creation_5m,
        cache_creation_1h = h.cache_creation_1h + excluded.cache_creation_1h,
        cache_read = h.cache_read + excluded.cache_read,
        web_search_requests = h.web_search_requests + excluded.web_search_requests,
        cost_micro = h.cost_micro + excluded.cost_micro;
    RETURN NULL;
END
$fn$;

-- rows inserted while this migration runs are either in the backfill or seen by the trigger
LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE;

DROP TRIGGER IF EXISTS usage_hourly_add ON usage_records;
CREATE TRIGGER usage_hourly_add AFTER INSERT ON usage_records
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ethereal_usage_hourly_add();

INSERT INTO usage_hourly (bucket, key_id, model, credential, route, requests, errors, estimated, input_tokens,
                          output_tokens, cache_creation_5m, cache_creation_1h, cache_read, web_search_requests,
                          cost_micro)
SELECT floor(started_at / 3600) * 3600, COALESCE(key_id, ''), COALESCE(model, ''), COALESCE(credential, ''),
       route, count(*), count(*) FILTER (WHERE status >= 400), count(*) FILTER (WHERE NOT exact),
       sum(input_tokens), sum(output_tokens), sum(cache_creation_5m), sum(cache_creation_1h), sum(cache_read),
       sum(web_search_requests), sum(cost_micro)
FROM usage_records
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT DO NOTHING;
