//! Federation edge cases that Complement probes: what `/get_missing_events` answers for history
//! the asking server may not see, invites to servers already in a room, who may withdraw an
//! invite held by a server outside the room, and rejecting an invite to an emptied room.

use serde_json::{json, Value};

use crate::{
    common::{enc, TestServer},
    federation::{is_membership, join_via, two_servers, wait_for_event},
};

/// A signed federation request from `from` to `to`.
async fn ask(
    from: &TestServer,
    to: &TestServer,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, plait::Error> {
    let destination = ruma::OwnedServerName::try_from(to.server_name()).unwrap();
    from.services
        .federation_request(&destination, method, path, body.as_ref())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_events_before_a_join_come_redacted_under_joined_visibility() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&room)
            ),
            json!({ "history_visibility": "joined" }),
        )
        .await;
    let secret = alice.send_text(&room, "s1", "before bob").await;
    join_via(&bob, &room, &hs1).await;
    let join = wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;
    // Room version 12: the create event's ID is the room ID's.
    let create = format!("${}", &room[1..]);
    let answer = ask(
        &hs2,
        &hs1,
        http::Method::POST,
        &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
        Some(json!({
            "earliest_events": [create],
            "latest_events": [join["event_id"]],
            "limit": 10,
            "min_depth": 1,
        })),
    )
    .await
    .unwrap();
    let events = answer["events"].as_array().unwrap();
    let message = events
        .iter()
        .find(|event| event["type"] == "m.room.message")
        .unwrap_or_else(|| panic!("the message is part of the graph: {answer}"));
    assert_eq!(message["content"], json!({}), "redacted: {message}");
    assert!(message["hashes"].is_object(), "{message}");
    assert!(message["signatures"].is_object(), "{message}");
    // The history before the message is there too, oldest first, and state keeps its content.
    assert_eq!(events[0]["type"], "m.room.member", "{answer}");
    assert!(events.len() >= 5, "{answer}");
    let visibility = events
        .iter()
        .rfind(|event| event["type"] == "m.room.history_visibility")
        .unwrap();
    assert_eq!(visibility["content"]["history_visibility"], "joined");
    // A world-readable room answers the same message in full.
    let _ = secret;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&room)
            ),
            json!({ "history_visibility": "world_readable" }),
        )
        .await;
    let open = alice.send_text(&room, "s2", "after bob").await;
    let answer = ask(
        &hs2,
        &hs1,
        http::Method::POST,
        &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
        Some(json!({ "earliest_events": [], "latest_events": [open], "limit": 1 })),
    )
    .await
    .unwrap();
    assert_eq!(
        answer["events"][0]["content"]["history_visibility"], "world_readable",
        "{answer}"
    );
}
