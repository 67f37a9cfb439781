-- exact pricing (#20): a usage record keeps what it was priced with, and history can be re-priced.
--
-- 1. usage_records.rate_card: the rate card's id ("<model>@<effective_from>", "provisional:<card>"
--    for a stand-in card, several ids joined by "+" when iterations ran on other models; NULL for
--    records written before this migration), priced_provisional, and the usage labels that move a
--    price (speed, inference_geo) or describe it (service_tier).
-- 2. usage_hourly stays exact when a record is updated (``ethereal models reprice`` rewrites
--    cost_micro): a statement-level trigger over the transition tables takes every updated row out
--    of its old group and adds it to its new one, in the same transaction, groups in key order
--    (as the insert trigger of 0003) so concurrent writers never deadlock on them.
-- 3. price_corrections: one row per reprice run (what the console shows as the last correction).
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS rate_card TEXT;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS priced_provisional BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS speed TEXT;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS inference_geo TEXT;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS service_tier TEXT;

CREATE OR REPLACE FUNCTION ethereal_usage_hourly_move() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO usage_hourly AS h (bucket, key_id, model, credential, route, requests, errors, estimated,
                                   input_tokens, output_tokens, cache_creation_5m, cache_creation_1h,
                                   cache_read, web_search_requests, cost_micro)
    SELECT b, k, m, c, r, sum(n), sum(e), sum(est), sum(i), sum(o), sum(c5), sum(c1), sum(cr), sum(ws), sum(cost)
    FROM (
        SELECT floor(started_at / 3600) * 3600 AS b, COALESCE(key_id, '') AS k, COALESCE(model, '') AS m,
               COALESCE(credential, '') AS c, route AS r, -1 AS n, -(status >= 400)::int AS e,
               -(NOT exact)::int AS est, -input_tokens AS i, -output_tokens AS o, -cache_creation_5m AS c5,
               -cache_creation_1h AS c1, -cache_read AS cr, -web_search_requests AS ws, -cost_micro AS cost
        FROM old_rows
        UNION ALL
        SELECT floor(started_at / 3600) * 3600, COALESCE(key_id, ''), COALESCE(model, ''),
               COALESCE(credential, ''), route, 1, (status >= 400)::int, (NOT exact)::int, input_tokens,
               output_tokens, cache_creation_5m, cache_creation_1h, cache_read, web_search_requests, cost_micro
        FROM new_rows
    ) AS moved
    GROUP BY 1, 2, 3, 4, 5
    HAVING sum(n) <> 0 OR sum(e) <> 0 OR sum(est) <> 0 OR sum(i) <> 0 OR sum(o) <> 0 OR sum(c5) <> 0
        OR sum(c1) <> 0 OR sum(cr) <> 0 OR sum(ws) <> 0 OR sum(cost) <> 0
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

DROP TRIGGER IF EXISTS usage_hourly_move ON usage_records;
CREATE TRIGGER usage_hourly_move AFTER UPDATE ON usage_records
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ethereal_usage_hourly_move();

CREATE TABLE IF NOT EXISTS price_corrections (
    id               TEXT PRIMARY KEY,
    at               DOUBLE PRECISION NOT NULL,   -- when the reprice ran (unix seconds)
    since            DOUBLE PRECISION NOT NULL,   -- the records' started_at range, [since, until)
    until            DOUBLE PRECISION NOT NULL,
    registry_version TEXT NOT NULL,               -- the registry data the records were priced with
    records          BIGINT NOT NULL,             -- records whose cost changed
    keys             BIGINT NOT NULL,             -- keys whose spend changed
    before_micro     BIGINT NOT NULL,             -- the changed records' cost before and after
    after_micro      BIGINT NOT NULL,
    detail           JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS price_corrections_at ON price_corrections (at);
