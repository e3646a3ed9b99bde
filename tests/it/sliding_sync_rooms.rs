//! Simplified sliding sync (MSC4186) over HTTP: which rooms a list window holds as they get news
//! (the `bump_stamp` order, across a restart), and rooms resent with a longer timeline
//! (`expanded_timeline`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{enc, Client, TestServer};
use crate::sliding_sync::{bodies, list, room_ids, server, slide, slide_raw};

/// A room's `bump_stamp` in a response.
fn bump(response: &Value, room: &str) -> u64 {
    response["rooms"][room]["bump_stamp"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bump_stamp for {room} in {response}"))
}

/// Reacts to `event_id` in `room` (an `m.reaction`, which is not a bump event).
async fn react(client: &Client, room: &str, txn: &str, event_id: &str) {
    client
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.reaction/{txn}",
                enc(room)
            ),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": "👍"}}),
        )
        .await;
}

/// An incremental response that must answer at once.
async fn slide_now(client: &Client, pos: &Value, body: Value) -> Value {
    let (status, response) = slide_raw(client, pos.as_str(), Some(0), body).await;
    assert_eq!(status, 200, "{response}");
    response
}

#[tokio::test]
async fn a_message_moves_its_room_to_the_top_and_a_reaction_does_not() {
    let server = server().await;
    let alice = server.register("alice").await;
    let a = alice.create_room(json!({"name": "A"})).await;
    let b = alice.create_room(json!({"name": "B"})).await;
    let old_in_b = alice.send_text(&b, "b0", "old in b").await;
    let c = alice.create_room(json!({"name": "C"})).await;
    let old_in_c = alice.send_text(&c, "c0", "old in c").await;
    // Newest first: c, b, a; the window shows two.
    let body = list((0, 1), 1, json!([]));
    let first = slide(&alice, None, body.clone()).await;
    let mut expected = vec![b.clone(), c.clone()];
    expected.sort();
    assert_eq!(room_ids(&first), expected);
    let c_stamp = bump(&first, &c);
    assert!(c_stamp > bump(&first, &b));
    // A message in a moves it to the top, into the window, above c.
    alice.send_text(&a, "a1", "news in a").await;
    let second = slide_now(&alice, &first["pos"], body.clone()).await;
    assert_eq!(room_ids(&second), vec![a.clone()], "{second}");
    assert_eq!(second["rooms"][&a]["initial"], true);
    let a_stamp = bump(&second, &a);
    assert!(a_stamp > c_stamp);
    assert_eq!(second["lists"]["all"]["count"], 3);
    // Reactions move nothing: b stays out of the window, and c (in it) is sent with its
    // reaction and its old stamp.
    react(&alice, &b, "r1", &old_in_b).await;
    react(&alice, &c, "r2", &old_in_c).await;
    let third = slide_now(&alice, &second["pos"], body.clone()).await;
    assert_eq!(room_ids(&third), vec![c.clone()], "{third}");
    assert_eq!(bump(&third, &c), c_stamp);
    let kinds: Vec<&str> = third["rooms"][&c]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["type"].as_str())
        .collect();
    assert_eq!(kinds, ["m.reaction"]);
    // A message in b brings it to the top again.
    alice.send_text(&b, "b1", "news in b").await;
    let fourth = slide_now(&alice, &third["pos"], body.clone()).await;
    assert_eq!(room_ids(&fourth), vec![b.clone()], "{fourth}");
    let b_stamp = bump(&fourth, &b);
    assert!(b_stamp > a_stamp);

    // After a restart the stamps are read from the rooms' timelines: the same order.
    let dir = server.stop().await.unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let alice = Client {
        base: server.base.clone(),
        ..alice
    };
    let restarted = slide(&alice, None, list((0, 2), 1, json!([]))).await;
    assert_eq!(bump(&restarted, &b), b_stamp);
    assert_eq!(bump(&restarted, &a), a_stamp);
    assert_eq!(bump(&restarted, &c), c_stamp);
}

#[tokio::test]
async fn a_longer_timeline_resends_the_room_at_once_with_expanded_timeline() {
    let server = server().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({"name": "R"})).await;
    for index in 0..5 {
        alice
            .send_text(&room, &format!("m{index}"), &format!("m{index}"))
            .await;
    }
    let state = json!([["m.room.name", ""]]);
    let first = slide(&alice, None, list((0, 0), 1, state.clone())).await;
    assert_eq!(bodies(&first["rooms"][&room]), ["m4"]);
    // A limit of 3: the room comes back at once, without waiting for news, with its latest 3
    // events (two the client has not seen), flagged, and with none of its unchanged state.
    let started = Instant::now();
    let (status, longer) = slide_raw(
        &alice,
        first["pos"].as_str(),
        Some(10_000),
        list((0, 0), 3, state.clone()),
    )
    .await;
    assert_eq!(status, 200, "{longer}");
    assert!(started.elapsed() < Duration::from_secs(5), "not at once");
    let entry = &longer["rooms"][&room];
    assert_eq!(bodies(entry), ["m2", "m3", "m4"], "{entry}");
    assert_eq!(entry["expanded_timeline"], true, "{entry}");
    assert_eq!(entry["unstable_expanded_timeline"], true, "{entry}");
    assert!(entry.get("initial").is_none(), "{entry}");
    assert_eq!(entry["limited"], true);
    assert_eq!(entry["num_live"], 0);
    assert!(
        entry["required_state"]
            .as_array()
            .is_none_or(|state| state.is_empty()),
        "{entry}"
    );
    // A shorter limit again is no news.
    let shorter = slide_now(&alice, &longer["pos"], list((0, 0), 1, state.clone())).await;
    assert!(room_ids(&shorter).is_empty(), "{shorter}");

    // A room entering a window with a larger limit: `top` shows the newest room with 3 events,
    // `rest` the others with 1.
    let other = alice.create_room(json!({"name": "S"})).await;
    alice.send_text(&other, "s0", "s0").await;
    let lists = json!({ "conn_id": "windows", "lists": {
        "top": { "ranges": [[0, 0]], "timeline_limit": 3, "required_state": state },
        "rest": { "ranges": [[1, 9]], "timeline_limit": 1, "required_state": state },
    } });
    let windows = slide(&alice, None, lists.clone()).await;
    assert_eq!(bodies(&windows["rooms"][&room]), ["m4"]);
    alice.send_text(&room, "m5", "m5").await;
    let moved = slide_now(&alice, &windows["pos"], lists.clone()).await;
    // The room moved to the top: its latest 3 events, one of them new; `other` moved down to a
    // smaller limit, which sends nothing.
    assert_eq!(room_ids(&moved), vec![room.clone()], "{moved}");
    let entry = &moved["rooms"][&room];
    assert_eq!(bodies(entry), ["m3", "m4", "m5"], "{entry}");
    assert_eq!(entry["expanded_timeline"], true, "{entry}");
    assert_eq!(entry["num_live"], 1);
    // Its next news is only the news.
    alice.send_text(&room, "m6", "m6").await;
    let news = slide_now(&alice, &moved["pos"], lists).await;
    let entry = &news["rooms"][&room];
    assert_eq!(bodies(entry), ["m6"], "{entry}");
    assert!(entry.get("expanded_timeline").is_none(), "{entry}");
}
