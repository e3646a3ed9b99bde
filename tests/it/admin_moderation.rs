//! Moderating accounts: locks and suspensions (spec v1.18, from the admin room and the
//! client-server API), forced joins and leaves, redacting everything a user sent, rate-limit
//! overrides (`users ratelimit`, Synapse's `override_ratelimit`) and Synapse's login-as; bad
//! arguments and non-admins change nothing.

use serde_json::{json, Value};

use crate::admin_room::{admin_in_room, at, bob_with_a_message, command_text, user};
use crate::common::{assert_error, enc, Client, TestServer};
use crate::synapse_admin::{admin_and_alice, refused_to_non_admins};

#[tokio::test]
async fn users_lock_answers_every_request_but_logout_with_m_user_locked() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let (bob, _, _) = bob_with_a_message(&server).await;
    let text = command_text(&admin, &server, &room_id, "!admin users lock bob").await;
    assert!(text.ends_with("is now locked"), "{text}");
    for path in [
        "/_matrix/client/v3/account/whoami",
        "/_matrix/client/v3/sync",
    ] {
        let (status, body) = bob.get(path).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (401, Some("M_USER_LOCKED"))
        );
        assert_eq!(body["soft_logout"], true, "{body}");
    }
    let text = command_text(&admin, &server, &room_id, "!admin users lock bob").await;
    assert!(text.contains("is already locked"), "{text}");
    let text = command_text(&admin, &server, &room_id, "!admin users info bob").await;
    assert!(text.contains("locked\tyes"), "{text}");
    // Unlocked, the same session works again.
    let text = command_text(&admin, &server, &room_id, "!admin users unlock bob").await;
    assert!(text.ends_with("is now not locked"), "{text}");
    bob.get_ok("/_matrix/client/v3/account/whoami").await;
    // A lock survives a restart; logging out still works while locked.
    command_text(&admin, &server, &room_id, "!admin users lock bob").await;
    let dir = server.stop().await.unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let bob = at(&server, &bob);
    let (status, _) = bob.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 401);
    bob.post_ok("/_matrix/client/v3/logout", json!({})).await;
    let (status, body) = bob.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN"))
    );
    drop(dir);
}

#[tokio::test]
async fn users_suspend_refuses_writes_but_not_reads_leaves_or_own_redactions() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let (bob, bob_room, event_id) = bob_with_a_message(&server).await;
    let public = admin.create_room(json!({"preset": "public_chat"})).await;
    let text = command_text(&admin, &server, &room_id, "!admin users suspend bob").await;
    assert!(text.ends_with("is now suspended"), "{text}");
    let room = enc(&bob_room);
    let bob_id = enc(&format!("@bob:{}", server.server_name()));
    for (method, path, body) in [
        (
            "PUT",
            format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s1"),
            json!({"msgtype": "m.text", "body": "x"}),
        ),
        (
            "PUT",
            format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            json!({"topic": "x"}),
        ),
        (
            "PUT",
            format!("/_matrix/client/v3/profile/{bob_id}/displayname"),
            json!({"displayname": "x"}),
        ),
        (
            "POST",
            format!("/_matrix/client/v3/join/{}", enc(&public)),
            json!({}),
        ),
        (
            "POST",
            format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": format!("@alice:{}", server.server_name())}),
        ),
        (
            "POST",
            "/_matrix/client/v3/createRoom".to_owned(),
            json!({}),
        ),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let answer = bob.send_raw(method, &path, &body.to_string()).await;
        assert_error(&answer, 403, "M_USER_SUSPENDED");
    }
    // Reads, redacting his own event and leaving still work.
    bob.get_ok(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"))
        .await;
    bob.get_ok("/_matrix/client/v3/sync").await;
    bob.put_ok(
        &format!(
            "/_matrix/client/v3/rooms/{room}/redact/{}/r1",
            enc(&event_id)
        ),
        json!({}),
    )
    .await;
    bob.post_ok(&format!("/_matrix/client/v3/rooms/{room}/leave"), json!({}))
        .await;
    let text = command_text(&admin, &server, &room_id, "!admin users unsuspend bob").await;
    assert!(text.ends_with("is now not suspended"), "{text}");
    bob.join(&public).await;
    let text = command_text(&admin, &server, &room_id, "!admin users unsuspend bob").await;
    assert!(text.contains("is already not suspended"), "{text}");
    let text = command_text(&admin, &server, &room_id, "!admin users suspend nobody").await;
    assert!(text.contains("does not exist"), "{text}");
}

/// The content of an event as `client` reads it.
async fn event_content(client: &Client, room_id: &str, event_id: &str) -> Value {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(room_id),
        enc(event_id)
    );
    client.get_ok(&path).await["content"].clone()
}

#[tokio::test]
async fn users_force_join_force_leave_and_redact_all_events_of() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let bob = server.register("bob").await;
    // An invite-only room: the force-join needs alice's invite, which she may give.
    let private = admin
        .create_room(json!({"preset": "private_chat", "room_alias_name": "private"}))
        .await;
    let alias = format!("#private:{}", server.server_name());
    let text = command_text(
        &admin,
        &server,
        &room_id,
        &format!("!admin users force-join bob {alias}"),
    )
    .await;
    assert_eq!(
        text,
        format!("@bob:{} joined {private}", server.server_name())
    );
    let first = bob.send_text(&private, "m1", "spam one").await;
    let second = bob.send_text(&private, "m2", "spam two").await;
    let text = command_text(
        &admin,
        &server,
        &room_id,
        &format!("!admin users force-leave bob {private}"),
    )
    .await;
    assert!(text.contains(" left "), "{text}");
    let member = server
        .services
        .rooms
        .members
        .get_membership(
            &ruma::RoomId::parse(&private).unwrap(),
            &user(&server, "bob"),
        )
        .unwrap();
    assert_eq!(
        member,
        Some(ruma::events::room::member::MembershipState::Leave)
    );
    // Bob left, so alice (who may redact) redacts his messages; his join and leave stay.
    let text = command_text(
        &admin,
        &server,
        &room_id,
        "!admin users redact-all-events-of bob --reason spam",
    )
    .await;
    assert_eq!(
        text,
        format!(
            "redacted 2 events of @bob:{} in 1 rooms",
            server.server_name()
        )
    );
    for event_id in [&first, &second] {
        assert_eq!(event_content(&admin, &private, event_id).await, json!({}));
    }
    let text = command_text(
        &admin,
        &server,
        &room_id,
        "!admin users redact-all-events-of bob",
    )
    .await;
    assert!(text.starts_with("redacted 0 events"), "{text}");
    // Bad arguments change nothing. (Names of this server: another server's would be asked.)
    let host = server.server_name();
    let unknown_alias = format!("!admin users force-join bob #nowhere:{host}");
    let unknown_room = format!("!admin users force-join bob !unknown:{host}");
    for (line, expected) in [
        (unknown_alias.as_str(), "alias #nowhere:"),
        (unknown_room.as_str(), "this server is not in room"),
        (
            "!admin users force-join bob !a:b.example --via not/a/name",
            "invalid server name",
        ),
        ("!admin users force-leave bob not-a-room", "invalid room ID"),
        ("!admin users force-leave nobody #private", "does not exist"),
    ] {
        let text = command_text(&admin, &server, &room_id, line).await;
        assert!(text.contains(expected), "{line}: {text}");
    }
}

#[tokio::test]
async fn users_ratelimit_overrides_the_message_limit_durably() {
    let dir = tempfile::tempdir().unwrap();
    // Only the message limit is tight.
    let limited = |config: &mut plait::Config| {
        let rate = |per_second, burst| plait::config::Rate { per_second, burst };
        let generous = rate(1000.0, 1000);
        config.rate_limits = plait::config::RateLimitSettings {
            enabled: true,
            message: rate(0.001, 2),
            login_address: generous,
            login_failed_attempts: generous,
            registration: generous,
            joins: generous,
            invites_per_issuer: generous,
            invites_per_target: generous,
            media_create: generous,
            key_claims: generous,
            federation: generous,
        };
    };
    let server = TestServer::start_at(dir.path(), limited).await;
    let (admin, room_id) = admin_in_room(&server).await;
    let (bob, room, _) = bob_with_a_message(&server).await;
    assert!(runs_out(&bob, &room, "a").await);
    let text = command_text(&admin, &server, &room_id, "!admin users ratelimit bob off").await;
    assert!(text.ends_with("now has no rate limits"), "{text}");
    assert!(!runs_out(&bob, &room, "b").await);
    let text = command_text(&admin, &server, &room_id, "!admin users ratelimit bob -2").await;
    assert!(text.contains("unexpected argument '-2'"), "{text}");
    for bad in ["fast", "0", "inf"] {
        let line = format!("!admin users ratelimit bob {bad}");
        let text = command_text(&admin, &server, &room_id, &line).await;
        assert!(text.contains(&format!("invalid setting {bad}")), "{text}");
    }
    // Kept across a restart.
    server.stop().await;
    let server = TestServer::start_at(dir.path(), limited).await;
    let (admin, bob) = (at(&server, &admin), at(&server, &bob));
    assert!(!runs_out(&bob, &room, "c").await);
    let text = command_text(&admin, &server, &room_id, "!admin users ratelimit bob").await;
    assert!(text.ends_with("has no rate limits"), "{text}");
    command_text(
        &admin,
        &server,
        &room_id,
        "!admin users ratelimit bob default",
    )
    .await;
    assert!(runs_out(&bob, &room, "d").await);
    // A factor of 100 gives a fresh account a burst of 200.
    let carol = server.register("carol").await;
    let carol_room = carol.create_room(json!({})).await;
    command_text(
        &admin,
        &server,
        &room_id,
        "!admin users ratelimit carol 100",
    )
    .await;
    assert!(!runs_out(&carol, &carol_room, "e").await);
}

/// Whether ten messages run into `429 M_LIMIT_EXCEEDED`.
async fn runs_out(client: &Client, room: &str, txn_prefix: &str) -> bool {
    for index in 0..10 {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn_prefix}{index}",
            enc(room)
        );
        let answer = client
            .put(&path, json!({"msgtype": "m.text", "body": "x"}))
            .await;
        if answer.0 == 429 {
            assert_error(&answer, 429, "M_LIMIT_EXCEEDED");
            return true;
        }
        assert_eq!(answer.0, 200, "{}", answer.1);
    }
    false
}

#[tokio::test]
async fn admins_log_in_as_a_user() {
    let (server, admin, alice) = admin_and_alice().await;
    let alice_id = format!("@alice:{}", server.server_name());
    let path = |user: &str| format!("/_synapse/admin/v1/users/{}/login", enc(user));
    let answer = admin.post_ok(&path(&alice_id), json!({})).await;
    let as_alice = crate::admin_api::logged_in(&server, &answer);
    let whoami = as_alice.get_ok("/_matrix/client/v3/account/whoami").await;
    assert_eq!(whoami["user_id"], alice_id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let answer = admin
        .post_ok(&path(&alice_id), json!({"valid_until_ms": now + 60_000}))
        .await;
    crate::admin_api::logged_in(&server, &answer)
        .get_ok("/_matrix/client/v3/account/whoami")
        .await;
    let root_id = format!("@root:{}", server.server_name());
    for (user, body, status, errcode) in [
        (root_id.as_str(), json!({}), 400, "M_INVALID_PARAM"),
        (
            alice_id.as_str(),
            json!({"valid_until_ms": now - 1}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "@nobody:elsewhere.example",
            json!({}),
            400,
            "M_INVALID_PARAM",
        ),
    ] {
        assert_error(&admin.post(&path(user), body).await, status, errcode);
    }
    let nobody = format!("@nobody:{}", server.server_name());
    assert_error(
        &admin.post(&path(&nobody), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    refused_to_non_admins(&server, &alice, &[("POST", path(&alice_id))]).await;
}

#[tokio::test]
async fn admins_override_a_users_rate_limit() {
    let (server, admin, alice) = admin_and_alice().await;
    let alice_id = format!("@alice:{}", server.server_name());
    let path = format!(
        "/_synapse/admin/v1/users/{}/override_ratelimit",
        enc(&alice_id)
    );
    assert_eq!(admin.get_ok(&path).await, json!({}));
    let off = json!({"messages_per_second": 0, "burst_count": 0});
    assert_eq!(admin.post_ok(&path, off.clone()).await, off);
    assert_eq!(admin.get_ok(&path).await, off);
    let set = json!({"messages_per_second": 5, "burst_count": 40});
    assert_eq!(admin.post_ok(&path, set.clone()).await, set);
    assert_eq!(admin.get_ok(&path).await, set);
    for bad in [
        json!({"messages_per_second": -1}),
        json!({"burst_count": "many"}),
        json!({"messages_per_second": 1.5}),
    ] {
        assert_error(&admin.post(&path, bad).await, 400, "M_INVALID_PARAM");
    }
    assert_eq!(admin.get_ok(&path).await, set);
    let (status, answer) = admin.delete(&path, json!({})).await;
    assert_eq!((status, answer), (200, json!({})));
    assert_eq!(admin.get_ok(&path).await, json!({}));
    let unknown = format!(
        "/_synapse/admin/v1/users/{}/override_ratelimit",
        enc(&format!("@nobody:{}", server.server_name()))
    );
    assert_error(&admin.get(&unknown).await, 404, "M_NOT_FOUND");
    refused_to_non_admins(
        &server,
        &alice,
        &[
            ("GET", path.clone()),
            ("POST", path.clone()),
            ("DELETE", path.clone()),
        ],
    )
    .await;
}

#[tokio::test]
async fn admins_lock_and_suspend_accounts_through_the_client_server_api() {
    let (server, admin, alice) = admin_and_alice().await;
    let host = server.server_name();
    let path = |what: &str, user: &str| {
        format!(
            "/_matrix/client/v1/admin/{what}/{}",
            enc(&format!("@{user}:{host}"))
        )
    };
    let caps = admin.get_ok("/_matrix/client/v3/capabilities").await;
    assert_eq!(
        caps["capabilities"]["m.account_moderation"],
        json!({"lock": true, "suspend": true})
    );
    let caps = alice.get_ok("/_matrix/client/v3/capabilities").await;
    assert_eq!(
        caps["capabilities"]["m.account_moderation"],
        json!({"lock": false, "suspend": false})
    );
    assert_eq!(
        admin.get_ok(&path("lock", "alice")).await,
        json!({"locked": false})
    );
    assert_eq!(
        admin
            .put_ok(&path("suspend", "alice"), json!({"suspended": true}))
            .await,
        json!({"suspended": true})
    );
    assert_eq!(
        admin.get_ok(&path("suspend", "alice")).await,
        json!({"suspended": true})
    );
    let room = admin.create_room(json!({"preset": "public_chat"})).await;
    let joined = alice
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            json!({}),
        )
        .await;
    assert_error(&joined, 403, "M_USER_SUSPENDED");
    let details = admin
        .get_ok(&format!(
            "/_synapse/admin/v2/users/{}",
            enc(&format!("@alice:{host}"))
        ))
        .await;
    assert_eq!(details["suspended"], true);
    admin
        .put_ok(&path("suspend", "alice"), json!({"suspended": false}))
        .await;
    alice.join(&room).await;
    admin
        .put_ok(&path("lock", "alice"), json!({"locked": true}))
        .await;
    let (status, body) = alice.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(
        (status, &body["errcode"], &body["soft_logout"]),
        (401, &json!("M_USER_LOCKED"), &json!(true))
    );
    admin
        .put_ok(&path("lock", "alice"), json!({"locked": false}))
        .await;
    alice.get_ok("/_matrix/client/v3/account/whoami").await;
    // Admins, other servers' users, unknown users, bad bodies and non-admins.
    for (method, url, body, status, errcode) in [
        (
            "PUT",
            path("lock", "root"),
            json!({"locked": true}),
            403,
            "M_FORBIDDEN",
        ),
        ("GET", path("lock", "nobody"), json!({}), 404, "M_NOT_FOUND"),
        (
            "GET",
            format!(
                "/_matrix/client/v1/admin/lock/{}",
                enc("@alice:elsewhere.example")
            ),
            json!({}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "PUT",
            path("suspend", "alice"),
            json!({"suspended": "yes"}),
            400,
            "M_BAD_JSON",
        ),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = if method == reqwest::Method::GET {
            String::new()
        } else {
            body.to_string()
        };
        let answer = admin.send_raw(method, &url, &body).await;
        assert_error(&answer, status, errcode);
    }
    assert!(!server
        .services
        .admin
        .flags
        .is_locked(&ruma::UserId::parse(format!("@root:{host}")).unwrap()));
    let put = |what: &str, field: &str| (what.to_owned(), json!({ field: true }));
    for (what, body) in [put("lock", "locked"), put("suspend", "suspended")] {
        let answer = alice.put(&path(&what, "alice"), body).await;
        assert_error(&answer, 403, "M_FORBIDDEN");
    }
    assert!(!server
        .services
        .admin
        .flags
        .is_suspended(&ruma::UserId::parse(format!("@alice:{host}")).unwrap()));
}
