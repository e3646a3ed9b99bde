//! Organising rooms and people: room tags and ignoring users, over HTTP.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

/// The bodies of a joined room's timeline in a sync answer.
fn bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|event| event["content"]["body"].as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The path of a user's tags on a room.
fn tags_path(user_id: &str, room: &str) -> String {
    format!(
        "/_matrix/client/v3/user/{}/rooms/{}/tags",
        enc(user_id),
        enc(room)
    )
}

async fn sync(client: &Client, since: Option<&str>) -> Value {
    let path = match since {
        Some(since) => format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
        None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
    };
    client.get_ok(&path).await
}

#[tokio::test]
async fn room_tags_are_set_listed_synced_and_removed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_id = alice.user_id().await;
    let room = alice.create_room(json!({})).await;
    let tags = tags_path(&alice_id, &room);
    assert_eq!(alice.get_ok(&tags).await, json!({"tags": {}}));
    let first = sync(&alice, None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    alice
        .put_ok(&format!("{tags}/m.favourite"), json!({"order": 0.25}))
        .await;
    alice.put_ok(&format!("{tags}/u.work"), json!({})).await;
    assert_eq!(
        alice.get_ok(&tags).await,
        json!({"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
    );
    let next = sync(&alice, Some(&since)).await;
    let events = &next["rooms"]["join"][&room]["account_data"]["events"];
    assert_eq!(events[0]["type"], "m.tag", "{next}");
    assert_eq!(events[0]["content"]["tags"]["m.favourite"]["order"], 0.25);
    let since = next["next_batch"].as_str().unwrap().to_owned();

    alice
        .delete(&format!("{tags}/m.favourite"), json!({}))
        .await;
    assert_eq!(alice.get_ok(&tags).await, json!({"tags": {"u.work": {}}}));
    let next = sync(&alice, Some(&since)).await;
    assert_eq!(
        next["rooms"]["join"][&room]["account_data"]["events"][0]["content"],
        json!({"tags": {"u.work": {}}})
    );
    // Removing a tag the room does not have changes nothing.
    let (status, _) = alice.delete(&format!("{tags}/u.none"), json!({})).await;
    assert_eq!(status, 200);

    // Only the user themself, and only valid orders.
    assert_error(&bob.get(&tags).await, 403, "M_FORBIDDEN");
    assert_error(
        &bob.put(&format!("{tags}/u.bob"), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.delete(&format!("{tags}/u.work"), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice
            .put(&format!("{tags}/u.x"), json!({"order": 1.5}))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice
            .put(&format!("{tags}/u.x"), json!({"order": "high"}))
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice.put(&format!("{tags}/u.x"), json!([1])).await,
        400,
        "M_BAD_JSON",
    );
    let long = "t".repeat(300);
    assert_error(
        &alice.put(&format!("{tags}/{long}"), json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_eq!(alice.get_ok(&tags).await, json!({"tags": {"u.work": {}}}));
}

/// A tag's content comes back as it was set, with its other fields and an integer `order` (what
/// keeps the tag routes untyped: ruma's `TagInfo` keeps only `order`, as a float).
#[tokio::test]
async fn tag_content_is_kept_as_set() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let alice_id = alice.user_id().await;
    let room = alice.create_room(json!({})).await;
    let tags = tags_path(&alice_id, &room);
    let content = json!({"order": 1, "io.example.colour": "blue"});
    alice
        .put_ok(&format!("{tags}/u.work"), content.clone())
        .await;
    assert_eq!(
        alice.get_ok(&tags).await,
        json!({"tags": {"u.work": content}})
    );
}

#[tokio::test]
async fn ignoring_hides_messages_invites_and_to_device_from_the_ignored_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let (alice_id, bob_id) = (alice.user_id().await, bob.user_id().await);
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    for client in [&bob, &carol] {
        client
            .post_ok(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                json!({}),
            )
            .await;
    }
    let ignore_path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
        enc(&alice_id)
    );
    let first = sync(&alice, None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    alice
        .put_ok(&ignore_path, json!({"ignored_users": {bob_id.clone(): {}}}))
        .await;

    bob.send_text(&room, "b1", "bob speaks").await;
    carol.send_text(&room, "c1", "carol speaks").await;
    bob.put_ok(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob_id)
        ),
        json!({"membership": "join", "displayname": "Bob B"}),
    )
    .await;
    let next = sync(&alice, Some(&since)).await;
    assert_eq!(bodies(&next, &room), vec!["carol speaks"], "{next}");
    // State events of an ignored user still arrive.
    let timeline = next["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap();
    assert!(timeline
        .iter()
        .any(|event| event["content"]["displayname"] == "Bob B"));
    assert_eq!(
        next["account_data"]["events"][0]["type"],
        "m.ignored_user_list"
    );
    // Carol still sees bob.
    let carol_view = sync(&carol, None).await;
    assert!(bodies(&carol_view, &room).contains(&"bob speaks".to_owned()));

    // /messages and /context leave bob's messages out for alice only.
    let messages_path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        enc(&room)
    );
    let chunk_bodies = |answer: &Value| -> Vec<String> {
        answer["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        chunk_bodies(&alice.get_ok(&messages_path).await),
        vec!["carol speaks"]
    );
    assert_eq!(
        chunk_bodies(&carol.get_ok(&messages_path).await),
        vec!["carol speaks", "bob speaks"]
    );
    let last = carol.send_text(&room, "c2", "carol again").await;
    let context = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/context/{}?limit=10",
            enc(&room),
            enc(&last)
        ))
        .await;
    assert!(!context.to_string().contains("bob speaks"));
    assert!(context.to_string().contains("carol speaks"));

    // Search leaves bob's messages out too.
    let found = alice
        .post_ok(
            "/_matrix/client/v3/search",
            json!({"search_categories": {"room_events": {"search_term": "speaks"}}}),
        )
        .await;
    assert_eq!(found["search_categories"]["room_events"]["count"], 1);

    // Invites from bob are not shown; invites from carol are.
    let since = sync(&alice, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_room = bob.create_room(json!({"invite": [alice_id.clone()]})).await;
    let carol_room = carol
        .create_room(json!({"invite": [alice_id.clone()]}))
        .await;
    let next = sync(&alice, Some(&since)).await;
    assert!(next["rooms"]["invite"].get(&bob_room).is_none(), "{next}");
    assert!(next["rooms"]["invite"].get(&carol_room).is_some(), "{next}");
    let since = next["next_batch"].as_str().unwrap().to_owned();

    // To-device messages from bob are dropped.
    let to_device = |txn: &str| format!("/_matrix/client/v3/sendToDevice/m.test/{txn}");
    bob.put_ok(
        &to_device("d1"),
        json!({"messages": {alice_id.clone(): {"*": {"from": "bob"}}}}),
    )
    .await;
    carol
        .put_ok(
            &to_device("d2"),
            json!({"messages": {alice_id.clone(): {"*": {"from": "carol"}}}}),
        )
        .await;
    let next = sync(&alice, Some(&since)).await;
    let messages: Vec<&Value> = next["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(messages.len(), 1, "{next}");
    assert_eq!(messages[0]["content"]["from"], "carol");
    let since = next["next_batch"].as_str().unwrap().to_owned();

    // Un-ignoring: new messages from bob arrive again (the missed ones are not re-sent).
    alice
        .put_ok(&ignore_path, json!({"ignored_users": {}}))
        .await;
    bob.send_text(&room, "b2", "bob is back").await;
    let next = sync(&alice, Some(&since)).await;
    assert_eq!(bodies(&next, &room), vec!["bob is back"], "{next}");
}

#[tokio::test]
async fn bad_ignore_lists_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let alice_id = alice.user_id().await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
        enc(&alice_id)
    );
    for (body, errcode) in [
        (json!({}), "M_BAD_JSON"),
        (json!({"ignored_users": ["@bob:localhost"]}), "M_BAD_JSON"),
        (json!({"ignored_users": {"bob": {}}}), "M_BAD_JSON"),
        (
            json!({"ignored_users": {"@bob:localhost": true}}),
            "M_BAD_JSON",
        ),
        (
            json!({"ignored_users": {alice_id.clone(): {}}}),
            "M_INVALID_PARAM",
        ),
    ] {
        let response = alice.put(&path, body.clone()).await;
        assert_error(&response, 400, errcode);
    }
    let (status, _) = alice.get(&path).await;
    assert_eq!(status, 404, "nothing was stored");
    alice
        .put_ok(&path, json!({"ignored_users": {"@bob:localhost": {}}}))
        .await;
    assert_eq!(
        alice.get_ok(&path).await,
        json!({"ignored_users": {"@bob:localhost": {}}})
    );
}
