//! Pushers: setting, listing and deleting them, and delivery to a real push gateway (an axum
//! server in the test) with the notify body checked, rejected pushkeys and retry across a
//! restart.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::{
    common::{assert_error, Client, TestServer},
    push::{receipt, send, shared_room},
};

fn pusher(url: &str, pushkey: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "profile_tag": "tag",
        "lang": "en",
        "data": { "url": url, "custom": 1 },
    })
}

async fn pushers(client: &Client) -> Vec<Value> {
    client.get_ok("/_matrix/client/v3/pushers").await["pushers"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn pushers_are_set_listed_replaced_and_deleted() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let url = "https://push.example.org/_matrix/push/v1/notify";
    assert_eq!(pushers(&bob).await, Vec::<Value>::new());
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(url, "key1"))
        .await;
    let listed = pushers(&bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["pushkey"], "key1");
    assert_eq!(listed[0]["app_id"], "org.example.app");
    assert_eq!(listed[0]["kind"], "http");
    assert_eq!(listed[0]["profile_tag"], "tag");
    assert_eq!(listed[0]["data"], json!({ "url": url, "custom": 1 }));
    // The same app ID and pushkey replace the pusher; another pushkey adds one.
    let mut renamed = pusher(url, "key1");
    renamed["device_display_name"] = json!("Tablet");
    bob.post_ok("/_matrix/client/v3/pushers/set", renamed).await;
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(url, "key2"))
        .await;
    let listed = pushers(&bob).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["device_display_name"], "Tablet");

    // Without `append`, another user's pusher with the same app ID and pushkey takes it over.
    let mut appended = pusher(url, "key2");
    appended["append"] = json!(true);
    carol
        .post_ok("/_matrix/client/v3/pushers/set", appended)
        .await;
    assert_eq!(pushers(&bob).await.len(), 2);
    carol
        .post_ok("/_matrix/client/v3/pushers/set", pusher(url, "key1"))
        .await;
    let left: Vec<_> = pushers(&bob)
        .await
        .iter()
        .map(|p| p["pushkey"].clone())
        .collect();
    assert_eq!(left, [json!("key2")]);
    assert_eq!(pushers(&carol).await.len(), 2);

    // `kind: null` deletes.
    let mut delete = pusher(url, "key2");
    delete["kind"] = Value::Null;
    bob.post_ok("/_matrix/client/v3/pushers/set", delete).await;
    assert_eq!(pushers(&bob).await, Vec::<Value>::new());

    let set = |body: Value| {
        let bob = bob.clone();
        async move { bob.post("/_matrix/client/v3/pushers/set", body).await }
    };
    for bad_url in [
        "https://push.example.org/wrong/path",
        // Addresses in the deny-list (loopback, private, link-local), refused unless the
        // configuration allows plain http for a gateway under test.
        "https://127.0.0.1/_matrix/push/v1/notify",
        "https://10.1.2.3:8443/_matrix/push/v1/notify",
        "https://[::1]/_matrix/push/v1/notify",
        "https://169.254.169.254/_matrix/push/v1/notify",
        "http://push.example.org/_matrix/push/v1/notify",
        "not a url",
        "ftp://push.example.org/_matrix/push/v1/notify",
    ] {
        assert_error(&set(pusher(bad_url, "k")).await, 400, "M_INVALID_PARAM");
    }
    let mut no_url = pusher(url, "k");
    no_url["data"] = json!({});
    assert_error(&set(no_url).await, 400, "M_INVALID_PARAM");
    let mut no_data = pusher(url, "k");
    no_data.as_object_mut().unwrap().remove("data");
    assert_error(&set(no_data).await, 400, "M_BAD_JSON");
    let mut email = pusher(url, "bob@example.org");
    email["kind"] = json!("email");
    email["app_id"] = json!("m.email");
    assert_error(&set(email).await, 400, "M_INVALID_PARAM");
    let mut no_lang = pusher(url, "k");
    no_lang.as_object_mut().unwrap().remove("lang");
    assert_error(&set(no_lang).await, 400, "M_BAD_JSON");
    assert_error(
        &set(pusher(url, &"k".repeat(513))).await,
        400,
        "M_INVALID_PARAM",
    );
    let mut long_app = pusher(url, "k");
    long_app["app_id"] = json!("a".repeat(65));
    assert_error(&set(long_app).await, 400, "M_INVALID_PARAM");
    assert_eq!(pushers(&bob).await, Vec::<Value>::new());
}

/// A loopback listener for a push gateway, and the pusher URL that reaches it.
async fn gateway_listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/_matrix/push/v1/notify",
        listener.local_addr().unwrap()
    );
    (listener, url)
}

/// A push gateway on loopback: every notify body goes to the channel; it answers with
/// `rejected` listing the pushkeys in `reject`.
async fn gateway(
    listener: tokio::net::TcpListener,
    reject: Vec<String>,
) -> mpsc::UnboundedReceiver<Value> {
    gateway_padded(listener, reject, 0).await
}

/// [`gateway`], with `padding` bytes of filler in every answer.
async fn gateway_padded(
    listener: tokio::net::TcpListener,
    reject: Vec<String>,
    padding: usize,
) -> mpsc::UnboundedReceiver<Value> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/_matrix/push/v1/notify",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sender = sender.clone();
            let reject = reject.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap();
                let _ = sender.send(body);
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    json!({ "rejected": reject, "filler": "x".repeat(padding) }).to_string(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    receiver
}

async fn next_push(receiver: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(60), receiver.recv())
        .await
        .expect("a push reached the gateway")
        .unwrap()
}

async fn server_allowing_http() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.push_gateway_allow_http = true;
    })
    .await;
    server.dir = Some(dir);
    server
}

#[tokio::test]
async fn an_http_pusher_delivers_to_its_gateway_and_a_rejected_pushkey_removes_it() {
    let server = server_allowing_http().await;
    let (alice, bob, room) = shared_room(&server).await;
    let (listener, url) = gateway_listener().await;
    let mut pushes = gateway(listener, vec!["gone".to_owned()]).await;
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(&url, "full"))
        .await;
    let event = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "ping" }),
    )
    .await;
    let push = next_push(&mut pushes).await;
    let notification = &push["notification"];
    assert_eq!(notification["event_id"], event);
    assert_eq!(notification["room_id"], room);
    assert_eq!(notification["type"], "m.room.message");
    assert_eq!(notification["sender"], alice.user_id().await);
    assert_eq!(notification["content"]["body"], "ping");
    assert_eq!(notification["counts"]["unread"], 1);
    assert_eq!(notification["prio"], "high");
    let device = &notification["devices"][0];
    assert_eq!(device["app_id"], "org.example.app");
    assert_eq!(device["pushkey"], "full");
    assert_eq!(device["data"], json!({ "custom": 1 }));
    assert_eq!(device["tweaks"]["sound"], "default");

    // `event_id_only` leaves the event out; a pushkey the gateway rejects is removed.
    let mut short = pusher(&url, "gone");
    short["data"]["format"] = json!("event_id_only");
    short["append"] = json!(true);
    bob.post_ok("/_matrix/client/v3/pushers/set", short).await;
    let second = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "again" }),
    )
    .await;
    let mut by_key = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let push = next_push(&mut pushes).await;
        let key = push["notification"]["devices"][0]["pushkey"]
            .as_str()
            .unwrap()
            .to_owned();
        by_key.insert(key, push);
    }
    let short = &by_key["gone"]["notification"];
    assert_eq!(short["event_id"], second);
    assert_eq!(short["counts"]["unread"], 2);
    assert!(
        short.get("content").is_none() && short.get("type").is_none(),
        "{short}"
    );
    assert_eq!(
        short["devices"][0]["data"],
        json!({ "custom": 1, "format": "event_id_only" })
    );
    let remaining: Vec<_> = pushers(&bob)
        .await
        .iter()
        .map(|p| p["pushkey"].clone())
        .collect();
    assert_eq!(remaining, [json!("full")]);
    // Bob's own messages are not pushed to him.
    receipt(&bob, &room, "m.read", &second, json!({})).await;
    send(
        &bob,
        &room,
        json!({ "msgtype": "m.text", "body": "my own" }),
    )
    .await;
    let third = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "third" }),
    )
    .await;
    let push = next_push(&mut pushes).await;
    assert_eq!(push["notification"]["event_id"], third);
    assert_eq!(push["notification"]["counts"]["unread"], 1);
}

#[tokio::test]
async fn a_gateway_that_is_down_gets_the_push_later_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |config| {
        config.push_gateway_allow_http = true;
    })
    .await;
    let (alice, bob, room) = shared_room(&server).await;
    // A port with nobody listening: connections are refused until the gateway starts.
    let address = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{address}/_matrix/push/v1/notify");
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(&url, "later"))
        .await;
    let event = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "wait for it" }),
    )
    .await;
    // Let the worker fail at least once, then restart: the queued push is in the database.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop((alice, bob));
    server.stop().await;
    let server = TestServer::start_at(dir.path(), |config| {
        config.push_gateway_allow_http = true;
    })
    .await;
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let mut pushes = gateway(listener, Vec::new()).await;
    let push = next_push(&mut pushes).await;
    assert_eq!(push["notification"]["event_id"], event);
    assert_eq!(push["notification"]["devices"][0]["pushkey"], "later");
    drop(server);
}

#[tokio::test]
async fn pushers_go_with_the_device_that_set_them() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let login = server
        .client()
        .post_ok(
            "/_matrix/client/v3/login",
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "password" }),
        )
        .await;
    let other = Client {
        token: Some(login["access_token"].as_str().unwrap().to_owned()),
        ..server.client()
    };
    let url = "https://push.example.org/_matrix/push/v1/notify";
    other
        .post_ok("/_matrix/client/v3/pushers/set", pusher(url, "other"))
        .await;
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(url, "mine"))
        .await;
    assert_eq!(pushers(&bob).await.len(), 2);
    // A password change logs out the other devices, and their pushers go with them.
    let user = bob.user_id().await;
    bob.post_ok(
        "/_matrix/client/v3/account/password",
        json!({
            "new_password": "new password",
            "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": "password" },
        }),
    )
    .await;
    let left: Vec<_> = pushers(&bob)
        .await
        .iter()
        .map(|p| p["pushkey"].clone())
        .collect();
    assert_eq!(left, [json!("mine")]);
    bob.post_ok("/_matrix/client/v3/logout", json!({})).await;
    assert!(server
        .services
        .push
        .pushers
        .iter_pushers(&ruma::UserId::parse(&user).unwrap())
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_gateway_that_hangs_holds_up_only_its_own_pushers() {
    let server = server_allowing_http().await;
    let (alice, bob, room) = shared_room(&server).await;
    // A gateway that accepts connections and never answers; its pushkey sorts first in the
    // queue. The connections stay open until the test ends.
    let (hanging, hanging_url) = gateway_listener().await;
    let (opened, mut connections) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hanging.accept().await {
            let _ = opened.send(socket);
        }
    });
    let (live, live_url) = gateway_listener().await;
    let mut pushes = gateway(live, Vec::new()).await;
    bob.post_ok(
        "/_matrix/client/v3/pushers/set",
        pusher(&hanging_url, "a-hanging"),
    )
    .await;
    let mut second = pusher(&live_url, "b-live");
    second["append"] = json!(true);
    bob.post_ok("/_matrix/client/v3/pushers/set", second).await;
    let event = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "one gateway is stuck" }),
    )
    .await;
    let held = tokio::time::timeout(Duration::from_secs(60), connections.recv())
        .await
        .expect("the hanging gateway was reached")
        .unwrap();
    // The request to the hanging gateway waits for its 30 s timeout; the live gateway gets
    // its push well before that (within 20 s, or the test fails).
    let push = tokio::time::timeout(Duration::from_secs(20), pushes.recv())
        .await
        .expect("the live gateway got its push while the other one hung")
        .unwrap();
    assert_eq!(push["notification"]["event_id"], event);
    assert_eq!(push["notification"]["devices"][0]["pushkey"], "b-live");
    drop(held);
}

#[tokio::test]
async fn an_oversized_gateway_answer_is_not_read() {
    let server = server_allowing_http().await;
    let (alice, bob, room) = shared_room(&server).await;
    let (listener, url) = gateway_listener().await;
    // The answer lists the pushkey as rejected, but is 100 KiB long: the server reads no
    // further than 64 KiB, so the pusher stays and gets the next push too.
    let mut pushes = gateway_padded(listener, vec!["big".to_owned()], 100 * 1024).await;
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(&url, "big"))
        .await;
    for body in ["first", "second"] {
        let event = send(&alice, &room, json!({ "msgtype": "m.text", "body": body })).await;
        let push = next_push(&mut pushes).await;
        assert_eq!(push["notification"]["event_id"], event);
    }
    assert_eq!(pushers(&bob).await.len(), 1);
}
