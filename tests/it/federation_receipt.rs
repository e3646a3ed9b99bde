//! Receiving and sending events around gaps in what a server has: a redaction of an event the
//! redacting server never saw, a pushed event whose history and auth chain its sender cannot
//! fully provide, and a gap in the timeline that `/sync` reports as a limited batch.

use ruma::{CanonicalJsonValue, OwnedEventId, OwnedRoomId};
use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, send_pdus},
    federation::{forge_shaped, join_via, two_servers, wait_for_event},
};

/// An event ID of the room version 12 form that no server has.
const UNSEEN: &str = "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redaction_of_an_unseen_event_is_sent_by_a_user_who_may_redact() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;

    // Alice (the creator) has the redact level: hs1 sends her redaction although it does not
    // have the event, and hs2 receives it.
    let answer = alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(UNSEEN)
            ),
            json!({ "reason": "spam seen elsewhere" }),
        )
        .await;
    let redaction = answer["event_id"].as_str().unwrap().to_owned();
    let received = wait_for_event(&bob, &room, "the redaction", |event: &Value| {
        event["event_id"] == redaction.as_str()
    })
    .await;
    assert_eq!(received["type"], "m.room.redaction", "{received}");
    assert_eq!(received["content"]["redacts"], UNSEEN, "{received}");

    // Bob may only redact his own events, which his server would have: an unknown one is 404.
    let refused = bob
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r2",
                enc(&room),
                enc(UNSEEN)
            ),
            json!({}),
        )
        .await;
    assert_error(&refused, 404, "M_NOT_FOUND");
    // A known event of another user stays forbidden to him.
    let message = alice.send_text(&room, "m1", "hello").await;
    wait_for_event(&bob, &room, "alice's message", |event: &Value| {
        event["event_id"] == message.as_str()
    })
    .await;
    let refused = bob
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r3",
                enc(&room),
                enc(&message)
            ),
            json!({}),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_whose_origin_cannot_give_its_auth_events_is_rejected_and_built_upon() {
    use plait::service::rooms::timeline::PduBuilder;
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    let room_id = OwnedRoomId::try_from(room.as_str()).unwrap();
    let join = hs2
        .services
        .rooms
        .current_state_pdu(&room_id, &"m.room.member".into(), &bob_id)
        .unwrap()
        .unwrap()
        .event_id;

    // E: a profile change of bob that hs2 signs but never stores, so nobody can produce it.
    let (unseen, _) = forge_shaped(
        &hs2,
        &room,
        &bob_id,
        PduBuilder::state(
            "m.room.member",
            &bob_id,
            json!({ "membership": "join", "displayname": "E" }),
        ),
        |_| {},
        |_| {},
    );
    // M: a message citing E instead of bob's join as its membership auth event. hs1 asks hs2
    // for M's auth chain, hs2 answers that it has no M: hs1 rejects M for good and says so with
    // `{}`, not an error (server-server API, "Rejection").
    let message = |text: &str| {
        PduBuilder::timeline(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": text }),
        )
    };
    let (cites, value) = forge_shaped(
        &hs2,
        &room,
        &bob_id,
        message("cites E"),
        |object| {
            let Some(CanonicalJsonValue::Array(auth)) = object.get_mut("auth_events") else {
                panic!("no auth_events");
            };
            auth.retain(|id| id.as_str() != Some(join.as_str()));
            auth.push(CanonicalJsonValue::String(unseen.clone()));
        },
        |_| {},
    );
    let depth = value["depth"].as_i64().unwrap();
    let answer = send_pdus(&hs2, &hs1, "c1", vec![value]).await;
    assert_eq!(answer["pdus"][&cites], json!({}), "{answer}");
    let cites_id = OwnedEventId::try_from(cites.as_str()).unwrap();
    assert!(hs1.services.rooms.rejected.is_rejected(&cites_id).unwrap());
    assert_error(
        &alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&cites)
            ))
            .await,
        404,
        "M_NOT_FOUND",
    );

    // A later message on top of M is accepted with the state before M: hs1 needs nothing more
    // from hs2 (which has neither M nor a state for it).
    let (after, value) = forge_shaped(
        &hs2,
        &room,
        &bob_id,
        message("after M"),
        |object| {
            object.insert(
                "prev_events".into(),
                CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(cites.clone())]),
            );
            object.insert(
                "depth".into(),
                CanonicalJsonValue::Integer((depth + 1).try_into().unwrap()),
            );
        },
        |_| {},
    );
    let answer = send_pdus(&hs2, &hs1, "c2", vec![value]).await;
    assert_eq!(answer["pdus"][&after], json!({}), "{answer}");
    wait_for_event(&alice, &room, "the message after M", |event: &Value| {
        event["event_id"] == after.as_str()
    })
    .await;
    // Bob's membership is still his join, not E.
    let member = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob_id)
        ))
        .await;
    assert_eq!(member["membership"], "join", "{member}");
    assert_ne!(member["displayname"], "E", "{member}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_batch_ends_at_a_gap_in_the_received_history() {
    use plait::service::rooms::timeline::PduBuilder;
    use plait::service::rooms::{incoming, timeline::SendTo};
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    let room_id = OwnedRoomId::try_from(room.as_str()).unwrap();
    let hs2_name = ruma::OwnedServerName::try_from(hs2.server_name()).unwrap();
    let filter = enc(r#"{"room":{"timeline":{"limit":40}}}"#);
    let since = alice
        .get_ok(&format!(
            "/_matrix/client/v3/sync?timeout=0&filter={filter}"
        ))
        .await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let before_gap = alice.send_text(&room, "a1", "before the gap").await;

    // hs2 stores 26 messages of bob without sending them, then pushes the last one to hs1.
    // hs1 gets the newest 20 through /get_missing_events; the oldest of those follows a gap.
    let message = |text: String| {
        PduBuilder::timeline(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": text }),
        )
    };
    let mut missed = Vec::new();
    for index in 0..25 {
        let (event_id, value) = forge_shaped(
            &hs2,
            &room,
            &bob_id,
            message(format!("missed {index}")),
            |_| {},
            |_| {},
        );
        incoming::handle(&hs2.services, &hs2_name, &room_id, &value, SendTo::Nobody)
            .await
            .unwrap();
        missed.push(event_id);
    }
    let (last, value) = forge_shaped(&hs2, &room, &bob_id, message("last".into()), |_| {}, |_| {});
    incoming::handle(&hs2.services, &hs2_name, &room_id, &value, SendTo::Nobody)
        .await
        .unwrap();
    let answer = send_pdus(&hs2, &hs1, "g1", vec![value]).await;
    assert_eq!(answer["pdus"][&last], json!({}), "{answer}");

    // The incremental sync from before both holds only what follows the gap, marked limited.
    let body = alice
        .get_ok(&format!(
            "/_matrix/client/v3/sync?timeout=0&filter={filter}&since={}",
            enc(&since)
        ))
        .await;
    let timeline = &body["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true, "{timeline}");
    let ids: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = missed[5..].iter().map(String::as_str).collect();
    expected.push(&last);
    assert_eq!(ids, expected, "{timeline}");
    assert!(!ids.contains(&before_gap.as_str()));
    // Paging back from the batch's start reaches the message from before the gap.
    let prev_batch = timeline["prev_batch"].as_str().unwrap();
    wait_for_event(
        &alice,
        &room,
        "the message before the gap",
        |event: &Value| event["event_id"] == before_gap.as_str(),
    )
    .await;
    let page = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50&from={}",
            enc(&room),
            enc(prev_batch)
        ))
        .await;
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["event_id"] == before_gap.as_str()),
        "{page}"
    );
}
