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
    use plait::service::rooms::timeline::{build_and_sign, build_template, rules_for, PduBuilder};
    let services = &server.services;
    let room_id = ruma::OwnedRoomId::try_from(room).unwrap();
    let sender = ruma::OwnedUserId::try_from(sender).unwrap();
    let (short, version) = services.rooms.room_version(&room_id).unwrap();
    let rules = rules_for(&version).unwrap();
    let builder = PduBuilder::state("m.room.member", target, json!({ "membership": membership }));
    let (object, _) =
        build_template(services, &room_id, &sender, &builder, &rules, Some(short)).unwrap();
    let (signed, event_id) = build_and_sign(services, &object, &rules).unwrap();
    let mut value = serde_json::to_value(&signed).unwrap();
    tamper(&mut value);
    (event_id.to_string(), value)
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
