//! The contact lookup: fetched once, served from the cache, refreshed by the sandbox's
//! signed webhooks.

use serde_json::{Value, json};

use crate::harness::{Harness, Options, wait_for};

async fn lookup(h: &Harness, query: &str) -> (u16, Option<String>, Value) {
    let resp = h
        .http
        .get(h.url(&format!("/lookup/contact?{query}")))
        .send()
        .await
        .expect("lookup");
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-hlbridge-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, cache, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until the sandbox has delivered `n` webhooks.
async fn delivered(h: &Harness, n: usize) {
    wait_for(10, &format!("{n} webhook deliveries"), || async {
        let log = h.webhook_log().await;
        log.len() >= n && log.iter().all(|r| r["outcome"] == "delivered")
    })
    .await;
}

#[tokio::test]
async fn contact_lookup_is_fetched_once_cached_and_refreshed_by_webhooks() {
    let h = Harness::start(
        "lookup",
        Options {
            trust_sandbox: true,
            sandbox_webhooks: true,
            ..Options::default()
        },
    )
    .await;
    let id = h.contact("ada@example.com", "Ada").await;
    h.call(
        "contacts.tasks.create",
        json!({"contactId": id, "title": "Call back", "dueDate": "2030-01-01T10:00:00Z", "completed": false}),
    )
    .await;
    h.call(
        "contacts.notes.create",
        json!({"contactId": id, "body": "Met at the fair"}),
    )
    .await;
    // ContactCreate, TaskCreate, NoteCreate reached the server before the first lookup.
    delivered(&h, 3).await;

    let before = h.sandbox_requests().await;
    let (status, cache, first) = lookup(&h, "email=ADA@example.com").await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")), "{first}");
    assert_eq!(first["contact"]["id"], id.as_str());
    assert_eq!(first["contact"]["firstName"], "Ada");
    assert_eq!(first["tasks"][0]["title"], "Call back");
    assert_eq!(first["notes"][0]["body"], "Met at the fair");
    assert_eq!(
        h.sandbox_requests().await - before,
        3,
        "find_duplicate, tasks and notes"
    );

    let before = h.sandbox_requests().await;
    let (status, cache, second) = lookup(&h, "email=ada@example.com").await;
    assert_eq!((status, cache.as_deref()), (200, Some("hit")));
    assert_eq!(second, first);
    let (_, cache, by_id) = lookup(&h, &format!("id={id}")).await;
    assert_eq!(cache.as_deref(), Some("hit"), "cached by id as well");
    assert_eq!(by_id, first);
    assert_eq!(h.sandbox_requests().await, before, "served from the cache");

    // A change in HighLevel: its ContactUpdate webhook refreshes the entry.
    h.call(
        "contacts.update",
        json!({"contactId": id, "firstName": "Augusta"}),
    )
    .await;
    wait_for(10, "the refreshed profile", || async {
        lookup(&h, &format!("id={id}")).await.2["contact"]["firstName"] == "Augusta"
    })
    .await;
    let before = h.sandbox_requests().await;
    let (_, cache, now) = lookup(&h, "email=ada@example.com").await;
    assert_eq!(
        (cache.as_deref(), now["contact"]["firstName"].as_str()),
        (Some("hit"), Some("Augusta"))
    );
    assert_eq!(h.sandbox_requests().await, before);
    // A new note (NoteCreate) too.
    h.call(
        "contacts.notes.create",
        json!({"contactId": id, "body": "Signed the contract"}),
    )
    .await;
    wait_for(10, "the new note", || async {
        lookup(&h, &format!("id={id}")).await.2["notes"]
            .as_array()
            .map_or(0, Vec::len)
            == 2
    })
    .await;
    let stats = h.server.state().metrics().lookup;
    assert!(
        stats.invalidations >= 2 && stats.refreshes >= 2,
        "{stats:?}"
    );

    // Unknown contacts and bad queries.
    let (status, _, body) = lookup(&h, "email=nobody@example.com").await;
    assert_eq!((status, body["error"].clone()), (404, json!("not_found")));
    let (status, _, body) = lookup(&h, "id=doesnotexist").await;
    assert_eq!((status, body["error"].clone()), (404, json!("not_found")));
    for bad in ["", "email=a@b.c&id=x", "email=not-an-email", "id=../../x"] {
        let (status, _, body) = lookup(&h, bad).await;
        assert_eq!(
            (status, body["error"].clone()),
            (400, json!("bad_request")),
            "{bad}"
        );
    }
    // A deleted contact is dropped from the cache.
    h.call("contacts.delete", json!({"contactId": id})).await;
    wait_for(10, "the deletion", || async {
        lookup(&h, &format!("id={id}")).await.0 == 404
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn the_lookup_token_is_required_when_configured() {
    let h = Harness::start(
        "lookup-token",
        Options {
            lookup_token: Some("let-me-in".into()),
            ..Options::default()
        },
    )
    .await;
    let id = h.contact("tok@example.com", "Tok").await;
    let url = h.url(&format!("/lookup/contact?id={id}"));
    let resp = h.http.get(&url).send().await.expect("lookup");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = h
        .http
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .expect("lookup");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = h
        .http
        .get(&url)
        .bearer_auth("let-me-in")
        .send()
        .await
        .expect("lookup");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["contact"]["firstName"], "Tok");
    h.shutdown().await;
}
