//! Auth like HighLevel: Private Integration Tokens, OAuth 2.0 apps with the authorization-code
//! grant, **rotating refresh tokens** (each refresh invalidates the old refresh token), agency
//! tokens that mint location tokens, access-token expiry, and per-operation scopes.
//!
//! Tokens, clients, codes and refresh tokens are documents like any other, so a file-backed
//! sandbox keeps them across restarts.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use hlbridge_highlevel::operations::OPERATIONS;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::handlers::{Caller, Ctx, UserType, new_id};

/// Kind of access-token documents (id = the token).
pub const TOKEN: &str = "_token";
/// Kind of OAuth app documents (id = client id).
pub const CLIENT: &str = "_oauth_client";
/// Kind of authorization codes.
pub const CODE: &str = "_oauth_code";
/// Kind of refresh tokens (id = the refresh token).
pub const REFRESH: &str = "_refresh_token";

/// Every scope the sandbox knows: those of the operation table plus the OAuth ones.
pub static ALL_SCOPES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut set: BTreeSet<String> = OPERATIONS.iter().map(|o| o.scope.to_string()).collect();
    for extra in [
        "oauth.readonly",
        "oauth.write",
        "locations.readonly",
        "companies.readonly",
    ] {
        set.insert(extra.to_string());
    }
    set.into_iter().collect()
});

/// The read-only subset of [`ALL_SCOPES`].
pub fn readonly_scopes() -> Vec<String> {
    ALL_SCOPES
        .iter()
        .filter(|s| s.ends_with(".readonly"))
        .cloned()
        .collect()
}

/// What a valid access token grants.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The caller identity.
    pub caller: Caller,
    /// Granted scopes.
    pub scopes: Vec<String>,
}

impl Grant {
    /// Whether `scope` is granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

fn caller_json(c: &Caller) -> Value {
    json!({
        "locationId": c.location_id,
        "companyId": c.company_id,
        "userType": match c.user_type { UserType::Location => "Location", UserType::Company => "Company" },
        "appId": c.app_id,
    })
}

fn caller_from(v: &Value) -> Caller {
    Caller {
        location_id: v["locationId"].as_str().map(str::to_string),
        company_id: v["companyId"].as_str().map(str::to_string),
        user_type: if v["userType"] == "Company" {
            UserType::Company
        } else {
            UserType::Location
        },
        app_id: v["appId"].as_str().unwrap_or("sandbox").to_string(),
    }
}

/// Stores an access token; `ttl_ms` `None` never expires (Private Integration Tokens).
pub fn store_token(
    ctx: &mut Ctx<'_>,
    token: &str,
    caller: &Caller,
    scopes: &[String],
    ttl_ms: Option<i64>,
    kind: &str,
) -> Result<(), ApiError> {
    let mut body = caller_json(caller);
    body["kind"] = json!(kind);
    body["scopes"] = json!(scopes);
    body["expiresAt"] = json!(ttl_ms.map(|t| ctx.now_ms + t));
    ctx.put(TOKEN, token, None, None, body)
}

/// Checks an `Authorization` header value and returns the grant.
pub fn authenticate(ctx: &Ctx<'_>, authorization: Option<&str>) -> Result<Grant, ApiError> {
    let token = authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Invalid JWT"))?;
    let doc = ctx
        .get(TOKEN, token)
        .ok_or_else(|| ApiError::unauthorized("Invalid JWT"))?;
    if let Some(exp) = doc.body["expiresAt"].as_i64()
        && exp <= ctx.now_ms
    {
        return Err(ApiError::unauthorized("Invalid JWT"));
    }
    Ok(Grant {
        caller: caller_from(&doc.body),
        scopes: doc.body["scopes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
    })
}

/// Registers an OAuth app.
pub fn register_client(
    ctx: &mut Ctx<'_>,
    client_id: &str,
    secret: &str,
    company_id: &str,
) -> Result<(), ApiError> {
    ctx.put(
        CLIENT,
        client_id,
        None,
        None,
        json!({ "clientId": client_id, "clientSecret": secret, "companyId": company_id }),
    )
}

/// Issues an authorization code for `client_id`, acting for a location or the agency.
pub fn issue_code(
    ctx: &mut Ctx<'_>,
    client_id: &str,
    redirect_uri: &str,
    caller: &Caller,
    scopes: &[String],
) -> Result<String, ApiError> {
    if ctx.get(CLIENT, client_id).is_none() {
        return Err(ApiError::bad_request("Invalid client_id"));
    }
    let code = new_id() + &new_id();
    let mut body = caller_json(caller);
    body["clientId"] = json!(client_id);
    body["redirectUri"] = json!(redirect_uri);
    body["scopes"] = json!(scopes);
    body["expiresAt"] = json!(ctx.now_ms + 10 * 60 * 1000);
    ctx.put(CODE, &code, None, None, body)?;
    Ok(code)
}

fn oauth_error(status: u16, error: &str, description: &str) -> ApiError {
    let mut e = ApiError::new(status, description);
    let extra = e.extra.get_or_insert_with(Default::default);
    extra.insert("error".into(), json!(error));
    extra.insert("error_description".into(), json!(description));
    e
}

/// `POST /oauth/token` with a form body already decoded.
pub fn token_endpoint(
    ctx: &mut Ctx<'_>,
    form: &std::collections::HashMap<String, String>,
    ttl_ms: i64,
) -> Result<Value, ApiError> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let mut missing = Vec::new();
    for k in ["client_id", "client_secret", "grant_type"] {
        if get(k).is_none() {
            missing.push(format!("{k} should not be empty"));
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::unprocessable(missing));
    }
    let client_id = get("client_id").unwrap_or_default();
    let client = ctx
        .get(CLIENT, client_id)
        .ok_or_else(|| oauth_error(401, "invalid_client", "Invalid client: client is invalid"))?;
    if client.body["clientSecret"].as_str() != get("client_secret") {
        return Err(oauth_error(
            401,
            "invalid_client",
            "Invalid client: client credentials are invalid",
        ));
    }
    let (grant_doc, grant_kind, grant_id) = match get("grant_type").unwrap_or_default() {
        "authorization_code" => {
            let code = get("code")
                .ok_or_else(|| oauth_error(400, "invalid_request", "Missing parameter: `code`"))?;
            let doc = ctx
                .get(CODE, code)
                .map(|d| (*d.body).clone())
                .ok_or_else(|| {
                    oauth_error(
                        400,
                        "invalid_grant",
                        "Invalid grant: authorization code is invalid",
                    )
                })?;
            if doc["clientId"].as_str() != Some(client_id)
                || doc["expiresAt"].as_i64().is_none_or(|e| e <= ctx.now_ms)
            {
                return Err(oauth_error(
                    400,
                    "invalid_grant",
                    "Invalid grant: authorization code is invalid",
                ));
            }
            if let (Some(want), Some(given)) = (doc["redirectUri"].as_str(), get("redirect_uri"))
                && want != given
            {
                return Err(oauth_error(
                    400,
                    "invalid_grant",
                    "Invalid grant: redirect_uri does not match",
                ));
            }
            (doc, CODE, code.to_string())
        }
        "refresh_token" => {
            let rt = get("refresh_token").ok_or_else(|| {
                oauth_error(400, "invalid_request", "Missing parameter: `refresh_token`")
            })?;
            let doc = ctx
                .get(REFRESH, rt)
                .map(|d| (*d.body).clone())
                .ok_or_else(|| {
                    oauth_error(
                        400,
                        "invalid_grant",
                        "Invalid grant: refresh token is invalid",
                    )
                })?;
            if doc["clientId"].as_str() != Some(client_id) {
                return Err(oauth_error(
                    400,
                    "invalid_grant",
                    "Invalid grant: refresh token is invalid",
                ));
            }
            (doc, REFRESH, rt.to_string())
        }
        other => {
            return Err(oauth_error(
                400,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            ));
        }
    };
    // Codes are single use; refresh tokens rotate: the old one stops working now.
    ctx.delete(grant_kind, &grant_id)?;
    let mut caller = caller_from(&grant_doc);
    caller.app_id = client_id.to_string();
    let scopes: Vec<String> = grant_doc["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let access = format!("sbx_at_{}{}", new_id(), new_id());
    let refresh = format!("sbx_rt_{}{}", new_id(), new_id());
    store_token(ctx, &access, &caller, &scopes, Some(ttl_ms), "oauth")?;
    let mut rdoc = caller_json(&caller);
    rdoc["clientId"] = json!(client_id);
    rdoc["scopes"] = json!(scopes);
    ctx.put(REFRESH, &refresh, None, None, rdoc)?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl_ms / 1000,
        "refresh_token": refresh,
        "scope": scopes.join(" "),
        "userType": if caller.user_type == UserType::Company { "Company" } else { "Location" },
        "locationId": caller.location_id,
        "companyId": caller.company_id,
        "userId": "sandbox-user",
        "approvedLocations": caller.location_id.iter().collect::<Vec<_>>(),
        "isBulkInstallation": caller.user_type == UserType::Company,
    }))
}

/// `POST /oauth/locationToken`: an agency token mints a token for one of its locations.
pub fn location_token(
    ctx: &mut Ctx<'_>,
    grant: &Grant,
    form: &std::collections::HashMap<String, String>,
    ttl_ms: i64,
) -> Result<Value, ApiError> {
    if grant.caller.user_type != UserType::Company {
        return Err(ApiError::unauthorized(
            "This route requires an Agency (Company) access token",
        ));
    }
    let mut missing = Vec::new();
    for k in ["companyId", "locationId"] {
        if form.get(k).is_none_or(|v| v.is_empty()) {
            missing.push(format!("{k} should not be empty"));
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::unprocessable(missing));
    }
    let company = &form["companyId"];
    let location = &form["locationId"];
    if grant.caller.company_id.as_deref() != Some(company.as_str()) {
        return Err(ApiError::forbidden(
            "The token does not have access to this company.",
        ));
    }
    let loc = ctx
        .get("location", location)
        .ok_or_else(|| ApiError::bad_request("Location not found"))?;
    if loc.body["companyId"].as_str() != Some(company.as_str()) {
        return Err(ApiError::forbidden(
            "The token does not have access to this location.",
        ));
    }
    let caller = Caller {
        location_id: Some(location.clone()),
        company_id: Some(company.clone()),
        user_type: UserType::Location,
        app_id: grant.caller.app_id.clone(),
    };
    let access = format!("sbx_lt_{}{}", new_id(), new_id());
    store_token(
        ctx,
        &access,
        &caller,
        &grant.scopes,
        Some(ttl_ms),
        "location",
    )?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl_ms / 1000,
        "scope": grant.scopes.join(" "),
        "locationId": location,
        "userId": "sandbox-user",
        "appId": grant.caller.app_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::Guard;
    use crate::store::Docs;
    use parking_lot::RwLock;
    use std::collections::HashMap;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn refresh_tokens_rotate() {
        let docs = RwLock::new(Docs::default());
        let mut ctx = Ctx::new(Guard::Write(docs.write()), 1_000);
        register_client(&mut ctx, "cid", "secret", "co").expect("client");
        let caller = Caller {
            location_id: Some("loc".into()),
            company_id: Some("co".into()),
            user_type: UserType::Location,
            app_id: "cid".into(),
        };
        let code = issue_code(
            &mut ctx,
            "cid",
            "http://127.0.0.1/cb",
            &caller,
            &["contacts.readonly".into()],
        )
        .expect("code");
        let first = token_endpoint(
            &mut ctx,
            &form(&[
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("grant_type", "authorization_code"),
                ("code", &code),
            ]),
            60_000,
        )
        .expect("exchange");
        // The code is single use.
        assert!(
            token_endpoint(
                &mut ctx,
                &form(&[
                    ("client_id", "cid"),
                    ("client_secret", "secret"),
                    ("grant_type", "authorization_code"),
                    ("code", &code)
                ]),
                60_000,
            )
            .is_err()
        );
        let rt1 = first["refresh_token"].as_str().expect("rt").to_string();
        let second = token_endpoint(
            &mut ctx,
            &form(&[
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt1),
            ]),
            60_000,
        )
        .expect("refresh");
        assert_ne!(second["refresh_token"], first["refresh_token"]);
        let again = token_endpoint(
            &mut ctx,
            &form(&[
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt1),
            ]),
            60_000,
        );
        assert_eq!(again.map_err(|e| e.status), Err(400));
        let at = second["access_token"].as_str().expect("at");
        let grant = authenticate(&ctx, Some(&format!("Bearer {at}"))).expect("valid");
        assert!(grant.has_scope("contacts.readonly"));
        assert!(!grant.has_scope("contacts.write"));
        let wrong_secret = token_endpoint(
            &mut ctx,
            &form(&[
                ("client_id", "cid"),
                ("client_secret", "nope"),
                ("grant_type", "refresh_token"),
                ("refresh_token", "x"),
            ]),
            60_000,
        );
        assert_eq!(wrong_secret.map_err(|e| e.status), Err(401));
    }

    #[test]
    fn tokens_expire() {
        let docs = RwLock::new(Docs::default());
        let caller = Caller {
            location_id: Some("loc".into()),
            company_id: None,
            user_type: UserType::Location,
            app_id: "a".into(),
        };
        {
            let mut ctx = Ctx::new(Guard::Write(docs.write()), 1_000);
            store_token(&mut ctx, "t", &caller, &[], Some(500), "oauth").expect("store");
            assert!(authenticate(&ctx, Some("Bearer t")).is_ok());
        }
        let ctx = Ctx::new(Guard::Read(docs.read()), 1_600);
        assert_eq!(
            authenticate(&ctx, Some("Bearer t"))
                .map(|_| ())
                .map_err(|e| e.status),
            Err(401)
        );
        assert!(authenticate(&ctx, None).is_err());
    }
}
