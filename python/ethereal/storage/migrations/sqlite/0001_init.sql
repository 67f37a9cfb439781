-- keys: only the sha256 of a key is stored
CREATE TABLE IF NOT EXISTS api_keys (
    id               TEXT PRIMARY KEY,
    key_hash         TEXT NOT NULL UNIQUE,
    display          TEXT NOT NULL,
    name             TEXT NOT NULL DEFAULT '',
    owner            TEXT NOT NULL DEFAULT '',
    plan             TEXT,
    budget_tokens    INTEGER,
    budget_micro_usd INTEGER,
    rpm              INTEGER,
    tpm              INTEGER,
    max_concurrency  INTEGER,
    allowed_models   TEXT,   -- JSON array or NULL
    expires_at       REAL,
    revoked          INTEGER NOT NULL DEFAULT 0,
    metadata         TEXT NOT NULL DEFAULT '{}',
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys (owner);
CREATE INDEX IF NOT EXISTS api_keys_plan ON api_keys (plan);

-- one row per request; never a body
CREATE TABLE IF NOT EXISTS usage_records (
    request_id          TEXT PRIMARY KEY,
    key_id              TEXT,
    credential          TEXT,
    route               TEXT NOT NULL,
    model               TEXT,
    status              INTEGER NOT NULL,
    stream              INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL DEFAULT 0,
    output_tokens       INTEGER NOT NULL DEFAULT 0,
    cache_creation_5m   INTEGER NOT NULL DEFAULT 0,
    cache_creation_1h   INTEGER NOT NULL DEFAULT 0,
    cache_read          INTEGER NOT NULL DEFAULT 0,
    exact               INTEGER NOT NULL DEFAULT 1,
    cache_ttl_assumed   INTEGER NOT NULL DEFAULT 0,
    cost_micro          INTEGER NOT NULL DEFAULT 0,
    ttfb_ms             REAL,
    duration_ms         REAL NOT NULL DEFAULT 0,
    started_at          REAL NOT NULL,
    ended_at            REAL NOT NULL,
    upstream_request_id TEXT,
    error_type          TEXT
);
CREATE INDEX IF NOT EXISTS usage_key_time ON usage_records (key_id, started_at);
CREATE INDEX IF NOT EXISTS usage_time ON usage_records (started_at);
