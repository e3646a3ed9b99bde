//! Delayed events (MSC4140) and scheduled messages: a delayed message fires after its delay, a
//! delayed `m.call.member` leave is held back by restarts and fires when they stop, cancel and
//! send early, firing after a restart, a refused firing in the list, and bad input.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

const DELAYED: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";

/// Sends `content` as a message with `delay` ms; returns the delay ID.
async fn send_delayed(
    client: &Client,
    room: &str,
    txn: &str,
    delay: u64,
    content: Value,
) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}?org.matrix.msc4140.delay={delay}",
        enc(room)
    );
    let answer = client.put_ok(&path, content).await;
    assert!(answer.get("event_id").is_none(), "{answer}");
    answer["delay_id"].as_str().unwrap().to_owned()
}

/// The room's messages with `body`, newest first.
async fn messages_with(client: &Client, room: &str, body: &str) -> Vec<Value> {
    let page = client
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(room)
        ))
        .await;
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["content"]["body"] == body)
        .cloned()
        .collect()
}

/// Waits up to `within` for a message with `body`; returns when it came.
async fn wait_for_message(client: &Client, room: &str, body: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if !messages_with(client, room, body).await.is_empty() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{body:?} never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The finalised entry of `delay_id` in the user's list, if it ended.
async fn finalised(client: &Client, delay_id: &str) -> Option<Value> {
    let list = client.get_ok(DELAYED).await;
    list["finalised"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["delayed_event"]["delay_id"] == delay_id)
        .cloned()
}

async fn pending_ids(client: &Client) -> Vec<String> {
    let list = client.get_ok(DELAYED).await;
    list["delayed_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["delay_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn update(client: &Client, delay_id: &str, action: &str) -> (u16, Value) {
    client
        .post(&format!("{DELAYED}/{delay_id}/{action}"), json!({}))
        .await
}

#[tokio::test]
async fn a_delayed_message_fires_after_its_delay_and_the_list_shows_each_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let versions = alice.get_ok("/_matrix/client/versions").await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);

    let sent_at = Instant::now();
    let later = send_delayed(
        &alice,
        &room,
        "t1",
        1_500,
        json!({"msgtype": "m.text", "body": "later"}),
    )
    .await;
    let cancelled = send_delayed(
        &alice,
        &room,
        "t2",
        60_000,
        json!({"msgtype": "m.text", "body": "never"}),
    )
    .await;
    let early = send_delayed(
        &alice,
        &room,
        "t3",
        60_000,
        json!({"msgtype": "m.text", "body": "early"}),
    )
    .await;
    assert!(messages_with(&alice, &room, "later").await.is_empty());
    let list = alice.get_ok(DELAYED).await;
    let first = &list["delayed_events"][0];
    assert_eq!(first["delay_id"], later.as_str(), "{list}");
    assert_eq!(first["room_id"], room.as_str());
    assert_eq!(first["type"], "m.room.message");
    assert_eq!(first["delay"], 1_500);
    assert_eq!(first["content"]["body"], "later");
    assert_eq!(pending_ids(&alice).await.len(), 3);

    assert_eq!(update(&alice, &cancelled, "cancel").await.0, 200);
    assert_eq!(update(&alice, &early, "send").await.0, 200);
    assert_eq!(messages_with(&alice, &room, "early").await.len(), 1);
    let arrived = wait_for_message(&alice, &room, "later", Duration::from_secs(10)).await;
    let waited = arrived - sent_at;
    assert!(
        waited >= Duration::from_millis(1_500),
        "fired after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(4_000),
        "fired after {waited:?}"
    );
    assert!(messages_with(&alice, &room, "never").await.is_empty());

    assert!(pending_ids(&alice).await.is_empty());
    let fired = finalised(&alice, &later).await.unwrap();
    assert_eq!(
        (&fired["outcome"], &fired["reason"]),
        (&json!("send"), &json!("delay"))
    );
    let message = &messages_with(&alice, &room, "later").await[0];
    assert_eq!(fired["event_id"], message["event_id"]);
    let gone = finalised(&alice, &cancelled).await.unwrap();
    assert_eq!(
        (&gone["outcome"], &gone["reason"]),
        (&json!("cancel"), &json!("action"))
    );
    let sent = finalised(&alice, &early).await.unwrap();
    assert_eq!(
        (&sent["outcome"], &sent["reason"]),
        (&json!("send"), &json!("action"))
    );
    // An ended event can be neither cancelled nor sent again.
    assert_error(&update(&alice, &early, "cancel").await, 404, "M_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn a_delayed_call_member_leave_waits_while_restarted_and_fires_when_restarts_stop() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let alice_id = alice.user_id().await;
    let state_key = format!("_{alice_id}_PHONE");
    let state_path = format!(
        "/_matrix/client/v3/rooms/{}/state/org.matrix.msc3401.call.member/{}",
        enc(&room),
        enc(&state_key)
    );
    // Element Call's order: first the delayed leave, then the join it guards.
    let leave = alice
        .put_ok(
            &format!("{state_path}?org.matrix.msc4140.delay=1000"),
            json!({}),
        )
        .await["delay_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let join =
        json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "PHONE"});
    alice.put_ok(&state_path, join.clone()).await;
    let list = alice.get_ok(DELAYED).await;
    assert_eq!(
        list["delayed_events"][0]["state_key"],
        state_key.as_str(),
        "{list}"
    );
    // Heartbeats every 400 ms for 3 s keep the leave back (the join stays in force).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(update(&alice, &leave, "restart").await.0, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(alice.get_ok(&state_path).await, join);
    // Without heartbeats it fires about a second later.
    let stopped = Instant::now();
    loop {
        if alice.get_ok(&state_path).await == json!({}) {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "the leave never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopped.elapsed() >= Duration::from_millis(600),
        "{:?}",
        stopped.elapsed()
    );
    let fired = finalised(&alice, &leave).await.unwrap();
    assert_eq!(fired["outcome"], "send", "{fired}");
    server.stop().await;
}

#[tokio::test]
async fn another_users_state_cancels_a_pending_delayed_state_event_and_the_senders_own_does_not() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let state_path = format!(
        "/_matrix/client/v3/rooms/{}/state/org.matrix.msc3401.call.member/shared",
        enc(&room)
    );
    let delayed = alice
        .put_ok(
            &format!("{state_path}?org.matrix.msc4140.delay=60000"),
            json!({"by": "alice later"}),
        )
        .await["delay_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.put_ok(&state_path, json!({"by": "alice now"})).await;
    assert_eq!(pending_ids(&alice).await, std::slice::from_ref(&delayed));
    // Power level 0 lets bob set the call member state (new rooms' defaults).
    bob.put_ok(&state_path, json!({"by": "bob"})).await;
    assert!(pending_ids(&alice).await.is_empty());
    let cancelled = finalised(&alice, &delayed).await.unwrap();
    assert_eq!(
        (&cancelled["outcome"], &cancelled["reason"]),
        (&json!("cancel"), &json!("error"))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_delayed_message_whose_sender_left_is_refused_and_reported() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let delay_id = send_delayed(
        &bob,
        &room,
        "b1",
        800,
        json!({"msgtype": "m.text", "body": "ghost"}),
    )
    .await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        if let Some(entry) = finalised(&bob, &delay_id).await {
            break entry;
        }
        assert!(Instant::now() < deadline, "never finalised");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (&refused["outcome"], &refused["reason"]),
        (&json!("cancel"), &json!("error")),
        "{refused}"
    );
    assert_eq!(refused["error"]["errcode"], "M_FORBIDDEN", "{refused}");
    assert!(messages_with(&alice, &room, "ghost").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_delayed_message_survives_a_restart_and_fires_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    send_delayed(
        &alice,
        &room,
        "r1",
        1_000,
        json!({"msgtype": "m.text", "body": "after the restart"}),
    )
    .await;
    let token = alice.token.clone();
    server.stop().await;
    // Down for longer than the delay: it fires at start.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let alice = Client {
        token,
        ..server.client()
    };
    wait_for_message(&alice, &room, "after the restart", Duration::from_secs(5)).await;
    assert_eq!(
        messages_with(&alice, &room, "after the restart")
            .await
            .len(),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_delays_and_delay_ids_get_matrix_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |config| {
        config.max_event_delay_duration_ms = 10_000;
    })
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let send = |delay: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/x{delay}?org.matrix.msc4140.delay={delay}",
            enc(&room)
        )
    };
    let body = json!({"msgtype": "m.text", "body": "x"});
    assert_error(
        &alice.put(&send("-5"), body.clone()).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.put(&send("soon"), body.clone()).await,
        400,
        "M_INVALID_PARAM",
    );
    let too_long = alice.put(&send("10001"), body.clone()).await;
    assert_error(&too_long, 400, "ORG.MATRIX.MSC4140_MAX_DELAY_EXCEEDED");
    // Not joined: refused at once, as an ordinary send would be.
    assert_error(
        &bob.put(&send("100"), body.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    assert!(pending_ids(&alice).await.is_empty());
    assert!(messages_with(&alice, &room, "x").await.is_empty());

    let delay_id = send_delayed(&alice, &room, "ok", 10_000, body).await;
    assert_error(
        &update(&alice, "pld_unknown", "cancel").await,
        404,
        "M_NOT_FOUND",
    );
    for action in ["cancel", "restart", "send"] {
        assert_error(&update(&bob, &delay_id, action).await, 404, "M_NOT_FOUND");
    }
    assert_error(
        &update(&alice, &delay_id, "explode").await,
        400,
        "M_INVALID_PARAM",
    );
    let by_body = alice
        .post(
            &format!("{DELAYED}/{delay_id}"),
            json!({"action": "restart"}),
        )
        .await;
    assert_eq!(by_body.0, 200, "{by_body:?}");
    assert_eq!(pending_ids(&alice).await, [delay_id]);
    server.stop().await;
}
