//! The two backends' migrations are kept in step: every SQLite migration has a PostgreSQL
//! twin with the same number and name, and after migrating both, the schemas have the same
//! tables, columns (with normalised types and nullability), primary keys, unique
//! constraints, indexes (name, columns, partial or not) and triggers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hlbridge_engine::SqliteStore;
use hlbridge_engine::store::{Database, MigrationInfo, PostgresOptions, PostgresStore};
use sqlx::Row;

use crate::backends::{fresh_schema, postgres_reachable, test_url};

fn migration_files(backend: &str) -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect()
}

#[test]
fn every_migration_has_a_twin() {
    let sqlite = migration_files("sqlite");
    let postgres = migration_files("postgres");
    assert!(!sqlite.is_empty());
    assert_eq!(
        sqlite, postgres,
        "crates/engine/migrations/sqlite and crates/engine/migrations/postgres must hold the same files"
    );
}

/// One table, normalised.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Table {
    /// name → (type, not null)
    columns: BTreeMap<String, (String, bool)>,
    primary_key: Vec<String>,
    /// Unique constraints and unique indexes: their columns (names differ by backend).
    unique: BTreeSet<Vec<String>>,
    /// Other indexes: name → (columns, partial).
    indexes: BTreeMap<String, (Vec<String>, bool)>,
    triggers: BTreeSet<String>,
}

fn normal_type(t: &str) -> String {
    match t.trim().to_ascii_lowercase().as_str() {
        "int" | "int4" | "integer" => "integer".into(),
        "int8" | "bigint" => "bigint".into(),
        "text" | "character varying" | "varchar" => "text".into(),
        "bool" | "boolean" => "boolean".into(),
        other => other.into(),
    }
}

async fn sqlite_schema(dir: &Path) -> BTreeMap<String, Table> {
    let store = SqliteStore::open(dir).await.expect("open SQLite");
    store.close().await;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(hlbridge_engine::store::database_path(dir)),
        )
        .await
        .expect("connect");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .expect("tables");
    let mut out = BTreeMap::new();
    for t in tables {
        let mut table = Table {
            columns: BTreeMap::new(),
            primary_key: Vec::new(),
            unique: BTreeSet::new(),
            indexes: BTreeMap::new(),
            triggers: BTreeSet::new(),
        };
        let cols = sqlx::query("SELECT name, type, \"notnull\", pk FROM pragma_table_info($1)")
            .bind(&t)
            .fetch_all(&pool)
            .await
            .expect("columns");
        let mut pk: Vec<(i64, String)> = Vec::new();
        for c in &cols {
            let name: String = c.get("name");
            let notnull: i64 = c.get("notnull");
            let in_pk: i64 = c.get("pk");
            if in_pk > 0 {
                pk.push((in_pk, name.clone()));
            }
            table.columns.insert(
                name,
                (
                    normal_type(&c.get::<String, _>("type")),
                    notnull == 1 || in_pk > 0,
                ),
            );
        }
        pk.sort();
        table.primary_key = pk.into_iter().map(|(_, n)| n).collect();
        let indexes =
            sqlx::query("SELECT name, \"unique\", origin, partial FROM pragma_index_list($1)")
                .bind(&t)
                .fetch_all(&pool)
                .await
                .expect("indexes");
        for i in &indexes {
            let name: String = i.get("name");
            let origin: String = i.get("origin");
            if origin == "pk" {
                continue;
            }
            let cols: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                    .bind(&name)
                    .fetch_all(&pool)
                    .await
                    .expect("index columns");
            let unique: i64 = i.get("unique");
            let partial: i64 = i.get("partial");
            if unique == 1 {
                table.unique.insert(cols);
            } else {
                table.indexes.insert(name, (cols, partial == 1));
            }
        }
        table.triggers = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = $1",
        )
        .bind(&t)
        .fetch_all(&pool)
        .await
        .expect("triggers")
        .into_iter()
        .collect();
        out.insert(t, table);
    }
    pool.close().await;
    out
}

async fn postgres_schema(url: &str, schema: &str) -> BTreeMap<String, Table> {
    let store = PostgresStore::connect_with(
        url,
        &PostgresOptions {
            max_connections: 2,
            schema: Some(schema.to_owned()),
            listen: false,
            ..PostgresOptions::default()
        },
    )
    .await
    .expect("open PostgreSQL");
    let pool = store.pool().clone();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("tables");
    let mut out = BTreeMap::new();
    for t in tables {
        let mut table = Table {
            columns: BTreeMap::new(),
            primary_key: Vec::new(),
            unique: BTreeSet::new(),
            indexes: BTreeMap::new(),
            triggers: BTreeSet::new(),
        };
        let cols = sqlx::query(
            "SELECT column_name::TEXT AS name, data_type::TEXT AS type, is_nullable::TEXT AS nullable \
             FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(&t)
        .fetch_all(&pool)
        .await
        .expect("columns");
        for c in &cols {
            let nullable: String = c.get("nullable");
            table.columns.insert(
                c.get("name"),
                (normal_type(&c.get::<String, _>("type")), nullable == "NO"),
            );
        }
        let indexes = sqlx::query(
            "SELECT i.relname::TEXT AS name, ix.indisunique AS uniq, ix.indisprimary AS prim, \
                 ix.indpred IS NOT NULL AS partial, \
                 ARRAY(SELECT a.attname::TEXT FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord) \
                       JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.ord) AS cols \
             FROM pg_index ix JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_class i ON i.oid = ix.indexrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() AND t.relname = $1",
        )
        .bind(&t)
        .fetch_all(&pool)
        .await
        .expect("indexes");
        for i in &indexes {
            let cols: Vec<String> = i.get("cols");
            if i.get::<bool, _>("prim") {
                table.primary_key = cols;
            } else if i.get::<bool, _>("uniq") {
                table.unique.insert(cols);
            } else {
                table
                    .indexes
                    .insert(i.get("name"), (cols, i.get::<bool, _>("partial")));
            }
        }
        table.triggers = sqlx::query_scalar(
            "SELECT tg.tgname::TEXT FROM pg_trigger tg JOIN pg_class t ON t.oid = tg.tgrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() AND t.relname = $1 AND NOT tg.tgisinternal",
        )
        .bind(&t)
        .fetch_all(&pool)
        .await
        .expect("triggers")
        .into_iter()
        .collect();
        out.insert(t, table);
    }
    store.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_migrate_to_the_same_schema() {
    let dir = crate::fake::temp_dir("schema");
    let sqlite = sqlite_schema(&dir).await;
    assert!(sqlite.contains_key("runs") && sqlite.contains_key("trigger_turns"));
    if !postgres_reachable().await {
        return;
    }
    let url = test_url();
    let schema = fresh_schema();
    let postgres = postgres_schema(&url, &schema).await;
    let names = |m: &BTreeMap<String, Table>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&sqlite), names(&postgres), "the same tables");
    for (name, table) in &sqlite {
        assert_eq!(
            Some(table),
            postgres.get(name),
            "table `{name}` differs between SQLite (left) and PostgreSQL (right)"
        );
    }

    // `hlbridge migrate`'s report: everything applied once, then nothing.
    let db = Database::resolve(Some(&url), None).expect("url");
    let again = hlbridge_engine::store::backend::migrate(&db).await;
    // The URL's default schema is not the test schema: only check the report's shape there.
    let report = again.expect("migrate");
    assert!(report.applied.iter().all(|m| m.version > 0));
    let versions = |v: &[MigrationInfo]| v.iter().map(|m| m.version).collect::<Vec<_>>();
    let second = hlbridge_engine::store::backend::migrate(&db)
        .await
        .expect("migrate again");
    assert!(second.applied.is_empty(), "{:?}", versions(&second.applied));
    assert_eq!(
        versions(&second.already),
        versions(&[report.already.clone(), report.applied.clone()].concat())
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );

    // SQLite: the report lists every migration the first time.
    let fresh = crate::fake::temp_dir("schema-report");
    let db = Database::resolve(None, Some(fresh)).expect("sqlite");
    let first = hlbridge_engine::store::backend::migrate(&db)
        .await
        .expect("migrate SQLite");
    assert!(first.already.is_empty());
    assert!(first.applied.iter().any(|m| m.description == "cluster"));
    let second = hlbridge_engine::store::backend::migrate(&db)
        .await
        .expect("migrate SQLite again");
    assert!(second.applied.is_empty());
    assert_eq!(second.already, first.applied);
}
