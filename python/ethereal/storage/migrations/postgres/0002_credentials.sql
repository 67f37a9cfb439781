CREATE TABLE IF NOT EXISTS upstream_credentials (
    name             TEXT PRIMARY KEY,
    base_url         TEXT NOT NULL,
    api_key_enc      TEXT NOT NULL,
    weight           DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    models           JSONB,
    rpm              INTEGER,
    spend_cap_micro  BIGINT,
    enabled          BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason  TEXT,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL
);
