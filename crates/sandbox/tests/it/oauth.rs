//! OAuth like HighLevel: authorize page → code → tokens; refresh rotation; agency tokens mint
//! location tokens; installed locations; access tokens expire.

use std::time::Duration;

use hlbridge_sandbox::SandboxConfig;
use serde_json::{Value, json};

use crate::harness::{Env, V};

async fn token(env: &Env, form: &[(&str, &str)]) -> (u16, Value) {
    let r = env
        .http
        .post(format!("{}/oauth/token", env.info.base_url))
        .form(form)
        .send()
        .await
        .expect("send");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn authorize(env: &Env, extra: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = format!(
        "{}/oauth/chooselocation?response_type=code&client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&state=xyz&approve=1{extra}",
        env.info.base_url, env.info.oauth.client_id
    );
    let r = client.get(url).send().await.expect("authorize");
    assert_eq!(r.status().as_u16(), 303, "redirects to the app");
    let loc = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(loc.starts_with("http://127.0.0.1:9/cb?code="));
    assert!(loc.ends_with("&state=xyz"));
    let u = url::Url::parse(&loc).expect("url");
    u.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code")
}

#[tokio::test]
async fn authorization_code_and_rotating_refresh() {
    let mut config = SandboxConfig::for_tests();
    config.access_token_ttl = Duration::from_secs(2);
    let env = Env::start(config).await;
    let page = env
        .http
        .get(format!(
            "{}/oauth/chooselocation?client_id={}&redirect_uri=http://127.0.0.1:9/cb",
            env.info.base_url, env.info.oauth.client_id
        ))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains(&env.info.location_id),
        "the page lists the location"
    );
    let code = authorize(
        &env,
        &format!(
            "&location_id={}&scope=contacts.readonly%20contacts.write",
            env.info.location_id
        ),
    )
    .await;
    let (cid, secret) = (
        env.info.oauth.client_id.clone(),
        env.info.oauth.client_secret.clone(),
    );
    let (s, t1) = token(
        &env,
        &[
            ("client_id", &cid),
            ("client_secret", &secret),
            ("grant_type", "authorization_code"),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(s, 200, "{t1}");
    assert_eq!(t1["userType"], "Location");
    assert_eq!(t1["locationId"], env.info.location_id.as_str());
    let at = t1["access_token"].as_str().expect("at").to_string();
    let loc = env.info.location_id.clone();
    let (s, _, _) = env
        .call_as(&at, "GET", &format!("/contacts/?locationId={loc}"), V, None)
        .await;
    assert_eq!(s, 200);
    // Scope not granted.
    let (s, _, _) = env
        .call_as(
            &at,
            "GET",
            &format!("/opportunities/pipelines?locationId={loc}"),
            V,
            None,
        )
        .await;
    assert_eq!(s, 401);
    // Refresh rotates: the old refresh token stops working.
    let rt1 = t1["refresh_token"].as_str().expect("rt").to_string();
    let (s, t2) = token(
        &env,
        &[
            ("client_id", &cid),
            ("client_secret", &secret),
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt1),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert_ne!(t2["refresh_token"], t1["refresh_token"]);
    let (s, e) = token(
        &env,
        &[
            ("client_id", &cid),
            ("client_secret", &secret),
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt1),
        ],
    )
    .await;
    assert_eq!((s, e["error"].clone()), (400, json!("invalid_grant")));
    // Access tokens expire.
    let at2 = t2["access_token"].as_str().expect("at2").to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, _, _) = env
        .call_as(
            &at2,
            "GET",
            &format!("/contacts/?locationId={loc}"),
            V,
            None,
        )
        .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn agency_token_mints_location_tokens() {
    let env = Env::default().await;
    let code = authorize(&env, "&user_type=Company").await;
    let (cid, secret) = (
        env.info.oauth.client_id.clone(),
        env.info.oauth.client_secret.clone(),
    );
    let (_, t) = token(
        &env,
        &[
            ("client_id", &cid),
            ("client_secret", &secret),
            ("grant_type", "authorization_code"),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(t["userType"], "Company");
    let agency = t["access_token"].as_str().expect("at").to_string();
    let company = env.info.company_id.clone();
    let r = env
        .http
        .get(format!(
            "{}/oauth/installedLocations?companyId={company}&appId={cid}",
            env.info.base_url
        ))
        .bearer_auth(&agency)
        .header("Version", V)
        .send()
        .await
        .expect("send");
    let installed: Value = r.json().await.expect("json");
    assert_eq!(
        installed["locations"][0]["_id"],
        env.info.location_id.as_str()
    );
    let r = env
        .http
        .post(format!("{}/oauth/locationToken", env.info.base_url))
        .bearer_auth(&agency)
        .header("Version", V)
        .form(&[
            ("companyId", company.as_str()),
            ("locationId", env.info.location_id.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 201);
    let lt: Value = r.json().await.expect("json");
    let lt = lt["access_token"]
        .as_str()
        .expect("location token")
        .to_string();
    let (s, _, _) = env
        .call_as(
            &lt,
            "GET",
            &format!("/contacts/?locationId={}", env.info.location_id),
            V,
            None,
        )
        .await;
    assert_eq!(s, 200);
    // A location token cannot mint location tokens.
    let r = env
        .http
        .post(format!("{}/oauth/locationToken", env.info.base_url))
        .bearer_auth(&lt)
        .header("Version", V)
        .form(&[
            ("companyId", company.as_str()),
            ("locationId", env.info.location_id.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
}
