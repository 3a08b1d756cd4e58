//! Pagination: every item of a list operation as one stream, across pages, for every style
//! of the operation table.
//!
//! Rules other tools get wrong, which this module guarantees:
//! - **every original parameter is kept on every page**: each page is the caller's
//!   parameters with only the paging fields overlaid (locationId, filters, query, body…);
//! - **a page is never requested twice**: each page's paging fields are remembered, and a
//!   cursor that does not advance (or a server that answers the same page twice) ends the
//!   stream with an [`Error::Decode`] instead of looping;
//! - the page size is the caller's `limit`/`pageLimit`, else 100.
//!
//! | style | first page | next page | stops when |
//! |---|---|---|---|
//! | `StartAfterId` | `limit` | `startAfter`, `startAfterId` from `meta`, else the last item's `id` and `dateAdded` (epoch ms) | empty page; `meta.nextPageUrl` null; no `meta` and a short page |
//! | `SkipLimit` / `OffsetLimit` | `skip`/`offset` 0, `limit` | `skip`/`offset` + items received | empty page; short page (unless a `total` says more) |
//! | `PageLimit` | `page` 1, `limit` | `page` + 1 | empty page; `meta.nextPage` null; short page |
//! | `SearchAfter` | `page` 1, `pageLimit` | `searchAfter` from the last item (`page` unchanged), else `page` + 1 | empty or short page |
//! | `StartAfterDate` | `limit` | `startAfterDate` = last item's `sort[0]`, else `lastMessageDate` | empty or short page |
//! | `LastMessageId` | `limit` | `lastMessageId` from the response (beside the items) | `nextPage` not true; empty page |
//!
//! Items are read at the operation's `items_key` (dotted path; `""` = the body is the array).
//! A short page only ends the stream when no `total`/`totalCount`/`meta.total` says more
//! items exist, so a server that caps the page size below ours loses nothing for
//! offset-based styles.

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use futures::{Stream, StreamExt, TryStreamExt, stream};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::Auth;
use crate::client::Client;
use crate::error::Error;
use crate::operations::{Operation, Pagination};

/// Page size used when the caller gives none.
pub const DEFAULT_PAGE_SIZE: u64 = 100;

/// The stream behind [`Client::paginate`].
pub(crate) fn items(
    client: Client,
    auth: Auth,
    op: &'static Operation,
    params: Value,
) -> impl Stream<Item = Result<Value, Error>> + Send + 'static {
    let pager = Pager::new(client, auth, op, params);
    stream::try_unfold(pager, |mut pager| async move {
        let page = pager.next_page().await?;
        Ok::<_, Error>(page.map(|items| (items, pager)))
    })
    .map_ok(|items| stream::iter(items.into_iter().map(Ok::<Value, Error>)))
    .try_flatten()
    .boxed()
}

struct Pager {
    client: Client,
    auth: Auth,
    op: &'static Operation,
    style: Option<Pagination>,
    base: Map<String, Value>,
    page_size: u64,
    /// Paging fields of the next request; `None` when done.
    next: Option<Map<String, Value>>,
    /// The paging fields of every page requested so far.
    requested: HashSet<String>,
    previous_page: Option<u64>,
    fetched: u64,
    error: Option<Error>,
}

/// Reads a paging parameter the caller gave, at top level or in a raw `body` object.
fn given<'a>(base: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    base.get(name).filter(|v| !v.is_null()).or_else(|| {
        base.get("body")
            .and_then(|b| b.get(name))
            .filter(|v| !v.is_null())
    })
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        })
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// The value at a dotted path (`""` = the value itself).
fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    path.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

fn size_param(style: Pagination) -> &'static str {
    match style {
        Pagination::SearchAfter => "pageLimit",
        _ => "limit",
    }
}

impl Pager {
    fn new(client: Client, auth: Auth, op: &'static Operation, params: Value) -> Pager {
        let mut pager = Pager {
            client,
            auth,
            op,
            style: op.pagination,
            base: Map::new(),
            page_size: DEFAULT_PAGE_SIZE,
            next: None,
            requested: HashSet::new(),
            previous_page: None,
            fetched: 0,
            error: None,
        };
        let Some(style) = op.pagination else {
            pager.error = Some(Error::InvalidParams {
                operation: op.id.to_string(),
                message: "not a list operation: it has no pagination".into(),
            });
            return pager;
        };
        pager.base = match params {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            _ => {
                pager.error = Some(Error::InvalidParams {
                    operation: op.id.to_string(),
                    message: "parameters must be a JSON object".into(),
                });
                return pager;
            }
        };
        let size_name = size_param(style);
        if let Some(v) = given(&pager.base, size_name) {
            match as_u64(v).filter(|n| *n > 0) {
                Some(n) => pager.page_size = n,
                None => {
                    pager.error = Some(Error::InvalidParams {
                        operation: op.id.to_string(),
                        message: format!("'{size_name}' must be a positive number"),
                    });
                    return pager;
                }
            }
        }
        let mut first = Map::new();
        first.insert(size_name.into(), json!(pager.page_size));
        match style {
            Pagination::SkipLimit | Pagination::OffsetLimit => {
                let name = if style == Pagination::SkipLimit {
                    "skip"
                } else {
                    "offset"
                };
                let start = given(&pager.base, name).and_then(as_u64).unwrap_or(0);
                first.insert(name.into(), json!(start));
            }
            Pagination::PageLimit | Pagination::SearchAfter => {
                let start = given(&pager.base, "page").and_then(as_u64).unwrap_or(1);
                first.insert("page".into(), json!(start));
                if style == Pagination::SearchAfter
                    && op.param("searchAfter").is_some_and(|p| p.required)
                    && given(&pager.base, "searchAfter").is_none()
                {
                    first.insert("searchAfter".into(), json!([]));
                }
            }
            Pagination::StartAfterId | Pagination::StartAfterDate | Pagination::LastMessageId => {}
        }
        pager.next = Some(first);
        pager
    }

    fn decode(&self, message: String) -> Error {
        Error::Decode {
            operation: self.op.id.to_string(),
            message,
        }
    }

    async fn next_page(&mut self) -> Result<Option<Vec<Value>>, Error> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let (Some(style), Some(overlay)) = (self.style, self.next.take()) else {
            return Ok(None);
        };
        let fingerprint = Value::Object(overlay.clone()).to_string();
        if !self.requested.insert(fingerprint.clone()) {
            return Err(self.decode(format!(
                "pagination did not advance: the page {fingerprint} was already read; \
                 stopping instead of reading it again"
            )));
        }
        let mut params = self.base.clone();
        params.extend(overlay.clone());
        let resp = self
            .client
            .call(&self.auth, self.op, &Value::Object(params))
            .await?;
        let body = resp.body;

        let items_key = self.op.items_key.unwrap_or("");
        let items = match at_path(&body, items_key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => {
                return Err(self.decode(format!("'{items_key}' in the answer is not a list")));
            }
        };
        if items.is_empty() {
            return Ok(Some(items));
        }
        let mut hasher = DefaultHasher::new();
        Value::Array(items.clone()).to_string().hash(&mut hasher);
        let page_hash = hasher.finish();
        if self.previous_page == Some(page_hash) {
            return Err(self.decode(format!(
                "HighLevel answered the same page twice (paging {fingerprint}); \
                 stopping instead of reading it again"
            )));
        }
        self.previous_page = Some(page_hash);
        let count = items.len() as u64;
        self.fetched += count;
        self.next = self.advance(style, &overlay, &body, items_key, &items, count)?;
        Ok(Some(items))
    }

    /// Whether a `total` in the answer says items remain after `seen` of them.
    fn total_says_more(body: &Value, container: &Value, seen: u64) -> bool {
        let total = [
            body.get("total"),
            body.get("totalCount"),
            at_path(body, "meta.total"),
            container.get("total"),
        ]
        .into_iter()
        .flatten()
        .find_map(as_u64);
        total.is_some_and(|t| seen < t)
    }

    fn advance(
        &self,
        style: Pagination,
        overlay: &Map<String, Value>,
        body: &Value,
        items_key: &str,
        items: &[Value],
        count: u64,
    ) -> Result<Option<Map<String, Value>>, Error> {
        let full = count >= self.page_size;
        let size_name = size_param(style);
        let mut next = Map::new();
        next.insert(size_name.into(), json!(self.page_size));
        let last = items.last().unwrap_or(&Value::Null);
        let meta = body.get("meta").filter(|m| m.is_object());
        let container = items_key
            .rsplit_once('.')
            .and_then(|(parent, _)| at_path(body, parent))
            .unwrap_or(body);

        match style {
            Pagination::SkipLimit | Pagination::OffsetLimit => {
                let name = if style == Pagination::SkipLimit {
                    "skip"
                } else {
                    "offset"
                };
                let start = overlay.get(name).and_then(as_u64).unwrap_or(0);
                let after = start + count;
                if !full && !Self::total_says_more(body, container, after) {
                    return Ok(None);
                }
                next.insert(name.into(), json!(after));
            }
            Pagination::PageLimit => {
                let page = overlay.get("page").and_then(as_u64).unwrap_or(1);
                let more = match meta.and_then(|m| m.get("nextPage")) {
                    Some(v) => !v.is_null() && v != &Value::Bool(false),
                    None => full || Self::total_says_more(body, container, page * self.page_size),
                };
                if !more {
                    return Ok(None);
                }
                next.insert("page".into(), json!(page + 1));
            }
            Pagination::StartAfterId => {
                let more = match meta.and_then(|m| m.get("nextPageUrl")) {
                    Some(v) => !v.is_null() && v != "",
                    None => full || Self::total_says_more(body, container, self.fetched),
                };
                if !more {
                    return Ok(None);
                }
                let id = meta
                    .and_then(|m| m.get("startAfterId"))
                    .filter(|v| !v.is_null())
                    .or_else(|| last.get("id"))
                    .cloned();
                let after = meta
                    .and_then(|m| m.get("startAfter"))
                    .filter(|v| !v.is_null())
                    .cloned()
                    .or_else(|| last.get("dateAdded").and_then(epoch_ms));
                let Some(id) = id else {
                    return Err(self.decode(
                        "cannot read the next page: no meta.startAfterId and the last item has no id"
                            .into(),
                    ));
                };
                next.insert("startAfterId".into(), id);
                if let Some(after) = after {
                    next.insert("startAfter".into(), after);
                }
            }
            Pagination::SearchAfter => {
                if !full && !Self::total_says_more(body, container, self.fetched) {
                    return Ok(None);
                }
                let page = overlay.get("page").and_then(as_u64).unwrap_or(1);
                let cursor = ["searchAfter", "sortBy"]
                    .iter()
                    .filter_map(|k| last.get(*k))
                    .find(|v| v.as_array().is_some_and(|a| !a.is_empty()));
                match cursor {
                    // search_after replaces the page offset: keep the page, move the cursor.
                    Some(c) => {
                        next.insert("page".into(), json!(page));
                        next.insert("searchAfter".into(), c.clone());
                    }
                    None => {
                        next.insert("page".into(), json!(page + 1));
                        if let Some(sa) = overlay.get("searchAfter") {
                            next.insert("searchAfter".into(), sa.clone());
                        }
                    }
                }
            }
            Pagination::StartAfterDate => {
                if !full && !Self::total_says_more(body, container, self.fetched) {
                    return Ok(None);
                }
                let cursor = match last.get("sort") {
                    Some(Value::Array(a)) => a.first().cloned(),
                    Some(v) if !v.is_null() => Some(v.clone()),
                    _ => None,
                }
                .or_else(|| last.get("lastMessageDate").cloned())
                .filter(|v| !v.is_null());
                let Some(cursor) = cursor else {
                    return Err(self.decode(
                        "cannot read the next page: the last item has no sort or lastMessageDate"
                            .into(),
                    ));
                };
                next.insert("startAfterDate".into(), cursor);
            }
            Pagination::LastMessageId => {
                let flag = container.get("nextPage").or_else(|| body.get("nextPage"));
                let more = match flag {
                    Some(v) => v.as_bool().unwrap_or(false),
                    None => full,
                };
                if !more {
                    return Ok(None);
                }
                let cursor = container
                    .get("lastMessageId")
                    .or_else(|| body.get("lastMessageId"))
                    .filter(|v| !v.is_null())
                    .or_else(|| last.get("id"))
                    .cloned();
                let Some(cursor) = cursor else {
                    return Err(self.decode(
                        "cannot read the next page: no lastMessageId in the answer".into(),
                    ));
                };
                next.insert("lastMessageId".into(), cursor);
            }
        }
        Ok(Some(next))
    }
}

/// A `dateAdded` value as epoch milliseconds (ISO 8601 text, or already a number).
fn epoch_ms(v: &Value) -> Option<Value> {
    match v {
        Value::Number(_) => Some(v.clone()),
        Value::String(s) => {
            if let Ok(n) = s.parse::<i64>() {
                return Some(json!(n));
            }
            let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
            let ms = t.unix_timestamp_nanos() / 1_000_000;
            i64::try_from(ms).ok().map(|m| json!(m))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths() {
        let v = json!({"messages": {"messages": [1], "nextPage": true}});
        assert_eq!(at_path(&v, "messages.messages"), Some(&json!([1])));
        assert_eq!(at_path(&v, ""), Some(&v));
        assert_eq!(at_path(&v, "nope.x"), None);
    }

    #[test]
    fn date_added_to_epoch_ms() {
        assert_eq!(
            epoch_ms(&json!("2021-07-02T05:18:26.704Z")),
            Some(json!(1_625_203_106_704_i64))
        );
        assert_eq!(epoch_ms(&json!(5)), Some(json!(5)));
        assert_eq!(
            epoch_ms(&json!("1625203106704")),
            Some(json!(1_625_203_106_704_i64))
        );
        assert_eq!(epoch_ms(&json!("yesterday")), None);
    }

    #[test]
    fn numbers_in_many_forms() {
        assert_eq!(as_u64(&json!(5)), Some(5));
        assert_eq!(as_u64(&json!(5.0)), Some(5));
        assert_eq!(as_u64(&json!("25")), Some(25));
        assert_eq!(as_u64(&json!(-1)), None);
    }
}
