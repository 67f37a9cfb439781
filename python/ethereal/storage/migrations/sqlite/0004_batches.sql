-- Message Batches (#13): one row per batch a key created, the credential it lives on (batches
-- stay on the upstream account that created them), its upstream id, counts and timestamps, what
-- was held against the key's budget, and whether its items have been metered (settled). The
-- lease lets one replica at a time poll and settle a batch.
CREATE TABLE IF NOT EXISTS message_batches (
    id                  TEXT PRIMARY KEY,
    key_id              TEXT,
    credential          TEXT NOT NULL,
    upstream_id         TEXT,
    status              TEXT NOT NULL,
    request_count       INTEGER NOT NULL,
    processing          INTEGER NOT NULL DEFAULT 0,
    succeeded           INTEGER NOT NULL DEFAULT 0,
    errored             INTEGER NOT NULL DEFAULT 0,
    canceled            INTEGER NOT NULL DEFAULT 0,
    expired             INTEGER NOT NULL DEFAULT 0,
    created_at          REAL NOT NULL,
    expires_at          REAL NOT NULL,
    ended_at            REAL,
    cancel_initiated_at REAL,
    archived_at         REAL,
    estimated_tokens    INTEGER NOT NULL DEFAULT 0,
    estimated_micro     INTEGER NOT NULL DEFAULT 0,
    held_tokens         INTEGER NOT NULL DEFAULT 0,
    held_micro          INTEGER NOT NULL DEFAULT 0,
    settled             INTEGER NOT NULL DEFAULT 0,
    settled_tokens      INTEGER NOT NULL DEFAULT 0,
    settled_micro       INTEGER NOT NULL DEFAULT 0,
    metered_items       INTEGER NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_until         REAL NOT NULL DEFAULT 0,
    polled_at           REAL NOT NULL DEFAULT 0,
    poll_failures       INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    updated_at          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS message_batches_key ON message_batches (key_id, id);
CREATE INDEX IF NOT EXISTS message_batches_unsettled ON message_batches (settled, key_id);
-- usage rows of batch items say so (billed at the batch price)
ALTER TABLE usage_records ADD COLUMN batch INTEGER NOT NULL DEFAULT 0;
