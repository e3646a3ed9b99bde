//! Interop with Synapse (`matrix-synapse` from PyPI) on loopback: Plait as the room's creator
//! and as the joiner, messages, typing and read receipts both ways.

use serde_json::{json, Value};

use crate::{
    common::{enc, ip, synapse::Synapse, tls::TestCa, Client, TestServer},
    federation::{is_message, wait_for_event, wait_for_invite},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synapse_user_joins_a_plait_room() {
    let ca = TestCa::new();
    let plait = TestServer::start_federated(ip("127.0.0.4"), &ca, None).await;
    let synapse = Synapse::start(ip("127.0.0.5"), &ca).await;
    let alice = plait.register("alice").await;
    let (bob_id, bob_token) = synapse.register("bob", "password").await;
    let bob = synapse.client(Some(&bob_token));

    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Plait room" }))
        .await;
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    wait_for_invite(&bob, &room).await;
    let (status, body) = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(&plait.server_name())
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(60));

    alice.send_text(&room, "a1", "from plait").await;
    wait_for_event(
        &bob,
        &room,
        "Plait's message on Synapse",
        is_message("from plait"),
    )
    .await;
    let from_synapse = bob.send_text(&room, "b1", "from synapse").await;
    wait_for_event(
        &alice,
        &room,
        "Synapse's message on Plait",
        is_message("from synapse"),
    )
    .await;
    typing_and_receipts_cross(&alice, &bob, &room, &from_synapse, &synapse).await;
}

/// Polls `/sync` until an ephemeral event of `room` matches, or fails after about 20 s.
async fn wait_for_ephemeral(
    client: &Client,
    room: &str,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let mut since: Option<String> = None;
    for _ in 0..40 {
        let path = match &since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=500&since={}", enc(since)),
            None => "/_matrix/client/v3/sync".to_owned(),
        };
        let body = client.get_ok(&path).await;
        if let Some(event) = body["rooms"]["join"][room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|event| matches(event))
        {
            return event.clone();
        }
        since = body["next_batch"].as_str().map(str::to_owned);
    }
    panic!("{what} never arrived in {room}");
}

/// Typing and read receipts both ways between a Plait user (`plait`) and a Synapse user.
async fn typing_and_receipts_cross(
    plait: &Client,
    synapse_user: &Client,
    room: &str,
    synapse_event: &str,
    synapse: &Synapse,
) {
    let plait_id = plait.user_id().await;
    let synapse_id = synapse_user.user_id().await;
    let typing = |user: String| {
        move |event: &Value| {
            event["type"] == "m.typing"
                && event["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|users| users.iter().any(|id| *id == user))
        }
    };
    plait
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(room),
                enc(&plait_id)
            ),
            json!({"typing": true, "timeout": 20000}),
        )
        .await;
    wait_for_ephemeral(
        synapse_user,
        room,
        "Plait's typing on Synapse",
        typing(plait_id.clone()),
    )
    .await;
    let (status, body) = synapse_user
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(room),
                enc(&synapse_id)
            ),
            json!({"typing": true, "timeout": 20000}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    wait_for_ephemeral(
        plait,
        room,
        "Synapse's typing on Plait",
        typing(synapse_id.clone()),
    )
    .await;

    // Each reads the other's latest message.
    let plait_event = plait.send_text(room, "r1", "read me").await;
    wait_for_event(
        synapse_user,
        room,
        "the message to read",
        is_message("read me"),
    )
    .await;
    let read_by = |event_id: String, user: String| {
        move |event: &Value| {
            event["type"] == "m.receipt"
                && event["content"][&event_id]["m.read"].get(&user).is_some()
        }
    };
    plait
        .post_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room),
                enc(synapse_event)
            ),
            json!({}),
        )
        .await;
    wait_for_ephemeral(
        synapse_user,
        room,
        "Plait's receipt on Synapse",
        read_by(synapse_event.to_owned(), plait_id.clone()),
    )
    .await;
    let (status, body) = synapse_user
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room),
                enc(&plait_event)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    wait_for_ephemeral(
        plait,
        room,
        "Synapse's receipt on Plait",
        read_by(plait_event, synapse_id),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plait_user_joins_a_synapse_room() {
    let ca = TestCa::new();
    let plait = TestServer::start_federated(ip("127.0.0.6"), &ca, None).await;
    let synapse = Synapse::start(ip("127.0.0.7"), &ca).await;
    let alice = plait.register("alice").await;
    let alice_id = alice.user_id().await;
    let (_, bob_token) = synapse.register("bob", "password").await;
    let bob = synapse.client(Some(&bob_token));

    let created = bob
        .post_ok(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "private_chat", "name": "Synapse room" }),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": alice_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(60));
    wait_for_invite(&alice, &room).await;
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(60));

    let from_synapse = bob.send_text(&room, "b1", "from synapse").await;
    wait_for_event(
        &alice,
        &room,
        "Synapse's message on Plait",
        is_message("from synapse"),
    )
    .await;
    alice.send_text(&room, "a1", "from plait").await;
    wait_for_event(
        &bob,
        &room,
        "Plait's message on Synapse",
        is_message("from plait"),
    )
    .await;
    typing_and_receipts_cross(&alice, &bob, &room, &from_synapse, &synapse).await;
}

/// Synapse 1.163's warning when an invite's `invite_room_state` is not a list of full PDUs of
/// the room with the create event (`synapse/handlers/federation.py`, MSC4311).
const SYNAPSE_INVITE_STATE_WARNING: &str = "failed to validate `invite_room_state`";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invite_room_state_crosses_synapse_as_full_pdus() {
    let ca = TestCa::new();
    let plait = TestServer::start_federated(ip("127.0.0.12"), &ca, None).await;
    let synapse = Synapse::start(ip("127.0.0.13"), &ca).await;
    let alice = plait.register("alice").await;
    let alice_id = alice.user_id().await;
    let (bob_id, bob_token) = synapse.register("bob", "password").await;
    let bob = synapse.client(Some(&bob_token));

    // Plait invites: Synapse validates the state (room version 12 makes it warn on failure) and
    // shows its client the stripped state, create event included.
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Full PDUs", "room_version": "12" }))
        .await;
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail(40));
    let invite = wait_for_invite(&bob, &room).await;
    let events = invite["invite_state"]["events"].as_array().unwrap();
    let create = events
        .iter()
        .find(|event| event["type"] == "m.room.create")
        .unwrap_or_else(|| panic!("no create event on Synapse: {invite}"));
    assert_eq!(create["content"]["room_version"], "12", "{create}");
    assert!(
        events
            .iter()
            .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "Full PDUs"),
        "{invite}"
    );
    let log = std::fs::read_to_string(synapse.dir().join("homeserver.log")).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(SYNAPSE_INVITE_STATE_WARNING))
        .collect();
    assert!(warnings.is_empty(), "Synapse warns: {warnings:#?}");

    // Synapse invites: Plait checks the full PDUs it sends and shows the create event whole.
    let created = bob
        .post_ok(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "private_chat", "name": "From Synapse", "room_version": "12" }),
        )
        .await;
    let synapse_room = created["room_id"].as_str().unwrap().to_owned();
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&synapse_room)),
        json!({ "user_id": alice_id }),
    )
    .await;
    let invite = wait_for_invite(&alice, &synapse_room).await;
    let events = invite["invite_state"]["events"].as_array().unwrap();
    let create = crate::federation::check_prejoin_state(events);
    assert_eq!(create["sender"], bob_id, "{create}");
    assert!(
        events
            .iter()
            .any(|event| event["type"] == "m.room.name"
                && event["content"]["name"] == "From Synapse"),
        "{invite}"
    );
}
