//! Policy servers (MSC4284, spec v1.18) between two Plait servers: server B (127.0.0.3) is the
//! policy server of rooms on server A (127.0.0.2). Signatures on allowed events, refusals passed
//! to the client, soft failure of received events without a valid signature, a policy server
//! with no joined member being ignored, local signing when the policy server is this server,
//! and the bad inputs of `/_matrix/policy/v1/sign` and `/.well-known/matrix/policy_server`.

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, ip, tls::TestCa, Client, TestServer},
    federation::{forge_shaped, is_message, join_via, wait_for_event},
};
use plait::service::{policy, rooms::timeline::PduBuilder};

/// The refusal text of B's policy (`policy_server_forbidden_text`).
const FORBIDDEN: &str = "buy cheap pills";
/// B's message for a refused text, which A must hand to its client verbatim.
const REFUSAL: &str = "the event contains text this room does not accept";

/// Server A (no policy-server role) and server B (a policy server refusing [`FORBIDDEN`]).
async fn servers() -> (TestCa, TestServer, TestServer) {
    let ca = TestCa::new();
    let hs_a = TestServer::start_federated(ip("127.0.0.2"), &ca, None).await;
    let hs_b = TestServer::start_federated_with(ip("127.0.0.3"), &ca, None, |config| {
        config.policy_server_enabled = true;
        config.policy_server_forbidden_text = vec![FORBIDDEN.to_uppercase()];
        config.policy_server_deny_users = vec!["@blocked*:*".to_owned()];
    })
    .await;
    (ca, hs_a, hs_b)
}

/// B's policy-server key as its well-known document gives it.
async fn well_known_key(server: &TestServer) -> String {
    let answer = server
        .client()
        .get_ok("/.well-known/matrix/policy_server")
        .await;
    answer["public_keys"]["ed25519"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Makes `server` the policy server of `room` (sent by `client`, who must be allowed to).
async fn set_policy(client: &Client, room: &str, server: &TestServer, key: &str) {
    client
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.policy/",
                enc(room)
            ),
            json!({ "via": server.server_name(), "public_keys": { "ed25519": key } }),
        )
        .await;
}

/// Waits until `client`'s server has the room's `m.room.policy`: a policy server answers
/// `M_NOT_FOUND` for a room whose state does not name it yet.
async fn wait_for_policy(client: &Client, room: &str) {
    for _ in 0..200 {
        let (status, _) = client
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.policy/",
                enc(room)
            ))
            .await;
        if status == 200 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("m.room.policy never arrived in {room}");
}

async fn send(client: &Client, room: &str, txn: &str, text: &str) -> (u16, Value) {
    client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            json!({ "msgtype": "m.text", "body": text }),
        )
        .await
}

/// The event as `server` stores it, in its federation form (signatures included; no `event_id`,
/// which room versions 3 and later derive, and no `unsigned`).
fn stored(server: &TestServer, event_id: &str) -> Option<ruma::CanonicalJsonObject> {
    let event_id = ruma::OwnedEventId::try_from(event_id).unwrap();
    let mut object = server
        .services
        .rooms
        .timeline
        .get_pdu_object(&event_id)
        .unwrap()?;
    object.remove("event_id");
    object.remove("unsigned");
    Some(object)
}

fn in_timeline(server: &TestServer, event_id: &str) -> bool {
    let event_id = ruma::OwnedEventId::try_from(event_id).unwrap();
    server
        .services
        .rooms
        .timeline
        .get_pdu_id(&event_id)
        .unwrap()
        .is_some()
}

fn policy_of(server: &TestServer, key: &str) -> policy::RoomPolicy {
    policy::policy_of_content(
        &json!({ "via": server.server_name(), "public_keys": { "ed25519": key } }),
    )
    .unwrap()
}

fn rules_of(server: &TestServer, room: &str) -> ruma::room_version_rules::RoomVersionRules {
    let room_id = ruma::OwnedRoomId::try_from(room).unwrap();
    let (_, version) = server.services.rooms.room_version(&room_id).unwrap();
    version.rules().unwrap()
}

/// Every message body a user can read in a room, through `/messages` and an initial `/sync`.
async fn visible_bodies(client: &Client, room: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let page = client
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(room)
        ))
        .await;
    let sync = client.get_ok("/_matrix/client/v3/sync?timeout=0").await;
    let timeline = sync["rooms"]["join"][room]["timeline"]["events"].clone();
    for event in page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(timeline.as_array().into_iter().flatten())
    {
        if let Some(body) = event["content"]["body"].as_str() {
            bodies.push(body.to_owned());
        }
    }
    bodies
}

/// A federation request signed by `from`'s server key (or unsigned), with its status.
async fn signed_request(
    ca: &TestCa,
    from: &TestServer,
    to: &TestServer,
    path: &str,
    body: &Value,
    sign: bool,
) -> (u16, Value) {
    let destination = ruma::OwnedServerName::try_from(to.server_name()).unwrap();
    let mut request = ca
        .https_client()
        .post(format!("https://{}{path}", to.server_name()))
        .json(body);
    if sign {
        let header = plait::federation::x_matrix(
            from.services.globals.server_name(),
            from.services.globals.signing_key(),
            &destination,
            &http::Method::POST,
            path,
            Some(body),
        )
        .unwrap();
        request = request.header("Authorization", header);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_policy_server_signs_allowed_events_and_refuses_forbidden_ones() {
    let (_ca, hs_a, hs_b) = servers().await;
    let alice = hs_a.register("alice").await;
    let bob = hs_b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs_a).await;
    let key = well_known_key(&hs_b).await;
    set_policy(&alice, &room, &hs_b, &key).await;
    wait_for_policy(&bob, &room).await;

    // An allowed message carries B's policy signature next to A's own.
    let (status, body) = send(&alice, &room, "t1", "hello").await;
    assert_eq!(status, 200, "{body}");
    let hello = body["event_id"].as_str().unwrap().to_owned();
    let object = stored(&hs_a, &hello).expect("the message is stored");
    let rules = rules_of(&hs_a, &room);
    assert!(policy::has_valid_signature(
        &policy_of(&hs_b, &key),
        &object,
        &rules
    ));
    let signatures = serde_json::to_value(&object["signatures"]).unwrap();
    assert!(
        signatures[hs_a.server_name()]
            .as_object()
            .unwrap()
            .keys()
            .any(|key_id| key_id.starts_with("ed25519:a_")),
        "A's own signature is kept: {signatures}"
    );
    // The policy key is not B's federation key.
    assert_ne!(key, hs_b.services.globals.signing_key().public_key_base64());
    // B receives it over federation and accepts it (its signature is valid there too).
    wait_for_event(&bob, &room, "hello on B", is_message("hello")).await;

    // A forbidden message is refused with B's error, and stored nowhere.
    let refused = send(&alice, &room, "t2", &format!("please {FORBIDDEN} now")).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert_eq!(refused.1["error"], REFUSAL, "{}", refused.1);
    let (status, _) = send(&alice, &room, "t3", "after").await;
    assert_eq!(status, 200);
    wait_for_event(&bob, &room, "after on B", is_message("after")).await;
    for (client, side) in [(&alice, "A"), (&bob, "B")] {
        let bodies = visible_bodies(client, &room).await;
        assert!(
            bodies.iter().any(|body| body == "after"),
            "{side}: {bodies:?}"
        );
        assert!(
            !bodies.iter().any(|body| body.contains(FORBIDDEN)),
            "{side} shows the refused message: {bodies:?}"
        );
    }
    // Retrying the same transaction is still refused, not answered from a stored event.
    let again = send(&alice, &room, "t2", &format!("please {FORBIDDEN} now")).await;
    assert_error(&again, 403, "M_FORBIDDEN");

    // A state event is checked too: the deny list covers the sender's user ID.
    let blocked = hs_a.register("blocked_carol").await;
    let (status, body) = blocked
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn received_events_without_a_valid_policy_signature_are_soft_failed() {
    let (_ca, hs_a, hs_b) = servers().await;
    let alice = hs_a.register("alice").await;
    let bob = hs_b.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs_a).await;
    let key = well_known_key(&hs_b).await;
    set_policy(&alice, &room, &hs_b, &key).await;
    wait_for_policy(&bob, &room).await;
    let (status, _) = send(&alice, &room, "t1", "policy set").await;
    assert_eq!(status, 200);
    wait_for_event(&bob, &room, "the policy on B", is_message("policy set")).await;

    let hs_a_name = ruma::OwnedServerName::try_from(hs_a.server_name()).unwrap();
    let deliver = |txn: &'static str, pdu: Value| {
        let services = hs_b.services.clone();
        let hs_a_name = hs_a_name.clone();
        async move {
            let body = json!({
                "origin": services.globals.server_name(),
                "origin_server_ts": 1,
                "pdus": [pdu],
                "edus": [],
            });
            services
                .federation_request(
                    &hs_a_name,
                    http::Method::PUT,
                    &format!("/_matrix/federation/v1/send/{txn}"),
                    Some(&body),
                )
                .await
                .unwrap()
        }
    };
    let message = |text: String| {
        PduBuilder::timeline(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": text }),
        )
    };

    // Built and signed by B's server key, but never shown to B's policy: A asks B once more,
    // B refuses, and A soft-fails the event.
    let spam_text = format!("forged {FORBIDDEN}");
    let (spam, value) = forge_shaped(&hs_b, &room, &bob_id, message(spam_text), |_| {}, |_| {});
    let answer = deliver("f1", value).await;
    assert_eq!(answer["pdus"][&spam], json!({}), "{answer}");
    assert!(
        !in_timeline(&hs_a, &spam),
        "a soft-failed event is not in the timeline"
    );
    assert!(
        stored(&hs_a, &spam).is_some(),
        "a soft-failed event is kept as an outlier"
    );

    // Without a signature but acceptable: A's second ask gets one, verifies it and keeps it.
    let (fine, value) = forge_shaped(
        &hs_b,
        &room,
        &bob_id,
        message("forged but fine".to_owned()),
        |_| {},
        |_| {},
    );
    let answer = deliver("f2", value).await;
    assert_eq!(answer["pdus"][&fine], json!({}), "{answer}");
    assert!(in_timeline(&hs_a, &fine));
    let object = stored(&hs_a, &fine).unwrap();
    assert!(policy::has_valid_signature(
        &policy_of(&hs_b, &key),
        &object,
        &rules_of(&hs_a, &room)
    ));

    // A signature by another key (a forged or rotated one) counts as none.
    let other = plait::crypto::SigningKey::generate("policy_server").unwrap();
    let wrong_text = format!("signed badly, {FORBIDDEN}");
    let (badly, value) = forge_shaped(&hs_b, &room, &bob_id, message(wrong_text), |_| {}, |_| {});
    let mut object = match ruma::CanonicalJsonValue::try_from(value).unwrap() {
        ruma::CanonicalJsonValue::Object(object) => object,
        _ => unreachable!(),
    };
    let via = ruma::OwnedServerName::try_from(hs_b.server_name()).unwrap();
    let rules = rules_of(&hs_b, &room);
    let signature = policy::sign_redacted(&other, &via, &object, &rules).unwrap();
    policy::add_signature(&mut object, &via, signature);
    let answer = deliver("f3", serde_json::to_value(&object).unwrap()).await;
    assert_eq!(answer["pdus"][&badly], json!({}), "{answer}");
    assert!(!in_timeline(&hs_a, &badly));

    let bodies = visible_bodies(&alice, &room).await;
    assert!(
        bodies.iter().any(|body| body == "forged but fine"),
        "{bodies:?}"
    );
    assert!(
        !bodies.iter().any(|body| body.contains(FORBIDDEN)),
        "{bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_server_with_no_joined_member_is_not_used() {
    let (_ca, hs_a, hs_b) = servers().await;
    let alice = hs_a.register("alice").await;
    let bob = hs_b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let key = well_known_key(&hs_b).await;
    set_policy(&alice, &room, &hs_b, &key).await;

    // Nobody from B is in the room: its policy does not apply, and nothing asks B.
    let text = format!("before bob: {FORBIDDEN}");
    let (status, body) = send(&alice, &room, "t1", &text).await;
    assert_eq!(status, 200, "{body}");
    let early = body["event_id"].as_str().unwrap().to_owned();
    let object = stored(&hs_a, &early).unwrap();
    assert!(!policy::has_valid_signature(
        &policy_of(&hs_b, &key),
        &object,
        &rules_of(&hs_a, &room)
    ));

    // Once bob joins, B is the room's policy server.
    join_via(&bob, &room, &hs_a).await;
    let refused = send(&alice, &room, "t2", &format!("after bob: {FORBIDDEN}")).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    // And once he leaves, it is not any more.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    for _ in 0..100 {
        let member = alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id().await)
            ))
            .await;
        if member.1["membership"] == "leave" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = send(&alice, &room, "t3", &format!("after leave: {FORBIDDEN}")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sign_endpoint_and_well_known_answer_bad_input_with_the_spec_errors() {
    let (ca, hs_a, hs_b) = servers().await;
    let bob = hs_b.register("bob").await;
    let bob_id = bob.user_id().await;
    let key = well_known_key(&hs_b).await;
    assert_eq!(Some(key.clone()), hs_b.services.policy.public_key());
    assert_eq!(key.len(), 43, "unpadded base64 of 32 bytes: {key}");
    let (status, body) = hs_a.client().get("/.well-known/matrix/policy_server").await;
    assert_eq!(status, 404, "{body}");

    // A room on B whose policy server is B itself: local events are judged and signed locally.
    let room = bob.create_room(json!({ "preset": "public_chat" })).await;
    set_policy(&bob, &room, &hs_b, &key).await;
    let (status, body) = send(&bob, &room, "t1", "local hello").await;
    assert_eq!(status, 200, "{body}");
    let local = body["event_id"].as_str().unwrap().to_owned();
    let object = stored(&hs_b, &local).unwrap();
    assert!(policy::has_valid_signature(
        &policy_of(&hs_b, &key),
        &object,
        &rules_of(&hs_b, &room)
    ));
    let refused = send(&bob, &room, "t2", FORBIDDEN).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert_eq!(refused.1["error"], REFUSAL);

    let path = "/_matrix/policy/v1/sign";
    let message = |text: &str| {
        PduBuilder::timeline(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": text }),
        )
    };
    // A well-formed request from another server is answered with the signature alone.
    let (_, pdu) = forge_shaped(&hs_b, &room, &bob_id, message("ask me"), |_| {}, |_| {});
    let (status, answer) = signed_request(&ca, &hs_a, &hs_b, path, &pdu, true).await;
    assert_eq!(status, 200, "{answer}");
    let signature = answer[hs_b.server_name()][policy::KEY_ID]
        .as_str()
        .expect("a signature")
        .to_owned();
    assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
    let mut object = match ruma::CanonicalJsonValue::try_from(pdu).unwrap() {
        ruma::CanonicalJsonValue::Object(object) => object,
        _ => unreachable!(),
    };
    let via = ruma::OwnedServerName::try_from(hs_b.server_name()).unwrap();
    policy::add_signature(&mut object, &via, signature);
    assert!(policy::has_valid_signature(
        &policy_of(&hs_b, &key),
        &object,
        &rules_of(&hs_b, &room)
    ));

    // Refused by the policy: 400 M_FORBIDDEN.
    let (_, spam) = forge_shaped(&hs_b, &room, &bob_id, message(FORBIDDEN), |_| {}, |_| {});
    let refused = signed_request(&ca, &hs_a, &hs_b, path, &spam, true).await;
    assert_error(&refused, 400, "M_FORBIDDEN");
    // Unsigned: 401.
    let unsigned = signed_request(&ca, &hs_a, &hs_b, path, &spam, false).await;
    assert_error(&unsigned, 401, "M_UNAUTHORIZED");
    // A server that is not a policy server: 404 M_UNRECOGNIZED.
    let disabled = signed_request(&ca, &hs_b, &hs_a, path, &spam, true).await;
    assert_error(&disabled, 404, "M_UNRECOGNIZED");
    // An unknown room, and a room whose policy server is someone else: 404 M_NOT_FOUND.
    let mut unknown = spam.clone();
    unknown["room_id"] = json!(format!("!nowhere:{}", hs_a.server_name()));
    let answer = signed_request(&ca, &hs_a, &hs_b, path, &unknown, true).await;
    assert_error(&answer, 404, "M_NOT_FOUND");
    let other_room = bob.create_room(json!({ "preset": "public_chat" })).await;
    let (_, elsewhere) = forge_shaped(&hs_b, &other_room, &bob_id, message("hi"), |_| {}, |_| {});
    let answer = signed_request(&ca, &hs_a, &hs_b, path, &elsewhere, true).await;
    assert_error(&answer, 404, "M_NOT_FOUND");
    // Malformed PDUs: 400 M_BAD_JSON.
    for bad in [
        json!({ "type": "m.room.message" }),
        json!({ "room_id": room, "type": "m.room.message" }),
        json!({ "room_id": room, "type": 5, "sender": bob_id }),
        json!({ "room_id": 7 }),
    ] {
        let answer = signed_request(&ca, &hs_a, &hs_b, path, &bad, true).await;
        assert_error(&answer, 400, "M_BAD_JSON");
    }
    // The m.room.policy state event itself is never signed.
    let (_, policy_event) = forge_shaped(
        &hs_b,
        &room,
        &bob_id,
        PduBuilder::state("m.room.policy", "", json!({})),
        |_| {},
        |_| {},
    );
    let answer = signed_request(&ca, &hs_a, &hs_b, path, &policy_event, true).await;
    assert_error(&answer, 400, "M_BAD_JSON");
    // Over 65536 bytes: 413 M_TOO_LARGE.
    let mut huge = spam.clone();
    huge["content"]["body"] = json!("x".repeat(70_000));
    let answer = signed_request(&ca, &hs_a, &hs_b, path, &huge, true).await;
    assert_error(&answer, 413, "M_TOO_LARGE");
    // A server the room's ACL denies: 403 M_FORBIDDEN.
    bob.put_ok(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
            enc(&room)
        ),
        // ACL globs match the host without its port.
        json!({ "allow": ["*"], "deny": ["127.0.0.2"], "allow_ip_literals": true }),
    )
    .await;
    let answer = signed_request(&ca, &hs_a, &hs_b, path, &spam, true).await;
    assert_error(&answer, 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invites_are_signed_and_an_unreachable_policy_server_fails_the_send() {
    let (_ca, hs_a, hs_b) = servers().await;
    let alice = hs_a.register("alice").await;
    let bob = hs_b.register("bob").await;
    let carol = hs_b.register("carol").await;
    let blocked = hs_b.register("blocked_dave").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs_a).await;
    let key = well_known_key(&hs_b).await;
    set_policy(&alice, &room, &hs_b, &key).await;
    wait_for_policy(&bob, &room).await;

    // An invite of a user on another server is signed by the policy server before it is sent.
    let invite = |user: String| {
        let alice = &alice;
        let room = &room;
        async move {
            alice
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
                    json!({ "user_id": user }),
                )
                .await
        }
    };
    let (status, body) = invite(carol.user_id().await).await;
    assert_eq!(status, 200, "{body}");
    let member = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}?format=event",
            enc(&room),
            enc(&carol.user_id().await)
        ))
        .await;
    let invite_id = member["event_id"]
        .as_str()
        .expect("the invite event")
        .to_owned();
    let object = stored(&hs_a, &invite_id).unwrap();
    assert!(policy::has_valid_signature(
        &policy_of(&hs_b, &key),
        &object,
        &rules_of(&hs_a, &room)
    ));
    // The policy refuses invites of a denied user, and nothing reaches their server.
    let refused = invite(blocked.user_id().await).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert!(
        !blocked.get_ok("/_matrix/client/v3/sync?timeout=0").await["rooms"]["invite"]
            .as_object()
            .is_some_and(|invites| invites.contains_key(&room))
    );

    // Banning a denied user is not refused: the deny lists keep users out, not moderators.
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            json!({ "user_id": blocked.user_id().await }),
        )
        .await;

    // The policy server goes away: sends fail visibly and nothing is stored or shown.
    let _kept = hs_b.stop().await;
    let down = send(&alice, &room, "t1", "while the policy server is down").await;
    assert_error(&down, 502, "M_UNKNOWN");
    let bodies = visible_bodies(&alice, &room).await;
    assert!(
        !bodies.iter().any(|body| body.contains("is down")),
        "{bodies:?}"
    );
    // The room drops its policy server without asking it, and messages flow again.
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.policy/",
                enc(&room)
            ),
            json!({}),
        )
        .await;
    let (status, body) = send(&alice, &room, "t2", "without a policy server").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_or_knock_that_the_policy_server_refuses_is_answered_403() {
    // A hosts the room and is its policy server; B has no member in it, so B's users join
    // through A's `make_join`/`send_join`, and A's check of the join decides.
    let ca = TestCa::new();
    let hs_a = TestServer::start_federated_with(ip("127.0.0.2"), &ca, None, |config| {
        config.policy_server_enabled = true;
        config.policy_server_deny_users = vec!["@blocked*:*".to_owned()];
    })
    .await;
    let hs_b = TestServer::start_federated(ip("127.0.0.3"), &ca, None).await;
    let alice = hs_a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let key = well_known_key(&hs_a).await;
    set_policy(&alice, &room, &hs_a, &key).await;

    let blocked = hs_b.register("blocked_dave").await;
    let join = format!(
        "/_matrix/client/v3/join/{}?server_name={}",
        enc(&room),
        enc(&hs_a.server_name())
    );
    let (status, body) = blocked.post(&join, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // The policy server's own reason comes back through both servers.
    let reason = format!("{} is not accepted in this room", blocked.user_id().await);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.ends_with(&reason)),
        "{body}"
    );
    let members = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await;
    assert!(
        members["joined"]
            .get(blocked.user_id().await.as_str())
            .is_none(),
        "{members}"
    );
    // A refused the join before answering with the room's state: B never got it to store.
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    assert!(
        !hs_b.services.rooms.exists(&room_id).unwrap(),
        "B stored the room: A answered send_join as if the join were in"
    );
    // The same for a knock, asked while B still has no joined member, so that B's users knock
    // through A's `make_knock`/`send_knock` too: refused with 403 and the policy server's reason.
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.join_rules/",
                enc(&room)
            ),
            json!({ "join_rule": "knock" }),
        )
        .await;
    let knock = format!(
        "/_matrix/client/v3/knock/{}?server_name={}",
        enc(&room),
        enc(&hs_a.server_name())
    );
    let blocked_knocker = hs_b.register("blocked_erin").await;
    let (status, body) = blocked_knocker.post(&knock, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // The policy server's own reason comes back through both servers.
    let reason = format!(
        "{} is not accepted in this room",
        blocked_knocker.user_id().await
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.ends_with(&reason)),
        "{body}"
    );
    let carol = hs_b.register("carol").await;
    let (status, body) = carol.post(&knock, json!({})).await;
    assert_eq!(status, 200, "{body}");

    // A user the policy allows joins once the room is public again.
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.join_rules/",
                enc(&room)
            ),
            json!({ "join_rule": "public" }),
        )
        .await;
    let bob = hs_b.register("bob").await;
    let (status, body) = bob.post(&join, json!({})).await;
    assert_eq!(status, 200, "{body}");
}
