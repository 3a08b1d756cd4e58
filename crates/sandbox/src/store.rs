//! The sandbox's state: every HighLevel object as a JSON document, kept in memory for fast
//! reads and written through to SQLite so a sandbox started with `--data FILE` survives restarts.
//!
//! Writes are queued to one writer task that commits them in batches (group commit): a request
//! that changed something is answered only after its batch is committed, so killing the sandbox
//! loses nothing it answered. By default commits are handed to the operating system without
//! `fsync` (the sandbox is a test double: a power loss may cost its file, a crash may not);
//! `fsync` turns flushing on for those who keep state there they cannot re-seed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{mpsc, oneshot};

/// A failure of the sandbox's own storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("sandbox database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored document was not valid JSON.
    #[error("sandbox database holds a broken document {kind}/{id}: {message}")]
    Corrupt {
        /// Document kind.
        kind: String,
        /// Document id.
        id: String,
        /// Parser message.
        message: String,
    },
    /// The writer task has stopped.
    #[error("sandbox writer has stopped")]
    WriterGone,
}

/// One stored object.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Location the object belongs to (`None` for agency-level objects).
    pub location_id: Option<String>,
    /// Owning object (the contact of a task, the calendar of a notification, …).
    pub parent_id: Option<String>,
    /// The object as the API returns it.
    pub body: Arc<Value>,
    /// Creation time, epoch milliseconds (also the default sort order).
    pub created_ms: i64,
}

/// A change to persist.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or replace a document.
    Put {
        /// Kind.
        kind: &'static str,
        /// Id.
        id: String,
        /// The document.
        doc: Doc,
    },
    /// Remove a document.
    Delete {
        /// Kind.
        kind: &'static str,
        /// Id.
        id: String,
    },
}

/// Fields looked up by value on hot paths (duplicate detection on every contact write).
const INDEXED: &[(&str, &str)] = &[("contact", "emailLowerCase"), ("contact", "phone")];

/// The documents of one kind, in insertion order.
///
/// Two B-trees rather than a hash map: a hash map that grows doubles all at once, and with a
/// few hundred thousand contacts that rehash held the write lock for tens of milliseconds — the
/// whole tail of the sandbox's POST latency. B-trees grow one node at a time, and removing a
/// document does not shift every later one.
#[derive(Debug, Default)]
struct Table {
    /// Id → insertion sequence number.
    seq_of: BTreeMap<String, u64>,
    /// Insertion sequence number → (id, document): iteration order is insertion order.
    rows: BTreeMap<u64, (String, Doc)>,
    next: u64,
}

impl Table {
    fn get(&self, id: &str) -> Option<&Doc> {
        let seq = self.seq_of.get(id)?;
        self.rows.get(seq).map(|(_, d)| d)
    }

    /// Inserts a new document at the end, or replaces one in place (keeping its position).
    fn put(&mut self, id: &str, doc: Doc) {
        if let Some(seq) = self.seq_of.get(id)
            && let Some(row) = self.rows.get_mut(seq)
        {
            row.1 = doc;
            return;
        }
        let seq = self.next;
        self.next += 1;
        self.seq_of.insert(id.to_string(), seq);
        self.rows.insert(seq, (id.to_string(), doc));
    }

    fn remove(&mut self, id: &str) {
        if let Some(seq) = self.seq_of.remove(id) {
            self.rows.remove(&seq);
        }
    }

    fn len(&self) -> usize {
        self.seq_of.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Doc)> {
        self.rows.values().map(|(id, doc)| (id, doc))
    }
}

/// All documents, by kind then id, in insertion order, with a few value indexes.
#[derive(Debug, Default)]
pub struct Docs {
    kinds: HashMap<String, Table>,
    index: BTreeMap<(&'static str, &'static str, String), indexmap::IndexSet<String>>,
}

impl Docs {
    /// A document by kind and id.
    pub fn get(&self, kind: &str, id: &str) -> Option<&Doc> {
        self.kinds.get(kind).and_then(|m| m.get(id))
    }

    /// Every document of a kind, oldest first.
    pub fn iter(&self, kind: &str) -> impl Iterator<Item = (&String, &Doc)> {
        self.kinds.get(kind).into_iter().flat_map(|m| m.iter())
    }

    /// Ids of documents of `kind` whose indexed `field` equals `value`, oldest first.
    /// Only the (kind, field) pairs of `INDEXED` are indexed; others yield nothing.
    pub fn find_by(&self, kind: &str, field: &str, value: &str) -> Vec<&Doc> {
        let Some((k, f)) = INDEXED.iter().find(|(k, f)| *k == kind && *f == field) else {
            return Vec::new();
        };
        let mut docs: Vec<&Doc> = self
            .index
            .get(&(*k, *f, value.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.get(kind, id))
            .collect();
        docs.sort_by_key(|d| d.created_ms);
        docs
    }

    fn unindex(&mut self, kind: &str, id: &str) {
        let Some(old) = self.get(kind, id).map(|d| d.body.clone()) else {
            return;
        };
        for (k, f) in INDEXED.iter().filter(|(k, _)| *k == kind) {
            if let Some(v) = old.get(*f).and_then(Value::as_str) {
                let key = (*k, *f, v.to_string());
                if let Some(set) = self.index.get_mut(&key) {
                    set.shift_remove(id);
                    if set.is_empty() {
                        self.index.remove(&key);
                    }
                }
            }
        }
    }

    fn reindex(&mut self, kind: &str, id: &str, body: &Value) {
        for (k, f) in INDEXED.iter().filter(|(k, _)| *k == kind) {
            if let Some(v) = body
                .get(*f)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
            {
                self.index
                    .entry((*k, *f, v.to_string()))
                    .or_default()
                    .insert(id.to_string());
            }
        }
    }

    /// Number of documents of a kind.
    pub fn count(&self, kind: &str) -> usize {
        self.kinds.get(kind).map_or(0, |m| m.len())
    }

    /// Applies a change in memory.
    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::Put { kind, id, doc } => {
                self.unindex(kind, id);
                self.reindex(kind, id, &doc.body);
                self.kinds
                    .entry((*kind).to_string())
                    .or_default()
                    .put(id, doc.clone());
            }
            Write::Delete { kind, id } => {
                self.unindex(kind, id);
                if let Some(m) = self.kinds.get_mut(*kind) {
                    m.remove(id);
                }
            }
        }
    }

    fn insert_loaded(&mut self, kind: String, id: String, doc: Doc) {
        self.reindex(&kind, &id, &doc.body);
        self.kinds.entry(kind).or_default().put(&id, doc);
    }
}

struct Batch {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Persists writes to SQLite in batches.
#[derive(Clone)]
pub struct Persister {
    tx: Option<mpsc::UnboundedSender<Batch>>,
}

impl Persister {
    /// A persister that keeps nothing (for `:memory:`).
    pub fn none() -> Self {
        Self { tx: None }
    }

    /// Queues `writes` and waits until they are committed.
    pub async fn persist(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let Some(tx) = &self.tx else { return Ok(()) };
        if writes.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        tx.send(Batch { writes, done })
            .map_err(|_| StoreError::WriterGone)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Db(sqlx::Error::Protocol(message))),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

/// Opens (or creates) the database file, loads every document and starts the writer.
/// With `fsync`, every commit is flushed to disk before the request is answered.
pub async fn open(path: &Path, fsync: bool) -> Result<(Docs, Persister), StoreError> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Disk flushes, not SQLite, were the sandbox's write latency: with 32 clients every
        // checkpoint's two fsyncs stalled a whole queue of requests (p99 11 ms against 4.5 ms
        // without them; BENCHMARKS.md).
        .synchronous(if fsync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Off
        })
        .busy_timeout(std::time::Duration::from_secs(5))
        .disable_statement_logging();
    let pool = sqlx::pool::PoolOptions::<sqlx::Sqlite>::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    // One row per live document, keyed by a sequence number the writer hands out in order, so
    // creating documents only appends to the table's last page. (A primary key on the random
    // ids dirtied one index page per new document: five times the bytes written per commit.)
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS objects (
            seq INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            location_id TEXT,
            parent_id TEXT,
            body TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        )",
    )
    .execute(&pool)
    .await?;
    migrate_docs_table(&pool).await?;
    let mut docs = Docs::default();
    let mut rows_of = RowIndex::default();
    let rows = sqlx::query(
        "SELECT seq, kind, id, location_id, parent_id, body, created_ms FROM objects \
         ORDER BY created_ms, seq",
    )
    .fetch_all(&pool)
    .await?;
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let id: String = row.try_get(2)?;
        let text: String = row.try_get(5)?;
        let body: Value = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            kind: kind.clone(),
            id: id.clone(),
            message: e.to_string(),
        })?;
        rows_of.next = rows_of.next.max(seq + 1);
        rows_of
            .seq_of
            .entry(kind.clone())
            .or_default()
            .insert(id.clone(), seq);
        docs.insert_loaded(
            kind,
            id,
            Doc {
                location_id: row.try_get(3)?,
                parent_id: row.try_get(4)?,
                body: Arc::new(body),
                created_ms: row.try_get(6)?,
            },
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(pool, rx, rows_of));
    Ok((docs, Persister { tx: Some(tx) }))
}

/// Moves the documents of a file written by an earlier sandbox (table `docs`, keyed by kind
/// and id) into `objects`.
async fn migrate_docs_table(pool: &SqlitePool) -> Result<(), StoreError> {
    let old: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'docs'")
            .fetch_optional(pool)
            .await?;
    if old.is_none() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO objects (kind, id, location_id, parent_id, body, created_ms) \
         SELECT kind, id, location_id, parent_id, body, created_ms FROM docs \
         ORDER BY created_ms, rowid",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("DROP TABLE docs").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Where each document's row is: the writer's own map, changed only after a commit succeeds.
#[derive(Default)]
struct RowIndex {
    /// kind → id → the `seq` of its row. B-trees for the same reason as [`Table`]; nested so
    /// a lookup borrows its `&str`s instead of allocating a key.
    seq_of: HashMap<String, BTreeMap<String, i64>>,
    /// Next sequence number to hand out.
    next: i64,
}

async fn writer(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Batch>, mut rows: RowIndex) {
    let mut pending = Vec::new();
    while let Some(first) = rx.recv().await {
        pending.push(first);
        // Group commit: take whatever else is already waiting, up to a bound.
        while pending.len() < 512 {
            match rx.try_recv() {
                Ok(b) => pending.push(b),
                Err(_) => break,
            }
        }
        let result = commit(&pool, &pending, &mut rows)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "sandbox could not persist a batch");
        }
        for batch in pending.drain(..) {
            let _ = batch.done.send(result.clone());
        }
    }
    // Every persister is gone: the sandbox stopped. Leave the file checkpointed.
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await;
    pool.close().await;
}

async fn commit(
    pool: &SqlitePool,
    batches: &[Batch],
    rows: &mut RowIndex,
) -> Result<(), sqlx::Error> {
    // Only the last change to each document matters for the stored state, so a batch becomes
    // one multi-row delete of the rows replaced and one multi-row insert: a few statements
    // instead of hundreds.
    let mut last: IndexMap<(&str, &str), &Write> = IndexMap::new();
    for w in batches.iter().flat_map(|b| b.writes.iter()) {
        let key = match w {
            Write::Put { kind, id, .. } | Write::Delete { kind, id } => (*kind, id.as_str()),
        };
        last.shift_remove(&key);
        last.insert(key, w);
    }
    let mut stale: Vec<i64> = Vec::new();
    let mut inserts: Vec<(i64, &str, &str, &Doc)> = Vec::new();
    for ((kind, id), w) in &last {
        if let Some(seq) = rows.seq_of.get(*kind).and_then(|m| m.get(*id)) {
            stale.push(*seq);
        }
        if let Write::Put { doc, .. } = w {
            inserts.push((rows.next + inserts.len() as i64, kind, id, doc));
        }
    }
    let mut statements = Vec::new();
    for chunk in stale.chunks(900) {
        let mut sql = String::from("DELETE FROM objects WHERE seq IN (");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('?');
        }
        sql.push(')');
        // Only placeholders are interpolated; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for seq in chunk {
            q = q.bind(*seq);
        }
        statements.push(q);
    }
    for chunk in inserts.chunks(400) {
        let mut sql = String::from(
            "INSERT INTO objects (seq, kind, id, location_id, parent_id, body, created_ms) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, ?)");
        }
        // Only placeholders are interpolated; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (seq, kind, id, doc) in chunk {
            q = q
                .bind(*seq)
                .bind(*kind)
                .bind(*id)
                .bind(&doc.location_id)
                .bind(&doc.parent_id)
                .bind(doc.body.to_string())
                .bind(doc.created_ms);
        }
        statements.push(q);
    }
    // One statement is atomic on its own: skipping BEGIN and COMMIT saves two round trips to
    // SQLite's thread on the common batch (new documents only).
    if statements.len() == 1 {
        for q in statements {
            q.execute(pool).await?;
        }
    } else {
        let mut tx = pool.begin().await?;
        for q in statements {
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    // Committed: now the writer's map may follow.
    for (kind, id) in last.keys() {
        if let Some(m) = rows.seq_of.get_mut(*kind) {
            m.remove(*id);
        }
    }
    for (seq, kind, id, _) in &inserts {
        rows.seq_of
            .entry((*kind).to_string())
            .or_default()
            .insert((*id).to_string(), *seq);
    }
    rows.next += inserts.len() as i64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(id: &str, v: i64) -> Write {
        Write::Put {
            kind: "contact",
            id: id.to_string(),
            doc: Doc {
                location_id: Some("loc".into()),
                parent_id: None,
                body: Arc::new(json!({ "id": id, "v": v, "emailLowerCase": format!("{id}@x.io") })),
                created_ms: v,
            },
        }
    }

    #[tokio::test]
    async fn batches_keep_the_last_change_of_each_document() {
        let dir = std::env::temp_dir().join(format!("hlbridge-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("s.db");
        {
            let (_, persister) = open(&file, false).await.expect("open");
            let del = Write::Delete {
                kind: "contact",
                id: "a".into(),
            };
            persister
                .persist(vec![
                    put("a", 1),
                    put("b", 2),
                    put("b", 3),
                    del.clone(),
                    put("c", 4),
                ])
                .await
                .expect("persist");
            // Re-creating a deleted document in a later batch works too.
            persister
                .persist(vec![put("c", 5), del])
                .await
                .expect("persist");
        }
        let (docs, _) = open(&file, false).await.expect("reopen");
        assert!(docs.get("contact", "a").is_none());
        assert_eq!(
            docs.get("contact", "b").map(|d| d.body["v"].clone()),
            Some(json!(3))
        );
        assert_eq!(
            docs.get("contact", "c").map(|d| d.body["v"].clone()),
            Some(json!(5))
        );
        assert_eq!(docs.find_by("contact", "emailLowerCase", "b@x.io").len(), 1);
        assert!(
            docs.find_by("contact", "emailLowerCase", "a@x.io")
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn every_document_keeps_one_row_and_its_place() {
        let dir = std::env::temp_dir().join(format!("hlbridge-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("s.db");
        {
            let (_, persister) = open(&file, true).await.expect("open");
            persister
                .persist(vec![put("a", 1), put("b", 2), put("c", 3)])
                .await
                .expect("persist");
            for v in 0..5 {
                // Updating "a" keeps its created_ms, so it stays first.
                let mut w = put("a", 1);
                if let Write::Put { doc, .. } = &mut w {
                    doc.body = Arc::new(json!({ "id": "a", "v": 10 + v }));
                }
                persister.persist(vec![w]).await.expect("persist");
            }
        }
        let (docs, _) = open(&file, false).await.expect("reopen");
        let order: Vec<&str> = docs.iter("contact").map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert_eq!(
            docs.get("contact", "a").map(|d| d.body["v"].clone()),
            Some(json!(14))
        );
        let pool = SqlitePool::connect(&format!("sqlite://{}", file.display()))
            .await
            .expect("pool");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM objects")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(
            rows, 3,
            "one row per live document, however often it changed"
        );
        pool.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn files_of_the_earlier_layout_are_migrated() {
        let dir = std::env::temp_dir().join(format!("hlbridge-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("old.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", file.display()))
            .expect("opts")
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(opts).await.expect("pool");
        sqlx::query(
            "CREATE TABLE docs (kind TEXT NOT NULL, id TEXT NOT NULL, location_id TEXT, \
             parent_id TEXT, body TEXT NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (kind, id))",
        )
        .execute(&pool)
        .await
        .expect("old table");
        sqlx::query("INSERT INTO docs VALUES ('contact', 'z', 'loc', NULL, '{\"id\":\"z\"}', 2), ('contact', 'y', 'loc', NULL, '{\"id\":\"y\"}', 1)")
            .execute(&pool)
            .await
            .expect("old rows");
        pool.close().await;
        {
            let (docs, persister) = open(&file, false).await.expect("open");
            let order: Vec<&str> = docs.iter("contact").map(|(id, _)| id.as_str()).collect();
            assert_eq!(order, ["y", "z"]);
            persister.persist(vec![put("y", 1)]).await.expect("persist");
        }
        let (docs, _) = open(&file, false).await.expect("reopen");
        assert_eq!(docs.count("contact"), 2);
        assert_eq!(
            docs.get("contact", "y").map(|d| d.body["v"].clone()),
            Some(json!(1))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tables_keep_insertion_order_through_updates_and_removals() {
        let mut t = Table::default();
        let doc = |v: i64| Doc {
            location_id: None,
            parent_id: None,
            body: Arc::new(json!({ "v": v })),
            created_ms: v,
        };
        for (i, id) in ["m", "a", "z", "b"].iter().enumerate() {
            t.put(id, doc(i as i64));
        }
        t.put("a", doc(9));
        t.remove("z");
        t.remove("missing");
        let order: Vec<(&str, i64)> = t
            .iter()
            .map(|(id, d)| (id.as_str(), d.body["v"].as_i64().unwrap_or(-1)))
            .collect();
        assert_eq!(order, [("m", 0), ("a", 9), ("b", 3)]);
        assert_eq!(t.len(), 3);
        assert!(t.get("z").is_none());
    }
}
