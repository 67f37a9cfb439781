-- spend limits, reports and alerts (#22): a key's teams, the owner and teams of each usage record,
-- spend limits and their audit, webhooks and their delivery log. The embedded store keeps no rollup
-- (its reports read the records, indexed by time). ADD COLUMN of a column already there is skipped
-- by the migrator, so the file can be applied twice.
ALTER TABLE api_keys ADD COLUMN teams TEXT NOT NULL DEFAULT '[]';
ALTER TABLE usage_records ADD COLUMN owner TEXT;
ALTER TABLE usage_records ADD COLUMN teams TEXT;
CREATE INDEX IF NOT EXISTS usage_owner_time ON usage_records (owner, started_at);
CREATE TABLE IF NOT EXISTS spend_limits (
    id           TEXT PRIMARY KEY,
    scope_type   TEXT NOT NULL,
    scope_id     TEXT NOT NULL DEFAULT '',
    period       TEXT NOT NULL,
    amount_cents INTEGER,
    currency     TEXT NOT NULL DEFAULT 'USD',
    shared       INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    UNIQUE (scope_type, scope_id, period, shared)
);
CREATE TABLE IF NOT EXISTS spend_limit_audit (
    id          TEXT PRIMARY KEY,
    at          REAL NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    before      TEXT,
    after       TEXT
);
CREATE INDEX IF NOT EXISTS spend_limit_audit_object ON spend_limit_audit (object_id, id);
CREATE TABLE IF NOT EXISTS webhooks (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    events      TEXT,
    description TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id          TEXT PRIMARY KEY,
    webhook_id  TEXT NOT NULL,
    event       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL,
    last_status INTEGER,
    last_error  TEXT,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at)
