-- Cluster coordination, SQLite flavour (twin: migrations/postgres/0004_cluster.sql).
-- Several processes sharing one database (`hlbridge serve` and `hlbridge worker`s on
-- PostgreSQL) take turns for periodic triggers and share each location's rate budget here.
-- Times are BIGINT milliseconds since the Unix epoch (UTC).

-- Periodic triggers (polls): the process that moves `next_due` forward takes the turn, so
-- each trigger fires once per interval across all processes.
CREATE TABLE trigger_turns (
    trigger_key TEXT PRIMARY KEY,       -- 'poll:<flow id>'
    holder      TEXT NOT NULL,          -- the worker that took the last turn
    next_due    BIGINT NOT NULL,        -- the next turn may be taken from then on
    taken_at    BIGINT NOT NULL
);

-- Each pacing key (location or company) has `burst` slots. A request holds one from the
-- moment it is sent until `interval` after its answer (`busy_until`), so all processes
-- together never send more than `burst` requests within any window of `interval`.
CREATE TABLE rate_slots (
    pacing_key  TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    busy_until  BIGINT NOT NULL,        -- free from then on
    holder      TEXT,                   -- the claim holding it (only it reports the answer)
    PRIMARY KEY (pacing_key, slot)
);

-- Requests counted against each pacing key's daily budget, per UTC day.
CREATE TABLE rate_daily (
    pacing_key  TEXT NOT NULL,
    day         BIGINT NOT NULL,        -- days since 1970-01-01 (UTC)
    used        BIGINT NOT NULL,
    PRIMARY KEY (pacing_key, day)
);
