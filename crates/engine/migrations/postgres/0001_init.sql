-- hlbridge engine schema, PostgreSQL flavour: the twin of migrations/sqlite/0001_init.sql,
-- with the same tables, columns, types and indexes (a test compares both schemas).
-- JSON stays TEXT (JSONB would reorder object keys, which flows and run history keep);
-- booleans stay INTEGER 0/1 like SQLite's.
-- Times are BIGINT milliseconds since the Unix epoch (UTC); ids are UUID v7 text.

CREATE TABLE flows (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    definition  TEXT NOT NULL,           -- the flow as JSON
    enabled     INTEGER NOT NULL DEFAULT 1,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    flow_id     TEXT NOT NULL,
    dedupe_key  TEXT NOT NULL UNIQUE,    -- a second copy of an event is a no-op
    payload     TEXT NOT NULL,           -- JSON
    received_at BIGINT NOT NULL
);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    flow_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL REFERENCES events (id),
    state           TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'skipped', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,     -- when a queued or failed run may be claimed
    lease_until     BIGINT,              -- a running run whose lease lapsed is claimed again
    lease_token     TEXT,                -- identifies the current claim
    worker_id       TEXT,
    last_error      TEXT,
    error_body      TEXT,                -- JSON response body of the failure (dead letters)
    replay_of       TEXT REFERENCES runs (id),
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT
);

CREATE INDEX runs_ready ON runs (state, next_attempt_at);
CREATE INDEX runs_flow ON runs (flow_id, created_at);
CREATE INDEX runs_event ON runs (event_id);
CREATE INDEX runs_replay ON runs (replay_of);

CREATE TABLE step_results (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    step_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,        -- order of execution within the run
    input       TEXT,                    -- JSON
    output      TEXT,                    -- JSON
    error       TEXT,                    -- JSON
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE cursors (
    flow_id     TEXT NOT NULL,
    location_id TEXT NOT NULL DEFAULT '',
    cursor      TEXT,                    -- JSON
    watermark   TEXT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (flow_id, location_id)
);

CREATE TABLE seen_items (
    flow_id     TEXT NOT NULL,
    item_key    TEXT NOT NULL,
    seen_at     BIGINT NOT NULL,
    PRIMARY KEY (flow_id, item_key)
);
