//! Invite links (issue 19, `docs/invite_links.md`): making, listing and revoking them, redeeming
//! one into an invite-only room and a space with a restricted child, the no-script page, and
//! every way a link or a request can be refused without changing anything, and a knock from
//! another server answered by an invite when it carries a usable code.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, Client, TestServer},
    federation::{is_membership, join_via, two_servers, wait_for_event},
};

fn links_path(room_id: &str) -> String {
    format!("/_plait/client/v1/rooms/{}/invite_links", enc(room_id))
}

fn join_path(code: &str) -> String {
    format!("/_plait/client/v1/invite_links/{code}/join")
}

/// Makes a link with `body`; it must succeed.
async fn make_link(client: &Client, room_id: &str, body: Value) -> Value {
    client.post_ok(&links_path(room_id), body).await
}

async fn membership(client: &Client, room_id: &str, user_id: &str) -> Option<String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(room_id),
        enc(user_id)
    );
    let (status, body) = client.get(&path).await;
    (status == 200).then(|| body["membership"].as_str().unwrap().to_owned())
}

/// The page of a link: status, content type and body.
async fn page(server: &TestServer, code: &str) -> (u16, String, String) {
    let response = reqwest::get(format!(
        "{}/_plait/client/v1/invite_links/{code}",
        server.base
    ))
    .await
    .unwrap();
    let status = response.status().as_u16();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, kind, response.text().await.unwrap())
}

#[tokio::test]
async fn invite_links_let_users_into_an_invite_only_room_until_used_up() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (bob, carol, dave) = (
        server.register("bob").await,
        server.register("carol").await,
        server.register("dave").await,
    );
    let room_id = alice
        .create_room(json!({"preset": "private_chat", "name": "Book <club>", "topic": "Reading"}))
        .await;
    let link = make_link(
        &alice,
        &room_id,
        json!({"max_uses": 2, "expires_in_ms": 3_600_000}),
    )
    .await;
    let code = link["code"].as_str().unwrap().to_owned();
    assert!(code.len() >= 22, "{code}");
    assert!(link["url"].as_str().unwrap().ends_with(&code));
    assert_eq!(link["uses"], 0);
    assert_eq!(link["max_uses"], 2);

    // Without the link, bob cannot join the invite-only room.
    let join = format!("/_matrix/client/v3/rooms/{}/join", enc(&room_id));
    assert_error(&bob.post(&join, json!({})).await, 403, "M_FORBIDDEN");
    let joined = bob.post_ok(&join_path(&code), json!({})).await;
    assert_eq!(joined["room_id"], room_id.as_str());
    let bob_id = bob.user_id().await;
    assert_eq!(
        membership(&alice, &room_id, &bob_id).await.as_deref(),
        Some("join")
    );
    // The invite came from alice, naming the link.
    let messages = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            enc(&room_id)
        ))
        .await;
    let invite = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| {
            event["content"]["membership"] == "invite" && event["state_key"] == bob_id.as_str()
        })
        .unwrap_or_else(|| panic!("no invite in {messages}"))
        .clone();
    assert_eq!(invite["sender"], alice.user_id().await.as_str());
    assert_eq!(
        invite["content"]["reason"],
        format!("invite link {}", link["id"].as_str().unwrap())
    );
    // Redeeming again while joined spends nothing.
    bob.post_ok(&join_path(&code), json!({})).await;
    carol.post_ok(&join_path(&code), json!({})).await;
    assert_error(
        &dave.post(&join_path(&code), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let dave_id = dave.user_id().await;
    assert_eq!(membership(&alice, &room_id, &dave_id).await, None);

    // The list shows the link without its code, with both uses.
    let listed = alice.get_ok(&links_path(&room_id)).await;
    assert_eq!(
        listed["invite_links"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    assert_eq!(listed["invite_links"][0]["uses"], 2);
    assert!(!listed.to_string().contains(&code));
    // Nor is the code stored anywhere readable.
    let stored = format!("{:?}", server.services.invite_links.get(&code).unwrap());
    assert!(!stored.contains(&code));

    // The page of a fresh link: the room, escaped, with no script.
    let other = make_link(&alice, &room_id, json!({})).await;
    let (status, kind, body) = page(&server, other["code"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(body.contains("Book &lt;club&gt;"), "{body}");
    assert!(
        body.contains("Reading") && body.contains("3 members"),
        "{body}"
    );
    assert!(
        body.contains("matrix.to") && body.contains("Element"),
        "{body}"
    );
    assert!(!body.to_lowercase().contains("<script"), "{body}");
    // The room does not allow knocking, so the page tells users of other servers they need an
    // invite, and does not offer a knock with the code.
    assert!(body.contains("does not allow knocking"), "{body}");
    assert!(!body.contains("reason <code>"), "{body}");
    // The used-up link's page says so.
    let (status, _, body) = page(&server, &code).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("used up"), "{body}");
}

#[tokio::test]
async fn invite_links_refuse_bad_input_and_change_nothing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
    for body in [
        json!({"max_uses": 0}),
        json!({"max_uses": -1}),
        json!({"max_uses": 1.5}),
        json!({"max_uses": "3"}),
        json!({"expires_in_ms": 0}),
        json!({"expires_in_ms": -5}),
        json!({"expires_in_ms": 10_000_000_000_000_000u64}),
    ] {
        assert_error(
            &alice.post(&links_path(&room_id), body).await,
            400,
            "M_INVALID_PARAM",
        );
    }
    // A non-member may not make, list or revoke links.
    assert_error(
        &bob.post(&links_path(&room_id), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&bob.get(&links_path(&room_id)).await, 403, "M_FORBIDDEN");
    assert!(alice.get_ok(&links_path(&room_id)).await["invite_links"]
        .as_array()
        .unwrap()
        .is_empty());

    // Unknown, revoked and expired codes.
    let unknown = "a".repeat(32);
    assert_error(
        &bob.post(&join_path(&unknown), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    let revoked = make_link(&alice, &room_id, json!({})).await;
    let revoked_code = revoked["code"].as_str().unwrap();
    alice
        .delete(
            &format!("{}/{revoked_code}", links_path(&room_id)),
            json!({}),
        )
        .await;
    assert_error(
        &alice
            .delete(
                &format!("{}/{revoked_code}", links_path(&room_id)),
                json!({}),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &bob.post(&join_path(revoked_code), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    let expired = make_link(&alice, &room_id, json!({"expires_in_ms": 1})).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_error(
        &bob.post(&join_path(expired["code"].as_str().unwrap()), json!({}))
            .await,
        403,
        "M_FORBIDDEN",
    );

    // A link whose creator can no longer invite: carol makes one, then leaves.
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
            json!({"user_id": carol.user_id().await}),
        )
        .await;
    carol.join(&room_id).await;
    let orphan = make_link(&carol, &room_id, json!({})).await;
    carol
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            json!({}),
        )
        .await;
    let orphan_code = orphan["code"].as_str().unwrap();
    assert_error(
        &bob.post(&join_path(orphan_code), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let (status, _, _) = page(&server, orphan_code).await;
    assert_eq!(status, 403);

    // A member below the invite level may not make links.
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels",
                enc(&room_id)
            ),
            json!({"invite": 50}),
        )
        .await;
    let link = make_link(&alice, &room_id, json!({})).await;
    bob.post_ok(&join_path(link["code"].as_str().unwrap()), json!({}))
        .await;
    assert_error(
        &bob.post(&links_path(&room_id), json!({})).await,
        403,
        "M_FORBIDDEN",
    );

    // Through all of it, bob got in only by the one good link.
    let bob_id = bob.user_id().await;
    assert_eq!(
        membership(&alice, &room_id, &bob_id).await.as_deref(),
        Some("join")
    );
}

#[tokio::test]
async fn a_space_link_also_joins_its_restricted_children() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let hs = server.server_name();
    let space = alice
        .create_room(json!({"preset": "private_chat", "creation_content": {"type": "m.space"}}))
        .await;
    let join_rules = json!({
        "join_rule": "restricted",
        "allow": [{"type": "m.room_membership", "room_id": space, "via": [hs]}]
    });
    let channel = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": join_rules}]
        }))
        .await;
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    for child in [&channel, &private] {
        alice
            .put_ok(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                    enc(&space),
                    enc(child)
                ),
                json!({"via": [hs]}),
            )
            .await;
    }
    let link = make_link(&alice, &space, json!({})).await;
    bob.post_ok(&join_path(link["code"].as_str().unwrap()), json!({}))
        .await;
    let bob_id = bob.user_id().await;
    assert_eq!(
        membership(&alice, &space, &bob_id).await.as_deref(),
        Some("join")
    );
    assert_eq!(
        membership(&alice, &channel, &bob_id).await.as_deref(),
        Some("join")
    );
    // An invite-only child of the space is not opened by the space's link.
    assert_eq!(membership(&alice, &private, &bob_id).await, None);
}

/// Waits until `client`'s `/sync` lists an invite to `room`; fails after 20 s.
async fn wait_for_invite(client: &Client, room: &str) {
    for _ in 0..100 {
        let sync = client.get_ok("/_matrix/client/v3/sync").await;
        if sync["rooms"]["invite"].get(room).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no invite to {room} reached the knocking user's server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_knock_from_another_server_with_a_link_code_is_answered_with_an_invite() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let carol = hs2.register("carol").await;
    let dave = hs2.register("dave").await;
    let (bob_id, carol_id, dave_id) = (
        bob.user_id().await,
        carol.user_id().await,
        dave.user_id().await,
    );
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "knock"}
            }]
        }))
        .await;
    let link = make_link(&alice, &room, json!({"max_uses": 1})).await;
    let code = link["code"].as_str().unwrap();
    let knock_path = format!(
        "/_matrix/client/v3/knock/{}?via={}",
        enc(&room),
        enc(&hs1.server_name())
    );

    // The link's page tells users of other servers to knock with the code.
    let (status, _, body) = page(&hs1, code).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!(
            "knock on {room} with the reason <code>{code}</code>"
        )),
        "{body}"
    );

    // Bob knocks with the code in his reason: hs1 invites him on behalf of alice at once, the
    // invite reaches hs2, and bob joins.
    bob.post_ok(
        &knock_path,
        json!({"reason": format!("Let me in, code {code}")}),
    )
    .await;
    let invite = wait_for_event(
        &alice,
        &room,
        "bob's invite",
        is_membership(&bob_id, "invite"),
    )
    .await;
    assert_eq!(invite["sender"], alice.user_id().await);
    assert_eq!(
        invite["content"]["reason"],
        format!("invite link {}", link["id"].as_str().unwrap())
    );
    wait_for_invite(&bob, &room).await;
    join_via(&bob, &room, &hs1).await;
    wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;
    let links = alice.get_ok(&links_path(&room)).await;
    assert_eq!(links["invite_links"][0]["uses"], 1, "{links}");

    // Carol knocks with the used-up code and dave with a code of no link: both stay knocks.
    carol
        .post_ok(&knock_path, json!({"reason": format!("code {code}")}))
        .await;
    let unknown = "b".repeat(32);
    dave.post_ok(&knock_path, json!({"reason": unknown})).await;
    for (user, name) in [(&carol_id, "carol's knock"), (&dave_id, "dave's knock")] {
        wait_for_event(&alice, &room, name, is_membership(user, "knock")).await;
    }
    // The answer to a good code comes half a second after the knock; wait well past that.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for user in [&carol_id, &dave_id] {
        assert_eq!(
            membership(&alice, &room, user).await.as_deref(),
            Some("knock"),
            "{user}"
        );
    }
    let links = alice.get_ok(&links_path(&room)).await;
    assert_eq!(links["invite_links"][0]["uses"], 1, "{links}");
}

/// Whether any file under `dir` holds `needle`'s bytes.
fn stored_anywhere(dir: &std::path::Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            return stored_anywhere(&path, needle);
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    })
}

#[tokio::test]
async fn a_link_stops_while_its_creator_cannot_invite_and_its_code_never_reaches_the_disk() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let carol_id = carol.user_id().await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
            json!({"user_id": carol_id}),
        )
        .await;
    carol.join(&room_id).await;
    let power_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels",
        enc(&room_id)
    );
    let mut power = alice.get_ok(&power_path).await;
    power["invite"] = json!(50);
    power["users"][&carol_id] = json!(50);
    alice.put_ok(&power_path, power.clone()).await;
    let link = make_link(&carol, &room_id, json!({})).await;
    let code = link["code"].as_str().unwrap().to_owned();

    // Carol is demoted below the invite level: her link stops, its page says why, and the
    // failed redemption spends no use.
    power["users"][&carol_id] = json!(0);
    alice.put_ok(&power_path, power.clone()).await;
    assert_error(
        &bob.post(&join_path(&code), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let (status, _, body) = page(&server, &code).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("can no longer invite"), "{body}");
    let bob_id = bob.user_id().await;
    assert_eq!(membership(&alice, &room_id, &bob_id).await, None);

    // Promoted again, the same link works, with its first use.
    power["users"][&carol_id] = json!(50);
    alice.put_ok(&power_path, power).await;
    bob.post_ok(&join_path(&code), json!({})).await;
    assert_eq!(
        membership(&alice, &room_id, &bob_id).await.as_deref(),
        Some("join")
    );
    let listed = carol.get_ok(&links_path(&room_id)).await;
    assert_eq!(listed["invite_links"][0]["uses"], 1, "{listed}");

    // The code is stored only as its hash: once the server has stopped, no file of its
    // database holds either half of it, while a message body of the same length (the code
    // reversed) sent meanwhile is there, so the search sees what was written. The write-ahead
    // log splits a record where it crosses one of its 32 KiB blocks, so a string written once
    // may not be contiguous on disk: the control is sent three times, the code looked for by
    // halves.
    let marker: String = code
        .chars()
        .rev()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { 'x' })
        .collect();
    for txn in ["marker1", "marker2", "marker3"] {
        alice.send_text(&room_id, txn, &marker).await;
    }
    let dir = server.stop().await.expect("a temporary database");
    assert!(
        stored_anywhere(dir.path(), &marker),
        "the control was not found"
    );
    let (first, second) = code.split_at(code.len() / 2);
    assert!(
        !stored_anywhere(dir.path(), first) && !stored_anywhere(dir.path(), second),
        "the link's code is on disk"
    );
}
