//! HighLevel OAuth 2.0 plumbing: the authorize URL, a one-shot callback listener on
//! loopback, the code exchange and refresh at `/oauth/token`, and the agency endpoints
//! (`GET /oauth/installedLocations`, `POST /oauth/locationToken`).
//!
//! Errors never contain a token, a code or the client secret: HighLevel's error message is
//! kept (it names what was wrong), the request is not.

use std::time::Duration;

use hlbridge_highlevel::OAuthTokens;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

use super::secret::{Secret, constant_time_eq, random_token};

/// HighLevel's authorize page (the marketplace's location chooser).
pub const HIGHLEVEL_AUTHORIZE_URL: &str =
    "https://marketplace.gohighlevel.com/oauth/chooselocation";

/// The `Version` header of the OAuth endpoints.
pub const OAUTH_VERSION: &str = "2021-07-28";

/// OAuth failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// HighLevel refused for good (`invalid_grant`, `invalid_client`, 401/403): the
    /// connection must be authorized again.
    #[error("HighLevel refused: {0}")]
    Rejected(String),
    /// A passing failure (network, 429, 5xx): try again later.
    #[error("{0}")]
    Transient(String),
    /// The callback was wrong (state mismatch, error from the authorize page, timeout).
    #[error("authorization failed: {0}")]
    Callback(String),
    /// A bad URL or setting.
    #[error("{0}")]
    Config(String),
}

impl OAuthError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, OAuthError::Transient(_))
    }
}

/// `endpoint` (e.g. `/oauth/token`) under the API base URL, keeping a path prefix.
pub fn endpoint(base: &Url, path: &str) -> Result<Url, OAuthError> {
    let mut u = base.clone();
    let prefix = u.path().trim_end_matches('/').to_owned();
    u.set_path(&format!("{prefix}{path}"));
    u.set_query(None);
    if u.cannot_be_a_base() {
        return Err(OAuthError::Config(format!("{base} is not a base URL")));
    }
    Ok(u)
}

/// The authorize URL: `authorize` (HighLevel's chooser, or `{sandbox}/oauth/chooselocation`)
/// with `response_type=code`, the client id, redirect URI, scopes and state.
pub fn authorize_url(
    authorize: &Url,
    client_id: &str,
    redirect_uri: &str,
    scopes: &[String],
    state: &str,
) -> Url {
    let mut u = authorize.clone();
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("client_id", client_id)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", state);
    u
}

/// A callback listener on loopback, waiting for one redirect with `code` and `state`.
#[derive(Debug)]
pub struct CallbackListener {
    listener: TcpListener,
    redirect_uri: String,
    state: Secret,
}

impl CallbackListener {
    /// Binds `127.0.0.1:port` (0: any free port); the redirect URI is
    /// `http://127.0.0.1:<port>/callback`.
    pub async fn bind(port: u16) -> Result<CallbackListener, OAuthError> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| OAuthError::Config(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| OAuthError::Config(e.to_string()))?
            .port();
        Ok(CallbackListener {
            listener,
            redirect_uri: format!("http://127.0.0.1:{port}/callback"),
            state: random_token(24),
        })
    }

    /// The redirect URI to register and send.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The `state` value to send (checked on the callback).
    pub fn state(&self) -> &str {
        self.state.expose()
    }

    /// Waits (up to `timeout`) for the redirect; answers the browser with a short page and
    /// returns the authorization code. Requests to other paths are answered 404 and
    /// ignored; a wrong `state` or an `error` parameter fails.
    pub async fn wait(self, timeout: Duration) -> Result<Secret, OAuthError> {
        tokio::time::timeout(timeout, self.accept_loop())
            .await
            .map_err(|_| {
                OAuthError::Callback(format!(
                    "no redirect within {} s (was the authorize page opened and approved?)",
                    timeout.as_secs()
                ))
            })?
    }

    async fn accept_loop(self) -> Result<Secret, OAuthError> {
        loop {
            let (mut sock, _) = self
                .listener
                .accept()
                .await
                .map_err(|e| OAuthError::Callback(e.to_string()))?;
            let mut buf = Vec::with_capacity(2048);
            let mut chunk = [0u8; 1024];
            // Read the request head (bounded).
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let target = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("/")
                .to_owned();
            let parsed = Url::parse(&format!("http://127.0.0.1{target}")).ok();
            let Some(u) = parsed.filter(|u| u.path() == "/callback") else {
                let _ = respond(&mut sock, 404, "Not found").await;
                continue;
            };
            let get = |k: &str| {
                u.query_pairs()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.into_owned())
            };
            if let Some(err) = get("error") {
                let _ = respond(
                    &mut sock,
                    400,
                    "Authorization was refused. You can close this window.",
                )
                .await;
                return Err(OAuthError::Callback(format!(
                    "the authorize page answered `{err}`{}",
                    get("error_description")
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                )));
            }
            let state_ok = get("state")
                .is_some_and(|s| constant_time_eq(s.as_bytes(), self.state.expose().as_bytes()));
            if !state_ok {
                let _ = respond(
                    &mut sock,
                    400,
                    "State mismatch: this redirect was not for this request.",
                )
                .await;
                return Err(OAuthError::Callback(
                    "the redirect's `state` does not match (a forged or stale redirect)".into(),
                ));
            }
            let Some(code) = get("code").filter(|c| !c.is_empty()) else {
                let _ = respond(&mut sock, 400, "No authorization code in the redirect.").await;
                return Err(OAuthError::Callback("the redirect has no `code`".into()));
            };
            let _ = respond(
                &mut sock,
                200,
                "hlbridge is connected. You can close this window and return to the terminal.",
            )
            .await;
            return Ok(Secret::new(code));
        }
    }
}

async fn respond(sock: &mut tokio::net::TcpStream, status: u16, text: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>hlbridge</title></head><body><p>{text}</p></body></html>"
    );
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

/// An HTTP client for OAuth calls (no redirects, 30 s timeout).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("hlbridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

fn transport(what: &str, e: &reqwest::Error) -> OAuthError {
    let mut msg = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    OAuthError::Transient(format!("{what}: {msg}"))
}

/// Turns an answer into JSON or a classified error (400/401/403 are permanent, other
/// failures transient). The message is HighLevel's, never the request.
async fn answer(what: &str, resp: reqwest::Response) -> Result<Value, OAuthError> {
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| transport(what, &e))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let detail = ["error_description", "message", "error"]
        .iter()
        .find_map(|k| body.get(*k))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| format!("HTTP {status}"));
    let msg = format!("{what}: HighLevel answered {status}: {detail}");
    if matches!(status, 400 | 401 | 403) {
        Err(OAuthError::Rejected(msg))
    } else {
        Err(OAuthError::Transient(msg))
    }
}

async fn post_token_form(
    http: &reqwest::Client,
    base: &Url,
    form: &[(&str, &str)],
    what: &str,
) -> Result<Value, OAuthError> {
    let url = endpoint(base, "/oauth/token")?;
    let resp = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|e| transport(what, &e))?;
    answer(what, resp).await
}

/// Exchanges an authorization code for tokens at `{base}/oauth/token`.
pub async fn exchange_code(
    http: &reqwest::Client,
    base: &Url,
    client_id: &str,
    client_secret: &Secret,
    code: &Secret,
    redirect_uri: &str,
) -> Result<OAuthTokens, OAuthError> {
    let body = post_token_form(
        http,
        base,
        &[
            ("client_id", client_id),
            ("client_secret", client_secret.expose()),
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
        ],
        "exchanging the authorization code",
    )
    .await?;
    OAuthTokens::from_token_response(&body, OffsetDateTime::now_utc(), None)
        .map_err(|e| OAuthError::Transient(e.to_string()))
}

/// Refreshes tokens at `{base}/oauth/token` (the answer carries a new refresh token; the old
/// one stops working).
pub async fn refresh(
    http: &reqwest::Client,
    base: &Url,
    client_id: &str,
    client_secret: &Secret,
    tokens: &OAuthTokens,
) -> Result<OAuthTokens, OAuthError> {
    let mut form: Vec<(&str, &str)> = vec![
        ("client_id", client_id),
        ("client_secret", client_secret.expose()),
        ("grant_type", "refresh_token"),
        ("refresh_token", &tokens.refresh_token),
    ];
    if let Some(t) = tokens.user_type.as_deref() {
        form.push(("user_type", t));
    }
    let body = post_token_form(http, base, &form, "refreshing the token").await?;
    OAuthTokens::from_token_response(&body, OffsetDateTime::now_utc(), Some(tokens))
        .map_err(|e| OAuthError::Transient(e.to_string()))
}

/// A location of an agency install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledLocation {
    /// Location id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
}

/// `GET {base}/oauth/installedLocations` with an agency token: every location the app is
/// installed on (all pages).
pub async fn installed_locations(
    http: &reqwest::Client,
    base: &Url,
    agency_token: &str,
    company_id: &str,
    app_id: &str,
) -> Result<Vec<InstalledLocation>, OAuthError> {
    let mut out = Vec::new();
    let limit = 100usize;
    loop {
        let mut url = endpoint(base, "/oauth/installedLocations")?;
        url.query_pairs_mut()
            .append_pair("companyId", company_id)
            .append_pair("appId", app_id)
            .append_pair("isInstalled", "true")
            .append_pair("skip", &out.len().to_string())
            .append_pair("limit", &limit.to_string());
        let resp = http
            .get(url)
            .bearer_auth(agency_token)
            .header("Version", OAUTH_VERSION)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport("listing installed locations", &e))?;
        let body = answer("listing installed locations", resp).await?;
        let page: Vec<InstalledLocation> = body
            .get("locations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|l| l.get("isInstalled").and_then(Value::as_bool) != Some(false))
            .filter_map(|l| {
                let id = l.get("_id").or_else(|| l.get("id"))?.as_str()?.to_owned();
                Some(InstalledLocation {
                    id,
                    name: l.get("name").and_then(Value::as_str).map(str::to_owned),
                })
            })
            .collect();
        let n = body
            .get("locations")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        out.extend(page);
        let total = body
            .get("count")
            .and_then(Value::as_u64)
            .and_then(|c| usize::try_from(c).ok());
        if n < limit || total.is_some_and(|t| out.len() >= t) || n == 0 {
            return Ok(out);
        }
    }
}

/// `POST {base}/oauth/locationToken` with an agency token: a location token (access token
/// and its expiry).
pub async fn location_token(
    http: &reqwest::Client,
    base: &Url,
    agency_token: &str,
    company_id: &str,
    location_id: &str,
) -> Result<(Secret, OffsetDateTime), OAuthError> {
    let url = endpoint(base, "/oauth/locationToken")?;
    let resp = http
        .post(url)
        .bearer_auth(agency_token)
        .header("Version", OAUTH_VERSION)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&[("companyId", company_id), ("locationId", location_id)])
        .send()
        .await
        .map_err(|e| transport("minting a location token", &e))?;
    let body = answer("minting a location token", resp).await?;
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            OAuthError::Transient("HighLevel's location token answer has no access_token".into())
        })?;
    let expires_in = body
        .get("expires_in")
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(86_399.0);
    Ok((
        Secret::new(token),
        OffsetDateTime::now_utc() + Duration::from_secs_f64(expires_in.min(1e9)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let base = Url::parse("http://127.0.0.1:9/prefix/").expect("url");
        assert_eq!(
            endpoint(&base, "/oauth/token").expect("ok").as_str(),
            "http://127.0.0.1:9/prefix/oauth/token"
        );
        let auth = Url::parse(HIGHLEVEL_AUTHORIZE_URL).expect("url");
        let u = authorize_url(
            &auth,
            "cid",
            "http://127.0.0.1:1/callback",
            &["contacts.readonly".into(), "contacts.write".into()],
            "st",
        );
        let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["scope"], "contacts.readonly contacts.write");
        assert_eq!(q["state"], "st");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:1/callback");
    }

    #[tokio::test]
    async fn callback_checks_state() {
        let l = CallbackListener::bind(0).await.expect("bind");
        let uri = l.redirect_uri().to_owned();
        let state = l.state().to_owned();
        let wait = tokio::spawn(l.wait(Duration::from_secs(20)));
        let http = http_client();
        // A stray request elsewhere is ignored.
        let stray = http
            .get(uri.replace("/callback", "/favicon.ico"))
            .send()
            .await
            .expect("stray");
        assert_eq!(stray.status().as_u16(), 404);
        let ok = http
            .get(format!("{uri}?code=the-code&state={state}"))
            .send()
            .await
            .expect("callback");
        assert_eq!(ok.status().as_u16(), 200);
        let code = wait.await.expect("join").expect("code");
        assert_eq!(code.expose(), "the-code");

        let l = CallbackListener::bind(0).await.expect("bind");
        let uri = l.redirect_uri().to_owned();
        let wait = tokio::spawn(l.wait(Duration::from_secs(20)));
        let bad = http
            .get(format!("{uri}?code=x&state=forged"))
            .send()
            .await
            .expect("callback");
        assert_eq!(bad.status().as_u16(), 400);
        assert!(matches!(
            wait.await.expect("join"),
            Err(OAuthError::Callback(m)) if m.contains("state")
        ));
    }
}
