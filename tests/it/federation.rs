//! Two Plait servers on loopback (127.0.0.2 and 127.0.0.3) with TLS from a test CA: rooms
//! shared across them through invites and aliases, messages both ways, leaving.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{enc, ip, tls::TestCa, Client, TestServer};

/// Polls `/messages` (newest first) until an event matches, or fails after 20 s.
pub async fn wait_for_event(
    client: &Client,
    room: &str,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..200 {
        let (status, body) = client
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                enc(room)
            ))
            .await;
        if status == 200 {
            if let Some(event) = body["chunk"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|event| matches(event))
            {
                return event.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never arrived in {room}");
}

/// Polls `/sync` until the user has an invite to `room`.
pub async fn wait_for_invite(client: &Client, room: &str) -> Value {
    for _ in 0..200 {
        let body = client.get_ok("/_matrix/client/v3/sync?timeout=0").await;
        if let Some(invite) = body["rooms"]["invite"].get(room) {
            return invite.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the invite to {room} never arrived");
}

/// Checks the stripped state a client sees of an invite or knock to a room version 12 room
/// (spec v1.16, MSC4311): the create event is there, whole (a signed PDU, with its
/// `origin_server_ts`), and the other room events have only `type`, `state_key`, `sender` and
/// `content`. Returns the create event.
pub fn check_prejoin_state(events: &[Value]) -> Value {
    let create = events
        .iter()
        .find(|event| event["type"] == "m.room.create")
        .unwrap_or_else(|| panic!("no create event in {events:?}"))
        .clone();
    for key in ["origin_server_ts", "signatures", "hashes"] {
        assert!(
            create.get(key).is_some(),
            "the create event lacks {key}: {create}"
        );
    }
    for event in events
        .iter()
        .filter(|event| event["type"] != "m.room.create" && event["type"] != "m.room.member")
    {
        let mut keys: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["content", "sender", "state_key", "type"], "{event}");
    }
    create
}

/// Matches the member event that gives `user` the `membership`.
pub fn is_membership<'a>(user: &'a str, membership: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |event| {
        event["type"] == "m.room.member"
            && event["state_key"] == user
            && event["content"]["membership"] == membership
    }
}

/// Two federating servers on 127.0.0.2 and 127.0.0.3 with certificates from one test CA.
pub async fn two_servers() -> (TestCa, TestServer, TestServer) {
    let ca = TestCa::new();
    let hs1 = TestServer::start_federated(ip("127.0.0.2"), &ca, None).await;
    let hs2 = TestServer::start_federated(ip("127.0.0.3"), &ca, None).await;
    (ca, hs1, hs2)
}

/// Joins a room of `server` by ID; room version 12 IDs name no server, so the join says where.
pub async fn join_via(client: &Client, room: &str, server: &TestServer) {
    client
        .post_ok(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                enc(room),
                enc(&server.server_name())
            ),
            json!({}),
        )
        .await;
}

pub fn is_message(text: &'static str) -> impl Fn(&Value) -> bool {
    move |event| event["type"] == "m.room.message" && event["content"]["body"] == text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invite_join_and_messages_cross_two_plait_servers() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;

    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Across" }))
        .await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob_id }),
        )
        .await;
    let invite = wait_for_invite(&bob, &room).await;
    let state = invite["invite_state"]["events"].as_array().unwrap();
    assert!(
        state
            .iter()
            .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "Across"),
        "stripped state carries the name: {invite}"
    );
    // hs1 sent full PDUs, which hs2 checked: its client sees the create event whole.
    check_prejoin_state(state);

    let joined = bob
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(joined["room_id"], room);
    let members = bob
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await;
    assert_eq!(members["joined"].as_object().unwrap().len(), 2, "{members}");
    // hs1 sees bob's join too.
    wait_for_event(
        &alice,
        &room,
        "bob's join on hs1",
        is_membership(&bob_id, "join"),
    )
    .await;

    alice.send_text(&room, "a1", "hello from hs1").await;
    let received = wait_for_event(
        &bob,
        &room,
        "alice's message on hs2",
        is_message("hello from hs1"),
    )
    .await;
    assert_eq!(received["sender"], alice.user_id().await);
    bob.send_text(&room, "b1", "hello from hs2").await;
    wait_for_event(
        &alice,
        &room,
        "bob's message on hs1",
        is_message("hello from hs2"),
    )
    .await;

    // Both servers hold the same room state.
    let state_on = |client: Client| {
        let room = room.clone();
        async move {
            let state = client
                .get_ok(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)))
                .await;
            let mut ids: Vec<String> = state
                .as_array()
                .unwrap()
                .iter()
                .map(|event| event["event_id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(state_on(alice.clone()).await, state_on(bob.clone()).await);

    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    wait_for_event(
        &alice,
        &room,
        "bob's leave on hs1",
        is_membership(&bob_id, "leave"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_with_fixed_addresses_federate_by_name() {
    // Names no resolver knows: each server finds the other through `federation_hosts` alone,
    // and still verifies the other's certificate for its name.
    let ca = TestCa::new();
    let servers = TestServer::start_named(
        &ca,
        &[
            ("alpha.test", ip("127.0.0.2")),
            ("beta.test", ip("127.0.0.3")),
        ],
    )
    .await;
    let (alpha, beta) = (&servers[0], &servers[1]);
    let alice = alpha.register("alice").await;
    let bob = beta.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, alpha).await;
    alice.send_text(&room, "n1", "hello beta").await;
    wait_for_event(
        &bob,
        &room,
        "alice's message on beta",
        is_message("hello beta"),
    )
    .await;
    bob.send_text(&room, "n2", "hello alpha").await;
    wait_for_event(
        &alice,
        &room,
        "bob's message on alpha",
        is_message("hello alpha"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_a_remote_room_by_alias() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let alias_local = "lobby";
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": alias_local }))
        .await;
    let alias = format!("#{alias_local}:{}", hs1.server_name());
    alice.send_text(&room, "a1", "before bob").await;

    let joined = bob
        .post_ok(
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            json!({}),
        )
        .await;
    assert_eq!(joined["room_id"], room);
    bob.send_text(&room, "b1", "bob is here").await;
    wait_for_event(
        &alice,
        &room,
        "bob's message on hs1",
        is_message("bob is here"),
    )
    .await;
    alice.send_text(&room, "a2", "welcome").await;
    wait_for_event(&bob, &room, "alice's reply on hs2", is_message("welcome")).await;

    // An unknown remote alias is M_NOT_FOUND, not a server error.
    let missing = format!("#nothing:{}", hs1.server_name());
    let response = bob
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&missing)),
            json!({}),
        )
        .await;
    crate::common::assert_error(&response, 404, "M_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federation_keys_and_version() {
    let (ca, hs1, hs2) = two_servers().await;
    let https = ca.https_client();
    let get = |url: String| {
        let https = https.clone();
        async move {
            let response = https.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let version = get(format!(
        "https://{}/_matrix/federation/v1/version",
        hs1.server_name()
    ))
    .await;
    assert_eq!(version["server"]["name"], "Plait");

    let keys = get(format!(
        "https://{}/_matrix/key/v2/server",
        hs1.server_name()
    ))
    .await;
    assert_eq!(keys["server_name"], hs1.server_name());
    assert!(keys["valid_until_ts"].as_u64().unwrap() > plait::util::now_millis());
    let key_id = keys["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let public = keys["verify_keys"][&key_id]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let key_map = |servers: &[(&str, &str, &str)]| {
        let mut map = ruma::signatures::PublicKeyMap::new();
        for (server, key_id, public) in servers {
            let mut set = ruma::signatures::PublicKeySet::new();
            set.insert(
                (*key_id).to_owned(),
                ruma::serde::Base64::parse(*public).unwrap(),
            );
            map.insert((*server).to_owned(), set);
        }
        map
    };
    let object = |value: &Value| match ruma::CanonicalJsonValue::try_from(value.clone()).unwrap() {
        ruma::CanonicalJsonValue::Object(object) => object,
        _ => panic!("not an object"),
    };
    let hs1_name = hs1.server_name();
    ruma::signatures::verify_json(&key_map(&[(&hs1_name, &key_id, &public)]), &object(&keys))
        .expect("the key document is self-signed");

    // hs2 as a notary: hs1's document, countersigned by hs2.
    let hs2_keys = get(format!(
        "https://{}/_matrix/key/v2/server",
        hs2.server_name()
    ))
    .await;
    let hs2_key_id = hs2_keys["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let hs2_public = hs2_keys["verify_keys"][&hs2_key_id]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let notarised = get(format!(
        "https://{}/_matrix/key/v2/query/{}",
        hs2.server_name(),
        hs1_name
    ))
    .await;
    let document = &notarised["server_keys"][0];
    assert_eq!(document["server_name"], hs1_name, "{notarised}");
    let hs2_name = hs2.server_name();
    ruma::signatures::verify_json(
        &key_map(&[
            (&hs1_name, &key_id, &public),
            (&hs2_name, &hs2_key_id, &hs2_public),
        ]),
        &object(document),
    )
    .expect("signed by the server and the notary");
    let response = https
        .post(format!(
            "https://{}/_matrix/key/v2/query",
            hs2.server_name()
        ))
        .json(&json!({ "server_keys": { hs1_name.clone(): {}, "127.0.0.9:9": {} } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let batch: Value = response.json().await.unwrap();
    let servers: Vec<&str> = batch["server_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|document| document["server_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        servers,
        vec![hs1_name.as_str()],
        "an unreachable server has no keys: {batch}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_invite_rejected_through_make_leave() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob_id }),
        )
        .await;
    wait_for_invite(&bob, &room).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    wait_for_event(
        &alice,
        &room,
        "bob's rejection on hs1",
        is_membership(&bob_id, "leave"),
    )
    .await;
    let sync = bob.get_ok("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federation_reads_need_room_membership() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&alice.user_id().await)
            ),
            json!({ "displayname": "Alice" }),
        )
        .await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let message = alice.send_text(&room, "a1", "hi").await;
    let hs1_name = ruma::OwnedServerName::try_from(hs1.server_name()).unwrap();
    // Requests signed by hs2, as hs2 sends them.
    let ask = |method: http::Method, path: String, body: Option<Value>| {
        let services = hs2.services.clone();
        let hs1_name = hs1_name.clone();
        async move {
            services
                .federation
                .request(
                    services.globals.server_name(),
                    services.globals.signing_key(),
                    &hs1_name,
                    method,
                    &path,
                    body.as_ref(),
                )
                .await
        }
    };
    let room_path = enc(&room);
    let state_ids = format!(
        "/_matrix/federation/v1/state_ids/{room_path}?event_id={}",
        enc(&message)
    );
    let refused = ask(http::Method::GET, state_ids.clone(), None).await;
    assert!(
        matches!(refused, Err(plait::Error::Matrix { ref kind, .. }) if *kind == ruma::api::error::ErrorKind::Forbidden),
        "a server with nobody in the room may not read it: {refused:?}"
    );

    let bob = hs2.register("bob").await;
    join_via(&bob, &room, &hs1).await;

    let state = ask(http::Method::GET, state_ids, None).await.unwrap();
    let ids = state["pdu_ids"].as_array().unwrap();
    assert!(ids.len() >= 5, "{state}");
    assert!(!state["auth_chain_ids"].as_array().unwrap().is_empty());
    // `/state` answers the same events whole, as stored (hashes and signatures included).
    let full = ask(
        http::Method::GET,
        format!(
            "/_matrix/federation/v1/state/{room_path}?event_id={}",
            enc(&message)
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(full["pdus"].as_array().unwrap().len(), ids.len(), "{full}");
    assert_eq!(
        full["auth_chain"].as_array().unwrap().len(),
        state["auth_chain_ids"].as_array().unwrap().len(),
        "{full}"
    );
    assert!(full["pdus"][0]["signatures"][hs1.server_name()].is_object());
    // Both need the `event_id` the spec requires.
    let no_event = ask(
        http::Method::GET,
        format!("/_matrix/federation/v1/state_ids/{room_path}"),
        None,
    )
    .await;
    assert!(
        format!("{no_event:?}").contains("M_MISSING_PARAM"),
        "{no_event:?}"
    );
    let event = ask(
        http::Method::GET,
        format!("/_matrix/federation/v1/event/{}", enc(&message)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(event["pdus"][0]["content"]["body"], "hi");
    assert_eq!(event["pdus"].as_array().unwrap().len(), 1, "{event}");
    assert_eq!(event["origin"], hs1.server_name(), "{event}");
    assert!(event["origin_server_ts"].is_u64(), "{event}");
    assert!(
        event["pdus"][0].get("event_id").is_none(),
        "v12 PDUs have no event_id"
    );
    let auth = ask(
        http::Method::GET,
        format!(
            "/_matrix/federation/v1/event_auth/{room_path}/{}",
            enc(&message)
        ),
        None,
    )
    .await
    .unwrap();
    assert!(auth["auth_chain"].as_array().unwrap().len() >= 2, "{auth}");
    let backfill = ask(
        http::Method::GET,
        format!(
            "/_matrix/federation/v1/backfill/{room_path}?v={}&limit=3",
            enc(&message)
        ),
        None,
    )
    .await
    .unwrap();
    let pdus = backfill["pdus"].as_array().unwrap();
    assert_eq!(pdus.len(), 3, "{backfill}");
    assert_eq!(pdus[0]["content"]["body"], "hi");
    let missing = ask(
        http::Method::POST,
        format!("/_matrix/federation/v1/get_missing_events/{room_path}"),
        Some(json!({ "earliest_events": [], "latest_events": [message], "limit": 2 })),
    )
    .await
    .unwrap();
    assert_eq!(missing["events"].as_array().unwrap().len(), 2, "{missing}");
    let profile = ask(
        http::Method::GET,
        format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            enc(&alice.user_id().await)
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(profile["displayname"], "Alice");
}

/// Builds an event in `room` as hs2 would (template and signature from hs2's services), without
/// committing it there, and lets `tamper` change it afterwards.
fn forge(
    server: &TestServer,
    room: &str,
    sender: &str,
    builder: plait::service::rooms::timeline::PduBuilder,
    tamper: impl FnOnce(&mut Value),
) -> (String, Value) {
    forge_shaped(server, room, sender, builder, |_| {}, tamper)
}

/// [`forge`] with `shape` changing the template (prev or auth events) before it is signed.
pub fn forge_shaped(
    server: &TestServer,
    room: &str,
    sender: &str,
    builder: plait::service::rooms::timeline::PduBuilder,
    shape: impl FnOnce(&mut ruma::CanonicalJsonObject),
    tamper: impl FnOnce(&mut Value),
) -> (String, Value) {
    use plait::service::rooms::{
        timeline::{build_and_sign, build_template},
        version::rules_for,
    };
    let services = &server.services;
    let room_id = ruma::OwnedRoomId::try_from(room).unwrap();
    let sender = ruma::OwnedUserId::try_from(sender).unwrap();
    let (short, version) = services.rooms.room_version(&room_id).unwrap();
    let rules = rules_for(&version).unwrap();
    let (mut object, _) =
        build_template(services, &room_id, &sender, &builder, &rules, Some(short)).unwrap();
    shape(&mut object);
    let (signed, event_id) = build_and_sign(services, &object, &rules).unwrap();
    let mut value = serde_json::to_value(&signed).unwrap();
    tamper(&mut value);
    (event_id.to_string(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_federation_input_is_rejected() {
    use plait::service::rooms::timeline::PduBuilder;
    let (ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    let hs1_name = ruma::OwnedServerName::try_from(hs1.server_name()).unwrap();
    let send = |txn: &'static str, origin: String, pdus: Vec<Value>| {
        let services = hs2.services.clone();
        let hs1_name = hs1_name.clone();
        async move {
            let body = json!({ "origin": origin, "origin_server_ts": 1, "pdus": pdus, "edus": [] });
            services
                .federation
                .request(
                    services.globals.server_name(),
                    services.globals.signing_key(),
                    &hs1_name,
                    http::Method::PUT,
                    &format!("/_matrix/federation/v1/send/{txn}"),
                    Some(&body),
                )
                .await
        }
    };
    let hs2_name = hs2.server_name();
    let message = |text: &str| {
        PduBuilder::timeline(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": text }),
        )
    };
    let stored = |event_id: &str| {
        hs1.services
            .rooms
            .timeline
            .get_pdu_id(&ruma::OwnedEventId::try_from(event_id).unwrap())
            .unwrap()
            .is_some()
    };

    // A bad signature: the timestamp changed after signing.
    let (bad_sig, value) = forge(&hs2, &room, &bob_id, message("forged"), |event| {
        event["origin_server_ts"] = json!(5)
    });
    let answer = send("t1", hs2_name.clone(), vec![value]).await.unwrap();
    let bad_sig_id = answer["pdus"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    assert!(
        answer["pdus"][&bad_sig_id]["error"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{answer}"
    );
    assert!(!stored(&bad_sig) && !stored(&bad_sig_id));

    // A content hash mismatch: accepted, but only in redacted form.
    let (tampered, value) = forge(&hs2, &room, &bob_id, message("original"), |event| {
        event["content"]["body"] = json!("tampered");
    });
    let answer = send("t2", hs2_name.clone(), vec![value]).await.unwrap();
    assert_eq!(answer["pdus"][&tampered], json!({}), "{answer}");
    let kept = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(&tampered)
        ))
        .await;
    assert_eq!(
        kept["content"],
        json!({}),
        "the tampered event is kept redacted: {kept}"
    );

    // Not allowed by the auth rules: bob may not change the power levels.
    let (power, value) = forge(
        &hs2,
        &room,
        &bob_id,
        PduBuilder::state(
            "m.room.power_levels",
            "",
            json!({ "users": { bob_id.clone(): 100 } }),
        ),
        |_| {},
    );
    // A rejected event is answered `{}` (server-server API, "Rejection"), and remembered.
    let answer = send("t3", hs2_name.clone(), vec![value.clone()])
        .await
        .unwrap();
    assert_eq!(answer["pdus"][&power], json!({}), "{answer}");
    assert!(!stored(&power));
    assert!(hs1
        .services
        .rooms
        .rejected
        .is_rejected(&ruma::OwnedEventId::try_from(power.as_str()).unwrap())
        .unwrap());

    // A transaction claiming another origin than the signing server.
    let refused = send("t4", "127.0.0.9:1".to_owned(), vec![]).await;
    assert!(
        matches!(refused, Err(plait::Error::Matrix { .. })),
        "{refused:?}"
    );

    // A replayed transaction gets the same answer and changes nothing.
    let (fine, value) = forge(&hs2, &room, &bob_id, message("once"), |_| {});
    let first = send("t5", hs2_name.clone(), vec![value.clone()])
        .await
        .unwrap();
    let again = send("t5", hs2_name.clone(), vec![value]).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(first["pdus"][&fine], json!({}));
    wait_for_event(&alice, &room, "the accepted message", is_message("once")).await;

    // An oversize PDU.
    let (_, mut value) = forge(&hs2, &room, &bob_id, message("big"), |_| {});
    value["content"]["body"] = json!("x".repeat(70_000));
    let answer = send("t6", hs2_name.clone(), vec![value]).await.unwrap();
    let error = answer["pdus"].as_object().unwrap().values().next().unwrap()["error"].clone();
    assert!(error.as_str().unwrap().contains("exceeds"), "{answer}");

    // An invite in a room version this server does not know.
    let carol = hs1.register("carol").await;
    let path = format!(
        "/_matrix/federation/v2/invite/{}/%24x%3Aexample.org",
        enc(&room)
    );
    let body = json!({ "room_version": "99", "event": {}, "invite_room_state": [] });
    let services = hs2.services.clone();
    let refused = services
        .federation
        .request(
            services.globals.server_name(),
            services.globals.signing_key(),
            &hs1_name,
            http::Method::PUT,
            &path,
            Some(&body),
        )
        .await;
    assert!(
        format!("{refused:?}").contains("M_INCOMPATIBLE_ROOM_VERSION"),
        "{refused:?}"
    );
    drop(carol);

    // A malformed X-Matrix header, and a request signed with a key the origin never published.
    let https = ca.https_client();
    let url = format!(
        "https://{}/_matrix/federation/v1/query/profile?user_id=%40alice%3Ax",
        hs1.server_name()
    );
    let response = https
        .get(&url)
        .header("Authorization", "X-Matrix nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["errcode"],
        "M_UNAUTHORIZED"
    );
    let other_key = plait::crypto::SigningKey::generate("unknown").unwrap();
    let header = plait::federation::x_matrix(
        hs2.services.globals.server_name(),
        &other_key,
        &hs1_name,
        &http::Method::GET,
        "/_matrix/federation/v1/query/profile?user_id=%40alice%3Ax",
        None,
    )
    .unwrap();
    let response = https
        .get(&url)
        .header("Authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["errcode"],
        "M_UNAUTHORIZED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_was_down_catches_up_after_restart() {
    let (ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_token = bob.token.clone();
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;

    // hs2 goes away; hs1 accepts messages meanwhile and keeps them queued.
    let dir = hs2.stop().await.unwrap();
    for index in 0..3 {
        alice
            .send_text(&room, &format!("m{index}"), &format!("while down {index}"))
            .await;
    }
    // hs1 restarts too: the queue is in its database, not in memory.
    let hs1_dir = hs1.stop().await.unwrap();
    let hs1 = TestServer::start_federated(ip("127.0.0.2"), &ca, Some(hs1_dir.path())).await;
    let hs2 = TestServer::start_federated(ip("127.0.0.3"), &ca, Some(dir.path())).await;
    let bob = Client {
        token: bob_token,
        ..hs2.client()
    };
    for index in 0..3 {
        let text: &'static str = Box::leak(format!("while down {index}").into_boxed_str());
        wait_for_event(
            &bob,
            &room,
            "a message sent while hs2 was down",
            is_message(text),
        )
        .await;
    }
    drop((hs1, hs1_dir, dir));
}

/// The room's current state as sorted `(type, state_key, event_id)` triples.
async fn state_ids(client: &Client, room: &str) -> Vec<(String, String, String)> {
    let state = client
        .get_ok(&format!("/_matrix/client/v3/rooms/{}/state", enc(room)))
        .await;
    let mut ids: Vec<_> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["state_key"].as_str().unwrap().to_owned(),
                event["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_power_level_changes_resolve_identically_on_both_servers() {
    let (ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let (alice_token, bob_token) = (alice.token.clone(), bob.token.clone());
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;

    // Bob may change power levels too.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
        enc(&room)
    );
    let mut base = alice.get_ok(&path).await;
    base["users"][&bob_id] = json!(50);
    base["events"]["m.room.power_levels"] = json!(50);
    let base_id = alice.put_ok(&path, base.clone()).await["event_id"].clone();
    wait_for_event(&bob, &room, "the shared power levels", |event| {
        event["event_id"] == base_id
    })
    .await;

    // A fork made deterministic by outages: each change is made while the other server is down,
    // so both have the shared power levels as their only prev event.
    let hs2_dir = hs2.stop().await.unwrap();
    let mut by_alice = base.clone();
    by_alice["events_default"] = json!(10);
    let alice_event = alice.put_ok(&path, by_alice).await["event_id"].clone();
    let hs1_dir = hs1.stop().await.unwrap();
    let hs2 = TestServer::start_federated(ip("127.0.0.3"), &ca, Some(hs2_dir.path())).await;
    let bob = Client {
        token: bob_token,
        ..hs2.client()
    };
    let mut by_bob = base.clone();
    by_bob["invite"] = json!(20);
    let bob_event = bob.put_ok(&path, by_bob).await["event_id"].clone();
    let hs1 = TestServer::start_federated(ip("127.0.0.2"), &ca, Some(hs1_dir.path())).await;
    let alice = Client {
        token: alice_token,
        ..hs1.client()
    };

    // Each side receives the other's change, and both resolve the conflict the same way: the
    // changes are sorted by their senders' power (the creator's first), and bob's, applied
    // last and allowed on top of alice's, wins.
    for client in [&alice, &bob] {
        for event_id in [&alice_event, &bob_event] {
            wait_for_event(client, &room, "both power-level changes", |event| {
                event["event_id"] == *event_id
            })
            .await;
        }
    }
    let mut converged = false;
    for _ in 0..100 {
        let (on_hs1, on_hs2) = (state_ids(&alice, &room).await, state_ids(&bob, &room).await);
        if on_hs1 == on_hs2 {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (on_hs1, on_hs2) = (state_ids(&alice, &room).await, state_ids(&bob, &room).await);
    assert!(converged, "state differs:\nhs1 {on_hs1:?}\nhs2 {on_hs2:?}");
    let power = alice.get_ok(&path).await;
    assert_eq!(power["invite"], 20, "{power}");
    assert_eq!(bob.get_ok(&path).await, power);
    drop((hs1, hs1_dir, hs2, hs2_dir));
}

/// The members a server lists follow its resolved state, also where the resolution undoes a
/// membership change it committed itself: bob (hs2) kicks carol while alice (hs1) takes his
/// power to kick; on hs2 the kick was committed first, and alice's change, resolved against
/// it, leaves carol joined (the kick fails the auth rules on top of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_change_undone_by_state_resolution_leaves_the_member_list() {
    let (ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let carol = hs1.register("carol").await;
    let bob = hs2.register("bob").await;
    let (alice_token, bob_token) = (alice.token.clone(), bob.token.clone());
    let (bob_id, carol_id) = (bob.user_id().await, carol.user_id().await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    carol.join(&room).await;
    join_via(&bob, &room, &hs1).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
        enc(&room)
    );
    let mut power = alice.get_ok(&path).await;
    power["users"][&bob_id] = json!(50);
    power["kick"] = json!(50);
    let base_id = alice.put_ok(&path, power.clone()).await["event_id"].clone();
    wait_for_event(&bob, &room, "bob's power to kick", |event| {
        event["event_id"] == base_id
    })
    .await;

    // The fork, made by outages as in the power-level test above.
    let hs2_dir = hs2.stop().await.unwrap();
    power["users"][&bob_id] = json!(0);
    let demotion = alice.put_ok(&path, power).await["event_id"].clone();
    let hs1_dir = hs1.stop().await.unwrap();
    let hs2 = TestServer::start_federated(ip("127.0.0.3"), &ca, Some(hs2_dir.path())).await;
    let bob = Client {
        token: bob_token,
        ..hs2.client()
    };
    let kick_path = format!("/_matrix/client/v3/rooms/{}/kick", enc(&room));
    bob.post_ok(&kick_path, json!({ "user_id": carol_id }))
        .await;
    let members_path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
    let joined = bob.get_ok(&members_path).await;
    assert!(joined["joined"].get(&carol_id).is_none(), "{joined}");
    let hs1 = TestServer::start_federated(ip("127.0.0.2"), &ca, Some(hs1_dir.path())).await;
    let alice = Client {
        token: alice_token,
        ..hs1.client()
    };

    wait_for_event(&bob, &room, "alice's demotion of bob", |event| {
        event["event_id"] == demotion
    })
    .await;
    let carol_state = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&carol_id)
    );
    assert_eq!(bob.get_ok(&carol_state).await["membership"], "join");
    let joined = bob.get_ok(&members_path).await;
    assert!(joined["joined"].get(&carol_id).is_some(), "{joined}");
    let on_hs1 = alice.get_ok(&members_path).await;
    let names = |body: &Value| {
        let mut names: Vec<String> = body["joined"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&joined), names(&on_hs1));
    drop((hs1, hs1_dir, hs2, hs2_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn knocking_on_a_room_of_another_server() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let carol = hs2.register("carol").await;
    let (bob_id, carol_id) = (bob.user_id().await, carol.user_id().await);
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "name": "Knock across",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "knock"}
            }]
        }))
        .await;
    let knock_path = format!(
        "/_matrix/client/v3/knock/{}?via={}",
        enc(&room),
        enc(&hs1.server_name())
    );

    // Bob's knock goes through hs1's make_knock/send_knock; his client sees the stripped state.
    let knocked = bob
        .post_ok(&knock_path, json!({"reason": "hello from hs2"}))
        .await;
    assert_eq!(knocked["room_id"], room);
    let knock = wait_for_event(
        &alice,
        &room,
        "bob's knock",
        is_membership(&bob_id, "knock"),
    )
    .await;
    assert_eq!(knock["content"]["reason"], "hello from hs2");
    let sync = bob.get_ok("/_matrix/client/v3/sync").await;
    let knock_state = sync["rooms"]["knock"][&room]["knock_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no knock section: {sync}"))
        .clone();
    assert!(knock_state
        .iter()
        .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "Knock across"));
    check_prejoin_state(&knock_state);

    // Carol knocks and takes it back while hs2 is not in the room: her leave goes through
    // hs1's make_leave/send_leave, found from the knock's stripped state.
    carol.post_ok(&knock_path, json!({})).await;
    wait_for_event(
        &alice,
        &room,
        "carol's knock",
        is_membership(&carol_id, "knock"),
    )
    .await;
    carol
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            json!({}),
        )
        .await;
    wait_for_event(
        &alice,
        &room,
        "carol's leave",
        is_membership(&carol_id, "leave"),
    )
    .await;

    // Alice answers with an invite; bob accepts it and talks.
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob_id }),
        )
        .await;
    wait_for_invite(&bob, &room).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    bob.send_text(&room, "k1", "thanks for letting me in").await;
    wait_for_event(
        &alice,
        &room,
        "bob's message",
        is_message("thanks for letting me in"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_and_profiles_of_another_server() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let alice_id = alice.user_id().await;
    alice
        .put_ok(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            json!({"displayname": "Alice A"}),
        )
        .await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "visibility": "public", "name": "Lobby"}))
        .await;
    let server = enc(&hs1.server_name());

    let listed = bob
        .get_ok(&format!("/_matrix/client/v3/publicRooms?server={server}"))
        .await;
    let entry = listed["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["room_id"] == room)
        .unwrap_or_else(|| panic!("the room is not listed: {listed}"))
        .clone();
    assert_eq!(entry["name"], "Lobby");
    assert_eq!(entry["num_joined_members"], 1);
    let found = bob
        .post_ok(
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            json!({"filter": {"generic_search_term": "lob"}, "limit": 5}),
        )
        .await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1, "{found}");
    let none = bob
        .post_ok(
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            json!({"filter": {"generic_search_term": "zzz"}}),
        )
        .await;
    assert_eq!(none["chunk"].as_array().unwrap().len(), 0, "{none}");

    let profile = bob
        .get_ok(&format!("/_matrix/client/v3/profile/{}", enc(&alice_id)))
        .await;
    assert_eq!(profile["displayname"], "Alice A");
    let field = bob
        .get_ok(&format!(
            "/_matrix/client/v3/profile/{}/displayname",
            enc(&alice_id)
        ))
        .await;
    assert_eq!(field["displayname"], "Alice A");
    let nobody = format!("@nobody:{}", hs1.server_name());
    let (status, body) = bob
        .get(&format!("/_matrix/client/v3/profile/{}", enc(&nobody)))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_one_send_join_and_send_leave_check_and_wrap_their_answers() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let bob_id = format!("@bob:{}", hs2.server_name());
    let services = hs2.services.clone();
    let hs1_name = ruma::OwnedServerName::try_from(hs1.server_name()).unwrap();
    let request = |method: http::Method, path: String, body: Option<Value>| {
        let services = services.clone();
        let hs1_name = hs1_name.clone();
        async move {
            services
                .federation
                .request(
                    services.globals.server_name(),
                    services.globals.signing_key(),
                    &hs1_name,
                    method,
                    &path,
                    body.as_ref(),
                )
                .await
        }
    };
    // A make_join (for room version 12) or make_leave template for bob.
    let make = |kind: &str| {
        let version = if kind == "make_join" { "?ver=12" } else { "" };
        request(
            http::Method::GET,
            format!(
                "/_matrix/federation/v1/{kind}/{}/{}{version}",
                enc(&room),
                enc(&bob_id)
            ),
            None,
        )
    };
    // A signed membership event sent to `endpoint` (`v1/send_join`, `v2/send_leave`, ...).
    let put = |endpoint: &str, event_id: &ruma::OwnedEventId, event: Value| {
        request(
            http::Method::PUT,
            format!(
                "/_matrix/federation/{endpoint}/{}/{}",
                enc(&room),
                enc(event_id.as_str())
            ),
            Some(event),
        )
    };
    // A signed event of hs2's for the room, from hs1's make_join template with `membership`.
    let signed = |template: &Value, membership: &str| {
        let mut event = template["event"].clone();
        event["content"]["membership"] = json!(membership);
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(event).unwrap();
        let version = ruma::RoomVersionId::V12;
        let rules = plait::service::rooms::version::rules_for(&version).unwrap();
        plait::crypto::hash_and_sign_event(
            services.globals.server_name().as_str(),
            services.globals.signing_key(),
            &mut object,
            &rules,
        )
        .unwrap();
        let event_id = plait::crypto::reference_event_id(&object, &rules).unwrap();
        (event_id, serde_json::to_value(object).unwrap())
    };
    let template = make("make_join").await.unwrap();

    // Not a join: refused by v1 exactly as by v2.
    let (leave_id, leave) = signed(&template, "leave");
    let refused = put("v1/send_join", &leave_id, leave).await;
    assert!(format!("{refused:?}").contains("M_BAD_JSON"), "{refused:?}");

    // A join: accepted, answered as [200, {state, auth_chain, ...}].
    let (join_id, join) = signed(&template, "join");
    let answer = put("v1/send_join", &join_id, join).await.unwrap();
    assert_eq!(answer[0], 200, "{answer}");
    assert!(
        !answer[1]["state"].as_array().unwrap().is_empty(),
        "{answer}"
    );

    // And the leave through v1 send_leave, after a make_leave.
    let template = make("make_leave").await.unwrap();
    let (leave_id, leave) = signed(&template, "leave");
    let answer = put("v1/send_leave", &leave_id, leave).await.unwrap();
    assert_eq!(answer, json!([200, {}]));

    // A leave that the current state no longer allows is soft-failed, and send_leave says so:
    // bob joins again, takes a make_leave template, and is banned before he sends the leave.
    let template = make("make_join").await.unwrap();
    let (join_id, join) = signed(&template, "join");
    put("v2/send_join", &join_id, join).await.unwrap();
    let template = make("make_leave").await.unwrap();
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            json!({ "user_id": bob_id }),
        )
        .await;
    let (leave_id, leave) = signed(&template, "leave");
    let refused = put("v2/send_leave", &leave_id, leave).await;
    let refused = format!("{refused:?}");
    assert!(
        refused.contains("Forbidden") && refused.contains("is not accepted into"),
        "{refused}"
    );
    let member = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob_id)
        ))
        .await;
    assert_eq!(member["membership"], "ban", "{member}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_room_invites_users_of_other_servers() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob_id], "is_direct": true }))
        .await;
    let invite = wait_for_invite(&bob, &room).await;
    let own_member = invite["invite_state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == bob_id)
        .cloned()
        .unwrap_or_else(|| panic!("no invite event in {invite}"));
    assert_eq!(own_member["content"]["is_direct"], true, "{own_member}");
    // The room ID names no server; the invite tells hs2 where to join.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;
}
