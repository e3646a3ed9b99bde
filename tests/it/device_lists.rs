//! Device lists between two Plait servers: chained `m.device_list_update` EDUs, the cache of
//! remote users' lists behind `/keys/query`, a resync after a gap, forged updates, restarts, and
//! dropping a list once no room is shared.

use std::time::Duration;

use plait::service::remote_keys::RemoteUser;
use serde_json::{json, Value};

use crate::common::{enc, send_edus, Client, TestServer};
use crate::e2ee::{device_keys, signing_key, whoami};
use crate::federation::{join_via, two_servers};

/// The `next_batch` of an immediate sync.
async fn next_batch(client: &Client) -> String {
    client.get_ok("/_matrix/client/v3/sync?timeout=0").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls `/sync` from `since` until `user` is in `device_lists.<section>`; fails after 20 s.
async fn wait_for_device_list(client: &Client, since: &str, section: &str, user: &str) {
    let mut since = since.to_owned();
    for _ in 0..100 {
        let sync = client
            .get_ok(&format!(
                "/_matrix/client/v3/sync?since={since}&timeout=200"
            ))
            .await;
        let listed = sync["device_lists"][section].as_array().unwrap();
        if listed.iter().any(|listed| listed == user) {
            return;
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
    panic!("{user} never appeared in device_lists.{section}");
}

/// Polls a condition on server state until it holds; fails after 20 s.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never happened");
}

/// What `server` caches about a remote user.
fn cached(server: &TestServer, user: &str) -> Option<RemoteUser> {
    let user = <&ruma::UserId>::try_from(user).unwrap();
    server.services.remote_keys.get_user(user).unwrap()
}

/// The `stream_id` of a local user's last device list update on `server`.
fn head(server: &TestServer, user: &str) -> u64 {
    let user = <&ruma::UserId>::try_from(user).unwrap();
    server
        .services
        .keys
        .get_device_list_id(user)
        .unwrap()
        .unwrap()
}

/// Whether `server` caches an up-to-date list of `user` at `stream_id`.
fn cached_at(server: &TestServer, user: &str, stream_id: u64) -> bool {
    cached(server, user).is_some_and(|record| !record.stale && record.stream_id == stream_id)
}

async fn query(client: &Client, user: &str) -> Value {
    client
        .post_ok(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { user: [] } }),
        )
        .await
}

/// The identity key a key query answered for a device, if any.
fn identity<'a>(answer: &'a Value, user: &str, device: &str) -> &'a Value {
    &answer["device_keys"][user][device]["keys"][format!("curve25519:{device}")]
}

/// Logs `name` in on `server` with a chosen device ID.
async fn login(server: &TestServer, name: &str, device: &str) -> Client {
    let body = server
        .client()
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "password", "device_id": device}),
        )
        .await;
    Client {
        token: Some(body["access_token"].as_str().unwrap().to_owned()),
        ..server.client()
    }
}

/// Alice on hs1 with keys, bob on hs2, both in alice's room; hs2 has cached alice's list.
async fn alice_and_bob_share_a_room(
    hs1: &TestServer,
    hs2: &TestServer,
) -> (Client, Client, String) {
    let alice = hs1.register("alice").await;
    let (alice_id, alice_device) = whoami(&alice).await;
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice_id, &alice_device, "alice-identity") }),
        )
        .await;
    let bob = hs2.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    join_via(&bob, &room, hs1).await;
    let answer = query(&bob, &alice_id).await;
    assert_eq!(
        identity(&answer, &alice_id, &alice_device),
        "alice-identity"
    );
    let at = head(hs1, &alice_id);
    wait_until("hs2 caches alice's list", || cached_at(hs2, &alice_id, at)).await;
    (alice, bob, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_device_reaches_the_other_server_whose_cache_then_answers_queries() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let (alice_id, alice_device) = whoami(&alice).await;
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice_id, &alice_device, "alice-identity") }),
        )
        .await;
    let bob = hs2.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    join_via(&bob, &room, &hs1).await;
    let since = next_batch(&bob).await;

    let phone = login(&hs1, "alice", "PHONE").await;
    phone
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice_id, "PHONE", "phone-identity") }),
        )
        .await;
    wait_for_device_list(&bob, &since, "changed", &alice_id).await;

    // Each update names the one before it: the cache follows hs1's chain to its head (the
    // login and the key upload are two updates; bob may have seen the first one only so far).
    let at = head(&hs1, &alice_id);
    wait_until("hs2 caches alice's list at hs1's head", || {
        cached_at(&hs2, &alice_id, at)
    })
    .await;
    let answer = query(&bob, &alice_id).await;
    assert_eq!(identity(&answer, &alice_id, "PHONE"), "phone-identity");
    assert_eq!(
        identity(&answer, &alice_id, &alice_device),
        "alice-identity"
    );

    // With hs1 gone, hs2 answers from its cache, and nothing failed.
    let _hs1_dir = hs1.stop().await;
    let answer = query(&bob, &alice_id).await;
    assert_eq!(identity(&answer, &alice_id, "PHONE"), "phone-identity");
    assert_eq!(answer["failures"], json!({}), "{answer}");
    // Asking for one device only answers that one.
    let answer = bob
        .post_ok(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: ["PHONE"] } }),
        )
        .await;
    let devices = answer["device_keys"][&alice_id].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), ["PHONE"]);
    drop(room);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_list_updates_wait_in_the_queue_across_restarts_of_both_servers() {
    let (ca, hs1, hs2) = two_servers().await;
    let (_alice, bob, _room) = alice_and_bob_share_a_room(&hs1, &hs2).await;
    let alice_id = format!("@alice:{}", hs1.server_name());
    let since = next_batch(&bob).await;
    let bob_token = bob.token.clone();

    // hs2 is down while alice adds a device, then hs1 restarts before hs2 is back.
    let hs2_dir = hs2.stop().await.unwrap();
    let phone = login(&hs1, "alice", "PHONE").await;
    phone
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice_id, "PHONE", "phone-identity") }),
        )
        .await;
    let hs1_dir = hs1.stop().await.unwrap();
    let hs1 =
        TestServer::start_federated("127.0.0.2".parse().unwrap(), &ca, Some(hs1_dir.path())).await;
    let hs2 =
        TestServer::start_federated("127.0.0.3".parse().unwrap(), &ca, Some(hs2_dir.path())).await;
    let bob = Client {
        token: bob_token,
        ..hs2.client()
    };
    wait_for_device_list(&bob, &since, "changed", &alice_id).await;
    let at = head(&hs1, &alice_id);
    wait_until("hs2 catches up with alice's list", || {
        cached_at(&hs2, &alice_id, at)
    })
    .await;
    let _hs1_dir = hs1.stop().await;
    let answer = query(&bob, &alice_id).await;
    assert_eq!(identity(&answer, &alice_id, "PHONE"), "phone-identity");
    drop(hs1_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gap_in_prev_id_makes_the_receiver_fetch_the_whole_list() {
    let (_ca, hs1, hs2) = two_servers().await;
    let (_alice, bob, _room) = alice_and_bob_share_a_room(&hs1, &hs2).await;
    let alice_id = format!("@alice:{}", hs1.server_name());
    let alice = <&ruma::UserId>::try_from(alice_id.as_str()).unwrap();
    let since = next_batch(&bob).await;

    // Two devices appear on hs1; the update for the first (LOST) never reaches hs2, the update
    // for the second (LATE) does, naming the lost one as its prev_id.
    let at = head(&hs1, &alice_id);
    for device in ["LOST", "LATE"] {
        hs1.services
            .users
            .create_device(alice, Some(device.into()), None, false, 0)
            .unwrap();
    }
    let mut batch = plait::store::Batch::default();
    for device in ["LOST", "LATE"] {
        let keys = device_keys(&alice_id, device, &format!("{device}-identity"));
        hs1.services
            .keys
            .set_device_keys_in_batch(&mut batch, alice, device, &keys);
    }
    hs1.services
        .keys
        .set_device_list_id_in_batch(&mut batch, alice, at + 2);
    hs1.services.keys.store().write(batch).unwrap();
    let update = json!({
        "edu_type": "m.device_list_update",
        "content": {
            "user_id": alice_id,
            "device_id": "LATE",
            "stream_id": at + 2,
            "prev_id": [at + 1],
            "keys": device_keys(&alice_id, "LATE", "LATE-identity"),
        },
    });
    let answer = send_edus(&hs1, &hs2, "gap1", json!([update])).await;
    assert_eq!(answer["pdus"], json!({}));

    // hs2 could not apply it, so it fetched the list, which holds the lost device too.
    wait_until("hs2 resyncs alice's list", || {
        cached_at(&hs2, &alice_id, at + 2)
    })
    .await;
    wait_for_device_list(&bob, &since, "changed", &alice_id).await;
    let _hs1_dir = hs1.stop().await;
    let answer = query(&bob, &alice_id).await;
    assert_eq!(identity(&answer, &alice_id, "LOST"), "LOST-identity");
    assert_eq!(identity(&answer, &alice_id, "LATE"), "LATE-identity");
    assert_eq!(answer["failures"], json!({}), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_and_malformed_device_list_updates_are_ignored() {
    let (_ca, hs1, hs2) = two_servers().await;
    let (_alice, bob, _room) = alice_and_bob_share_a_room(&hs1, &hs2).await;
    let alice_id = format!("@alice:{}", hs1.server_name());
    let (bob_id, _) = whoami(&bob).await;
    let at = head(&hs1, &alice_id);
    let since = next_batch(&bob).await;

    let edus = json!([
        // hs1 may not speak for bob, a user of hs2.
        { "edu_type": "m.device_list_update", "content": {
            "user_id": bob_id, "device_id": "FORGED", "stream_id": 99, "prev_id": [],
            "keys": device_keys(&bob_id, "FORGED", "forged-identity"),
        } },
        { "edu_type": "m.signing_key_update", "content": {
            "user_id": bob_id, "master_key": signing_key(&bob_id, "master", "FORGED"),
        } },
        // Keys that name another device than the update's.
        { "edu_type": "m.device_list_update", "content": {
            "user_id": alice_id, "device_id": "EVIL", "stream_id": at + 1, "prev_id": [at],
            "keys": device_keys(&alice_id, "OTHER", "evil-identity"),
        } },
        // No stream_id.
        { "edu_type": "m.device_list_update", "content": {
            "user_id": alice_id, "device_id": "EVIL", "prev_id": [at],
        } },
        { "edu_type": "m.device_list_update", "content": "not an object" },
    ]);
    let answer = send_edus(&hs1, &hs2, "forged1", edus).await;
    assert_eq!(answer["pdus"], json!({}));

    let own = query(&bob, &bob_id).await;
    assert!(own["device_keys"][&bob_id].get("FORGED").is_none(), "{own}");
    assert!(own["master_keys"].get(&bob_id).is_none(), "{own}");
    assert_eq!(cached(&hs2, &bob_id), None);
    assert!(cached_at(&hs2, &alice_id, at));
    let cached_devices = hs2
        .services
        .remote_keys
        .iter_devices(<&ruma::UserId>::try_from(alice_id.as_str()).unwrap())
        .unwrap();
    assert!(!cached_devices.contains_key("EVIL"));
    let now = next_batch(&bob).await;
    let changes = bob
        .get_ok(&format!(
            "/_matrix/client/v3/keys/changes?from={since}&to={now}"
        ))
        .await;
    assert_eq!(changes["changed"], json!([]), "{changes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaving_the_last_shared_room_drops_the_cached_list() {
    let (_ca, hs1, hs2) = two_servers().await;
    let (alice, bob, room) = alice_and_bob_share_a_room(&hs1, &hs2).await;
    let (alice_id, alice_device) = whoami(&alice).await;
    let second = alice.create_room(json!({"preset": "public_chat"})).await;
    join_via(&bob, &second, &hs1).await;
    let since = next_batch(&bob).await;

    // One shared room is left: the list is still kept up to date.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    assert!(cached(&hs2, &alice_id).is_some());

    // The last one too: alice is in `left`, and her list is gone.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&second)),
        json!({}),
    )
    .await;
    wait_for_device_list(&bob, &since, "left", &alice_id).await;
    assert_eq!(cached(&hs2, &alice_id), None);

    // A query now goes to hs1 and is not cached.
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice_id, &alice_device, "new-identity") }),
        )
        .await;
    let answer = query(&bob, &alice_id).await;
    assert_eq!(identity(&answer, &alice_id, &alice_device), "new-identity");
    assert_eq!(cached(&hs2, &alice_id), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_a_room_announces_the_users_devices_to_its_servers() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let (alice_id, alice_device) = whoami(&alice).await;
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice_id, &alice_device, "alice-identity") }),
        )
        .await;
    let bob = hs2.register("bob").await;
    let room = bob.create_room(json!({"preset": "public_chat"})).await;
    let since = next_batch(&bob).await;
    join_via(&alice, &room, &hs2).await;

    // Nobody on hs2 asked for alice's keys: only the update her join sent makes hs2 fetch them.
    wait_for_device_list(&bob, &since, "changed", &alice_id).await;
    let at = head(&hs1, &alice_id);
    wait_until("hs2 caches alice's announced list", || {
        cached_at(&hs2, &alice_id, at)
    })
    .await;
    let cached_devices = hs2
        .services
        .remote_keys
        .iter_devices(<&ruma::UserId>::try_from(alice_id.as_str()).unwrap())
        .unwrap();
    assert!(cached_devices.contains_key(&alice_device));
}
