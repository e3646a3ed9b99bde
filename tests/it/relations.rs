//! Event relationships over HTTP: reactions, edits, threads, references, `/relations`,
//! `/threads`, bundled aggregations on every serving path, redactions, and relations arriving
//! from another server.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, Client, TestServer},
    federation::{is_message, join_via, two_servers, wait_for_event},
};

/// Sends an event of `kind` into a room and returns the status and body.
async fn send(client: &Client, room: &str, kind: &str, txn: &str, content: Value) -> (u16, Value) {
    client
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
            content,
        )
        .await
}

/// Sends an event that must be accepted and returns its ID.
async fn send_ok(client: &Client, room: &str, kind: &str, txn: &str, content: Value) -> String {
    let (status, body) = send(client, room, kind, txn, content).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn react(client: &Client, room: &str, txn: &str, target: &str, key: &str) -> (u16, Value) {
    send(
        client,
        room,
        "m.reaction",
        txn,
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}),
    )
    .await
}

async fn thread_reply(client: &Client, room: &str, txn: &str, root: &str, text: &str) -> String {
    send_ok(
        client,
        room,
        "m.room.message",
        txn,
        json!({"msgtype": "m.text", "body": text,
               "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                                "m.in_reply_to": {"event_id": root}}}),
    )
    .await
}

fn edit_content(target: &str, text: &str) -> Value {
    json!({"msgtype": "m.text", "body": format!("* {text}"),
           "m.new_content": {"msgtype": "m.text", "body": text},
           "m.relates_to": {"rel_type": "m.replace", "event_id": target}})
}

async fn get_event(client: &Client, room: &str, event: &str) -> Value {
    client
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room),
            enc(event)
        ))
        .await
}

async fn redact(client: &Client, room: &str, event: &str, txn: &str) -> (u16, Value) {
    client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
                enc(room),
                enc(event)
            ),
            json!({}),
        )
        .await
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A public room of alice's that bob has joined.
/// The event with this ID in a list of events.
fn find_event(events: &Value, event_id: &str) -> Value {
    events
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["event_id"] == event_id)
        .cloned()
        .unwrap()
}

async fn shared_room(server: &TestServer) -> (Client, Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    (alice, bob, room)
}

#[tokio::test]
async fn reactions_are_counted_per_key_and_duplicates_refused() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let message = alice.send_text(&room, "m1", "react to me").await;
    assert_eq!(react(&alice, &room, "r1", &message, "👍").await.0, 200);
    let (status, bob_thumb) = react(&bob, &room, "r1", &message, "👍").await;
    assert_eq!(status, 200);
    assert_eq!(react(&bob, &room, "r2", &message, "🎉").await.0, 200);
    assert_error(
        &react(&alice, &room, "r3", &message, "👍").await,
        400,
        "M_DUPLICATE_ANNOTATION",
    );
    // The same key with another event type is another annotation.
    let (status, _) = send(
        &alice,
        &room,
        "org.example.vote",
        "v1",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": message, "key": "👍"}}),
    )
    .await;
    assert_eq!(status, 200);
    let event = get_event(&alice, &room, &message).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.annotation"]["chunk"],
        json!([
            {"type": "m.reaction", "key": "👍", "count": 2},
            {"type": "m.reaction", "key": "🎉", "count": 1},
            {"type": "org.example.vote", "key": "👍", "count": 1},
        ]),
        "{event}"
    );

    // Redacting a reaction drops its count, and the sender may then react again.
    let bob_thumb = bob_thumb["event_id"].as_str().unwrap().to_owned();
    assert_eq!(redact(&bob, &room, &bob_thumb, "x1").await.0, 200);
    let event = get_event(&bob, &room, &message).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.annotation"]["chunk"][0],
        json!({"type": "m.reaction", "key": "👍", "count": 1}),
        "{event}"
    );
    assert_eq!(react(&bob, &room, "r4", &message, "👍").await.0, 200);
    let event = get_event(&bob, &room, &message).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.annotation"]["chunk"][0]["count"],
        2
    );
    // An annotation without a key is stored but is not a relation.
    let (status, _) = send(
        &bob,
        &room,
        "m.reaction",
        "r5",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": message}}),
    )
    .await;
    assert_eq!(status, 200);
    let event = get_event(&bob, &room, &message).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.annotation"]["chunk"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn edits_by_the_sender_are_bundled_and_invalid_ones_ignored() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let original = alice.send_text(&room, "m1", "helo").await;
    let first = send_ok(
        &alice,
        &room,
        "m.room.message",
        "e1",
        edit_content(&original, "hello"),
    )
    .await;
    let second = send_ok(
        &alice,
        &room,
        "m.room.message",
        "e2",
        edit_content(&original, "hello!"),
    )
    .await;
    // The latest edit is the one with the largest (origin_server_ts, event_id).
    let key = |event: &Value| {
        (
            event["origin_server_ts"].as_u64().unwrap(),
            event["event_id"].as_str().unwrap().to_owned(),
        )
    };
    let first_event = get_event(&alice, &room, &first).await;
    let second_event = get_event(&alice, &room, &second).await;
    let (latest, older) = if key(&second_event) > key(&first_event) {
        (&second, &first)
    } else {
        (&first, &second)
    };

    // Invalid edits are stored but ignored: by another user, with another type, without
    // m.new_content, and edits of an edit.
    send_ok(
        &bob,
        &room,
        "m.room.message",
        "b1",
        edit_content(&original, "bob was here"),
    )
    .await;
    send_ok(
        &alice,
        &room,
        "m.sticker",
        "s1",
        edit_content(&original, "sticker"),
    )
    .await;
    send_ok(
        &alice,
        &room,
        "m.room.message",
        "n1",
        json!({"msgtype": "m.text", "body": "* no new content",
               "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
    )
    .await;
    let edit_of_edit = send_ok(
        &alice,
        &room,
        "m.room.message",
        "e3",
        edit_content(latest, "again"),
    )
    .await;
    let event = get_event(&bob, &room, &original).await;
    let replace = &event["unsigned"]["m.relations"]["m.replace"];
    assert_eq!(replace["event_id"], latest.as_str(), "{event}");
    assert_eq!(replace["sender"], alice.user_id().await);
    assert!(replace["content"]["m.new_content"]["body"]
        .as_str()
        .unwrap()
        .starts_with("hello"));
    assert_eq!(
        event["content"]["body"], "helo",
        "the original content stays"
    );
    let latest_event = get_event(&bob, &room, latest).await;
    assert!(
        latest_event["unsigned"]["m.relations"]
            .get("m.replace")
            .is_none(),
        "an edit of an edit is ignored: {latest_event} ({edit_of_edit})"
    );

    // Edits of state events are ignored: state events get no aggregations.
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    let topic = alice
        .put_ok(
            &format!("{base}/state/m.room.topic/"),
            json!({"topic": "old"}),
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    send_ok(
        &alice,
        &room,
        "m.room.topic",
        "t1",
        json!({"topic": "* new", "m.new_content": {"topic": "new"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": topic}}),
    )
    .await;
    let topic_event = get_event(&alice, &room, &topic).await;
    assert!(
        topic_event["unsigned"].get("m.relations").is_none(),
        "{topic_event}"
    );

    // Redacting the latest edit brings back the one before it.
    assert_eq!(redact(&alice, &room, latest, "x1").await.0, 200);
    let event = get_event(&alice, &room, &original).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.replace"]["event_id"],
        older.as_str()
    );
    // A redacted original gets no m.replace.
    assert_eq!(redact(&alice, &room, &original, "x2").await.0, 200);
    let event = get_event(&alice, &room, &original).await;
    assert!(event["unsigned"].get("m.relations").is_none(), "{event}");
}

#[tokio::test]
async fn threads_are_listed_by_latest_activity_with_participation_and_pages() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let carol = server.register("carol").await;
    carol
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            json!({}),
        )
        .await;
    let root1 = alice.send_text(&room, "r1", "first topic").await;
    let root2 = alice.send_text(&room, "r2", "second topic").await;
    let root3 = alice.send_text(&room, "r3", "third topic").await;
    thread_reply(&bob, &room, "t1", &root1, "bob in one").await;
    let alice_in_two = thread_reply(&alice, &room, "t2", &root2, "alice in two").await;
    thread_reply(&alice, &room, "t3", &root3, "alice in three").await;
    let latest = thread_reply(&alice, &room, "t4", &root1, "alice in one").await;

    let threads = format!("/_matrix/client/v1/rooms/{}/threads", enc(&room));
    let all = bob.get_ok(&threads).await;
    assert_eq!(
        ids(&all["chunk"]),
        vec![root1.clone(), root3.clone(), root2.clone()]
    );
    assert!(all.get("next_batch").is_none());
    let summary = &all["chunk"][0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2, "{summary}");
    assert_eq!(summary["latest_event"]["event_id"], latest.as_str());
    assert_eq!(summary["latest_event"]["content"]["body"], "alice in one");
    assert_eq!(summary["current_user_participated"], true);
    assert_eq!(
        all["chunk"][1]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        false
    );
    let participated = bob.get_ok(&format!("{threads}?include=participated")).await;
    assert_eq!(ids(&participated["chunk"]), vec![root1.clone()]);
    let none = carol
        .get_ok(&format!("{threads}?include=participated"))
        .await;
    assert_eq!(ids(&none["chunk"]), Vec::<String>::new());
    // Alice started every thread: the root's sender participates.
    let alice_threads = alice
        .get_ok(&format!("{threads}?include=participated"))
        .await;
    assert_eq!(alice_threads["chunk"].as_array().unwrap().len(), 3);

    let page = carol.get_ok(&format!("{threads}?limit=2")).await;
    assert_eq!(ids(&page["chunk"]), vec![root1.clone(), root3.clone()]);
    let next = page["next_batch"].as_str().unwrap();
    let rest = carol
        .get_ok(&format!("{threads}?limit=2&from={}", enc(next)))
        .await;
    assert_eq!(ids(&rest["chunk"]), vec![root2.clone()]);
    assert!(rest.get("next_batch").is_none(), "{rest}");

    // A new reply moves its thread to the front.
    let carol_in_two = thread_reply(&carol, &room, "t5", &root2, "carol in two").await;
    let all = carol.get_ok(&threads).await;
    assert_eq!(
        ids(&all["chunk"]),
        vec![root2.clone(), root1.clone(), root3.clone()]
    );
    // The root also carries the summary wherever it is served.
    let event = get_event(&carol, &room, &root2).await;
    assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["count"], 2);
    assert_eq!(
        event["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        true
    );

    // A thread cannot start from an event that is itself a relation.
    let reply = thread_reply(&bob, &room, "t6", &root3, "bob in three").await;
    let (status, body) = send(
        &bob,
        &room,
        "m.room.message",
        "t7",
        json!({"msgtype": "m.text", "body": "nested",
               "m.relates_to": {"rel_type": "m.thread", "event_id": reply}}),
    )
    .await;
    assert_error(&(status, body), 400, "M_UNKNOWN");

    // Redacting the latest reply moves the thread back to its previous reply; redacting the
    // last one takes the thread off the list.
    assert_eq!(redact(&carol, &room, &carol_in_two, "x1").await.0, 200);
    let all = carol.get_ok(&threads).await;
    assert_eq!(
        ids(&all["chunk"]),
        vec![root3.clone(), root1.clone(), root2.clone()]
    );
    let summary = &get_event(&carol, &room, &root2).await["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 1, "{summary}");
    assert_eq!(summary["latest_event"]["event_id"], alice_in_two.as_str());
    assert_eq!(summary["current_user_participated"], false);
    assert_eq!(redact(&alice, &room, &alice_in_two, "x2").await.0, 200);
    let all = carol.get_ok(&threads).await;
    assert_eq!(ids(&all["chunk"]), vec![root3.clone(), root1.clone()]);
    let event = get_event(&carol, &room, &root2).await;
    assert!(event["unsigned"].get("m.relations").is_none(), "{event}");

    // Bad input.
    for query in [
        "include=mine",
        "limit=0",
        "limit=x",
        "from=nonsense",
        "from=r",
    ] {
        assert_error(
            &carol.get(&format!("{threads}?{query}")).await,
            400,
            "M_INVALID_PARAM",
        );
    }
    let outsider = server.register("dave").await;
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    assert_error(
        &outsider
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/threads",
                enc(&private)
            ))
            .await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn relations_endpoint_paths_directions_pages_and_recursion() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let parent = alice.send_text(&room, "p", "parent").await;
    let (_, reaction) = react(&bob, &room, "r1", &parent, "👀").await;
    let reaction = reaction["event_id"].as_str().unwrap().to_owned();
    let t1 = thread_reply(&bob, &room, "t1", &parent, "one").await;
    let t2 = thread_reply(&alice, &room, "t2", &parent, "two").await;
    let t3 = thread_reply(&bob, &room, "t3", &parent, "three").await;
    let reference = send_ok(
        &alice,
        &room,
        "org.example.note",
        "n1",
        json!({"m.relates_to": {"rel_type": "m.reference", "event_id": parent}}),
    )
    .await;
    // Deeper levels: a reaction to t1 (level 2), a reference to that (3) and one more (4).
    let (_, level2) = react(&alice, &room, "r2", &t1, "✅").await;
    let level2 = level2["event_id"].as_str().unwrap().to_owned();
    let level3 = send_ok(
        &alice,
        &room,
        "org.example.note",
        "n2",
        json!({"m.relates_to": {"rel_type": "m.reference", "event_id": level2}}),
    )
    .await;
    let level4 = send_ok(
        &alice,
        &room,
        "org.example.note",
        "n3",
        json!({"m.relates_to": {"rel_type": "m.reference", "event_id": level3}}),
    )
    .await;

    let base = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}",
        enc(&room),
        enc(&parent)
    );
    let all = bob.get_ok(&base).await;
    assert_eq!(
        ids(&all["chunk"]),
        vec![
            reference.clone(),
            t3.clone(),
            t2.clone(),
            t1.clone(),
            reaction.clone()
        ]
    );
    assert!(all.get("recursion_depth").is_none());
    assert!(all.get("prev_batch").is_none());
    // Children carry their own aggregations.
    assert_eq!(
        all["chunk"][3]["unsigned"]["m.relations"]["m.annotation"]["chunk"][0]["key"],
        "✅"
    );
    let threads = bob.get_ok(&format!("{base}/m.thread")).await;
    assert_eq!(
        ids(&threads["chunk"]),
        vec![t3.clone(), t2.clone(), t1.clone()]
    );
    let forwards = bob.get_ok(&format!("{base}/m.thread?dir=f")).await;
    assert_eq!(
        ids(&forwards["chunk"]),
        vec![t1.clone(), t2.clone(), t3.clone()]
    );
    let typed = bob.get_ok(&format!("{base}/m.thread/m.room.message")).await;
    assert_eq!(typed["chunk"].as_array().unwrap().len(), 3);
    let other_type = bob.get_ok(&format!("{base}/m.thread/m.sticker")).await;
    assert_eq!(ids(&other_type["chunk"]), Vec::<String>::new());
    let annotations = bob.get_ok(&format!("{base}/m.annotation/m.reaction")).await;
    assert_eq!(ids(&annotations["chunk"]), vec![reaction.clone()]);

    // Pages of two, both directions, and `to`.
    let page = bob.get_ok(&format!("{base}/m.thread?limit=2")).await;
    assert_eq!(ids(&page["chunk"]), vec![t3.clone(), t2.clone()]);
    let next = page["next_batch"].as_str().unwrap().to_owned();
    let rest = bob
        .get_ok(&format!("{base}/m.thread?limit=2&from={}", enc(&next)))
        .await;
    assert_eq!(ids(&rest["chunk"]), vec![t1.clone()]);
    assert!(rest.get("next_batch").is_none(), "{rest}");
    assert_eq!(rest["prev_batch"], next.as_str());
    let up_to = bob
        .get_ok(&format!("{base}/m.thread?to={}", enc(&next)))
        .await;
    assert_eq!(ids(&up_to["chunk"]), vec![t3.clone()]);
    let forward_page = bob.get_ok(&format!("{base}?dir=f&limit=2")).await;
    assert_eq!(
        ids(&forward_page["chunk"]),
        vec![reaction.clone(), t1.clone()]
    );
    let forward_rest = bob
        .get_ok(&format!(
            "{base}?dir=f&limit=10&from={}",
            enc(forward_page["next_batch"].as_str().unwrap())
        ))
        .await;
    assert_eq!(
        ids(&forward_rest["chunk"]),
        vec![t2.clone(), t3.clone(), reference.clone()]
    );
    // A /sync token works as `from`: nothing was sent after it, so backwards sees everything.
    let since = bob.get_ok("/_matrix/client/v3/sync?timeout=0").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let from_sync = bob
        .get_ok(&format!("{base}/m.thread?from={}", enc(&since)))
        .await;
    assert_eq!(from_sync["chunk"].as_array().unwrap().len(), 3);

    // Recursion follows relations of relations three levels deep.
    let deep = bob.get_ok(&format!("{base}?recurse=true")).await;
    let deep_ids = ids(&deep["chunk"]);
    assert_eq!(deep["recursion_depth"], 3);
    assert!(
        deep_ids.contains(&level2) && deep_ids.contains(&level3),
        "{deep}"
    );
    assert!(!deep_ids.contains(&level4));
    assert_eq!(deep_ids.len(), 7);
    let deep_references = bob
        .get_ok(&format!("{base}/m.reference?recurse=true"))
        .await;
    assert_eq!(
        ids(&deep_references["chunk"]),
        vec![level3.clone(), reference.clone()]
    );
    let shallow = bob.get_ok(&format!("{base}?recurse=false")).await;
    assert_eq!(shallow["recursion_depth"], 1);
    assert_eq!(shallow["chunk"].as_array().unwrap().len(), 5);

    // The parent carries the reference and thread aggregations.
    let event = get_event(&bob, &room, &parent).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.reference"],
        json!({"chunk": [{"event_id": reference}]})
    );
    assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["count"], 3);

    // Bad input.
    for query in [
        "dir=x",
        "limit=abc",
        "limit=0",
        "recurse=maybe",
        "from=garbage",
        "to=t1",
    ] {
        assert_error(
            &bob.get(&format!("{base}?{query}")).await,
            400,
            "M_INVALID_PARAM",
        );
    }
    let unknown = format!(
        "/_matrix/client/v1/rooms/{}/relations/%24nothing%3Alocalhost",
        enc(&room)
    );
    assert_error(&bob.get(&unknown).await, 404, "M_NOT_FOUND");
    let other_room = alice.create_room(json!({"preset": "public_chat"})).await;
    let elsewhere = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}",
        enc(&other_room),
        enc(&parent)
    );
    assert_error(&alice.get(&elsewhere).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn relations_need_the_parent_to_be_visible() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({"preset": "public_chat",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await;
    let parent = alice.send_text(&room, "p", "before bob").await;
    react(&alice, &room, "r1", &parent, "👍").await;
    let path = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}",
        enc(&room),
        enc(&parent)
    );
    // Carol is not in the room: the parent does not exist for her.
    assert_error(&carol.get(&path).await, 404, "M_NOT_FOUND");
    // Bob joins after the parent, and history is visible only from joins on.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    assert_error(&bob.get(&path).await, 404, "M_NOT_FOUND");
    let after = alice.send_text(&room, "q", "after bob").await;
    react(&alice, &room, "r2", &after, "👍").await;
    let path = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}",
        enc(&room),
        enc(&after)
    );
    assert_eq!(
        bob.get_ok(&path).await["chunk"].as_array().unwrap().len(),
        1
    );
    assert_eq!(
        alice.get_ok(&path).await["chunk"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn bundled_aggregations_reach_sync_messages_event_and_context() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let message = alice.send_text(&room, "m", "aggregate me").await;
    react(&bob, &room, "r1", &message, "👍").await;
    let edit = send_ok(
        &alice,
        &room,
        "m.room.message",
        "e1",
        edit_content(&message, "aggregated"),
    )
    .await;
    let reply = thread_reply(&bob, &room, "t1", &message, "in thread").await;
    let check = |event: &Value, path: &str| {
        let relations = &event["unsigned"]["m.relations"];
        assert_eq!(event["event_id"], message.as_str(), "{path}");
        assert_eq!(
            relations["m.annotation"]["chunk"][0]["count"], 1,
            "{path}: {event}"
        );
        assert_eq!(relations["m.replace"]["event_id"], edit.as_str(), "{path}");
        assert_eq!(
            relations["m.thread"]["latest_event"]["event_id"],
            reply.as_str(),
            "{path}"
        );
        assert_eq!(relations["m.thread"]["count"], 1, "{path}");
    };
    let find = |events: &Value| find_event(events, &message);
    let sync = bob.get_ok("/_matrix/client/v3/sync?timeout=0").await;
    check(
        &find(&sync["rooms"]["join"][&room]["timeline"]["events"]),
        "/sync",
    );
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    let messages = bob.get_ok(&format!("{base}/messages?dir=b&limit=20")).await;
    check(&find(&messages["chunk"]), "/messages");
    check(&get_event(&bob, &room, &message).await, "/event");
    let context = bob
        .get_ok(&format!("{base}/context/{}?limit=4", enc(&message)))
        .await;
    check(&context["event"], "/context event");
    let later = alice.send_text(&room, "later", "later").await;
    let context = bob
        .get_ok(&format!("{base}/context/{}?limit=10", enc(&later)))
        .await;
    check(&find(&context["events_before"]), "/context events_before");
}

#[tokio::test]
async fn redaction_prunes_by_room_version_and_needs_the_power() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let bob_id = bob.user_id().await;
    let alice_id = alice.user_id().await;
    // Room version 11 keeps `invite` in redacted power levels; version 10 drops it.
    for (version, keeps_invite) in [("10", false), ("11", true)] {
        let room = alice
            .create_room(json!({"preset": "public_chat", "room_version": version}))
            .await;
        let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
        let levels = alice
            .put_ok(
                &format!("{base}/state/m.room.power_levels/"),
                json!({"users": {alice_id.clone(): 100, bob_id.clone(): 50}, "invite": 0, "redact": 50,
                       "events": {"m.room.name": 50}}),
            )
            .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(redact(&alice, &room, &levels, "x1").await.0, 200);
        let pruned = get_event(&alice, &room, &levels).await;
        assert_eq!(
            pruned["content"]["users"][&alice_id], 100,
            "v{version}: {pruned}"
        );
        assert_eq!(pruned["content"]["redact"], 50);
        assert_eq!(
            pruned["content"].get("invite").is_some(),
            keeps_invite,
            "v{version}: {pruned}"
        );
        assert!(pruned["unsigned"]["redacted_because"].is_object());
        for user in [&bob, &carol] {
            user.post_ok(&format!("{base}/join"), json!({})).await;
        }
        // Carol (power 0) may not redact bob's message; bob (the redact level) may redact hers.
        let bobs = bob.send_text(&room, "b", "bob's").await;
        let carols = carol.send_text(&room, "c", "carol's").await;
        assert_error(
            &redact(&carol, &room, &bobs, "x2").await,
            403,
            "M_FORBIDDEN",
        );
        assert_eq!(redact(&bob, &room, &carols, "x3").await.0, 200);
        let pruned = get_event(&carol, &room, &carols).await;
        assert_eq!(pruned["content"], json!({}));
        let untouched = get_event(&carol, &room, &bobs).await;
        assert_eq!(untouched["content"]["body"], "bob's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relations_from_another_server_are_indexed() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    join_via(&bob, &room, &hs1).await;
    let message = alice.send_text(&room, "m", "across").await;
    wait_for_event(&bob, &room, "alice's message on hs2", is_message("across")).await;
    react(&bob, &room, "r1", &message, "🌍").await;
    thread_reply(&bob, &room, "t1", &message, "remote thread").await;
    wait_for_event(
        &alice,
        &room,
        "bob's thread reply on hs1",
        is_message("remote thread"),
    )
    .await;
    let mut relations = Value::Null;
    for _ in 0..200 {
        relations = get_event(&alice, &room, &message).await["unsigned"]["m.relations"].clone();
        if relations["m.annotation"]["chunk"][0]["count"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        relations["m.annotation"]["chunk"][0]["key"], "🌍",
        "{relations}"
    );
    assert_eq!(relations["m.thread"]["count"], 1);
    let threads = alice
        .get_ok(&format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)))
        .await;
    assert_eq!(ids(&threads["chunk"]), vec![message.clone()]);
    // Bob's own server bundles his relations too.
    let on_hs2 = get_event(&bob, &room, &message).await;
    assert_eq!(
        on_hs2["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        true
    );
}

/// An event served while it has no child is remembered as childless (`Relations::children`);
/// each relation type given to it later must show at once, in every place that serves it.
#[tokio::test]
async fn an_event_served_before_its_first_relation_shows_each_one_after() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let message = alice.send_text(&room, "m", "plain for now").await;
    let sync = bob.get_ok("/_matrix/client/v3/sync?timeout=0").await;
    let in_sync = |sync: &Value| {
        find_event(
            &sync["rooms"]["join"][&room]["timeline"]["events"],
            &message,
        )
    };
    assert!(in_sync(&sync)["unsigned"].get("m.relations").is_none());
    let event = get_event(&bob, &room, &message).await;
    assert!(event["unsigned"].get("m.relations").is_none(), "{event}");

    react(&bob, &room, "r1", &message, "👍").await;
    let event = get_event(&bob, &room, &message).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.annotation"]["chunk"][0]["count"], 1,
        "{event}"
    );
    let sync = bob
        .get_ok("/_matrix/client/v3/sync?timeout=0&full_state=true")
        .await;
    assert_eq!(
        in_sync(&sync)["unsigned"]["m.relations"]["m.annotation"]["chunk"][0]["count"],
        1
    );

    // Another event, served childless, then edited and replied to in a thread.
    let other = alice.send_text(&room, "o", "edit me").await;
    assert!(get_event(&alice, &room, &other).await["unsigned"]
        .get("m.relations")
        .is_none());
    let edit = send_ok(
        &alice,
        &room,
        "m.room.message",
        "e1",
        edit_content(&other, "edited"),
    )
    .await;
    let event = get_event(&alice, &room, &other).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.replace"]["event_id"],
        edit.as_str(),
        "{event}"
    );
    let third = alice.send_text(&room, "t", "thread root").await;
    assert!(get_event(&bob, &room, &third).await["unsigned"]
        .get("m.relations")
        .is_none());
    let reply = thread_reply(&bob, &room, "t1", &third, "a reply").await;
    let event = get_event(&bob, &room, &third).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
        reply.as_str(),
        "{event}"
    );
}
