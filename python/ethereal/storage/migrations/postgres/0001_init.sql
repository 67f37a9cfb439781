CREATE TABLE IF NOT EXISTS api_keys (
    id               TEXT PRIMARY KEY,
    key_hash         TEXT NOT NULL UNIQUE,
    display          TEXT NOT NULL,
    name             TEXT NOT NULL DEFAULT '',
    owner            TEXT NOT NULL DEFAULT '',
    plan             TEXT,
    budget_tokens    BIGINT,
    budget_micro_usd BIGINT,
    rpm              INTEGER,
    tpm              BIGINT,
    max_concurrency  INTEGER,
    allowed_models   JSONB,
    expires_at       DOUBLE PRECISION,
    revoked          BOOLEAN NOT NULL DEFAULT FALSE,
    metadata         JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys (owner);
CREATE INDEX IF NOT EXISTS api_keys_plan ON api_keys (plan);

CREATE TABLE IF NOT EXISTS usage_records (
    request_id          TEXT NOT NULL,
    key_id              TEXT,
    credential          TEXT,
    route               TEXT NOT NULL,
    model               TEXT,
    status              INTEGER NOT NULL,
    stream              BOOLEAN NOT NULL,
    input_tokens        BIGINT NOT NULL DEFAULT 0,
    output_tokens       BIGINT NOT NULL DEFAULT 0,
    cache_creation_5m   BIGINT NOT NULL DEFAULT 0,
    cache_creation_1h   BIGINT NOT NULL DEFAULT 0,
    cache_read          BIGINT NOT NULL DEFAULT 0,
    exact               BOOLEAN NOT NULL DEFAULT TRUE,
    cache_ttl_assumed   BOOLEAN NOT NULL DEFAULT FALSE,
    cost_micro          BIGINT NOT NULL DEFAULT 0,
    ttfb_ms             DOUBLE PRECISION,
    duration_ms         DOUBLE PRECISION NOT NULL DEFAULT 0,
    started_at          DOUBLE PRECISION NOT NULL,
    ended_at            DOUBLE PRECISION NOT NULL,
    upstream_request_id TEXT,
    error_type          TEXT,
    PRIMARY KEY (request_id)
);
CREATE INDEX IF NOT EXISTS usage_key_time ON usage_records (key_id, started_at);
-- BRIN keeps a time index over millions of append-only rows at a few pages.
CREATE INDEX IF NOT EXISTS usage_time_brin ON usage_records USING brin (started_at);
