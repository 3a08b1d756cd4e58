//! The sandbox's state: every HighLevel object as a JSON document, kept in memory for fast
//! reads and written through to SQLite so a sandbox started with `--data FILE` survives restarts.
//!
//! Writes are queued to one writer task that commits them in batches (group commit): a request
//! that changed something is answered only after its batch is durable.

use std::collections::HashMap;
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

/// All documents, by kind then id, in insertion order, with a few value indexes.
#[derive(Debug, Default)]
pub struct Docs {
    kinds: HashMap<String, IndexMap<String, Doc>>,
    index: HashMap<(&'static str, &'static str, String), indexmap::IndexSet<String>>,
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
                    .insert(id.clone(), doc.clone());
            }
            Write::Delete { kind, id } => {
                self.unindex(kind, id);
                if let Some(m) = self.kinds.get_mut(*kind) {
                    m.shift_remove(id);
                }
            }
        }
    }

    fn insert_loaded(&mut self, kind: String, id: String, doc: Doc) {
        self.reindex(&kind, &id, &doc.body);
        self.kinds.entry(kind).or_default().insert(id, doc);
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
pub async fn open(path: &Path) -> Result<(Docs, Persister), StoreError> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(std::time::Duration::from_secs(5))
        .disable_statement_logging();
    let pool = sqlx::pool::PoolOptions::<sqlx::Sqlite>::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS docs (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            location_id TEXT,
            parent_id TEXT,
            body TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            PRIMARY KEY (kind, id)
        )",
    )
    .execute(&pool)
    .await?;
    let mut docs = Docs::default();
    let rows = sqlx::query(
        "SELECT kind, id, location_id, parent_id, body, created_ms FROM docs ORDER BY created_ms, rowid",
    )
    .fetch_all(&pool)
    .await?;
    for row in rows {
        let kind: String = row.try_get(0)?;
        let id: String = row.try_get(1)?;
        let text: String = row.try_get(4)?;
        let body: Value = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            kind: kind.clone(),
            id: id.clone(),
            message: e.to_string(),
        })?;
        docs.insert_loaded(
            kind,
            id,
            Doc {
                location_id: row.try_get(2)?,
                parent_id: row.try_get(3)?,
                body: Arc::new(body),
                created_ms: row.try_get(5)?,
            },
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(pool, rx));
    Ok((docs, Persister { tx: Some(tx) }))
}

async fn writer(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Batch>) {
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
        let result = commit(&pool, &pending).await.map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "sandbox could not persist a batch");
        }
        for batch in pending.drain(..) {
            let _ = batch.done.send(result.clone());
        }
    }
}

async fn commit(pool: &SqlitePool, batches: &[Batch]) -> Result<(), sqlx::Error> {
    // Only the last change to each document matters for the stored state, so a batch becomes
    // one multi-row upsert and one multi-row delete: a few statements instead of hundreds.
    let mut last: IndexMap<(&str, &str), &Write> = IndexMap::new();
    for w in batches.iter().flat_map(|b| b.writes.iter()) {
        let key = match w {
            Write::Put { kind, id, .. } | Write::Delete { kind, id } => (*kind, id.as_str()),
        };
        last.shift_remove(&key);
        last.insert(key, w);
    }
    let puts: Vec<(&str, &str, &Doc)> = last
        .values()
        .filter_map(|w| match w {
            Write::Put { kind, id, doc } => Some((*kind, id.as_str(), doc)),
            Write::Delete { .. } => None,
        })
        .collect();
    let deletes: Vec<(&str, &str)> = last
        .values()
        .filter_map(|w| match w {
            Write::Delete { kind, id } => Some((*kind, id.as_str())),
            Write::Put { .. } => None,
        })
        .collect();
    let mut tx = pool.begin().await?;
    for chunk in puts.chunks(400) {
        let mut sql = String::from(
            "INSERT INTO docs (kind, id, location_id, parent_id, body, created_ms) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str("(?, ?, ?, ?, ?, ?)");
        }
        sql.push_str(
            " ON CONFLICT (kind, id) DO UPDATE SET location_id = excluded.location_id, \
             parent_id = excluded.parent_id, body = excluded.body",
        );
        // Only placeholders are interpolated; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (kind, id, doc) in chunk {
            q = q
                .bind(*kind)
                .bind(*id)
                .bind(&doc.location_id)
                .bind(&doc.parent_id)
                .bind(doc.body.to_string())
                .bind(doc.created_ms);
        }
        q.execute(&mut *tx).await?;
    }
    for chunk in deletes.chunks(400) {
        let mut sql = String::from("DELETE FROM docs WHERE (kind, id) IN (VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str("(?, ?)");
        }
        sql.push(')');
        // Only placeholders are interpolated; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (kind, id) in chunk {
            q = q.bind(*kind).bind(*id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await
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
            let (_, persister) = open(&file).await.expect("open");
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
        let (docs, _) = open(&file).await.expect("reopen");
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
}
