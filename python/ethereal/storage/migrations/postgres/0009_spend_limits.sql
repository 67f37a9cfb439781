-- spend limits, reports and alerts (#22). Every statement is idempotent.
--
-- 1. Who spends: a key's owner (a person: the user id of spend limits; api_keys.owner already
--    exists) and its teams (groups, several allowed), kept on each usage record so reports
--    group by them. usage_records.teams is the key's teams, sorted and joined by ',' (a team
--    name cannot hold a comma), NULL for none.
-- 2. usage_hourly grows the dimensions Anthropic's usage and cost reports group by (owner,
--    teams, service_tier, inference_geo, speed, context_window), so a 31-day report grouped
--    by key and model reads the rollup, never the raw rows. The table is rebuilt once, from
--    usage_records, under the lock that keeps writers out; totals of hours whose records were
--    deleted (retention) are kept under empty dimensions. The insert and update triggers of
--    0003/0006 are replaced by ones that fill the new columns.
--    usage_daily: the same sums per UTC day and report dimension (no credential or route), kept by
--    the same triggers in the same transaction: a 31-day report grouped by key and model reads a
--    few tens of thousands of day rows, whatever the traffic (usage_hourly holds ~25x more).
-- 3. spend_limits (one row per scope and period), spend_limit_audit (every change to a limit or
--    a webhook, before/after, in the same transaction), webhooks and webhook_deliveries.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS teams JSONB NOT NULL DEFAULT '[]'::jsonb;
CREATE INDEX IF NOT EXISTS api_keys_teams ON api_keys USING gin (teams);

ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS owner TEXT;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS teams TEXT;

-- the report dimensions of one record, as the rollup keeps them (NULLs become '' / defaults)
CREATE OR REPLACE FUNCTION ethereal_context_window(i BIGINT, c5 BIGINT, c1 BIGINT, cr BIGINT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE AS $fn$ SELECT CASE WHEN i + c5 + c1 + cr > 200000 THEN '200k-1M' ELSE '0-200k' END $fn$;

LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE;

DO $mig$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'usage_hourly' AND column_name = 'context_window') THEN
        CREATE TABLE usage_hourly_v2 (
            bucket              DOUBLE PRECISION NOT NULL,
            key_id              TEXT NOT NULL,
            model               TEXT NOT NULL,
            credential          TEXT NOT NULL,
            route               TEXT NOT NULL,
            owner               TEXT NOT NULL DEFAULT '',
            teams               TEXT NOT NULL DEFAULT '',
            service_tier        TEXT NOT NULL DEFAULT '',
            inference_geo       TEXT NOT NULL DEFAULT '',
            speed               TEXT NOT NULL DEFAULT '',
            context_window      TEXT NOT NULL DEFAULT '',
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
            PRIMARY KEY (bucket, key_id, model, credential, route, owner, teams, service_tier, inference_geo,
                         speed, context_window)
        );
        INSERT INTO usage_hourly_v2 (bucket, key_id, model, credential, route, owner, teams, service_tier,
                                     inference_geo, speed, context_window, requests, errors, estimated,
                                     input_tokens, output_tokens, cache_creation_5m, cache_creation_1h, cache_read,
                                     web_search_requests, cost_micro)
        SELECT floor(started_at / 3600) * 3600, COALESCE(key_id, ''), COALESCE(model, ''), COALESCE(credential, ''),
               route, COALESCE(owner, ''), COALESCE(teams, ''),
               COALESCE(service_tier, CASE WHEN batch THEN 'batch' ELSE 'standard' END),
               COALESCE(inference_geo, 'not_available'), COALESCE(speed, 'standard'),
               ethereal_context_window(input_tokens, cache_creation_5m, cache_creation_1h, cache_read),
               count(*), count(*) FILTER (WHERE status >= 400), count(*) FILTER (WHERE NOT exact),
               sum(input_tokens), sum(output_tokens), sum(cache_creation_5m), sum(cache_creation_1h),
               sum(cache_read), sum(web_search_requests), sum(cost_micro)
        FROM usage_records
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11;
        -- what the old rollup holds beyond the records still stored (deleted by retention)
        INSERT INTO usage_hourly_v2 (bucket, key_id, model, credential, route, requests, errors, estimated,
                                     input_tokens, output_tokens, cache_creation_5m, cache_creation_1h, cache_read,
                                     web_search_requests, cost_micro)
        SELECT o.bucket, o.key_id, o.model, o.credential, o.route,
               o.requests - COALESCE(n.requests, 0), o.errors - COALESCE(n.errors, 0),
               o.estimated - COALESCE(n.estimated, 0), o.input_tokens - COALESCE(n.input_tokens, 0),
               o.output_tokens - COALESCE(n.output_tokens, 0), o.cache_creation_5m - COALESCE(n.cache_creation_5m, 0),
               o.cache_creation_1h - COALESCE(n.cache_creation_1h, 0), o.cache_read - COALESCE(n.cache_read, 0),
               o.web_search_requests - COALESCE(n.web_search_requests, 0), o.cost_micro - COALESCE(n.cost_micro, 0)
        FROM usage_hourly o
        LEFT JOIN (SELECT bucket, key_id, model, credential, route, sum(requests) AS requests, sum(errors) AS errors,
                          sum(estimated) AS estimated, sum(input_tokens) AS input_tokens,
                          sum(output_tokens) AS output_tokens, sum(cache_creation_5m) AS cache_creation_5m,
                          sum(cache_creation_1h) AS cache_creation_1h, sum(cache_read) AS cache_read,
                          sum(web_search_requests) AS web_search_requests, sum(cost_micro) AS cost_micro
                   FROM usage_hourly_v2 GROUP BY 1, 2, 3, 4, 5) n
            USING (bucket, key_id, model, credential, route)
        WHERE o.requests <> COALESCE(n.requests, 0) OR o.cost_micro <> COALESCE(n.cost_micro, 0)
           OR o.input_tokens <> COALESCE(n.input_tokens, 0) OR o.output_tokens <> COALESCE(n.output_tokens, 0)
        ON CONFLICT (bucket, key_id, model, credential, route, owner, teams, service_tier, inference_geo, speed,
                     context_window) DO UPDATE SET
            requests = usage_hourly_v2.requests + excluded.requests,
            errors = usage_hourly_v2.errors + excluded.errors,
            estimated = usage_hourly_v2.estimated + excluded.estimated,
            input_tokens = usage_hourly_v2.input_tokens + excluded.input_tokens,
            output_tokens = usage_hourly_v2.output_tokens + excluded.output_tokens,
            cache_creation_5m = usage_hourly_v2.cache_creation_5m + excluded.cache_creation_5m,
            cache_creation_1h = usage_hourly_v2.cache_creation_1h + excluded.cache_creation_1h,
            cache_read = usage_hourly_v2.cache_read + excluded.cache_read,
            web_search_requests = usage_hourly_v2.web_search_requests + excluded.web_search_requests,
            cost_micro = usage_hourly_v2.cost_micro + excluded.cost_micro;
        DROP TABLE usage_hourly;
        ALTER TABLE usage_hourly_v2 RENAME TO usage_hourly;
        ALTER INDEX usage_hourly_v2_pkey RENAME TO usage_hourly_pkey;
    END IF;
END
$mig$;
CREATE INDEX IF NOT EXISTS usage_hourly_key ON usage_hourly (key_id, bucket);
CREATE INDEX IF NOT EXISTS usage_hourly_owner ON usage_hourly (owner, bucket);


CREATE TABLE IF NOT EXISTS usage_daily (
    bucket              DOUBLE PRECISION NOT NULL,  -- unix seconds at the start of the UTC day
    key_id              TEXT NOT NULL,
    model               TEXT NOT NULL,
    owner               TEXT NOT NULL,
    teams               TEXT NOT NULL,
    service_tier        TEXT NOT NULL,
    inference_geo       TEXT NOT NULL,
    speed               TEXT NOT NULL,
    context_window      TEXT NOT NULL,
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
    PRIMARY KEY (bucket, key_id, model, owner, teams, service_tier, inference_geo, speed, context_window)
);
CREATE INDEX IF NOT EXISTS usage_daily_owner ON usage_daily (owner, bucket);
DO $mig$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM usage_daily LIMIT 1) THEN
        INSERT INTO usage_daily (bucket, key_id, model, owner, teams, service_tier, inference_geo, speed,
                                 context_window, requests, errors, estimated, input_tokens, output_tokens,
                                 cache_creation_5m, cache_creation_1h, cache_read, web_search_requests, cost_micro)
        SELECT floor(bucket / 86400) * 86400, key_id, model, owner, teams, service_tier, inference_geo, speed,
               context_window, sum(requests), sum(errors), sum(estimated), sum(input_tokens), sum(output_tokens),
               sum(cache_creation_5m), sum(cache_creation_1h), sum(cache_read), sum(web_search_requests),
               sum(cost_micro)
        FROM usage_hourly GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;
    END IF;
END
$mig$;

CREATE OR REPLACE FUNCTION ethereal_usage_hourly_add() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO usage_hourly AS h (bucket, key_id, model, credential, route, owner, teams, service_tier,
                                   inference_geo, speed, context_window, requests, errors, estimated,
                                   input_tokens, output_tokens, cache_creation_5m, cache_creation_1h,
                                   cache_read, web_search_requests, cost_micro)
    SELECT floor(started_at / 3600) * 3600, COALESCE(key_id, ''), COALESCE(model, ''), COALESCE(credential, ''),
           route, COALESCE(owner, ''), COALESCE(teams, ''),
           COALESCE(service_tier, CASE WHEN batch THEN 'batch' ELSE 'standard' END),
           COALESCE(inference_geo, 'not_available'), COALESCE(speed, 'standard'),
           ethereal_context_window(input_tokens, cache_creation_5m, cache_creation_1h, cache_read),
           count(*), count(*) FILTER (WHERE status >= 400), count(*) FILTER (WHERE NOT exact),
           sum(input_tokens), sum(output_tokens), sum(cache_creation_5m), sum(cache_creation_1h),
           sum(cache_read), sum(web_search_requests), sum(cost_micro)
    FROM new_rows
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT (bucket, key_id, model, credential, route, owner, teams, service_tier, inference_geo, speed,
                 context_window) DO UPDATE SET
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
    INSERT INTO usage_daily AS h (bucket, key_id, model, owner, teams, service_tier, inference_geo, speed,
                                  context_window, requests, errors, estimated, input_tokens, output_tokens,
                                  cache_creation_5m, cache_creation_1h, cache_read, web_search_requests, cost_micro)
    SELECT floor(started_at / 86400) * 86400, COALESCE(key_id, ''), COALESCE(model, ''), COALESCE(owner, ''),
           COALESCE(teams, ''), COALESCE(service_tier, CASE WHEN batch THEN 'batch' ELSE 'standard' END),
           COALESCE(inference_geo, 'not_available'), COALESCE(speed, 'standard'),
           ethereal_context_window(input_tokens, cache_creation_5m, cache_creation_1h, cache_read),
           count(*), count(*) FILTER (WHERE status >= 400), count(*) FILTER (WHERE NOT exact),
           sum(input_tokens), sum(output_tokens), sum(cache_creation_5m), sum(cache_creation_1h),
           sum(cache_read), sum(web_search_requests), sum(cost_micro)
    FROM new_rows
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ON CONFLICT (bucket, key_id, model, owner, teams, service_tier, inference_geo, speed, context_window)
    DO UPDATE SET
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

CREATE OR REPLACE FUNCTION ethereal_usage_hourly_move() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO usage_hourly AS h (bucket, key_id, model, credential, route, owner, teams, service_tier,
                                   inference_geo, speed, context_window, requests, errors, estimated,
                                   input_tokens, output_tokens, cache_creation_5m, cache_creation_1h,
                                   cache_read, web_search_requests, cost_micro)
    SELECT b, k, m, c, r, ow, tm, st, ig, sp, cw, sum(n), sum(e), sum(est), sum(i), sum(o), sum(c5), sum(c1),
           sum(cr), sum(ws), sum(cost)
    FROM (
        SELECT floor(started_at / 3600) * 3600 AS b, COALESCE(key_id, '') AS k, COALESCE(model, '') AS m,
               COALESCE(credential, '') AS c, route AS r, COALESCE(owner, '') AS ow, COALESCE(teams, '') AS tm,
               COALESCE(service_tier, CASE WHEN batch THEN 'batch' ELSE 'standard' END) AS st,
               COALESCE(inference_geo, 'not_available') AS ig, COALESCE(speed, 'standard') AS sp,
               ethereal_context_window(input_tokens, cache_creation_5m, cache_creation_1h, cache_read) AS cw,
               -1 AS n, -(status >= 400)::int AS e,
               -(NOT exact)::int AS est, -input_tokens AS i, -output_tokens AS o, -cache_creation_5m AS c5,
               -cache_creation_1h AS c1, -cache_read AS cr, -web_search_requests AS ws, -cost_micro AS cost
        FROM old_rows
        UNION ALL
        SELECT floor(started_at / 3600) * 3600, COALESCE(key_id, ''), COALESCE(model, ''),
               COALESCE(credential, ''), route, COALESCE(owner, ''), COALESCE(teams, ''),
               COALESCE(service_tier, CASE WHEN batch THEN 'batch' ELSE 'standard' END),
               COALESCE(inference_geo, 'not_available'), COALESCE(speed, 'standard'),
               ethereal_context_window(input_tokens, cache_creation_5m, cache_creation_1h, cache_read),
               1, (status >= 400)::int, (NOT exact)::int, input_tokens,
               output_tokens, cache_creation_5m, cache_creation_1h, cache_read, web_search_requests, cost_micro
        FROM new_rows
    ) AS moved
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    HAVING sum(n) <> 0 OR sum(e) <> 0 OR sum(est) <> 0 OR sum(i) <> 0 OR sum(o) <> 0 OR sum(c5) <> 0
        OR sum(c1) <> 0 OR sum(cr) <> 0 OR sum(ws) <> 0 OR sum(cost) <> 0
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT (bucket, key_id, model, credential, route, owner, teams, service_tier, inference_geo, speed,
                 context_window) DO UPDATE SET
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
    INSERT INTO usage_daily AS h (bucket, key_id, model, owner, teams, service_tier, inference_geo, speed,
                                  context_window, requests, errors, estimated, input_tokens, output_tokens,
                                  cache_creation_5m, cache_creation_1h, cache_read, web_search_requests, cost_micro)
    SELECT b, k, m, ow, tm, st, ig, sp, cw, sum(n), sum(e), sum(est), sum(i), sum(o), sum(c5), sum(c1), sum(cr),
           sum(ws), sum(cost)
    FROM (
        SELECT floor(started_at / 86400) * 86400 AS b, COALESCE(key_id, '') AS k, COALESCE(model, '') AS m,
               COALESCE(owner, '') AS ow, COALESCE(teams, '') AS tm,
               COALESCE(service_tier, CASE WHEN batch THEN 'batch' ELSE 'standard' END) AS st,
               COALESCE(inference_geo, 'not_available') AS ig, COALESCE(speed, 'standard') AS sp,
               ethereal_context_window(input_tokens, cache_creation_5m, cache_creation_1h, cache_read) AS cw,
               -1 AS n, -(status >= 400)::int AS e, -(NOT exact)::int AS est, -input_tokens AS i,
               -output_tokens AS o, -cache_creation_5m AS c5, -cache_creation_1h AS c1, -cache_read AS cr,
               -web_search_requests AS ws, -cost_micro AS cost
        FROM old_rows
        UNION ALL
        SELECT floor(started_at / 86400) * 86400, COALESCE(key_id, ''), COALESCE(model, ''), COALESCE(owner, ''),
               COALESCE(teams, ''), COALESCE(service_tier, CASE WHEN batch THEN 'batch' ELSE 'standard' END),
               COALESCE(inference_geo, 'not_available'), COALESCE(speed, 'standard'),
               ethereal_context_window(input_tokens, cache_creation_5m, cache_creation_1h, cache_read),
               1, (status >= 400)::int, (NOT exact)::int, input_tokens, output_tokens, cache_creation_5m,
               cache_creation_1h, cache_read, web_search_requests, cost_micro
        FROM new_rows
    ) AS moved
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    HAVING sum(n) <> 0 OR sum(e) <> 0 OR sum(est) <> 0 OR sum(i) <> 0 OR sum(o) <> 0 OR sum(c5) <> 0
        OR sum(c1) <> 0 OR sum(cr) <> 0 OR sum(ws) <> 0 OR sum(cost) <> 0
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ON CONFLICT (bucket, key_id, model, owner, teams, service_tier, inference_geo, speed, context_window)
    DO UPDATE SET
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

CREATE TABLE IF NOT EXISTS spend_limits (
    id           TEXT PRIMARY KEY,                -- spl_…
    scope_type   TEXT NOT NULL,                   -- user | rbac_group | organization | api_key
    scope_id     TEXT NOT NULL DEFAULT '',        -- user_id, rbac_group_id, api_key_id; '' for organization
    period       TEXT NOT NULL,                   -- daily | weekly | monthly
    amount_cents BIGINT,                          -- NULL: unlimited; 0 blocks
    currency     TEXT NOT NULL DEFAULT 'USD',
    shared       BOOLEAN NOT NULL DEFAULT FALSE,  -- one pooled cap for the group (extension)
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL,
    UNIQUE (scope_type, scope_id, period, shared)
);
CREATE TABLE IF NOT EXISTS spend_limit_audit (
    id          TEXT PRIMARY KEY,                 -- spla_… (sorts by time)
    at          DOUBLE PRECISION NOT NULL,
    actor       TEXT NOT NULL,                    -- admin_key | console | cli
    action      TEXT NOT NULL,                    -- created | updated | deleted
    object_type TEXT NOT NULL,                    -- spend_limit | webhook
    object_id   TEXT NOT NULL,
    before      JSONB,
    after       JSONB
);
CREATE INDEX IF NOT EXISTS spend_limit_audit_object ON spend_limit_audit (object_id, id);
CREATE TABLE IF NOT EXISTS webhooks (
    id          TEXT PRIMARY KEY,                 -- wh_…
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,                    -- whsec_…, encrypted at rest when ETHEREAL_SECRET_KEY is set
    events      JSONB,                            -- NULL: every event
    description TEXT NOT NULL DEFAULT '',
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id          TEXT PRIMARY KEY,                 -- msg_… (the webhook-id header), one row per attempt series
    webhook_id  TEXT NOT NULL,
    event       TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL,                    -- pending | delivered | failed
    last_status INTEGER,                          -- the receiver's last HTTP status (NULL: no answer)
    last_error  TEXT,
    updated_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at);
