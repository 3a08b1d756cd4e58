//! Pagination: every style, parameters kept on every page, no page read twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use hlbridge_highlevel::{Auth, Error, operations};
use serde_json::{Value, json};

use crate::stub::{Reply, Req, Stub};

const T0_MS: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

fn item(i: usize) -> Value {
    let ms = T0_MS + i as i64 * 1000;
    let date = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("valid time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats");
    json!({
        "id": format!("i{i:03}"),
        "dateAdded": date,
        "sort": [ms],
        "searchAfter": [ms, format!("i{i:03}")],
        "lastMessageDate": ms,
    })
}

fn data(n: usize) -> Vec<Value> {
    (0..n).map(item).collect()
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Index after the item with this id (0 when absent).
fn after_id(items: &[Value], id: Option<String>) -> usize {
    id.and_then(|id| items.iter().position(|i| i["id"] == id.as_str()))
        .map_or(0, |p| p + 1)
}

fn slice(items: &[Value], start: usize, len: usize) -> Vec<Value> {
    items.iter().skip(start).take(len).cloned().collect()
}

async fn collect(stub: &Stub, op_id: &str, params: Value) -> (Vec<Value>, Option<Error>) {
    let client = stub.client();
    let op = operations::find(op_id).expect("op");
    let mut stream = Box::pin(client.paginate(&Auth::token("t"), op, params));
    let mut items = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(next) = stream.next().await {
            match next {
                Ok(v) => items.push(v),
                Err(e) => return Some(e),
            }
        }
        None
    })
    .await
    .expect("the stream ends (no endless loop)");
    // After an error the stream is over.
    if result.is_some() {
        assert!(stream.next().await.is_none());
    }
    (items, result)
}

/// No two requests were the same (same path, query and body).
fn assert_no_page_twice(reqs: &[Req]) {
    let mut seen = HashSet::new();
    for r in reqs {
        let mut q = r.query.clone();
        q.sort();
        assert!(
            seen.insert(format!("{} {} {:?} {}", r.method, r.path, q, r.body)),
            "page requested twice: {} {:?} {}",
            r.path,
            r.query,
            r.body
        );
    }
}

#[tokio::test]
async fn start_after_id_three_pages_keep_location_and_filters() {
    let all = data(5);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let limit = r.num("limit").unwrap_or(20);
        let start = after_id(&d, r.param("startAfterId"));
        Reply::json(json!({"contacts": slice(&d, start, limit), "count": d.len()}))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "contacts.list",
        json!({"locationId": "L1", "query": "smith", "limit": 2}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.path, "/prefix/contacts/");
        assert_eq!(r.q("locationId"), Some("L1"), "locationId on every page");
        assert_eq!(r.q("query"), Some("smith"), "filter on every page");
        assert_eq!(r.q("limit"), Some("2"));
    }
    assert_eq!(reqs[0].q("startAfterId"), None);
    assert_eq!(reqs[1].q("startAfterId"), Some("i001"));
    assert_eq!(
        reqs[1].q("startAfter"),
        Some((T0_MS + 1000).to_string().as_str())
    );
    assert_eq!(reqs[2].q("startAfterId"), Some("i003"));
    assert_eq!(
        reqs[2].q("startAfter"),
        Some((T0_MS + 3000).to_string().as_str())
    );
    assert_no_page_twice(&reqs);
}

#[tokio::test]
async fn start_after_id_uses_meta_and_stops_on_null_next_page_url() {
    let all = data(9);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let limit = r.num("limit").unwrap_or(20);
        let start = after_id(&d, r.param("startAfterId"));
        let page = slice(&d, start, limit);
        let last = page.last().cloned().unwrap_or(Value::Null);
        let more = start + limit < d.len();
        Reply::json(json!({
            "opportunities": page,
            "meta": {
                "total": d.len(),
                "startAfterId": last["id"],
                "startAfter": last["sort"][0],
                "nextPageUrl": if more { json!("https://example/next") } else { Value::Null },
            }
        }))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "opportunities.search",
        json!({"location_id": "L1", "status": "open", "pipeline_id": "P1", "limit": 3}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    assert_eq!(
        reqs.len(),
        3,
        "a null nextPageUrl ends it without an extra request"
    );
    for r in &reqs {
        assert_eq!(r.q("location_id"), Some("L1"));
        assert_eq!(r.q("status"), Some("open"));
        assert_eq!(r.q("pipeline_id"), Some("P1"));
    }
    assert_eq!(reqs[1].q("startAfterId"), Some("i002"));
    assert_eq!(reqs[2].q("startAfterId"), Some("i005"));
    assert_no_page_twice(&reqs);
}

#[tokio::test]
async fn skip_limit_in_query() {
    let all = data(7);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let (skip, limit) = (r.num("skip").unwrap_or(0), r.num("limit").unwrap_or(10));
        Reply::json(json!({"businesses": slice(&d, skip, limit)}))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "businesses.list",
        json!({"locationId": "L1", "limit": "3"}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    let skips: Vec<_> = reqs
        .iter()
        .map(|r| r.q("skip").unwrap_or("-").to_string())
        .collect();
    assert_eq!(skips, ["0", "3", "6"]);
    assert!(
        reqs.iter()
            .all(|r| r.q("locationId") == Some("L1") && r.q("limit") == Some("3"))
    );
    assert_no_page_twice(&reqs);
}

#[tokio::test]
async fn skip_limit_in_post_body_keeps_body_filters() {
    let all = data(5);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let (skip, limit) = (r.num("skip").unwrap_or(0), r.num("limit").unwrap_or(25));
        Reply::json(json!({"tasks": slice(&d, skip, limit)}))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "locations.tasks.search",
        json!({"locationId": "L9", "completed": false, "body": {"assignedTo": ["u1"]}, "limit": 2}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 3);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/prefix/locations/L9/tasks/search");
        assert_eq!(
            r.body,
            json!({"assignedTo": ["u1"], "completed": false, "limit": 2, "skip": i * 2})
        );
        assert!(r.query.is_empty());
    }
}

#[tokio::test]
async fn offset_limit() {
    let all = data(5);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let (off, limit) = (r.num("offset").unwrap_or(0), r.num("limit").unwrap_or(10));
        Reply::json(json!({"products": slice(&d, off, limit), "total": d.len()}))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "products.list",
        json!({"locationId": "L1", "search": "shoe", "limit": 2}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    let offs: Vec<_> = reqs
        .iter()
        .map(|r| r.q("offset").unwrap_or("-").to_string())
        .collect();
    assert_eq!(offs, ["0", "2", "4"]);
    assert!(
        reqs.iter()
            .all(|r| r.q("search") == Some("shoe") && r.q("locationId") == Some("L1"))
    );
}

#[tokio::test]
async fn page_limit_with_meta() {
    let all = data(5);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let (page, limit) = (r.num("page").unwrap_or(1), r.num("limit").unwrap_or(20));
        let start = (page - 1) * limit;
        let more = start + limit < d.len();
        Reply::json(json!({
            "submissions": slice(&d, start, limit),
            "meta": {"total": d.len(), "currentPage": page, "nextPage": if more { json!(page + 1) } else { Value::Null }, "prevPage": null}
        }))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "forms.submissions.list",
        json!({"locationId": "L1", "formId": "F1", "limit": 2}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    let pages: Vec<_> = reqs
        .iter()
        .map(|r| r.q("page").unwrap_or("-").to_string())
        .collect();
    assert_eq!(pages, ["1", "2", "3"]);
    assert!(
        reqs.iter()
            .all(|r| r.q("formId") == Some("F1") && r.q("locationId") == Some("L1"))
    );
}

#[tokio::test]
async fn search_after_in_post_body() {
    let all = data(5);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let limit = r.num("pageLimit").unwrap_or(10);
        let start = match r.body.get("searchAfter") {
            Some(Value::Array(sa)) if !sa.is_empty() => {
                after_id(&d, sa.get(1).and_then(Value::as_str).map(str::to_string))
            }
            _ => (r.num("page").unwrap_or(1) - 1) * limit,
        };
        Reply::json(json!({"contacts": slice(&d, start, limit), "total": d.len()}))
    })
    .await;
    let filters = json!([{"field": "tags", "operator": "contains", "value": "vip"}]);
    let (items, err) = collect(
        &stub,
        "contacts.search",
        json!({"locationId": "L1", "filters": filters, "pageLimit": 2}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.body["locationId"], "L1");
        assert_eq!(r.body["filters"], filters);
        assert_eq!(r.body["pageLimit"], 2);
        assert_eq!(r.body["page"], 1);
    }
    assert_eq!(reqs[0].body.get("searchAfter"), None);
    assert_eq!(reqs[1].body["searchAfter"], json!([T0_MS + 1000, "i001"]));
    assert_eq!(reqs[2].body["searchAfter"], json!([T0_MS + 3000, "i003"]));
    assert_no_page_twice(&reqs);
}

#[tokio::test]
async fn search_after_without_item_cursor_pages_by_number() {
    let all: Vec<Value> = (0..5).map(|i| json!({"id": format!("r{i}")})).collect();
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let (page, limit) = (r.num("page").unwrap_or(1), r.num("pageLimit").unwrap_or(10));
        Reply::json(json!({"records": slice(&d, (page - 1) * limit, limit), "total": d.len()}))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "objects.records.search",
        json!({"schemaKey": "custom_objects.pets", "locationId": "L1", "query": "name:Buddy", "pageLimit": 2}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(items, all);
    let reqs = stub.requests();
    let pages: Vec<_> = reqs.iter().map(|r| r.body["page"].clone()).collect();
    assert_eq!(pages, [json!(1), json!(2), json!(3)]);
    assert!(
        reqs.iter()
            .all(|r| r.body["query"] == "name:Buddy" && r.body["searchAfter"] == json!([]))
    );
}

#[tokio::test]
async fn start_after_date() {
    let all = data(5);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let limit = r.num("limit").unwrap_or(20);
        let after: i64 = r
            .param("startAfterDate")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let rest: Vec<Value> = d
            .iter()
            .filter(|i| i["sort"][0].as_i64().unwrap_or(0) > after)
            .take(limit)
            .cloned()
            .collect();
        Reply::json(json!({"conversations": rest, "total": d.len()}))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "conversations.search",
        json!({"locationId": "L1", "status": "unread", "limit": 2}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter()
            .all(|r| r.q("status") == Some("unread") && r.q("locationId") == Some("L1"))
    );
    assert_eq!(
        reqs[1].q("startAfterDate"),
        Some((T0_MS + 1000).to_string().as_str())
    );
    assert_eq!(reqs[0].header("version"), Some("2021-04-15"));
}

#[tokio::test]
async fn last_message_id() {
    let all = data(5);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let limit = r.num("limit").unwrap_or(20);
        let start = after_id(&d, r.param("lastMessageId"));
        let page = slice(&d, start, limit);
        Reply::json(json!({"messages": {
            "lastMessageId": page.last().map(|i| i["id"].clone()),
            "nextPage": start + limit < d.len(),
            "messages": page,
        }}))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "conversations.messages.list",
        json!({"conversationId": "conv1", "type": "TYPE_SMS", "limit": 2}),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ids(&items), ids(&all));
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter()
            .all(|r| r.path == "/prefix/conversations/conv1/messages")
    );
    assert!(reqs.iter().all(|r| r.q("type") == Some("TYPE_SMS")));
    let cursors: Vec<_> = reqs
        .iter()
        .map(|r| r.q("lastMessageId").map(str::to_string))
        .collect();
    assert_eq!(cursors, [None, Some("i001".into()), Some("i003".into())]);
}

#[tokio::test]
async fn page_size_defaults_to_one_hundred() {
    let stub = Stub::start(|_| Reply::json(json!({"businesses": []}))).await;
    let (items, err) = collect(&stub, "businesses.list", json!({"locationId": "L1"})).await;
    assert!(items.is_empty() && err.is_none());
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].q("limit"), Some("100"));
    assert_eq!(reqs[0].q("skip"), Some("0"));
}

#[tokio::test]
async fn cursor_that_does_not_advance_is_an_error_not_a_loop() {
    let n = AtomicUsize::new(0);
    let stub = Stub::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        // New items every time, but the cursor is stuck.
        Reply::json(json!({
            "opportunities": [{"id": format!("o{i}a")}, {"id": format!("o{i}b")}],
            "meta": {"startAfterId": "stuck", "startAfter": 1, "nextPageUrl": "https://example/next"}
        }))
    })
    .await;
    let (items, err) = collect(
        &stub,
        "opportunities.search",
        json!({"location_id": "L1", "limit": 2}),
    )
    .await;
    let err = err.expect("stops with an error");
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("did not advance"), "{err}");
    assert_eq!(stub.count(), 2, "page two is not read again");
    assert_eq!(items.len(), 4);
    assert_no_page_twice(&stub.requests());
}

#[tokio::test]
async fn server_ignoring_skip_is_an_error_not_a_loop() {
    let page = data(3);
    let stub = Stub::start(move |_| Reply::json(json!({"businesses": page}))).await;
    let (items, err) = collect(
        &stub,
        "businesses.list",
        json!({"locationId": "L1", "limit": 3}),
    )
    .await;
    let err = err.expect("stops");
    assert!(err.to_string().contains("same page twice"), "{err}");
    assert_eq!(items.len(), 3, "the repeated page is not emitted");
    assert_eq!(stub.count(), 2);
}

#[tokio::test]
async fn server_capping_the_page_size_loses_nothing() {
    let all = data(120);
    let d = all.clone();
    let stub = Stub::start(move |r| {
        let (off, limit) = (
            r.num("offset").unwrap_or(0),
            r.num("limit").unwrap_or(10).min(50),
        );
        Reply::json(json!({"products": slice(&d, off, limit), "total": d.len()}))
    })
    .await;
    let (items, err) = collect(&stub, "products.list", json!({"locationId": "L1"})).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(items.len(), 120);
    let offs: Vec<_> = stub
        .requests()
        .iter()
        .map(|r| r.q("offset").unwrap_or("-").to_string())
        .collect();
    assert_eq!(offs, ["0", "50", "100"]);
}

#[tokio::test]
async fn error_on_a_later_page_ends_the_stream_after_the_good_items() {
    let n = AtomicUsize::new(0);
    let stub = Stub::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::json(json!({"businesses": data(2)}))
        } else {
            Reply::status(
                404,
                json!({"message": "Location not found", "traceId": "t2"}),
            )
        }
    })
    .await;
    let (items, err) = collect(
        &stub,
        "businesses.list",
        json!({"locationId": "L1", "limit": 2}),
    )
    .await;
    assert_eq!(items.len(), 2);
    assert_eq!(err.and_then(|e| e.status()), Some(404));
}

#[tokio::test]
async fn non_list_operation_is_invalid() {
    let stub = Stub::start(|_| Reply::json(json!({}))).await;
    let (items, err) = collect(&stub, "contacts.get", json!({"contactId": "c"})).await;
    assert!(items.is_empty());
    assert!(matches!(err, Some(Error::InvalidParams { .. })), "{err:?}");
    assert_eq!(stub.count(), 0);
}
