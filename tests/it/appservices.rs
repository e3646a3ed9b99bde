//! Application services: registration files (good and bad), the admin room's `appservices`
//! commands, `as_token` authentication with masquerading, exclusive namespaces, the ping, and
//! transactions delivered to a fake appservice served by the test (failing or hanging
//! appservices, and a Plait killed while its appservice is down).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU16, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{Path as UrlPath, State},
    http::{HeaderMap, StatusCode},
    routing::{post, put},
    Router,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

/// What a fake appservice received and how it answers.
#[derive(Default)]
pub struct FakeAppservice {
    /// Transactions in arrival order: (txn ID, `Authorization` header, body).
    pub transactions: Mutex<Vec<(String, String, Value)>>,
    pub pings: Mutex<Vec<Value>>,
    /// User and alias queries, as `users/{id}` or `rooms/{alias}` (answered 404).
    pub queries: Mutex<Vec<String>>,
    /// The status it answers transactions with (200 unless set).
    pub status: AtomicU16,
    /// Whether it never answers transactions.
    pub hang: AtomicBool,
}

impl FakeAppservice {
    /// Serves on `listener` until the test ends.
    pub fn serve(listener: tokio::net::TcpListener) -> Arc<Self> {
        let state = Arc::new(Self::default());
        state.status.store(200, Ordering::SeqCst);
        let app = Router::new()
            .route(
                "/_matrix/app/v1/transactions/{txn}",
                put(
                    |State(state): State<Arc<Self>>,
                     UrlPath(txn): UrlPath<String>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                        if state.hang.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let status = state.status.load(Ordering::SeqCst);
                        if status == 200 {
                            let auth = headers
                                .get("authorization")
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            state.transactions.lock().push((txn, auth, body));
                        }
                        (StatusCode::from_u16(status).unwrap(), "{}")
                    },
                ),
            )
            .route(
                "/_matrix/app/v1/ping",
                post(
                    |State(state): State<Arc<Self>>, body: axum::body::Bytes| async move {
                        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                        state.pings.lock().push(body);
                        "{}"
                    },
                ),
            )
            .route(
                "/_matrix/app/v1/{kind}/{id}",
                axum::routing::get(
                    |State(state): State<Arc<Self>>,
                     UrlPath((kind, id)): UrlPath<(String, String)>| async move {
                        state.queries.lock().push(format!("{kind}/{id}"));
                        (StatusCode::NOT_FOUND, "{}")
                    },
                ),
            )
            .with_state(Arc::clone(&state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        state
    }

    /// Every event received, with transactions whose ID came twice counted once (as an
    /// appservice must, spec "Pushing events").
    pub fn events(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.transactions
            .lock()
            .iter()
            .filter(|(txn, _, _)| seen.insert(txn.clone()))
            .flat_map(|(_, _, body)| body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The bodies of the transactions received, each transaction ID once, in order.
    pub fn bodies(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.transactions
            .lock()
            .iter()
            .filter(|(txn, _, _)| seen.insert(txn.clone()))
            .map(|(_, _, body)| body.clone())
            .collect()
    }

    /// Every item of the transactions' `field` arrays, in order.
    pub fn items(&self, field: &str) -> Vec<Value> {
        self.bodies()
            .iter()
            .flat_map(|body| body[field].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The bodies of the `m.room.message` events received, in order.
    pub fn texts(&self) -> Vec<String> {
        self.texts_in(None)
    }

    /// The bodies of the `m.room.message` events received in `room` (any room if `None`).
    pub fn texts_in(&self, room: Option<&str>) -> Vec<String> {
        self.events()
            .iter()
            .filter(|event| event["type"] == "m.room.message")
            .filter(|event| room.is_none_or(|room| event["room_id"] == room))
            .map(|event| event["content"]["body"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Waits until `done` holds, up to 20 s.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..400 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}: {:?}", self.texts());
    }
}

/// A registration whose users are `@{prefix}_*` (exclusive) and aliases `#{prefix}_*`.
pub fn registration(id: &str, prefix: &str, url: &str) -> String {
    format!(
        "id: {id}\nurl: {url}\nas_token: as-{id}\nhs_token: hs-{id}\nsender_localpart: {id}bot\n\
         rate_limited: false\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '^@{prefix}_.*'\n\
         \x20 aliases:\n    - exclusive: true\n      regex: '^#{prefix}_.*'\n"
    )
}

/// A server reading the registrations written into a fresh folder.
pub async fn server_with(files: &[(&str, String)]) -> (TestServer, tempfile::TempDir) {
    let folder = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(folder.path().join(name), text).unwrap();
    }
    let path = folder.path().to_owned();
    let database = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(database.path(), |config| {
        config.appservice_dir = Some(path);
    })
    .await;
    server.dir = Some(database);
    (server, folder)
}

/// A fake appservice on a fresh loopback port, and its URL.
pub async fn fake_appservice() -> (Arc<FakeAppservice>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (FakeAppservice::serve(listener), url)
}

/// A client with `token` that masquerades as `user_id` when given.
pub fn as_client(server: &TestServer, token: &str) -> Client {
    Client {
        token: Some(token.to_owned()),
        ..server.client()
    }
}

/// Registers `localpart` with the appservice's token, without user-interactive auth.
pub async fn register_ghost(client: &Client, localpart: &str) -> (u16, Value) {
    client
        .post(
            "/_matrix/client/v3/register",
            json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true}),
        )
        .await
}

#[tokio::test]
async fn an_appservice_registers_ghosts_masquerades_and_receives_room_events() {
    let (fake, url) = fake_appservice().await;
    let (server, _folder) =
        server_with(&[("bridge.yaml", registration("bridge", "br", &url))]).await;
    let name = server.server_name();
    let bridge = as_client(&server, "as-bridge");

    // Registration without user-interactive auth, inside the namespace only.
    let (status, body) = register_ghost(&bridge, "br_alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], format!("@br_alice:{name}"));
    assert_error(
        &register_ghost(&bridge, "outsider").await,
        400,
        "M_EXCLUSIVE",
    );
    assert_error(
        &register_ghost(&bridge, "br_alice").await,
        400,
        "M_USER_IN_USE",
    );

    // Nobody else may take a name of the exclusive namespace.
    let (status, body) = server
        .client()
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "br_bob", "password": "password"}),
        )
        .await;
    assert_error(&(status, body), 400, "M_EXCLUSIVE");
    let alice = server.register("alice").await;
    let alice_id = alice.user_id().await;

    // whoami: the sender by default, a ghost with user_id; no device unless one is named.
    let whoami = bridge.get_ok("/_matrix/client/v3/account/whoami").await;
    assert_eq!(whoami["user_id"], format!("@bridgebot:{name}"));
    assert!(whoami.get("device_id").is_none(), "{whoami}");
    let ghost = format!("@br_alice:{name}");
    let as_ghost = |path: &str| {
        let separator = if path.contains('?') { '&' } else { '?' };
        format!("{path}{separator}user_id={}", enc(&ghost))
    };
    let whoami = bridge
        .get_ok(&as_ghost("/_matrix/client/v3/account/whoami"))
        .await;
    assert_eq!(whoami["user_id"], ghost);
    // Outside the namespace, or a wrong token.
    let outside = format!(
        "/_matrix/client/v3/account/whoami?user_id={}",
        enc(&alice_id)
    );
    assert_error(&bridge.get(&outside).await, 403, "M_FORBIDDEN");
    let wrong = as_client(&server, "as-wrong");
    assert_error(
        &wrong.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    // An appservice's hs_token is not an access token.
    let hs = as_client(&server, "hs-bridge");
    assert_error(
        &hs.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_UNKNOWN_TOKEN",
    );

    // The ghost makes a portal room and invites alice; alice answers; the appservice gets it.
    let room = bridge
        .post_ok(
            &as_ghost("/_matrix/client/v3/createRoom"),
            json!({"invite": [alice_id]}),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.join(&room).await;
    alice.send_text(&room, "t1", "hello bridge").await;
    fake.wait_for("alice's message", |fake| {
        fake.texts().contains(&"hello bridge".to_owned())
    })
    .await;
    let (_, auth, _) = fake.transactions.lock()[0].clone();
    assert_eq!(auth, "Bearer hs-bridge");
    let events = fake.events();
    let message = events
        .iter()
        .find(|event| event["content"]["body"] == "hello bridge")
        .unwrap();
    assert_eq!(message["room_id"], room);
    assert_eq!(message["sender"], alice_id);

    // Aliases of the exclusive namespace: the appservice's only.
    let alias = format!("#br_portal:{name}");
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
    assert_error(
        &alice.put(&path, json!({"room_id": room})).await,
        400,
        "M_EXCLUSIVE",
    );
    bridge
        .put_ok(&as_ghost(&path), json!({"room_id": room}))
        .await;

    // `?ts=` sets the timestamp of an appservice's events, and only theirs.
    let path = as_ghost(&format!(
        "/_matrix/client/v3/rooms/{room}/send/m.room.message/ts1?ts=1234"
    ));
    let sent = bridge
        .put_ok(&path, json!({"msgtype": "m.text", "body": "old"}))
        .await;
    let event_path = format!(
        "/_matrix/client/v3/rooms/{room}/event/{}",
        sent["event_id"].as_str().unwrap()
    );
    assert_eq!(alice.get_ok(&event_path).await["origin_server_ts"], 1234);
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/ts2?ts=1234");
    let sent = alice
        .put_ok(&path, json!({"msgtype": "m.text", "body": "now"}))
        .await;
    let event_path = format!(
        "/_matrix/client/v3/rooms/{room}/event/{}",
        sent["event_id"].as_str().unwrap()
    );
    assert!(
        alice.get_ok(&event_path).await["origin_server_ts"]
            .as_u64()
            .unwrap()
            > 1234
    );

    // Unknown users and aliases of its namespaces are asked of the appservice first.
    let missing_alias = format!("#br_missing:{name}");
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(&missing_alias));
    assert_error(&alice.get(&path).await, 404, "M_NOT_FOUND");
    let missing_user = format!("@br_missing:{name}");
    let path = format!("/_matrix/client/v3/profile/{}", enc(&missing_user));
    assert_error(&alice.get(&path).await, 404, "M_NOT_FOUND");
    assert_eq!(
        *fake.queries.lock(),
        vec![
            format!("rooms/{missing_alias}"),
            format!("users/{missing_user}")
        ]
    );

    // The appservice's room directory.
    let path = format!("/_matrix/client/v3/directory/list/appservice/net/{room}");
    bridge.put_ok(&path, json!({"visibility": "public"})).await;
    let path = format!("/_matrix/client/v3/directory/list/room/{room}");
    assert_eq!(alice.get_ok(&path).await["visibility"], "public");

    // The ping reaches the appservice; only the appservice itself may ping it.
    let ping = bridge
        .post_ok(
            "/_matrix/client/v1/appservice/bridge/ping",
            json!({"transaction_id": "ping-1"}),
        )
        .await;
    assert!(ping["duration_ms"].is_u64(), "{ping}");
    assert_eq!(fake.pings.lock()[0]["transaction_id"], "ping-1");
    assert_error(
        &bridge
            .post("/_matrix/client/v1/appservice/other/ping", json!({}))
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice
            .post("/_matrix/client/v1/appservice/bridge/ping", json!({}))
            .await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn appservice_users_log_in_and_are_exempt_from_rate_limits() {
    let (_fake, url) = fake_appservice().await;
    let (server, _folder) =
        server_with(&[("bridge.yaml", registration("bridge", "br", &url))]).await;
    let bridge = as_client(&server, "as-bridge");
    assert_eq!(register_ghost(&bridge, "br_carol").await.0, 200);
    let login = json!({
        "type": "m.login.application_service",
        "identifier": {"type": "m.id.user", "user": "br_carol"},
    });
    let session = bridge.post_ok("/_matrix/client/v3/login", login).await;
    let device = session["device_id"].as_str().unwrap().to_owned();
    // The device may be named when masquerading (MSC3202), and whoami shows it.
    let path = format!(
        "/_matrix/client/v3/account/whoami?user_id={}&device_id={device}",
        enc(session["user_id"].as_str().unwrap())
    );
    assert_eq!(bridge.get_ok(&path).await["device_id"], device);
    // A device the user does not have: 400 M_UNKNOWN_DEVICE (MSC4326).
    let unknown = path.replace(&format!("device_id={device}"), "device_id=NOSUCHDEVICE");
    assert_error(&bridge.get(&unknown).await, 400, "M_UNKNOWN_DEVICE");
    // Without the appservice's token, the login type is refused.
    let (status, body) = server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service", "user": "br_carol"}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    // MSC4190: the appservice creates and deletes its users' devices without UIA.
    let carol_id = session["user_id"].as_str().unwrap().to_owned();
    let device_path = |device: &str| {
        format!(
            "/_matrix/client/v3/devices/{device}?user_id={}",
            enc(&carol_id)
        )
    };
    bridge
        .put_ok(&device_path("BRIDGEDEV"), json!({"display_name": "bridge"}))
        .await;
    assert_eq!(
        bridge.get_ok(&device_path("BRIDGEDEV")).await["display_name"],
        "bridge"
    );
    let (status, body) = bridge.delete(&device_path("BRIDGEDEV"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_error(
        &bridge.get(&device_path("BRIDGEDEV")).await,
        404,
        "M_NOT_FOUND",
    );
    let rate = &server.services.appservices;
    let carol = ruma::OwnedUserId::try_from(session["user_id"].as_str().unwrap()).unwrap();
    assert!(rate.is_exempt_from_rate_limits(&carol));
}

#[tokio::test]
async fn bad_registration_files_are_left_out_and_the_others_served() {
    let good = registration("good", "gd", "http://127.0.0.1:9");
    let bad_regex =
        registration("regex", "rx", "http://127.0.0.1:9").replace("'^@rx_.*'", "'^@rx_(['");
    let duplicate = registration("good", "dp", "http://127.0.0.1:9").replace("as-good", "as-dup");
    let (server, _folder) = server_with(&[
        ("a-good.yaml", good),
        ("b-regex.yaml", bad_regex),
        ("c-duplicate.yml", duplicate),
        ("d-not-yaml.yaml", "id: [".to_owned()),
        ("ignored.txt", "not a registration".to_owned()),
    ])
    .await;
    let registry = server.services.appservices.registry();
    assert_eq!(registry.appservices.len(), 1);
    let problems = registry.problems.join("\n");
    for (file, reason) in [
        ("b-regex.yaml", "regex"),
        ("c-duplicate.yml", "duplicate id good"),
        ("d-not-yaml.yaml", "YAML"),
    ] {
        assert!(
            problems
                .lines()
                .any(|line| line.contains(file) && line.contains(reason)),
            "{file}: {problems}"
        );
    }
    assert_eq!(registry.problems.len(), 3, "{problems}");
    let whoami = as_client(&server, "as-good")
        .get_ok("/_matrix/client/v3/account/whoami")
        .await;
    assert!(whoami["user_id"].as_str().unwrap().starts_with("@goodbot:"));
    for token in ["as-regex", "as-dup"] {
        assert_error(
            &as_client(&server, token)
                .get("/_matrix/client/v3/account/whoami")
                .await,
            401,
            "M_UNKNOWN_TOKEN",
        );
    }
}

#[tokio::test]
async fn admin_room_registrations_survive_a_restart_and_can_be_removed() {
    let (fake, url) = fake_appservice().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let yaml = registration("chat", "ch", &url);
    let run = |line: String| {
        let services = Arc::clone(&server.services);
        async move { plait::service::admin::run_command(&services, &line).await }
    };
    let reply = run(format!("!admin appservices register\n```yaml\n{yaml}```")).await;
    assert!(
        reply.text.starts_with("registered appservice chat"),
        "{}",
        reply.text
    );
    let again = run(format!(
        "!admin appservices register\n```\n{}```",
        yaml.replace("id: chat", "id: other")
    ))
    .await;
    assert!(
        again.text.contains("as_token already used"),
        "{}",
        again.text
    );
    let list = run("!admin appservices list".to_owned()).await;
    assert!(list.text.contains("chat\t@chatbot:"), "{}", list.text);
    drop(server.stop().await);

    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let chat = as_client(&server, "as-chat");
    assert_eq!(register_ghost(&chat, "ch_dave").await.0, 200);
    let dave = format!("@ch_dave:{}", server.server_name());
    let room = chat
        .post_ok(
            &format!("/_matrix/client/v3/createRoom?user_id={}", enc(&dave)),
            json!({}),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.wait_for("the room's creation", |fake| {
        fake.events().iter().any(|event| event["room_id"] == room)
    })
    .await;
    let services = Arc::clone(&server.services);
    let reply =
        plait::service::admin::run_command(&services, "!admin appservices unregister chat").await;
    assert_eq!(reply.text, "unregistered appservice chat");
    assert_error(
        &chat.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_UNKNOWN_TOKEN",
    );
}

#[tokio::test]
async fn an_appservice_that_fails_or_hangs_does_not_hold_up_another() {
    let (failing, failing_url) = fake_appservice().await;
    let (hanging, hanging_url) = fake_appservice().await;
    let (healthy, healthy_url) = fake_appservice().await;
    failing.status.store(500, Ordering::SeqCst);
    hanging.hang.store(true, Ordering::SeqCst);
    // All three are interested in every room: their namespaces take every room ID.
    let every_room =
        |yaml: String| format!("{yaml}  rooms:\n    - exclusive: false\n      regex: '.*'\n");
    let (server, _folder) = server_with(&[
        (
            "failing.yaml",
            every_room(registration("failing", "fa", &failing_url)),
        ),
        (
            "hanging.yaml",
            every_room(registration("hanging", "ha", &hanging_url)),
        ),
        (
            "healthy.yaml",
            every_room(registration("healthy", "he", &healthy_url)),
        ),
    ])
    .await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for index in 0..5 {
        alice
            .send_text(&room, &format!("t{index}"), &format!("m{index}"))
            .await;
    }
    let expected: Vec<String> = (0..5).map(|index| format!("m{index}")).collect();
    let in_room = Some(room.as_str());
    healthy
        .wait_for("every message", |fake| fake.texts_in(in_room) == expected)
        .await;
    assert!(failing.texts().is_empty());
    assert!(hanging.texts().is_empty());
    // The failing one recovers and gets everything, in order, once.
    failing.status.store(200, Ordering::SeqCst);
    failing
        .wait_for("every message after recovering", |fake| {
            fake.texts_in(in_room) == expected
        })
        .await;
}

/// The appservice's queue is written with the event, so neither its being down nor Plait being
/// killed (SIGKILL) loses or repeats one.
#[tokio::test]
async fn events_queued_while_the_appservice_is_down_arrive_once_in_order_after_a_kill() {
    use crate::common::{plait_process::PlaitProcess, tls::TestCa};
    let ca = TestCa::new();
    let ip = crate::common::ip("127.0.0.1");
    let mut plait = PlaitProcess::start(ip, &ca).await;
    // A port with nothing behind it yet: the appservice is down.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = reserved.local_addr().unwrap();
    drop(reserved);
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("bridge.yaml"),
        registration("bridge", "br", &format!("http://{address}")),
    )
    .unwrap();
    plait.kill();
    plait.add_env("PLAIT_APPSERVICE_DIR", &folder.path().display().to_string());
    plait.restart().await;

    let bridge = plait.client(Some("as-bridge"));
    assert_eq!(register_ghost(&bridge, "br_erin").await.0, 200);
    let erin = format!("@br_erin:{}", plait.server_name());
    let as_erin = |path: &str| format!("{path}?user_id={}", enc(&erin));
    let room = bridge
        .post_ok(&as_erin("/_matrix/client/v3/createRoom"), json!({}))
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let send = |index: usize| {
        let bridge = bridge.clone();
        let path = as_erin(&format!(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/t{index}"
        ));
        async move {
            bridge
                .put_ok(
                    &path,
                    json!({"msgtype": "m.text", "body": format!("m{index}")}),
                )
                .await;
        }
    };
    for index in 0..5 {
        send(index).await;
    }
    plait.kill();
    plait.restart().await;
    for index in 5..10 {
        send(index).await;
    }
    let fake = FakeAppservice::serve(tokio::net::TcpListener::bind(address).await.unwrap());
    let expected: Vec<String> = (0..10).map(|index| format!("m{index}")).collect();
    // The sender backs off while the appservice is down; the back-off stays under a minute here.
    for _ in 0..1200 {
        if fake.texts().len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.texts(), expected, "{}", plait.log_tail(30));
    let events = fake.events();
    let mut ids: Vec<&str> = events
        .iter()
        .filter_map(|event| event["event_id"].as_str())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "an event arrived twice");
}

/// The next line the bridge prints, within 90 s.
async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(90), lines.recv())
        .await
        .expect("the bridge went quiet")
        .expect("the bridge exited early")
}

/// Runs `scripts/mautrix-venv` (pinned `mautrix` from PyPI, installed once outside the clone)
/// and answers the venv's Python.
fn mautrix_python() -> std::path::PathBuf {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mautrix-venv");
    let output = std::process::Command::new(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/mautrix-venv");
    assert!(output.status.success(), "scripts/mautrix-venv failed");
    let venv = String::from_utf8(output.stdout).unwrap();
    std::path::Path::new(venv.trim()).join("bin/python")
}

/// A real bridge framework drives Plait: the Python `mautrix` package's `AppService`
/// (tests/appservice/mautrix_bridge.py) registers a ghost, makes a portal room, receives the
/// message a Plait user sends there through a transaction, answers as the ghost, and pings
/// itself through Plait.
#[tokio::test]
async fn the_mautrix_bridge_framework_bridges_a_portal_room() {
    let python = mautrix_python();
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let url = format!("http://127.0.0.1:{port}");
    let yaml = registration("mautrix", "mx", &url);
    let (server, _folder) = server_with(&[("mautrix.yaml", yaml)]).await;
    let alice = server.register("alice").await;
    let alice_id = alice.user_id().await;
    let work = tempfile::tempdir().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/appservice/mautrix_bridge.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .args([
            &server.base,
            &server.server_name(),
            &port.to_string(),
            &alice_id,
        ])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the mautrix bridge");
    let stdout = child.stdout.take().unwrap();
    let (lines_in, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_in.send(line);
        }
    });
    let line = next_line(&mut lines).await;
    let room = line.strip_prefix("ROOM ").expect(&line).to_owned();
    alice.join(&room).await;
    alice.send_text(&room, "t1", "hello from plait").await;
    assert_eq!(next_line(&mut lines).await, "GOT hello from plait");
    let ping = next_line(&mut lines).await;
    let millis: i64 = ping.strip_prefix("PING ").expect(&ping).parse().unwrap();
    assert!(millis >= 0, "{ping}");
    assert_eq!(next_line(&mut lines).await, "DONE");
    assert!(child.wait().unwrap().success());
    // The ghost's answer is in the room, sent as the ghost.
    let messages = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"
        ))
        .await;
    let echo = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["content"]["body"] == "echo: hello from plait")
        .unwrap_or_else(|| panic!("no echo in {messages}"));
    assert_eq!(
        echo["sender"],
        format!("@mx_ghost:{}", server.server_name())
    );
}

/// Rooms with an alias of an appservice's namespace bring it their events, even with none of
/// its users in them; rooms without one do not.
#[tokio::test]
async fn a_room_with_an_alias_of_the_namespace_brings_its_events() {
    let (fake, url) = fake_appservice().await;
    let (server, _folder) =
        server_with(&[("bridge.yaml", registration("bridge", "br", &url))]).await;
    let bridge = as_client(&server, "as-bridge");
    let alice = server.register("alice").await;
    let aliased = alice.create_room(json!({"preset": "public_chat"})).await;
    let plain = alice.create_room(json!({"preset": "public_chat"})).await;
    let alias = format!("#br_portal:{}", server.server_name());
    bridge
        .put_ok(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            json!({"room_id": aliased}),
        )
        .await;
    alice.send_text(&plain, "p1", "not for the bridge").await;
    alice.send_text(&aliased, "a1", "for the bridge").await;
    fake.wait_for("the aliased room's message", |fake| {
        fake.texts().contains(&"for the bridge".to_owned())
    })
    .await;
    assert!(
        !fake.texts().contains(&"not for the bridge".to_owned()),
        "{:?}",
        fake.texts()
    );
    assert!(fake
        .events()
        .iter()
        .all(|event| event["room_id"] == aliased));
}

/// With rate limits on, users of an appservice registered with `rate_limited: false` send past
/// the message limit; those of one with `rate_limited: true`, and everyone else, get
/// `429 M_LIMIT_EXCEEDED`.
#[tokio::test]
async fn only_appservices_without_rate_limits_send_past_the_message_limit() {
    let (_fake, url) = fake_appservice().await;
    let folder = tempfile::tempdir().unwrap();
    let limited =
        registration("limited", "lm", &url).replace("rate_limited: false", "rate_limited: true");
    std::fs::write(
        folder.path().join("free.yaml"),
        registration("free", "fr", &url),
    )
    .unwrap();
    std::fs::write(folder.path().join("limited.yaml"), limited).unwrap();
    let path = folder.path().to_owned();
    let database = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(database.path(), |config| {
        config.appservice_dir = Some(path);
        config.rate_limits = crate::rate_limits::generous();
        config.rate_limits.message = crate::rate_limits::rate(0.001, 3);
    })
    .await;
    server.dir = Some(database);
    // The first account becomes an admin, and admins are exempt: not a ghost's.
    server.register("admin").await;
    let name = server.server_name();
    let mut outcomes = Vec::new();
    for (token, ghost) in [("as-free", "fr_one"), ("as-limited", "lm_one")] {
        let bridge = as_client(&server, token);
        assert_eq!(register_ghost(&bridge, ghost).await.0, 200);
        let user = format!("@{ghost}:{name}");
        let as_ghost = |path: &str| format!("{path}?user_id={}", enc(&user));
        let room = bridge
            .post_ok(&as_ghost("/_matrix/client/v3/createRoom"), json!({}))
            .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut refused = None;
        for index in 0..10 {
            let send = format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/m{index}",
                enc(&room)
            );
            let answer = bridge
                .put(&as_ghost(&send), json!({"msgtype": "m.text", "body": "x"}))
                .await;
            if answer.0 != 200 {
                refused = Some(answer);
                break;
            }
        }
        outcomes.push(refused);
    }
    assert!(outcomes[0].is_none(), "{:?}", outcomes[0]);
    assert_error(outcomes[1].as_ref().unwrap(), 429, "M_LIMIT_EXCEEDED");
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let mut statuses = Vec::new();
    for index in 0..10 {
        let send = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/a{index}",
            enc(&room)
        );
        statuses.push(
            alice
                .put(&send, json!({"msgtype": "m.text", "body": "x"}))
                .await
                .0,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}
