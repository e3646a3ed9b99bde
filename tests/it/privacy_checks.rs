//! Privacy settings (`io.plait.privacy`, docs/privacy.md), beyond tests/it/privacy.rs: presence and avatar withheld from
//! users who are not contacts, or from everyone, for viewers of this server and of another one;
//! ignoring a user hides one's presence from them; bad settings are refused.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, Client, TestServer},
    federation::{join_via, two_servers},
};

const PRIVACY: &str = "io.plait.privacy";

fn presence_path(user: &str) -> String {
    format!("/_matrix/client/v3/presence/{}/status", enc(user))
}

fn profile_path(user: &str) -> String {
    format!("/_matrix/client/v3/profile/{}", enc(user))
}

async fn set_privacy(client: &Client, user: &str, settings: Value) {
    client
        .put_ok(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/{PRIVACY}",
                enc(user)
            ),
            settings,
        )
        .await;
}

/// `owner` opens a direct-message room with `contact` (who joins it through `via`) and lists it
/// in `m.direct`, which makes `contact` a contact.
async fn make_contact(owner: &Client, contact: &Client, via: &TestServer) {
    let owner_id = owner.user_id().await;
    let contact_id = contact.user_id().await;
    let room = owner
        .create_room(json!({
            "preset": "trusted_private_chat",
            "is_direct": true,
            "invite": [contact_id],
        }))
        .await;
    join_via(contact, &room, via).await;
    owner
        .put_ok(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.direct",
                enc(&owner_id)
            ),
            json!({ contact_id: [room] }),
        )
        .await;
}

/// The `m.presence` content of `user` in a sync response.
fn synced_presence<'a>(sync: &'a Value, user: &str) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|event| event["sender"] == user)
        .map(|event| &event["content"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_withhold_presence_and_avatar_from_users_who_are_not_contacts() {
    let hs = TestServer::start().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let carol = hs.register("carol").await;
    let alice_id = alice.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    carol.join(&room).await;
    make_contact(&alice, &bob, &hs).await;
    alice
        .put_ok(
            &format!("{}/avatar_url", profile_path(&alice_id)),
            json!({ "avatar_url": "mxc://example.org/alice" }),
        )
        .await;
    alice
        .put_ok(
            &presence_path(&alice_id),
            json!({ "presence": "online", "status_msg": "hello" }),
        )
        .await;
    // Before any setting, everyone sharing a room sees both.
    let seen = carol.get_ok(&profile_path(&alice_id)).await;
    assert_eq!(seen["avatar_url"], "mxc://example.org/alice", "{seen}");
    assert_eq!(carol.get(&presence_path(&alice_id)).await.0, 200);

    // A value outside the three is refused and nothing is stored.
    let settings_path = format!(
        "/_matrix/client/v3/user/{}/account_data/{PRIVACY}",
        enc(&alice_id)
    );
    assert_error(
        &alice
            .put(&settings_path, json!({ "last_seen": "friends" }))
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice.put(&settings_path, json!(["contacts"])).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(&alice.get(&settings_path).await, 404, "M_NOT_FOUND");

    set_privacy(
        &alice,
        &alice_id,
        json!({ "last_seen": "contacts", "avatar": "contacts" }),
    )
    .await;
    let carol_since = carol.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .put_ok(
            &presence_path(&alice_id),
            json!({ "presence": "online", "status_msg": "contacts only" }),
        )
        .await;

    // Presence: the contact sees it (status and sync), the other member does not.
    let for_bob = bob.get_ok(&presence_path(&alice_id)).await;
    assert_eq!(for_bob["status_msg"], "contacts only", "{for_bob}");
    assert_error(
        &carol.get(&presence_path(&alice_id)).await,
        403,
        "M_FORBIDDEN",
    );
    let bob_sync = bob.get_ok("/_matrix/client/v3/sync").await;
    assert!(
        synced_presence(&bob_sync, &alice_id).is_some(),
        "{bob_sync}"
    );
    let carol_sync = carol.get_ok("/_matrix/client/v3/sync").await;
    assert!(
        synced_presence(&carol_sync, &alice_id).is_none(),
        "{carol_sync}"
    );
    let carol_incremental = carol
        .get_ok(&format!(
            "/_matrix/client/v3/sync?since={carol_since}&timeout=0"
        ))
        .await;
    assert!(
        synced_presence(&carol_incremental, &alice_id).is_none(),
        "{carol_incremental}"
    );

    // Avatar: left out of the profile, the avatar field and the user directory for carol and for
    // a request without a token; the display name stays.
    let for_bob = bob.get_ok(&profile_path(&alice_id)).await;
    assert_eq!(
        for_bob["avatar_url"], "mxc://example.org/alice",
        "{for_bob}"
    );
    let for_carol = carol.get_ok(&profile_path(&alice_id)).await;
    assert!(for_carol.get("avatar_url").is_none(), "{for_carol}");
    assert!(for_carol.get("displayname").is_some(), "{for_carol}");
    assert_error(
        &carol
            .get(&format!("{}/avatar_url", profile_path(&alice_id)))
            .await,
        404,
        "M_NOT_FOUND",
    );
    let anonymous = hs.client().get_ok(&profile_path(&alice_id)).await;
    assert!(anonymous.get("avatar_url").is_none(), "{anonymous}");
    let search = |client: &Client| {
        let client = client.clone();
        async move {
            let found = client
                .post_ok(
                    "/_matrix/client/v3/user_directory/search",
                    json!({ "search_term": "alice" }),
                )
                .await;
            found["results"][0].clone()
        }
    };
    assert_eq!(search(&bob).await["avatar_url"], "mxc://example.org/alice");
    let for_carol = search(&carol).await;
    assert_eq!(for_carol["user_id"], alice_id.as_str());
    assert!(for_carol.get("avatar_url").is_none(), "{for_carol}");

    // `nobody` withholds presence from the contact too.
    set_privacy(&alice, &alice_id, json!({ "last_seen": "nobody" })).await;
    assert_error(
        &bob.get(&presence_path(&alice_id)).await,
        403,
        "M_FORBIDDEN",
    );
    // Back to everyone, but ignoring carol hides alice's presence from her alone.
    set_privacy(&alice, &alice_id, json!({})).await;
    assert_eq!(carol.get(&presence_path(&alice_id)).await.0, 200);
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice_id)
            ),
            json!({ "ignored_users": { carol.user_id().await: {} } }),
        )
        .await;
    assert_error(
        &carol.get(&presence_path(&alice_id)).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(bob.get(&presence_path(&alice_id)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_server_gets_presence_and_avatar_only_when_all_its_users_may_see_them() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let dave = hs2.register("dave").await;
    let alice_id = alice.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&dave, &room, &hs1).await;
    alice
        .put_ok(
            &format!("{}/avatar_url", profile_path(&alice_id)),
            json!({ "avatar_url": "mxc://example.org/alice" }),
        )
        .await;
    set_privacy(
        &alice,
        &alice_id,
        json!({ "last_seen": "contacts", "avatar": "contacts" }),
    )
    .await;
    alice
        .put_ok(
            &presence_path(&alice_id),
            json!({ "presence": "online", "status_msg": "not for hs2" }),
        )
        .await;

    // Dave is no contact: hs2 is sent neither the presence nor the avatar.
    let profile = dave.get_ok(&profile_path(&alice_id)).await;
    assert!(profile.get("avatar_url").is_none(), "{profile}");
    assert!(profile.get("displayname").is_some(), "{profile}");
    for _ in 0..20 {
        let (_, seen) = dave.get(&presence_path(&alice_id)).await;
        assert_ne!(seen["status_msg"], "not for hs2", "{seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once dave is a contact (and hs2's only user sharing a room with alice), both reach hs2.
    make_contact(&alice, &dave, &hs1).await;
    alice
        .put_ok(
            &presence_path(&alice_id),
            json!({ "presence": "online", "status_msg": "for dave" }),
        )
        .await;
    let mut last = Value::Null;
    for _ in 0..100 {
        last = dave.get(&presence_path(&alice_id)).await.1;
        if last["status_msg"] == "for dave" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["status_msg"], "for dave", "{last}");
    let profile = dave.get_ok(&profile_path(&alice_id)).await;
    assert_eq!(
        profile["avatar_url"], "mxc://example.org/alice",
        "{profile}"
    );
}
