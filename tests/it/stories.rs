//! Stories and message retention (issue 19, `docs/stories.md`): `m.room.retention` policies are
//! checked, the purge job removes expired events from every read path and their media from the
//! store, and `GET /_plait/client/v1/stories` lists the current stories with their viewers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};
use crate::media::{get_raw, mxc_path, upload_ok};

/// A server whose retention job runs every `interval_ms`.
async fn purging_server(interval_ms: u64) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.retention_purge_interval_ms = interval_ms;
    })
    .await;
    server.dir = Some(dir);
    server
}

/// A server whose retention job runs every 100 ms.
async fn fast_purging_server() -> TestServer {
    purging_server(100).await
}

/// Sets a room's `m.room.retention` policy; answers the status and body.
async fn set_policy(client: &Client, room_id: &str, content: Value) -> (u16, Value) {
    client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.retention",
                enc(room_id)
            ),
            content,
        )
        .await
}

/// Sends an event of `kind` and answers its ID.
async fn send(client: &Client, room_id: &str, kind: &str, txn: &str, content: Value) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/{kind}/{txn}",
        enc(room_id)
    );
    client.put_ok(&path, content).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The event IDs `/messages` answers, newest first.
async fn message_ids(client: &Client, room_id: &str) -> Vec<String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
        enc(room_id)
    );
    client.get_ok(&path).await["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `/messages` until `event_id` is gone (at most 30 s).
async fn wait_until_purged(client: &Client, room_id: &str, event_id: &str) {
    for _ in 0..300 {
        if !message_ids(client, room_id)
            .await
            .iter()
            .any(|id| id == event_id)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{event_id} was not purged within 30 s");
}

/// The status of downloading an `mxc://` URI.
async fn download_status(client: &Client, mxc: &str) -> u16 {
    let path = format!("/_matrix/client/v1/media/download/{}", mxc_path(mxc));
    get_raw(client, &path).await.status().as_u16()
}

#[tokio::test]
async fn retention_policies_with_bad_lifetimes_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    for content in [
        json!({"max_lifetime": -1000}),
        json!({"max_lifetime": 0}),
        json!({"max_lifetime": 1.5}),
        json!({"max_lifetime": "86400000"}),
        json!({"max_lifetime": 10_000_000_000_000_000u64}),
        json!({"min_lifetime": -5}),
        json!({"min_lifetime": 60_000, "max_lifetime": 1_000}),
    ] {
        assert_error(
            &set_policy(&alice, &room_id, content.clone()).await,
            400,
            "M_BAD_JSON",
        );
    }
    // Nothing was set.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.retention",
        enc(&room_id)
    );
    assert_error(&alice.get(&path).await, 404, "M_NOT_FOUND");
    // A sane policy is accepted.
    let (status, body) = set_policy(&alice, &room_id, json!({"max_lifetime": 86_400_000})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn expired_events_leave_every_read_path_and_the_media_store() {
    let server = fast_purging_server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room_id).await;
    let (status, body) = set_policy(&alice, &room_id, json!({"max_lifetime": 4_000})).await;
    assert_eq!(status, 200, "{body}");
    let mxc = upload_ok(&alice, b"short-lived bytes".to_vec(), "image/png", None).await;
    let image = send(
        &alice,
        &room_id,
        "m.room.message",
        "i1",
        json!({"msgtype": "m.image", "body": "ephemeral picture", "url": mxc}),
    )
    .await;
    let text = alice.send_text(&room_id, "t1", "ephemeral words").await;
    let reaction = send(
        &bob,
        &room_id,
        "m.reaction",
        "r1",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": text, "key": "👍"}}),
    )
    .await;
    let search = json!({"search_categories": {"room_events": {"search_term": "ephemeral"}}});
    let found = bob
        .post_ok("/_matrix/client/v3/search", search.clone())
        .await;
    assert_eq!(
        found["search_categories"]["room_events"]["count"], 2,
        "{found}"
    );

    wait_until_purged(&bob, &room_id, &reaction).await;
    let ids = message_ids(&bob, &room_id).await;
    for event_id in [&image, &text, &reaction] {
        assert!(!ids.contains(event_id), "{event_id} still in {ids:?}");
    }
    let found = bob.post_ok("/_matrix/client/v3/search", search).await;
    assert_eq!(
        found["search_categories"]["room_events"]["count"], 0,
        "{found}"
    );
    let context = format!(
        "/_matrix/client/v3/rooms/{}/context/{}",
        enc(&room_id),
        enc(&text)
    );
    assert_error(&bob.get(&context).await, 404, "M_NOT_FOUND");
    let relations = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}",
        enc(&room_id),
        enc(&text)
    );
    let (_, body) = bob.get(&relations).await;
    assert!(!body.to_string().contains(&reaction), "{body}");
    let sync = bob.get_ok("/_matrix/client/v3/sync").await.to_string();
    for event_id in [&image, &text, &reaction] {
        assert!(!sync.contains(event_id.as_str()), "{event_id} in {sync}");
    }
    // Fetched by ID, an expired event is its redacted form: no content is left.
    let by_id = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&room_id),
        enc(&image)
    );
    let event = bob.get_ok(&by_id).await;
    assert_eq!(event["content"], json!({}), "{event}");
    // The media is gone from the store.
    assert_eq!(download_status(&bob, &mxc).await, 404);
    let media_id = mxc.rsplit('/').next().unwrap();
    let host = server.server_name();
    let host = ruma::ServerName::parse(&host).unwrap();
    assert!(server
        .services
        .media
        .get(&host, media_id)
        .unwrap()
        .is_none());
    // State stays, and the room still works.
    let state = format!("/_matrix/client/v3/rooms/{}/state", enc(&room_id));
    let state = bob.get_ok(&state).await.to_string();
    assert!(state.contains("m.room.retention") && state.contains("m.room.create"));
    let fresh = alice.send_text(&room_id, "t2", "still here").await;
    assert_eq!(message_ids(&bob, &room_id).await[0], fresh);
}

/// Replies of one thread expiring in one chunk take the thread out of the thread list (the
/// thread must not fall back to an earlier reply the same chunk deletes); a state event as its
/// root stays, as retention keeps state.
#[tokio::test]
async fn a_thread_whose_replies_expire_together_leaves_the_thread_list() {
    let server = fast_purging_server().await;
    let alice = server.register("alice").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    let (status, body) = set_policy(&alice, &room_id, json!({"max_lifetime": 4_000})).await;
    assert_eq!(status, 200, "{body}");
    let topic_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.topic",
        enc(&room_id)
    );
    let root = alice.put_ok(&topic_path, json!({"topic": "root"})).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut replies = Vec::new();
    for txn in ["r1", "r2"] {
        let reply = json!({
            "msgtype": "m.text",
            "body": txn,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        });
        replies.push(send(&alice, &room_id, "m.room.message", txn, reply).await);
    }
    let threads_path = format!("/_matrix/client/v1/rooms/{}/threads", enc(&room_id));
    let threads = alice.get_ok(&threads_path).await;
    assert_eq!(threads["chunk"][0]["event_id"], root.as_str(), "{threads}");

    wait_until_purged(&alice, &room_id, &replies[1]).await;
    let ids = message_ids(&alice, &room_id).await;
    assert!(!ids.contains(&replies[0]), "{ids:?}");
    let threads = alice.get_ok(&threads_path).await;
    assert_eq!(threads["chunk"], json!([]), "{threads}");
}

/// The `GET /_plait/client/v1/stories` list of a client.
async fn stories_of(client: &Client) -> Vec<Value> {
    client.get_ok("/_plait/client/v1/stories").await["stories"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn stories_show_their_viewers_to_the_owner_and_expire() {
    let server = fast_purging_server().await;
    let owner = server.register("owner").await;
    let audience = [
        server.register("bob").await,
        server.register("carol").await,
        server.register("dave").await,
    ];
    let stranger = server.register("eve").await;
    let banned = server.register("mallory").await;
    let room_id = owner
        .create_room(json!({
            "preset": "private_chat",
            "creation_content": {"type": "io.plait.story"},
        }))
        .await;
    for member in audience.iter().chain([&banned]) {
        let user_id = member.user_id().await;
        owner
            .post_ok(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                json!({"user_id": user_id}),
            )
            .await;
        member.join(&room_id).await;
    }
    let (status, body) = set_policy(&owner, &room_id, json!({"max_lifetime": 8_000})).await;
    assert_eq!(status, 200, "{body}");
    let text = send(
        &owner,
        &room_id,
        "m.room.message",
        "s1",
        json!({"msgtype": "m.text", "body": "hello", "io.plait.background": "#ff8800"}),
    )
    .await;
    let mxc = upload_ok(&owner, b"story picture".to_vec(), "image/png", None).await;
    let image = send(
        &owner,
        &room_id,
        "m.room.message",
        "s2",
        json!({"msgtype": "m.image", "body": "pic", "url": mxc}),
    )
    .await;
    // Bob and carol read up to the newest story; dave does not look.
    for viewer in &audience[..2] {
        viewer
            .post_ok(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    enc(&room_id),
                    enc(&image)
                ),
                json!({}),
            )
            .await;
    }
    let banned_id = banned.user_id().await;
    owner
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room_id)),
            json!({"user_id": banned_id}),
        )
        .await;

    let listed = stories_of(&owner).await;
    let ids: Vec<&str> = listed
        .iter()
        .map(|story| story["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [image.as_str(), text.as_str()], "newest first");
    let (bob_id, carol_id) = (audience[0].user_id().await, audience[1].user_id().await);
    for story in &listed {
        assert_eq!(story["view_count"], 2, "{story}");
        let mut viewers: Vec<&str> = story["viewers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|viewer| viewer.as_str().unwrap())
            .collect();
        viewers.sort_unstable();
        assert_eq!(viewers, [bob_id.as_str(), carol_id.as_str()]);
        assert_eq!(story["room_id"], room_id.as_str());
    }
    assert_eq!(listed[1]["content"]["io.plait.background"], "#ff8800");
    // The audience sees the stories without the view counts.
    let seen = stories_of(&audience[2]).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].get("view_count").is_none(), "{:?}", seen[0]);
    // A non-member and a banned member see nothing.
    assert!(stories_of(&stranger).await.is_empty());
    assert!(stories_of(&banned).await.is_empty());

    // After its lifetime, every story is gone, with its media.
    wait_until_purged(&owner, &room_id, &text).await;
    wait_until_purged(&owner, &room_id, &image).await;
    assert!(stories_of(&owner).await.is_empty());
    assert!(stories_of(&audience[0]).await.is_empty());
    assert_eq!(download_status(&owner, &mxc).await, 404);
}

#[tokio::test]
async fn story_rooms_default_to_a_day() {
    let server = TestServer::start().await;
    let owner = server.register("owner").await;
    let story = owner
        .create_room(json!({"creation_content": {"type": "io.plait.story"}}))
        .await;
    let plain = owner.create_room(json!({})).await;
    let room = |id: &str| ruma::RoomId::parse(id).unwrap();
    let lifetime = |id: &str| {
        plait::service::rooms::retention::max_lifetime(&server.services, &room(id)).unwrap()
    };
    assert_eq!(lifetime(&story), Some(24 * 60 * 60 * 1000));
    assert_eq!(lifetime(&plain), None);
    owner.send_text(&story, "s1", "today").await;
    assert_eq!(stories_of(&owner).await.len(), 1);
}

#[tokio::test]
async fn a_story_joins_the_list_when_posted_and_leaves_it_when_redacted_purged_or_expired() {
    // The purge job does not run during the test: what is checked is the listing's own view.
    let server = purging_server(3_600_000).await;
    let owner = server.register("owner").await;
    let viewer = server.register("viewer").await;
    let story = owner
        .create_room(
            json!({"preset": "public_chat", "creation_content": {"type": "io.plait.story"}}),
        )
        .await;
    viewer.join(&story).await;
    let first = owner.send_text(&story, "s1", "first").await;
    let second = owner.send_text(&story, "s2", "second").await;
    // A member's message in a story room is no story.
    viewer.send_text(&story, "v1", "not a story").await;
    let listed_ids = |client: &Client| {
        let client = client.clone();
        async move {
            stories_of(&client)
                .await
                .iter()
                .map(|story| story["event_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed_ids(&viewer).await, [second.clone(), first.clone()]);
    // A story posted after a listing is in the next one.
    let third = owner.send_text(&story, "s3", "third").await;
    assert_eq!(
        listed_ids(&viewer).await,
        [third.clone(), second.clone(), first.clone()]
    );
    owner
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&story),
                enc(&first)
            ),
            json!({}),
        )
        .await;
    assert_eq!(listed_ids(&viewer).await, [third.clone(), second.clone()]);
    // A policy set after the stories were listed applies at once, before any purge.
    let (status, body) = set_policy(&owner, &story, json!({"max_lifetime": 1})).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(listed_ids(&viewer).await.is_empty());
    assert!(listed_ids(&owner).await.is_empty());
    let (status, body) = set_policy(&owner, &story, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed_ids(&owner).await, [third, second]);
    // An admin's purge of the room's history takes its stories out of the next listing.
    let purge = plait::service::rooms::purge::HistoryPurge {
        before_ts: u64::MAX,
        keep_from: None,
    };
    let room = ruma::RoomId::parse(&story).unwrap();
    plait::service::rooms::purge::purge_history(&server.services, &room, purge).unwrap();
    assert!(listed_ids(&viewer).await.is_empty());
}

#[tokio::test]
async fn a_room_without_the_story_type_is_no_story_room_and_cannot_be_given_it() {
    let server = TestServer::start().await;
    let owner = server.register("owner").await;
    // A type that is not a string is refused, and no room is made.
    let before = owner.get_ok("/_matrix/client/v3/joined_rooms").await;
    for creation_content in [
        json!({"type": 5}),
        json!({"type": {"io.plait.story": true}}),
    ] {
        assert_error(
            &owner
                .post(
                    "/_matrix/client/v3/createRoom",
                    json!({"creation_content": creation_content}),
                )
                .await,
            400,
            "M_BAD_JSON",
        );
    }
    assert_eq!(
        owner.get_ok("/_matrix/client/v3/joined_rooms").await,
        before
    );
    // A room made without the type keeps its messages and lists none as stories; a later
    // create event that would give it the type is refused.
    let plain = owner
        .create_room(json!({"name": "My stories", "creation_content": {}}))
        .await;
    owner.send_text(&plain, "p1", "not a story").await;
    let (status, body) = owner
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.create",
                enc(&plain)
            ),
            json!({"type": "io.plait.story"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
    assert!(stories_of(&owner).await.is_empty());
    let room = ruma::RoomId::parse(&plain).unwrap();
    assert_eq!(
        plait::service::rooms::retention::max_lifetime(&server.services, &room).unwrap(),
        None
    );
    let create = owner
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.create",
            enc(&plain)
        ))
        .await;
    assert!(create.get("type").is_none(), "{create}");
}
