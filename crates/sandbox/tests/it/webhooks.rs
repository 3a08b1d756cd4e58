//! Webhooks out: documented payloads, signatures, HighLevel's retry-only-on-429, faults.

use std::time::Duration;

use hlbridge_highlevel::webhooks::{PublicKey, WebhookVerifier};
use hlbridge_sandbox::SandboxConfig;
use serde_json::json;

use crate::harness::{Env, TestReceiver, V};

#[tokio::test]
async fn mutations_emit_signed_documented_events() {
    let receiver = TestReceiver::start().await;
    let mut config = SandboxConfig::for_tests();
    config.webhook_urls = vec![receiver.url.clone()];
    config.rsa_signing = true;
    let env = Env::start(config).await;
    let loc = env.info.location_id.clone();
    let (_, c, _) = env
        .call(
            "POST",
            "/contacts/",
            V,
            Some(json!({ "locationId": loc, "email": "w@x.io", "firstName": "W" })),
        )
        .await;
    let id = c["contact"]["id"].as_str().expect("id").to_string();
    env.call(
        "POST",
        &format!("/contacts/{id}/tags"),
        V,
        Some(json!({ "tags": ["x"] })),
    )
    .await;
    env.call(
        "POST",
        &format!("/contacts/{id}/tasks"),
        V,
        Some(json!({ "title": "t", "dueDate": "2030-01-01T00:00:00Z", "completed": false })),
    )
    .await;
    env.call(
        "POST",
        &format!("/contacts/{id}/notes"),
        V,
        Some(json!({ "body": "n" })),
    )
    .await;
    env.call("DELETE", &format!("/contacts/{id}"), V, None)
        .await;
    // Create, Update + TagUpdate, TaskCreate, NoteCreate, Delete.
    let got = receiver.wait_for(6).await;
    let events = receiver.events().await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        vec![
            "ContactCreate",
            "ContactUpdate",
            "ContactTagUpdate",
            "TaskCreate",
            "NoteCreate",
            "ContactDelete"
        ]
    );
    let first = &events[0];
    assert_eq!(first["locationId"], loc.as_str());
    assert_eq!(first["id"], id.as_str());
    assert!(first["timestamp"].is_string() && first["webhookId"].is_string());
    let keys = env.info.webhook_public_keys.clone();
    let ed = WebhookVerifier::new(vec![PublicKey::parse(&keys.ed25519).expect("ed key")])
        .with_window(Duration::from_secs(300));
    let rsa = WebhookVerifier::new(vec![
        PublicKey::parse(keys.rsa.as_deref().expect("rsa on")).expect("rsa key"),
    ]);
    for (headers, body) in &got {
        assert!(
            ed.verify(|n| headers.get(n).and_then(|v| v.to_str().ok()), body)
                .is_ok()
        );
        let only_rsa = |n: &str| {
            if n == "x-wh-signature" {
                headers.get(n).and_then(|v| v.to_str().ok())
            } else {
                None
            }
        };
        assert!(rsa.verify(only_rsa, body).is_ok());
        // Compact JSON.
        assert!(!body.windows(2).any(|w| w == b": "));
    }
    // Public keys are served without the admin token.
    let keys: serde_json::Value = env
        .http
        .get(format!("{}/_sandbox/keys", env.info.base_url))
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    assert_eq!(
        keys["ed25519"],
        env.info.webhook_public_keys.ed25519.as_str()
    );
}

#[tokio::test]
async fn failed_delivery_is_lost_unless_429_like_highlevel() {
    let receiver = TestReceiver::start().await;
    receiver
        .status
        .store(500, std::sync::atomic::Ordering::SeqCst);
    let mut config = SandboxConfig::for_tests();
    config.webhook_urls = vec![receiver.url.clone()];
    let env = Env::start(config).await;
    let loc = env.info.location_id.clone();
    env.call(
        "POST",
        "/contacts/",
        V,
        Some(json!({ "locationId": loc, "email": "a@x.io" })),
    )
    .await;
    receiver.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        receiver.received.lock().await.len(),
        1,
        "500 is not retried"
    );
    // 429 is retried until it succeeds.
    receiver
        .status
        .store(429, std::sync::atomic::Ordering::SeqCst);
    env.call(
        "POST",
        "/contacts/",
        V,
        Some(json!({ "locationId": loc, "email": "b@x.io" })),
    )
    .await;
    receiver.wait_for(3).await;
    receiver
        .status
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let all = receiver.wait_for(4).await;
    assert!(all.len() >= 4, "429 retried until delivered");
    let (_, log) = env.admin("GET", "/webhooks/log", None).await;
    let outcomes: Vec<&str> = log
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, vec!["failed", "delivered"]);
}

#[tokio::test]
async fn webhook_faults_drop_and_duplicate() {
    let receiver = TestReceiver::start().await;
    let mut config = SandboxConfig::for_tests();
    config.webhook_urls = vec![receiver.url.clone()];
    let env = Env::start(config).await;
    let loc = env.info.location_id.clone();
    env.admin(
        "POST",
        "/faults",
        Some(json!({ "route": "contacts.create", "webhookDuplicateRate": 1.0, "remaining": 1 })),
    )
    .await;
    env.call(
        "POST",
        "/contacts/",
        V,
        Some(json!({ "locationId": loc, "email": "d@x.io" })),
    )
    .await;
    let got = receiver.wait_for(2).await;
    let ids: Vec<String> = got
        .iter()
        .filter_map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter_map(|v| v["webhookId"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "a duplicate carries the same webhookId");
    env.admin(
        "POST",
        "/faults",
        Some(json!({ "route": "contacts.create", "webhookDropRate": 1.0, "remaining": 1 })),
    )
    .await;
    env.call(
        "POST",
        "/contacts/",
        V,
        Some(json!({ "locationId": loc, "email": "e@x.io" })),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received.lock().await.len(),
        2,
        "dropped event never arrives"
    );
}
