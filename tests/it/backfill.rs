//! Backfill: `/messages` on a server that joined late (or came back after leaving) fetches the
//! history it never received from the room's other servers, in order, without duplicates,
//! without showing it to `/sync` as new, and only as far as the history visibility allows.

use serde_json::{json, Value};

use crate::{
    common::{enc, Client},
    federation::{is_membership, join_via, two_servers, wait_for_event},
};

/// Paginates `/messages` backwards from the newest event with `limit` until no `end` is
/// returned, and answers every event, newest first.
async fn paginate_to_start(client: &Client, room: &str, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..200 {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            enc(room)
        );
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let page = client.get_ok(&path).await;
        let chunk = page["chunk"].as_array().unwrap();
        assert!(chunk.len() <= limit, "a page holds at most limit events");
        events.extend(chunk.iter().cloned());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return events,
        }
    }
    panic!("pagination of {room} never ended");
}

fn message_bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn assert_no_duplicates(events: &[Value]) {
    let mut ids: Vec<&str> = events
        .iter()
        .map(|event| event["event_id"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "an event came twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_backfill_the_history_from_before_a_join() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut sent = Vec::new();
    for i in 0..150 {
        sent.push(
            alice
                .send_text(&room, &format!("t{i}"), &format!("before {i}"))
                .await,
        );
    }
    // A reaction to an old message, which bob's server learns only through backfill.
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.reaction/react",
                enc(&room)
            ),
            json!({ "m.relates_to": {
                "rel_type": "m.annotation", "event_id": sent[5], "key": "👍" } }),
        )
        .await;

    let since = bob.get_ok("/_matrix/client/v3/sync?timeout=0").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    join_via(&bob, &room, &hs1).await;
    let after_join = bob
        .get_ok(&format!(
            "/_matrix/client/v3/sync?timeout=0&since={}",
            enc(&since)
        ))
        .await;
    let next = after_join["next_batch"].as_str().unwrap().to_owned();

    let events = paginate_to_start(&bob, &room, 40).await;
    assert_no_duplicates(&events);
    let expected: Vec<String> = (0..150).rev().map(|i| format!("before {i}")).collect();
    assert_eq!(
        message_bodies(&events),
        expected,
        "every message, newest first"
    );
    assert_eq!(
        events.last().unwrap()["type"],
        "m.room.create",
        "pagination reaches the start of the room"
    );
    assert!(
        events.iter().any(|event| event["type"] == "m.reaction"
            && event["content"]["m.relates_to"]["key"] == "👍"),
        "the reaction came back too"
    );
    // Positions are topological: each event is no deeper than the one before it.
    let joined = events
        .iter()
        .position(is_membership(&bob_id, "join"))
        .expect("bob's join is in the history");
    assert_eq!(joined, 0, "bob's join is the newest event");

    // The old message carries its reaction, counted from the backfilled event.
    let old = bob
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(&sent[5])
        ))
        .await;
    assert_eq!(old["content"]["body"], "before 5");
    assert_eq!(
        old["unsigned"]["m.relations"]["m.annotation"]["chunk"][0]["count"], 1,
        "{old}"
    );

    // History is not news: an incremental sync after the backfill shows none of it.
    let later = bob
        .get_ok(&format!(
            "/_matrix/client/v3/sync?timeout=0&since={}",
            enc(&next)
        ))
        .await;
    let timeline = later["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        timeline.is_empty(),
        "backfilled events are not new: {timeline:?}"
    );

    // A second pagination reads what is stored now, with the same answer.
    let again = paginate_to_start(&bob, &room, 100).await;
    assert_eq!(message_bodies(&again), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_backfill_the_gap_while_a_server_was_out_of_the_room() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.send_text(&room, "early", "early").await;
    join_via(&bob, &room, &hs1).await;
    wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    wait_for_event(
        &alice,
        &room,
        "bob's leave",
        is_membership(&bob_id, "leave"),
    )
    .await;
    for i in 0..30 {
        alice
            .send_text(&room, &format!("away{i}"), &format!("away {i}"))
            .await;
    }
    join_via(&bob, &room, &hs1).await;

    let events = paginate_to_start(&bob, &room, 10).await;
    assert_no_duplicates(&events);
    let mut expected: Vec<String> = (0..30).rev().map(|i| format!("away {i}")).collect();
    expected.push("early".to_owned());
    assert_eq!(
        message_bodies(&events),
        expected,
        "the gap is filled in order"
    );
    let memberships: Vec<&str> = events
        .iter()
        .filter(|event| event["type"] == "m.room.member" && event["state_key"] == bob_id.as_str())
        .map(|event| event["content"]["membership"].as_str().unwrap())
        .collect();
    assert_eq!(memberships, ["join", "leave", "join"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_stops_where_the_history_visibility_hides_history() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" } }],
        }))
        .await;
    for i in 0..5 {
        alice
            .send_text(&room, &format!("secret{i}"), &format!("secret {i}"))
            .await;
    }
    join_via(&bob, &room, &hs1).await;
    alice.send_text(&room, "after", "after").await;
    wait_for_event(&bob, &room, "the message after the join", |event| {
        event["content"]["body"] == "after"
    })
    .await;

    let events = paginate_to_start(&bob, &room, 10).await;
    assert_eq!(message_bodies(&events), ["after"], "{events:?}");
    assert!(
        events.iter().any(is_membership(&bob_id, "join")),
        "bob sees his own join"
    );
    // Asking hs1 directly gets nothing from before hs2's users joined either.
    let secret_ids: Vec<String> = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            enc(&room)
        ))
        .await["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| {
            event["content"]["body"]
                .as_str()
                .is_some_and(|body| body.starts_with("secret"))
        })
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(secret_ids.len(), 5);
    for id in secret_ids {
        let (status, _) = bob
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&id)
            ))
            .await;
        assert_eq!(status, 404, "bob's server never got {id}");
    }
}
