//! Smaller federation endpoints between two Plait servers: version-1 invites, the generic query,
//! `/.well-known/matrix/server`, and `send_join` with `omit_members`.

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, tls::TestCa, TestServer},
    federation::{two_servers, wait_for_invite},
};

/// Sends a request signed by `from` to `to`'s federation listener and returns the status and body
/// as they are (the federation client of the services would turn errors into `Error` values).
pub async fn signed(
    ca: &TestCa,
    from: &TestServer,
    to: &TestServer,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let destination = ruma::OwnedServerName::try_from(to.server_name()).unwrap();
    let header = plait::federation::x_matrix(
        from.services.globals.server_name(),
        from.services.globals.signing_key(),
        &destination,
        &method,
        path,
        body.as_ref(),
    )
    .unwrap();
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
    let mut request = ca
        .https_client()
        .request(method, format!("https://{}{path}", to.server_name()))
        .header("Authorization", header);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A member event of `server`'s user `sender` for `target` in `room`, built and signed by
/// `server` without committing it there; `tamper` may change it after signing.
fn member_event(
    server: &TestServer,
    room: &str,
    sender: &str,
    target: &str,
    membership: &str,
    tamper: impl FnOnce(&mut Value),
) -> (String, Value) {
    let builder = plait::service::rooms::timeline::PduBuilder::state(
        "m.room.member",
        target,
        json!({ "membership": membership }),
    );
    crate::federation::forge_shaped(server, room, sender, builder, |_| {}, tamper)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_one_invites_are_checked_signed_and_wrapped() {
    let (ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let alice_id = alice.user_id().await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "room_version": "1", "name": "old" }))
        .await;
    let path = |event_id: &str| {
        format!(
            "/_matrix/federation/v1/invite/{}/{}",
            enc(&room),
            enc(event_id)
        )
    };
    let stripped = json!([{
        "type": "m.room.name", "state_key": "", "sender": alice_id, "content": { "name": "old" }
    }]);

    // An invite as hs1 builds it, with the stripped state in `unsigned`.
    let (invite_id, mut invite) = member_event(&hs1, &room, &alice_id, &bob_id, "invite", |_| {});
    invite["unsigned"] = json!({ "invite_room_state": stripped });
    let answer = signed(
        &ca,
        &hs1,
        &hs2,
        http::Method::PUT,
        &path(&invite_id),
        Some(invite),
    )
    .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1[0], 200, "{}", answer.1);
    let event = &answer.1[1]["event"];
    assert_eq!(event["event_id"], invite_id, "v1 events keep their ID");
    assert!(
        event["signatures"][hs2.server_name()].is_object(),
        "hs2 countersigns: {event}"
    );
    assert!(
        event["signatures"][hs1.server_name()].is_object(),
        "{event}"
    );
    let invited = wait_for_invite(&bob, &room).await;
    let events = invited["invite_state"]["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "old"),
        "{invited}"
    );

    // A join dressed as an invite request, an invite for a user of another server, a user who
    // does not exist, a broken signature and a mismatched event ID are all refused.
    let carol_id = format!("@carol:{}", hs1.server_name());
    let (join_id, join) = member_event(&hs1, &room, &alice_id, &alice_id, "join", |_| {});
    let refused = signed(
        &ca,
        &hs1,
        &hs2,
        http::Method::PUT,
        &path(&join_id),
        Some(join),
    )
    .await;
    assert_error(&refused, 400, "M_INVALID_PARAM");
    let (other_id, other) = member_event(&hs1, &room, &alice_id, &carol_id, "invite", |_| {});
    let refused = signed(
        &ca,
        &hs1,
        &hs2,
        http::Method::PUT,
        &path(&other_id),
        Some(other),
    )
    .await;
    assert_error(&refused, 400, "M_INVALID_PARAM");
    let nobody = format!("@nobody:{}", hs2.server_name());
    let (nobody_id, nobody) = member_event(&hs1, &room, &alice_id, &nobody, "invite", |_| {});
    let refused = signed(
        &ca,
        &hs1,
        &hs2,
        http::Method::PUT,
        &path(&nobody_id),
        Some(nobody),
    )
    .await;
    assert_error(&refused, 404, "M_NOT_FOUND");
    let (forged_id, forged) = member_event(&hs1, &room, &alice_id, &bob_id, "invite", |event| {
        let signatures = event["signatures"][hs1.server_name()]
            .as_object_mut()
            .unwrap();
        for signature in signatures.values_mut() {
            *signature = json!("AAAA");
        }
    });
    let refused = signed(
        &ca,
        &hs1,
        &hs2,
        http::Method::PUT,
        &path(&forged_id),
        Some(forged),
    )
    .await;
    assert_error(&refused, 400, "M_INVALID_PARAM");
    let (_, invite) = member_event(&hs1, &room, &alice_id, &bob_id, "invite", |_| {});
    let refused = signed(
        &ca,
        &hs1,
        &hs2,
        http::Method::PUT,
        &path("$other:x"),
        Some(invite),
    )
    .await;
    assert_error(&refused, 400, "M_BAD_JSON");
    // A third server may not pass on an invite that hs1's user sent.
    let hs3 = TestServer::start_federated("127.0.0.4".parse().unwrap(), &ca, None).await;
    let (relayed_id, relayed) = member_event(&hs1, &room, &alice_id, &bob_id, "invite", |_| {});
    let refused = signed(
        &ca,
        &hs3,
        &hs2,
        http::Method::PUT,
        &path(&relayed_id),
        Some(relayed),
    )
    .await;
    assert_error(&refused, 400, "M_INVALID_PARAM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generic_query_dispatches_profile_and_directory_and_refuses_unknown_types() {
    let (ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let alice_id = alice.user_id().await;
    alice
        .put_ok(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            json!({ "displayname": "Alice" }),
        )
        .await;
    let alias = format!("#lobby:{}", hs1.server_name());
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": "lobby" }))
        .await;
    let (ca, hs1, hs2) = (&ca, &hs1, &hs2);
    let ask =
        |path: String| async move { signed(ca, hs2, hs1, http::Method::GET, &path, None).await };

    // `%70rofile` is `profile` once decoded: the router's dedicated route does not match it, so
    // it reaches the generic route, which answers as the dedicated one does.
    for query_type in ["profile", "%70rofile"] {
        let (status, profile) = ask(format!(
            "/_matrix/federation/v1/query/{query_type}?user_id={}",
            enc(&alice_id)
        ))
        .await;
        assert_eq!(status, 200, "{profile}");
        assert_eq!(profile["displayname"], "Alice", "{query_type}");
    }
    for query_type in ["directory", "%64irectory"] {
        let (status, directory) = ask(format!(
            "/_matrix/federation/v1/query/{query_type}?room_alias={}",
            enc(&alias)
        ))
        .await;
        assert_eq!(status, 200, "{directory}");
        assert_eq!(directory["room_id"], room, "{query_type}");
        assert_eq!(directory["servers"], json!([hs1.server_name()]));
    }
    let unknown = ask("/_matrix/federation/v1/query/weather?city=Paris".to_owned()).await;
    assert_error(&unknown, 404, "M_NOT_FOUND");
    let missing = ask(format!(
        "/_matrix/federation/v1/query/%70rofile?user_id={}",
        enc(&format!("@nobody:{}", hs1.server_name()))
    ))
    .await;
    assert_error(&missing, 404, "M_NOT_FOUND");
    let bad = ask("/_matrix/federation/v1/query/%64irectory?room_alias=nonsense".to_owned()).await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
    // Without a signature the generic route is closed like every federation route.
    let response = ca
        .https_client()
        .get(format!(
            "https://{}/_matrix/federation/v1/query/weather",
            hs1.server_name()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn well_known_server_delegates_when_configured() {
    let plain = TestServer::start().await;
    let client = plain.client();
    let unset = client.get("/.well-known/matrix/server").await;
    assert_error(&unset, 404, "M_NOT_FOUND");
    // The client discovery document is served either way.
    let discovery = client.get_ok("/.well-known/matrix/client").await;
    assert!(
        discovery["m.homeserver"]["base_url"].is_string(),
        "{discovery}"
    );

    let dir = tempfile::tempdir().unwrap();
    let delegating = TestServer::start_at(dir.path(), |config| {
        config.well_known_server = Some("matrix.example.com:443".to_owned());
        config.client_base_url = Some("https://matrix.example.com".to_owned());
    })
    .await;
    let client = delegating.client();
    let answer = client.get_ok("/.well-known/matrix/server").await;
    assert_eq!(answer, json!({ "m.server": "matrix.example.com:443" }));
    let discovery = client.get_ok("/.well-known/matrix/client").await;
    assert_eq!(
        discovery["m.homeserver"]["base_url"],
        "https://matrix.example.com"
    );
    // Only GET is served.
    let (status, body) = client.post("/.well-known/matrix/server", json!({})).await;
    assert_eq!((status, &body["errcode"]), (405, &json!("M_UNRECOGNIZED")));

    // A value that is no server name stops the server at startup, naming the key.
    let error =
        plait::Config::from_toml("well_known_server = \"https://matrix.example.com\"").unwrap_err();
    assert!(error.contains("well_known_server"), "{error}");
}

/// `user` (of `from`) joins `room` of `to` by hand: `make_join`, signed by `from`, then
/// `send_join` with `query` appended; returns the status and answer of `send_join`.
async fn send_join_by_hand(
    ca: &TestCa,
    from: &TestServer,
    to: &TestServer,
    room: &str,
    user: &str,
    query: &str,
) -> (u16, Value) {
    let (status, template) = signed(
        ca,
        from,
        to,
        http::Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12",
            enc(room),
            enc(user)
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{template}");
    let mut object: ruma::CanonicalJsonObject =
        serde_json::from_value(template["event"].clone()).unwrap();
    let version =
        ruma::RoomVersionId::try_from(template["room_version"].as_str().unwrap()).unwrap();
    let rules = plait::service::rooms::version::rules_for(&version).unwrap();
    let services = &from.services;
    plait::crypto::hash_and_sign_event(
        services.globals.server_name().as_str(),
        services.globals.signing_key(),
        &mut object,
        &rules,
    )
    .unwrap();
    let event_id = plait::crypto::reference_event_id(&object, &rules).unwrap();
    signed(
        ca,
        from,
        to,
        http::Method::PUT,
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}{query}",
            enc(room),
            enc(event_id.as_str())
        ),
        Some(serde_json::to_value(object).unwrap()),
    )
    .await
}

/// The `(type, state_key)` of each event in a `send_join` answer's `state`.
fn state_keys(answer: &Value) -> Vec<(String, String)> {
    answer["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["state_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Checks that `state` and `auth_chain` hold every auth event that their events name, and, for a
/// reduced answer, that no event is in both.
fn assert_auth_closed(answer: &Value, rules: &ruma::room_version_rules::RoomVersionRules) {
    let ids = |field: &str| -> Vec<String> {
        answer[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| {
                let object: ruma::CanonicalJsonObject =
                    serde_json::from_value(event.clone()).unwrap();
                plait::crypto::reference_event_id(&object, rules)
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let state = ids("state");
    let chain = ids("auth_chain");
    if answer["members_omitted"] == true {
        assert!(
            state.iter().all(|id| !chain.contains(id)),
            "events of state repeated in auth_chain: {answer}"
        );
    }
    let held: std::collections::HashSet<&String> = state.iter().chain(&chain).collect();
    for event in answer["state"]
        .as_array()
        .unwrap()
        .iter()
        .chain(answer["auth_chain"].as_array().unwrap())
    {
        for auth in event["auth_events"].as_array().unwrap() {
            assert!(
                held.contains(&auth.as_str().unwrap().to_owned()),
                "auth event {auth} of {event} is missing"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_join_omits_members_when_asked() {
    let (ca, hs1, hs2) = two_servers().await;
    let hs1_name = hs1.server_name();
    let alice = hs1.register("alice").await;
    let mut locals = Vec::new();
    for name in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        locals.push(hs1.register(name).await);
    }
    let rules = plait::service::rooms::version::rules_for(&ruma::RoomVersionId::V12).unwrap();
    let member = |name: &str| ("m.room.member".to_owned(), format!("@{name}:{hs1_name}"));

    // A named room that bob of hs2 was invited to: only his own member event stays.
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let named = alice
        .create_room(json!({ "preset": "public_chat", "name": "Named" }))
        .await;
    for local in &locals[..2] {
        crate::federation::join_via(local, &named, &hs1).await;
    }
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&named)),
            json!({ "user_id": bob_id }),
        )
        .await;
    wait_for_invite(&bob, &named).await;
    let (status, answer) =
        send_join_by_hand(&ca, &hs2, &hs1, &named, &bob_id, "?omit_members=true").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["members_omitted"], true);
    assert_eq!(answer["servers_in_room"], json!([hs1_name]));
    let keys = state_keys(&answer);
    let members: Vec<_> = keys
        .iter()
        .filter(|(kind, _)| kind == "m.room.member")
        .collect();
    assert_eq!(
        members,
        vec![&("m.room.member".to_owned(), bob_id.clone())],
        "{answer}"
    );
    assert!(keys.contains(&("m.room.name".to_owned(), String::new())));
    assert!(keys.contains(&("m.room.power_levels".to_owned(), String::new())));
    assert_auth_closed(&answer, &rules);

    // An unnamed room: the five heroes (the first joined members, in the order they joined)
    // stay, the sixth joined member and the one who left do not.
    let unnamed = alice.create_room(json!({ "preset": "public_chat" })).await;
    for local in &locals {
        crate::federation::join_via(local, &unnamed, &hs1).await;
    }
    locals[5]
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&unnamed)),
            json!({}),
        )
        .await;
    let carol_id = format!("@carol:{}", hs2.server_name());
    let (status, answer) =
        send_join_by_hand(&ca, &hs2, &hs1, &unnamed, &carol_id, "?omit_members=true").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["members_omitted"], true);
    let mut members: Vec<_> = state_keys(&answer)
        .into_iter()
        .filter(|(kind, _)| kind == "m.room.member")
        .collect();
    members.sort();
    let mut heroes: Vec<_> = ["alice", "u1", "u2", "u3", "u4"]
        .iter()
        .map(|name| member(name))
        .collect();
    heroes.sort();
    assert_eq!(members, heroes, "{answer}");
    assert_auth_closed(&answer, &rules);

    // Without omit_members (or with false) the whole state comes, carol's join included.
    let dave_id = format!("@dave:{}", hs2.server_name());
    let (status, answer) =
        send_join_by_hand(&ca, &hs2, &hs1, &unnamed, &dave_id, "?omit_members=false").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["members_omitted"], false);
    let mut expected = vec![
        member("alice"),
        ("m.room.member".to_owned(), carol_id.clone()),
    ];
    expected.extend(["u1", "u2", "u3", "u4", "u5", "u6"].map(member));
    expected.sort();
    let mut members: Vec<_> = state_keys(&answer)
        .into_iter()
        .filter(|(kind, _)| kind == "m.room.member")
        .collect();
    members.sort();
    assert_eq!(members, expected, "{answer}");
    let mut servers: Vec<String> =
        serde_json::from_value(answer["servers_in_room"].clone()).unwrap();
    servers.sort();
    let mut both = vec![hs1_name.clone(), hs2.server_name()];
    both.sort();
    assert_eq!(servers, both, "carol made hs2 a server of the room");
    assert_auth_closed(&answer, &rules);

    // A value that is not a boolean is refused before anything is joined.
    let (status, body) = signed(
        &ca,
        &hs2,
        &hs1,
        http::Method::PUT,
        &format!(
            "/_matrix/federation/v2/send_join/{}/%24x?omit_members=maybe",
            enc(&unnamed)
        ),
        Some(json!({})),
    )
    .await;
    assert_error(&(status, body), 400, "M_INVALID_PARAM");
}
