//! The store backends the integration tests run against: SQLite (a fresh data directory per
//! test) and PostgreSQL (a fresh schema per test in the database at
//! `HLBRIDGE_TEST_DATABASE_URL`, default
//! `postgres://hlbridge:hlbridge@127.0.0.1:5432/hlbridge_test`). When no PostgreSQL server
//! is reachable the PostgreSQL variants print `skipping PostgreSQL tests: no server at …`
//! once and pass.
//!
//! [`both_backends!`] turns `async fn name(backend: Backend)` test bodies into one test per
//! backend: `sqlite::name` and `postgres::name`. [`on_both_backends!`] does the same for
//! `async fn name()` bodies, which find the backend with [`current`] (the engine helpers in
//! `fake.rs` do).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use hlbridge_engine::store::{Database, PostgresOptions, PostgresStore};
use hlbridge_engine::{SqliteStore, Store};
use sqlx::Connection;
use tokio::sync::OnceCell;

/// The default test database.
pub const DEFAULT_URL: &str = "postgres://hlbridge:hlbridge@127.0.0.1:5432/hlbridge_test";

/// Test schemas older than this are dropped when a test run starts.
const STALE_SCHEMA_SECS: u64 = 6 * 3600;

/// The PostgreSQL test database URL.
pub fn test_url() -> String {
    std::env::var("HLBRIDGE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

static REACHABLE: OnceCell<bool> = OnceCell::const_new();

/// Whether the PostgreSQL test server answers (checked once per test binary; prints the
/// skip notice when it does not, past the test harness's output capture).
pub async fn postgres_reachable() -> bool {
    *REACHABLE
        .get_or_init(|| async {
            let url = test_url();
            let shown = Database::resolve(Some(&url), None)
                .map(|d| d.describe())
                .unwrap_or_else(|_| "<invalid URL>".into());
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                drop_stale_schemas(&mut conn).await?;
                conn.close().await
            })
            .await;
            match attempt {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    notice(&format!(
                        "skipping PostgreSQL tests: no server at {shown} ({e})"
                    ));
                    false
                }
                Err(_) => {
                    notice(&format!(
                        "skipping PostgreSQL tests: no server at {shown} (no answer in 5 s)"
                    ));
                    false
                }
            }
        })
        .await
}

fn notice(msg: &str) {
    // Straight to the process's stderr: the harness captures only `eprintln!`.
    let _ = writeln!(std::io::stderr(), "\n{msg}\n");
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn drop_stale_schemas(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE 'hlt\\_%'")
            .fetch_all(&mut *conn)
            .await?;
    let now = unix_secs();
    for name in names {
        let born = name
            .split('_')
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if now.saturating_sub(born) > STALE_SCHEMA_SECS
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// A fresh schema name for one test.
pub fn fresh_schema() -> String {
    format!(
        "hlt_{}_{}",
        unix_secs(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

tokio::task_local! {
    /// The backend of the running test (see [`on_both_backends!`]).
    pub static BACKEND: Backend;
}

/// The backend of the running test (SQLite outside [`on_both_backends!`]).
pub fn current() -> Backend {
    BACKEND.try_with(Clone::clone).unwrap_or(Backend::Sqlite)
}

/// A store backend.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite in a fresh data directory.
    Sqlite,
    /// PostgreSQL in a fresh schema of the database at this URL.
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend, or `None` (with the skip notice) when no server answers.
    pub async fn postgres() -> Option<Backend> {
        postgres_reachable()
            .await
            .then(|| Backend::Postgres(test_url()))
    }

    /// A fresh store. The same `Shared` can open more handles on it (other "processes").
    pub async fn fresh(&self, tag: &str) -> Shared {
        match self {
            Backend::Sqlite => Shared::Sqlite(crate::fake::temp_dir(tag)),
            Backend::Postgres(url) => Shared::Postgres {
                url: url.clone(),
                schema: fresh_schema(),
            },
        }
    }

    /// A fresh store, opened.
    pub async fn store(&self, tag: &str) -> Arc<dyn Store> {
        self.fresh(tag).await.open().await
    }
}

/// One test's database, which several store handles (as several processes would) can open.
#[derive(Debug, Clone)]
pub enum Shared {
    /// A SQLite data directory.
    Sqlite(std::path::PathBuf),
    /// A schema in a PostgreSQL database.
    Postgres {
        /// The server.
        url: String,
        /// The schema.
        schema: String,
    },
}

impl Shared {
    /// Opens a handle (migrating on first use).
    pub async fn open(&self) -> Arc<dyn Store> {
        match self {
            Shared::Sqlite(dir) => Arc::new(SqliteStore::open(dir).await.expect("open SQLite")),
            Shared::Postgres { url, schema } => Arc::new(
                PostgresStore::connect_with(
                    url,
                    &PostgresOptions {
                        max_connections: 4,
                        schema: Some(schema.clone()),
                        ..PostgresOptions::default()
                    },
                )
                .await
                .expect("open PostgreSQL"),
            ),
        }
    }
}

/// One test per backend from `async fn name(backend: Backend)` bodies: `sqlite::name` and
/// `postgres::name` (the latter passes with a notice when no server is reachable).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::backends::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = $crate::backends::Backend::postgres().await {
                        super::$name(b).await;
                    }
                }
            )+
        }
    };
}

/// [`both_backends!`] for `async fn name()` bodies: the backend is set for the test's task
/// ([`current`]).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::backends::BACKEND
                        .scope($crate::backends::Backend::Sqlite, super::$name())
                        .await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = $crate::backends::Backend::postgres().await {
                        $crate::backends::BACKEND.scope(b, super::$name()).await;
                    }
                }
            )+
        }
    };
}

/// The PostgreSQL schema standing for each data directory, so several "processes" of one
/// test opened on the same directory share one database on either backend.
static SCHEMAS: std::sync::Mutex<std::collections::BTreeMap<std::path::PathBuf, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The test's database for data directory `dir` on the running test's backend.
pub fn shared_at(dir: &std::path::Path) -> Shared {
    match current() {
        Backend::Sqlite => Shared::Sqlite(dir.to_path_buf()),
        Backend::Postgres(url) => {
            let schema = SCHEMAS
                .lock()
                .map(|mut m| {
                    m.entry(dir.to_path_buf())
                        .or_insert_with(fresh_schema)
                        .clone()
                })
                .unwrap_or_else(|_| fresh_schema());
            Shared::Postgres { url, schema }
        }
    }
}

/// One store handle, as one process holds it: the run queue and its security side.
pub struct TestStore {
    store: Arc<dyn Store>,
    security: Arc<dyn hlbridge_engine::store::security::SecurityStore>,
    sqlite: Option<SqliteStore>,
    postgres: Option<PostgresStore>,
}

impl TestStore {
    /// The run queue side.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The security side.
    pub fn security(&self) -> Arc<dyn hlbridge_engine::store::security::SecurityStore> {
        self.security.clone()
    }

    /// Closes the connections.
    pub async fn close(&self) {
        if let Some(s) = &self.sqlite {
            s.close().await;
        }
        if let Some(s) = &self.postgres {
            s.close().await;
        }
    }
}

impl std::ops::Deref for TestStore {
    type Target = dyn hlbridge_engine::store::security::SecurityStore;

    fn deref(&self) -> &Self::Target {
        self.security.as_ref()
    }
}

/// Opens a store handle on data directory `dir`'s database (see [`shared_at`]).
pub async fn open_at(dir: &std::path::Path) -> TestStore {
    let (store, sqlite, postgres): (Arc<dyn Store>, _, _) = match shared_at(dir) {
        Shared::Sqlite(d) => {
            let s = SqliteStore::open(&d).await.expect("open SQLite");
            (Arc::new(s.clone()), Some(s), None)
        }
        Shared::Postgres { url, schema } => {
            let s = PostgresStore::connect_with(
                &url,
                &PostgresOptions {
                    max_connections: 4,
                    schema: Some(schema),
                    ..PostgresOptions::default()
                },
            )
            .await
            .expect("open PostgreSQL");
            (Arc::new(s.clone()), None, Some(s))
        }
    };
    let security = store
        .security()
        .expect("the store keeps the security tables");
    TestStore {
        store,
        security,
        sqlite,
        postgres,
    }
}

/// An engine on the database of `config.data_dir` (see [`shared_at`]).
pub async fn engine_at(
    config: hlbridge_engine::EngineConfig,
    api: Arc<dyn hlbridge_engine::HighLevelApi>,
) -> hlbridge_engine::Engine {
    let store = open_at(&config.data_dir.clone()).await.store();
    hlbridge_engine::Engine::with_store(config, store, api).expect("engine")
}
