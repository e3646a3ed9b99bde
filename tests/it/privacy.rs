//! Privacy settings (issue 19, `docs/privacy.md`): `io.plait.privacy` account data is checked,
//! and the server withholds presence, the avatar and stories from viewers the settings leave
//! out; ignoring a user hides the ignorer's presence from them.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

async fn set_account_data(client: &Client, kind: &str, content: Value) -> (u16, Value) {
    let user_id = client.user_id().await;
    client
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/{kind}",
                enc(&user_id)
            ),
            content,
        )
        .await
}

async fn set_privacy(client: &Client, content: Value) {
    let (status, body) = set_account_data(client, "io.plait.privacy", content).await;
    assert_eq!(status, 200, "{body}");
}

/// Alice, bob (her contact: they share a DM room that her `m.direct` lists) and carol (who
/// only shares a public room with her); answers the clients and the public room.
async fn alice_bob_and_carol(server: &TestServer) -> (Client, Client, Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let bob_id = bob.user_id().await;
    let direct = alice
        .create_room(json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bob_id.clone()]}))
        .await;
    bob.join(&direct).await;
    let (status, body) = set_account_data(&alice, "m.direct", json!({ bob_id: [direct] })).await;
    assert_eq!(status, 200, "{body}");
    let public = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&public).await;
    carol.join(&public).await;
    (alice, bob, carol, public)
}

#[tokio::test]
async fn privacy_values_outside_the_three_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for content in [
        json!({"last_seen": "friends"}),
        json!({"avatar": 3}),
        json!({"stories": null}),
        json!({"last_seen": "everyone", "stories": "Everyone"}),
    ] {
        assert_error(
            &set_account_data(&alice, "io.plait.privacy", content).await,
            400,
            "M_BAD_JSON",
        );
    }
    let alice_id = alice.user_id().await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/io.plait.privacy",
        enc(&alice_id)
    );
    assert_error(&alice.get(&path).await, 404, "M_NOT_FOUND");
    set_privacy(
        &alice,
        json!({"last_seen": "contacts", "avatar": "nobody", "stories": "everyone"}),
    )
    .await;
}

#[tokio::test]
async fn the_avatar_follows_the_setting_in_profiles_and_the_directory() {
    let server = TestServer::start().await;
    let (alice, bob, carol, public) = alice_bob_and_carol(&server).await;
    let alice_id = alice.user_id().await;
    let avatar = format!("mxc://{}/face", server.server_name());
    alice
        .put_ok(
            &format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&alice_id)),
            json!({"avatar_url": avatar}),
        )
        .await;
    let profile_path = format!("/_matrix/client/v3/profile/{}", enc(&alice_id));
    let directory = |client: &Client| {
        let client = client.clone();
        async move {
            let found = client
                .post_ok(
                    "/_matrix/client/v3/user_directory/search",
                    json!({"search_term": "alice"}),
                )
                .await;
            found["results"][0].clone()
        }
    };
    assert_eq!(
        carol.get_ok(&profile_path).await["avatar_url"],
        avatar.as_str()
    );

    set_privacy(&alice, json!({"avatar": "contacts"})).await;
    assert_eq!(
        bob.get_ok(&profile_path).await["avatar_url"],
        avatar.as_str()
    );
    assert_eq!(directory(&bob).await["avatar_url"], avatar.as_str());
    assert!(carol
        .get_ok(&profile_path)
        .await
        .get("avatar_url")
        .is_none());
    let seen = directory(&carol).await;
    assert_eq!(seen["user_id"], alice_id.as_str());
    assert!(seen.get("avatar_url").is_none(), "{seen}");
    let field = format!("{profile_path}/avatar_url");
    assert_error(&carol.get(&field).await, 404, "M_NOT_FOUND");
    // Alice still sees her own.
    assert_eq!(
        alice.get_ok(&profile_path).await["avatar_url"],
        avatar.as_str()
    );

    set_privacy(&alice, json!({"avatar": "nobody"})).await;
    assert!(bob.get_ok(&profile_path).await.get("avatar_url").is_none());
    // Member events keep it: the spec needs them whole.
    let member = carol
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&public),
            enc(&alice_id)
        ))
        .await;
    assert_eq!(member["avatar_url"], avatar.as_str());
}

/// The senders of the `m.presence` events of an initial sync.
async fn presence_senders(client: &Client) -> Vec<String> {
    let sync = client.get_ok("/_matrix/client/v3/sync").await;
    sync["presence"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|event| event["sender"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn presence_follows_last_seen_and_ignoring_hides_it() {
    let server = TestServer::start().await;
    let (alice, bob, carol, _) = alice_bob_and_carol(&server).await;
    let alice_id = alice.user_id().await;
    let status_path = format!("/_matrix/client/v3/presence/{}/status", enc(&alice_id));
    alice
        .put_ok(&status_path, json!({"presence": "online"}))
        .await;
    assert!(presence_senders(&carol).await.contains(&alice_id));
    carol.get_ok(&status_path).await;

    set_privacy(&alice, json!({"last_seen": "contacts"})).await;
    assert_error(&carol.get(&status_path).await, 403, "M_FORBIDDEN");
    assert!(!presence_senders(&carol).await.contains(&alice_id));
    let seen = bob.get_ok(&status_path).await;
    assert_eq!(seen["presence"], "online", "{seen}");
    assert!(presence_senders(&bob).await.contains(&alice_id));

    // Alice blocks bob: her presence is hidden from him too.
    let bob_id = bob.user_id().await;
    let (status, body) = set_account_data(
        &alice,
        "m.ignored_user_list",
        json!({"ignored_users": { bob_id: {} }}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_error(&bob.get(&status_path).await, 403, "M_FORBIDDEN");
    assert!(!presence_senders(&bob).await.contains(&alice_id));

    // `nobody` hides it from the contact too; back to `everyone`, carol sees it again (other
    // servers: tests/it/privacy_checks.rs).
    set_privacy(&alice, json!({"last_seen": "nobody"})).await;
    assert_error(&bob.get(&status_path).await, 403, "M_FORBIDDEN");
    set_privacy(&alice, json!({"last_seen": "everyone"})).await;
    carol.get_ok(&status_path).await;
}

#[tokio::test]
async fn stories_follow_the_owner_setting() {
    let server = TestServer::start().await;
    let (alice, bob, carol, _) = alice_bob_and_carol(&server).await;
    let story = alice
        .create_room(
            json!({"preset": "public_chat", "creation_content": {"type": "io.plait.story"}}),
        )
        .await;
    bob.join(&story).await;
    carol.join(&story).await;
    alice.send_text(&story, "s1", "my day").await;
    let count = |client: &Client| {
        let client = client.clone();
        async move {
            client.get_ok("/_plait/client/v1/stories").await["stories"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(count(&carol).await, 1);
    set_privacy(&alice, json!({"stories": "contacts"})).await;
    assert_eq!(count(&carol).await, 0);
    assert_eq!(count(&bob).await, 1);
    assert_eq!(count(&alice).await, 1);
    set_privacy(&alice, json!({"stories": "nobody"})).await;
    assert_eq!(count(&bob).await, 0);
    assert_eq!(count(&alice).await, 1);
}

/// A user's membership in a room as `viewer` sees it in the room's state, if any.
async fn membership(viewer: &Client, room: &str, user: &str) -> Option<String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(room),
        enc(user)
    );
    let (status, body) = viewer.get(&path).await;
    (status == 200).then(|| body["membership"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn story_rooms_refuse_new_members_the_owner_setting_leaves_out() {
    let server = TestServer::start().await;
    let (alice, bob, carol, _) = alice_bob_and_carol(&server).await;
    let dave = server.register("dave").await;
    let (bob_id, carol_id, dave_id) = (
        bob.user_id().await,
        carol.user_id().await,
        dave.user_id().await,
    );
    let story_room =
        json!({"preset": "public_chat", "creation_content": {"type": "io.plait.story"}});
    let story = alice.create_room(story_room.clone()).await;
    dave.join(&story).await;
    set_privacy(&alice, json!({"stories": "contacts"})).await;
    let invite = format!("/_matrix/client/v3/rooms/{}/invite", enc(&story));
    let join = format!("/_matrix/client/v3/rooms/{}/join", enc(&story));

    // Carol is no contact: she may not join, nor be invited, and nothing changes.
    assert_error(&carol.post(&join, json!({})).await, 403, "M_FORBIDDEN");
    assert_error(
        &alice.post(&invite, json!({"user_id": carol_id})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(membership(&alice, &story, &carol_id).await, None);
    // Nor is a new story room made with her among its invitees.
    let mut with_carol = story_room.clone();
    with_carol["invite"] = json!([carol_id]);
    let rooms_before = alice.get_ok("/_matrix/client/v3/joined_rooms").await;
    assert_error(
        &alice
            .post("/_matrix/client/v3/createRoom", with_carol)
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(
        alice.get_ok("/_matrix/client/v3/joined_rooms").await,
        rooms_before
    );
    // Dave, who joined before, stays and may still change his member event.
    dave.put_ok(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&story),
            enc(&dave_id)
        ),
        json!({"membership": "join", "displayname": "Dave"}),
    )
    .await;
    assert_eq!(
        membership(&alice, &story, &dave_id).await.as_deref(),
        Some("join")
    );
    // Bob is a contact; an ordinary room of alice's is not concerned.
    bob.join(&story).await;
    let plain = alice.create_room(json!({"preset": "public_chat"})).await;
    carol.join(&plain).await;

    // Under `nobody`, not even a contact gets in again.
    set_privacy(&alice, json!({"stories": "nobody"})).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&story)),
        json!({}),
    )
    .await;
    assert_error(&bob.post(&join, json!({})).await, 403, "M_FORBIDDEN");
    assert_error(
        &alice.post(&invite, json!({"user_id": bob_id})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(
        membership(&alice, &story, &bob_id).await.as_deref(),
        Some("leave")
    );

    // Back to `everyone`: carol joins.
    set_privacy(&alice, json!({"stories": "everyone"})).await;
    carol.join(&story).await;
    assert_eq!(
        membership(&alice, &story, &carol_id).await.as_deref(),
        Some("join")
    );
}
