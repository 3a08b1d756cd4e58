-- hlbridge security schema (vault, connections, users, sessions, API tokens, audit log),
-- PostgreSQL flavour: the twin of migrations/sqlite/0003_security.sql, the same tables,
-- columns, types and indexes; the two audit triggers call a PL/pgSQL function that raises
-- an exception, as SQLite's RAISE(ABORT) does.
-- Times are BIGINT milliseconds since the Unix epoch (UTC); ids are UUID v7 text.

-- The key ring: data keys wrapped (encrypted) with the master key. One key is `active`
-- (new secrets are sealed with it); `retiring` keys still open old secrets while a rotation
-- re-encrypts them. A retired key is deleted, which the foreign key below refuses while any
-- secret still uses it.
CREATE TABLE vault_keys (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('active', 'retiring')),
    master_id   TEXT NOT NULL,            -- fingerprint of the master key that wraps it
    wrapped     TEXT NOT NULL,            -- base64(nonce || ciphertext+tag)
    created_at  BIGINT NOT NULL
);

-- Every secret, encrypted (XChaCha20-Poly1305). The associated data binds a ciphertext to
-- (owner_table, owner_id, name), so it cannot be moved to another row.
CREATE TABLE vault_secrets (
    owner_table TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    name        TEXT NOT NULL,
    key_id      TEXT NOT NULL REFERENCES vault_keys (id),
    ciphertext  TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (owner_table, owner_id, name)
);

CREATE INDEX vault_secrets_key ON vault_secrets (key_id);

-- Connections: HighLevel (OAuth or Private Integration Token) and apps. Secrets live in
-- vault_secrets (owner_table 'connections', owner_id = id).
CREATE TABLE connections (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('highlevel_oauth', 'highlevel_token', 'app')),
    config          TEXT NOT NULL,        -- JSON, no secrets
    status          TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'broken')),
    status_reason   TEXT,
    expires_at      BIGINT,               -- the access token's expiry (OAuth)
    token_version   BIGINT NOT NULL DEFAULT 0, -- bumped by every committed refresh
    refresh_owner   TEXT,                 -- who holds the refresh lease
    refresh_until   BIGINT,               -- the lease's end
    last_refresh_at BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- Locations of an agency (Company) connection, each with its minted location token
-- (secret owner_table 'connection_locations', owner_id = '<connection id>/<location id>').
CREATE TABLE connection_locations (
    connection_id TEXT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    location_id   TEXT NOT NULL,
    name          TEXT,
    expires_at    BIGINT,
    status        TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'broken')),
    status_reason TEXT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (connection_id, location_id)
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'operator', 'viewer')),
    password_hash TEXT,                   -- argon2id PHC string; NULL: no password login
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Login sessions; only the SHA-256 of the session token is stored.
CREATE TABLE sessions (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source       TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);

CREATE INDEX sessions_user ON sessions (user_id);

-- API tokens with a role; only the SHA-256 of the token is stored.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'operator', 'viewer')),
    token_hash   TEXT NOT NULL UNIQUE,
    created_by   TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

-- Failed logins, for throttling (keys `user:<name>` and `addr:<address>`).
CREATE TABLE login_failures (
    key  TEXT NOT NULL,
    at   BIGINT NOT NULL
);

CREATE INDEX login_failures_key ON login_failures (key, at);

-- The audit log: append-only.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,         -- UUID v7 (sorts by time)
    at          BIGINT NOT NULL,
    actor_kind  TEXT NOT NULL CHECK (actor_kind IN ('user', 'token', 'system')),
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    source      TEXT,
    details     TEXT NOT NULL             -- JSON, never secrets
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
