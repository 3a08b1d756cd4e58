-- Whether the current claim of a run took it over from a worker that stopped (crash, lost
-- lease) while running it: the step that worker was on may have been carried out.
-- (Twin: migrations/postgres/0005_runs_taken_over.sql.)
ALTER TABLE runs ADD COLUMN taken_over INTEGER NOT NULL DEFAULT 0;
