//! Rate limits (`[rate_limits]`): over a limit a request is answered `429 M_LIMIT_EXCEEDED` with
//! `retry_after_ms` and works again after that wait; admins are exempt; an account's failed
//! logins are limited whatever address they come from (the address from `X-Forwarded-For`, only
//! behind a trusted proxy), and so are wrong passwords in user-interactive auth, apart from them;
//! federation requests are limited per origin server.
//! Every other test runs with the limits off (`tests/common`); here each test turns them on with
//! one tight limit and the others generous.

use std::time::Duration;

use plait::config::{Rate, RateLimitSettings};
use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, ip, tls::TestCa, Client, TestServer},
    federation_misc::signed,
    media::upload,
};

/// Limits on, each generous enough not to get in a test's way, then `tweak`ed.
async fn start(tweak: impl FnOnce(&mut plait::Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.rate_limits = generous();
        tweak(config);
    })
    .await;
    server.dir = Some(dir);
    server
}

pub fn generous() -> RateLimitSettings {
    let rate = Rate {
        per_second: 1000.0,
        burst: 1000,
    };
    RateLimitSettings {
        enabled: true,
        login_address: rate,
        login_failed_attempts: rate,
        registration: rate,
        message: rate,
        joins: rate,
        invites_per_issuer: rate,
        invites_per_target: rate,
        media_create: rate,
        key_claims: rate,
        federation: rate,
    }
}

/// A limit of `burst` at once and then `per_second`.
pub fn rate(per_second: f64, burst: u32) -> Rate {
    Rate { per_second, burst }
}

/// Asserts `429 M_LIMIT_EXCEEDED` and returns `retry_after_ms`, which must be above 0.
fn assert_limited(response: &(u16, Value)) -> u64 {
    assert_error(response, 429, "M_LIMIT_EXCEEDED");
    let wait = response.1["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after_ms: {}", response.1));
    assert!(wait > 0, "{}", response.1);
    wait
}

async fn wait_ms(wait: u64) {
    tokio::time::sleep(Duration::from_millis(wait + 20)).await;
}

/// A password login of `user`, through a proxy that forwards for `forwarded` when given;
/// the status, the body and the `Retry-After` header.
async fn login(
    server: &TestServer,
    user: &str,
    password: &str,
    forwarded: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/login", server.base))
        .json(&json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        }));
    if let Some(address) = forwarded {
        request = request.header("X-Forwarded-For", address);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_over_the_address_limit_are_refused_until_retry_after_ms() {
    let server = start(|config| config.rate_limits.login_address = rate(2.0, 2)).await;
    server.register("alice").await;
    for _ in 0..2 {
        let (status, body, _) = login(&server, "alice", "password", None).await;
        assert_eq!(status, 200, "{body}");
    }
    // Right or wrong, a third attempt from the address is over the limit.
    let (status, body, retry_after) = login(&server, "alice", "password", None).await;
    let wait = assert_limited(&(status, body));
    assert!(wait <= 500, "one token every 500 ms: {wait}");
    assert_eq!(
        retry_after.as_deref(),
        Some("1"),
        "Retry-After in whole seconds"
    );
    wait_ms(wait).await;
    let (status, body, _) = login(&server, "alice", "password", None).await;
    assert_eq!(status, 200, "after retry_after_ms: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_over_the_address_limit_are_refused_until_retry_after_ms() {
    let server = start(|config| config.rate_limits.registration = rate(2.0, 2)).await;
    // Each registration takes two requests (the flows, then the dummy stage): only the one that
    // creates the account spends a token.
    server.register("first").await;
    server.register("second").await;
    let refused = server
        .client()
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "third", "password": "password"}),
        )
        .await;
    let wait = assert_limited(&refused);
    wait_ms(wait).await;
    server.register("third").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_the_user_limit_are_refused_but_not_an_admins() {
    let server = start(|config| config.rate_limits.message = rate(2.0, 3)).await;
    // The first user to register becomes a server admin, whom no limit applies to.
    server.register("first").await;
    let alice = server.register("alice").await;
    let admin = server.register("admin").await;
    let admin_id = ruma::UserId::parse(admin.user_id().await).unwrap();
    server.services.users.set_admin(&admin_id, true).unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    admin.join(&room).await;
    for index in 0..3 {
        alice
            .send_text(&room, &format!("txn{index}"), "within the burst")
            .await;
    }
    let send = |txn: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            enc(&room)
        )
    };
    let text = json!({"msgtype": "m.text", "body": "over"});
    let wait = assert_limited(&alice.put(&send("over"), text.clone()).await);
    // A retried transaction is answered again without counting.
    alice.put_ok(&send("txn0"), text.clone()).await;
    // State events and redactions count as events too.
    let topic = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room));
    assert_limited(&alice.put(&topic, json!({"topic": "over"})).await);
    // The admin is not limited.
    for index in 0..10 {
        admin
            .send_text(&room, &format!("admin{index}"), "admins are exempt")
            .await;
    }
    wait_ms(wait).await;
    alice.put_ok(&send("over"), text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_to_one_account_are_limited_from_every_address() {
    let server = start(|config| {
        config.trusted_proxies = vec!["127.0.0.1".to_owned()];
        let limits = &mut config.rate_limits;
        // One login per address: each attempt below comes from another forwarded address.
        limits.login_address = rate(0.01, 1);
        limits.login_failed_attempts = rate(0.01, 3);
    })
    .await;
    server.register("alice").await;
    server.register("bob").await;
    for address in ["198.51.100.1", "198.51.100.2", "2001:db8:1::1"] {
        let (status, body, _) = login(&server, "alice", "wrong", Some(address)).await;
        assert_error(&(status, body), 403, "M_FORBIDDEN");
    }
    // The account is out of failed attempts: even the right password from a new address waits.
    let (status, body, _) = login(&server, "alice", "password", Some("198.51.100.4")).await;
    assert_limited(&(status, body));
    // Another account is not.
    let (status, body, _) = login(&server, "bob", "wrong", Some("198.51.100.5")).await;
    assert_error(&(status, body), 403, "M_FORBIDDEN");
    let (status, body, _) = login(&server, "bob", "password", Some("198.51.100.6")).await;
    assert_eq!(status, 200, "{body}");
    // The forwarded address is the one the address limit counts.
    let (status, body, _) = login(&server, "bob", "password", Some("198.51.100.6")).await;
    assert_limited(&(status, body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_in_user_interactive_auth_are_limited_apart_from_logins() {
    let server = start(|config| config.rate_limits.login_failed_attempts = rate(0.01, 2)).await;
    let alice = server.register("alice").await;
    let change = |password: &str| {
        json!({"new_password": "new", "logout_devices": false, "auth": {
            "type": "m.login.password", "user": "alice", "password": password,
        }})
    };
    let path = "/_matrix/client/v3/account/password";
    for _ in 0..2 {
        let wrong = alice.post(path, change("wrong")).await;
        assert_error(&wrong, 401, "M_FORBIDDEN");
    }
    // Out of wrong guesses: even the right password waits.
    assert_limited(&alice.post(path, change("password")).await);
    // Someone holding a stolen token cannot lock the owner out of logging in.
    let (status, body, _) = login(&server, "alice", "password", None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_ignored_unless_the_peer_is_a_trusted_proxy() {
    let server = start(|config| config.rate_limits.login_address = rate(0.01, 1)).await;
    server.register("alice").await;
    let (status, body, _) = login(&server, "alice", "password", Some("198.51.100.1")).await;
    assert_eq!(status, 200, "{body}");
    // Without trusted_proxies the header is the client's own say: the peer is what counts.
    let (status, body, _) = login(&server, "alice", "password", Some("198.51.100.2")).await;
    assert_limited(&(status, body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_invites_uploads_and_key_claims_have_limits_of_their_own() {
    let server = start(|config| {
        let limits = &mut config.rate_limits;
        limits.joins = rate(0.01, 1);
        limits.invites_per_issuer = rate(0.01, 1);
        limits.invites_per_target = rate(0.01, 1);
        limits.media_create = rate(0.01, 1);
        limits.key_claims = rate(0.01, 1);
    })
    .await;
    // The first user to register becomes a server admin, whom no limit applies to.
    server.register("first").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let public = json!({"preset": "public_chat"});
    let (first, second) = (
        alice.create_room(public.clone()).await,
        alice.create_room(public.clone()).await,
    );
    bob.join(&first).await;
    let join = |room: &str| format!("/_matrix/client/v3/rooms/{}/join", enc(room));
    assert_limited(&bob.post(&join(&second), json!({})).await);
    let invite = |room: &str| format!("/_matrix/client/v3/rooms/{}/invite", enc(room));
    let carol_id = carol.user_id().await;
    alice
        .post_ok(&invite(&first), json!({"user_id": carol_id}))
        .await;
    // Alice is out of invites; Dave has his own, but Carol has received all hers.
    let dave_id = dave.user_id().await;
    assert_limited(
        &alice
            .post(&invite(&second), json!({"user_id": dave_id}))
            .await,
    );
    let third = dave.create_room(public).await;
    assert_limited(
        &dave
            .post(&invite(&third), json!({"user_id": carol_id}))
            .await,
    );
    let (status, body) = upload(&alice, b"one".to_vec(), "text/plain", None).await;
    assert_eq!(status, 200, "{body}");
    assert_limited(&upload(&alice, b"two".to_vec(), "text/plain", None).await);
    let claim = json!({"one_time_keys": {}});
    alice
        .post_ok("/_matrix/client/v3/keys/claim", claim.clone())
        .await;
    assert_limited(&alice.post("/_matrix/client/v3/keys/claim", claim).await);
    // Bob's uploads are his own.
    let (status, body) = upload(&bob, b"three".to_vec(), "text/plain", None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federation_requests_over_an_origins_limit_are_refused_until_retry_after_ms() {
    let ca = TestCa::new();
    let hs1 = TestServer::start_federated(ip("127.0.0.2"), &ca, None).await;
    let hs3 = TestServer::start_federated(ip("127.0.0.4"), &ca, None).await;
    let hs2 = TestServer::start_federated_with(ip("127.0.0.3"), &ca, None, |config| {
        config.rate_limits = RateLimitSettings {
            federation: rate(2.0, 3),
            ..generous()
        };
    })
    .await;
    let alice: Client = hs2.register("alice").await;
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice.user_id().await)
    );
    let ask = |from| signed(&ca, from, &hs2, http::Method::GET, &path, None);
    for _ in 0..3 {
        let (status, body) = ask(&hs1).await;
        assert_eq!(status, 200, "{body}");
    }
    let wait = assert_limited(&ask(&hs1).await);
    // Another origin has its own bucket.
    let (status, body) = ask(&hs3).await;
    assert_eq!(status, 200, "{body}");
    wait_ms(wait).await;
    let (status, body) = ask(&hs1).await;
    assert_eq!(status, 200, "after retry_after_ms: {body}");
}
