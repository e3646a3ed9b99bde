//! Push notifications: unread counts in `/sync` (mentions, receipts, threads, muted rooms,
//! events from another server) and `/notifications`; the rule API is in `push_rules.rs`,
//! pushers in `pushers.rs`.

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, Client, TestServer},
    push_rules::rule_path,
};

/// A room of alice's that bob has joined.
pub async fn shared_room(server: &TestServer) -> (Client, Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    (alice, bob, room)
}

pub async fn send(client: &Client, room: &str, content: Value) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        enc(room),
        rand_txn()
    );
    client.put_ok(&path, content).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn rand_txn() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("txn{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A room's `unread_notifications` and `unread_thread_notifications` in an initial sync with
/// `filter` (JSON).
pub async fn unread(client: &Client, room: &str, filter: &str) -> (Value, Value) {
    let sync = client
        .get_ok(&format!("/_matrix/client/v3/sync?filter={}", enc(filter)))
        .await;
    let joined = &sync["rooms"]["join"][room];
    (
        joined["unread_notifications"].clone(),
        joined["unread_thread_notifications"].clone(),
    )
}

pub fn counts(notifications: u64, highlights: u64) -> Value {
    json!({ "notification_count": notifications, "highlight_count": highlights })
}

pub async fn receipt(client: &Client, room: &str, kind: &str, event: &str, body: Value) {
    client
        .post_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
                enc(room),
                enc(event)
            ),
            body,
        )
        .await;
}

#[tokio::test]
async fn unread_counts_rise_highlight_on_mentions_and_reset_with_receipts() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let bob_id = bob.user_id().await;
    bob.put_ok(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob_id)),
        json!({ "displayname": "Bobby Tables" }),
    )
    .await;
    let none = "{}";
    assert_eq!(unread(&bob, &room, none).await.0, counts(0, 0));
    let first = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "hello" }),
    )
    .await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "anyone?" }),
    )
    .await;
    assert_eq!(unread(&bob, &room, none).await.0, counts(2, 0));
    // An intentional mention, a display name in the body, and a body mention in an event that
    // has `m.mentions` without bob (legacy rules do not apply to it).
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "hey", "m.mentions": { "user_ids": [bob_id] } }),
    )
    .await;
    let by_name = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "hello Bobby Tables" }),
    )
    .await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "Bobby Tables again", "m.mentions": {} }),
    )
    .await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.notice", "body": "a bot speaks" }),
    )
    .await;
    assert_eq!(unread(&bob, &room, none).await.0, counts(5, 2));
    // The sender's own messages never count.
    assert_eq!(unread(&alice, &room, none).await.0, counts(0, 0));

    // A private receipt reads up to its event; a public one on the latest reads everything.
    receipt(&bob, &room, "m.read.private", &first, json!({})).await;
    assert_eq!(unread(&bob, &room, none).await.0, counts(4, 2));
    receipt(&bob, &room, "m.read", &by_name, json!({})).await;
    assert_eq!(unread(&bob, &room, none).await.0, counts(1, 0));

    // The change reaches an incremental sync, and a new message counts again.
    let since = bob.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "more" }),
    )
    .await;
    let next = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}&timeout=0"))
        .await;
    assert_eq!(
        next["rooms"]["join"][&room]["unread_notifications"],
        counts(2, 0)
    );
}

#[tokio::test]
async fn thread_counts_show_when_the_filter_asks_and_threaded_receipts_read_their_thread() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let bob_id = bob.user_id().await;
    let root = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "root" }),
    )
    .await;
    let thread = |body: &str| json!({ "msgtype": "m.text", "body": body, "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
    let in_thread = send(&alice, &room, thread("first reply")).await;
    send(&alice, &room, thread(&format!("ping {bob_id}"))).await;
    let main = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "main again" }),
    )
    .await;
    let by_thread = r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#;

    let (plain, threads) = unread(&bob, &room, "{}").await;
    assert_eq!(plain, counts(4, 1));
    assert!(threads.is_null(), "{threads}");
    let (plain, threads) = unread(&bob, &room, by_thread).await;
    assert_eq!(plain, counts(2, 0));
    assert_eq!(threads, json!({ root.clone(): counts(2, 1) }));

    // A receipt in the thread reads only the thread; one on `main` only the main timeline.
    receipt(
        &bob,
        &room,
        "m.read",
        &in_thread,
        json!({ "thread_id": root }),
    )
    .await;
    let (plain, threads) = unread(&bob, &room, by_thread).await;
    assert_eq!(plain, counts(2, 0));
    assert_eq!(threads, json!({ root.clone(): counts(1, 1) }));
    assert_eq!(unread(&bob, &room, "{}").await.0, counts(3, 1));
    receipt(&bob, &room, "m.read", &main, json!({ "thread_id": "main" })).await;
    let (plain, threads) = unread(&bob, &room, by_thread).await;
    assert_eq!(plain, counts(0, 0));
    assert_eq!(threads, json!({ root.clone(): counts(1, 1) }));
    // An unthreaded receipt reads every thread up to its event.
    receipt(&bob, &room, "m.read", &main, json!({})).await;
    let (plain, threads) = unread(&bob, &room, by_thread).await;
    assert_eq!(plain, counts(0, 0));
    assert!(threads.is_null(), "{threads}");
}

#[tokio::test]
async fn a_muted_room_counts_nothing_while_others_still_count() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&other).await;
    bob.put_ok(&rule_path("room", &room), json!({ "actions": [] }))
        .await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "muted" }),
    )
    .await;
    send(
        &alice,
        &other,
        json!({ "msgtype": "m.text", "body": "heard" }),
    )
    .await;
    assert_eq!(unread(&bob, &room, "{}").await.0, counts(0, 0));
    assert_eq!(unread(&bob, &other, "{}").await.0, counts(1, 0));
    let list = bob.get_ok("/_matrix/client/v3/notifications").await;
    let rooms: Vec<_> = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|notification| notification["room_id"].clone())
        .collect();
    assert_eq!(rooms, [json!(other)]);
    // Unmuting (deleting the rule) makes the room count again.
    bob.delete(&rule_path("room", &room), json!({})).await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "heard now" }),
    )
    .await;
    assert_eq!(unread(&bob, &room, "{}").await.0, counts(1, 0));
}

#[tokio::test]
async fn notifications_are_listed_newest_first_by_page_and_by_highlight() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let bob_id = bob.user_id().await;
    let first = send(&alice, &room, json!({ "msgtype": "m.text", "body": "one" })).await;
    let mention = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "two", "m.mentions": { "user_ids": [bob_id] } }),
    )
    .await;
    let third = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "three" }),
    )
    .await;
    let all = bob.get_ok("/_matrix/client/v3/notifications").await;
    let list = all["notifications"].as_array().unwrap();
    let ids: Vec<_> = list
        .iter()
        .map(|n| n["event"]["event_id"].clone())
        .collect();
    assert_eq!(ids, [json!(third), json!(mention), json!(first)]);
    let newest = &list[0];
    assert_eq!(newest["room_id"], room);
    assert_eq!(newest["read"], false);
    assert!(newest["ts"].as_u64().unwrap() > 0);
    assert_eq!(newest["actions"][0], "notify");
    assert_eq!(newest["event"]["content"]["body"], "three");
    assert!(newest["event"].get("room_id").is_none());
    assert!(all.get("next_token").is_none());

    let page = bob.get_ok("/_matrix/client/v3/notifications?limit=2").await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 2);
    let token = page["next_token"].as_str().unwrap().to_owned();
    let rest = bob
        .get_ok(&format!(
            "/_matrix/client/v3/notifications?limit=2&from={token}"
        ))
        .await;
    let rest_ids: Vec<_> = rest["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["event_id"].clone())
        .collect();
    assert_eq!(rest_ids, [json!(first)]);
    assert!(rest.get("next_token").is_none());

    let highlights = bob
        .get_ok("/_matrix/client/v3/notifications?only=highlight")
        .await;
    let highlight_ids: Vec<_> = highlights["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["event_id"].clone())
        .collect();
    assert_eq!(highlight_ids, [json!(mention)]);

    receipt(&bob, &room, "m.read", &mention, json!({})).await;
    let after = bob.get_ok("/_matrix/client/v3/notifications").await;
    let read: Vec<_> = after["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["read"].clone())
        .collect();
    assert_eq!(read, [json!(false), json!(true), json!(true)]);
    // Alice, the first user, is a server admin: her only notification is the admin room's invite.
    let alices = alice.get_ok("/_matrix/client/v3/notifications").await;
    assert!(
        alices["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["room_id"] != room.as_str()),
        "{alices}"
    );
    for bad in ["from=x", "limit=-1", "limit=many"] {
        assert_error(
            &bob.get(&format!("/_matrix/client/v3/notifications?{bad}"))
                .await,
            400,
            "M_INVALID_PARAM",
        );
    }
}

/// `/notifications` merges the user's rooms by position, across pages; a room the user left
/// keeps its notifications listed.
#[tokio::test]
async fn notifications_of_several_rooms_come_newest_first_across_pages() {
    let server = TestServer::start().await;
    let (alice, bob, first_room) = shared_room(&server).await;
    let second_room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&second_room).await;
    let mut sent = Vec::new();
    for (index, room) in [
        &first_room,
        &second_room,
        &second_room,
        &first_room,
        &second_room,
    ]
    .into_iter()
    .enumerate()
    {
        let body = format!("message {index}");
        sent.push(send(&alice, room, json!({ "msgtype": "m.text", "body": body })).await);
    }
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&second_room)),
        json!({}),
    )
    .await;
    let newest_first: Vec<Value> = sent.iter().rev().map(|id| json!(id)).collect();
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..5 {
        let path = match &from {
            Some(token) => format!("/_matrix/client/v3/notifications?limit=2&from={token}"),
            None => "/_matrix/client/v3/notifications?limit=2".to_owned(),
        };
        let page = bob.get_ok(&path).await;
        for notification in page["notifications"].as_array().unwrap() {
            seen.push(notification["event"]["event_id"].clone());
            let room = notification["room_id"].as_str().unwrap();
            assert!(room == first_room || room == second_room, "{notification}");
        }
        match page["next_token"].as_str() {
            Some(token) => from = Some(token.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_from_another_server_notify_local_users() {
    use crate::federation::{is_message, join_via, two_servers, wait_for_event};
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    wait_for_event(&alice, &room, "bob's join", |event| {
        event["type"] == "m.room.member" && event["state_key"] == bob_id
    })
    .await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "from afar" }),
    )
    .await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "psst", "m.mentions": { "user_ids": [bob_id] } }),
    )
    .await;
    wait_for_event(&bob, &room, "the mention", is_message("psst")).await;
    assert_eq!(unread(&bob, &room, "{}").await.0, counts(2, 1));
    let list = bob
        .get_ok("/_matrix/client/v3/notifications?only=highlight")
        .await;
    assert_eq!(list["notifications"][0]["event"]["content"]["body"], "psst");
    // The sender's server counts nothing for her own messages.
    assert_eq!(unread(&alice, &room, "{}").await.0, counts(0, 0));
}

#[tokio::test]
async fn read_notifications_past_their_retention_are_dropped_and_unread_ones_stay() {
    // Retention 0: a notification is old as soon as it is made, so only reading decides.
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.read_notification_retention_ms = 0;
    })
    .await;
    server.dir = Some(dir);
    let (alice, bob, room) = shared_room(&server).await;
    let first = send(&alice, &room, json!({ "msgtype": "m.text", "body": "one" })).await;
    let second = send(&alice, &room, json!({ "msgtype": "m.text", "body": "two" })).await;
    let third = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "three" }),
    )
    .await;
    let listed = |client: Client| async move {
        client.get_ok("/_matrix/client/v3/notifications").await["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["event"]["event_id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(bob.clone()).await,
        [json!(third), json!(second), json!(first)]
    );
    // A private receipt reads up to the second message: the two read ones go, the unread one
    // stays and still counts.
    receipt(&bob, &room, "m.read.private", &second, json!({})).await;
    assert_eq!(listed(bob.clone()).await, [json!(third)]);
    assert_eq!(unread(&bob, &room, "{}").await.0, counts(1, 0));
    receipt(&bob, &room, "m.read", &third, json!({})).await;
    assert_eq!(listed(bob.clone()).await, Vec::<Value>::new());
    assert_eq!(unread(&bob, &room, "{}").await.0, counts(0, 0));
}

/// bob's plain and per-thread counts in `room`.
async fn both_counts(bob: &Client, room: &str) -> (Value, Value, Value) {
    let by_thread = r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#;
    let plain = unread(bob, room, "{}").await.0;
    let (main, threads) = unread(bob, room, by_thread).await;
    (plain, main, threads)
}

/// alice's messages for the counts-and-restart tests: two in the main timeline around a mention,
/// a thread under the first with a reply and a mention, and another main one. Returns the first,
/// the mention, the thread's first reply and the last message.
async fn counted_messages(alice: &Client, room: &str, bob_id: &str) -> [String; 4] {
    let text = |body: &str| json!({ "msgtype": "m.text", "body": body });
    let first = send(alice, room, text("one")).await;
    let mention = send(
        alice,
        room,
        json!({ "msgtype": "m.text", "body": "two", "m.mentions": { "user_ids": [bob_id] } }),
    )
    .await;
    let thread = |body: &str, mentions: Value| json!({ "msgtype": "m.text", "body": body, "m.mentions": mentions, "m.relates_to": { "rel_type": "m.thread", "event_id": first } });
    let reply = send(alice, room, thread("reply", json!({}))).await;
    send(alice, room, thread("ping", json!({ "user_ids": [bob_id] }))).await;
    let last = send(alice, room, text("three")).await;
    [first, mention, reply, last]
}

#[tokio::test]
async fn counts_after_receipts_in_the_middle_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let (alice, bob, room) = shared_room(&server).await;
    let bob_id = bob.user_id().await;
    let [first, mention, reply, _] = counted_messages(&alice, &room, &bob_id).await;
    assert_eq!(
        both_counts(&bob, &room).await,
        (
            counts(5, 2),
            counts(3, 1),
            json!({ first.clone(): counts(2, 1) })
        )
    );
    // A private receipt on the mention reads it and what came before it, the thread included
    // (its events come after it here, so they stay unread).
    receipt(&bob, &room, "m.read.private", &mention, json!({})).await;
    assert_eq!(
        both_counts(&bob, &room).await,
        (
            counts(3, 1),
            counts(1, 0),
            json!({ first.clone(): counts(2, 1) })
        )
    );
    // A threaded receipt on the first reply reads the thread up to it and nothing else.
    receipt(&bob, &room, "m.read", &reply, json!({ "thread_id": first })).await;
    let before_restart = (
        counts(2, 1),
        counts(1, 0),
        json!({ first.clone(): counts(1, 1) }),
    );
    assert_eq!(both_counts(&bob, &room).await, before_restart);
    server.stop().await;

    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let (alice_token, bob_token) = (alice.token.clone(), bob.token.clone());
    let (mut alice_again, mut bob) = (server.client(), server.client());
    alice_again.token = alice_token;
    bob.token = bob_token;
    assert_eq!(both_counts(&bob, &room).await, before_restart);
    // New events keep counting after the restart; an unthreaded m.read on the newest reads all.
    let newest = send(
        &alice_again,
        &room,
        json!({ "msgtype": "m.text", "body": "after" }),
    )
    .await;
    assert_eq!(
        both_counts(&bob, &room).await,
        (
            counts(3, 1),
            counts(2, 0),
            json!({ first.clone(): counts(1, 1) })
        )
    );
    receipt(&bob, &room, "m.read", &newest, json!({})).await;
    assert_eq!(
        both_counts(&bob, &room).await,
        (counts(0, 0), counts(0, 0), Value::Null)
    );
}

#[tokio::test]
async fn counts_of_a_database_from_before_the_counters_are_built_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let (alice, bob, room) = shared_room(&server).await;
    let bob_id = bob.user_id().await;
    let [first, mention, reply, _] = counted_messages(&alice, &room, &bob_id).await;
    receipt(&bob, &room, "m.read.private", &mention, json!({})).await;
    receipt(&bob, &room, "m.read", &reply, json!({ "thread_id": first })).await;
    let expected = both_counts(&bob, &room).await;
    assert_eq!(expected.0, counts(2, 1));
    server.stop().await;
    // What a database written before the counters holds: the notifications alone (keys of user,
    // room and stream position), without the counters and the mark that they were built.
    {
        let db = plait::store::Db::open(dir.path(), false).unwrap();
        assert!(db
            .tree("userroomcount_notification")
            .iter_from(&[], false)
            .next()
            .is_some());
        let counters = db.tree("userroomthread_unreadcount");
        let keys: Vec<Box<[u8]>> = counters
            .iter_from(&[], false)
            .map(|entry| entry.unwrap().0)
            .collect();
        assert!(!keys.is_empty());
        for key in keys {
            counters.remove(&key).unwrap();
        }
    }
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let mut bob_again = server.client();
    bob_again.token = bob.token.clone();
    assert_eq!(both_counts(&bob_again, &room).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_stay_exact_while_receipts_race_new_events() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let newest = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
        enc(&room)
    );
    for round in 0..12 {
        // Three messages go out while bob reads up to the newest event he can see.
        let senders: Vec<_> = (0..3)
            .map(|sender| {
                let (alice, room) = (alice.clone(), room.clone());
                tokio::spawn(async move {
                    let body = format!("{round}/{sender}");
                    send(&alice, &room, json!({ "msgtype": "m.text", "body": body })).await;
                })
            })
            .collect();
        let page = bob.get_ok(&newest).await;
        let event = page["chunk"][0]["event_id"].as_str().unwrap().to_owned();
        let kind = ["m.read", "m.read.private"][round % 2];
        receipt(&bob, &room, kind, &event, json!({})).await;
        for sender in senders {
            sender.await.unwrap();
        }
        // The stored counts agree with the notifications that `/notifications` shows as
        // unread (worked out there from the notifications and receipts, not the counters).
        let listed = bob
            .get_ok("/_matrix/client/v3/notifications?limit=100")
            .await;
        let listed = listed["notifications"].as_array().unwrap();
        assert_eq!(listed.len(), 3 * (round + 1));
        let unread_listed = listed.iter().filter(|n| n["read"] == false).count();
        assert_eq!(
            unread(&bob, &room, "{}").await.0,
            counts(unread_listed as u64, 0),
            "round {round}"
        );
    }
}
