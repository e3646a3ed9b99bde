//! Accounts over HTTP: discovery, registration, login, tokens, devices, profiles, and bad input.

use serde_json::json;

use crate::common::{assert_error, enc, TestServer};

#[tokio::test]
async fn discovery_endpoints_answer() {
    let server = TestServer::start().await;
    let client = server.client();
    let versions = client.get_ok("/_matrix/client/versions").await;
    assert!(versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "v1.12"));
    let well_known = client.get_ok("/.well-known/matrix/client").await;
    assert!(well_known["m.homeserver"]["base_url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    let alice = server.register("alice").await;
    let capabilities = alice.get_ok("/_matrix/client/v3/capabilities").await;
    assert_eq!(
        capabilities["capabilities"]["m.room_versions"]["default"],
        "12"
    );
    assert_eq!(
        capabilities["capabilities"]["m.room_versions"]["available"]["1"],
        "stable"
    );
}

#[tokio::test]
async fn register_login_refresh_logout() {
    let server = TestServer::start().await;
    let client = server.client();
    assert_eq!(
        client
            .get_ok("/_matrix/client/v3/register/available?username=alice")
            .await["available"],
        true
    );
    let alice = server.register("alice").await;
    assert_eq!(alice.user_id().await, "@alice:localhost");
    assert_error(
        &client
            .get("/_matrix/client/v3/register/available?username=alice")
            .await,
        400,
        "M_USER_IN_USE",
    );
    assert_error(
        &client
            .post(
                "/_matrix/client/v3/register",
                json!({"username": "alice", "password": "x"}),
            )
            .await,
        400,
        "M_USER_IN_USE",
    );
    assert_error(
        &client
            .post(
                "/_matrix/client/v3/register",
                json!({"username": "Bad Name!", "password": "x"}),
            )
            .await,
        400,
        "M_INVALID_USERNAME",
    );

    assert_eq!(
        client.get_ok("/_matrix/client/v3/login").await["flows"][0]["type"],
        "m.login.password"
    );
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password", "refresh_token": true});
    let session = client.post_ok("/_matrix/client/v3/login", login).await;
    assert_eq!(session["user_id"], "@alice:localhost");
    assert!(session["expires_in_ms"].as_u64().unwrap() > 0);
    let wrong = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "nope"});
    assert_error(
        &client.post("/_matrix/client/v3/login", wrong).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &client
            .post("/_matrix/client/v3/login", json!({"type": "m.login.magic"}))
            .await,
        400,
        "M_UNKNOWN",
    );

    let refreshed = client
        .post_ok(
            "/_matrix/client/v3/refresh",
            json!({"refresh_token": session["refresh_token"]}),
        )
        .await;
    assert_ne!(refreshed["access_token"], session["access_token"]);
    let mut old = client.clone();
    old.token = Some(session["access_token"].as_str().unwrap().to_owned());
    assert_error(
        &old.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    // The client may have lost the answer: the old refresh token works again until the new
    // tokens are used, and the retry's tokens replace the unused ones.
    let retried = client
        .post_ok(
            "/_matrix/client/v3/refresh",
            json!({"refresh_token": session["refresh_token"]}),
        )
        .await;
    let mut unused = client.clone();
    unused.token = Some(refreshed["access_token"].as_str().unwrap().to_owned());
    assert_error(
        &unused.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    let mut fresh = client.clone();
    fresh.token = Some(retried["access_token"].as_str().unwrap().to_owned());
    fresh.get_ok("/_matrix/client/v3/account/whoami").await;
    for spent in [&session["refresh_token"], &refreshed["refresh_token"]] {
        assert_error(
            &client
                .post(
                    "/_matrix/client/v3/refresh",
                    json!({ "refresh_token": spent }),
                )
                .await,
            401,
            "M_UNKNOWN_TOKEN",
        );
    }
    fresh.post_ok("/_matrix/client/v3/logout", json!({})).await;
    assert_error(
        &fresh.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_UNKNOWN_TOKEN",
    );

    alice
        .post_ok("/_matrix/client/v3/logout/all", json!({}))
        .await;
    assert_error(
        &alice.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_UNKNOWN_TOKEN",
    );
}

/// What keeps `/register` and `/login` on untyped routes (see their `Untyped:` lines): answers
/// that ruma's request and response types would change.
#[tokio::test]
async fn register_and_login_answer_as_synapse_does() {
    let server = TestServer::start().await;
    let client = server.client();
    // An `auth` with neither `type` nor `session` starts the flow instead of failing.
    let (status, uia) = client
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "carol", "auth": {}}),
        )
        .await;
    assert_eq!(status, 401, "{uia}");
    assert_eq!(uia["flows"][0]["stages"][0], "m.login.dummy");
    // Without a login there is no `device_id` at all, not a null one.
    let registered = client
        .post_ok(
            "/_matrix/client/v3/register",
            json!({"username": "carol", "password": "password", "inhibit_login": true, "auth": {"type": "m.login.dummy", "session": uia["session"]}}),
        )
        .await;
    assert_eq!(registered, json!({"user_id": "@carol:localhost"}));
    // A login without `type` is bad JSON; one without `password` a wrong password.
    assert_error(
        &client.post("/_matrix/client/v3/login", json!({})).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &client
            .post(
                "/_matrix/client/v3/login",
                json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"}}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn devices_password_and_deactivation_use_uia() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let devices = alice.get_ok("/_matrix/client/v3/devices").await;
    let device_id = devices["devices"][0]["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .put_ok(
            &format!("/_matrix/client/v3/devices/{device_id}"),
            json!({"display_name": "phone"}),
        )
        .await;
    assert_eq!(
        alice
            .get_ok(&format!("/_matrix/client/v3/devices/{device_id}"))
            .await["display_name"],
        "phone"
    );
    assert_error(
        &alice.get("/_matrix/client/v3/devices/NOPE").await,
        404,
        "M_NOT_FOUND",
    );

    let second = server
        .client()
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "user": "alice", "password": "password"}),
        )
        .await;
    let second_device = second["device_id"].as_str().unwrap().to_owned();
    let (status, uia) = alice
        .delete(
            &format!("/_matrix/client/v3/devices/{second_device}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(uia["flows"][0]["stages"][0], "m.login.password");
    // Another account's valid password does not authorise alice's request.
    server.register("mallory").await;
    let (status, body) = alice
        .delete(
            &format!("/_matrix/client/v3/devices/{second_device}"),
            json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "mallory"}, "password": "password", "session": uia["session"]}}),
        )
        .await;
    assert_error(&(status, body), 403, "M_FORBIDDEN");
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password", "session": uia["session"]}});
    let (status, _) = alice
        .delete(&format!("/_matrix/client/v3/devices/{second_device}"), auth)
        .await;
    assert_eq!(status, 200);
    let (status, _) = alice.post("/_matrix/client/v3/delete_devices", json!({"devices": ["X"], "auth": {"type": "m.login.password", "user": "alice", "password": "password"}})).await;
    assert_eq!(status, 200);

    let bad = alice.post("/_matrix/client/v3/account/password", json!({"new_password": "new", "auth": {"type": "m.login.password", "user": "alice", "password": "wrong"}})).await;
    assert_eq!(bad.0, 401);
    assert_eq!(bad.1["errcode"], "M_FORBIDDEN");
    alice.post_ok("/_matrix/client/v3/account/password", json!({"new_password": "new", "logout_devices": false, "auth": {"type": "m.login.password", "user": "alice", "password": "password"}})).await;
    server
        .client()
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "user": "alice", "password": "new"}),
        )
        .await;

    alice
        .post_ok(
            "/_matrix/client/v3/account/deactivate",
            json!({"auth": {"type": "m.login.password", "user": "alice", "password": "new"}}),
        )
        .await;
    assert_error(
        &server
            .client()
            .post(
                "/_matrix/client/v3/login",
                json!({"type": "m.login.password", "user": "alice", "password": "new"}),
            )
            .await,
        403,
        "M_USER_DEACTIVATED",
    );
    assert_error(
        &server
            .client()
            .post("/_matrix/client/v3/register", json!({"username": "alice"}))
            .await,
        400,
        "M_USER_IN_USE",
    );
}

#[tokio::test]
async fn profiles_propagate_to_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice
        .put_ok(
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            json!({"displayname": "Alice"}),
        )
        .await;
    assert_eq!(
        server
            .client()
            .get_ok("/_matrix/client/v3/profile/@alice:localhost/displayname")
            .await["displayname"],
        "Alice"
    );
    assert_eq!(
        server
            .client()
            .get_ok("/_matrix/client/v3/profile/@alice:localhost")
            .await["displayname"],
        "Alice"
    );
    let member = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/@alice:localhost",
            enc(&room)
        ))
        .await;
    assert_eq!(member["displayname"], "Alice");
    let (status, _) = alice
        .delete(
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(
        &server
            .client()
            .get("/_matrix/client/v3/profile/@alice:localhost/displayname")
            .await,
        404,
        "M_NOT_FOUND",
    );
    let bob = server.register("bob").await;
    assert_error(
        &bob.put(
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            json!({"displayname": "x"}),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn bad_requests_get_matrix_errors() {
    let server = TestServer::start().await;
    let client = server.client();
    assert_error(
        &client.get("/_matrix/client/v3/no/such/endpoint").await,
        404,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &client
            .send_raw(reqwest::Method::DELETE, "/_matrix/client/v3/login", "")
            .await,
        405,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &client.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_MISSING_TOKEN",
    );
    let mut bogus = client.clone();
    bogus.token = Some("nonsense".into());
    let response = bogus.get("/_matrix/client/v3/account/whoami").await;
    assert_error(&response, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(response.1["soft_logout"], false);
    assert_error(
        &client
            .send_raw(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                "{not json",
            )
            .await,
        400,
        "M_NOT_JSON",
    );
    assert_error(
        &client
            .send_raw(reqwest::Method::POST, "/_matrix/client/v3/login", "[1]")
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &client
            .post("/_matrix/client/v3/login", json!({"type": 5}))
            .await,
        400,
        "M_BAD_JSON",
    );
    let huge = "x".repeat(21 * 1024 * 1024);
    assert_error(
        &client
            .send_raw(reqwest::Method::POST, "/_matrix/client/v3/login", &huge)
            .await,
        413,
        "M_TOO_LARGE",
    );
    let alice = server.register("alice").await;
    assert_error(
        &alice.get("/_matrix/client/v3/rooms/not-a-room/state").await,
        400,
        "M_INVALID_PARAM",
    );
    let options = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/_matrix/client/v3/login", server.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 200);
    assert_eq!(options.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn user_directory_finds_users_sharing_a_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    server.register("hermit").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    bob.put_ok(
        "/_matrix/client/v3/profile/@bob:localhost/displayname",
        json!({"displayname": "Bobby Tables"}),
    )
    .await;
    let found = alice
        .post_ok(
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": "tables"}),
        )
        .await;
    assert_eq!(found["results"][0]["user_id"], "@bob:localhost");
    assert_eq!(found["results"][0]["display_name"], "Bobby Tables");
    let hidden = alice
        .post_ok(
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": "hermit"}),
        )
        .await;
    assert_eq!(
        hidden["results"].as_array().unwrap().len(),
        0,
        "users sharing no room stay hidden"
    );
    let limited = alice
        .post_ok(
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": "", "limit": 1}),
        )
        .await;
    assert_eq!(limited["limited"], true);
    assert_error(
        &alice
            .post("/_matrix/client/v3/user_directory/search", json!({}))
            .await,
        400,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn openid_tokens_identify_their_user_and_nothing_more() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let user_id = alice.get_ok("/_matrix/client/v3/account/whoami").await["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = alice
        .post_ok(
            &format!(
                "/_matrix/client/v3/user/{}/openid/request_token",
                enc(&user_id)
            ),
            json!({}),
        )
        .await;
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 3600);
    let server_name = user_id.split_once(':').unwrap().1;
    assert_eq!(answer["matrix_server_name"], server_name);
    let token = answer["access_token"].as_str().unwrap();

    // Anyone holding the token learns whose it is, without any other credentials.
    let anonymous = server.client();
    let info = anonymous
        .get(&format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={token}"
        ))
        .await;
    assert_eq!(info.0, 200, "{}", info.1);
    assert_eq!(info.1["sub"], user_id.as_str());
    assert_error(
        &anonymous
            .get("/_matrix/federation/v1/openid/userinfo?access_token=nope")
            .await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(
        &anonymous
            .get("/_matrix/federation/v1/openid/userinfo")
            .await,
        400,
        "M_MISSING_PARAM",
    );

    // It is not an access token, and nobody gets one for someone else.
    let mut impostor = server.client();
    impostor.token = Some(token.to_owned());
    assert_error(
        &impostor.get("/_matrix/client/v3/account/whoami").await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    let bob_id = format!("@bob:{server_name}");
    assert_error(
        &alice
            .post(
                &format!(
                    "/_matrix/client/v3/user/{}/openid/request_token",
                    enc(&bob_id)
                ),
                json!({}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn a_login_costs_one_hash_check_whether_the_account_exists_or_not() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let client = server.client();
    let login = |user: &str, password: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
    let checks = || server.services.users.passwords.checks();
    for user in ["alice", "nobody", "@alice:elsewhere.example"] {
        let before = checks();
        assert_error(
            &client
                .post("/_matrix/client/v3/login", login(user, "wrong"))
                .await,
            403,
            "M_FORBIDDEN",
        );
        assert_eq!(checks(), before + 1, "{user}");
    }
    alice
        .post_ok(
            "/_matrix/client/v3/account/deactivate",
            json!({"auth": {"type": "m.login.password", "user": "alice", "password": "password"}}),
        )
        .await;
    // Deactivation shows only to whoever knows the password.
    assert_error(
        &client
            .post("/_matrix/client/v3/login", login("alice", "wrong"))
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &client
            .post("/_matrix/client/v3/login", login("alice", "password"))
            .await,
        403,
        "M_USER_DEACTIVATED",
    );
}
