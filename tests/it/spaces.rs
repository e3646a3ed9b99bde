//! Spaces and restricted rooms: `/hierarchy` on one server and across two (federation
//! `/hierarchy`), and joins of restricted rooms through membership of an allowed room, locally
//! and across two servers.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};
use crate::federation::{is_membership, two_servers, wait_for_event};

/// Sends a state event that must succeed.
async fn set_state(client: &Client, room: &str, kind: &str, key: &str, content: Value) {
    client
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room),
                enc(key)
            ),
            content,
        )
        .await;
}

/// Links `child` into `space` through `via`, at position `order` among the space's children
/// (links sent in the same millisecond would otherwise sort by room ID).
async fn link(client: &Client, space: &str, child: &str, via: &str, suggested: bool, order: &str) {
    set_state(
        client,
        space,
        "m.space.child",
        child,
        json!({ "via": [via], "suggested": suggested, "order": order }),
    )
    .await;
}

fn hierarchy_path(room: &str, query: &str) -> String {
    format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(room))
}

/// The room IDs of a hierarchy page, in order.
fn room_ids(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("no rooms: {page}"))
        .iter()
        .map(|room| room["room_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Owned copies of room IDs, to compare with [`room_ids`] and [`links_of`].
fn ids(rooms: &[&String]) -> Vec<String> {
    rooms.iter().map(|room| (*room).clone()).collect()
}

/// The state keys of a room's `children_state` in a hierarchy page.
fn links_of(page: &Value, room: &str) -> Vec<String> {
    let entry = page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["room_id"] == room)
        .unwrap_or_else(|| panic!("{room} not in {page}"));
    entry["children_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|link| link["state_key"].as_str().unwrap().to_owned())
        .collect()
}

async fn create(client: &Client, preset: &str, name: &str, space: bool) -> String {
    let mut body = json!({ "preset": preset, "name": name });
    if space {
        body["creation_content"] = json!({ "type": "m.space" });
    }
    client.create_room(body).await
}

/// Root → R1 (suggested), SS1 → SS2 → {R3, R4}, R2 (suggested); the shape of Complement's
/// `TestClientSpacesSummary`, whose paging expects a depth-first walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchy_walks_depth_first_with_paging_depth_and_suggestions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let hs = server.server_name();
    let root = create(&alice, "public_chat", "Root", true).await;
    let r1 = create(&alice, "public_chat", "R1", false).await;
    let ss1 = create(&alice, "public_chat", "SS1", true).await;
    let r2 = create(&alice, "public_chat", "R2", false).await;
    let ss2 = create(&alice, "public_chat", "SS2", true).await;
    let r3 = create(&alice, "public_chat", "R3", false).await;
    let r4 = bob
        .create_room(json!({
            "preset": "public_chat", "name": "R4",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "world_readable"}}]
        }))
        .await;
    let r5 = create(&bob, "public_chat", "R5", false).await;
    link(&alice, &root, &r1, &hs, true, "01").await;
    link(&alice, &root, &ss1, &hs, false, "02").await;
    link(&alice, &root, &r2, &hs, true, "03").await;
    // R2 is no space: its own child link is ignored.
    link(&alice, &r2, &r5, &hs, false, "04").await;
    link(&alice, &ss1, &ss2, &hs, false, "05").await;
    link(&alice, &ss2, &r3, &hs, false, "06").await;
    link(&alice, &ss2, &r4, &hs, false, "07").await;
    // A link without via does not count.
    set_state(&alice, &root, "m.space.child", &r5, json!({ "via": [] })).await;

    let whole = alice.get_ok(&hierarchy_path(&root, "")).await;
    assert_eq!(
        room_ids(&whole),
        ids(&[&root, &r1, &ss1, &ss2, &r3, &r4, &r2]),
        "{whole}"
    );
    assert!(whole.get("next_batch").is_none(), "{whole}");
    assert_eq!(links_of(&whole, &root), ids(&[&r1, &ss1, &r2]));
    assert_eq!(links_of(&whole, &ss2), ids(&[&r3, &r4]));
    assert!(
        links_of(&whole, &r2).is_empty(),
        "a room's links are not shown"
    );
    let root_entry = &whole["rooms"][0];
    assert_eq!(root_entry["room_type"], "m.space");
    assert_eq!(root_entry["name"], "Root");
    assert_eq!(root_entry["join_rule"], "public");
    assert_eq!(root_entry["num_joined_members"], 1);
    assert_eq!(root_entry["guest_can_join"], false);
    assert_eq!(root_entry["world_readable"], false);
    assert!(root_entry["children_state"][0]["origin_server_ts"].is_u64());
    assert_eq!(root_entry["children_state"][0]["type"], "m.space.child");
    let r4_entry = whole["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|room| room["room_id"] == r4.as_str())
        .unwrap();
    assert_eq!(r4_entry["world_readable"], true);

    // max_depth=1: the root's children, with SS1's links but not its rooms.
    let shallow = alice.get_ok(&hierarchy_path(&root, "?max_depth=1")).await;
    assert_eq!(room_ids(&shallow), ids(&[&root, &r1, &ss1, &r2]));
    assert_eq!(links_of(&shallow, &ss1), ids(&[&ss2]));
    let only_root = alice.get_ok(&hierarchy_path(&root, "?max_depth=0")).await;
    assert_eq!(room_ids(&only_root), ids(&[&root]));

    // suggested_only: suggested children and links only.
    let suggested = alice
        .get_ok(&hierarchy_path(&root, "?suggested_only=true"))
        .await;
    assert_eq!(room_ids(&suggested), ids(&[&root, &r1, &r2]));
    assert_eq!(links_of(&suggested, &root), ids(&[&r1, &r2]));

    // Paging: four rooms, then the rest from where the walk stopped.
    let first = alice.get_ok(&hierarchy_path(&root, "?limit=4")).await;
    assert_eq!(room_ids(&first), ids(&[&root, &r1, &ss1, &ss2]));
    let token = first["next_batch"].as_str().unwrap().to_owned();
    let second = alice
        .get_ok(&hierarchy_path(
            &root,
            &format!("?limit=4&from={}", enc(&token)),
        ))
        .await;
    assert_eq!(room_ids(&second), ids(&[&r3, &r4, &r2]));
    assert!(second.get("next_batch").is_none(), "{second}");
    // A token is for the same parameters only, and must be ours.
    assert_error(
        &alice
            .get(&hierarchy_path(
                &root,
                &format!("?suggested_only=true&from={}", enc(&token)),
            ))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice
            .get(&hierarchy_path(
                &root,
                &format!("?max_depth=2&from={}", enc(&token)),
            ))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice
            .get(&hierarchy_path(&r1, &format!("?from={}", enc(&token))))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    for bad in [
        "?from=garbage",
        "?from=%7B%7D",
        "?limit=0",
        "?limit=-1",
        "?max_depth=x",
        "?suggested_only=maybe",
    ] {
        assert_error(
            &alice.get(&hierarchy_path(&root, bad)).await,
            400,
            "M_INVALID_PARAM",
        );
    }

    // Removing a link (empty content) drops that part of the tree.
    set_state(&alice, &root, "m.space.child", &ss1, json!({})).await;
    let pruned = alice.get_ok(&hierarchy_path(&root, "")).await;
    assert_eq!(room_ids(&pruned), ids(&[&root, &r1, &r2]));
    assert_eq!(links_of(&pruned, &root), ids(&[&r1, &r2]));

    // Unknown rooms are 403 like inaccessible ones, and the endpoint needs a token.
    assert_error(
        &alice
            .get(&hierarchy_path(&format!("!nowhere:{hs}"), ""))
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.client().get(&hierarchy_path(&root, "")).await,
        401,
        "M_MISSING_TOKEN",
    );
}

/// Complement's `TestClientSpacesSummaryJoinRules`: invite-only rooms appear to a user only once
/// invited, and an invisible sub-space hides its children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchy_hides_private_rooms_from_non_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob_id = bob.user_id().await;
    let hs = server.server_name();
    let root = create(&alice, "public_chat", "Root", true).await;
    let r1 = create(&alice, "private_chat", "R1", false).await;
    let ss1 = create(&alice, "private_chat", "SS1", true).await;
    let r2 = alice
        .create_room(json!({
            "preset": "public_chat", "name": "R2",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "world_readable"}}]
        }))
        .await;
    let r3 = create(&alice, "private_chat", "R3", false).await;
    link(&alice, &root, &r1, &hs, false, "08").await;
    link(&alice, &root, &ss1, &hs, false, "09").await;
    link(&alice, &ss1, &r2, &hs, false, "10").await;
    link(&alice, &ss1, &r3, &hs, false, "11").await;

    // A private space itself is 403 to a stranger.
    assert_error(
        &bob.get(&hierarchy_path(&ss1, "")).await,
        403,
        "M_FORBIDDEN",
    );

    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&root)),
        json!({}),
    )
    .await;
    let page = bob.get_ok(&hierarchy_path(&root, "")).await;
    assert_eq!(room_ids(&page), ids(&[&root]));
    assert_eq!(links_of(&page, &root), ids(&[&r1, &ss1]));

    let invite = |room: String| {
        let alice = alice.clone();
        let bob_id = bob_id.clone();
        async move {
            alice
                .post_ok(
                    &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                    json!({ "user_id": bob_id }),
                )
                .await;
        }
    };
    invite(r1.clone()).await;
    invite(r3.clone()).await;
    let page = bob.get_ok(&hierarchy_path(&root, "")).await;
    assert_eq!(room_ids(&page), ids(&[&root, &r1]));

    invite(ss1.clone()).await;
    let page = bob.get_ok(&hierarchy_path(&root, "")).await;
    assert_eq!(room_ids(&page), ids(&[&root, &r1, &ss1, &r2, &r3]));
}

/// A version 8 room restricted to members of another room (Complement's
/// `TestRestrictedRoomsLocalJoin` and `TestRestrictedRoomsSpacesSummaryLocal`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_room_joins_need_an_allowed_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (alice_id, bob_id) = (alice.user_id().await, bob.user_id().await);
    let hs = server.server_name();
    let space = create(&alice, "public_chat", "Space", true).await;
    let join_rules = json!({
        "join_rule": "restricted",
        "allow": [{ "type": "m.room_membership", "room_id": space, "via": [hs] }]
    });
    let room = alice
        .create_room(json!({
            "preset": "public_chat", "name": "Room", "room_version": "8",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": join_rules}]
        }))
        .await;
    link(&alice, &space, &room, &hs, false, "12").await;
    let join_path = format!("/_matrix/client/v3/join/{}", enc(&room));

    // Not in the space: no join, and the room is hidden from the hierarchy.
    assert_error(&bob.post(&join_path, json!({})).await, 403, "M_FORBIDDEN");
    assert_eq!(
        room_ids(&bob.get_ok(&hierarchy_path(&space, "")).await),
        ids(&[&space])
    );

    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&space)),
        json!({}),
    )
    .await;
    let page = bob.get_ok(&hierarchy_path(&space, "")).await;
    assert_eq!(room_ids(&page), ids(&[&space, &room]));
    assert_eq!(page["rooms"][1]["allowed_room_ids"], json!([space]));
    assert_eq!(page["rooms"][1]["join_rule"], "restricted");
    bob.post_ok(&join_path, json!({})).await;
    let member = bob
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob_id)
        ))
        .await;
    assert_eq!(member["join_authorised_via_users_server"], alice_id);
    // join → join ignores the authoriser field.
    set_state(
        &bob,
        &room,
        "m.room.member",
        &bob_id,
        json!({"membership": "join", "displayname": "Bobby", "join_authorised_via_users_server": "unused"}),
    )
    .await;

    // After leaving the space, bob cannot come back.
    for left in [&room, &space] {
        bob.post_ok(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(left)),
            json!({}),
        )
        .await;
    }
    assert_error(&bob.post(&join_path, json!({})).await, 403, "M_FORBIDDEN");
    // An invite still lets him in.
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob_id }),
        )
        .await;
    bob.post_ok(&join_path, json!({})).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&space)),
        json!({}),
    )
    .await;

    // Mangled allow lists allow nobody.
    for allow in [json!(["invalid"]), json!("invalid")] {
        set_state(
            &alice,
            &room,
            "m.room.join_rules",
            "",
            json!({ "join_rule": "restricted", "allow": allow }),
        )
        .await;
        assert_error(&bob.post(&join_path, json!({})).await, 403, "M_FORBIDDEN");
    }
}

/// `knock_restricted` (room version 10) lets members of the allowed room join, and anyone knock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knock_restricted_rooms_admit_allowed_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let bob_id = bob.user_id().await;
    let allowed = create(&alice, "public_chat", "Allowed", false).await;
    let room = alice
        .create_room(json!({
            "preset": "private_chat", "room_version": "10",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "knock_restricted",
                "allow": [{ "type": "m.room_membership", "room_id": allowed }]
            }}]
        }))
        .await;
    let join_path = format!("/_matrix/client/v3/join/{}", enc(&room));
    assert_error(&bob.post(&join_path, json!({})).await, 403, "M_FORBIDDEN");
    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&allowed)),
        json!({}),
    )
    .await;
    bob.post_ok(&join_path, json!({})).await;
    let members = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await;
    assert!(members["joined"].get(&bob_id).is_some(), "{members}");
    carol
        .post_ok(
            &format!("/_matrix/client/v3/knock/{}", enc(&room)),
            json!({}),
        )
        .await;
}

/// A space on hs1 whose children live on hs2 (Complement's `TestFederatedClientSpaces` and
/// `TestRestrictedRoomsSpacesSummaryFederation`): hs1 asks hs2's federation `/hierarchy`, and a
/// restricted room on hs2 appears once hs2 can tell that the viewer is in the allowed space.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hierarchy_reaches_rooms_on_another_server() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs1.register("bob").await;
    let charlie = hs2.register("charlie").await;
    let (name1, name2) = (hs1.server_name(), hs2.server_name());
    let world_readable = |space: bool| {
        let mut body = json!({
            "preset": "public_chat",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "world_readable"}}]
        });
        if space {
            body["creation_content"] = json!({ "type": "m.space" });
        }
        body
    };
    let root = alice.create_room(world_readable(true)).await;
    let r1 = alice.create_room(world_readable(false)).await;
    let r4 = alice.create_room(world_readable(false)).await;
    let r2 = charlie.create_room(world_readable(false)).await;
    let ss2 = charlie.create_room(world_readable(true)).await;
    let private = create(&charlie, "private_chat", "Private", false).await;
    let restricted = charlie
        .create_room(json!({
            "preset": "public_chat", "room_version": "8",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": root, "via": [name1] }]
            }}]
        }))
        .await;
    link(&alice, &root, &r1, &name1, false, "13").await;
    link(&alice, &root, &r2, &name2, false, "14").await;
    link(&alice, &root, &ss2, &name2, false, "15").await;
    link(&alice, &root, &restricted, &name2, false, "16").await;
    link(&charlie, &ss2, &r4, &name1, false, "17").await;
    link(&charlie, &ss2, &private, &name2, false, "18").await;

    let page = alice.get_ok(&hierarchy_path(&root, "")).await;
    assert_eq!(
        room_ids(&page),
        ids(&[&root, &r1, &r2, &ss2, &r4]),
        "{page}"
    );
    assert_eq!(links_of(&page, &ss2), ids(&[&r4, &private]));
    let remote = page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|room| room["room_id"] == r2.as_str())
        .unwrap();
    assert_eq!(remote["world_readable"], true);
    assert_eq!(remote["num_joined_members"], 1);

    // hs2's side: a summary with children and the children hs1 may not see; 404 for unknown.
    let fed = hs2
        .services
        .federation_request(
            <&ruma::ServerName>::try_from(name1.as_str()).unwrap(),
            http::Method::GET,
            &format!("/_matrix/federation/v1/hierarchy/{}", enc(&root)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(fed["room"]["room_id"], root);
    let children: Vec<&str> = fed["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| child["room_id"].as_str().unwrap())
        .collect();
    // Only rooms hs1 is in come as children (r1 and the space's own links, not r2 or ss2).
    assert_eq!(children, [r1.as_str()]);
    assert_eq!(fed["room"]["children_state"].as_array().unwrap().len(), 4);
    let ss2_answer = hs1
        .services
        .federation_request(
            <&ruma::ServerName>::try_from(name2.as_str()).unwrap(),
            http::Method::GET,
            &format!("/_matrix/federation/v1/hierarchy/{}", enc(&ss2)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ss2_answer["inaccessible_children"], json!([private]));
    let unknown = hs1
        .services
        .federation_request(
            <&ruma::ServerName>::try_from(name2.as_str()).unwrap(),
            http::Method::GET,
            &format!(
                "/_matrix/federation/v1/hierarchy/{}",
                enc(&format!("!nowhere:{name2}"))
            ),
            None,
        )
        .await
        .unwrap_err();
    assert!(format!("{unknown:?}").contains("NotFound"), "{unknown:?}");

    // The restricted room: hs2 is not in the space yet, so nobody on hs1 sees it; once charlie
    // joins the space, alice (a member) does and bob (not one) still does not.
    charlie
        .post_ok(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&root), enc(&name1)),
            json!({}),
        )
        .await;
    let charlie_id = charlie.user_id().await;
    wait_for_event(
        &alice,
        &root,
        "charlie's join",
        is_membership(&charlie_id, "join"),
    )
    .await;
    let page = alice.get_ok(&hierarchy_path(&root, "")).await;
    assert!(room_ids(&page).contains(&restricted), "{page}");
    let page = bob.get_ok(&hierarchy_path(&root, "")).await;
    assert!(!room_ids(&page).contains(&restricted), "{page}");
}

/// The member event of `user` in `room` as `client` sees it.
async fn member_event(client: &Client, room: &str, user: &str) -> Value {
    client
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(user)
        ))
        .await
}

/// A restricted room on hs1 joined by a user of hs2 (Complement's
/// `TestRestrictedRoomsRemoteJoin`): hs1's `make_join` names its user as the authoriser and
/// countersigns at `send_join`; without the allowed room the join is refused, a room whose
/// allowed room hs1 is not in cannot be authorised by hs1 at all, and a room whose allow list
/// names no room refuses everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restricted_join_across_two_servers() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let (alice_id, bob_id) = (alice.user_id().await, bob.user_id().await);
    let name1 = hs1.server_name();
    let allowed = create(&alice, "public_chat", "Allowed", false).await;
    let restricted_to = |room: &str| {
        json!({
            "preset": "public_chat", "room_version": "8",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": room }]
            }}]
        })
    };
    let room = alice.create_room(restricted_to(&allowed)).await;
    let join = |room: String| {
        let bob = bob.clone();
        let via = name1.clone();
        async move {
            bob.post(
                &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(&via)),
                json!({}),
            )
            .await
        }
    };

    assert_error(&join(room.clone()).await, 403, "M_FORBIDDEN");
    assert_eq!(join(allowed.clone()).await.0, 200);
    let joined = join(room.clone()).await;
    assert_eq!(joined.0, 200, "{}", joined.1);
    let member = member_event(&alice, &room, &bob_id).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["join_authorised_via_users_server"], alice_id);
    // Bob's server has the countersigned event too.
    assert_eq!(
        member_event(&bob, &room, &bob_id).await["join_authorised_via_users_server"],
        alice_id
    );

    // Having left the allowed room, bob is refused again.
    for left in [&room, &allowed] {
        bob.post_ok(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(left)),
            json!({}),
        )
        .await;
        wait_for_event(&alice, left, "bob's leave", is_membership(&bob_id, "leave")).await;
    }
    assert_error(&join(room.clone()).await, 403, "M_FORBIDDEN");

    // A room restricted to a room of hs2 that hs1 is not in: hs1 cannot tell, and says so.
    let elsewhere = create(&bob, "public_chat", "Elsewhere", false).await;
    let unverifiable = alice.create_room(restricted_to(&elsewhere)).await;
    assert_error(&join(unverifiable).await, 400, "M_UNABLE_TO_AUTHORISE_JOIN");

    // A knock_restricted room whose join rules name no room (Complement's
    // `TestKnockingInMSC3787Room`): nobody qualifies by membership, which hs1 can tell, so the
    // remote join is forbidden rather than unverifiable.
    let knock_only = alice
        .create_room(json!({
            "preset": "public_chat", "room_version": "10",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "knock_restricted"}}]
        }))
        .await;
    assert_error(&join(knock_only).await, 403, "M_FORBIDDEN");
}

/// A restricted room on hs2 whose invite level no hs1 user reaches (Complement's
/// `TestRestrictedRoomsRemoteJoinLocalUser`): hs1 answers `make_join` with
/// `M_UNABLE_TO_GRANT_JOIN`, and a local user of hs1 who qualifies joins through hs2 even though
/// hs1 is in the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restricted_join_without_a_local_authoriser_goes_through_another_server() {
    let (_ca, hs1, hs2) = two_servers().await;
    let charlie = hs2.register("charlie").await;
    let dave = hs2.register("dave").await;
    let alice = hs1.register("alice").await;
    let bob = hs1.register("bob").await;
    let (charlie_id, alice_id, bob_id) = (
        charlie.user_id().await,
        alice.user_id().await,
        bob.user_id().await,
    );
    let dave_id = dave.user_id().await;
    let name2 = hs2.server_name();
    let allowed = create(&charlie, "public_chat", "Space", false).await;
    let room = charlie
        .create_room(json!({
            "preset": "public_chat", "room_version": "8",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": allowed, "via": [name2] }]
            }}]
        }))
        .await;
    charlie
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": alice_id }),
        )
        .await;
    crate::federation::wait_for_invite(&alice, &room).await;
    let via2 = |room: &str| format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(&name2));
    alice.post_ok(&via2(&room), json!({})).await;
    // Public chat: inviting needs 50, which alice lacks.
    assert_error(
        &alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                json!({ "user_id": bob_id }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    bob.post_ok(&via2(&allowed), json!({})).await;

    // hs1 knows dave is in the allowed room (bob is in it) but has nobody who may invite.
    dave.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&allowed)),
        json!({}),
    )
    .await;
    wait_for_event(
        &bob,
        &allowed,
        "dave's join",
        is_membership(&dave_id, "join"),
    )
    .await;
    let refused = hs2
        .services
        .federation_request(
            <&ruma::ServerName>::try_from(hs1.server_name().as_str()).unwrap(),
            http::Method::GET,
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=8",
                enc(&room),
                enc(&dave_id)
            ),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("UnableToGrantJoin"),
        "{refused:?}"
    );

    // Bob joins through hs1, which hands the join to hs2 for charlie to authorise.
    bob.post_ok(
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        json!({}),
    )
    .await;
    let member = wait_for_event(
        &charlie,
        &room,
        "bob's join",
        is_membership(&bob_id, "join"),
    )
    .await;
    assert_eq!(
        member["content"]["join_authorised_via_users_server"],
        charlie_id
    );
    assert_eq!(
        member_event(&bob, &room, &bob_id).await["membership"],
        "join"
    );
}

fn summary_path(room: &str) -> String {
    format!("/_matrix/client/v1/room_summary/{}", enc(room))
}

/// `room_summary` (v1.15, MSC3266): public rooms to anyone, token or not; private rooms only to
/// members and invitees, with their membership; everyone else gets 404 as for a missing room.
#[tokio::test]
async fn room_summaries_show_what_each_viewer_may_see() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let public = alice
        .create_room(
            json!({ "preset": "public_chat", "name": "Lobby", "topic": "hello",
                             "room_alias_name": "lobby" }),
        )
        .await;
    let private = create(&alice, "private_chat", "Secret", false).await;

    let anonymous = server
        .client()
        .get_ok(&summary_path("#lobby:localhost"))
        .await;
    assert_eq!(anonymous["room_id"], public);
    assert_eq!(anonymous["name"], "Lobby");
    assert_eq!(anonymous["topic"], "hello");
    assert_eq!(anonymous["join_rule"], "public");
    assert_eq!(anonymous["num_joined_members"], 1);
    assert!(anonymous["room_version"].as_str().is_some());
    assert!(anonymous.get("membership").is_none(), "{anonymous}");
    assert!(anonymous.get("children_state").is_none());
    let member = alice.get_ok(&summary_path(&public)).await;
    assert_eq!(member["membership"], "join");
    let unstable = bob
        .get_ok(&format!(
            "/_matrix/client/unstable/im.nheko.summary/rooms/{}/summary",
            enc(&public)
        ))
        .await;
    assert_eq!(unstable["name"], "Lobby");
    assert!(unstable.get("membership").is_none());

    for client in [&bob, &server.client()] {
        assert_error(
            &client.get(&summary_path(&private)).await,
            404,
            "M_NOT_FOUND",
        );
    }
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&private)),
            json!({ "user_id": "@bob:localhost" }),
        )
        .await;
    let invited = bob.get_ok(&summary_path(&private)).await;
    assert_eq!(invited["name"], "Secret");
    assert_eq!(invited["membership"], "invite");
    assert_eq!(invited["join_rule"], "invite");

    assert_error(
        &bob.get(&summary_path("!nowhere:localhost")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &bob.get(&summary_path("#nothing:localhost")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(bob.get(&summary_path("not-a-room")).await.0, 400);
}

/// A room this server is not in is summarised from the `/hierarchy` of its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_summary_of_a_room_on_another_server() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let charlie = hs2.register("charlie").await;
    let remote = charlie
        .create_room(json!({ "preset": "public_chat", "name": "Far away" }))
        .await;
    let private = create(&charlie, "private_chat", "Far and closed", false).await;
    let via = format!("{}?via={}", summary_path(&remote), enc(&hs2.server_name()));
    let summary = alice.get_ok(&via).await;
    assert_eq!(summary["room_id"], remote);
    assert_eq!(summary["name"], "Far away");
    assert_eq!(summary["num_joined_members"], 1);
    assert!(summary.get("membership").is_none());
    // The room ID names its server, so `via` is not needed; a private room stays hidden.
    let private_path = summary_path(&private);
    assert_error(&alice.get(&private_path).await, 404, "M_NOT_FOUND");
}
