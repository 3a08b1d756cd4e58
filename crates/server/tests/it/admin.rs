//! The admin REST API end to end: flows from a template, an app event, runs and steps, a
//! dead letter and its replay, enable/disable, validation with diagnostics, the sandbox
//! test, mapping preview, catalog, users, tokens, sessions with CSRF, the audit log, the
//! OpenAPI document and the extended `/metrics`.

use hlbridge_engine::security::Role;
use hlbridge_engine::triggers::sign_hmac_sha256;
use reqwest::Method;
use serde_json::{Value, json};

use crate::adminkit::{Admin, OWNER, tag_template};
use crate::harness::{Harness, Options, wait_for};

/// POSTs an EcoSend-style tag event to the tag-segmentation flow, signed with the
/// template's secret.
pub async fn send_tag_event(h: &Harness, flow: &str, id: &str, email: &str, tag: &str) -> u16 {
    let body =
        serde_json::to_vec(&json!({ "id": id, "type": "tag.added", "email": email, "tag": tag }))
            .expect("json");
    h.http
        .post(h.url(&format!("/hooks/app/{flow}")))
        .header("content-type", "application/json")
        .header("x-signature", sign_hmac_sha256(b"ecosend", &body))
        .body(body)
        .send()
        .await
        .expect("app event")
        .status()
        .as_u16()
}

async fn final_runs(a: &Admin, flow: &str, n: usize) -> Vec<Value> {
    wait_for(15, &format!("{n} final runs of {flow}"), || async {
        let (_, runs) = a
            .owner(Method::GET, &format!("/api/v1/runs?flow={flow}"), None)
            .await;
        runs.as_array().is_some_and(|r| {
            r.len() == n
                && r.iter()
                    .all(|x| matches!(x["state"].as_str(), Some("succeeded" | "skipped" | "dead")))
        })
    })
    .await;
    let (_, runs) = a
        .owner(Method::GET, &format!("/api/v1/runs?flow={flow}"), None)
        .await;
    runs.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn flows_runs_dead_letters_replay_and_audit() {
    let a = Admin::start("admin-api", Options::default()).await;

    // A flow that does not compile: every problem, with line and column.
    let bad = tag_template().replace("contacts.tags.add", "contacts.tags.ad");
    let (status, body) = a
        .owner(Method::POST, "/api/v1/flows", Some(json!({ "toml": bad })))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_flow");
    let d = &body["details"]["diagnostics"][0];
    assert!(d["line"].as_u64().is_some_and(|l| l > 1), "{body}");
    assert!(
        d["message"]
            .as_str()
            .is_some_and(|m| m.contains("contacts.tags.ad")),
        "{body}"
    );
    let (_, v) = a
        .owner(
            Method::POST,
            "/api/v1/flows/validate",
            Some(json!({ "toml": bad })),
        )
        .await;
    assert_eq!(v["valid"], false);

    // From the gallery.
    let (status, t) = a.owner(Method::GET, "/api/v1/templates", None).await;
    assert_eq!(status, 200);
    assert_eq!(t.as_array().map(Vec::len), Some(6));
    let (status, body) = a
        .owner(
            Method::POST,
            "/api/v1/templates/tag-segmentation/instantiate",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], "tag-segmentation");
    assert_eq!(body["definition"]["trigger"]["type"], "app_webhook");
    assert!(
        body["toml"]
            .as_str()
            .is_some_and(|t| t.contains("contacts.tags.add"))
    );
    let (status, _) = a
        .owner(
            Method::POST,
            "/api/v1/templates/tag-segmentation/instantiate",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409, "the id is taken");

    // An app event runs it.
    let contact = a.h.contact("ada@example.com", "Ada").await;
    assert_eq!(
        send_tag_event(&a.h, "tag-segmentation", "evt-1", "ada@example.com", "vip").await,
        202
    );
    let runs = final_runs(&a, "tag-segmentation", 1).await;
    assert_eq!(runs[0]["state"], "succeeded", "{runs:?}");
    assert!(a.h.tags(&contact).contains(&"vip".to_owned()));
    let id = runs[0]["id"].as_str().expect("id").to_owned();
    let (_, detail) = a
        .owner(Method::GET, &format!("/api/v1/runs/{id}"), None)
        .await;
    let steps = detail["steps"].as_array().cloned().unwrap_or_default();
    assert!(
        steps
            .iter()
            .any(|s| s["step_id"] == "contact" && s["output"]["id"] == json!(contact))
    );
    assert!(
        steps.iter().any(|s| s["step_id"]
            .as_str()
            .is_some_and(|i| i.ends_with("add_tag"))
            && s["input"]["contactId"] == json!(contact)),
        "{detail}"
    );

    // A failure that cannot succeed on retry goes to dead letters; replay it.
    a.h.fault(
        json!({"route": "contacts.tags.add", "errorRate": 1.0, "status": 400, "remaining": 1}),
    )
    .await;
    assert_eq!(
        send_tag_event(
            &a.h,
            "tag-segmentation",
            "evt-2",
            "ada@example.com",
            "webinar"
        )
        .await,
        202
    );
    let runs = final_runs(&a, "tag-segmentation", 2).await;
    assert!(runs.iter().any(|r| r["state"] == "dead"), "{runs:?}");
    let (_, dead) = a.owner(Method::GET, "/api/v1/dead-letters", None).await;
    let dead_id = dead[0]["id"].as_str().expect("dead letter").to_owned();
    let (status, replayed) = a
        .as_role(
            Role::Operator,
            Method::POST,
            &format!("/api/v1/dead-letters/{dead_id}/replay"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    let runs = final_runs(&a, "tag-segmentation", 3).await;
    let new = runs
        .iter()
        .find(|r| r["replay_of"] == json!(dead_id))
        .expect("the replay");
    assert_eq!(new["state"], "succeeded");
    assert!(a.h.tags(&contact).contains(&"webinar".to_owned()));
    let (status, _) = a
        .owner(Method::POST, &format!("/api/v1/runs/{id}/replay"), None)
        .await;
    assert_eq!(status, 200, "a finished run can be replayed");
    final_runs(&a, "tag-segmentation", 4).await;
    // Resumed instead: the steps that succeeded are kept (the same records), none runs again.
    let (status, resumed) = a
        .owner(
            Method::POST,
            &format!("/api/v1/runs/{id}/replay?resume=true"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{resumed}");
    let runs = final_runs(&a, "tag-segmentation", 5).await;
    let new_id = resumed["run_ids"][0].as_str().expect("new run");
    assert!(
        runs.iter()
            .any(|r| r["id"] == json!(new_id) && r["state"] == "succeeded"),
        "{runs:?}"
    );
    let steps_of = |v: &Value| -> Vec<(Value, Value)> {
        v["steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| (s["step_id"].clone(), s["started_at"].clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, original) = a
        .owner(Method::GET, &format!("/api/v1/runs/{id}"), None)
        .await;
    let (_, copy) = a
        .owner(Method::GET, &format!("/api/v1/runs/{new_id}"), None)
        .await;
    assert!(!steps_of(&original).is_empty(), "{original}");
    assert_eq!(
        steps_of(&copy),
        steps_of(&original),
        "a resumed run of a finished run ran nothing again"
    );

    // Filters.
    let (_, ok) = a
        .owner(
            Method::GET,
            "/api/v1/runs?state=dead&flow=tag-segmentation",
            None,
        )
        .await;
    assert_eq!(ok.as_array().map(Vec::len), Some(1));
    let (status, _) = a.owner(Method::GET, "/api/v1/runs?state=bogus", None).await;
    assert_eq!(status, 400);
    let (_, none) = a
        .owner(Method::GET, "/api/v1/runs?since=2999-01-01T00:00:00Z", None)
        .await;
    assert_eq!(none.as_array().map(Vec::len), Some(0));

    // Disabled, the flow takes no events; enabled again, it does.
    let (status, body) = a
        .owner(Method::POST, "/api/v1/flows/tag-segmentation/disable", None)
        .await;
    assert_eq!((status, body["enabled"].clone()), (200, json!(false)));
    assert!(
        body["toml"]
            .as_str()
            .is_some_and(|t| t.contains("enabled = false"))
    );
    assert_eq!(
        send_tag_event(&a.h, "tag-segmentation", "evt-3", "ada@example.com", "x").await,
        404
    );
    let (status, _) = a
        .owner(Method::POST, "/api/v1/flows/tag-segmentation/enable", None)
        .await;
    assert_eq!(status, 200);

    // Export, update (id must stay), OpenAPI.
    let resp =
        a.h.http
            .get(a.h.url("/api/v1/flows/tag-segmentation/export"))
            .bearer_auth(&a.tokens[&Role::Viewer])
            .send()
            .await
            .expect("export");
    assert!(
        resp.headers()
            .get("content-disposition")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("tag-segmentation.toml"))
    );
    let text = resp.text().await.expect("toml");
    assert!(text.contains("id = \"tag-segmentation\""));
    let (status, _) = a
        .owner(
            Method::PUT,
            "/api/v1/flows/tag-segmentation",
            Some(json!({ "toml": text.replace("id = \"tag-segmentation\"", "id = \"renamed\"") })),
        )
        .await;
    assert_eq!(status, 409);
    let (status, doc) = a.owner(Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/api/v1/flows",
        "/api/v1/flows/{id}/enable",
        "/api/v1/runs/{id}/replay",
        "/api/v1/dead-letters/replay",
        "/api/v1/users/{name}",
        "/api/v1/tokens/{id}",
        "/api/v1/audit",
        "/api/v1/mappings/preview",
        "/api/v1/connections/{name}/refresh",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }

    // The audit log saw the changes, with who and from where.
    let (status, audit) = a.owner(Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit
        .as_array()
        .map(|v| v.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    for want in [
        "login",
        "token.created",
        "flow.created",
        "flow.disabled",
        "flow.enabled",
        "run.replayed",
    ] {
        assert!(actions.contains(&want), "audit lacks {want}: {actions:?}");
    }
    let (_, flows_only) = a
        .owner(Method::GET, "/api/v1/audit?action=flow.", None)
        .await;
    assert!(flows_only.as_array().is_some_and(|v| {
        !v.is_empty()
            && v.iter()
                .all(|e| e["action"].as_str().is_some_and(|x| x.starts_with("flow.")))
    }));

    // A forged app webhook counts as a signature failure; /metrics has the new series.
    let forged =
        a.h.http
            .post(a.h.url("/hooks/app/tag-segmentation"))
            .header("x-signature", "00")
            .body("{}")
            .send()
            .await
            .expect("forged");
    assert_eq!(forged.status(), 401);
    let metrics =
        a.h.http
            .get(a.h.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
    for want in [
        "hlbridge_runs{state=\"succeeded\"} 4",
        "hlbridge_runs{state=\"dead\"} 1",
        "hlbridge_queue_depth 0",
        "hlbridge_webhook_signature_failures_total{source=\"app\"} 1",
        "hlbridge_highlevel_calls_total{status=\"200\"}",
        "hlbridge_highlevel_calls_total{status=\"400\"} 1",
        "hlbridge_step_duration_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(metrics.contains(want), "metrics lack {want}:\n{metrics}");
    }
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hlbridge_step_duration_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(count >= 6, "steps of the 4 runs were observed: {count}");

    a.shutdown().await;
}

#[tokio::test]
async fn test_preview_catalog_and_dashboard() {
    let a = Admin::start("admin-tools", Options::default()).await;
    // The template's behaviour test, against a fresh sandbox, with each step's request and
    // response.
    let (status, report) = a
        .owner(
            Method::POST,
            "/api/v1/flows/test",
            Some(json!({ "toml": tag_template() })),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["passed"], true, "{report}");
    let cases = report["cases"].as_array().cloned().unwrap_or_default();
    assert_eq!(cases.len(), 5);
    let first = &cases[0];
    assert_eq!(first["passed"], true, "{first}");
    let steps = first["runs"][0]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        steps
            .iter()
            .any(|s| s["request"]["email"] == "ada@example.com"
                && s["response"]["email"] == "ada@example.com"),
        "{first}"
    );
    assert!(
        first["calls"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x["operation"] == "contacts.tags.add"))
    );
    // Or a given event.
    let (status, report) = a
        .owner(
            Method::POST,
            "/api/v1/flows/test",
            Some(json!({ "toml": tag_template(), "events": [{"id": "e", "type": "tag.added", "email": "nobody@example.com", "tag": "x"}] })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        report["cases"][0]["runs"][0]["state"], "skipped",
        "{report}"
    );

    // Mapping preview: types kept, errors explained.
    let (_, p) = a
        .as_role(
            Role::Viewer,
            Method::POST,
            "/api/v1/mappings/preview",
            Some(json!({ "mapping": "{{ event.tags }}", "event": { "tags": ["a", "b"] } })),
        )
        .await;
    assert_eq!(p["value"], json!(["a", "b"]));
    let (_, p) = a
        .owner(
            Method::POST,
            "/api/v1/mappings/preview",
            Some(json!({ "mapping": { "contactId": "{{ steps.contact.id }}", "note": "Hi {{ event.name | upper }}" },
                          "event": { "name": "ada" }, "steps": { "contact": { "id": "c1" } } })),
        )
        .await;
    assert_eq!(p["value"], json!({ "contactId": "c1", "note": "Hi ADA" }));
    let (_, p) = a
        .owner(
            Method::POST,
            "/api/v1/mappings/preview",
            Some(json!({ "mapping": "{{ evnt.email }}", "event": {} })),
        )
        .await;
    assert_eq!(p["ok"], false);
    assert!(
        p["errors"][0].as_str().is_some_and(|e| e.contains("evnt")),
        "{p}"
    );

    // Catalog for pickers.
    let (_, ops) = a
        .owner(
            Method::GET,
            "/api/v1/catalog?q=tags&category=contacts",
            None,
        )
        .await;
    let add = ops
        .as_array()
        .and_then(|v| v.iter().find(|o| o["id"] == "contacts.tags.add").cloned())
        .expect("contacts.tags.add");
    assert!(add["params"].as_array().is_some_and(|p| {
        p.iter()
            .any(|x| x["name"] == "contactId" && x["required"] == true)
    }));
    let (_, cats) = a
        .owner(Method::GET, "/api/v1/catalog/categories", None)
        .await;
    assert_eq!(cats.as_array().map(Vec::len), Some(14));
    let (_, trig) = a.owner(Method::GET, "/api/v1/catalog/triggers", None).await;
    assert_eq!(trig["kinds"].as_array().map(Vec::len), Some(4));
    assert!(
        trig["webhook_events"]
            .as_array()
            .is_some_and(|v| v.iter().any(|e| e["type"] == "ContactCreate"))
    );

    // Dashboard and connections.
    let (status, d) = a.owner(Method::GET, "/api/v1/dashboard", None).await;
    assert_eq!(status, 200, "{d}");
    assert!(d["connections"].is_array() && d["budgets"].is_array());
    let (_, conns) = a.owner(Method::GET, "/api/v1/connections", None).await;
    assert!(
        conns
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x["name"] == "default")),
        "{conns}"
    );
    let (status, c) = a
        .owner(Method::POST, "/api/v1/connections/default/refresh", None)
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["health"], "ok", "{c}");
    // A stored app connection (its secret in the vault, never in answers).
    let (status, c) = a
        .as_role(
            Role::Editor,
            Method::POST,
            "/api/v1/connections",
            Some(json!({ "name": "crm", "kind": "app", "base_url": "https://crm.example", "token": "s3cret-app-token" })),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    assert!(!c.to_string().contains("s3cret-app-token"));
    let (_, conns) = a.owner(Method::GET, "/api/v1/connections", None).await;
    assert!(
        conns
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x["name"] == "crm" && x["kind"] == "app")),
        "{conns}"
    );
    assert!(!conns.to_string().contains("s3cret-app-token"));
    let (status, _) = a
        .owner(
            Method::POST,
            "/api/v1/connections",
            Some(json!({ "name": "hl", "kind": "highlevel_oauth" })),
        )
        .await;
    assert_eq!(status, 501, "OAuth is authorized from the command line");
    let (_, audit) = a
        .owner(Method::GET, "/api/v1/audit?action=connection.", None)
        .await;
    assert!(
        audit
            .as_array()
            .is_some_and(|v| v.iter().any(|e| e["target"] == "crm")),
        "{audit}"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn users_tokens_sessions_and_csrf() {
    let a = Admin::start("admin-users", Options::default()).await;
    // A second first owner is refused.
    let (status, _) = a
        .session(
            Method::POST,
            "/api/v1/setup",
            Some(json!({ "user": "eve", "password": "12345678" })),
        )
        .await;
    assert_eq!(status, 409);

    let (status, u) = a
        .owner(
            Method::POST,
            "/api/v1/users",
            Some(json!({ "name": "vic", "role": "viewer", "password": "viewer-pass" })),
        )
        .await;
    assert_eq!(status, 201, "{u}");
    // An admin may not make an owner.
    let (status, _) = a
        .as_role(
            Role::Admin,
            Method::POST,
            "/api/v1/users",
            Some(json!({ "name": "mallory", "role": "owner", "password": "12345678" })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = a
        .as_role(
            Role::Admin,
            Method::PATCH,
            &format!("/api/v1/users/{OWNER}"),
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(status, 403, "an admin may not demote an owner");

    // The viewer signs in: reads, but may not change anything.
    let resp =
        a.h.http
            .post(a.h.url("/api/v1/session"))
            .json(&json!({ "user": "vic", "password": "viewer-pass" }))
            .send()
            .await
            .expect("login");
    assert_eq!(resp.status(), 200);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_owned())
        .expect("cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let cookie = cookie.split(';').next().unwrap_or_default().to_owned();
    let me: Value = resp.json().await.expect("me");
    assert_eq!(me["role"], "viewer");
    let csrf = me["csrf"].as_str().unwrap_or_default().to_owned();
    let get =
        a.h.http
            .get(a.h.url("/api/v1/flows"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("get");
    assert_eq!(get.status(), 200);
    let post =
        a.h.http
            .post(a.h.url("/api/v1/templates/tag-segmentation/instantiate"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({}))
            .send()
            .await
            .expect("post");
    assert_eq!(post.status(), 403);
    let body: Value = post.json().await.expect("json");
    assert_eq!(body["code"], "forbidden");

    // CSRF: the owner's session without the header, with a wrong one, or cross-origin.
    let no_csrf =
        a.h.http
            .post(a.h.url("/api/v1/templates/tag-segmentation/instantiate"))
            .header("cookie", &a.cookie)
            .json(&json!({}))
            .send()
            .await
            .expect("post");
    assert_eq!(no_csrf.status(), 403);
    let wrong =
        a.h.http
            .post(a.h.url("/api/v1/templates/tag-segmentation/instantiate"))
            .header("cookie", &a.cookie)
            .header("x-csrf-token", "nope")
            .json(&json!({}))
            .send()
            .await
            .expect("post");
    assert_eq!(wrong.status(), 403);
    let cross =
        a.h.http
            .post(a.h.url("/api/v1/templates/tag-segmentation/instantiate"))
            .header("cookie", &a.cookie)
            .header("x-csrf-token", &a.csrf)
            .header("origin", "https://evil.example")
            .json(&json!({}))
            .send()
            .await
            .expect("post");
    assert_eq!(cross.status(), 403);
    let (status, _) = a
        .session(
            Method::POST,
            "/api/v1/templates/tag-segmentation/instantiate",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "with the CSRF token it works");

    // No credentials: 401; a wrong password: 401; tokens can be revoked.
    let anon =
        a.h.http
            .get(a.h.url("/api/v1/runs"))
            .send()
            .await
            .expect("anon");
    assert_eq!(anon.status(), 401);
    let bad =
        a.h.http
            .post(a.h.url("/api/v1/session"))
            .json(&json!({ "user": "vic", "password": "wrong-password" }))
            .send()
            .await
            .expect("login");
    assert_eq!(bad.status(), 401);
    let (_, tokens) = a.owner(Method::GET, "/api/v1/tokens", None).await;
    let viewer_token = tokens
        .as_array()
        .and_then(|v| v.iter().find(|t| t["role"] == "viewer"))
        .and_then(|t| t["id"].as_str())
        .expect("viewer token")
        .to_owned();
    assert!(
        tokens.to_string().find("hlb_").is_none(),
        "no secrets listed"
    );
    let (status, _) = a
        .owner(
            Method::DELETE,
            &format!("/api/v1/tokens/{viewer_token}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = a
        .as_role(Role::Viewer, Method::GET, "/api/v1/flows", None)
        .await;
    assert_eq!(status, 401);

    // Sign out ends the session.
    let (status, _) = a.session(Method::DELETE, "/api/v1/session", None).await;
    assert_eq!(status, 204);
    let (status, _) = a.session(Method::GET, "/api/v1/session", None).await;
    assert_eq!(status, 401);
    a.shutdown().await;
}

#[tokio::test]
async fn flows_are_files_in_the_flows_directory() {
    let dir = crate::harness::temp_dir("flows-dir");
    let outside = crate::harness::temp_dir("flows-outside");
    let a = Admin::start(
        "admin-files",
        Options {
            flows_dir: Some(dir.clone()),
            ..Options::default()
        },
    )
    .await;
    // A flow file in the directory, loaded at start, and one elsewhere.
    let schedule = |id: &str| {
        format!(
            "# hand-written\nid = \"{id}\"\n\n[trigger]\ntype = \"schedule\"\ncron = \"@hourly\"\n"
        )
    };
    std::fs::write(dir.join("nightly.toml"), schedule("nightly")).expect("write");
    std::fs::write(outside.join("elsewhere.toml"), schedule("elsewhere")).expect("write");
    a.h.engine
        .load_flows(&[dir.join("nightly.toml"), outside.join("elsewhere.toml")])
        .await
        .expect("load");
    let (_, list) = a.owner(Method::GET, "/api/v1/flows", None).await;
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(2),
        "file-defined flows show: {list}"
    );

    // Disabling edits the file in place, comments kept.
    let (status, _) = a
        .owner(Method::POST, "/api/v1/flows/nightly/disable", None)
        .await;
    assert_eq!(status, 200);
    let text = std::fs::read_to_string(dir.join("nightly.toml")).expect("read");
    assert!(
        text.starts_with("# hand-written") && text.contains("enabled = false"),
        "{text}"
    );

    // A flow loaded from outside the directory is saved into it, the original untouched.
    let (status, body) = a
        .owner(Method::POST, "/api/v1/flows/elsewhere/disable", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["file"],
        json!(dir.join("elsewhere.toml").display().to_string())
    );
    assert!(
        !std::fs::read_to_string(outside.join("elsewhere.toml"))
            .expect("read")
            .contains("enabled")
    );

    // A flow created through the API is a file too; the export is that file.
    let (status, _) = a
        .owner(
            Method::POST,
            "/api/v1/flows",
            Some(json!({ "toml": tag_template() })),
        )
        .await;
    assert_eq!(status, 201);
    let on_disk = std::fs::read_to_string(dir.join("tag-segmentation.toml")).expect("written");
    assert_eq!(on_disk, tag_template());
    let exported =
        a.h.http
            .get(a.h.url("/api/v1/flows/tag-segmentation/export"))
            .bearer_auth(&a.tokens[&Role::Viewer])
            .send()
            .await
            .expect("export")
            .text()
            .await
            .expect("text");
    assert_eq!(exported, on_disk);
    // Created from JSON: written as TOML.
    let (status, body) = a
        .owner(
            Method::POST,
            "/api/v1/flows",
            Some(json!({ "flow": { "id": "from-json", "trigger": { "type": "schedule", "cron": "@daily" }, "steps": [] } })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let again: hlbridge_engine::Flow =
        toml::from_str(&std::fs::read_to_string(dir.join("from-json.toml")).expect("written"))
            .expect("a flow file");
    assert_eq!(again.id, "from-json");
    // Every file in the directory loads back.
    let ids =
        a.h.engine
            .load_flows(std::slice::from_ref(&dir))
            .await
            .expect("reload");
    assert_eq!(ids.len(), 4, "{ids:?}");
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(outside);
}
