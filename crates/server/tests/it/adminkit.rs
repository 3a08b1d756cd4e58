//! Helpers for the admin API tests: the first owner (created through `/api/v1/setup`), API
//! tokens per role, and requests with a token or with the owner's session.

use std::collections::HashMap;

use hlbridge_engine::security::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Harness, Options};

pub const OWNER: &str = "olivia";
pub const OWNER_PASSWORD: &str = "correct horse battery";

/// A harness with an owner signed in and one API token per role.
pub struct Admin {
    pub h: Harness,
    /// The owner's session cookie (`name=value`).
    pub cookie: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// A token per role.
    pub tokens: HashMap<Role, String>,
}

impl Admin {
    pub async fn start(tag: &str, opts: Options) -> Admin {
        let h = Harness::start(tag, opts).await;
        let resp = h
            .http
            .post(h.url("/api/v1/setup"))
            .json(&json!({ "user": OWNER, "password": OWNER_PASSWORD }))
            .send()
            .await
            .expect("setup");
        assert_eq!(resp.status(), 200, "first owner");
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("session cookie")
            .to_owned();
        let me: Value = resp.json().await.expect("me");
        let csrf = me["csrf"].as_str().expect("csrf").to_owned();
        let mut admin = Admin {
            h,
            cookie,
            csrf,
            tokens: HashMap::new(),
        };
        for role in Role::ALL {
            let (status, body) = admin
                .session(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(json!({ "name": format!("{role} token"), "role": role.as_str() })),
                )
                .await;
            assert_eq!(status, 201, "token for {role}: {body}");
            admin
                .tokens
                .insert(role, body["secret"].as_str().expect("secret").to_owned());
        }
        admin
    }

    /// A request with the owner's session cookie and CSRF header.
    pub async fn session(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .h
            .http
            .request(method, self.h.url(path))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A request with the API token of `role`.
    pub async fn as_role(
        &self,
        role: Role,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .h
            .http
            .request(method, self.h.url(path))
            .bearer_auth(&self.tokens[&role]);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A request as the owner (token).
    pub async fn owner(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.as_role(Role::Owner, method, path, body).await
    }

    pub async fn shutdown(self) {
        self.h.shutdown().await;
    }
}

/// The tag-segmentation template's source.
pub fn tag_template() -> &'static str {
    include_str!("../../../../flows/templates/tag-segmentation.toml")
}
