//! Presence over HTTP: a user's own state and status message, who may see it (users sharing a
//! room), `/sync`'s `presence` section and `set_presence`, the idle timeout, restarts, and
//! presence crossing between two Plait servers.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, Client, TestServer},
    federation::{join_via, two_servers},
};

fn status_path(user: &str) -> String {
    format!("/_matrix/client/v3/presence/{}/status", enc(user))
}

/// The content of the last `m.presence` event from `user` in a sync response.
fn presence_of<'a>(sync: &'a Value, user: &str) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|event| event["type"] == "m.presence" && event["sender"] == user)
        .map(|event| &event["content"])
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().unwrap().to_owned()
}

/// Polls `GET /presence/{user}/status` as `viewer` until `matches` holds, or fails after 20 s.
async fn wait_for_presence(viewer: &Client, user: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, body) = viewer.get(&status_path(user)).await;
        if status == 200 && matches(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the presence of {user} never matched; last answer: {last}");
}

/// Polls incremental syncs from `since` until one carries `user`'s presence matching `matches`.
async fn wait_for_synced_presence(
    client: &Client,
    since: &str,
    user: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let mut since = since.to_owned();
    for _ in 0..40 {
        let sync = client
            .get_ok(&format!(
                "/_matrix/client/v3/sync?since={since}&timeout=500"
            ))
            .await;
        if let Some(content) = presence_of(&sync, user).filter(|content| matches(content)) {
            return content.clone();
        }
        since = next_batch(&sync);
    }
    panic!("no sync carried the expected presence of {user}");
}

#[tokio::test]
async fn own_presence_can_be_set_and_read() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_status = status_path("@alice:localhost");

    let never_set = alice.get_ok(&alice_status).await;
    assert_eq!(never_set["presence"], "offline", "{never_set}");
    assert_eq!(never_set["currently_active"], false);

    alice
        .put_ok(
            &alice_status,
            json!({ "presence": "online", "status_msg": "in a meeting" }),
        )
        .await;
    let online = alice.get_ok(&alice_status).await;
    assert_eq!(online["presence"], "online", "{online}");
    assert_eq!(online["status_msg"], "in a meeting");
    assert_eq!(online["currently_active"], true);
    assert!(
        online["last_active_ago"].as_u64().unwrap() < 10_000,
        "{online}"
    );

    // PUT replaces the whole status: without status_msg, the message is gone.
    alice
        .put_ok(&alice_status, json!({ "presence": "unavailable" }))
        .await;
    let away = alice.get_ok(&alice_status).await;
    assert_eq!(away["presence"], "unavailable", "{away}");
    assert!(away.get("status_msg").is_none(), "{away}");
    assert_eq!(away["currently_active"], false);

    // Only one's own presence can be set, and only to the spec's states.
    assert_error(
        &alice
            .put(
                &status_path("@bob:localhost"),
                json!({ "presence": "online" }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    for body in [
        json!({ "presence": "busy" }),
        json!({}),
        json!({ "presence": 1 }),
        json!({ "presence": "online", "status_msg": 5 }),
        json!({ "presence": "online", "status_msg": "x".repeat(1025) }),
    ] {
        assert_error(&alice.put(&alice_status, body).await, 400, "M_BAD_JSON");
    }
    assert_error(
        &alice.get("/_matrix/client/v3/sync?set_presence=busy").await,
        400,
        "M_INVALID_PARAM",
    );

    // Others: unknown users are 404, users sharing no room 403, room mates 200.
    assert_error(
        &alice.get(&status_path("@nobody:localhost")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice.get(&status_path("not-a-user")).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&bob.get(&alice_status).await, 403, "M_FORBIDDEN");
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        json!({}),
    )
    .await;
    let seen = bob.get_ok(&alice_status).await;
    assert_eq!(seen["presence"], "unavailable", "{seen}");
}

#[tokio::test]
async fn presence_reaches_only_users_sharing_a_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        json!({}),
    )
    .await;
    carol.create_room(json!({})).await;

    let bob_initial = bob.get_ok("/_matrix/client/v3/sync").await;
    assert_eq!(
        presence_of(&bob_initial, "@bob:localhost").unwrap()["presence"],
        "online",
        "syncing makes bob online and he sees himself: {bob_initial}"
    );
    let carol_since = next_batch(&carol.get_ok("/_matrix/client/v3/sync").await);

    alice
        .put_ok(
            &status_path("@alice:localhost"),
            json!({ "presence": "online", "status_msg": "hello" }),
        )
        .await;
    let bob_sync = bob
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={}",
            next_batch(&bob_initial)
        ))
        .await;
    let seen = presence_of(&bob_sync, "@alice:localhost").expect("bob sees alice");
    assert_eq!(seen["presence"], "online", "{bob_sync}");
    assert_eq!(seen["status_msg"], "hello");
    assert_eq!(seen["currently_active"], true);
    assert!(seen["last_active_ago"].is_u64());
    assert!(
        presence_of(&bob_sync, "@bob:localhost").is_none(),
        "only changes since the token: {bob_sync}"
    );
    let carol_sync = carol
        .get_ok(&format!("/_matrix/client/v3/sync?since={carol_since}"))
        .await;
    assert!(
        presence_of(&carol_sync, "@alice:localhost").is_none(),
        "carol shares no room with alice: {carol_sync}"
    );
    assert_error(
        &carol.get(&status_path("@alice:localhost")).await,
        403,
        "M_FORBIDDEN",
    );

    // A change wakes a long-polling sync of a room mate.
    let since = next_batch(&bob_sync);
    let waiting = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move {
            bob.get_ok(&format!(
                "/_matrix/client/v3/sync?since={since}&timeout=20000"
            ))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing changed yet");
    alice
        .put_ok(
            &status_path("@alice:localhost"),
            json!({ "presence": "unavailable", "status_msg": "lunch" }),
        )
        .await;
    let woken = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by the presence change")
        .unwrap();
    let seen = presence_of(&woken, "@alice:localhost").expect("the change");
    assert_eq!(seen["presence"], "unavailable", "{woken}");
    assert_eq!(seen["status_msg"], "lunch");
    assert_eq!(seen["currently_active"], false);

    // The sync filter's presence part applies.
    for filter in [
        json!({ "presence": { "not_senders": ["@alice:localhost"] } }),
        json!({ "presence": { "types": ["m.room.message"] } }),
    ] {
        let filtered = bob
            .get_ok(&format!(
                "/_matrix/client/v3/sync?since={since}&filter={}",
                enc(&filter.to_string())
            ))
            .await;
        assert!(
            presence_of(&filtered, "@alice:localhost").is_none(),
            "{filter}: {filtered}"
        );
    }

    // Joining a room shows its members' presence, changed or not.
    carol
        .post_ok(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            json!({}),
        )
        .await;
    let carol_sync = carol
        .get_ok(&format!("/_matrix/client/v3/sync?since={carol_since}"))
        .await;
    assert_eq!(
        presence_of(&carol_sync, "@alice:localhost").unwrap()["status_msg"],
        "lunch",
        "{carol_sync}"
    );
    // So does an initial sync.
    let dave = server.register("dave").await;
    dave.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        json!({}),
    )
    .await;
    let dave_initial = dave.get_ok("/_matrix/client/v3/sync").await;
    assert_eq!(
        presence_of(&dave_initial, "@alice:localhost").unwrap()["presence"],
        "unavailable",
        "{dave_initial}"
    );
}

#[tokio::test]
async fn set_presence_on_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        json!({}),
    )
    .await;
    let alice_status = status_path("@alice:localhost");
    let since = next_batch(&bob.get_ok("/_matrix/client/v3/sync").await);

    alice
        .get_ok("/_matrix/client/v3/sync?set_presence=unavailable")
        .await;
    assert_eq!(bob.get_ok(&alice_status).await["presence"], "unavailable");
    let bob_sync = bob
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    assert_eq!(
        presence_of(&bob_sync, "@alice:localhost").unwrap()["presence"],
        "unavailable",
        "{bob_sync}"
    );

    // The default is online; `offline` leaves the state alone.
    alice.get_ok("/_matrix/client/v3/sync").await;
    assert_eq!(bob.get_ok(&alice_status).await["presence"], "online");
    alice
        .get_ok("/_matrix/client/v3/sync?set_presence=offline")
        .await;
    assert_eq!(bob.get_ok(&alice_status).await["presence"], "online");
    let carol = server.register("carol").await;
    carol
        .get_ok("/_matrix/client/v3/sync?set_presence=offline")
        .await;
    assert_eq!(
        carol.get_ok(&status_path("@carol:localhost")).await["presence"],
        "offline"
    );
}

#[tokio::test]
async fn idle_users_go_offline_by_themselves_and_presence_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let short = |config: &mut plait::Config| config.presence_offline_timeout_ms = 1_000;
    let server = TestServer::start_at(dir.path(), short).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        json!({}),
    )
    .await;
    let alice_status = status_path("@alice:localhost");
    let since = next_batch(
        &bob.get_ok("/_matrix/client/v3/sync?set_presence=offline")
            .await,
    );

    // An open long-poll keeps alice online past the timeout.
    let alice_since = next_batch(&alice.get_ok("/_matrix/client/v3/sync").await);
    let long_poll = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice
                .get_ok(&format!(
                    "/_matrix/client/v3/sync?timeout=2500&since={alice_since}"
                ))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert_eq!(bob.get_ok(&alice_status).await["presence"], "online");
    long_poll.await.unwrap();
    let ended = Instant::now();
    let offline = wait_for_presence(&bob, "@alice:localhost", |body| {
        body["presence"] == "offline"
    })
    .await;
    assert!(
        ended.elapsed() >= Duration::from_millis(900),
        "offline only after the timeout"
    );
    assert_eq!(offline["currently_active"], false);
    let bob_sync = wait_for_synced_presence(&bob, &since, "@alice:localhost", |content| {
        content["presence"] == "offline"
    })
    .await;
    assert_eq!(bob_sync["presence"], "offline");
    // Requests other than syncs count as activity but do not bring her back online.
    let own = alice.get_ok(&alice_status).await;
    assert_eq!(own["presence"], "offline", "{own}");
    assert!(own["last_active_ago"].as_u64().unwrap() < 1_000, "{own}");

    // State and status message are stored; sync tokens from before a restart still work.
    alice
        .put_ok(
            &alice_status,
            json!({ "presence": "unavailable", "status_msg": "brb" }),
        )
        .await;
    let bob_token = bob.token.clone();
    let alice_token = alice.token.clone();
    server.stop().await;
    let long = |config: &mut plait::Config| config.presence_offline_timeout_ms = 60_000;
    let server = TestServer::start_at(dir.path(), long).await;
    let bob = Client {
        token: bob_token.clone(),
        ..server.client()
    };
    let kept = bob.get_ok(&alice_status).await;
    assert_eq!(kept["presence"], "unavailable", "{kept}");
    assert_eq!(kept["status_msg"], "brb");
    let old_token_sync = bob
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={since}&set_presence=offline"
        ))
        .await;
    assert_eq!(
        presence_of(&old_token_sync, "@alice:localhost").unwrap()["status_msg"],
        "brb",
        "{old_token_sync}"
    );
    server.stop().await;

    // A user left on after a restart goes offline once the timeout passes without her.
    let server = TestServer::start_at(dir.path(), short).await;
    let bob = Client {
        token: bob_token,
        ..server.client()
    };
    let offline = wait_for_presence(&bob, "@alice:localhost", |body| {
        body["presence"] == "offline"
    })
    .await;
    assert_eq!(
        offline["status_msg"], "brb",
        "the message outlives the state"
    );
    drop(alice_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_crosses_two_plait_servers_and_forged_edus_are_ignored() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let alice_id = alice.user_id().await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    let bob_since = next_batch(&bob.get_ok("/_matrix/client/v3/sync").await);

    alice
        .put_ok(
            &status_path(&alice_id),
            json!({ "presence": "online", "status_msg": "from hs1" }),
        )
        .await;
    let synced = wait_for_synced_presence(&bob, &bob_since, &alice_id, |content| {
        content["status_msg"] == "from hs1"
    })
    .await;
    assert_eq!(synced["presence"], "online", "{synced}");
    assert_eq!(synced["currently_active"], true);
    let on_hs2 = bob.get_ok(&status_path(&alice_id)).await;
    assert_eq!(on_hs2["presence"], "online", "{on_hs2}");

    bob.put_ok(
        &status_path(&bob_id),
        json!({ "presence": "unavailable", "status_msg": "from hs2" }),
    )
    .await;
    wait_for_presence(&alice, &bob_id, |body| {
        body["presence"] == "unavailable" && body["status_msg"] == "from hs2"
    })
    .await;

    // hs2 speaks for alice (hs1's user), for a user of a third server and for one of its own
    // users who is in no room: all ignored. Its update for bob applies, and the transaction is
    // answered as usual.
    let push = |user: &str, presence: &str, status: &str| json!({ "user_id": user, "presence": presence, "last_active_ago": 5, "status_msg": status });
    let third = "@mallory:127.0.0.9:1".to_owned();
    let ghost = format!("@ghost:{}", hs2.server_name());
    let body = json!({
        "origin": hs2.server_name(),
        "origin_server_ts": 1,
        "pdus": [],
        "edus": [
            { "edu_type": "m.presence", "content": { "push": [
                push(&alice_id, "offline", "forged"),
                push(&third, "online", "forged"),
                push(&ghost, "online", "forged"),
                push(&bob_id, "online", "legit"),
                { "user_id": bob_id, "presence": "sleeping" },
            ] } },
            { "edu_type": "m.presence", "content": "not an object" },
            { "edu_type": "m.something_else", "content": {} },
        ],
    });
    let services = hs2.services.clone();
    let answer = services
        .federation
        .request(
            services.globals.server_name(),
            services.globals.signing_key(),
            &ruma::OwnedServerName::try_from(hs1.server_name()).unwrap(),
            http::Method::PUT,
            "/_matrix/federation/v1/send/forged1",
            Some(&body),
        )
        .await
        .unwrap();
    assert_eq!(answer["pdus"], json!({}), "{answer}");
    let own = alice.get_ok(&status_path(&alice_id)).await;
    assert_eq!(own["status_msg"], "from hs1", "{own}");
    let bob_on_hs1 = alice.get_ok(&status_path(&bob_id)).await;
    assert_eq!(bob_on_hs1["presence"], "online", "{bob_on_hs1}");
    assert_eq!(bob_on_hs1["status_msg"], "legit");
    for user in [&third, &ghost] {
        let user_id = ruma::OwnedUserId::try_from(user.as_str()).unwrap();
        assert!(
            hs1.services.presence.get(&user_id).unwrap().is_none(),
            "{user} was stored"
        );
    }
}

#[tokio::test]
async fn members_who_join_bring_their_presence_to_the_next_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.put_ok(
        &status_path("@bob:localhost"),
        json!({"presence": "online", "status_msg": "here"}),
    )
    .await;
    // Alice does not share a room with bob yet: his presence is not hers to see.
    let first = alice.get_ok("/_matrix/client/v3/sync").await;
    assert!(presence_of(&first, "@bob:localhost").is_none(), "{first}");
    let since = next_batch(&first);

    // Bob joins without changing his presence; alice's next sync still carries it.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    let after_join = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    let content = presence_of(&after_join, "@bob:localhost")
        .unwrap_or_else(|| panic!("no presence for bob in {after_join}"));
    assert_eq!(content["presence"], "online");
    assert_eq!(content["status_msg"], "here");
}
