//! Rooms over HTTP: creation, membership, state, messages, redaction, aliases and the directory.

use serde_json::json;

use crate::common::{assert_error, enc, TestServer};

#[tokio::test]
async fn create_room_with_presets_and_versions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Hall", "topic": "t", "room_alias_name": "hall", "visibility": "public",
            "initial_state": [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}}],
            "power_level_content_override": {"events_default": 10}}))
        .await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    assert_eq!(
        alice.get_ok(&format!("{base}/state/m.room.name/")).await["name"],
        "Hall"
    );
    assert_eq!(
        alice
            .get_ok(&format!("{base}/state/m.room.join_rules"))
            .await["join_rule"],
        "public"
    );
    let topic = alice.get_ok(&format!("{base}/state/m.room.topic/")).await;
    assert_eq!(topic["topic"], "t");
    assert_eq!(
        topic["m.topic"]["m.text"],
        json!([{"body": "t", "mimetype": "text/plain"}])
    );
    assert_eq!(
        alice
            .get_ok(&format!("{base}/state/m.room.power_levels/"))
            .await["events_default"],
        10
    );
    assert_eq!(
        alice.get_ok(&format!("{base}/state/m.room.create/")).await["room_version"],
        "12"
    );
    let create = alice
        .get_ok(&format!("{base}/state/m.room.create/?format=event"))
        .await;
    assert_eq!(
        format!("!{}", &create["event_id"].as_str().unwrap()[1..]),
        room,
        "v12 room IDs are the create event's ID"
    );
    let state = alice.get_ok(&format!("{base}/state")).await;
    assert!(state.as_array().unwrap().len() >= 8);
    assert_eq!(
        server
            .client()
            .get_ok("/_matrix/client/v3/directory/room/%23hall:localhost")
            .await["room_id"],
        room
    );
    assert_eq!(
        server
            .client()
            .get_ok(&format!(
                "/_matrix/client/v3/directory/list/room/{}",
                enc(&room)
            ))
            .await["visibility"],
        "public"
    );
    assert_eq!(
        server
            .client()
            .get_ok("/_matrix/client/v3/publicRooms")
            .await["chunk"][0]["name"],
        "Hall"
    );
    assert_eq!(
        bob.post_ok(
            "/_matrix/client/v3/publicRooms",
            json!({"filter": {"generic_search_term": "nothing"}})
        )
        .await["chunk"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    for version in [
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
    ] {
        let room = alice
            .create_room(json!({"room_version": version, "name": format!("v{version}")}))
            .await;
        let event = alice
            .send_text(&room, &format!("v{version}"), "hello")
            .await;
        let fetched = alice
            .get_ok(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&event)
            ))
            .await;
        assert_eq!(
            fetched["content"]["body"], "hello",
            "room version {version}"
        );
    }
    assert_error(
        &alice
            .post(
                "/_matrix/client/v3/createRoom",
                json!({"room_version": "99"}),
            )
            .await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    assert_error(
        &alice
            .post(
                "/_matrix/client/v3/createRoom",
                json!({"room_alias_name": "hall"}),
            )
            .await,
        400,
        "M_ROOM_IN_USE",
    );
    assert_error(
        &alice
            .post("/_matrix/client/v3/createRoom", json!({"preset": "party"}))
            .await,
        400,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn membership_lifecycle() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    assert_error(
        &bob.post(&format!("{base}/join"), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    alice
        .post_ok(
            &format!("{base}/invite"),
            json!({"user_id": "@bob:localhost"}),
        )
        .await;
    assert_error(
        &alice
            .post(
                &format!("{base}/invite"),
                json!({"user_id": "@nobody:localhost"}),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        json!({}),
    )
    .await;
    assert_eq!(
        bob.get_ok("/_matrix/client/v3/joined_rooms").await["joined_rooms"][0],
        room
    );
    let joined = alice.get_ok(&format!("{base}/joined_members")).await;
    assert_eq!(joined["joined"].as_object().unwrap().len(), 2);
    // Unset profile fields are there as null, as Synapse sends them (Complement checks the keys).
    assert_eq!(
        joined["joined"]["@bob:localhost"],
        json!({"display_name": "bob", "avatar_url": null})
    );
    assert_eq!(
        alice.get_ok(&format!("{base}/members")).await["chunk"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        alice
            .get_ok(&format!("{base}/members?membership=invite"))
            .await["chunk"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_error(
        &bob.post(
            &format!("{base}/kick"),
            json!({"user_id": "@alice:localhost"}),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    // A reason that is not a string is refused, as on joins.
    assert_error(
        &alice
            .post(
                &format!("{base}/kick"),
                json!({"user_id": "@bob:localhost", "reason": 5}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    alice
        .post_ok(
            &format!("{base}/kick"),
            json!({"user_id": "@bob:localhost", "reason": "bye"}),
        )
        .await;
    // A kicked user reads the state as it was when they were kicked.
    let at_kick = bob.get_ok(&format!("{base}/state")).await;
    assert!(at_kick.as_array().unwrap().iter().any(|event| {
        event["state_key"] == "@bob:localhost" && event["content"]["membership"] == "leave"
    }));
    alice
        .post_ok(&format!("{base}/ban"), json!({"user_id": "@bob:localhost"}))
        .await;
    assert_error(
        &alice
            .post(
                &format!("{base}/invite"),
                json!({"user_id": "@bob:localhost"}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    alice
        .post_ok(
            &format!("{base}/unban"),
            json!({"user_id": "@bob:localhost"}),
        )
        .await;
    alice
        .post_ok(
            &format!("{base}/invite"),
            json!({"user_id": "@bob:localhost"}),
        )
        .await;
    bob.post_ok(&format!("{base}/join"), json!({})).await;
    let before_leave = bob.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_error(
        &bob.post(&format!("{base}/leave"), json!({"reason": ["bye"]}))
            .await,
        400,
        "M_BAD_JSON",
    );
    bob.post_ok(&format!("{base}/leave"), json!({})).await;
    bob.post_ok(&format!("{base}/forget"), json!({})).await;
    // Forgotten: gone from initial syncs and history, but a sync from before the leave (another
    // device of bob's) still learns that the room was left.
    let include_leave = enc(r#"{"room":{"include_leave":true}}"#);
    let initial = bob
        .get_ok(&format!("/_matrix/client/v3/sync?filter={include_leave}"))
        .await;
    assert!(initial["rooms"]["leave"].get(&room).is_none(), "{initial}");
    let incremental = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={before_leave}"))
        .await;
    assert!(
        incremental["rooms"]["leave"].get(&room).is_some(),
        "{incremental}"
    );
    assert_error(
        &bob.get(&format!("{base}/messages?dir=b")).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice.post(&format!("{base}/forget"), json!({})).await,
        400,
        "M_UNKNOWN",
    );
}

#[tokio::test]
async fn messages_state_redaction_and_context() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    // Custom keys of the join body land in the member event; a non-string reason does not.
    assert_error(
        &bob.post(&format!("{base}/join"), json!({"reason": 5}))
            .await,
        400,
        "M_BAD_JSON",
    );
    bob.post_ok(
        &format!("{base}/join"),
        json!({"foo": "bar", "membership": "leave"}),
    )
    .await;
    let member = alice
        .get_ok(&format!("{base}/state/m.room.member/@bob:localhost"))
        .await;
    assert_eq!(member["foo"], "bar");
    assert_eq!(member["membership"], "join");
    let first = alice.send_text(&room, "t1", "one").await;
    assert_eq!(
        alice.send_text(&room, "t1", "one again").await,
        first,
        "same txn ID, same event"
    );
    let image = alice
        .put_ok(
            &format!("{base}/send/m.room.message/t2"),
            json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/abc"}),
        )
        .await["event_id"]
        .clone();
    let third = bob.send_text(&room, "t1", "three").await;
    assert_ne!(third, first, "txn IDs are per device");
    let other_room = alice.create_room(json!({})).await;
    assert_ne!(
        alice.send_text(&other_room, "t1", "one").await,
        first,
        "txn IDs are per room"
    );

    let back = alice
        .get_ok(&format!("{base}/messages?dir=b&limit=2"))
        .await;
    let chunk = back["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2);
    assert_eq!(chunk[0]["event_id"], third.as_str());
    assert_eq!(chunk[1]["event_id"], image);
    let older = alice
        .get_ok(&format!(
            "{base}/messages?dir=b&limit=1&from={}",
            back["end"].as_str().unwrap()
        ))
        .await;
    assert_eq!(older["chunk"][0]["event_id"], first.as_str());
    assert_eq!(older["chunk"][0]["unsigned"]["transaction_id"], "t1");
    let forward = alice
        .get_ok(&format!("{base}/messages?dir=f&limit=100"))
        .await;
    assert_eq!(forward["chunk"][0]["type"], "m.room.create");
    let media = alice
        .get_ok(&format!(
            "{base}/messages?dir=b&filter={}",
            enc(&json!({"contains_url": true}).to_string())
        ))
        .await;
    assert_eq!(media["chunk"].as_array().unwrap().len(), 1);
    let by_bob = alice.get_ok(&format!("{base}/messages?dir=b&filter={}", enc(&json!({"senders": ["@bob:localhost"], "types": ["m.room.message"], "lazy_load_members": true}).to_string()))).await;
    assert_eq!(by_bob["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(by_bob["state"][0]["state_key"], "@bob:localhost");
    let not_members = alice
        .get_ok(&format!(
            "{base}/messages?dir=f&limit=100&filter={}",
            enc(&json!({"not_types": ["m.room.member"]}).to_string())
        ))
        .await;
    assert!(not_members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .all(|event| event["type"] != "m.room.member"));
    assert_error(
        &alice.get(&format!("{base}/messages?dir=x")).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice
            .get(&format!("{base}/messages?dir=b&from=garbage"))
            .await,
        400,
        "M_INVALID_PARAM",
    );

    let context = alice
        .get_ok(&format!(
            "{base}/context/{}?limit=2",
            enc(image.as_str().unwrap())
        ))
        .await;
    assert_eq!(context["event"]["event_id"], image);
    assert_eq!(context["events_before"][0]["event_id"], first.as_str());
    assert_eq!(context["events_after"][0]["event_id"], third.as_str());

    // Only the sender or a user with the redact power may redact.
    assert_error(
        &bob.put(&format!("{base}/redact/{}/r1", enc(&first)), json!({}))
            .await,
        403,
        "M_FORBIDDEN",
    );
    alice
        .put_ok(
            &format!("{base}/redact/{}/r1", enc(&first)),
            json!({"reason": "oops"}),
        )
        .await;
    let redacted = alice.get_ok(&format!("{base}/event/{}", enc(&first))).await;
    assert_eq!(redacted["content"], json!({}));
    assert_eq!(
        redacted["unsigned"]["redacted_because"]["content"]["reason"],
        "oops"
    );
    alice
        .put_ok(&format!("{base}/redact/{}/r2", enc(&third)), json!({}))
        .await;
    assert_error(
        &alice
            .get(&format!("{base}/event/%24nope%3Alocalhost"))
            .await,
        404,
        "M_NOT_FOUND",
    );

    // State writes go through the auth rules; the same content again is the same event.
    let first = alice
        .put_ok(
            &format!("{base}/state/m.room.topic/"),
            json!({"topic": "new"}),
        )
        .await;
    let again = alice
        .put_ok(
            &format!("{base}/state/m.room.topic/"),
            json!({"topic": "new"}),
        )
        .await;
    assert_eq!(first["event_id"], again["event_id"]);
    assert_error(
        &bob.put(
            &format!("{base}/state/m.room.topic/"),
            json!({"topic": "mine"}),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.put(
            &format!("{base}/state/m.room.power_levels/"),
            json!({"users": {"@bob:localhost": 100}}),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice.get(&format!("{base}/state/m.room.nothing/")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice
            .put(&format!("{base}/state/m.room.create/"), json!({}))
            .await,
        400,
        "M_BAD_JSON",
    );
    let huge = "x".repeat(70_000);
    assert_error(
        &alice
            .put(
                &format!("{base}/send/m.room.message/big"),
                json!({"body": huge}),
            )
            .await,
        413,
        "M_TOO_LARGE",
    );
    assert_error(
        &alice
            .put(
                &format!("{base}/send/m.room.message/float"),
                json!({"body": "x", "n": 1.5}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    let outsider = server.register("carol").await;
    assert_error(
        &outsider
            .put(
                &format!("{base}/send/m.room.message/x"),
                json!({"body": "hi"}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn aliases_and_directory() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    alice
        .put_ok(
            "/_matrix/client/v3/directory/room/%23team:localhost",
            json!({"room_id": room}),
        )
        .await;
    assert_error(
        &alice
            .put(
                "/_matrix/client/v3/directory/room/%23team:localhost",
                json!({"room_id": room}),
            )
            .await,
        409,
        "M_UNKNOWN",
    );
    assert_error(
        &alice
            .put(
                "/_matrix/client/v3/directory/room/%23team:elsewhere",
                json!({"room_id": room}),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice
            .put(
                "/_matrix/client/v3/directory/room/%23x:localhost",
                json!({"room_id": "!nope:localhost"}),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    bob.post_ok("/_matrix/client/v3/join/%23team:localhost", json!({}))
        .await;
    assert_eq!(
        alice
            .get_ok(&format!("/_matrix/client/v3/rooms/{}/aliases", enc(&room)))
            .await["aliases"][0],
        "#team:localhost"
    );
    let (status, _) = bob
        .delete(
            "/_matrix/client/v3/directory/room/%23team:localhost",
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = alice
        .delete(
            "/_matrix/client/v3/directory/room/%23team:localhost",
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(
        &alice
            .get("/_matrix/client/v3/directory/room/%23team:localhost")
            .await,
        404,
        "M_NOT_FOUND",
    );
    alice
        .put_ok(
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(&room)),
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!(
        server
            .client()
            .get_ok("/_matrix/client/v3/publicRooms?limit=1")
            .await["total_room_count_estimate"],
        1
    );
    assert_error(
        &alice
            .put(
                &format!("/_matrix/client/v3/directory/list/room/{}", enc(&room)),
                json!({"visibility": "odd"}),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    // No visibility is public, as the spec says.
    alice
        .put_ok(
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(&room)),
            json!({"visibility": "private"}),
        )
        .await;
    alice
        .put_ok(
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(
        server
            .client()
            .get_ok(&format!(
                "/_matrix/client/v3/directory/list/room/{}",
                enc(&room)
            ))
            .await["visibility"],
        "public"
    );
    assert_error(
        &alice
            .get("/_matrix/client/v3/join/%23nothing:localhost")
            .await,
        405,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &alice
            .post("/_matrix/client/v3/join/%23nothing:localhost", json!({}))
            .await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({"name": "kept"})).await;
    let event = alice.send_text(&room, "t", "persisted").await;
    let sync = alice.get_ok("/_matrix/client/v3/sync").await;
    let next_batch = sync["next_batch"].as_str().unwrap().to_owned();
    server.stop().await;

    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let mut alice_again = server.client();
    alice_again.token = alice.token.clone();
    assert_eq!(
        alice_again.user_id().await,
        "@alice:localhost",
        "tokens survive"
    );
    let fetched = alice_again
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(&event)
        ))
        .await;
    assert_eq!(fetched["content"]["body"], "persisted");
    let incremental = alice_again
        .get_ok(&format!("/_matrix/client/v3/sync?since={next_batch}"))
        .await;
    assert!(
        incremental["rooms"]["join"].as_object().unwrap().is_empty(),
        "nothing new since the old token: {incremental}"
    );
    let second = alice_again.send_text(&room, "t2", "after restart").await;
    let incremental = alice_again
        .get_ok(&format!("/_matrix/client/v3/sync?since={next_batch}"))
        .await;
    assert_eq!(
        incremental["rooms"]["join"][&room]["timeline"]["events"][0]["event_id"],
        second.as_str()
    );
    server.stop().await;
    let refused = TestServer::try_start_with_name(dir.path(), "other.example").await;
    assert!(refused.is_err(), "a database keeps its server name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_joins_and_sends_lose_no_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let mut users = Vec::new();
    for index in 0..12 {
        users.push(server.register(&format!("user{index}")).await);
    }
    let joins = users.iter().map(|user| {
        let user = user.clone();
        let room = room.clone();
        tokio::spawn(async move {
            user.post_ok(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                json!({}),
            )
            .await
        })
    });
    let sends = (0..40).map(|index| {
        let alice = alice.clone();
        let room = room.clone();
        tokio::spawn(async move {
            alice
                .send_text(&room, &format!("c{index}"), "concurrent")
                .await
        })
    });
    let joins: Vec<_> = joins.collect();
    let sends: Vec<_> = sends.collect();
    for task in joins {
        task.await.unwrap();
    }
    for task in sends {
        task.await.unwrap();
    }
    let joined = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await;
    assert_eq!(
        joined["joined"].as_object().unwrap().len(),
        13,
        "every join is in the room state"
    );
    for (index, user) in users.iter().enumerate() {
        user.send_text(&room, "after", &format!("from user {index}"))
            .await;
    }
}

#[tokio::test]
async fn history_visibility_decides_what_new_members_see() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    for (setting, sees_before_invite, sees_while_invited) in [
        ("shared", true, true),
        ("invited", false, true),
        ("joined", false, false),
    ] {
        let room = alice
            .create_room(json!({"preset": "private_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": setting}}]}))
            .await;
        let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
        let before = alice.send_text(&room, "before", "before invite").await;
        alice
            .post_ok(
                &format!("{base}/invite"),
                json!({"user_id": "@bob:localhost"}),
            )
            .await;
        let invited = alice.send_text(&room, "invited", "while invited").await;
        bob.post_ok(&format!("{base}/join"), json!({})).await;
        let after = alice.send_text(&room, "after", "after join").await;

        let messages = bob
            .get_ok(&format!("{base}/messages?dir=b&limit=100"))
            .await;
        let ids: Vec<_> = messages["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            ids.contains(&after),
            "{setting}: events after the join are visible"
        );
        assert_eq!(
            ids.contains(&before),
            sees_before_invite,
            "{setting}: event before the invite"
        );
        assert_eq!(
            ids.contains(&invited),
            sees_while_invited,
            "{setting}: event while invited"
        );
        let (status, _) = bob.get(&format!("{base}/event/{}", enc(&before))).await;
        assert_eq!(
            status == 200,
            sees_before_invite,
            "{setting}: /event of the early event"
        );
        let sync = bob.get_ok("/_matrix/client/v3/sync?filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A100%7D%7D%7D").await;
        let timeline: Vec<_> = sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            timeline.contains(&before),
            sees_before_invite,
            "{setting}: initial sync"
        );
        assert!(timeline.contains(&after));
        // The sender always sees everything.
        assert_eq!(
            alice
                .get_ok(&format!("{base}/event/{}", enc(&before)))
                .await["event_id"],
            before.as_str()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_room_creation_gives_distinct_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let alice = alice.clone();
            tokio::spawn(async move {
                alice
                    .create_room(json!({"preset": "public_chat", "name": "same"}))
                    .await
            })
        })
        .collect();
    let mut rooms = std::collections::BTreeSet::new();
    for task in tasks {
        rooms.insert(task.await.unwrap());
    }
    assert_eq!(
        rooms.len(),
        16,
        "identical create events in the same millisecond must not share a room ID"
    );
    for room in rooms {
        let state = alice
            .get_ok(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)))
            .await;
        let creates = state
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["type"] == "m.room.create")
            .count();
        assert_eq!(creates, 1);
    }
}

#[tokio::test]
async fn members_at_a_point_and_state_for_departed_users() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Before"}))
        .await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    let members = |body: &serde_json::Value| {
        let mut members: Vec<(String, String)> = body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| {
                (
                    event["state_key"].as_str().unwrap().to_owned(),
                    event["content"]["membership"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        members.sort();
        members
    };
    let alice_id = alice.user_id().await;
    let bob_id = bob.user_id().await;

    // `at` a sync position before bob joined: only alice.
    let before_join = alice.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.post_ok(&format!("{base}/join"), json!({})).await;
    let then = alice
        .get_ok(&format!("{base}/members?at={}", enc(&before_join)))
        .await;
    assert_eq!(members(&then), vec![(alice_id.clone(), "join".to_owned())]);
    let now = alice.get_ok(&format!("{base}/members")).await;
    assert_eq!(members(&now).len(), 2, "{now}");
    let joined_only = alice
        .get_ok(&format!(
            "{base}/members?membership=join&not_membership=leave"
        ))
        .await;
    assert_eq!(members(&joined_only).len(), 2);

    // Bob leaves; what changes afterwards is not his to read, the state when he left is.
    let before_leave = alice.send_text(&room, "b1", "while bob was here").await;
    bob.post_ok(&format!("{base}/leave"), json!({})).await;
    alice
        .put_ok(
            &format!("{base}/state/m.room.name/"),
            json!({"name": "After"}),
        )
        .await;
    let after_leave = alice.send_text(&room, "a1", "after bob left").await;
    // His history stops at his departure, in both directions and for single events.
    let back = bob.get_ok(&format!("{base}/messages?dir=b&limit=50")).await;
    let ids: Vec<&str> = back["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["event_id"].as_str())
        .collect();
    assert!(ids.contains(&before_leave.as_str()), "{back}");
    assert!(!ids.contains(&after_leave.as_str()), "{back}");
    // His own leave is his to see, though he was no longer joined once it happened.
    assert!(
        back["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["type"] == "m.room.member"
                && event["state_key"] == bob_id.as_str()
                && event["content"]["membership"] == "leave"),
        "{back}"
    );
    let forward = bob.get_ok(&format!("{base}/messages?dir=f&limit=50")).await;
    assert!(!forward.to_string().contains(&after_leave), "{forward}");
    bob.get_ok(&format!("{base}/event/{before_leave}")).await;
    assert_error(
        &bob.get(&format!("{base}/event/{after_leave}")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &carol.get(&format!("{base}/event/{before_leave}")).await,
        404,
        "M_NOT_FOUND",
    );
    let name = bob.get_ok(&format!("{base}/state/m.room.name/")).await;
    assert_eq!(name["name"], "Before");
    let state = bob.get_ok(&format!("{base}/state")).await;
    assert!(state
        .as_array()
        .unwrap()
        .iter()
        .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "Before"));
    let at_leave = bob.get_ok(&format!("{base}/members")).await;
    assert!(members(&at_leave).contains(&(bob_id.clone(), "leave".to_owned())));
    let left = alice
        .get_ok(&format!("{base}/members?not_membership=join"))
        .await;
    assert_eq!(members(&left), vec![(bob_id, "leave".to_owned())]);

    // Someone who was never in the room reads nothing, unless the room is world-readable.
    assert_error(
        &carol.get(&format!("{base}/state")).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &carol.get(&format!("{base}/members")).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &carol.get(&format!("{base}/state/m.room.name/")).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice.get(&format!("{base}/members?at=nonsense")).await,
        400,
        "M_INVALID_PARAM",
    );
    alice
        .put_ok(
            &format!("{base}/state/m.room.history_visibility/"),
            json!({"history_visibility": "world_readable"}),
        )
        .await;
    let name = carol.get_ok(&format!("{base}/state/m.room.name/")).await;
    assert_eq!(name["name"], "After");
    // World-readable from now on: carol may read events sent from here on.
    let public = alice.send_text(&room, "p1", "for everyone").await;
    let event = carol.get_ok(&format!("{base}/event/{public}")).await;
    assert_eq!(event["content"]["body"], "for everyone");
}

#[tokio::test]
async fn knocking_asks_to_join_and_is_answered_with_an_invite_or_a_kick() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "name": "Knock here",
            "room_alias_name": "knockers",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "knock"}
            }]
        }))
        .await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    let membership_of = |user: &'static str| {
        let alice = &alice;
        let base = &base;
        async move {
            alice
                .get_ok(&format!("{base}/state/m.room.member/{}", enc(user)))
                .await
        }
    };

    // Bob knocks with a reason; his client sees the knock with the room's stripped state.
    let knocked = bob
        .post_ok(
            &format!("/_matrix/client/v3/knock/{}", enc(&room)),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(knocked["room_id"], room);
    let member = membership_of("@bob:localhost").await;
    assert_eq!(member["membership"], "knock");
    assert_eq!(member["reason"], "let me in");
    assert_eq!(member["displayname"], "bob");
    let sync = bob.get_ok("/_matrix/client/v3/sync").await;
    let knock_state = sync["rooms"]["knock"][&room]["knock_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no knock section: {sync}"))
        .clone();
    assert!(knock_state
        .iter()
        .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "Knock here"));
    assert!(knock_state
        .iter()
        .any(|event| event["type"] == "m.room.member"
            && event["state_key"] == "@bob:localhost"
            && event["content"]["membership"] == "knock"));
    // Reading the room is still not allowed.
    assert_error(
        &bob.get(&format!("{base}/messages")).await,
        403,
        "M_FORBIDDEN",
    );

    // Alice lets bob in with an invite, which he accepts.
    alice
        .post_ok(
            &format!("{base}/invite"),
            json!({"user_id": "@bob:localhost"}),
        )
        .await;
    bob.post_ok(&format!("{base}/join"), json!({})).await;
    assert_eq!(membership_of("@bob:localhost").await["membership"], "join");

    // Carol knocks through the alias and is turned away with a kick; she may knock again.
    carol
        .post_ok(
            &format!("/_matrix/client/v3/knock/{}", enc("#knockers:localhost")),
            json!({}),
        )
        .await;
    alice
        .post_ok(
            &format!("{base}/kick"),
            json!({"user_id": "@carol:localhost", "reason": "not now"}),
        )
        .await;
    assert_eq!(
        membership_of("@carol:localhost").await["membership"],
        "leave"
    );
    carol
        .post_ok(
            &format!("/_matrix/client/v3/knock/{}", enc(&room)),
            json!({}),
        )
        .await;
    // ... and take the knock back herself.
    carol.post_ok(&format!("{base}/leave"), json!({})).await;
    assert_eq!(
        membership_of("@carol:localhost").await["membership"],
        "leave"
    );

    // A joined member cannot knock, nor can anyone on a room that is not knockable.
    assert_error(
        &bob.post(
            &format!("/_matrix/client/v3/knock/{}", enc(&room)),
            json!({}),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    let public = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_error(
        &carol
            .post(
                &format!("/_matrix/client/v3/knock/{}", enc(&public)),
                json!({}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &carol
            .post(
                &format!("/_matrix/client/v3/knock/{}", enc("#nowhere:localhost")),
                json!({}),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn room_version_12_creators_are_privileged_and_validated() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    server.register("charlie").await;
    let state =
        |room: &str, kind: &str| format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room));

    let room = alice.create_room(json!({"room_version": "12"})).await;
    let power = alice.get_ok(&state(&room, "m.room.power_levels")).await;
    assert_eq!(power["events"]["m.room.tombstone"], 150, "{power}");
    assert_eq!(power["users"], json!({}));
    // The creator's power is above any level: it cannot be written into the users map.
    assert_error(
        &alice
            .put(
                &state(&room, "m.room.power_levels"),
                json!({"users": {"@alice:localhost": 100}}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice
            .put(
                &state(&room, "m.room.power_levels"),
                json!({"users": {"@bob:localhost": 9007199254740992_u64}}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice
            .put(
                &state(&room, "m.room.create"),
                json!({"room_version": "12"}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );

    // A trusted private chat makes its invitees creators, next to those asked for.
    let trusted = alice
        .create_room(json!({
            "room_version": "12", "preset": "trusted_private_chat", "is_direct": true,
            "invite": ["@bob:localhost"],
            "creation_content": {"additional_creators": ["@charlie:localhost"]}
        }))
        .await;
    let create = alice.get_ok(&state(&trusted, "m.room.create")).await;
    let mut creators: Vec<&str> = create["additional_creators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|creator| creator.as_str().unwrap())
        .collect();
    creators.sort();
    assert_eq!(creators, ["@bob:localhost", "@charlie:localhost"]);
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&trusted)),
        json!({}),
    )
    .await;
    assert_error(
        &alice
            .put(
                &state(&trusted, "m.room.power_levels"),
                json!({"users": {"@bob:localhost": 100}}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    // Bob, a creator, cannot be kicked by alice.
    assert_error(
        &alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/kick", enc(&trusted)),
                json!({"user_id": "@bob:localhost"}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );

    for bad in [
        json!("@bob:localhost"),
        json!([1]),
        json!(["bob"]),
        json!(["@bob:not a domain"]),
    ] {
        assert_error(
            &alice
                .post(
                    "/_matrix/client/v3/createRoom",
                    json!({"room_version": "12", "creation_content": {"additional_creators": bad}}),
                )
                .await,
            400,
            "M_BAD_JSON",
        );
    }
    assert_error(
        &alice
            .post(
                "/_matrix/client/v3/createRoom",
                json!({"room_version": "12",
                       "power_level_content_override": {"users": {"@alice:localhost": 100}}}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    // Version 11 rooms keep the creator in the users map.
    let older = alice.create_room(json!({"room_version": "11"})).await;
    let power = alice.get_ok(&state(&older, "m.room.power_levels")).await;
    assert_eq!(power["users"]["@alice:localhost"], 100);
    assert_eq!(power["events"]["m.room.tombstone"], 100);
}

#[tokio::test]
async fn an_invite_to_a_room_everyone_left_can_still_be_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    alice
        .post_ok(
            &format!("{base}/invite"),
            json!({"user_id": "@bob:localhost"}),
        )
        .await;
    let since = bob.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.post_ok(&format!("{base}/leave"), json!({})).await;
    // No local member is joined any more, and no other server is in the room: the rejection
    // is made here rather than sent to a server that does not exist.
    bob.post_ok(&format!("{base}/leave"), json!({})).await;
    let sync = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    assert!(sync["rooms"]["leave"].get(&room).is_some(), "{sync}");
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "{sync}");
}

#[tokio::test]
async fn power_levels_the_auth_rules_would_refuse_fail_create_room_before_any_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for (version, override_content) in [
        ("12", json!({"users": "x"})),
        ("12", json!({"ban": "50"})),
        ("12", json!({"events": {"m.room.name": 1.5}})),
        ("10", json!({"users": {"not a user ID": 10}})),
        ("9", json!({"notifications": 7})),
    ] {
        assert_error(
            &alice
                .post(
                    "/_matrix/client/v3/createRoom",
                    json!({"room_version": version, "power_level_content_override": override_content}),
                )
                .await,
            400,
            "M_BAD_JSON",
        );
    }
    // No half-created room is left behind.
    let joined = alice.get_ok("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(joined["joined_rooms"], json!([]), "{joined}");
    // Before room version 10 a level may still be a string holding an integer.
    let room = alice
        .create_room(json!({"room_version": "9", "power_level_content_override": {"ban": "60"}}))
        .await;
    let power = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(&room)
        ))
        .await;
    assert_eq!(power["ban"], "60");
}

#[tokio::test]
async fn event_ids_in_paths_must_be_well_formed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let event = alice.send_text(&room, "t1", "hello").await;
    for (index, malformed) in ["$", "$$$", "$short", "nodollar", "$:localhost"]
        .into_iter()
        .enumerate()
    {
        let redact = format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/r{index}",
            enc(&room),
            enc(malformed)
        );
        assert_error(&alice.put(&redact, json!({})).await, 400, "M_INVALID_PARAM");
        let fetch = format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(malformed)
        );
        assert_error(&alice.get(&fetch).await, 400, "M_INVALID_PARAM");
    }
    // Well-formed IDs of both shapes go through: a real one, and an unknown one of room
    // versions 1 and 2.
    let redact = format!(
        "/_matrix/client/v3/rooms/{}/redact/{}/ok",
        enc(&room),
        enc(&event)
    );
    alice.put_ok(&redact, json!({})).await;
    let unknown = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&room),
        enc("$unknown:localhost")
    );
    assert_error(&alice.get(&unknown).await, 404, "M_NOT_FOUND");
    // Room version 3 IDs are standard base64: `+` and `/` are part of the ID, not a space or a
    // path separator once decoded. One ID in two holds a `+`, so twenty messages surely do.
    let v3 = alice.create_room(json!({"room_version": "3"})).await;
    let mut with_plus = 0;
    for index in 0..20 {
        let id = alice.send_text(&v3, &format!("v3-{index}"), "hi").await;
        with_plus += usize::from(id.contains('+'));
        let fetch = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&v3), enc(&id));
        alice.get_ok(&fetch).await;
    }
    assert!(with_plus > 0, "no event ID of twenty held a `+`");
    // Without a token, the token is what is wrong.
    let fetch = format!("/_matrix/client/v3/rooms/{}/event/$", enc(&room));
    assert_error(&server.client().get(&fetch).await, 401, "M_MISSING_TOKEN");
}
