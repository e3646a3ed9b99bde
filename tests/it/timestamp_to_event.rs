//! Jump to date (`/timestamp_to_event`): on one server (directions, ends of the room, who may
//! ask, history visibility, bad parameters) and across two, where the joining server asks the
//! resident one for history it never received.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, Client, TestServer},
    federation::{join_via, two_servers},
    federation_misc::signed,
};

/// The client endpoint's answer for `ts` in direction `dir`.
async fn lookup(client: &Client, room: &str, ts: u64, dir: &str) -> (u16, Value) {
    client
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
            enc(room)
        ))
        .await
}

/// The event ID found, or `None` for a 404.
async fn found(client: &Client, room: &str, ts: u64, dir: &str) -> Option<String> {
    let (status, body) = lookup(client, room, ts, dir).await;
    match status {
        200 => Some(body["event_id"].as_str().unwrap().to_owned()),
        _ => {
            assert_error(&(status, body), 404, "M_NOT_FOUND");
            None
        }
    }
}

/// An event's `origin_server_ts` as `client` reads it.
async fn ts_of(client: &Client, room: &str, event_id: &str) -> u64 {
    let event = client
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room),
            enc(event_id)
        ))
        .await;
    event["origin_server_ts"].as_u64().unwrap()
}

/// A room with messages A and B, each a few milliseconds after what came before and before what
/// comes next, so that no other event shares their timestamps; returns the room, A, B and their timestamps.
async fn room_with_two_messages(client: &Client, preset: &str) -> (String, [(String, u64); 2]) {
    let room = client.create_room(json!({ "preset": preset })).await;
    let mut sent = Vec::new();
    for text in ["Message A", "Message B"] {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let event_id = client.send_text(&room, text, text).await;
        let ts = ts_of(client, &room, &event_id).await;
        sent.push((event_id, ts));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    (room, [sent[0].clone(), sent[1].clone()])
}

#[tokio::test]
async fn timestamp_to_event_finds_the_nearest_visible_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (room, [(a, a_ts), (b, b_ts)]) = room_with_two_messages(&alice, "public_chat").await;
    let (status, body) = lookup(&alice, &room, a_ts, "f").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "event_id": a, "origin_server_ts": a_ts }));
    assert_eq!(found(&alice, &room, a_ts - 1, "f").await.as_ref(), Some(&a));
    assert_eq!(found(&alice, &room, b_ts, "b").await.as_ref(), Some(&b));
    assert_eq!(found(&alice, &room, b_ts - 1, "b").await.as_ref(), Some(&a));
    assert_eq!(found(&alice, &room, a_ts + 1, "f").await.as_ref(), Some(&b));
    // Nothing after the newest event, nothing before the create event.
    assert_eq!(found(&alice, &room, b_ts + 1, "f").await, None);
    let (_, state) = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)))
        .await;
    let create_ts = state
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.room.create")
        .unwrap()["origin_server_ts"]
        .as_u64()
        .unwrap();
    assert_eq!(found(&alice, &room, create_ts - 1, "b").await, None);
    assert!(found(&alice, &room, create_ts, "b").await.is_some());

    // Someone who is not in the room may not ask, public room or not.
    let bob = server.register("bob").await;
    assert_error(&lookup(&bob, &room, a_ts, "f").await, 403, "M_FORBIDDEN");
    let (private, _) = room_with_two_messages(&alice, "private_chat").await;
    assert_error(&lookup(&bob, &private, a_ts, "f").await, 403, "M_FORBIDDEN");

    // With `joined` visibility from the start, a later member does not find what was said before
    // they were invited, and the first event looking forwards is about their own membership.
    let hidden = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" }
            }]
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let secret = alice.send_text(&hidden, "s", "before bob").await;
    let secret_ts = ts_of(&alice, &hidden, &secret).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let bob_id = bob.user_id().await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&hidden)),
            json!({ "user_id": bob_id }),
        )
        .await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&hidden)),
        json!({}),
    )
    .await;
    assert_eq!(
        found(&alice, &hidden, secret_ts, "b").await,
        Some(secret.clone())
    );
    // Bob sees the room's first events (sent before the visibility became `joined`), not the
    // message.
    let bobs = found(&bob, &hidden, secret_ts, "b").await.unwrap();
    assert_ne!(bobs, secret);
    let event = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&hidden),
            enc(&bobs)
        ))
        .await;
    assert!(event["state_key"].is_string(), "{event}");
    assert_ne!(event["type"], "m.room.history_visibility", "{event}");
    let after = found(&bob, &hidden, secret_ts, "f").await.unwrap();
    let event = bob
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&hidden),
            enc(&after)
        ))
        .await;
    assert_eq!(
        (&event["type"], &event["state_key"]),
        (&json!("m.room.member"), &json!(bob_id)),
        "{event}"
    );

    // Bad parameters.
    let path = |query: &str| {
        format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?{query}",
            enc(&room)
        )
    };
    assert_error(&alice.get(&path("dir=f")).await, 400, "M_MISSING_PARAM");
    assert_error(&alice.get(&path("ts=1")).await, 400, "M_MISSING_PARAM");
    assert_error(
        &alice.get(&path("ts=1&dir=x")).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.get(&path("ts=-1&dir=f")).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.get(&path("ts=soon&dir=b")).await,
        400,
        "M_INVALID_PARAM",
    );
    let (status, _) = server
        .client()
        .get(&path(&format!("ts={a_ts}&dir=f")))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timestamp_to_event_asks_the_resident_server_for_older_history() {
    let (ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let (room, [(a, a_ts), (b, b_ts)]) = room_with_two_messages(&alice, "public_chat").await;

    // Before anyone of hs2 is in the room, hs1 answers hs2 nothing.
    let federation_path = |ts: u64, dir: &str| {
        format!(
            "/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir={dir}",
            enc(&room)
        )
    };
    let refused = signed(
        &ca,
        &hs2,
        &hs1,
        http::Method::GET,
        &federation_path(a_ts, "f"),
        None,
    )
    .await;
    assert_error(&refused, 403, "M_FORBIDDEN");

    let charlie = hs2.register("charlie").await;
    join_via(&charlie, &room, &hs1).await;
    // hs2 holds only the join state and charlie's join: A and B come from hs1.
    assert!(hs2
        .services
        .rooms
        .timeline
        .get_pdu_id(&ruma::OwnedEventId::try_from(a.as_str()).unwrap())
        .unwrap()
        .is_none());
    assert_eq!(found(&charlie, &room, a_ts - 1, "f").await, Some(a.clone()));
    assert_eq!(found(&charlie, &room, b_ts + 1, "b").await, Some(b.clone()));
    // The event found is stored on hs2 now, so charlie can take /context from it.
    let context = charlie
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/context/{}?limit=0",
            enc(&room),
            enc(&b)
        ))
        .await;
    assert_eq!(context["event"]["event_id"], b, "{context}");
    // And paginate back from there: A, behind B, comes by backfill.
    let messages = charlie
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100&from={}",
            enc(&room),
            enc(context["end"].as_str().unwrap())
        ))
        .await;
    let ids: Vec<&str> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["event_id"].as_str())
        .collect();
    assert!(
        ids.contains(&a.as_str()) && ids.contains(&b.as_str()),
        "{messages}"
    );

    // The federation endpoint answers from hs1's own timeline, with the same bad-input errors.
    let (status, answer) = signed(
        &ca,
        &hs2,
        &hs1,
        http::Method::GET,
        &federation_path(b_ts, "b"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({ "event_id": b, "origin_server_ts": b_ts }));
    let latest = alice.send_text(&room, "late", "late").await;
    let latest_ts = ts_of(&alice, &room, &latest).await;
    let none = signed(
        &ca,
        &hs2,
        &hs1,
        http::Method::GET,
        &federation_path(latest_ts + 10_000, "f"),
        None,
    )
    .await;
    assert_error(&none, 404, "M_NOT_FOUND");
    let bad = signed(
        &ca,
        &hs2,
        &hs1,
        http::Method::GET,
        &federation_path(b_ts, "up"),
        None,
    )
    .await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn events_from_before_the_timestamp_index_are_indexed_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let alice = server.register("alice").await;
    let token = alice.token.clone();
    let (room, [(a, a_ts), _]) = room_with_two_messages(&alice, "private_chat").await;
    server.stop().await;
    // A database as an older version left it: the same events, no timestamp index.
    {
        let db = plait::store::Db::open(dir.path(), false).unwrap();
        let tree = db.tree("roomtsdepthcount_");
        let keys: Vec<Vec<u8>> = tree
            .iter_from(&[], false)
            .map(|entry| entry.unwrap().0.to_vec())
            .collect();
        assert!(!keys.is_empty());
        for key in keys {
            tree.remove(&key).unwrap();
        }
    }
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let mut alice = server.client();
    alice.token = token;
    assert_eq!(found(&alice, &room, a_ts, "f").await, Some(a));
}
