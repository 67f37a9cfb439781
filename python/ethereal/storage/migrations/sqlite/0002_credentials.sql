CREATE TABLE IF NOT EXISTS upstream_credentials (
    name             TEXT PRIMARY KEY,
    base_url         TEXT NOT NULL,
    api_key_enc      TEXT NOT NULL,   -- Fernet token, never the plaintext
    weight           REAL NOT NULL DEFAULT 1.0,
    models           TEXT,            -- JSON array or NULL (all models)
    rpm              INTEGER,
    spend_cap_micro  INTEGER,
    enabled          INTEGER NOT NULL DEFAULT 1,
    disabled_reason  TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);
