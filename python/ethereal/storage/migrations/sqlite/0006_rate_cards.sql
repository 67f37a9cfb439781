-- exact pricing (#20): a usage record keeps what it was priced with (rate card id, whether it is
-- provisional, the usage labels that move a price), and history can be re-priced; one row per
-- reprice run (the console shows the last correction). The embedded store keeps no rollup: its
-- sums read the records, so a re-priced record moves them by itself.
ALTER TABLE usage_records ADD COLUMN rate_card TEXT;
ALTER TABLE usage_records ADD COLUMN priced_provisional INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN speed TEXT;
ALTER TABLE usage_records ADD COLUMN inference_geo TEXT;
ALTER TABLE usage_records ADD COLUMN service_tier TEXT;
CREATE TABLE IF NOT EXISTS price_corrections (
    id               TEXT PRIMARY KEY,
    at               REAL NOT NULL,
    since            REAL NOT NULL,
    until            REAL NOT NULL,
    registry_version TEXT NOT NULL,
    records          INTEGER NOT NULL,
    keys             INTEGER NOT NULL,
    before_micro     INTEGER NOT NULL,
    after_micro      INTEGER NOT NULL,
    detail           TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS price_corrections_at ON price_corrections (at);
