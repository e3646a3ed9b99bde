//! Typing notifications, read receipts and read markers on one server, seen through `/sync`.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

/// The next batch token of a sync response.
pub fn next_batch(response: &Value) -> String {
    response["next_batch"].as_str().unwrap().to_owned()
}

/// The ephemeral events of type `kind` in a room of a sync response.
pub fn ephemeral<'a>(response: &'a Value, room: &str, kind: &str) -> Vec<&'a Value> {
    response["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["type"] == kind)
        .collect()
}

/// The user IDs of the `m.typing` event in a room of a sync response, if there is one.
pub fn typing_users(response: &Value, room: &str) -> Option<Vec<String>> {
    ephemeral(response, room, "m.typing").first().map(|event| {
        event["content"]["user_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|user| user.as_str().unwrap().to_owned())
            .collect()
    })
}

/// Long-polls `/sync` from `since` until a response matches, at most 40 times; returns it.
pub async fn sync_until(
    client: &Client,
    since: &str,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let mut since = since.to_owned();
    for _ in 0..40 {
        let response = client
            .get_ok(&format!(
                "/_matrix/client/v3/sync?since={since}&timeout=5000"
            ))
            .await;
        if matches(&response) {
            return response;
        }
        since = next_batch(&response);
    }
    panic!("{what} never showed in /sync");
}

fn typing_path(room: &str, user: &str) -> String {
    format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        enc(room),
        enc(user)
    )
}

fn receipt_path(room: &str, kind: &str, event: &str) -> String {
    format!(
        "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
        enc(room),
        enc(event)
    )
}

/// A room of alice's that bob has joined.
async fn shared_room(server: &TestServer) -> (Client, Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    (alice, bob, room)
}

#[tokio::test]
async fn typing_shows_in_sync_and_ends_by_itself() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let carol = server.register("carol").await;
    let since = next_batch(&bob.get_ok("/_matrix/client/v3/sync").await);

    // Only the user themselves, and only in a room they are in.
    assert_error(
        &bob.put(
            &typing_path(&room, "@alice:localhost"),
            json!({ "typing": true, "timeout": 1000 }),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &carol
            .put(
                &typing_path(&room, "@carol:localhost"),
                json!({ "typing": true, "timeout": 1000 }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice
            .put(&typing_path(&room, "@alice:localhost"), json!({}))
            .await,
        400,
        "M_BAD_JSON",
    );

    // A typist shows in bob's next sync and in an initial sync.
    alice
        .put_ok(
            &typing_path(&room, "@alice:localhost"),
            json!({ "typing": true, "timeout": 1500 }),
        )
        .await;
    let typing = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    assert_eq!(
        typing_users(&typing, &room),
        Some(vec!["@alice:localhost".to_owned()]),
        "{typing}"
    );
    let initial = bob.get_ok("/_matrix/client/v3/sync").await;
    assert_eq!(
        typing_users(&initial, &room),
        Some(vec!["@alice:localhost".to_owned()])
    );

    // Nobody stops it: the long-poll is woken when the timeout runs out. A response that
    // returns at its own timeout was built before the wait, so seeing the empty set here means
    // the expiry woke the request.
    let since = next_batch(&typing);
    let expired = bob
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={since}&timeout=30000"
        ))
        .await;
    assert_eq!(typing_users(&expired, &room), Some(vec![]), "{expired}");
    let initial = bob.get_ok("/_matrix/client/v3/sync").await;
    assert_eq!(typing_users(&initial, &room), None, "nobody types any more");

    // Stopping on purpose shows at once too.
    let since = next_batch(&expired);
    alice
        .put_ok(
            &typing_path(&room, "@alice:localhost"),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    alice
        .put_ok(
            &typing_path(&room, "@alice:localhost"),
            json!({ "typing": false }),
        )
        .await;
    let stopped = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    assert_eq!(typing_users(&stopped, &room), Some(vec![]), "{stopped}");
    // An ephemeral filter that leaves typing out.
    let filter = json!({ "room": { "ephemeral": { "not_types": ["m.typing"] } } });
    let filtered = bob
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={since}&filter={}",
            enc(&filter.to_string())
        ))
        .await;
    assert_eq!(typing_users(&filtered, &room), None, "{filtered}");

    // A token in the older `s<count>` form still works: typing position 0, so every room whose
    // typists changed in this run is news.
    let count = since.trim_start_matches('s').split('_').next().unwrap();
    let old = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since=s{count}"))
        .await;
    assert_eq!(typing_users(&old, &room), Some(vec![]), "{old}");
}

/// Synapse's leniency, kept: `typing: true` without `timeout` types for the default 30 s
/// (ruma's request type would refuse it, so the handler stays untyped).
#[tokio::test]
async fn typing_without_timeout_uses_the_default() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let since = next_batch(&bob.get_ok("/_matrix/client/v3/sync").await);
    alice
        .put_ok(
            &typing_path(&room, "@alice:localhost"),
            json!({ "typing": true }),
        )
        .await;
    let typing = sync_until(&bob, &since, "alice typing", |response| {
        typing_users(response, &room).is_some()
    })
    .await;
    assert_eq!(
        typing_users(&typing, &room),
        Some(vec!["@alice:localhost".to_owned()]),
        "{typing}"
    );
}

#[tokio::test]
async fn read_receipts_show_to_members_and_private_ones_to_their_owner() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let first = alice.send_text(&room, "m1", "one").await;
    let second = alice.send_text(&room, "m2", "two").await;
    let alice_since = next_batch(&alice.get_ok("/_matrix/client/v3/sync").await);
    let bob_since = next_batch(&bob.get_ok("/_matrix/client/v3/sync").await);

    bob.post_ok(&receipt_path(&room, "m.read", &first), json!({}))
        .await;
    bob.post_ok(&receipt_path(&room, "m.read.private", &second), json!({}))
        .await;
    bob.post_ok(
        &receipt_path(&room, "m.read", &second),
        json!({ "thread_id": "main" }),
    )
    .await;

    let seen = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={alice_since}"))
        .await;
    let receipts = ephemeral(&seen, &room, "m.receipt");
    assert_eq!(receipts.len(), 2, "one event per thread: {seen}");
    let unthreaded = &receipts[0]["content"];
    assert!(unthreaded[&first]["m.read"]["@bob:localhost"]["ts"].is_u64());
    assert!(unthreaded[&first]["m.read"]["@bob:localhost"]
        .get("thread_id")
        .is_none());
    assert_eq!(
        receipts[1]["content"][&second]["m.read"]["@bob:localhost"]["thread_id"],
        "main"
    );
    assert!(
        !seen.to_string().contains("m.read.private"),
        "private receipts stay with their owner: {seen}"
    );

    let own = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={bob_since}"))
        .await;
    let receipts = ephemeral(&own, &room, "m.receipt");
    assert!(
        receipts.iter().any(
            |event| event["content"][&second]["m.read.private"]["@bob:localhost"]["ts"].is_u64()
        ),
        "{own}"
    );

    // A newer receipt replaces the older one of the same kind; an incremental sync carries only
    // what changed, an initial sync every current receipt.
    let alice_since = next_batch(&seen);
    bob.post_ok(&receipt_path(&room, "m.read", &second), json!({}))
        .await;
    let newer = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={alice_since}"))
        .await;
    let receipts = ephemeral(&newer, &room, "m.receipt");
    assert_eq!(receipts.len(), 1, "{newer}");
    assert!(receipts[0]["content"].get(&first).is_none(), "{newer}");
    assert!(receipts[0]["content"][&second]["m.read"]["@bob:localhost"].is_object());
    let initial = alice.get_ok("/_matrix/client/v3/sync").await;
    let all = serde_json::to_string(&ephemeral(&initial, &room, "m.receipt")).unwrap();
    assert!(!all.contains(&first), "replaced: {all}");
    assert!(all.contains("\"thread_id\":\"main\""), "{all}");
    assert!(!all.contains("m.read.private"), "{all}");

    // Nothing new: no ephemeral events and the long-poll times out empty.
    let quiet = alice
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={}&timeout=100",
            next_batch(&newer)
        ))
        .await;
    assert!(quiet["rooms"]["join"].get(&room).is_none(), "{quiet}");
}

#[tokio::test]
async fn read_markers_set_fully_read_and_bad_receipts_are_refused() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let carol = server.register("carol").await;
    let first = alice.send_text(&room, "m1", "one").await;
    let second = alice.send_text(&room, "m2", "two").await;
    let since = next_batch(&bob.get_ok("/_matrix/client/v3/sync").await);
    let alice_since = next_batch(&alice.get_ok("/_matrix/client/v3/sync").await);

    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
        json!({ "m.fully_read": first, "m.read": second }),
    )
    .await;
    let synced = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    let account_data = &synced["rooms"]["join"][&room]["account_data"]["events"];
    assert!(
        account_data
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["type"] == "m.fully_read" && event["content"]["event_id"] == first),
        "{synced}"
    );
    let seen = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={alice_since}"))
        .await;
    assert!(
        ephemeral(&seen, &room, "m.receipt")[0]["content"][&second]["m.read"]["@bob:localhost"]
            .is_object(),
        "{seen}"
    );
    // The receipt endpoint with m.fully_read moves the same marker.
    bob.post_ok(&receipt_path(&room, "m.fully_read", &second), json!({}))
        .await;
    let marker = bob
        .get_ok(&format!(
            "/_matrix/client/v3/user/@bob:localhost/rooms/{}/account_data/m.fully_read",
            enc(&room)
        ))
        .await;
    assert_eq!(marker["event_id"], second.as_str());

    let check = |response: (u16, Value), status: u16, errcode: &str| {
        assert_error(&response, status, errcode);
    };
    check(
        bob.post(&receipt_path(&room, "m.unread", &first), json!({}))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        bob.post(&receipt_path(&room, "m.read", "$nope:localhost"), json!({}))
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        bob.post(&receipt_path(&room, "m.read", "$nope"), json!({}))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        bob.post(&receipt_path(&room, "m.read", "not-an-event"), json!({}))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        bob.post(
            &receipt_path(&room, "m.read", &first),
            json!({ "thread_id": "" }),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        bob.post(
            &receipt_path(&room, "m.read", &first),
            json!({ "thread_id": 5 }),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        bob.post(
            &receipt_path(&room, "m.fully_read", &first),
            json!({ "thread_id": "main" }),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        carol
            .post(&receipt_path(&room, "m.read", &first), json!({}))
            .await,
        403,
        "M_FORBIDDEN",
    );
    // An event of another room is not found in this one.
    let other = alice.create_room(json!({})).await;
    let elsewhere = alice.send_text(&other, "m3", "elsewhere").await;
    check(
        bob.post(&receipt_path(&room, "m.read", &elsewhere), json!({}))
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        bob.post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
            json!({ "m.fully_read": first, "m.read": "$nope" }),
        )
        .await,
        404,
        "M_NOT_FOUND",
    );
    let unchanged = bob
        .get_ok(&format!(
            "/_matrix/client/v3/user/@bob:localhost/rooms/{}/account_data/m.fully_read",
            enc(&room)
        ))
        .await;
    assert_eq!(
        unchanged["event_id"],
        second.as_str(),
        "nothing is written when one event is bad"
    );
}

#[tokio::test]
async fn typists_seen_before_a_restart_are_cleared_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let (alice, bob, room) = shared_room(&server).await;
    alice
        .put_ok(
            &typing_path(&room, "@alice:localhost"),
            json!({ "typing": true, "timeout": 60000 }),
        )
        .await;
    let seen = bob.get_ok("/_matrix/client/v3/sync").await;
    assert_eq!(
        typing_users(&seen, &room),
        Some(vec!["@alice:localhost".to_owned()])
    );
    server.stop().await;

    // Typing lives in memory: after the restart nobody types, and a token that saw alice typing
    // is told so.
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let mut bob_again = server.client();
    bob_again.token = bob.token.clone();
    let after = bob_again
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={}",
            next_batch(&seen)
        ))
        .await;
    assert_eq!(typing_users(&after, &room), Some(vec![]), "{after}");
    let quiet = bob_again
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={}&timeout=100",
            next_batch(&after)
        ))
        .await;
    assert!(quiet["rooms"]["join"].get(&room).is_none(), "{quiet}");
}
