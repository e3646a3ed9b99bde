//! Push notifications: push rules (defaults, CRUD, bad input), unread counts in `/sync`
//! (mentions, receipts, threads, muted rooms), `/notifications`, pushers, and delivery to a
//! real push gateway (an axum server in the test) with rejection and retry.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{assert_error, enc, Client, TestServer};

const RULES: &str = "/_matrix/client/v3/pushrules/global";

fn rule_path(kind: &str, rule_id: &str) -> String {
    format!("{RULES}/{kind}/{}", enc(rule_id))
}

fn rule_ids(rules: &Value, kind: &str) -> Vec<String> {
    rules["global"][kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A room of alice's that bob has joined.
async fn shared_room(server: &TestServer) -> (Client, Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    (alice, bob, room)
}

async fn join(client: &Client, room: &str) {
    client
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(room)),
            json!({}),
        )
        .await;
}

async fn send(client: &Client, room: &str, content: Value) -> String {
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
async fn unread(client: &Client, room: &str, filter: &str) -> (Value, Value) {
    let sync = client
        .get_ok(&format!("/_matrix/client/v3/sync?filter={}", enc(filter)))
        .await;
    let joined = &sync["rooms"]["join"][room];
    (
        joined["unread_notifications"].clone(),
        joined["unread_thread_notifications"].clone(),
    )
}

fn counts(notifications: u64, highlights: u64) -> Value {
    json!({ "notification_count": notifications, "highlight_count": highlights })
}

async fn receipt(client: &Client, room: &str, kind: &str, event: &str, body: Value) {
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
async fn default_push_rules_are_served_and_come_down_in_an_initial_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let all = alice.get_ok("/_matrix/client/v3/pushrules/").await;
    let overrides = rule_ids(&all, "override");
    assert_eq!(overrides[0], ".m.rule.master");
    for id in [
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
        ".m.rule.tombstone",
        ".m.rule.reaction",
        ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
    ] {
        assert!(overrides.contains(&id.to_owned()), "{id} in {overrides:?}");
    }
    assert_eq!(
        rule_ids(&all, "underride"),
        [
            ".m.rule.call",
            ".m.rule.encrypted_room_one_to_one",
            ".m.rule.room_one_to_one",
            ".m.rule.message",
            ".m.rule.encrypted"
        ]
    );
    assert_eq!(all["global"]["room"], json!([]));
    assert_eq!(all["global"]["sender"], json!([]));
    assert_eq!(all["global"]["override"][0]["enabled"], false);
    assert_eq!(all["global"]["override"][0]["default"], true);
    let global = alice.get_ok("/_matrix/client/v3/pushrules/global/").await;
    assert_eq!(global, all["global"]);

    let sync = alice.get_ok("/_matrix/client/v3/sync").await;
    let events = sync["account_data"]["events"].as_array().unwrap();
    let rules = events
        .iter()
        .find(|event| event["type"] == "m.push_rules")
        .expect("m.push_rules in the initial sync");
    assert_eq!(rules["content"], all);
    let user = alice.user_id().await;
    let stored = alice
        .get_ok(&format!(
            "/_matrix/client/v3/user/{}/account_data/m.push_rules",
            enc(&user)
        ))
        .await;
    assert_eq!(stored, all);
    let refused = alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.push_rules",
                enc(&user)
            ),
            json!({ "global": {} }),
        )
        .await;
    assert_error(&refused, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn push_rules_are_created_ordered_enabled_changed_and_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let since = alice.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let rule = |body: &str| {
        json!({
            "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": body }],
            "actions": ["notify"],
        })
    };
    alice
        .put_ok(&rule_path("override", "one"), rule("one"))
        .await;
    let one = alice.get_ok(&rule_path("override", "one")).await;
    assert_eq!(one["rule_id"], "one");
    assert_eq!(one["enabled"], true);
    assert_eq!(one["default"], false);
    assert_eq!(one["conditions"][0]["pattern"], "one");

    // A new rule is the most important user rule; `after` and `before` place it.
    alice
        .put_ok(&rule_path("override", "two"), rule("two"))
        .await;
    alice
        .put_ok(
            &format!("{}?after=two", rule_path("override", "three")),
            rule("three"),
        )
        .await;
    alice
        .put_ok(
            &format!("{}?before=two", rule_path("override", "four")),
            rule("four"),
        )
        .await;
    let all = alice.get_ok("/_matrix/client/v3/pushrules/").await;
    assert_eq!(
        rule_ids(&all, "override")[..6],
        [
            ".m.rule.master",
            "four",
            "two",
            "three",
            "one",
            ".m.rule.suppress_notices"
        ]
    );

    // Enabled and actions, on user rules and server-default ones.
    alice
        .put_ok(
            &format!("{}/enabled", rule_path("override", "one")),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(
        alice
            .get_ok(&format!("{}/enabled", rule_path("override", "one")))
            .await,
        json!({ "enabled": false })
    );
    // Replacing a rule keeps whether it is enabled.
    alice
        .put_ok(&rule_path("override", "one"), rule("uno"))
        .await;
    let one = alice.get_ok(&rule_path("override", "one")).await;
    assert_eq!(
        (
            one["enabled"].clone(),
            one["conditions"][0]["pattern"].clone()
        ),
        (json!(false), json!("uno"))
    );
    let actions = json!(["notify", { "set_tweak": "sound", "value": "bing" }, { "set_tweak": "highlight", "value": false }]);
    alice
        .put_ok(
            &format!("{}/actions", rule_path("underride", ".m.rule.message")),
            json!({ "actions": actions }),
        )
        .await;
    assert_eq!(
        alice
            .get_ok(&format!(
                "{}/actions",
                rule_path("underride", ".m.rule.message")
            ))
            .await,
        json!({ "actions": actions })
    );
    alice
        .put_ok(
            &format!("{}/enabled", rule_path("override", ".m.rule.master")),
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(
        alice
            .get_ok(&format!(
                "{}/enabled",
                rule_path("override", ".m.rule.master")
            ))
            .await["enabled"],
        true
    );

    // Room, sender and content rules.
    alice
        .put_ok(
            &rule_path("room", "!foo:example.com"),
            json!({ "actions": [] }),
        )
        .await;
    alice
        .put_ok(
            &rule_path("sender", "@carol:example.com"),
            json!({ "actions": ["dont_notify"] }),
        )
        .await;
    alice
        .put_ok(
            &rule_path("content", "cake"),
            json!({ "pattern": "cake*lie", "actions": ["notify"] }),
        )
        .await;
    for _ in 0..2 {
        let all = alice.get_ok("/_matrix/client/v3/pushrules/").await;
        assert_eq!(all["global"]["sender"][0]["actions"][0], "dont_notify");
        assert_eq!(all["global"]["room"][0]["rule_id"], "!foo:example.com");
        assert_eq!(all["global"]["content"][0]["pattern"], "cake*lie");
    }

    // Deleting.
    alice.delete(&rule_path("override", "one"), json!({})).await;
    assert_error(
        &alice.get(&rule_path("override", "one")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice.delete(&rule_path("override", "one"), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice
            .delete(&rule_path("override", ".m.rule.master"), json!({}))
            .await,
        400,
        "M_INVALID_PARAM",
    );

    // Bob's rules are his own.
    let bobs = bob.get_ok("/_matrix/client/v3/pushrules/").await;
    assert!(!rule_ids(&bobs, "override").contains(&"two".to_owned()));
    assert_eq!(bobs["global"]["override"][0]["enabled"], false);

    // The change reaches alice's next sync as account data.
    let changed = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}&timeout=0"))
        .await;
    let rules = changed["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.push_rules")
        .expect("changed rules in the incremental sync")
        .clone();
    assert_eq!(rules["content"]["global"]["override"][1]["rule_id"], "four");
}

#[tokio::test]
async fn bad_push_rules_are_refused_with_the_right_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let notify = json!({ "actions": ["notify"] });
    alice
        .put_ok(&rule_path("override", "mine"), notify.clone())
        .await;
    let check = |response: (u16, Value), status: u16, errcode: &str| {
        assert_error(&response, status, errcode);
    };
    check(
        alice
            .put(&rule_path("override", ".mine"), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(&rule_path("override", "back\\slash"), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(&rule_path("override", &"x".repeat(300)), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(
                &format!("{}?before=.m.rule.master", rule_path("override", "x")),
                notify.clone(),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(
                &format!("{}?after=missing", rule_path("override", "x")),
                notify.clone(),
            )
            .await,
        400,
        "M_UNKNOWN",
    );
    check(
        alice
            .put(&rule_path("room", "not-a-room"), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(&rule_path("sender", "not-a-user"), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice.put(&rule_path("content", "c"), notify.clone()).await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice.put(&rule_path("override", "x"), json!({})).await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(&rule_path("override", "x"), json!({ "actions": "notify" }))
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(&rule_path("override", "x"), json!({ "actions": ["bogus"] }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(&rule_path("override", "x"), json!({ "actions": [7] }))
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(
                &rule_path("override", "x"),
                json!({ "actions": [], "conditions": "nope" }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(
                &rule_path("override", "x"),
                json!({ "actions": [], "conditions": [{ "kind": "event_match" }] }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice.put(&rule_path("bogus", "x"), notify.clone()).await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice.get(&rule_path("bogus", "x")).await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice.get(&rule_path("override", "missing")).await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice
            .get(&format!("{}/enabled", rule_path("override", "missing")))
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice
            .put(
                &format!("{}/enabled", rule_path("override", "missing")),
                json!({ "enabled": true }),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice
            .put(
                &format!("{}/enabled", rule_path("override", "mine")),
                json!({ "enabled": "yes" }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(
                &format!("{}/actions", rule_path("override", "missing")),
                json!({ "actions": [] }),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice
            .put(
                &format!("{}/actions", rule_path("override", "mine")),
                json!({ "actions": {} }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        server.client().get("/_matrix/client/v3/pushrules/").await,
        401,
        "M_MISSING_TOKEN",
    );
    // A rule set may not grow without bound.
    let big = json!({ "pattern": "x".repeat(60_000), "actions": ["notify"] });
    for index in 0..4 {
        alice
            .put_ok(&rule_path("content", &format!("big{index}")), big.clone())
            .await;
    }
    check(
        alice.put(&rule_path("content", "big4"), big.clone()).await,
        413,
        "M_TOO_LARGE",
    );
    for index in 0..4 {
        alice
            .delete(&rule_path("content", &format!("big{index}")), json!({}))
            .await;
    }
    // None of the refused requests changed anything.
    let all = alice.get_ok("/_matrix/client/v3/pushrules/").await;
    assert_eq!(rule_ids(&all, "override")[1], "mine");
    assert_eq!(all["global"]["content"].as_array().unwrap().len(), 1);
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
    join(&bob, &other).await;
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
    assert_eq!(
        alice.get_ok("/_matrix/client/v3/notifications").await["notifications"],
        json!([])
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

fn pusher(url: &str, pushkey: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "profile_tag": "tag",
        "lang": "en",
        "data": { "url": url, "custom": 1 },
    })
}

async fn pushers(client: &Client) -> Vec<Value> {
    client.get_ok("/_matrix/client/v3/pushers").await["pushers"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn pushers_are_set_listed_replaced_and_deleted() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let url = "https://push.example.org/_matrix/push/v1/notify";
    assert_eq!(pushers(&bob).await, Vec::<Value>::new());
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(url, "key1"))
        .await;
    let listed = pushers(&bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["pushkey"], "key1");
    assert_eq!(listed[0]["app_id"], "org.example.app");
    assert_eq!(listed[0]["kind"], "http");
    assert_eq!(listed[0]["profile_tag"], "tag");
    assert_eq!(listed[0]["data"], json!({ "url": url, "custom": 1 }));
    // The same app ID and pushkey replace the pusher; another pushkey adds one.
    let mut renamed = pusher(url, "key1");
    renamed["device_display_name"] = json!("Tablet");
    bob.post_ok("/_matrix/client/v3/pushers/set", renamed).await;
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(url, "key2"))
        .await;
    let listed = pushers(&bob).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["device_display_name"], "Tablet");

    // Without `append`, another user's pusher with the same app ID and pushkey takes it over.
    let mut appended = pusher(url, "key2");
    appended["append"] = json!(true);
    carol
        .post_ok("/_matrix/client/v3/pushers/set", appended)
        .await;
    assert_eq!(pushers(&bob).await.len(), 2);
    carol
        .post_ok("/_matrix/client/v3/pushers/set", pusher(url, "key1"))
        .await;
    let left: Vec<_> = pushers(&bob)
        .await
        .iter()
        .map(|p| p["pushkey"].clone())
        .collect();
    assert_eq!(left, [json!("key2")]);
    assert_eq!(pushers(&carol).await.len(), 2);

    // `kind: null` deletes.
    let mut delete = pusher(url, "key2");
    delete["kind"] = Value::Null;
    bob.post_ok("/_matrix/client/v3/pushers/set", delete).await;
    assert_eq!(pushers(&bob).await, Vec::<Value>::new());

    let set = |body: Value| {
        let bob = bob.clone();
        async move { bob.post("/_matrix/client/v3/pushers/set", body).await }
    };
    for bad_url in [
        "https://push.example.org/wrong/path",
        "http://push.example.org/_matrix/push/v1/notify",
        "not a url",
        "ftp://push.example.org/_matrix/push/v1/notify",
    ] {
        assert_error(&set(pusher(bad_url, "k")).await, 400, "M_INVALID_PARAM");
    }
    let mut no_url = pusher(url, "k");
    no_url["data"] = json!({});
    assert_error(&set(no_url).await, 400, "M_INVALID_PARAM");
    let mut no_data = pusher(url, "k");
    no_data.as_object_mut().unwrap().remove("data");
    assert_error(&set(no_data).await, 400, "M_BAD_JSON");
    let mut email = pusher(url, "bob@example.org");
    email["kind"] = json!("email");
    email["app_id"] = json!("m.email");
    assert_error(&set(email).await, 400, "M_INVALID_PARAM");
    let mut no_lang = pusher(url, "k");
    no_lang.as_object_mut().unwrap().remove("lang");
    assert_error(&set(no_lang).await, 400, "M_BAD_JSON");
    assert_error(
        &set(pusher(url, &"k".repeat(513))).await,
        400,
        "M_INVALID_PARAM",
    );
    let mut long_app = pusher(url, "k");
    long_app["app_id"] = json!("a".repeat(65));
    assert_error(&set(long_app).await, 400, "M_INVALID_PARAM");
    assert_eq!(pushers(&bob).await, Vec::<Value>::new());
}

/// A push gateway on loopback: every notify body goes to the channel; it answers with
/// `rejected` listing the pushkeys in `reject`.
async fn gateway(
    listener: tokio::net::TcpListener,
    reject: Vec<String>,
) -> mpsc::UnboundedReceiver<Value> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/_matrix/push/v1/notify",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sender = sender.clone();
            let reject = reject.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap();
                let _ = sender.send(body);
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    json!({ "rejected": reject }).to_string(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    receiver
}

async fn next_push(receiver: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(60), receiver.recv())
        .await
        .expect("a push reached the gateway")
        .unwrap()
}

async fn server_allowing_http() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.push_gateway_allow_http = true;
    })
    .await;
    server.dir = Some(dir);
    server
}

#[tokio::test]
async fn an_http_pusher_delivers_to_its_gateway_and_a_rejected_pushkey_removes_it() {
    let server = server_allowing_http().await;
    let (alice, bob, room) = shared_room(&server).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/_matrix/push/v1/notify",
        listener.local_addr().unwrap()
    );
    let mut pushes = gateway(listener, vec!["gone".to_owned()]).await;
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(&url, "full"))
        .await;
    let event = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "ping" }),
    )
    .await;
    let push = next_push(&mut pushes).await;
    let notification = &push["notification"];
    assert_eq!(notification["event_id"], event);
    assert_eq!(notification["room_id"], room);
    assert_eq!(notification["type"], "m.room.message");
    assert_eq!(notification["sender"], alice.user_id().await);
    assert_eq!(notification["content"]["body"], "ping");
    assert_eq!(notification["counts"]["unread"], 1);
    assert_eq!(notification["prio"], "high");
    let device = &notification["devices"][0];
    assert_eq!(device["app_id"], "org.example.app");
    assert_eq!(device["pushkey"], "full");
    assert_eq!(device["data"], json!({ "custom": 1 }));
    assert_eq!(device["tweaks"]["sound"], "default");

    // `event_id_only` leaves the event out; a pushkey the gateway rejects is removed.
    let mut short = pusher(&url, "gone");
    short["data"]["format"] = json!("event_id_only");
    short["append"] = json!(true);
    bob.post_ok("/_matrix/client/v3/pushers/set", short).await;
    let second = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "again" }),
    )
    .await;
    let mut by_key = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let push = next_push(&mut pushes).await;
        let key = push["notification"]["devices"][0]["pushkey"]
            .as_str()
            .unwrap()
            .to_owned();
        by_key.insert(key, push);
    }
    let short = &by_key["gone"]["notification"];
    assert_eq!(short["event_id"], second);
    assert_eq!(short["counts"]["unread"], 2);
    assert!(
        short.get("content").is_none() && short.get("type").is_none(),
        "{short}"
    );
    assert_eq!(
        short["devices"][0]["data"],
        json!({ "custom": 1, "format": "event_id_only" })
    );
    let remaining: Vec<_> = pushers(&bob)
        .await
        .iter()
        .map(|p| p["pushkey"].clone())
        .collect();
    assert_eq!(remaining, [json!("full")]);
    // Bob's own messages are not pushed to him.
    receipt(&bob, &room, "m.read", &second, json!({})).await;
    send(
        &bob,
        &room,
        json!({ "msgtype": "m.text", "body": "my own" }),
    )
    .await;
    let third = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "third" }),
    )
    .await;
    let push = next_push(&mut pushes).await;
    assert_eq!(push["notification"]["event_id"], third);
    assert_eq!(push["notification"]["counts"]["unread"], 1);
}

#[tokio::test]
async fn a_gateway_that_is_down_gets_the_push_later_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |config| {
        config.push_gateway_allow_http = true;
    })
    .await;
    let (alice, bob, room) = shared_room(&server).await;
    // A port with nobody listening: connections are refused until the gateway starts.
    let address = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{address}/_matrix/push/v1/notify");
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(&url, "later"))
        .await;
    let event = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "wait for it" }),
    )
    .await;
    // Let the worker fail at least once, then restart: the queued push is in the database.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop((alice, bob));
    server.stop().await;
    let server = TestServer::start_at(dir.path(), |config| {
        config.push_gateway_allow_http = true;
    })
    .await;
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let mut pushes = gateway(listener, Vec::new()).await;
    let push = next_push(&mut pushes).await;
    assert_eq!(push["notification"]["event_id"], event);
    assert_eq!(push["notification"]["devices"][0]["pushkey"], "later");
    drop(server);
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
async fn pushers_go_with_the_device_that_set_them() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let login = server
        .client()
        .post_ok(
            "/_matrix/client/v3/login",
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "password" }),
        )
        .await;
    let other = Client {
        token: Some(login["access_token"].as_str().unwrap().to_owned()),
        ..server.client()
    };
    let url = "https://push.example.org/_matrix/push/v1/notify";
    other
        .post_ok("/_matrix/client/v3/pushers/set", pusher(url, "other"))
        .await;
    bob.post_ok("/_matrix/client/v3/pushers/set", pusher(url, "mine"))
        .await;
    assert_eq!(pushers(&bob).await.len(), 2);
    // A password change logs out the other devices, and their pushers go with them.
    let user = bob.user_id().await;
    bob.post_ok(
        "/_matrix/client/v3/account/password",
        json!({
            "new_password": "new password",
            "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": "password" },
        }),
    )
    .await;
    let left: Vec<_> = pushers(&bob)
        .await
        .iter()
        .map(|p| p["pushkey"].clone())
        .collect();
    assert_eq!(left, [json!("mine")]);
    bob.post_ok("/_matrix/client/v3/logout", json!({})).await;
    assert!(server
        .services
        .push
        .pushers
        .iter_pushers(&ruma::UserId::parse(&user).unwrap())
        .unwrap()
        .is_empty());
}
