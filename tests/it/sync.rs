//! `/sync` over HTTP, and a stock client SDK (matrix-sdk, the SDK behind Element X) end to end.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

/// Uploads `filter` as `user_id`'s, checks that it reads back as it was sent, and returns its ID.
async fn upload_filter(client: &Client, user_id: &str, filter: &Value) -> String {
    let filter_id = client
        .post_ok(
            &format!("/_matrix/client/v3/user/{user_id}/filter"),
            filter.clone(),
        )
        .await["filter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/_matrix/client/v3/user/{user_id}/filter/{filter_id}");
    assert_eq!(&client.get_ok(&path).await, filter);
    filter_id
}

#[tokio::test]
async fn initial_and_incremental_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({"name": "chat", "invite": ["@bob:localhost"], "is_direct": true}))
        .await;
    let initial = bob.get_ok("/_matrix/client/v3/sync").await;
    let invite_state = &initial["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(
        invite_state
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["type"] == "m.room.name"),
        "{initial}"
    );
    // A local invite shows the create event whole too (spec v1.16, MSC4311).
    crate::federation::check_prejoin_state(invite_state.as_array().unwrap());
    let since = initial["next_batch"].as_str().unwrap().to_owned();
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    for index in 0..15 {
        alice
            .send_text(&room, &format!("m{index}"), &format!("message {index}"))
            .await;
    }
    let incremental = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    let joined = &incremental["rooms"]["join"][&room];
    assert_eq!(
        joined["timeline"]["limited"], true,
        "16 events > default limit 10"
    );
    assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 10);
    assert!(
        joined["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["type"] == "m.room.name"),
        "state fills the gap"
    );
    let prev_batch = joined["timeline"]["prev_batch"].as_str().unwrap();
    let earlier = bob
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5&from={prev_batch}",
            enc(&room)
        ))
        .await;
    assert_eq!(earlier["chunk"][0]["content"]["body"], "message 4");

    // A filtered initial sync with lazy-loaded members and a small timeline.
    let filter = json!({"room": {"timeline": {"limit": 2}, "state": {"lazy_load_members": true}}});
    let filter_id = upload_filter(&bob, "@bob:localhost", &filter).await;
    let filtered = bob
        .get_ok(&format!("/_matrix/client/v3/sync?filter={filter_id}"))
        .await;
    let joined = &filtered["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 2);
    let members: Vec<_> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.member")
        .collect();
    assert!(members
        .iter()
        .all(|event| event["state_key"] == "@alice:localhost"
            || event["state_key"] == "@bob:localhost"));
    assert_error(
        &bob.get("/_matrix/client/v3/sync?filter=nope").await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &bob.get("/_matrix/client/v3/sync?since=banana").await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &bob.get("/_matrix/client/v3/user/@alice:localhost/filter/x")
            .await,
        403,
        "M_FORBIDDEN",
    );
    // Filters whose fields have the wrong types are refused before they are stored.
    for bad in [
        json!({"room": {"timeline": "not_an_object"}}),
        json!({"room": {"timeline": {"types": [1]}}}),
        json!({"room": {"timeline": {"rooms": ["not_a_room_id"]}}}),
        json!({"room": {"timeline": {"senders": ["not_a_user_id"]}}}),
        json!({"event_fields": "not_a_list"}),
    ] {
        assert_error(
            &bob.post("/_matrix/client/v3/user/@bob:localhost/filter", bad)
                .await,
            400,
            "M_BAD_JSON",
        );
    }

    // Leaving shows up in the leave section of an incremental sync.
    let before_leave = bob.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    let after = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={before_leave}"))
        .await;
    assert!(after["rooms"]["leave"].get(&room).is_some(), "{after}");
}

#[tokio::test]
async fn long_poll_returns_when_a_message_arrives() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let since = alice.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiting = {
        let alice = alice.clone();
        let since = since.clone();
        tokio::spawn(async move {
            alice
                .get_ok(&format!(
                    "/_matrix/client/v3/sync?since={since}&timeout=30000"
                ))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "nothing happened yet, so the long-poll waits"
    );
    let event = alice.send_text(&room, "t", "wake up").await;
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken well before the timeout")
        .unwrap();
    assert_eq!(
        response["rooms"]["join"][&room]["timeline"]["events"][0]["event_id"],
        event.as_str()
    );
    // With nothing new, a short timeout returns an empty response.
    let next = response["next_batch"].as_str().unwrap();
    let empty = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={next}&timeout=100"))
        .await;
    assert!(empty["rooms"]["join"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn account_data_is_stored_and_synced() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let since = alice.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .put_ok(
            "/_matrix/client/v3/user/@alice:localhost/account_data/m.direct",
            json!({"@bob:localhost": [room]}),
        )
        .await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/user/@alice:localhost/rooms/{}/account_data/m.tag",
                enc(&room)
            ),
            json!({"tags": {"m.favourite": {}}}),
        )
        .await;
    assert_eq!(
        alice
            .get_ok("/_matrix/client/v3/user/@alice:localhost/account_data/m.direct")
            .await["@bob:localhost"][0],
        room.as_str()
    );
    assert_eq!(
        alice
            .get_ok(&format!(
                "/_matrix/client/v3/user/@alice:localhost/rooms/{}/account_data/m.tag",
                enc(&room)
            ))
            .await["tags"]["m.favourite"],
        json!({})
    );
    assert_error(
        &alice
            .get("/_matrix/client/v3/user/@alice:localhost/account_data/nothing")
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice
            .put(
                "/_matrix/client/v3/user/@bob:localhost/account_data/x",
                json!({}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice
            .put(
                "/_matrix/client/v3/user/@alice:localhost/account_data/m.fully_read",
                json!({}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    let sync = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    assert_eq!(sync["account_data"]["events"][0]["type"], "m.direct");
    assert_eq!(
        sync["rooms"]["join"][&room]["account_data"]["events"][0]["type"],
        "m.tag"
    );
}

/// Room account data keeps the type the client named, also one that ruma knows as an alias of an
/// unstable type (what keeps the room account data routes untyped), and a filter comes back as
/// it was sent (what keeps the filter routes untyped).
#[tokio::test]
async fn account_data_types_and_filters_are_kept_as_sent() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let path = format!(
        "/_matrix/client/v3/user/@alice:localhost/rooms/{}/account_data/m.space_order",
        enc(&room)
    );
    alice.put_ok(&path, json!({"order": "a"})).await;
    assert_eq!(alice.get_ok(&path).await, json!({"order": "a"}));
    let sync = alice.get_ok("/_matrix/client/v3/sync").await;
    assert_eq!(
        sync["rooms"]["join"][&room]["account_data"]["events"][0]["type"],
        "m.space_order"
    );

    let filter =
        json!({"event_format": "client", "room": {"include_leave": false, "timeline": {}}});
    upload_filter(&alice, "@alice:localhost", &filter).await;
    assert_error(
        &alice
            .post(
                "/_matrix/client/v3/user/@alice:localhost/filter",
                json!({"room": []}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn matrix_sdk_client_chats_through_plait() {
    use matrix_sdk::{
        config::SyncSettings,
        ruma::{
            api::client::room::create_room::v3::Request as CreateRoomRequest,
            events::room::message::RoomMessageEventContent, OwnedUserId,
        },
    };

    let server = TestServer::start().await;
    server.register("alice").await;
    server.register("bob").await;
    let alice = sdk_login(&server, "alice").await;
    let bob = sdk_login(&server, "bob").await;

    let room = alice.create_room(CreateRoomRequest::new()).await.unwrap();
    let bob_id = OwnedUserId::try_from("@bob:localhost").unwrap();
    room.invite_user_by_id(&bob_id).await.unwrap();
    bob.sync_once(SyncSettings::default()).await.unwrap();
    let invited = bob.get_room(room.room_id()).expect("bob sees the invite");
    invited.join().await.unwrap();

    room.send(RoomMessageEventContent::text_plain("hello from matrix-sdk"))
        .await
        .unwrap();
    let found = sdk_sees_text(&bob, room.room_id(), "hello from matrix-sdk", false).await;
    assert!(found, "bob receives alice's message");
}

#[tokio::test]
async fn long_poll_returns_when_an_invite_arrives() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({})).await;
    let since = bob.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.get_ok(&format!(
                "/_matrix/client/v3/sync?since={since}&timeout=30000"
            ))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "bob is in no room yet, so the long-poll waits"
    );
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({"user_id": "@bob:localhost"}),
        )
        .await;
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by the invite")
        .unwrap();
    assert!(
        response["rooms"]["invite"].get(&room).is_some(),
        "{response}"
    );
}

/// A matrix-sdk client of `server` logged in as `name` (password `password`, as
/// `TestServer::register` sets it).
pub async fn sdk_login(server: &TestServer, name: &str) -> matrix_sdk::Client {
    let client = matrix_sdk::Client::builder()
        .homeserver_url(&server.base)
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .login_username(name, "password")
        .send()
        .await
        .unwrap();
    client
}

/// Syncs a matrix-sdk client (up to 10 times) until a message containing `text` is in the room's
/// latest page, decrypted when `encrypted`; whether it was seen.
pub async fn sdk_sees_text(
    client: &matrix_sdk::Client,
    room_id: &ruma::RoomId,
    text: &str,
    encrypted: bool,
) -> bool {
    for _ in 0..10 {
        client
            .sync_once(matrix_sdk::config::SyncSettings::default().timeout(Duration::from_secs(1)))
            .await
            .unwrap();
        let messages = client
            .get_room(room_id)
            .unwrap()
            .messages(matrix_sdk::room::MessagesOptions::backward())
            .await
            .unwrap();
        if messages.chunk.iter().any(|event| {
            (!encrypted || event.encryption_info().is_some())
                && event.raw().json().get().contains(text)
        }) {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn a_left_room_with_an_empty_timeline_comes_with_its_state_at_the_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    bob.post_ok(&format!("{base}/join"), json!({})).await;
    alice
        .put_ok(
            &format!("{base}/state/org.example.test/"),
            json!({"my_key": "before"}),
        )
        .await;
    bob.post_ok(&format!("{base}/leave"), json!({})).await;
    alice
        .put_ok(
            &format!("{base}/state/org.example.test/"),
            json!({"my_key": "after"}),
        )
        .await;

    let filter = enc(r#"{"room":{"timeline":{"limit":0},"include_leave":true}}"#);
    let sync = bob
        .get_ok(&format!("/_matrix/client/v3/sync?filter={filter}"))
        .await;
    let left = &sync["rooms"]["leave"][&room];
    assert_eq!(left["timeline"]["events"], json!([]), "{left}");
    assert_eq!(left["timeline"]["limited"], true);
    let state = left["state"]["events"].as_array().unwrap();
    let find = |kind: &str, key: &str| {
        state
            .iter()
            .find(|event| event["type"] == kind && event["state_key"] == key)
            .unwrap_or_else(|| panic!("no {kind} {key} in {left}"))
    };
    assert_eq!(find("org.example.test", "")["content"]["my_key"], "before");
    assert_eq!(
        find("m.room.member", "@bob:localhost")["content"]["membership"],
        "leave"
    );

    // Joined rooms take a limit of 0 too: no timeline, a limited flag, and the state.
    let joined = alice
        .get_ok(&format!(
            "/_matrix/client/v3/sync?filter={}",
            enc(r#"{"room":{"timeline":{"limit":0}}}"#)
        ))
        .await;
    let room_sync = &joined["rooms"]["join"][&room];
    assert_eq!(room_sync["timeline"]["events"], json!([]), "{room_sync}");
    assert_eq!(room_sync["timeline"]["limited"], true);
    assert!(!room_sync["state"]["events"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_left_room_in_an_incremental_sync_sends_only_the_state_that_changed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    bob.post_ok(&format!("{base}/join"), json!({})).await;
    carol.post_ok(&format!("{base}/join"), json!({})).await;
    let since = bob.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .put_ok(
            &format!("{base}/state/m.room.topic/"),
            json!({"topic": "changed while bob was away"}),
        )
        .await;
    for n in 0..5 {
        alice
            .put_ok(
                &format!("{base}/send/m.room.message/left-{n}"),
                json!({"msgtype": "m.text", "body": format!("message {n}")}),
            )
            .await;
    }
    bob.post_ok(&format!("{base}/leave"), json!({})).await;

    let filter = enc(r#"{"room":{"timeline":{"limit":2}}}"#);
    let sync = bob
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={since}&filter={filter}"
        ))
        .await;
    let left = &sync["rooms"]["leave"][&room];
    assert_eq!(left["timeline"]["limited"], true, "{left}");
    let timeline = left["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.len(), 2, "{left}");
    assert_eq!(timeline[1]["type"], "m.room.member");
    assert_eq!(timeline[1]["content"]["membership"], "leave");
    // The topic changed after `since`; the create event, the power levels and Carol's
    // membership did not, and are not sent again.
    let state: Vec<(String, String)> = left["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["state_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        state,
        [("m.room.topic".to_owned(), String::new())],
        "{left}"
    );

    // With a state filter that leaves out topics, nothing is left.
    let filter = enc(r#"{"room":{"timeline":{"limit":2},"state":{"not_types":["m.room.topic"]}}}"#);
    let sync = bob
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={since}&filter={filter}"
        ))
        .await;
    assert_eq!(
        sync["rooms"]["leave"][&room]["state"]["events"],
        json!([]),
        "{sync}"
    );
}

#[tokio::test]
async fn served_events_carry_the_viewers_membership_at_the_time() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = format!("/_matrix/client/v3/rooms/{}/join", enc(&room));
    let leave = format!("/_matrix/client/v3/rooms/{}/leave", enc(&room));
    let before = alice.send_text(&room, "t1", "before").await;
    bob.post_ok(&join, json!({})).await;
    let during = alice.send_text(&room, "t2", "during").await;
    bob.post_ok(&leave, json!({})).await;
    let away = alice.send_text(&room, "t3", "while away").await;
    bob.post_ok(&join, json!({})).await;
    let again = alice.send_text(&room, "t4", "again").await;

    // Newest first: each event with bob's membership after it (his own member events included).
    let page = bob
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=8",
            enc(&room)
        ))
        .await;
    let seen: Vec<(String, String)> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            let what = match event["content"]["body"].as_str() {
                Some(body) => body.to_owned(),
                None => format!("{} {}", event["type"], event["state_key"]),
            };
            let membership = event["unsigned"]["membership"]
                .as_str()
                .unwrap_or("(none)")
                .to_owned();
            (what, membership)
        })
        .collect();
    let bob_id = bob.user_id().await;
    let member = format!("\"m.room.member\" \"{bob_id}\"");
    let expected: Vec<(String, String)> = [
        ("again", "join"),
        (member.as_str(), "join"),
        ("while away", "leave"),
        (member.as_str(), "leave"),
        ("during", "join"),
        (member.as_str(), "join"),
        ("before", "leave"),
    ]
    .into_iter()
    .map(|(what, membership)| (what.to_owned(), membership.to_owned()))
    .collect();
    assert_eq!(seen[..7], expected[..], "{page}");

    // The same on the other ways events are served: /event, /context and /sync.
    for (event_id, membership) in [
        (&before, "leave"),
        (&during, "join"),
        (&away, "leave"),
        (&again, "join"),
    ] {
        let event = bob
            .get_ok(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(event_id)
            ))
            .await;
        assert_eq!(event["unsigned"]["membership"], membership, "{event}");
        let context = bob
            .get_ok(&format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=0",
                enc(&room),
                enc(event_id)
            ))
            .await;
        assert_eq!(
            context["event"]["unsigned"]["membership"], membership,
            "{context}"
        );
    }
    let sync = bob.get_ok("/_matrix/client/v3/sync").await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let last = timeline.last().unwrap();
    assert_eq!(last["event_id"], again.as_str(), "{last}");
    assert_eq!(last["unsigned"]["membership"], "join", "{last}");
    // Alice, in the room throughout, sees "join" on everything after her own join.
    let event = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(&away)
        ))
        .await;
    assert_eq!(event["unsigned"]["membership"], "join", "{event}");
}

#[tokio::test]
async fn an_inline_sync_filter_is_checked_as_an_uploaded_one_is() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = enc(&alice.user_id().await);
    for bad in [
        json!({"room": 5}),
        json!({"event_fields": "x"}),
        json!({"room": {"rooms": ["not a room ID"]}}),
        json!({"presence": {"senders": [5]}}),
    ] {
        assert_error(
            &alice
                .post(
                    &format!("/_matrix/client/v3/user/{user}/filter"),
                    bad.clone(),
                )
                .await,
            400,
            "M_BAD_JSON",
        );
        assert_error(
            &alice
                .get(&format!(
                    "/_matrix/client/v3/sync?filter={}",
                    enc(&bad.to_string())
                ))
                .await,
            400,
            "M_BAD_JSON",
        );
    }
    let good = json!({"room": {"timeline": {"limit": 5}}});
    let (status, _) = alice
        .get(&format!(
            "/_matrix/client/v3/sync?filter={}",
            enc(&good.to_string())
        ))
        .await;
    assert_eq!(status, 200);
}
