//! [`SecurityStore`] on PostgreSQL: the same SQL as the SQLite backend's
//! (`store/security.rs`), ported mechanically from it. Where SQLite serialises write
//! transactions with `BEGIN IMMEDIATE`, these take a transaction-scoped advisory lock
//! ([`begin_serial`]), so their check-then-write logic holds across processes too; the token
//! refresh additionally locks the connection's row (`SELECT … FOR UPDATE`), so exactly one
//! process at a time can take the refresh lease.
//!
//! Keep in step with `store/security.rs`: when a method changes there, change it here.

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{Postgres, Transaction};
use std::time::Duration;
use time::OffsetDateTime;

use super::PostgresStore;
use crate::store::security::*;
use crate::store::{ClaimedRun, StoreError, StoreFuture, StoreResult, from_ms, now, to_ms};

/// The advisory lock key of security write transactions (`hlbridge` in ASCII).
const SECURITY_LOCK: i64 = 0x686c_6272_6964_6765;

/// Begins a transaction serialised with every other security write transaction (as
/// SQLite's `BEGIN IMMEDIATE` is).
async fn begin_serial(pool: &PgPool) -> StoreResult<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SECURITY_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

fn opt_ms(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(to_ms)
}

fn json_of(s: &str) -> StoreResult<Value> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}

fn key_record(r: &PgRow) -> StoreResult<VaultKeyRecord> {
    Ok(VaultKeyRecord {
        id: r.try_get("id")?,
        state: r.try_get("state")?,
        master_id: r.try_get("master_id")?,
        wrapped: r.try_get("wrapped")?,
        created_at: from_ms(r.try_get("created_at")?),
    })
}

const CONNECTION_COLUMNS: &str = "id, name, kind, config, status, status_reason, expires_at, token_version, last_refresh_at, created_at, updated_at";

fn connection_record(r: &PgRow) -> StoreResult<ConnectionRecord> {
    Ok(ConnectionRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        config: json_of(&r.try_get::<String, _>("config")?)?,
        status: r.try_get("status")?,
        status_reason: r.try_get("status_reason")?,
        expires_at: r.try_get::<Option<i64>, _>("expires_at")?.map(from_ms),
        token_version: r.try_get("token_version")?,
        last_refresh_at: r.try_get::<Option<i64>, _>("last_refresh_at")?.map(from_ms),
        created_at: from_ms(r.try_get("created_at")?),
        updated_at: from_ms(r.try_get("updated_at")?),
    })
}

fn location_record(r: &PgRow) -> StoreResult<LocationRecord> {
    Ok(LocationRecord {
        connection_id: r.try_get("connection_id")?,
        location_id: r.try_get("location_id")?,
        name: r.try_get("name")?,
        expires_at: r.try_get::<Option<i64>, _>("expires_at")?.map(from_ms),
        status: r.try_get("status")?,
        status_reason: r.try_get("status_reason")?,
        updated_at: from_ms(r.try_get("updated_at")?),
    })
}

const USER_COLUMNS: &str = "id, name, role, password_hash, created_at, updated_at";

fn user_record(r: &PgRow) -> StoreResult<UserRecord> {
    Ok(UserRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        password_hash: r.try_get("password_hash")?,
        created_at: from_ms(r.try_get("created_at")?),
        updated_at: from_ms(r.try_get("updated_at")?),
    })
}

fn session_record(r: &PgRow) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        token_hash: r.try_get("token_hash")?,
        user_id: r.try_get("user_id")?,
        source: r.try_get("source")?,
        created_at: from_ms(r.try_get("created_at")?),
        expires_at: from_ms(r.try_get("expires_at")?),
        last_seen_at: from_ms(r.try_get("last_seen_at")?),
    })
}

const TOKEN_COLUMNS: &str =
    "id, name, role, token_hash, created_by, created_at, expires_at, last_used_at, revoked_at";

fn token_record(r: &PgRow) -> StoreResult<ApiTokenRecord> {
    Ok(ApiTokenRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        token_hash: r.try_get("token_hash")?,
        created_by: r.try_get("created_by")?,
        created_at: from_ms(r.try_get("created_at")?),
        expires_at: r.try_get::<Option<i64>, _>("expires_at")?.map(from_ms),
        last_used_at: r.try_get::<Option<i64>, _>("last_used_at")?.map(from_ms),
        revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(from_ms),
    })
}

fn audit_record(r: &PgRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: from_ms(r.try_get("at")?),
        actor_kind: r.try_get("actor_kind")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        source: r.try_get("source")?,
        details: json_of(&r.try_get::<String, _>("details")?)?,
    })
}

async fn put_secret_in(
    conn: &mut PgConnection,
    r: &SecretRef,
    s: &SealedSecret,
    at: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO vault_secrets (owner_table, owner_id, name, key_id, ciphertext, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (owner_table, owner_id, name) DO UPDATE SET key_id = excluded.key_id, \
         ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
    )
    .bind(&r.owner_table)
    .bind(&r.owner_id)
    .bind(&r.name)
    .bind(&s.key_id)
    .bind(&s.ciphertext)
    .bind(at)
    .execute(conn)
    .await
    .map_err(|e| {
        if is_fk_violation(&e) {
            StoreError::Conflict(format!(
                "vault key {} was retired while sealing {r}",
                s.key_id
            ))
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Prefix pattern of the location secrets of a connection (`<id>/%`).
fn location_owner_prefix(connection_id: &str) -> String {
    format!("{connection_id}/%")
}

async fn delete_connection_in(conn: &mut PgConnection, id: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM vault_secrets WHERE owner_table = 'connections' AND owner_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM vault_secrets WHERE owner_table = 'connection_locations' AND owner_id LIKE $1",
    )
    .bind(location_owner_prefix(id))
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM connection_locations WHERE connection_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM connections WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl SecurityStore for PostgresStore {
    fn vault_keys(&self) -> StoreFuture<'_, Vec<VaultKeyRecord>> {
        Box::pin(async move {
            sqlx::query(
                "SELECT id, state, master_id, wrapped, created_at FROM vault_keys ORDER BY created_at, id",
            )
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(key_record)
            .collect()
        })
    }

    fn ensure_vault_key<'a>(&'a self, key: &'a VaultKeyRecord) -> StoreFuture<'a, VaultKeyRecord> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            let existing = sqlx::query(
                "SELECT id, state, master_id, wrapped, created_at FROM vault_keys WHERE state = 'active'",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let out = match existing {
                Some(row) => key_record(&row)?,
                None => {
                    sqlx::query(
                        "INSERT INTO vault_keys (id, state, master_id, wrapped, created_at) \
                         VALUES ($1, 'active', $2, $3, $4)",
                    )
                    .bind(&key.id)
                    .bind(&key.master_id)
                    .bind(&key.wrapped)
                    .bind(to_ms(key.created_at))
                    .execute(&mut *tx)
                    .await?;
                    VaultKeyRecord {
                        state: "active".into(),
                        ..key.clone()
                    }
                }
            };
            tx.commit().await?;
            Ok(out)
        })
    }

    fn rotate_vault_key<'a>(&'a self, key: &'a VaultKeyRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            sqlx::query("UPDATE vault_keys SET state = 'retiring' WHERE state = 'active'")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO vault_keys (id, state, master_id, wrapped, created_at) \
                 VALUES ($1, 'active', $2, $3, $4)",
            )
            .bind(&key.id)
            .bind(&key.master_id)
            .bind(&key.wrapped)
            .bind(to_ms(key.created_at))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn rewrap_vault_keys<'a>(
        &'a self,
        old_master: &'a str,
        keys: &'a [VaultKeyRecord],
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            let ring: Vec<(String, String)> = sqlx::query_as(crate::store::shared_sql::VAULT_RING)
                .fetch_all(&mut *tx)
                .await?;
            if !crate::store::security::ring_matches(&ring, old_master, keys) {
                return Ok(false);
            }
            for k in keys {
                sqlx::query(crate::store::shared_sql::REWRAP_VAULT_KEY)
                    .bind(&k.master_id)
                    .bind(&k.wrapped)
                    .bind(&k.id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn delete_vault_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            let used: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM vault_secrets WHERE key_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            if used > 0 {
                return Ok(false);
            }
            let n = sqlx::query("DELETE FROM vault_keys WHERE id = $1 AND state = 'retiring'")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn get_secret<'a>(&'a self, r: &'a SecretRef) -> StoreFuture<'a, Option<SealedSecret>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT key_id, ciphertext FROM vault_secrets \
                 WHERE owner_table = $1 AND owner_id = $2 AND name = $3",
            )
            .bind(&r.owner_table)
            .bind(&r.owner_id)
            .bind(&r.name)
            .fetch_optional(self.pool())
            .await?;
            row.map(|row| {
                Ok(SealedSecret {
                    key_id: row.try_get("key_id")?,
                    ciphertext: row.try_get("ciphertext")?,
                })
            })
            .transpose()
        })
    }

    fn put_secret<'a>(&'a self, r: &'a SecretRef, s: &'a SealedSecret) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.pool().acquire().await?;
            put_secret_in(&mut conn, r, s, to_ms(now())).await
        })
    }

    fn delete_secret<'a>(&'a self, r: &'a SecretRef) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "DELETE FROM vault_secrets WHERE owner_table = $1 AND owner_id = $2 AND name = $3",
            )
            .bind(&r.owner_table)
            .bind(&r.owner_id)
            .bind(&r.name)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn secrets_sealed_with<'a>(
        &'a self,
        key_id: &'a str,
        limit: u32,
    ) -> StoreFuture<'a, Vec<(SecretRef, SealedSecret)>> {
        Box::pin(async move {
            sqlx::query(
                "SELECT owner_table, owner_id, name, key_id, ciphertext FROM vault_secrets \
                 WHERE key_id = $1 ORDER BY owner_table, owner_id, name LIMIT $2",
            )
            .bind(key_id)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| {
                Ok((
                    SecretRef {
                        owner_table: row.try_get("owner_table")?,
                        owner_id: row.try_get("owner_id")?,
                        name: row.try_get("name")?,
                    },
                    SealedSecret {
                        key_id: row.try_get("key_id")?,
                        ciphertext: row.try_get("ciphertext")?,
                    },
                ))
            })
            .collect()
        })
    }

    fn reseal_secret<'a>(
        &'a self,
        r: &'a SecretRef,
        old: &'a SealedSecret,
        new: &'a SealedSecret,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let n = sqlx::query(
                "UPDATE vault_secrets SET key_id = $1, ciphertext = $2, updated_at = $3 \
                 WHERE owner_table = $4 AND owner_id = $5 AND name = $6 AND ciphertext = $7",
            )
            .bind(&new.key_id)
            .bind(&new.ciphertext)
            .bind(to_ms(now()))
            .bind(&r.owner_table)
            .bind(&r.owner_id)
            .bind(&r.name)
            .bind(&old.ciphertext)
            .execute(self.pool())
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn count_secrets_by_key(&self) -> StoreFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            sqlx::query(
                "SELECT key_id, COUNT(*) AS n FROM vault_secrets GROUP BY key_id ORDER BY key_id",
            )
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("key_id")?,
                    u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                ))
            })
            .collect()
        })
    }

    fn save_connection<'a>(
        &'a self,
        c: &'a ConnectionRecord,
        secrets: &'a [(SecretRef, SealedSecret)],
        replace: bool,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            if replace {
                let old: Option<String> =
                    sqlx::query_scalar("SELECT id FROM connections WHERE name = $1")
                        .bind(&c.name)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(old) = old {
                    delete_connection_in(&mut tx, &old).await?;
                }
            }
            sqlx::query(
                "INSERT INTO connections (id, name, kind, config, status, status_reason, expires_at, \
                 token_version, last_refresh_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&c.id)
            .bind(&c.name)
            .bind(&c.kind)
            .bind(c.config.to_string())
            .bind(&c.status)
            .bind(c.status_reason.as_deref())
            .bind(opt_ms(c.expires_at))
            .bind(c.token_version)
            .bind(opt_ms(c.last_refresh_at))
            .bind(to_ms(c.created_at))
            .bind(to_ms(c.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("a connection named `{}` exists", c.name))
                } else {
                    e.into()
                }
            })?;
            let at = to_ms(now());
            for (r, s) in secrets {
                put_secret_in(&mut tx, r, s, at).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn list_connections(&self) -> StoreFuture<'_, Vec<ConnectionRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections ORDER BY name");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(connection_record)
                .collect()
        })
    }

    fn get_connection<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ConnectionRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE name = $1");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(name)
                .fetch_optional(self.pool())
                .await?
                .as_ref()
                .map(connection_record)
                .transpose()
        })
    }

    fn get_connection_by_id<'a>(
        &'a self,
        id: &'a str,
    ) -> StoreFuture<'a, Option<ConnectionRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = $1");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .as_ref()
                .map(connection_record)
                .transpose()
        })
    }

    fn delete_connection<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            let id: Option<String> =
                sqlx::query_scalar("SELECT id FROM connections WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(id) = id else {
                return Ok(false);
            };
            delete_connection_in(&mut tx, &id).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn begin_refresh<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        seen_version: i64,
        lease: Duration,
    ) -> StoreFuture<'a, RefreshClaim> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            let row = sqlx::query(
                "SELECT status, status_reason, token_version, refresh_owner, refresh_until \
                 FROM connections WHERE id = $1 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(RefreshClaim::Missing);
            };
            let status: String = row.try_get("status")?;
            let version: i64 = row.try_get("token_version")?;
            let at = to_ms(now());
            if status == "broken" {
                let reason: Option<String> = row.try_get("status_reason")?;
                return Ok(RefreshClaim::Broken {
                    reason: reason.unwrap_or_else(|| "broken".into()),
                });
            }
            if version != seen_version {
                return Ok(RefreshClaim::Changed { version });
            }
            let holder: Option<String> = row.try_get("refresh_owner")?;
            let until: Option<i64> = row.try_get("refresh_until")?;
            if let (Some(h), Some(u)) = (&holder, until)
                && h != owner
                && u > at
            {
                return Ok(RefreshClaim::Busy { until: from_ms(u) });
            }
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
            sqlx::query(
                "UPDATE connections SET refresh_owner = $1, refresh_until = $2 WHERE id = $3",
            )
            .bind(owner)
            .bind(at.saturating_add(lease_ms))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(RefreshClaim::Claimed)
        })
    }

    fn finish_refresh<'a>(
        &'a self,
        id: &'a str,
        seen_version: i64,
        secrets: &'a [(SecretRef, SealedSecret)],
        expires_at: OffsetDateTime,
    ) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            let at = to_ms(now());
            let n = sqlx::query(
                "UPDATE connections SET token_version = token_version + 1, expires_at = $1, \
                 refresh_owner = NULL, refresh_until = NULL, status = 'ok', status_reason = NULL, \
                 last_refresh_at = $2, updated_at = $2 WHERE id = $3 AND token_version = $4",
            )
            .bind(to_ms(expires_at))
            .bind(at)
            .bind(id)
            .bind(seen_version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Ok(None);
            }
            for (r, s) in secrets {
                put_secret_in(&mut tx, r, s, at).await?;
            }
            tx.commit().await?;
            Ok(Some(seen_version + 1))
        })
    }

    fn release_refresh<'a>(&'a self, id: &'a str, owner: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE connections SET refresh_owner = NULL, refresh_until = NULL \
                 WHERE id = $1 AND refresh_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn mark_connection_broken<'a>(
        &'a self,
        id: &'a str,
        reason: &'a str,
        seen_version: Option<i64>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let n = sqlx::query(
                "UPDATE connections SET status = 'broken', status_reason = $1, refresh_owner = NULL, \
                 refresh_until = NULL, updated_at = $2 WHERE id = $3 AND ($4 IS NULL OR token_version = $4)",
            )
            .bind(reason)
            .bind(to_ms(now()))
            .bind(id)
            .bind(seen_version)
            .execute(self.pool())
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn upsert_location<'a>(
        &'a self,
        l: &'a LocationRecord,
        token: Option<(&'a SecretRef, &'a SealedSecret)>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            let at = to_ms(now());
            sqlx::query(
                "INSERT INTO connection_locations (connection_id, location_id, name, expires_at, status, \
                 status_reason, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (connection_id, location_id) DO UPDATE SET \
                 name = COALESCE(excluded.name, connection_locations.name), \
                 expires_at = COALESCE(excluded.expires_at, connection_locations.expires_at), \
                 status = excluded.status, status_reason = excluded.status_reason, \
                 updated_at = excluded.updated_at",
            )
            .bind(&l.connection_id)
            .bind(&l.location_id)
            .bind(l.name.as_deref())
            .bind(opt_ms(l.expires_at))
            .bind(&l.status)
            .bind(l.status_reason.as_deref())
            .bind(at)
            .execute(&mut *tx)
            .await?;
            if let Some((r, s)) = token {
                put_secret_in(&mut tx, r, s, at).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn list_locations<'a>(
        &'a self,
        connection_id: &'a str,
    ) -> StoreFuture<'a, Vec<LocationRecord>> {
        Box::pin(async move {
            sqlx::query(
                "SELECT connection_id, location_id, name, expires_at, status, status_reason, updated_at \
                 FROM connection_locations WHERE connection_id = $1 ORDER BY location_id",
            )
            .bind(connection_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(location_record)
            .collect()
        })
    }

    fn insert_user<'a>(&'a self, u: &'a UserRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO users (id, name, role, password_hash, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&u.id)
            .bind(&u.name)
            .bind(&u.role)
            .bind(u.password_hash.as_deref())
            .bind(to_ms(u.created_at))
            .bind(to_ms(u.updated_at))
            .execute(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("a user named `{}` exists", u.name))
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })
    }

    fn get_user_by_name<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<UserRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(name)
                .fetch_optional(self.pool())
                .await?
                .as_ref()
                .map(user_record)
                .transpose()
        })
    }

    fn get_user<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<UserRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .as_ref()
                .map(user_record)
                .transpose()
        })
    }

    fn list_users(&self) -> StoreFuture<'_, Vec<UserRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY name");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(user_record)
                .collect()
        })
    }

    fn delete_user<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn set_user_role<'a>(&'a self, id: &'a str, role: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let n = sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE id = $3")
                .bind(role)
                .bind(to_ms(now()))
                .bind(id)
                .execute(self.pool())
                .await?
                .rows_affected();
            Ok(n == 1)
        })
    }

    fn set_user_password<'a>(
        &'a self,
        id: &'a str,
        password_hash: Option<&'a str>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let n =
                sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
                    .bind(password_hash)
                    .bind(to_ms(now()))
                    .bind(id)
                    .execute(self.pool())
                    .await?
                    .rows_affected();
            Ok(n == 1)
        })
    }

    fn count_users_with_role<'a>(&'a self, role: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = $1")
                .bind(role)
                .fetch_one(self.pool())
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn insert_session<'a>(&'a self, s: &'a SessionRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO sessions (token_hash, user_id, source, created_at, expires_at, last_seen_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&s.token_hash)
            .bind(&s.user_id)
            .bind(s.source.as_deref())
            .bind(to_ms(s.created_at))
            .bind(to_ms(s.expires_at))
            .bind(to_ms(s.last_seen_at))
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn get_session<'a>(&'a self, token_hash: &'a str) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(async move {
            sqlx::query(
                "SELECT token_hash, user_id, source, created_at, expires_at, last_seen_at \
                 FROM sessions WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(session_record)
            .transpose()
        })
    }

    fn touch_session<'a>(&'a self, token_hash: &'a str, at: OffsetDateTime) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE token_hash = $2")
                .bind(to_ms(at))
                .bind(token_hash)
                .execute(self.pool())
                .await?;
            Ok(())
        })
    }

    fn delete_session<'a>(&'a self, token_hash: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let n = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                .bind(token_hash)
                .execute(self.pool())
                .await?
                .rows_affected();
            Ok(n == 1)
        })
    }

    fn delete_sessions_of<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            Ok(sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id)
                .execute(self.pool())
                .await?
                .rows_affected())
        })
    }

    fn insert_api_token<'a>(&'a self, t: &'a ApiTokenRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO api_tokens (id, name, role, token_hash, created_by, created_at, expires_at, \
                 last_used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&t.id)
            .bind(&t.name)
            .bind(&t.role)
            .bind(&t.token_hash)
            .bind(t.created_by.as_deref())
            .bind(to_ms(t.created_at))
            .bind(opt_ms(t.expires_at))
            .bind(opt_ms(t.last_used_at))
            .bind(opt_ms(t.revoked_at))
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn get_api_token_by_hash<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> StoreFuture<'a, Option<ApiTokenRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(token_hash)
                .fetch_optional(self.pool())
                .await?
                .as_ref()
                .map(token_record)
                .transpose()
        })
    }

    fn list_api_tokens(&self) -> StoreFuture<'_, Vec<ApiTokenRecord>> {
        Box::pin(async move {
            let sql =
                format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id DESC");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(token_record)
                .collect()
        })
    }

    fn revoke_api_token<'a>(&'a self, id: &'a str, at: OffsetDateTime) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let n = sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(to_ms(at))
            .bind(id)
            .execute(self.pool())
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn touch_api_token<'a>(&'a self, id: &'a str, at: OffsetDateTime) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(to_ms(at))
                .bind(id)
                .execute(self.pool())
                .await?;
            Ok(())
        })
    }

    fn record_login_failure<'a>(
        &'a self,
        keys: &'a [String],
        at: OffsetDateTime,
        prune_before: OffsetDateTime,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = begin_serial(self.pool()).await?;
            sqlx::query("DELETE FROM login_failures WHERE at < $1")
                .bind(to_ms(prune_before))
                .execute(&mut *tx)
                .await?;
            for k in keys {
                sqlx::query("INSERT INTO login_failures (key, at) VALUES ($1, $2)")
                    .bind(k)
                    .bind(to_ms(at))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn login_failures<'a>(
        &'a self,
        key: &'a str,
        since: OffsetDateTime,
    ) -> StoreFuture<'a, (u64, Option<OffsetDateTime>)> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM login_failures WHERE key = $1 AND at >= $2",
            )
            .bind(key)
            .bind(to_ms(since))
            .fetch_one(self.pool())
            .await?;
            let n: i64 = row.try_get("n")?;
            let oldest: Option<i64> = row.try_get("oldest")?;
            Ok((u64::try_from(n).unwrap_or(0), oldest.map(from_ms)))
        })
    }

    fn clear_login_failures<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM login_failures WHERE key = $1")
                .bind(key)
                .execute(self.pool())
                .await?;
            Ok(())
        })
    }

    fn append_audit<'a>(&'a self, e: &'a AuditRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO audit_log (id, at, actor_kind, actor, action, target, source, details) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&e.id)
            .bind(to_ms(e.at))
            .bind(&e.actor_kind)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(e.target.as_deref())
            .bind(e.source.as_deref())
            .bind(e.details.to_string())
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn list_audit<'a>(&'a self, filter: &'a AuditFilter) -> StoreFuture<'a, Vec<AuditRecord>> {
        Box::pin(async move {
            let limit = if filter.limit == 0 {
                i64::MAX
            } else {
                i64::from(filter.limit)
            };
            let mut rows = sqlx::query(
                "SELECT id, at, actor_kind, actor, action, target, source, details FROM audit_log \
                 WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR actor = $2) AND ($3 IS NULL OR action = $3) \
                 ORDER BY at DESC, id DESC LIMIT $4",
            )
            .bind(filter.since.map(to_ms))
            .bind(filter.actor.as_deref())
            .bind(filter.action.as_deref())
            .bind(limit)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(audit_record)
            .collect::<StoreResult<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    fn defer_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        until: OffsetDateTime,
        reason: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let n = sqlx::query(
                "UPDATE runs SET state = 'queued', next_attempt_at = $1, last_error = $2, \
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
                 lease_until = NULL, lease_token = NULL, updated_at = $3 \
                 WHERE id = $4 AND lease_token = $5 AND state = 'running'",
            )
            .bind(to_ms(until))
            .bind(reason)
            .bind(to_ms(now()))
            .bind(run.id.to_string())
            .bind(&run.lease_token)
            .execute(self.pool())
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }
}
