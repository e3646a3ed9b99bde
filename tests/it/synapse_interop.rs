//! Interop with Synapse (`matrix-synapse` from PyPI) on loopback: Plait as the room's creator
//! and as the joiner, messages both ways, the same state on both sides.

use std::net::IpAddr;

use serde_json::json;

use crate::{
    common::{enc, synapse::Synapse, tls::TestCa, TestServer},
    federation::{is_message, wait_for_event, wait_for_invite},
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

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
    bob.send_text(&room, "b1", "from synapse").await;
    wait_for_event(
        &alice,
        &room,
        "Synapse's message on Plait",
        is_message("from synapse"),
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

    bob.send_text(&room, "b1", "from synapse").await;
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
}
