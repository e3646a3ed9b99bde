//! The cross-server scenarios again with Synapse on the other side, with Plait as the room's
//! creator and as the joiner: a join by alias, reactions, edits and redactions, presence, device
//! keys and one-time key claims, to-device messages, and a leave and rejoin whose missed history
//! the rejoining server backfills from the other.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    common::{enc, ip, synapse::Synapse, tls::TestCa, Client, TestServer},
    e2ee::{device_keys, whoami},
    federation::{is_membership, is_message, wait_for_event},
};

/// Sends an event of any type and returns its ID, showing Synapse's log on failure.
async fn send(
    client: &Client,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
    synapse: &Synapse,
) -> String {
    let (status, body) = client
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
            content,
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    body["event_id"].as_str().unwrap().to_owned()
}

/// Polls `/event` until `matches` holds for the event as `client` sees it.
async fn wait_for_event_state(
    client: &Client,
    room: &str,
    event_id: &str,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, body) = client
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room),
                enc(event_id)
            ))
            .await;
        if status == 200 && matches(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: never matched; last answer {last}");
}

/// A reaction, an edit and a redaction by `from`, each seen by `to` on the other server.
async fn relations_cross(from: &Client, to: &Client, room: &str, tag: &str, synapse: &Synapse) {
    let target = send(
        from,
        room,
        "m.room.message",
        &format!("{tag}-m"),
        json!({ "msgtype": "m.text", "body": format!("{tag} original") }),
        synapse,
    )
    .await;
    let original = format!("{tag} original");
    wait_for_event(to, room, "the message to react to", move |event| {
        event["content"]["body"] == original.as_str()
    })
    .await;
    send(
        from,
        room,
        "m.reaction",
        &format!("{tag}-r"),
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": "🎉" } }),
        synapse,
    )
    .await;
    wait_for_event(to, room, "the reaction", |event| {
        event["type"] == "m.reaction" && event["content"]["m.relates_to"]["key"] == "🎉"
    })
    .await;
    let edited = format!("{tag} edited");
    send(
        from,
        room,
        "m.room.message",
        &format!("{tag}-e"),
        json!({
            "msgtype": "m.text", "body": format!("* {edited}"),
            "m.new_content": { "msgtype": "m.text", "body": edited },
            "m.relates_to": { "rel_type": "m.replace", "event_id": target },
        }),
        synapse,
    )
    .await;
    // Both servers bundle the edit and the reaction into the original.
    wait_for_event_state(to, room, &target, "the bundled edit", |event| {
        event["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"]
            == edited.as_str()
    })
    .await;
    let (status, body) = from
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{tag}-x",
                enc(room),
                enc(&target)
            ),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    wait_for_event_state(to, room, &target, "the redaction", |event| {
        event["unsigned"]["redacted_because"].is_object()
            && event["content"]
                .as_object()
                .is_some_and(|content| content.is_empty())
    })
    .await;
}

/// `from` sets a status message that `to` (on the other server) then reads.
async fn presence_crosses(from: &Client, to: &Client, message: &str, synapse: &Synapse) {
    let (from_id, _) = whoami(from).await;
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&from_id));
    // Read once before the change: Synapse 1.163 loses a remote user's first presence update
    // when a read of that user, which finds nothing in memory and asks the database, is still
    // running as the update lands (the read then stores its "offline" over the update; seen
    // here as a logged `m.presence` EDU accepted by Synapse and `offline` answered after it).
    let (status, _) = to.get(&path).await;
    assert_eq!(status, 200);
    let (status, body) = from
        .put(
            &path,
            json!({ "presence": "online", "status_msg": message }),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    // Up to a minute: a transaction that failed under load waits out the sender's back-off.
    let mut last = Value::Null;
    for _ in 0..600 {
        let (status, body) = to.get(&path).await;
        if status == 200 && body["presence"] == "online" && body["status_msg"] == message {
            return;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the presence of {from_id} never crossed; last answer {last}\n{}",
        synapse.log_tail(60)
    );
}

/// `owner` uploads device keys and a one-time key; `other` (on the other server) finds the
/// device through `/keys/query`, claims the key, and sends the device a to-device message.
async fn keys_and_to_device_cross(owner: &Client, other: &Client, tag: &str, synapse: &Synapse) {
    let (owner_id, owner_device) = whoami(owner).await;
    let (status, body) = owner
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys(&owner_id, &owner_device, &format!("identity-{tag}")),
                "one_time_keys": { "signed_curve25519:AAAAAQ": {
                    "key": format!("otk-{tag}"),
                    "signatures": { owner_id.as_str(): { format!("ed25519:{owner_device}"): "sig" } },
                } },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));

    let mut found = Value::Null;
    for _ in 0..100 {
        let (status, body) = other
            .post(
                "/_matrix/client/v3/keys/query",
                json!({ "device_keys": { owner_id.as_str(): [] } }),
            )
            .await;
        assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
        found = body["device_keys"][&owner_id][&owner_device].clone();
        if found["keys"][format!("curve25519:{owner_device}")] == format!("identity-{tag}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        found["keys"][format!("curve25519:{owner_device}")],
        format!("identity-{tag}"),
        "the device keys crossed: {found}\n{}",
        synapse.log_tail(40)
    );
    let (status, claimed) = other
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { owner_id.as_str(): { owner_device.as_str(): "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, 200, "{claimed}\n{}", synapse.log_tail(40));
    let key = &claimed["one_time_keys"][&owner_id][&owner_device]["signed_curve25519:AAAAAQ"];
    assert_eq!(key["key"], format!("otk-{tag}"), "{claimed}");

    let (status, body) = other
        .put(
            &format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/{tag}"),
            json!({ "messages": { owner_id.as_str(): { owner_device.as_str(): {
                "algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": { "x": { "type": 0, "body": tag } },
            } } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    let mut since: Option<String> = None;
    for _ in 0..40 {
        let path = match &since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=500&since={}", enc(since)),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let sync = owner.get_ok(&path).await;
        let arrived = sync["to_device"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|event| event["content"]["ciphertext"]["x"]["body"] == tag);
        if arrived {
            return;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
    }
    panic!(
        "the to-device message {tag} never arrived\n{}",
        synapse.log_tail(40)
    );
}

/// The messages of `room` that `client` finds paginating back from the newest event.
async fn bodies_back_to_start(client: &Client, room: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
            enc(room)
        );
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let page = client.get_ok(&path).await;
        for event in page["chunk"].as_array().into_iter().flatten() {
            if event["type"] == "m.room.message" {
                if let Some(body) = event["content"]["body"].as_str() {
                    bodies.push(body.to_owned());
                }
            }
        }
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().is_some_and(Vec::is_empty) => {
                from = Some(end.to_owned());
            }
            _ => return bodies,
        }
    }
    bodies
}

/// `leaver` leaves, misses `stayer`'s messages, rejoins, and paginates them back: its server
/// backfills them from the other.
async fn leave_and_rejoin_backfill(
    leaver: &Client,
    stayer: &Client,
    room: &str,
    via: &str,
    synapse: &Synapse,
) {
    let (leaver_id, _) = whoami(leaver).await;
    let (status, body) = leaver
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    wait_for_event(
        stayer,
        room,
        "the leave",
        is_membership(&leaver_id, "leave"),
    )
    .await;
    for i in 0..15 {
        stayer
            .send_text(room, &format!("away{i}"), &format!("while away {i}"))
            .await;
    }
    let (status, body) = leaver
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(room),
                enc(via)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    let bodies = bodies_back_to_start(leaver, room).await;
    let missed: Vec<&String> = bodies
        .iter()
        .filter(|body| body.starts_with("while away"))
        .collect();
    let expected: Vec<String> = (0..15).rev().map(|i| format!("while away {i}")).collect();
    assert_eq!(
        missed,
        expected.iter().collect::<Vec<_>>(),
        "the history missed while away, newest first\n{}",
        synapse.log_tail(60)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synapse_joins_a_plait_room_by_alias_and_everything_crosses() {
    let ca = TestCa::new();
    let plait = TestServer::start_federated(ip("127.0.0.8"), &ca, None).await;
    let synapse = Synapse::start(ip("127.0.0.9"), &ca).await;
    let alice = plait.register("alice").await;
    let (_, bob_token) = synapse.register("bob", "password").await;
    let bob = synapse.client(Some(&bob_token));

    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": "meet" }))
        .await;
    let alias = format!("#meet:{}", plait.server_name());
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(60));
    assert_eq!(body["room_id"], room);
    alice.send_text(&room, "hello", "hello synapse").await;
    wait_for_event(&bob, &room, "Plait's message", is_message("hello synapse")).await;

    relations_cross(&alice, &bob, &room, "p", &synapse).await;
    relations_cross(&bob, &alice, &room, "s", &synapse).await;
    presence_crosses(&alice, &bob, "at plait", &synapse).await;
    presence_crosses(&bob, &alice, "at synapse", &synapse).await;
    keys_and_to_device_cross(&alice, &bob, "p", &synapse).await;
    keys_and_to_device_cross(&bob, &alice, "s", &synapse).await;
    // Synapse leaves and rejoins: it backfills what it missed from Plait.
    leave_and_rejoin_backfill(&bob, &alice, &room, &plait.server_name(), &synapse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plait_joins_a_synapse_room_by_alias_and_everything_crosses() {
    let ca = TestCa::new();
    let plait = TestServer::start_federated(ip("127.0.0.10"), &ca, None).await;
    let synapse = Synapse::start(ip("127.0.0.11"), &ca).await;
    let alice = plait.register("alice").await;
    let (_, bob_token) = synapse.register("bob", "password").await;
    let bob = synapse.client(Some(&bob_token));

    let created = bob
        .post_ok(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "public_chat", "room_alias_name": "meet" }),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let alias = format!("#meet:{}", synapse.server_name());
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(60));
    assert_eq!(body["room_id"], room);
    bob.send_text(&room, "hello", "hello plait").await;
    wait_for_event(
        &alice,
        &room,
        "Synapse's message",
        is_message("hello plait"),
    )
    .await;

    relations_cross(&bob, &alice, &room, "s", &synapse).await;
    relations_cross(&alice, &bob, &room, "p", &synapse).await;
    presence_crosses(&bob, &alice, "at synapse", &synapse).await;
    presence_crosses(&alice, &bob, "at plait", &synapse).await;
    keys_and_to_device_cross(&bob, &alice, "s", &synapse).await;
    keys_and_to_device_cross(&alice, &bob, "p", &synapse).await;
    // Plait leaves and rejoins: it backfills what it missed from Synapse.
    leave_and_rejoin_backfill(&alice, &bob, &room, synapse.server_name(), &synapse).await;
}
