//! The sandbox behaves like HighLevel: a contacts walk, auth, Version, scopes, locations,
//! rate limits and headers, faults.

use std::time::Duration;

use hlbridge_sandbox::SandboxConfig;
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use serde_json::{Value, json};

use crate::harness::{Env, V};

#[tokio::test]
async fn contact_walk_create_tag_task_note_search_delete() {
    let env = Env::default().await;
    let loc = env.info.location_id.clone();
    let (s, created, h) = env
        .call("POST", "/contacts/", V, Some(json!({ "locationId": loc, "firstName": "Ada", "lastName": "Lovelace", "email": "Ada@Example.com", "phone": "+1 512-555-0199", "tags": ["Lead"] })))
        .await;
    assert_eq!(s, 201, "{created}");
    for name in [
        "x-ratelimit-max",
        "x-ratelimit-remaining",
        "x-ratelimit-interval-milliseconds",
        "x-ratelimit-limit-daily",
        "x-ratelimit-daily-remaining",
    ] {
        assert!(h.contains_key(name), "missing header {name}");
    }
    let id = created["contact"]["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 20);
    assert_eq!(created["contact"]["emailLowerCase"], "ada@example.com");
    assert_eq!(created["contact"]["phone"], "+15125550199");
    assert_eq!(created["contact"]["tags"], json!(["lead"]));

    // Duplicate creation is refused (location does not allow duplicates), naming the match.
    let (s, dup, _) = env
        .call(
            "POST",
            "/contacts/",
            V,
            Some(json!({ "locationId": loc, "email": "ada@example.com" })),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(dup["meta"]["contactId"], id.as_str());
    assert_eq!(dup["meta"]["matchingField"], "email");

    // Read back by get, duplicate lookup, the deprecated list and search.
    let (s, got, _) = env.call("GET", &format!("/contacts/{id}"), V, None).await;
    assert_eq!(
        (s, got["contact"]["firstName"].clone()),
        (200, json!("Ada"))
    );
    let (_, found, _) = env
        .call(
            "GET",
            &format!("/contacts/search/duplicate?locationId={loc}&email=ada%40example.com"),
            V,
            None,
        )
        .await;
    assert_eq!(found["contact"]["id"], id.as_str());
    let (_, listed, _) = env
        .call(
            "GET",
            &format!("/contacts/?locationId={loc}&query=lovelace"),
            V,
            None,
        )
        .await;
    assert_eq!(listed["contacts"][0]["id"], id.as_str());

    // Tags add / remove are visible on read.
    let (s, tags, _) = env
        .call(
            "POST",
            &format!("/contacts/{id}/tags"),
            V,
            Some(json!({ "tags": ["VIP", "newsletter"] })),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(tags["tags"], json!(["lead", "vip", "newsletter"]));
    let (s, tags, _) = env
        .call(
            "DELETE",
            &format!("/contacts/{id}/tags"),
            V,
            Some(json!({ "tags": ["lead"] })),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(tags["tags"], json!(["vip", "newsletter"]));
    let (_, search, _) = env
        .call("POST", "/contacts/search", V, Some(json!({ "locationId": loc, "pageLimit": 10, "filters": [{ "field": "tags", "operator": "eq", "value": "vip" }] })))
        .await;
    assert_eq!(search["total"], 1, "{search}");
    assert_eq!(search["contacts"][0]["id"], id.as_str());

    // Update.
    let (s, upd, _) = env
        .call(
            "PUT",
            &format!("/contacts/{id}"),
            V,
            Some(json!({ "lastName": "King" })),
        )
        .await;
    assert_eq!(
        (s, upd["contact"]["lastName"].clone()),
        (200, json!("King"))
    );

    // Task: create, complete, read.
    let (s, task, _) = env
        .call(
            "POST",
            &format!("/contacts/{id}/tasks"),
            V,
            Some(json!({ "title": "Call", "dueDate": "2030-01-01T10:00:00Z", "completed": false })),
        )
        .await;
    assert_eq!(s, 201, "{task}");
    let tid = task["task"]["id"].as_str().expect("task id").to_string();
    let (s, done, _) = env
        .call(
            "PUT",
            &format!("/contacts/{id}/tasks/{tid}/completed"),
            V,
            Some(json!({ "completed": true })),
        )
        .await;
    assert_eq!((s, done["task"]["completed"].clone()), (200, json!(true)));
    let (_, tasks, _) = env
        .call("GET", &format!("/contacts/{id}/tasks"), V, None)
        .await;
    assert_eq!(tasks["tasks"][0]["completed"], true);

    // Notes CRUD.
    let (s, note, _) = env
        .call(
            "POST",
            &format!("/contacts/{id}/notes"),
            V,
            Some(json!({ "body": "hello" })),
        )
        .await;
    assert_eq!(s, 201);
    let nid = note["note"]["id"].as_str().expect("note id").to_string();
    let (s, _, _) = env
        .call(
            "PUT",
            &format!("/contacts/{id}/notes/{nid}"),
            V,
            Some(json!({ "body": "hello again" })),
        )
        .await;
    assert_eq!(s, 200);
    let (_, n, _) = env
        .call("GET", &format!("/contacts/{id}/notes/{nid}"), V, None)
        .await;
    assert_eq!(n["note"]["body"], "hello again");

    // Upsert finds the contact by email and updates it.
    let (s, up, _) = env
        .call(
            "POST",
            "/contacts/upsert",
            V,
            Some(json!({ "locationId": loc, "email": "ADA@example.com", "city": "London" })),
        )
        .await;
    assert_eq!(
        (s, up["new"].clone(), up["contact"]["id"].clone()),
        (200, json!(false), json!(id))
    );
    let (s, up, _) = env
        .call(
            "POST",
            "/contacts/upsert",
            V,
            Some(json!({ "locationId": loc, "email": "new@example.com" })),
        )
        .await;
    assert_eq!((s, up["new"].clone()), (201, json!(true)));

    // Delete removes tasks and notes too.
    let (s, del, _) = env
        .call("DELETE", &format!("/contacts/{id}"), V, None)
        .await;
    assert_eq!((s, del), (200, json!({ "succeded": true })));
    let (s, e, _) = env.call("GET", &format!("/contacts/{id}"), V, None).await;
    assert_eq!(s, 404);
    assert_eq!(e["message"], "Contact not found");
    assert!(env.sandbox.doc("task", &tid).is_none());
    assert!(env.sandbox.doc("note", &nid).is_none());
}

#[tokio::test]
async fn upsert_follows_the_duplicate_setting_order() {
    let env = Env::default().await;
    let loc = env.info.location_id.clone();
    let (_, a, _) = env
        .call(
            "POST",
            "/contacts/",
            V,
            Some(json!({ "locationId": loc, "email": "a@x.io" })),
        )
        .await;
    let (_, b, _) = env
        .call(
            "POST",
            "/contacts/",
            V,
            Some(json!({ "locationId": loc, "phone": "+15125550001" })),
        )
        .await;
    // email first (default): a matches (read-only duplicate lookup, so nothing changes).
    let dup_path =
        format!("/contacts/search/duplicate?locationId={loc}&email=a%40x.io&number=%2B15125550001");
    let (_, found, _) = env.call("GET", &dup_path, V, None).await;
    assert_eq!(found["contact"]["id"], a["contact"]["id"]);
    // phone first: b matches, for the lookup and for upsert.
    let (s, _) = env
        .admin(
            "PATCH",
            &format!("/locations/{loc}/settings"),
            Some(json!({ "duplicateContactOrder": ["phone", "email"] })),
        )
        .await;
    assert_eq!(s, 200);
    let (_, found, _) = env.call("GET", &dup_path, V, None).await;
    assert_eq!(found["contact"]["id"], b["contact"]["id"]);
    let (_, up, _) = env
        .call(
            "POST",
            "/contacts/upsert",
            V,
            Some(json!({ "locationId": loc, "email": "a@x.io", "phone": "+15125550001" })),
        )
        .await;
    assert_eq!(up["contact"]["id"], b["contact"]["id"]);
    // Duplicates allowed: createNewIfDuplicateAllowed makes a new contact.
    env.admin(
        "PATCH",
        &format!("/locations/{loc}/settings"),
        Some(json!({ "allowDuplicateContact": true })),
    )
    .await;
    let (s, up, _) = env.call("POST", "/contacts/upsert", V, Some(json!({ "locationId": loc, "email": "a@x.io", "createNewIfDuplicateAllowed": true }))).await;
    assert_eq!((s, up["new"].clone()), (201, json!(true)));
}

#[tokio::test]
async fn auth_version_scope_and_location_are_enforced() {
    let env = Env::default().await;
    let loc = env.info.location_id.clone();
    let url = format!("{}/contacts/?locationId={loc}", env.info.base_url);
    // No Version header.
    let r = env
        .http
        .get(&url)
        .bearer_auth(&env.info.token)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    // The SDK's 2023-02-21 is accepted; a wrong one is not.
    let (s, _, _) = env
        .call(
            "GET",
            &format!("/contacts/?locationId={loc}"),
            "2023-02-21",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, _) = env
        .call(
            "GET",
            &format!("/contacts/?locationId={loc}"),
            "2021-04-15",
            None,
        )
        .await;
    assert_eq!(s, 400);
    // Bad token.
    let (s, body, _) = env
        .call_as(
            "nope",
            "GET",
            &format!("/contacts/?locationId={loc}"),
            V,
            None,
        )
        .await;
    assert_eq!((s, body["message"].clone()), (401, json!("Invalid JWT")));
    // Read-only token can read, not write.
    let ro = env.info.readonly_token.clone();
    let (s, _, _) = env
        .call_as(&ro, "GET", &format!("/contacts/?locationId={loc}"), V, None)
        .await;
    assert_eq!(s, 200);
    let (s, body, _) = env
        .call_as(
            &ro,
            "POST",
            "/contacts/",
            V,
            Some(json!({ "locationId": loc })),
        )
        .await;
    assert_eq!(
        (s, body["message"].clone()),
        (401, json!("The token is not authorized for this scope."))
    );
    // Another location is forbidden.
    let (s, body, _) = env
        .call("GET", "/contacts/?locationId=someOtherLocation000", V, None)
        .await;
    assert_eq!(
        (s, body["message"].clone()),
        (
            403,
            json!("The token does not have access to this location.")
        )
    );
    // Unknown route, NestJS-style.
    let (s, body, _) = env.call("GET", "/nope", V, None).await;
    assert_eq!(
        (s, body["message"].clone()),
        (404, json!("Cannot GET /nope"))
    );
    // Validation errors list every problem.
    let (s, body, _) = env
        .call(
            "POST",
            "/contacts/",
            V,
            Some(json!({ "email": "not-an-email" })),
        )
        .await;
    assert_eq!(s, 422, "{body}");
    assert!(body["message"].is_array());
    // Agency-only routes refuse location tokens; the agency token works.
    let (s, _, _) = env
        .call(
            "GET",
            &format!("/companies/{}", env.info.company_id),
            V,
            None,
        )
        .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn rate_limit_429_with_headers_and_window_stats() {
    let mut config = SandboxConfig::for_tests();
    config.rate_limit = RateLimitConfig {
        enabled: true,
        burst: 5,
        interval: Duration::from_secs(60),
        daily: 1000,
    };
    let env = Env::start(config).await;
    let loc = env.info.location_id.clone();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..7 {
        let (s, body, h) = env
            .call("GET", &format!("/contacts/?locationId={loc}"), V, None)
            .await;
        statuses.push(s);
        last = Some((body, h));
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);
    let (body, h) = last.expect("answers");
    assert_eq!(body["statusCode"], 429);
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["x-ratelimit-max"], "5");
    assert_eq!(h["x-ratelimit-interval-milliseconds"], "60000");
    assert_eq!(env.sandbox.max_window_attempts(&loc), 7);
    let (_, stats) = env
        .admin("GET", &format!("/stats/locations/{loc}"), None)
        .await;
    assert_eq!(stats["maxWindowAccepted"], 5);
    assert_eq!(stats["rejected"], 2);
}

#[tokio::test]
async fn daily_budget_exhaustion() {
    let env = Env::default().await;
    let loc = env.info.location_id.clone();
    let (s, _) = env
        .admin(
            "POST",
            "/rate-limit/exhaust-daily",
            Some(json!({ "locationId": loc })),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, h) = env
        .call("GET", &format!("/contacts/?locationId={loc}"), V, None)
        .await;
    assert_eq!(s, 429);
    assert_eq!(h["x-ratelimit-daily-remaining"], "0");
}

#[tokio::test]
async fn faults_inject_errors_storms_and_drops() {
    let env = Env::default().await;
    let loc = env.info.location_id.clone();
    let path = format!("/contacts/?locationId={loc}");
    let (s, _) = env.admin("POST", "/faults", Some(json!({ "route": "contacts.list", "errorRate": 1.0, "status": 503, "remaining": 2 }))).await;
    assert_eq!(s, 201);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(env.call("GET", &path, V, None).await.0);
    }
    assert_eq!(got, vec![503, 503, 200]);
    env.admin(
        "POST",
        "/faults",
        Some(json!({ "route": "contacts.*", "rateLimitStorm": true, "remaining": 1 })),
    )
    .await;
    let (s, _, h) = env.call("GET", &path, V, None).await;
    assert_eq!(
        (s, h["x-ratelimit-remaining"].to_str().ok()),
        (429, Some("0"))
    );
    env.admin(
        "POST",
        "/faults",
        Some(json!({ "route": "/contacts", "dropConnectionRate": 1.0, "remaining": 1 })),
    )
    .await;
    let r = env
        .http
        .get(format!("{}{}", env.info.base_url, path))
        .bearer_auth(&env.info.token)
        .header("Version", V)
        .send()
        .await;
    let failed = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(failed, "a dropped connection must fail the client");
    let (s, _, _) = env.call("GET", &path, V, None).await;
    assert_eq!(s, 200);
    // Latency.
    env.admin(
        "POST",
        "/faults",
        Some(json!({ "latencyMs": 150, "remaining": 1 })),
    )
    .await;
    let t = std::time::Instant::now();
    env.call("GET", &path, V, None).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    // Bad rule.
    let (s, _) = env
        .admin("POST", "/faults", Some(json!({ "errorRate": 3.0 })))
        .await;
    assert_eq!(s, 422);
    // Admin API needs its token.
    let r = env
        .http
        .get(format!("{}/_sandbox/faults", env.info.base_url))
        .bearer_auth(&env.info.token)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn state_survives_a_restart_with_a_data_file() {
    let dir = std::env::temp_dir().join(format!("hlbridge-sbx-{}", uuid_like()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("sandbox.db");
    let mut config = SandboxConfig::for_tests();
    config.data = Some(file.clone());
    let env = Env::start(config.clone()).await;
    let loc = env.info.location_id.clone();
    let (_, c, _) = env
        .call(
            "POST",
            "/contacts/",
            V,
            Some(json!({ "locationId": loc, "email": "persist@x.io" })),
        )
        .await;
    let id = c["contact"]["id"].as_str().expect("id").to_string();
    let token = env.info.token.clone();
    env.sandbox.shutdown().await;
    let env2 = Env::start(config).await;
    assert_eq!(env2.info.token, token, "identity persists");
    let (s, got, _) = env2.call("GET", &format!("/contacts/{id}"), V, None).await;
    assert_eq!(
        (s, got["contact"]["emailLowerCase"].clone()),
        (200, json!("persist@x.io"))
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

#[tokio::test]
async fn deprecated_list_pages_with_start_after() {
    let env = Env::default().await;
    let loc = env.info.location_id.clone();
    for i in 0..7 {
        env.call(
            "POST",
            "/contacts/",
            V,
            Some(json!({ "locationId": loc, "email": format!("p{i}@x.io") })),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut seen: Vec<Value> = Vec::new();
    let mut path = format!("/contacts/?locationId={loc}&limit=3");
    for _ in 0..5 {
        let (_, page, _) = env.call("GET", &path, V, None).await;
        let items = page["contacts"].as_array().cloned().unwrap_or_default();
        seen.extend(items.iter().map(|c| c["id"].clone()));
        match (
            page["meta"]["startAfter"].as_i64(),
            page["meta"]["startAfterId"].as_str(),
        ) {
            (Some(ms), Some(id)) => {
                path =
                    format!("/contacts/?locationId={loc}&limit=3&startAfter={ms}&startAfterId={id}")
            }
            _ => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let mut dedup = seen.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), 7);
}
