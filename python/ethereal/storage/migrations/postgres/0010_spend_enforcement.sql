-- spend limits enforced (#22): a person's cap counter is seeded from their records of the period
-- (spend/enforce.py, storage seed_period_spend); the records are found by owner and time.
CREATE INDEX IF NOT EXISTS usage_owner_time ON usage_records (owner, started_at);
