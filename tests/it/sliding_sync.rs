//! Simplified sliding sync (MSC4186) over HTTP: lists, rooms, timelines, extensions, long-polls
//! and bad input.

use std::time::{Duration, Instant};

use ruma::api::{client::sync::sync_events::v5, IncomingResponse};
use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};
use crate::e2ee::device_keys;

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// A sliding-sync request that must succeed; its body must also parse as ruma's response.
pub(crate) async fn slide(client: &Client, pos: Option<&str>, body: Value) -> Value {
    let (status, response) = slide_raw(client, pos, None, body).await;
    assert_eq!(status, 200, "{response}");
    let http = http::Response::builder()
        .status(200)
        .body(serde_json::to_vec(&response).unwrap())
        .unwrap();
    v5::Response::try_from_http_response(http).expect("a valid sliding-sync response");
    response
}

pub(crate) async fn slide_raw(
    client: &Client,
    pos: Option<&str>,
    timeout: Option<u64>,
    body: Value,
) -> (u16, Value) {
    let mut query = Vec::new();
    if let Some(pos) = pos {
        query.push(format!("pos={}", enc(pos)));
    }
    if let Some(timeout) = timeout {
        query.push(format!("timeout={timeout}"));
    }
    let path = if query.is_empty() {
        PATH.to_owned()
    } else {
        format!("{PATH}?{}", query.join("&"))
    };
    client.post(&path, body).await
}

/// One list `all` over `range` with `timeline_limit` and `required_state`.
pub(crate) fn list(range: (u64, u64), timeline_limit: u64, required_state: Value) -> Value {
    json!({ "lists": { "all": {
        "ranges": [[range.0, range.1]],
        "timeline_limit": timeline_limit,
        "required_state": required_state,
    } } })
}

/// The room IDs of a response, sorted.
pub(crate) fn room_ids(response: &Value) -> Vec<String> {
    let mut ids: Vec<String> = response["rooms"]
        .as_object()
        .map(|rooms| rooms.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The message bodies of a room's timeline.
pub(crate) fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

/// A server with a first user (who becomes the admin and gets the admin room's invite) already
/// registered, so that the test's users have only their own rooms.
pub(crate) async fn server() -> TestServer {
    let server = TestServer::start().await;
    server.register("first").await;
    server
}

#[tokio::test]
async fn versions_advertise_simplified_sliding_sync() {
    let server = TestServer::start().await;
    let versions = server.client().get_ok("/_matrix/client/versions").await;
    assert_eq!(
        versions["unstable_features"]["org.matrix.simplified_msc3575"], true,
        "{versions}"
    );
    // Element X's OAuth sign-in needs v1.15 (the OAuth 2.0 API and room summaries).
    let listed = versions["versions"].as_array().unwrap();
    assert!(
        listed.iter().any(|version| version == "v1.15"),
        "{versions}"
    );
}

#[tokio::test]
async fn lists_order_rooms_by_recency_with_counts_and_windows() {
    let server = server().await;
    let alice = server.register("alice").await;
    let a = alice.create_room(json!({"name": "A"})).await;
    let b = alice.create_room(json!({"name": "B"})).await;
    let c = alice.create_room(json!({"name": "C"})).await;
    alice.send_text(&a, "t1", "newest in a").await;
    // A state change does not bump: b stays below c.
    alice
        .put_ok(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&b)),
            json!({"topic": "quiet"}),
        )
        .await;
    let body = list((0, 1), 1, json!([["m.room.name", ""]]));
    let first = slide(&alice, None, body).await;
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    let mut expected = vec![a.clone(), c.clone()];
    expected.sort();
    assert_eq!(room_ids(&first), expected);
    let room_a = &first["rooms"][&a];
    let room_c = &first["rooms"][&c];
    assert!(room_a["bump_stamp"].as_u64() > room_c["bump_stamp"].as_u64());
    assert_eq!(room_a["initial"], true);
    assert_eq!(room_a["name"], "A");
    assert_eq!(bodies(room_a), ["newest in a"]);
    assert_eq!(room_a["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(room_a["limited"], true);
    assert_eq!(room_a["num_live"], 0);
    assert_eq!(room_a["joined_count"], 1);
    assert_eq!(room_a["membership"], "join");
    let state = room_a["required_state"].as_array().unwrap();
    assert_eq!(state.len(), 1, "{room_a}");
    assert_eq!(state[0]["type"], "m.room.name");
    assert_eq!(state[0]["content"]["name"], "A");
    // The next window brings b, new to the connection; a and c have no news.
    let pos = first["pos"].as_str().unwrap();
    let body = list((0, 2), 1, json!([["m.room.name", ""]]));
    let second = slide(&alice, Some(pos), body).await;
    assert_eq!(room_ids(&second), vec![b.clone()]);
    assert_eq!(second["rooms"][&b]["initial"], true);
    assert_eq!(second["rooms"][&b]["timeline"][0]["type"], "m.room.topic");
    assert_ne!(second["pos"], first["pos"]);
}

#[tokio::test]
async fn incremental_responses_carry_news_and_long_polls_wake_on_it() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "chat"}))
        .await;
    bob.join(&room).await;
    let body = list((0, 9), 5, json!([]));
    let first = slide(&alice, None, body.clone()).await;
    let pos = first["pos"].as_str().unwrap().to_owned();
    // Nothing new: the long-poll times out with the same pos and no rooms.
    let started = Instant::now();
    let (status, quiet) = slide_raw(&alice, Some(&pos), Some(300), body.clone()).await;
    assert_eq!(status, 200, "{quiet}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(quiet["pos"], pos.as_str());
    assert!(room_ids(&quiet).is_empty(), "{quiet}");
    // A message wakes a waiting request.
    let waiting = {
        let alice = alice.clone();
        let (pos, body) = (pos.clone(), body.clone());
        tokio::spawn(async move { slide_raw(&alice, Some(&pos), Some(20_000), body).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    bob.send_text(&room, "t1", "hello").await;
    let (status, woken) = waiting.await.unwrap();
    assert_eq!(status, 200, "{woken}");
    assert!(started.elapsed() < Duration::from_secs(5), "not woken");
    assert_eq!(room_ids(&woken), vec![room.clone()]);
    let entry = &woken["rooms"][&room];
    assert_eq!(bodies(entry), ["hello"]);
    assert_eq!(entry["timeline"].as_array().unwrap().len(), 1, "{entry}");
    assert_eq!(entry["num_live"], 1);
    assert_eq!(entry["limited"], false);
    assert!(entry.get("initial").is_none(), "{entry}");
    assert_eq!(entry["notification_count"], 1);
    // Reading the room clears the count, which re-sends the room with no timeline.
    let event_id = entry["timeline"][0]["event_id"].as_str().unwrap();
    alice
        .post_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(event_id)
            ),
            json!({}),
        )
        .await;
    let read = slide(&alice, woken["pos"].as_str(), body).await;
    assert_eq!(read["rooms"][&room]["notification_count"], 0, "{read}");
    assert!(bodies(&read["rooms"][&room]).is_empty());
}

#[tokio::test]
async fn a_repeated_pos_answers_the_same() {
    let server = server().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let body = list((0, 9), 10, json!([]));
    let first = slide(&alice, None, body.clone()).await;
    let pos = first["pos"].as_str().unwrap();
    alice.send_text(&room, "t1", "one").await;
    let answer = slide(&alice, Some(pos), body.clone()).await;
    let retry = slide(&alice, Some(pos), body.clone()).await;
    assert_eq!(bodies(&answer["rooms"][&room]), ["one"]);
    // The same answer, but for the events' age, which is the time since they were sent.
    let without_age = |response: &Value| {
        let mut rooms = response["rooms"].clone();
        for event in rooms[&room]["timeline"].as_array_mut().unwrap() {
            event["unsigned"].as_object_mut().unwrap().remove("age");
        }
        rooms
    };
    assert_eq!(without_age(&answer), without_age(&retry));
    // Both new positions work; from either, nothing is new.
    for response in [&answer, &retry] {
        let (status, next) =
            slide_raw(&alice, response["pos"].as_str(), Some(0), body.clone()).await;
        assert_eq!(status, 200, "{next}");
        assert!(room_ids(&next).is_empty(), "{next}");
    }
}

#[tokio::test]
async fn bad_input_gets_matrix_errors() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let body = list((0, 9), 1, json!([]));
    let bobs = slide(&bob, None, body.clone()).await;
    let bobs_pos = bobs["pos"].as_str().unwrap();
    // Another user's pos, an unknown one, one of another connection and garbage.
    assert_error(
        &slide_raw(&alice, Some(bobs_pos), None, body.clone()).await,
        400,
        "M_UNKNOWN_POS",
    );
    assert_error(
        &slide_raw(&alice, Some("99999999"), None, body.clone()).await,
        400,
        "M_UNKNOWN_POS",
    );
    assert_error(
        &slide_raw(&alice, Some("s1_2"), None, body.clone()).await,
        400,
        "M_UNKNOWN_POS",
    );
    let mut other = body.clone();
    other["conn_id"] = json!("encryption");
    assert_error(
        &slide_raw(&bob, Some(bobs_pos), None, other).await,
        400,
        "M_UNKNOWN_POS",
    );
    // Ranges out of order or too wide.
    let reversed = json!({ "lists": { "all": { "ranges": [[5, 2]], "timeline_limit": 1 } } });
    assert_error(
        &slide_raw(&alice, None, None, reversed).await,
        400,
        "M_INVALID_PARAM",
    );
    let huge =
        json!({ "lists": { "all": { "ranges": [[0, 1_000_000_000u64]], "timeline_limit": 1 } } });
    assert_error(
        &slide_raw(&alice, None, None, huge).await,
        400,
        "M_INVALID_PARAM",
    );
    // Filter values of the wrong kind.
    for filters in [
        json!({"is_dm": "yes"}),
        json!({"room_types": [5]}),
        json!({"spaces": ["not a room id"]}),
        json!({"tags": "m.favourite"}),
        json!({"not_tags": [1]}),
    ] {
        let request = json!({ "lists": { "all": { "ranges": [[0, 1]], "timeline_limit": 1, "filters": filters } } });
        assert_error(
            &slide_raw(&alice, None, None, request).await,
            400,
            "M_BAD_JSON",
        );
    }
    let bad_range = json!({ "lists": { "all": { "ranges": [[-1, 2]], "timeline_limit": 1 } } });
    assert_error(
        &slide_raw(&alice, None, None, bad_range).await,
        400,
        "M_BAD_JSON",
    );
    let bad_state = json!({ "lists": { "all": { "ranges": [[0, 2]], "timeline_limit": 1, "required_state": [["m.room.name"]] } } });
    assert_error(
        &slide_raw(&alice, None, None, bad_state).await,
        400,
        "M_BAD_JSON",
    );
    let bad_since = json!({ "extensions": { "to_device": { "enabled": true, "since": "abc" } } });
    assert_error(
        &slide_raw(&alice, None, None, bad_since).await,
        400,
        "M_INVALID_PARAM",
    );
    let (status, _) = alice.post(&format!("{PATH}?timeout=soon"), json!({})).await;
    assert_eq!(status, 400);
    // A required_state too long to merge cheaply, in a list or a subscription.
    let entries: Vec<Value> = (0..1001)
        .map(|index| json!([format!("org.example.{index}"), ""]))
        .collect();
    let long_state = list((0, 1), 1, json!(entries));
    assert_error(
        &slide_raw(&alice, None, None, long_state).await,
        400,
        "M_INVALID_PARAM",
    );
    let subscription = json!({ "room_subscriptions": { "!room:localhost": { "timeline_limit": 1, "required_state": entries } } });
    assert_error(
        &slide_raw(&alice, None, None, subscription).await,
        400,
        "M_INVALID_PARAM",
    );
    // Filter values the server does not know match nothing, and unknown filters are ignored.
    let unknown = json!({ "lists": {
        "odd_type": { "ranges": [[0, 9]], "timeline_limit": 1, "filters": {"room_types": ["org.example.unknown"]} },
        "odd_filter": { "ranges": [[0, 9]], "timeline_limit": 1, "filters": {"org.example.filter": true} },
    } });
    let (status, answer) = slide_raw(&alice, None, None, unknown).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["lists"]["odd_type"]["count"], 0);
    // The server still serves.
    slide(&alice, None, body).await;
}

#[tokio::test]
async fn list_filters_pick_their_rooms() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_id = alice.user_id().await;
    let plain = alice.create_room(json!({})).await;
    let dm = alice
        .create_room(json!({"is_direct": true, "invite": ["@bob:localhost"]}))
        .await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.direct",
                enc(&alice_id)
            ),
            json!({"@bob:localhost": [dm]}),
        )
        .await;
    let encrypted = alice
        .create_room(json!({"initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}))
        .await;
    let space = alice
        .create_room(json!({"creation_content": {"type": "m.space"}}))
        .await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(&space),
                enc(&plain)
            ),
            json!({"via": ["localhost"]}),
        )
        .await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/m.favourite",
                enc(&alice_id),
                enc(&encrypted)
            ),
            json!({}),
        )
        .await;
    let invited = bob.create_room(json!({"invite": [alice_id]})).await;
    let filtered =
        |filters: Value| json!({ "ranges": [[0, 20]], "timeline_limit": 0, "filters": filters });
    let request = json!({ "lists": {
        "dm": filtered(json!({"is_dm": true})),
        "not_dm": filtered(json!({"is_dm": false})),
        "encrypted": filtered(json!({"is_encrypted": true})),
        "invites": filtered(json!({"is_invite": true})),
        "spaces": filtered(json!({"room_types": ["m.space"]})),
        "no_spaces": filtered(json!({"not_room_types": ["m.space"], "is_invite": false})),
        "plain_rooms": filtered(json!({"room_types": [null], "is_invite": false})),
        "in_space": filtered(json!({"spaces": [space]})),
        "favourites": filtered(json!({"tags": ["m.favourite"]})),
        "not_favourites": filtered(json!({"not_tags": ["m.favourite"], "is_invite": false})),
    } });
    let response = slide(&alice, None, request).await;
    let count = |name: &str| response["lists"][name]["count"].as_u64().unwrap();
    assert_eq!(count("dm"), 1, "{response}");
    assert_eq!(count("not_dm"), 4);
    assert_eq!(count("encrypted"), 1);
    assert_eq!(count("invites"), 1);
    assert_eq!(count("spaces"), 1);
    assert_eq!(count("no_spaces"), 3);
    assert_eq!(count("plain_rooms"), 3);
    assert_eq!(count("in_space"), 1);
    assert_eq!(count("favourites"), 1);
    assert_eq!(count("not_favourites"), 3);
    let mut all = vec![plain, dm.clone(), encrypted, space, invited.clone()];
    all.sort();
    assert_eq!(room_ids(&response), all);
    assert_eq!(response["rooms"][&dm]["is_dm"], true);
    let invite = &response["rooms"][&invited];
    assert_eq!(invite["membership"], "invite");
    assert!(invite.get("timeline").is_none(), "{invite}");
    assert!(invite["invite_state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|event| event["type"] == "m.room.member" && event["state_key"] == alice_id.as_str()));
}

#[tokio::test]
async fn required_state_serves_lazy_members_me_and_wildcards() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    carol.join(&room).await;
    bob.send_text(&room, "t1", "from bob").await;
    let body = list(
        (0, 0),
        1,
        json!([
            ["m.room.member", "$LAZY"],
            ["m.room.member", "$ME"],
            ["m.room.create", ""]
        ]),
    );
    let response = slide(&alice, None, body).await;
    let state = response["rooms"][&room]["required_state"]
        .as_array()
        .unwrap();
    let mut members: Vec<&str> = state
        .iter()
        .filter(|event| event["type"] == "m.room.member")
        .map(|event| event["state_key"].as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["@alice:localhost", "@bob:localhost"]);
    assert_eq!(state.len(), 3, "{state:?}");
    // On a connection of its own: a request without pos starts its connection over.
    let mut wildcard = list((0, 0), 1, json!([["*", "*"]]));
    wildcard["conn_id"] = json!("wildcard");
    let everything = slide(&alice, None, wildcard).await;
    let room_state = alice
        .get_ok(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)))
        .await;
    assert_eq!(
        everything["rooms"][&room]["required_state"]
            .as_array()
            .unwrap()
            .len(),
        room_state.as_array().unwrap().len()
    );
    // An incremental response carries only the state that changed.
    let pos = response["pos"].as_str().unwrap();
    alice
        .put_ok(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            json!({"name": "renamed"}),
        )
        .await;
    let body = list(
        (0, 0),
        1,
        json!([
            ["m.room.member", "$LAZY"],
            ["m.room.member", "$ME"],
            ["m.room.create", ""],
            ["m.room.name", ""]
        ]),
    );
    // A changed required_state sends the room in full again.
    let changed = slide(&alice, Some(pos), body.clone()).await;
    assert_eq!(changed["rooms"][&room]["initial"], true);
    assert_eq!(changed["rooms"][&room]["name"], "renamed");
    alice
        .put_ok(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            json!({"name": "again"}),
        )
        .await;
    let delta = slide(&alice, changed["pos"].as_str(), body).await;
    let state = delta["rooms"][&room]["required_state"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = state
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap(),
                event["state_key"].as_str().unwrap(),
            )
        })
        .collect();
    // The name changed; alice sent the renaming event, so her member event comes as $LAZY.
    assert_eq!(
        kinds,
        [("m.room.member", "@alice:localhost"), ("m.room.name", "")]
    );
}

#[tokio::test]
async fn room_subscriptions_timelines_history_visibility_and_prev_batch() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await;
    for index in 0..3 {
        alice
            .send_text(&room, &format!("before{index}"), &format!("before {index}"))
            .await;
    }
    bob.join(&room).await;
    for index in 0..4 {
        alice
            .send_text(&room, &format!("after{index}"), &format!("after {index}"))
            .await;
    }
    let other = bob.create_room(json!({})).await;
    bob.send_text(&other, "o", "newer elsewhere").await;
    // The list shows only `other`; the subscription brings `room` with up to 20 events.
    let request = json!({
        "lists": { "all": { "ranges": [[0, 0]], "timeline_limit": 1 } },
        "room_subscriptions": { room.clone(): { "timeline_limit": 20, "required_state": [] } },
    });
    let response = slide(&bob, None, request).await;
    let mut expected = vec![room.clone(), other.clone()];
    expected.sort();
    assert_eq!(room_ids(&response), expected);
    let entry = &response["rooms"][&room];
    // History from before bob joined stays hidden (history_visibility joined).
    assert_eq!(bodies(entry), ["after 0", "after 1", "after 2", "after 3"]);
    // A window of 2 leaves earlier events to /messages from prev_batch.
    let narrow = json!({ "room_subscriptions": { room.clone(): { "timeline_limit": 2 } } });
    let narrow = slide(&alice, None, narrow).await;
    let entry = &narrow["rooms"][&room];
    assert_eq!(bodies(entry), ["after 2", "after 3"]);
    assert_eq!(entry["limited"], true);
    let prev_batch = entry["prev_batch"].as_str().unwrap();
    let page = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3&from={}",
            enc(&room),
            enc(prev_batch)
        ))
        .await;
    let earlier: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(earlier, ["after 1", "after 0"], "{page}");
    // A room the user is not in is not served.
    let stranger = server.register("stranger").await;
    let foreign = json!({ "room_subscriptions": { room.clone(): { "timeline_limit": 5 } } });
    let none = slide(&stranger, None, foreign).await;
    assert!(room_ids(&none).is_empty(), "{none}");
}

#[tokio::test]
async fn a_left_room_is_sent_once_with_its_leave() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let body = list((0, 9), 3, json!([]));
    let first = slide(&bob, None, body.clone()).await;
    assert_eq!(room_ids(&first), vec![room.clone()]);
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    let left = slide(&bob, first["pos"].as_str(), body.clone()).await;
    let entry = &left["rooms"][&room];
    assert_eq!(entry["membership"], "leave", "{left}");
    let last = entry["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["type"], "m.room.member");
    assert_eq!(last["content"]["membership"], "leave");
    assert_eq!(left["lists"]["all"]["count"], 0);
    let after = slide(&bob, left["pos"].as_str(), body).await;
    assert!(room_ids(&after).is_empty(), "{after}");
}

#[tokio::test]
async fn to_device_and_e2ee_extensions() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let whoami = alice.get_ok("/_matrix/client/v3/account/whoami").await;
    let (alice_id, alice_device) = (
        whoami["user_id"].as_str().unwrap().to_owned(),
        whoami["device_id"].as_str().unwrap().to_owned(),
    );
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys(&alice_id, &alice_device, "identity"),
                "one_time_keys": { "signed_curve25519:AAAA": { "key": "otk1" }, "signed_curve25519:AAAB": { "key": "otk2" } },
                "fallback_keys": { "signed_curve25519:FFFF": { "key": "fallback", "fallback": true } },
            }),
        )
        .await;
    bob.put_ok(
        "/_matrix/client/v3/sendToDevice/m.test/txn1",
        json!({"messages": {alice_id.clone(): {alice_device.clone(): {"secret": 1}}}}),
    )
    .await;
    let extensions = |since: Option<&str>| {
        let mut to_device = json!({"enabled": true});
        if let Some(since) = since {
            to_device["since"] = json!(since);
        }
        json!({ "conn_id": "encryption", "extensions": { "to_device": to_device, "e2ee": {"enabled": true} } })
    };
    let first = slide(&alice, None, extensions(None)).await;
    let to_device = &first["extensions"]["to_device"];
    assert_eq!(to_device["events"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(to_device["events"][0]["type"], "m.test");
    assert_eq!(to_device["events"][0]["content"]["secret"], 1);
    let e2ee = &first["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"], 2,
        "{e2ee}"
    );
    assert_eq!(
        e2ee["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    let next_batch = to_device["next_batch"].as_str().unwrap().to_owned();
    // Not acknowledged yet: a retry without the new since gets the message again.
    let retry = slide(&alice, None, extensions(None)).await;
    assert_eq!(
        retry["extensions"]["to_device"]["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let pos = retry["pos"].as_str().unwrap().to_owned();
    // Bob's new device changes his device list, which alice shares a room with.
    let bob_id = bob.user_id().await;
    upload_device_keys(&bob, &bob_id, "bob-identity").await;
    let (status, acknowledged) = slide_raw(
        &alice,
        Some(&pos),
        Some(5000),
        extensions(Some(&next_batch)),
    )
    .await;
    assert_eq!(status, 200, "{acknowledged}");
    assert!(
        acknowledged["extensions"]["to_device"]["events"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{acknowledged}"
    );
    assert_eq!(
        acknowledged["extensions"]["e2ee"]["device_lists"]["changed"],
        json!([bob_id])
    );
    // The acknowledged message is gone for /sync too.
    let sync = alice.get_ok("/_matrix/client/v3/sync").await;
    assert!(
        sync["to_device"]["events"].as_array().unwrap().is_empty(),
        "{sync}"
    );
}

/// Uploads device keys for the client's own device, which changes its user's device list.
async fn upload_device_keys(client: &Client, user_id: &str, identity: &str) {
    let device = client.get_ok("/_matrix/client/v3/account/whoami").await["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    client
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(user_id, &device, identity) }),
        )
        .await;
}

/// A room without a name comes with its heroes, its avatar, its joined and invited counts and
/// its highlight count; a user who no longer shares a room is in the e2ee extension's `left`.
#[tokio::test]
async fn room_fields_heroes_avatar_counts_and_a_left_device_list() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let (alice_id, bob_id, carol_id) = (
        alice.user_id().await,
        bob.user_id().await,
        carol.user_id().await,
    );
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob_id, carol_id]}))
        .await;
    bob.join(&room).await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.avatar/",
                enc(&room)
            ),
            json!({"url": "mxc://example.org/avatar"}),
        )
        .await;
    upload_device_keys(&bob, &bob_id, "bob-identity").await;
    bob.put_ok(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/m1",
            enc(&room)
        ),
        json!({"msgtype": "m.text", "body": "alice, look", "m.mentions": {"user_ids": [alice_id]}}),
    )
    .await;
    let mut body = list((0, 9), 5, json!([]));
    body["extensions"] = json!({"e2ee": {"enabled": true}});
    let first = slide(&alice, None, body.clone()).await;
    let entry = &first["rooms"][&room];
    let heroes: Vec<&str> = entry["heroes"]
        .as_array()
        .unwrap_or_else(|| panic!("no heroes: {entry}"))
        .iter()
        .filter_map(|hero| hero["user_id"].as_str())
        .collect();
    assert!(heroes.contains(&bob_id.as_str()), "{entry}");
    assert!(!heroes.contains(&alice_id.as_str()), "{entry}");
    assert_eq!(entry["avatar"], "mxc://example.org/avatar", "{entry}");
    assert_eq!(entry["joined_count"], 2, "{entry}");
    assert_eq!(entry["invited_count"], 1, "{entry}");
    assert_eq!(entry["highlight_count"], 1, "{entry}");
    assert_eq!(entry["notification_count"], 1, "{entry}");
    // Bob leaves the only room he shares with alice: his devices are no longer her concern.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    let next = slide(&alice, first["pos"].as_str(), body).await;
    let left = &next["extensions"]["e2ee"]["device_lists"]["left"];
    assert_eq!(*left, json!([bob_id]), "{next}");
}

#[tokio::test]
async fn account_data_receipts_and_typing_extensions() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_id = alice.user_id().await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let event = bob.send_text(&room, "t1", "hi").await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.global",
                enc(&alice_id)
            ),
            json!({"a": 1}),
        )
        .await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.room",
                enc(&alice_id),
                enc(&room)
            ),
            json!({"b": 2}),
        )
        .await;
    bob.post_ok(
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(&event)
        ),
        json!({}),
    )
    .await;
    let mut body = list((0, 9), 1, json!([]));
    body["extensions"] = json!({"account_data": {"enabled": true}, "receipts": {"enabled": true}, "typing": {"enabled": true}});
    let first = slide(&alice, None, body.clone()).await;
    let extensions = &first["extensions"];
    let global = extensions["account_data"]["global"].as_array().unwrap();
    assert!(
        global
            .iter()
            .any(|event| event["type"] == "org.example.global" && event["content"]["a"] == 1),
        "{extensions}"
    );
    assert!(global.iter().any(|event| event["type"] == "m.push_rules"));
    assert_eq!(
        extensions["account_data"]["rooms"][&room][0]["type"],
        "org.example.room"
    );
    let receipt = &extensions["receipts"]["rooms"][&room];
    assert_eq!(receipt["type"], "m.receipt");
    assert!(
        receipt["content"][&event]["m.read"]["@bob:localhost"]["ts"].is_u64(),
        "{receipt}"
    );
    // Typing reaches the next response; already-sent data does not come again.
    let pos = first["pos"].as_str().unwrap();
    bob.put_ok(
        &format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(&room),
            enc("@bob:localhost")
        ),
        json!({"typing": true, "timeout": 30000}),
    )
    .await;
    let (status, next) = slide_raw(&alice, Some(pos), Some(5000), body).await;
    assert_eq!(status, 200, "{next}");
    let extensions = &next["extensions"];
    assert_eq!(
        extensions["typing"]["rooms"][&room]["content"]["user_ids"],
        json!(["@bob:localhost"]),
        "{next}"
    );
    assert!(extensions["receipts"]["rooms"]
        .as_object()
        .unwrap()
        .is_empty());
    assert!(extensions["account_data"]["global"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// A piece of state the client was sent that leaves the room's state (a state reset, simulated
/// here by setting the room's current state back to before the topic was set) comes back as a
/// stub with `type` and `state_key` only.
#[tokio::test]
async fn removed_state_comes_as_a_stub() {
    let server = server().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let topic = alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
            json!({"topic": "soon gone"}),
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = list(
        (0, 0),
        1,
        json!([["m.room.topic", ""], ["m.room.create", ""]]),
    );
    let first = slide(&alice, None, body.clone()).await;
    let state = first["rooms"][&room]["required_state"].as_array().unwrap();
    assert!(state.iter().any(|event| event["type"] == "m.room.topic"));
    alice.send_text(&room, "t1", "after the topic").await;
    let services = &server.services;
    let room_id = ruma::RoomId::parse(&room).unwrap();
    let event_id = ruma::EventId::parse(&topic).unwrap();
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(&room_id)
        .unwrap()
        .unwrap();
    let shorteventid = services
        .rooms
        .short
        .get_shorteventid(&event_id)
        .unwrap()
        .unwrap();
    let (before_topic, _) = services
        .rooms
        .state
        .get_event_state(shorteventid)
        .unwrap()
        .unwrap();
    let mut batch = plait::store::Batch::default();
    services
        .rooms
        .state
        .set_room_state(shortroomid, before_topic, &mut batch);
    services.rooms.timeline.write(batch).unwrap();
    let next = slide(&alice, first["pos"].as_str(), body).await;
    let state = next["rooms"][&room]["required_state"].as_array().unwrap();
    assert_eq!(
        state,
        &vec![json!({"type": "m.room.topic", "state_key": ""})],
        "{next}"
    );
}

/// The room-scoped extensions cover only the rooms of the lists and subscriptions they name.
#[tokio::test]
async fn extensions_cover_the_lists_and_rooms_they_name() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_id = alice.user_id().await;
    let older = alice.create_room(json!({"preset": "public_chat"})).await;
    let newer = alice.create_room(json!({"preset": "public_chat"})).await;
    for room in [&older, &newer] {
        bob.join(room).await;
        let event = bob.send_text(room, "t", "hi").await;
        bob.post_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room),
                enc(&event)
            ),
            json!({}),
        )
        .await;
        alice
            .put_ok(
                &format!(
                    "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.room",
                    enc(&alice_id),
                    enc(room)
                ),
                json!({"b": 2}),
            )
            .await;
    }
    let rooms_of = |response: &Value, extension: &str| {
        let mut ids: Vec<String> = response["extensions"][extension]["rooms"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    };
    let lists = json!({
        "top": { "ranges": [[0, 0]], "timeline_limit": 1 },
        "next": { "ranges": [[1, 1]], "timeline_limit": 1 },
    });
    // By default, every list's rooms.
    let all = slide(
        &alice,
        None,
        json!({ "lists": lists, "extensions": { "receipts": { "enabled": true } } }),
    )
    .await;
    let mut both = vec![older.clone(), newer.clone()];
    both.sort();
    assert_eq!(rooms_of(&all, "receipts"), both, "{all}");
    // Only the list `next` (the older room), and no subscriptions.
    let scoped = slide(
        &alice,
        None,
        json!({ "lists": lists, "extensions": {
            "receipts": { "enabled": true, "lists": ["next"], "rooms": [] },
            "account_data": { "enabled": true, "lists": ["next"], "rooms": [] },
        } }),
    )
    .await;
    assert_eq!(rooms_of(&scoped, "receipts"), [older.as_str()], "{scoped}");
    assert_eq!(rooms_of(&scoped, "account_data"), [older.as_str()]);
    // No list, but the subscription to the newer room through `*`.
    let subscribed = slide(
        &alice,
        None,
        json!({
            "lists": lists,
            "room_subscriptions": { newer.clone(): { "timeline_limit": 1 } },
            "extensions": { "receipts": { "enabled": true, "lists": [], "rooms": ["*"] } },
        }),
    )
    .await;
    assert_eq!(
        rooms_of(&subscribed, "receipts"),
        [newer.as_str()],
        "{subscribed}"
    );
}

/// A room the user knocked on is listed, with the stripped state it shows to knockers.
#[tokio::test]
async fn knocked_rooms_are_listed_with_their_knock_state() {
    let server = server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({"name": "knock here", "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}))
        .await;
    bob.post_ok(
        &format!("/_matrix/client/v3/knock/{}", enc(&room)),
        json!({"reason": "let me in"}),
    )
    .await;
    let body = list((0, 9), 1, json!([]));
    let response = slide(&bob, None, body).await;
    assert_eq!(response["lists"]["all"]["count"], 1, "{response}");
    let entry = &response["rooms"][&room];
    assert_eq!(entry["membership"], "knock", "{response}");
    assert_eq!(entry["name"], "knock here");
    let state = entry["knock_state"].as_array().unwrap();
    assert!(state
        .iter()
        .any(|event| event["type"] == "m.room.join_rules"
            && event["content"]["join_rule"] == "knock"));
    assert!(entry.get("timeline").is_none(), "{entry}");
}
