//! The OAuth 2.0 API driven over HTTP as a client and its browser would: metadata, client
//! registration, the sign-up and login forms, the code exchange with PKCE, refresh and
//! revocation, and what is refused.

use std::collections::HashMap;

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{Client, TestServer};

const REDIRECT: &str = "https://app.example.org/callback";

/// A browser that does not follow redirects (they lead off loopback).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `pairs` form-encoded.
fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        .finish()
}

/// A form POST.
async fn post_form<K: AsRef<str>, V: AsRef<str>>(
    http: &reqwest::Client,
    url: String,
    pairs: &[(K, V)],
) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(pairs))
        .send()
        .await
        .unwrap()
}

fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

struct App {
    base: String,
    client_id: String,
    http: reqwest::Client,
}

impl App {
    async fn register(server: &TestServer) -> Self {
        let base = server.client().base;
        let metadata = server
            .client()
            .get_ok("/_matrix/client/v1/auth_metadata")
            .await;
        assert_eq!(
            metadata["registration_endpoint"],
            format!("{base}/_plait/oauth/register")
        );
        assert_eq!(
            metadata["code_challenge_methods_supported"],
            json!(["S256"])
        );
        let http = browser();
        let answer = http
            .post(format!("{base}/_plait/oauth/register"))
            .json(&json!({
                "client_name": "Test app",
                "client_uri": "https://app.example.org",
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "application_type": "web",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        let body: Value = answer.json().await.unwrap();
        Self {
            client_id: body["client_id"].as_str().unwrap().to_owned(),
            base,
            http,
        }
    }

    /// The authorization request's parameters for `device` with `verifier`.
    fn params(&self, device: &str, verifier: &str, prompt: Option<&str>) -> Vec<(String, String)> {
        let mut params = vec![
            ("client_id", self.client_id.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("response_type", "code".to_owned()),
            ("response_mode", "query".to_owned()),
            (
                "scope",
                format!("urn:matrix:client:api:* urn:matrix:client:device:{device}"),
            ),
            ("state", "state-123".to_owned()),
            ("code_challenge", challenge(verifier)),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if let Some(prompt) = prompt {
            params.push(("prompt", prompt.to_owned()));
        }
        params
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    async fn page(&self, params: &[(String, String)]) -> (u16, String) {
        let answer = self
            .http
            .get(format!(
                "{}/_plait/oauth/authorize?{}",
                self.base,
                encode(params)
            ))
            .send()
            .await
            .unwrap();
        location_or_page(answer).await
    }

    /// Submits the form; returns the status and the redirect location or page.
    async fn submit(&self, params: &[(String, String)], fields: &[(&str, &str)]) -> (u16, String) {
        let mut form: Vec<(String, String)> = params.to_vec();
        form.extend(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let answer = post_form(
            &self.http,
            format!("{}/_plait/oauth/authorize", self.base),
            &form,
        )
        .await;
        location_or_page(answer).await
    }

    /// Submits the login form as alice with `password`.
    async fn alice_logs_in(&self, params: &[(String, String)], password: &str) -> (u16, String) {
        let fields = [
            ("action", "login"),
            ("username", "alice"),
            ("password", password),
        ];
        self.submit(params, &fields).await
    }

    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let answer = post_form(
            &self.http,
            format!("{}/_plait/oauth/token", self.base),
            form,
        )
        .await;
        (answer.status().as_u16(), answer.json().await.unwrap())
    }

    async fn exchange(&self, code: &str, verifier: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", &self.client_id),
            ("code_verifier", verifier),
        ])
        .await
    }

    fn client(&self, token: &str) -> Client {
        Client {
            base: self.base.clone(),
            token: Some(token.to_owned()),
            http: reqwest::Client::new(),
        }
    }
}

/// The status, and the redirect location or else the page.
async fn location_or_page(answer: reqwest::Response) -> (u16, String) {
    let status = answer.status().as_u16();
    match answer.headers().get("location") {
        Some(location) => (status, location.to_str().unwrap().to_owned()),
        None => (status, answer.text().await.unwrap()),
    }
}

/// The query of a redirect location to the app.
fn redirect_query(location: &str) -> HashMap<String, String> {
    let rest = location
        .strip_prefix(&format!("{REDIRECT}?"))
        .unwrap_or_else(|| panic!("not a redirect to the app: {location}"));
    url::form_urlencoded::parse(rest.as_bytes())
        .into_owned()
        .collect()
}

const VERIFIER: &str = "verifier-0123456789-0123456789-0123456789-abcdef";

#[tokio::test]
async fn sign_up_then_tokens_refresh_and_revocation() {
    let server = TestServer::start().await;
    let app = App::register(&server).await;
    let params = app.params("PHONEDEVICE1", VERIFIER, Some("create"));
    let (status, page) = app.page(&params).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Create an account") && page.contains("Test app"),
        "{page}"
    );
    assert!(page.contains("name=\"action\" value=\"create\""));

    let (status, location) = app
        .submit(
            &params,
            &[
                ("action", "create"),
                ("username", "newbie"),
                ("password", "hunter22"),
            ],
        )
        .await;
    assert_eq!(status, 303, "{location}");
    let query = redirect_query(&location);
    assert_eq!(query["state"], "state-123");
    let code = &query["code"];

    let (status, tokens) = app.exchange(code, VERIFIER).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    let access = tokens["access_token"].as_str().unwrap();
    let whoami = app
        .client(access)
        .get_ok("/_matrix/client/v3/account/whoami")
        .await;
    assert_eq!(whoami["user_id"], "@newbie:localhost");
    assert_eq!(whoami["device_id"], "PHONEDEVICE1");
    let devices = app
        .client(access)
        .get_ok("/_matrix/client/v3/devices")
        .await;
    assert_eq!(devices["devices"][0]["display_name"], "Test app");
    // The same password logs in through /login too: one kind of account.
    let login = server
        .client()
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "newbie"}, "password": "hunter22"}),
        )
        .await;
    assert!(login["access_token"].is_string());

    // A code is good once.
    let (status, reused) = app.exchange(code, VERIFIER).await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, refreshed) = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &app.client_id),
        ])
        .await;
    assert_eq!(status, 200, "{refreshed}");
    let new_access = refreshed["access_token"].as_str().unwrap();
    app.client(new_access)
        .get_ok("/_matrix/client/v3/account/whoami")
        .await;

    // Revoking the refresh token ends the session.
    let new_refresh = refreshed["refresh_token"].as_str().unwrap();
    let revoked = post_form(
        &app.http,
        format!("{}/_plait/oauth/revoke", app.base),
        &[
            ("token", new_refresh),
            ("client_id", app.client_id.as_str()),
        ],
    )
    .await;
    assert_eq!(revoked.status(), 200);
    let (status, _) = app
        .client(new_access)
        .get("/_matrix/client/v3/account/whoami")
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", new_refresh),
        ])
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn refused_requests_create_nothing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let app = App::register(&server).await;
    let params = app.params("LAPTOPDEVICE", VERIFIER, None);
    let (status, page) = app.page(&params).await;
    assert_eq!(status, 200);
    assert!(page.contains("Sign in"));

    // A wrong password shows the form again, and issues nothing.
    let (status, page) = app.alice_logs_in(&params, "wrong").await;
    assert_eq!(status, 403);
    assert!(page.contains("invalid username or password"), "{page}");

    // A right password, then a wrong verifier: refused, and the code is spent.
    let (status, location) = app.alice_logs_in(&params, "password").await;
    assert_eq!(status, 303);
    let code = redirect_query(&location)["code"].clone();
    let wrong = "another-verifier-0123456789-0123456789-0123456789";
    let (status, refused) = app.exchange(&code, wrong).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = app.exchange(&code, VERIFIER).await;
    assert_eq!(status, 400, "a refused code is spent");
    let devices = alice.get_ok("/_matrix/client/v3/devices").await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");

    // A redirect URI the client did not register: shown, never redirected to.
    let mut foreign = params.clone();
    foreign[1].1 = "https://evil.example.com/steal".to_owned();
    let (status, page) = app.page(&foreign).await;
    assert_eq!(status, 400);
    assert!(page.contains("redirect URI"), "{page}");
    let (status, page) = app.alice_logs_in(&foreign, "password").await;
    assert_eq!(status, 400, "{page}");
    // An unknown client, a plain challenge, a scope without the API: errors.
    let mut unknown = params.clone();
    unknown[0].1 = "nobody".to_owned();
    assert_eq!(app.page(&unknown).await.0, 400);
    let mut plain = params.clone();
    plain[7].1 = "plain".to_owned();
    let (status, location) = app.page(&plain).await;
    assert_eq!(status, 303);
    assert_eq!(redirect_query(&location)["error"], "invalid_request");
    let mut scope = params.clone();
    scope[4].1 = "openid".to_owned();
    let (_, location) = app.page(&scope).await;
    assert_eq!(redirect_query(&location)["error"], "invalid_scope");

    // A sign-up under a taken name.
    let (status, page) = app
        .submit(
            &params,
            &[
                ("action", "create"),
                ("username", "alice"),
                ("password", "x"),
            ],
        )
        .await;
    assert_eq!(status, 400, "{page}");

    // Clients that register redirects to another host, or no https client_uri, are refused.
    for metadata in [
        json!({ "client_uri": "https://app.example.org", "redirect_uris": ["https://evil.example.com/cb"] }),
        json!({ "client_uri": "http://app.example.org", "redirect_uris": ["http://app.example.org/cb"] }),
        json!({ "client_uri": "https://app.example.org", "redirect_uris": [] }),
        json!({ "client_uri": "https://app.example.org", "redirect_uris": ["com.evil:/cb"], "application_type": "native" }),
    ] {
        let answer = app
            .http
            .post(format!("{}/_plait/oauth/register", app.base))
            .json(&metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{metadata}");
    }
    let (status, body) = app.token(&[("grant_type", "password")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
}

#[tokio::test]
async fn expired_access_tokens_are_refused_until_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |config| {
        config.refreshable_token_lifetime_ms = 1_000;
    })
    .await;
    server.register("alice").await;
    let app = App::register(&server).await;
    let params = app.params("SHORTLIVED01", VERIFIER, None);
    let (_, location) = app.alice_logs_in(&params, "password").await;
    let code = redirect_query(&location)["code"].clone();
    let (_, tokens) = app.exchange(&code, VERIFIER).await;
    assert_eq!(tokens["expires_in"], 1);
    let access = tokens["access_token"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let (status, body) = app
        .client(access)
        .get("/_matrix/client/v3/account/whoami")
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN"))
    );
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, refreshed) = app
        .token(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .await;
    assert_eq!(status, 200);
    app.client(refreshed["access_token"].as_str().unwrap())
        .get_ok("/_matrix/client/v3/account/whoami")
        .await;
}

/// matrix-rust-sdk's own OAuth login (what Element X runs): discovery, dynamic registration of a
/// native client with a loopback redirect, the page submitted as a browser would, and
/// `finish_login` with the redirect it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sdk_logs_in_through_the_oauth_api() {
    use matrix_sdk::{
        authentication::oauth::{
            registration::{ApplicationType, ClientMetadata, Localized, OAuthGrantType},
            ClientRegistrationData,
        },
        ruma::serde::Raw,
        Client as SdkClient,
    };

    let server = TestServer::start().await;
    server.register("alice").await;
    let client = SdkClient::builder()
        .homeserver_url(&server.client().base)
        .build()
        .await
        .unwrap();
    let oauth = client.oauth();
    let metadata = oauth.server_metadata().await.unwrap();
    assert!(metadata.registration_endpoint.is_some());
    let redirect = url::Url::parse("http://127.0.0.1:9/callback").unwrap();
    let client_uri = url::Url::parse("https://app.example.org").unwrap();
    let mut app = ClientMetadata::new(
        ApplicationType::Native,
        vec![OAuthGrantType::AuthorizationCode {
            redirect_uris: vec![redirect.clone()],
        }],
        Localized::new(client_uri, []),
    );
    app.client_name = Some(Localized::new("SDK test".to_owned(), []));
    let registration = ClientRegistrationData::new(Raw::new(&app).unwrap());
    let auth = oauth
        .login(redirect, None, Some(registration), None)
        .build()
        .await
        .unwrap();

    // The browser: the page, then the form with the request's parameters.
    let http = browser();
    let page = http.get(auth.url.clone()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let mut form: Vec<(String, String)> = auth.url.query_pairs().into_owned().collect();
    for (name, value) in [
        ("action", "login"),
        ("username", "alice"),
        ("password", "password"),
    ] {
        form.push((name.to_owned(), value.to_owned()));
    }
    let answer = post_form(
        &http,
        format!("{}/_plait/oauth/authorize", server.client().base),
        &form,
    )
    .await;
    assert_eq!(answer.status(), 303);
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("http://127.0.0.1:9/callback?"),
        "{location}"
    );

    oauth
        .finish_login(url::Url::parse(&location).unwrap().into())
        .await
        .unwrap();
    let whoami = client.whoami().await.unwrap();
    assert_eq!(whoami.user_id.as_str(), "@alice:localhost");
    assert!(oauth.full_session().is_some_and(|session| session
        .user
        .tokens
        .refresh_token
        .is_some()));
    oauth.refresh_access_token().await.unwrap();
    assert_eq!(
        client.whoami().await.unwrap().user_id.as_str(),
        "@alice:localhost"
    );
}
