//! Typing notifications and read receipts between two Plait servers as EDUs, and EDUs that a
//! server may not send.

use serde_json::{json, Value};

use crate::{
    common::{enc, send_edus},
    ephemeral::{ephemeral, next_batch, sync_until, typing_users},
    federation::{is_membership, is_message, join_via, two_servers, wait_for_event},
};

/// Whether a sync response has `user`'s `m.read` receipt on `event` in `room`.
fn has_read_receipt(response: &Value, room: &str, event: &str, user: &str) -> bool {
    ephemeral(response, room, "m.receipt")
        .iter()
        .any(|receipt| receipt["content"][event]["m.read"][user].is_object())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_and_receipts_cross_two_plait_servers() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let (alice_id, bob_id) = (alice.user_id().await, bob.user_id().await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;
    let alice_since = next_batch(&alice.get_ok("/_matrix/client/v3/sync").await);
    let bob_since = next_batch(&bob.get_ok("/_matrix/client/v3/sync").await);
    let typing = |user: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(&room),
            enc(user)
        )
    };
    let is_typing = |response: &Value, user: &str| {
        typing_users(response, &room).map(|users| users.iter().any(|typist| typist == user))
    };

    // hs1 to hs2.
    alice
        .put_ok(
            &typing(&alice_id),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    let seen = sync_until(&bob, &bob_since, "alice typing on hs2", |response| {
        is_typing(response, &alice_id) == Some(true)
    })
    .await;
    let bob_since = next_batch(&seen);

    // hs2 to hs1, and its end when the timeout runs out on hs2.
    bob.put_ok(&typing(&bob_id), json!({ "typing": true, "timeout": 1500 }))
        .await;
    let seen = sync_until(&alice, &alice_since, "bob typing on hs1", |response| {
        is_typing(response, &bob_id) == Some(true)
    })
    .await;
    sync_until(
        &alice,
        &next_batch(&seen),
        "bob's typing ending",
        |response| is_typing(response, &bob_id) == Some(false),
    )
    .await;

    // Stopping on hs1 reaches hs2.
    alice
        .put_ok(&typing(&alice_id), json!({ "typing": false }))
        .await;
    let seen = sync_until(&bob, &bob_since, "alice stopping on hs2", |response| {
        is_typing(response, &alice_id) == Some(false)
    })
    .await;
    let bob_since = next_batch(&seen);

    // Receipts both ways; a private one stays on its server.
    let alice_since = next_batch(&alice.get_ok("/_matrix/client/v3/sync").await);
    let message = alice.send_text(&room, "m1", "read me").await;
    wait_for_event(&bob, &room, "the message on hs2", is_message("read me")).await;
    let receipt = |kind: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
            enc(&room),
            enc(&message)
        )
    };
    bob.post_ok(&receipt("m.read.private"), json!({})).await;
    bob.post_ok(&receipt("m.read"), json!({})).await;
    sync_until(&alice, &alice_since, "bob's receipt on hs1", |response| {
        has_read_receipt(response, &room, &message, &bob_id)
    })
    .await;
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    let on_hs1 = hs1
        .services
        .receipts
        .iter_since(&room_id, None, u64::MAX)
        .unwrap();
    assert!(
        on_hs1
            .iter()
            .all(|receipt| receipt.kind == plait::service::receipts::ReceiptType::Read),
        "the private receipt never left hs2: {on_hs1:?}"
    );

    alice
        .post_ok(&receipt("m.read"), json!({ "thread_id": "main" }))
        .await;
    let seen = sync_until(&bob, &bob_since, "alice's receipt on hs2", |response| {
        has_read_receipt(response, &room, &message, &alice_id)
    })
    .await;
    let threaded = ephemeral(&seen, &room, "m.receipt")
        .into_iter()
        .find(|receipt| receipt["content"][&message]["m.read"][&alice_id].is_object())
        .unwrap()
        .clone();
    assert_eq!(
        threaded["content"][&message]["m.read"][&alice_id]["thread_id"], "main",
        "{threaded}"
    );
}

fn typing_edu(room: &str, user: &str, typing: bool) -> Value {
    json!({ "edu_type": "m.typing", "content": { "room_id": room, "user_id": user, "typing": typing } })
}

fn receipt_edu(room: &str, user: &str, event: &str) -> Value {
    json!({ "edu_type": "m.receipt", "content": { room: { "m.read": {
        user: { "event_ids": [event], "data": { "ts": 1 } },
    } } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edus_that_the_origin_may_not_send_are_ignored() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let carol = hs2.register("carol").await;
    let (alice_id, bob_id, carol_id) = (
        alice.user_id().await,
        bob.user_id().await,
        carol.user_id().await,
    );
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    let message = alice.send_text(&room, "m1", "hello").await;
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    let typists = || hs1.services.typing.get_changed(&room_id, None);
    let receipts = || {
        hs1.services
            .receipts
            .iter_since(&room_id, None, u64::MAX)
            .unwrap()
    };

    // A user of another server than the origin, and a user of the origin who is not in the
    // room: ignored, and the transaction still succeeds.
    let answer = send_edus(
        &hs2,
        &hs1,
        "edu1",
        json!([
            typing_edu(&room, &alice_id, true),
            typing_edu(&room, &carol_id, true),
            receipt_edu(&room, &alice_id, &message),
            receipt_edu(&room, &carol_id, &message),
            { "edu_type": "m.typing", "content": "nonsense" },
            { "edu_type": "m.receipt", "content": { room.as_str(): { "m.read": {
                bob_id.as_str(): { "event_ids": ["not an event"], "data": {} },
            } } } },
            { "edu_type": "org.example.unknown", "content": {} },
        ]),
    )
    .await;
    assert_eq!(answer, json!({ "pdus": {} }));
    assert_eq!(typists(), None);
    assert!(receipts().is_empty(), "{:?}", receipts());

    // The same EDUs for the origin's joined user are applied.
    send_edus(
        &hs2,
        &hs1,
        "edu2",
        json!([
            typing_edu(&room, &bob_id, true),
            receipt_edu(&room, &bob_id, &message),
        ]),
    )
    .await;
    let bob_user = ruma::OwnedUserId::try_from(bob_id.as_str()).unwrap();
    assert_eq!(typists(), Some(vec![bob_user.clone()]));
    assert_eq!(receipts().len(), 1);
    assert_eq!(receipts()[0].user_id, bob_user);

    // Once the room's server ACL denies the origin, its EDUs for the room are ignored.
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&room)
            ),
            json!({ "allow": ["*"], "deny": ["127.0.0.3"], "allow_ip_literals": true }),
        )
        .await;
    let later = alice.send_text(&room, "m2", "later").await;
    send_edus(
        &hs2,
        &hs1,
        "edu3",
        json!([
            typing_edu(&room, &bob_id, false),
            receipt_edu(&room, &bob_id, &later),
        ]),
    )
    .await;
    assert_eq!(typists(), Some(vec![bob_user]), "the stop was ignored");
    assert_eq!(receipts()[0].event_id.as_str(), message, "unchanged");
}
