//! Federation edge cases that Complement probes: what `/get_missing_events` answers for history
//! the asking server may not see, invites to servers already in a room, who may withdraw an
//! invite held by a server outside the room, and rejecting an invite to an emptied room.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    common::{enc, federation_ask as ask, send_pdus, Client, TestServer},
    federation::{is_membership, join_via, two_servers, wait_for_event, wait_for_invite},
};

async fn invite(client: &Client, room: &str, user: &str) {
    client
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
            json!({ "user_id": user }),
        )
        .await;
}

/// Polls `/sync` (left rooms included) until `room` is among the user's left rooms, and answers
/// the user's own last member event there.
async fn wait_for_left(client: &Client, room: &str, user: &str) -> Value {
    let filter = enc(r#"{"room":{"include_leave":true}}"#);
    for _ in 0..200 {
        let body = client
            .get_ok(&format!(
                "/_matrix/client/v3/sync?timeout=0&filter={filter}"
            ))
            .await;
        let own = body["rooms"]["leave"][room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .find(|event| event["type"] == "m.room.member" && event["state_key"] == user)
            .cloned();
        if let Some(event) = own {
            if event["content"]["membership"] != "invite" {
                return event;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user} never left {room}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_events_before_a_join_come_redacted_under_joined_visibility() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&room)
            ),
            json!({ "history_visibility": "joined" }),
        )
        .await;
    let secret = alice.send_text(&room, "s1", "before bob").await;
    join_via(&bob, &room, &hs1).await;
    let join = wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;
    // Room version 12: the create event's ID is the room ID's.
    let create = format!("${}", &room[1..]);
    let answer = ask(
        &hs2,
        &hs1,
        http::Method::POST,
        &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
        Some(json!({
            "earliest_events": [create],
            "latest_events": [join["event_id"]],
            "limit": 10,
            "min_depth": 1,
        })),
    )
    .await
    .unwrap();
    let events = answer["events"].as_array().unwrap();
    let message = events
        .iter()
        .find(|event| event["type"] == "m.room.message")
        .unwrap_or_else(|| panic!("the message is part of the graph: {answer}"));
    assert_eq!(message["content"], json!({}), "redacted: {message}");
    assert!(message["hashes"].is_object(), "{message}");
    assert!(message["signatures"].is_object(), "{message}");
    // The history before the message is there too, oldest first, and state keeps its content.
    assert_eq!(events[0]["type"], "m.room.member", "{answer}");
    assert!(events.len() >= 5, "{answer}");
    let visibility = events
        .iter()
        .rfind(|event| event["type"] == "m.room.history_visibility")
        .unwrap();
    assert_eq!(visibility["content"]["history_visibility"], "joined");
    // A world-readable room answers the same message in full.
    let _ = secret;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&room)
            ),
            json!({ "history_visibility": "world_readable" }),
        )
        .await;
    let open = alice.send_text(&room, "s2", "after bob").await;
    let answer = ask(
        &hs2,
        &hs1,
        http::Method::POST,
        &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
        Some(json!({ "earliest_events": [], "latest_events": [open], "limit": 1 })),
    )
    .await
    .unwrap();
    assert_eq!(
        answer["events"][0]["content"]["history_visibility"], "world_readable",
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invite_reaches_a_server_already_in_the_room() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob2 = hs2.register("bob2").await;
    let bob2_id = bob2.user_id().await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    invite(&alice, &room, &bob.user_id().await).await;
    wait_for_invite(&bob, &room).await;
    join_via(&bob, &room, &hs1).await;
    invite(&alice, &room, &bob2_id).await;
    let invited = wait_for_invite(&bob2, &room).await;
    assert!(
        invited["invite_state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(is_membership(&bob2_id, "invite")),
        "{invited}"
    );
    // The invite is in hs2's timeline too: bob sees it, and bob2 can join through hs2's state.
    wait_for_event(
        &bob,
        &room,
        "bob2's invite",
        is_membership(&bob2_id, "invite"),
    )
    .await;
    join_via(&bob2, &room, &hs1).await;
    wait_for_event(
        &alice,
        &room,
        "bob2's join",
        is_membership(&bob2_id, "join"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_inviter_may_withdraw_an_invite_held_outside_the_room() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let alice2 = hs1.register("alice2").await;
    let alice2_id = alice2.user_id().await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    // A room bob is in, to know when hs2 has had everything hs1 sent before.
    let shared = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &shared, &hs1).await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "invite": [alice2_id] }))
        .await;
    alice2
        .post_ok(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            json!({}),
        )
        .await;
    invite(&alice2, &room, &bob_id).await;
    wait_for_invite(&bob, &room).await;
    // Alice may kick in the room, but hs2 cannot know that: it believes only the inviter.
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            json!({ "user_id": bob_id, "reason": "not the inviter" }),
        )
        .await;
    alice.send_text(&shared, "m1", "after the kick").await;
    wait_for_event(&bob, &shared, "the message after the kick", |event| {
        event["content"]["body"] == "after the kick"
    })
    .await;
    let sync = bob.get_ok("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["invite"].get(&room).is_some(), "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invite_to_a_room_everyone_left_can_still_be_rejected() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob_id] }))
        .await;
    wait_for_invite(&bob, &room).await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            json!({}),
        )
        .await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    // hs1 has nobody in the room but still knows its state: the rejection goes through it.
    let left = wait_for_left(&bob, &room, &bob_id).await;
    assert_eq!(left["content"]["membership"], "leave", "{left}");
    assert!(
        !left["event_id"].as_str().unwrap().starts_with("$leave-"),
        "signed through make_leave/send_leave: {left}"
    );
    let template = ask(
        &hs2,
        &hs1,
        http::Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12",
            enc(&room),
            enc(&bob_id)
        ),
        None,
    )
    .await;
    assert!(
        matches!(
            template,
            Err(plait::Error::Matrix {
                kind: ruma::api::error::ErrorKind::NotFound,
                ..
            })
        ),
        "joins still need a resident server: {template:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejecting_an_invite_while_the_inviting_server_is_down_shows_the_leave() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob_id] }))
        .await;
    wait_for_invite(&bob, &room).await;
    hs1.stop().await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    let left = wait_for_left(&bob, &room, &bob_id).await;
    assert_eq!(left["content"]["membership"], "leave", "{left}");
    assert_eq!(left["sender"], bob_id.as_str(), "{left}");
    let sync = bob.get_ok("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unicode_alias_of_another_server_resolves() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let room = alice.create_room(json!({})).await;
    let alias = format!("#老虎Â£я🤨👉ඞ:{}", hs1.server_name());
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
    alice.put_ok(&path, json!({ "room_id": room })).await;
    let answer = bob.get_ok(&path).await;
    assert_eq!(answer["room_id"], room.as_str(), "{answer}");
    assert_eq!(answer["servers"], json!([hs1.server_name()]), "{answer}");
    let missing = format!(
        "/_matrix/client/v3/directory/room/{}",
        enc(&format!("#nothing:{}", hs1.server_name()))
    );
    crate::common::assert_error(&bob.get(&missing).await, 404, "M_NOT_FOUND");
}

/// Builds and signs an event in `room` as `server` would, after `shape` changed its template
/// (prev or auth events), without committing it there.
fn forge_signed(
    server: &TestServer,
    room: &str,
    sender: &str,
    builder: plait::service::rooms::timeline::PduBuilder,
    shape: impl FnOnce(&mut ruma::CanonicalJsonObject),
) -> (String, Value) {
    crate::federation::forge_shaped(server, room, sender, builder, shape, |value| {
        value.as_object_mut().unwrap().remove("event_id");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_citing_a_rejected_event_are_rejected_and_later_events_build_on_them() {
    use plait::service::rooms::timeline::PduBuilder;
    use ruma::CanonicalJsonValue;
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    let message = |text: &str| {
        PduBuilder::timeline(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": text }),
        )
    };
    // R: bob may not change the power levels, so hs1 rejects it and remembers that.
    let (rejected, value) = forge_signed(
        &hs2,
        &room,
        &bob_id,
        PduBuilder::state("m.room.power_levels", "", json!({ "users": {} })),
        |_| {},
    );
    // A rejected event is answered `{}` (server-server API, "Rejection").
    let answer = send_pdus(&hs2, &hs1, "r1", vec![value]).await;
    assert_eq!(answer["pdus"][&rejected], json!({}), "{answer}");
    // X: a message that cites R among its auth events is rejected for it, without hs1 asking
    // hs2 (which does not have X) for its auth chain.
    let (cites, value) = forge_signed(&hs2, &room, &bob_id, message("cites R"), |object| {
        let Some(CanonicalJsonValue::Array(auth)) = object.get_mut("auth_events") else {
            panic!("no auth_events");
        };
        auth.push(CanonicalJsonValue::String(rejected.clone()));
    });
    let depth = value["depth"].clone();
    let answer = send_pdus(&hs2, &hs1, "r2", vec![value]).await;
    assert_eq!(answer["pdus"][&cites], json!({}), "{answer}");
    // S: an ordinary message after X in the graph is accepted, with the state X did not change.
    let (after, value) = forge_signed(&hs2, &room, &bob_id, message("after X"), |object| {
        object.insert(
            "prev_events".into(),
            CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(cites.clone())]),
        );
        let depth = depth.as_i64().unwrap() + 1;
        object.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(depth.try_into().unwrap()),
        );
    });
    let answer = send_pdus(&hs2, &hs1, "r3", vec![value]).await;
    assert_eq!(answer["pdus"][&after], json!({}), "{answer}");
    wait_for_event(&alice, &room, "the message after X", |event| {
        event["event_id"] == after.as_str()
    })
    .await;
    for event_id in [&rejected, &cites] {
        let id = ruma::OwnedEventId::try_from(event_id.as_str()).unwrap();
        assert!(hs1.services.rooms.rejected.is_rejected(&id).unwrap());
        crate::common::assert_error(
            &alice
                .get(&format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room),
                    enc(event_id)
                ))
                .await,
            404,
            "M_NOT_FOUND",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_banned_user_unbanned_and_invited_again_sees_the_invite_and_joins() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let alice_id = alice.user_id().await;
    let bob = hs2.register("bob").await;
    let room = bob.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&alice, &room, &hs2).await;
    let membership = |action: &'static str| {
        let (bob, room, alice_id) = (&bob, &room, &alice_id);
        async move {
            bob.post_ok(
                &format!("/_matrix/client/v3/rooms/{}/{action}", enc(room)),
                json!({ "user_id": alice_id }),
            )
            .await;
        }
    };
    membership("ban").await;
    wait_for_left(&alice, &room, &alice_id).await;
    membership("unban").await;
    membership("invite").await;
    // hs1 is out of the room, with its state as it was at the ban: the invite's stripped state
    // is what alice sees.
    let invited = wait_for_invite(&alice, &room).await;
    let own = invited["invite_state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == alice_id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(own["content"]["membership"], "invite", "{invited}");
    join_via(&alice, &room, &hs2).await;
    wait_for_event(
        &bob,
        &room,
        "alice's join",
        is_membership(&alice_id, "join"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_tries_only_the_servers_the_client_names() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    // Room version 10: the room ID names hs1.
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "10" }))
        .await;
    let join = |via: String| {
        let (bob, room) = (&bob, &room);
        async move {
            bob.post(
                &format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(&via)),
                json!({}),
            )
            .await
        }
    };
    // hs2 itself is not in the room, and hs1 is not asked since the client did not name it.
    crate::common::assert_error(&join(hs2.server_name()).await, 404, "M_NOT_FOUND");
    let (status, _) = join(hs1.server_name()).await;
    assert_eq!(status, 200);
    wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_initial_sync_shows_a_ban_without_include_leave() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let alice_id = alice.user_id().await;
    let bob = hs2.register("bob").await;
    let room = bob.create_room(json!({ "preset": "public_chat" })).await;
    let left = bob.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&alice, &room, &hs2).await;
    join_via(&alice, &left, &hs2).await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&left)),
            json!({}),
        )
        .await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
        json!({ "user_id": alice_id }),
    )
    .await;
    for _ in 0..200 {
        let body = alice.get_ok("/_matrix/client/v3/sync?timeout=0").await;
        let events = body["rooms"]["leave"][&room]["timeline"]["events"].clone();
        if events
            .as_array()
            .into_iter()
            .flatten()
            .any(is_membership(&alice_id, "ban"))
        {
            // A room the user left by themselves stays out of it.
            assert!(body["rooms"]["leave"].get(&left).is_none(), "{body}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ban never showed in an initial sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolution_may_pick_an_event_between_the_conflicted_ones() {
    // State resolution v2.1 (room version 12) also weighs the conflicted subgraph: the events
    // between conflicted ones in the auth graph. Bob's member events b1 → b2 → b3 (each citing
    // the one before among its auth events, all with one timestamp) are merged by M, whose prev
    // events are b1 and b3: the states before M disagree on b1 and b3, and resolution orders b1,
    // b2 and b3 by timestamp and then event ID, so the one with the greatest ID wins. b2 is
    // made to have it: it is in neither state, and the merged state must still take it.
    use plait::service::rooms::timeline::PduBuilder;
    use ruma::{events::StateEventType, CanonicalJsonValue};
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    let join = hs2
        .services
        .rooms
        .current_state_pdu(&room_id, &StateEventType::RoomMember, &bob_id)
        .unwrap()
        .unwrap();
    let join_id = join.event_id.to_string();
    // One timestamp for b1, b2 and b3, after the join's, so that their event IDs order them.
    let ts = join.origin_server_ts.0 + ruma::UInt::from(1u32);
    let depth = join.depth;
    let string = |id: &str| CanonicalJsonValue::String(id.to_owned());
    // An event after `prev` (at `depth`) that cites `previous_member` as bob's member event.
    let forge = |builder: PduBuilder, prev: Vec<String>, previous_member: Option<&str>, depth| {
        forge_signed(&hs2, &room, &bob_id, builder, |object| {
            object.insert(
                "prev_events".into(),
                CanonicalJsonValue::Array(prev.iter().map(|id| string(id)).collect()),
            );
            object.insert("depth".into(), CanonicalJsonValue::Integer(depth));
            object.insert(
                "origin_server_ts".into(),
                CanonicalJsonValue::Integer(ts.into()),
            );
            if let Some(previous) = previous_member {
                let Some(CanonicalJsonValue::Array(auth)) = object.get_mut("auth_events") else {
                    panic!("no auth_events");
                };
                for id in auth.iter_mut() {
                    if *id == string(&join_id) {
                        *id = string(previous);
                    }
                }
            }
        })
    };
    let member = |name: &str| {
        PduBuilder::state(
            "m.room.member",
            bob_id.clone(),
            json!({ "membership": "join", "displayname": name }),
        )
    };
    let d = |step: u64| ruma::Int::try_from(u64::from(depth) + step).unwrap();
    let (b1, v1) = forge(member("one"), vec![join_id.clone()], None, d(1));
    let (b2, v2, b3, v3, name) = (0..)
        .find_map(|attempt| {
            let name = format!("two ({attempt})");
            let (b2, v2) = forge(member(&name), vec![b1.clone()], Some(&b1), d(2));
            let (b3, v3) = forge(member("three"), vec![b2.clone()], Some(&b2), d(3));
            (b2 > b1 && b2 > b3).then_some((b2, v2, b3, v3, name))
        })
        .unwrap();
    let (merge, vm) = forge(
        PduBuilder::timeline(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": "merge" }),
        ),
        vec![b1.clone(), b3.clone()],
        None,
        d(4),
    );
    let answer = send_pdus(&hs2, &hs1, "subgraph", vec![v1, v2, v3, vm]).await;
    for event_id in [&b1, &b2, &b3, &merge] {
        assert_eq!(answer["pdus"][event_id], json!({}), "{answer}");
    }
    wait_for_event(&alice, &room, "the merging message", |event| {
        event["event_id"] == merge.as_str()
    })
    .await;
    let content = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob_id)
        ))
        .await;
    assert_eq!(content["displayname"], name.as_str(), "{content}");
}
