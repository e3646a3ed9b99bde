//! Room upgrades: `POST /rooms/{roomId}/upgrade` with its refusals, the new room's create event,
//! copied state and power levels, moved aliases and directory listing, and the old room's
//! tombstone and restricted power levels.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

async fn state(client: &Client, room: &str, kind: &str) -> Value {
    client
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/{kind}/",
            enc(room)
        ))
        .await
}

fn upgrade_path(room: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/upgrade", enc(room))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_moves_state_aliases_and_listing_and_tombstones_the_old_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let (alice_id, bob_id) = (alice.user_id().await, bob.user_id().await);
    let hs = server.server_name();
    let old = alice
        .create_room(json!({
            "preset": "public_chat", "room_version": "10", "name": "Old name", "topic": "Old topic",
            "room_alias_name": "upgraded", "visibility": "public",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "world_readable"}}],
            "power_level_content_override": {"users": {alice_id.clone(): 100, bob_id.clone(): 50}}
        }))
        .await;
    bob.post_ok(&format!("/_matrix/client/v3/join/{}", enc(&old)), json!({}))
        .await;

    // Refusals: too little power, not joined, unknown version, no version.
    assert_error(
        &bob.post(&upgrade_path(&old), json!({"new_version": "11"}))
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &carol
            .post(&upgrade_path(&old), json!({"new_version": "11"}))
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice
            .post(&upgrade_path(&old), json!({"new_version": "999"}))
            .await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    assert_error(
        &alice.post(&upgrade_path(&old), json!({})).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice
            .post(
                &upgrade_path(&old),
                json!({"new_version": "11", "additional_creators": [bob_id]}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );

    let answer = alice
        .post_ok(&upgrade_path(&old), json!({"new_version": "11"}))
        .await;
    let new = answer["replacement_room"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    let create = state(&alice, &new, "m.room.create").await;
    assert_eq!(create["room_version"], "11");
    assert_eq!(create["predecessor"]["room_id"], old);
    assert!(
        create["predecessor"]["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('$')),
        "{create}"
    );
    assert_eq!(state(&alice, &new, "m.room.name").await["name"], "Old name");
    assert_eq!(
        state(&alice, &new, "m.room.topic").await["topic"],
        "Old topic"
    );
    assert_eq!(
        state(&alice, &new, "m.room.join_rules").await["join_rule"],
        "public"
    );
    assert_eq!(
        state(&alice, &new, "m.room.history_visibility").await["history_visibility"],
        "world_readable"
    );
    let levels = state(&alice, &new, "m.room.power_levels").await;
    assert_eq!(levels["users"][&alice_id], 100, "{levels}");
    assert_eq!(levels["users"][&bob_id], 50, "{levels}");
    assert_eq!(levels["events_default"], 0);

    // The alias, the canonical alias and the directory listing moved.
    let alias = format!("#upgraded:{hs}");
    let resolved = alice
        .get_ok(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&alias)
        ))
        .await;
    assert_eq!(resolved["room_id"], new);
    assert_eq!(
        state(&alice, &new, "m.room.canonical_alias").await["alias"],
        alias
    );
    assert!(state(&alice, &old, "m.room.canonical_alias")
        .await
        .get("alias")
        .is_none());
    let listing = |room: String| {
        let alice = alice.clone();
        async move {
            alice
                .get_ok(&format!(
                    "/_matrix/client/v3/directory/list/room/{}",
                    enc(&room)
                ))
                .await["visibility"]
                .clone()
        }
    };
    assert_eq!(listing(new.clone()).await, "public");
    assert_eq!(listing(old.clone()).await, "private");

    // The old room: tombstoned, and only moderators may speak or invite.
    let tombstone = state(&alice, &old, "m.room.tombstone").await;
    assert_eq!(tombstone["replacement_room"], new);
    let old_levels = state(&alice, &old, "m.room.power_levels").await;
    assert_eq!(old_levels["events_default"], 50, "{old_levels}");
    assert_eq!(old_levels["invite"], 50, "{old_levels}");
    carol
        .post_ok(&format!("/_matrix/client/v3/join/{}", enc(&old)), json!({}))
        .await;
    assert_error(
        &carol
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                    enc(&old)
                ),
                json!({"msgtype": "m.text", "body": "too late"}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );

    // Members move over themselves.
    bob.post_ok(&format!("/_matrix/client/v3/join/{}", enc(&new)), json!({}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_to_version_12_keeps_creators_out_of_power_levels() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (alice_id, bob_id) = (alice.user_id().await, bob.user_id().await);
    let old = alice
        .create_room(json!({
            "preset": "private_chat", "room_version": "11", "name": "Eleven",
            "power_level_content_override": {"users": {alice_id.clone(): 100, bob_id.clone(): 50}}
        }))
        .await;
    assert_error(
        &alice
            .post(
                &upgrade_path(&old),
                json!({"new_version": "12", "additional_creators": ["not a user"]}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    let new = alice
        .post_ok(
            &upgrade_path(&old),
            json!({"new_version": "12", "additional_creators": [bob_id]}),
        )
        .await["replacement_room"]
        .as_str()
        .unwrap()
        .to_owned();
    let create = state(&alice, &new, "m.room.create").await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["additional_creators"], json!([bob_id]));
    assert_eq!(create["predecessor"]["room_id"], old);
    // The old room's last event is the tombstone, which names this room and so cannot exist
    // before this create event: `event_id` is left out (spec v1.16; Complement's
    // TestMSC4291RoomIDAsHashOfCreateEvent_UpgradedRooms).
    assert!(create["predecessor"].get("event_id").is_none(), "{create}");
    let levels = state(&alice, &new, "m.room.power_levels").await;
    assert!(levels["users"].get(&alice_id).is_none(), "{levels}");
    assert!(levels["users"].get(&bob_id).is_none(), "{levels}");
    assert_eq!(
        state(&alice, &new, "m.room.join_rules").await["join_rule"],
        "invite"
    );
    assert_eq!(
        state(&alice, &old, "m.room.tombstone").await["replacement_room"],
        new
    );

    // In the version 12 room the tombstone is for creators only: a 100 is not enough.
    let carol = server.register("carol").await;
    let carol_id = carol.user_id().await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&new)),
            json!({ "user_id": carol_id }),
        )
        .await;
    carol
        .post_ok(&format!("/_matrix/client/v3/join/{}", enc(&new)), json!({}))
        .await;
    let mut raised = levels.clone();
    raised["users"][&carol_id] = json!(100);
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(&new)
            ),
            raised,
        )
        .await;
    assert_error(
        &carol
            .post(&upgrade_path(&new), json!({"new_version": "12"}))
            .await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn room_push_rules_follow_their_members_into_the_upgraded_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_version": "10"}))
        .await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    for client in [&alice, &bob] {
        client
            .put_ok(
                &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
                json!({"actions": ["dont_notify"]}),
            )
            .await;
    }
    let room_rule = |rules: &Value, room_id: &str| {
        rules["global"]["room"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["rule_id"] == room_id)
            .cloned()
    };

    let new_room = alice
        .post_ok(&upgrade_path(&room), json!({"new_version": "11"}))
        .await["replacement_room"]
        .as_str()
        .unwrap()
        .to_owned();
    // The upgrader's rule is copied at once; bob's when he joins the new room.
    let rules = alice.get_ok("/_matrix/client/v3/pushrules/").await;
    assert_eq!(
        room_rule(&rules, &new_room).unwrap()["actions"],
        json!(["dont_notify"]),
        "{rules}"
    );
    assert!(room_rule(&rules, &room).is_some());
    let rules = bob.get_ok("/_matrix/client/v3/pushrules/").await;
    assert!(room_rule(&rules, &new_room).is_none(), "{rules}");
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&new_room)),
        json!({}),
    )
    .await;
    let rules = bob.get_ok("/_matrix/client/v3/pushrules/").await;
    assert_eq!(
        room_rule(&rules, &new_room).unwrap()["actions"],
        json!(["dont_notify"]),
        "{rules}"
    );

    // A room created by hand as a successor carries its creator's rule over too.
    let manual = alice
        .create_room(json!({"preset": "public_chat", "creation_content": {"predecessor": {"room_id": room}}}))
        .await;
    let rules = alice.get_ok("/_matrix/client/v3/pushrules/").await;
    assert!(room_rule(&rules, &manual).is_some(), "{rules}");
}

/// Two upgrades of one room at once run one after the other (the per-room lock of
/// `rooms::upgrade`): both answer a replacement room, and the canonical alias moves to exactly
/// one of them, the one the alias resolves to, rather than being copied into both by
/// interleaved upgrades. An upgrade of another room meanwhile is not held up by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upgrades_of_one_room_run_one_after_the_other() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let hs = server.server_name();
    let old = alice
        .create_room(json!({"room_version": "10", "room_alias_name": "raced"}))
        .await;
    let other = alice.create_room(json!({"room_version": "10"})).await;
    let upgrade = |room: String| {
        let alice = alice.clone();
        async move {
            alice
                .post_ok(&upgrade_path(&room), json!({"new_version": "11"}))
                .await["replacement_room"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (first, second, third) = tokio::join!(
        upgrade(old.clone()),
        upgrade(old.clone()),
        upgrade(other.clone())
    );
    assert_ne!(first, second);
    assert_ne!(third, other);
    let alias = format!("#raced:{hs}");
    let resolved = alice
        .get_ok(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&alias)
        ))
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(resolved == first || resolved == second, "{resolved}");
    let mut holders = Vec::new();
    for room in [&first, &second] {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias/",
            enc(room)
        );
        let (status, canonical) = alice.get(&path).await;
        if status == 200 && canonical.get("alias").is_some() {
            holders.push(room.clone());
        }
    }
    assert_eq!(holders, vec![resolved], "the canonical alias moved once");
}
