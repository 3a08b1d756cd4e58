//! Choosing the backend: SQLite in a data directory (the default, one machine) or
//! PostgreSQL (a `postgres://` URL, for `hlbridge serve` plus any number of `hlbridge worker`
//! processes on any machines), opening it, and applying its migrations with a report.
//!
//! Every command that touches the store takes `--database URL` (or `HLBRIDGE_DATABASE_URL`);
//! without it the store is SQLite in `--data DIR`.

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::Row;

use super::postgres::{PostgresOptions, PostgresStore};
use super::sqlite::SqliteStore;
use super::{Store, StoreError, StoreResult, database_path, default_data_dir};

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// SQLite, `hlbridge.db` in this data directory.
    Sqlite {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// PostgreSQL at this URL (`postgres://user:password@host:port/database`).
    Postgres {
        /// The connection URL.
        url: String,
    },
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Database {
    /// The store named by `url` (`postgres://…` or `postgresql://…`; `sqlite:DIR` names a
    /// data directory), else SQLite in `data_dir` (else the default data directory).
    pub fn resolve(url: Option<&str>, data_dir: Option<PathBuf>) -> StoreResult<Database> {
        match url.map(str::trim).filter(|u| !u.is_empty()) {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Database::Postgres { url: u.to_owned() })
            }
            Some(u) if u.starts_with("sqlite:") => {
                let dir = u.trim_start_matches("sqlite:").trim_start_matches("//");
                Ok(Database::Sqlite {
                    data_dir: PathBuf::from(dir),
                })
            }
            Some(u) => Err(StoreError::Conflict(format!(
                "unsupported database URL `{}`: use postgres://user:password@host:port/database (or leave it out for SQLite in --data DIR)",
                redact(u)
            ))),
            None => Ok(Database::Sqlite {
                data_dir: data_dir.unwrap_or_else(default_data_dir),
            }),
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres { .. })
    }

    /// For messages: the SQLite file, or the URL with its password replaced by `***`.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite { data_dir } => database_path(data_dir).display().to_string(),
            Database::Postgres { url } => redact(url),
        }
    }

    /// Whether the SQLite database file exists (always `true` for PostgreSQL).
    pub fn exists(&self) -> bool {
        match self {
            Database::Sqlite { data_dir } => database_path(data_dir).is_file(),
            Database::Postgres { .. } => true,
        }
    }
}

/// `url` with the password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<invalid URL>".to_owned(),
    }
}

/// Opens (creating and migrating if needed) the store.
pub async fn open(db: &Database) -> StoreResult<Arc<dyn Store>> {
    open_with(db, &PostgresOptions::default()).await
}

/// [`open`] with PostgreSQL options (pool size, schema).
pub async fn open_with(db: &Database, options: &PostgresOptions) -> StoreResult<Arc<dyn Store>> {
    Ok(match db {
        Database::Sqlite { data_dir } => Arc::new(SqliteStore::open(data_dir).await?),
        Database::Postgres { url } => Arc::new(PostgresStore::connect_with(url, options).await?),
    })
}

/// A migration of the schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationInfo {
    /// Its version (the number in its file name).
    pub version: i64,
    /// Its description.
    pub description: String,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    /// The database (password redacted).
    pub database: String,
    /// Migrations applied now.
    pub applied: Vec<MigrationInfo>,
    /// Migrations that were applied before.
    pub already: Vec<MigrationInfo>,
}

async fn applied_sqlite(data_dir: &std::path::Path) -> StoreResult<Vec<MigrationInfo>> {
    let path = database_path(data_dir);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&pool)
    .await?;
    let out = if exists == 0 {
        Vec::new()
    } else {
        read_applied_sqlite(&pool).await?
    };
    pool.close().await;
    Ok(out)
}

async fn read_applied_sqlite(pool: &sqlx::SqlitePool) -> StoreResult<Vec<MigrationInfo>> {
    sqlx::query("SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(MigrationInfo {
                version: r.try_get("version")?,
                description: r.try_get("description")?,
            })
        })
        .collect()
}

/// Applies every pending migration and reports which ones it applied. Safe to run while
/// other processes use the database (PostgreSQL: migrations take an advisory lock; every
/// migration only adds tables, columns and indexes).
pub async fn migrate(db: &Database) -> StoreResult<MigrationReport> {
    match db {
        Database::Sqlite { data_dir } => {
            let before = applied_sqlite(data_dir).await?;
            let store = SqliteStore::open(data_dir).await?;
            store.close().await;
            let after = applied_sqlite(data_dir).await?;
            Ok(report(db, before, after))
        }
        Database::Postgres { url } => {
            let options = PostgresOptions {
                max_connections: 2,
                listen: false,
                ..PostgresOptions::default()
            };
            let before = super::postgres::applied_migrations(url, &options).await?;
            let store = PostgresStore::connect_with(url, &options).await?;
            let after = super::postgres::read_applied(store.pool()).await?;
            store.close().await;
            Ok(report(db, before, after))
        }
    }
}

fn report(db: &Database, before: Vec<MigrationInfo>, after: Vec<MigrationInfo>) -> MigrationReport {
    let applied = after
        .iter()
        .filter(|m| !before.iter().any(|b| b.version == m.version))
        .cloned()
        .collect();
    MigrationReport {
        database: db.describe(),
        applied,
        already: before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let pg = Database::resolve(Some("postgres://u:secret@h:5432/db"), None).expect("pg");
        assert!(pg.is_postgres());
        assert_eq!(pg.describe(), "postgres://u:***@h:5432/db");
        assert!(!format!("{pg:?}").contains("secret"));
        let sq = Database::resolve(None, Some(PathBuf::from("/d"))).expect("sqlite");
        assert_eq!(sq.describe(), "/d/hlbridge.db");
        let sq = Database::resolve(Some("sqlite:///x/y"), None).expect("sqlite url");
        assert_eq!(
            sq,
            Database::Sqlite {
                data_dir: PathBuf::from("/x/y")
            }
        );
        let err = Database::resolve(Some("mysql://u:pw@h/db"), None).expect_err("unsupported");
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}
