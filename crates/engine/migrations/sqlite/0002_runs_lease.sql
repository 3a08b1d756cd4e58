-- Claimed runs are read back by their lease token (claim, then select the claimed rows).
-- Only running runs have a token (it is cleared when a run ends), so the partial index
-- stays as small as the set of runs in flight. PostgreSQL takes the statement as is.
CREATE INDEX runs_lease ON runs (lease_token) WHERE lease_token IS NOT NULL;
