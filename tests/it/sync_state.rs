//! `/sync`'s `state` section and room summary: lazy-loaded members on incremental syncs, the
//! summary's member counts and heroes, the timeline of a newly joined room, and state changes
//! the timeline filter leaves out.

use serde_json::{json, Value};

use crate::common::{enc, Client, TestServer};

/// One sync with `filter` (inline), from `since` if given.
async fn sync(client: &Client, since: Option<&str>, filter: &Value) -> Value {
    let mut path = format!(
        "/_matrix/client/v3/sync?timeout=0&filter={}",
        enc(&filter.to_string())
    );
    if let Some(since) = since {
        path.push_str(&format!("&since={}", enc(since)));
    }
    client.get_ok(&path).await
}

fn next_batch(response: &Value) -> String {
    response["next_batch"].as_str().unwrap().to_owned()
}

/// The member events in a joined room's `state` section, as (member, displayname or "").
fn state_members(response: &Value, room: &str) -> Vec<(String, String)> {
    let mut members: Vec<(String, String)> = response["rooms"]["join"][room]["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["type"] == "m.room.member")
        .map(|event| {
            (
                event["state_key"].as_str().unwrap().to_owned(),
                event["content"]["displayname"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    members.sort();
    members
}

fn member_ids(response: &Value, room: &str) -> Vec<String> {
    state_members(response, room)
        .into_iter()
        .map(|(member, _)| member)
        .collect()
}

#[tokio::test]
async fn incremental_lazy_syncs_send_the_members_the_client_was_not_sent() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    // A named room: no heroes, so only senders' members are due.
    let room = bob
        .create_room(json!({"preset": "public_chat", "name": "named"}))
        .await;
    alice.join(&room).await;
    carol.join(&room).await;
    alice.send_text(&room, "a1", "hello").await;
    let lazy = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}});
    let first = sync(&alice, None, &lazy).await;
    assert_eq!(member_ids(&first, &room), ["@alice:localhost"], "{first}");

    // A sender new to the client: their membership comes along though it did not change.
    carol.send_text(&room, "c1", "hi from carol").await;
    let second = sync(&alice, Some(&next_batch(&first)), &lazy).await;
    assert_eq!(member_ids(&second, &room), ["@carol:localhost"], "{second}");

    // The client holds it now: not sent again...
    carol.send_text(&room, "c2", "again").await;
    let third = sync(&alice, Some(&next_batch(&second)), &lazy).await;
    assert_eq!(
        third["rooms"]["join"][&room]["timeline"]["events"][0]["content"]["body"],
        "again"
    );
    assert!(member_ids(&third, &room).is_empty(), "{third}");
    // ...unless the filter asks for redundant members.
    carol.send_text(&room, "c3", "and again").await;
    let redundant = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true, "include_redundant_members": true}}});
    let fourth = sync(&alice, Some(&next_batch(&third)), &redundant).await;
    assert_eq!(member_ids(&fourth, &room), ["@carol:localhost"], "{fourth}");

    // A sender whose membership changed where the timeline filter hides it: the new one comes.
    carol
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/@carol:localhost",
                enc(&room)
            ),
            json!({"membership": "join", "displayname": "Carol Two"}),
        )
        .await;
    carol.send_text(&room, "c4", "renamed").await;
    let messages_only = json!({"room": {"timeline": {"limit": 5, "types": ["m.room.message"]}, "state": {"lazy_load_members": true}}});
    let fifth = sync(&alice, Some(&next_batch(&fourth)), &messages_only).await;
    assert_eq!(
        state_members(&fifth, &room),
        [("@carol:localhost".to_owned(), "Carol Two".to_owned())],
        "{fifth}"
    );

    // A response the client never used does not count as received: a retry from the same
    // token sends the member again.
    bob.send_text(&room, "b1", "bob speaks").await;
    let since = next_batch(&fifth);
    let lost = sync(&alice, Some(&since), &lazy).await;
    assert_eq!(member_ids(&lost, &room), ["@bob:localhost"], "{lost}");
    let retried = sync(&alice, Some(&since), &lazy).await;
    assert_eq!(member_ids(&retried, &room), ["@bob:localhost"], "{retried}");
}

#[tokio::test]
async fn the_summary_names_heroes_and_counts_members_who_changed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let lazy = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}});

    // A DM without a name: bob is the hero, and his member event comes with the state though
    // he sent nothing in the timeline.
    let dm = alice
        .create_room(json!({"preset": "trusted_private_chat", "is_direct": true, "invite": ["@bob:localhost"]}))
        .await;
    bob.join(&dm).await;
    bob.send_text(&dm, "b1", "hi").await;
    alice.send_text(&dm, "a1", "hello").await;
    let initial = sync(&alice, None, &lazy).await;
    let summary = &initial["rooms"]["join"][&dm]["summary"];
    assert_eq!(summary["m.heroes"], json!(["@bob:localhost"]), "{summary}");
    assert_eq!(summary["m.joined_member_count"], 2);
    assert_eq!(summary["m.invited_member_count"], 0);
    assert_eq!(
        member_ids(&initial, &dm),
        ["@alice:localhost", "@bob:localhost"],
        "{initial}"
    );

    // A group without a name: both others are heroes, one joined and one invited.
    let group = alice
        .create_room(
            json!({"preset": "private_chat", "invite": ["@bob:localhost", "@carol:localhost"]}),
        )
        .await;
    bob.join(&group).await;
    let first = sync(&alice, None, &lazy).await;
    let summary = &first["rooms"]["join"][&group]["summary"];
    let mut heroes: Vec<&str> = summary["m.heroes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hero| hero.as_str().unwrap())
        .collect();
    heroes.sort();
    assert_eq!(heroes, ["@bob:localhost", "@carol:localhost"], "{summary}");
    assert_eq!(summary["m.joined_member_count"], 2);
    assert_eq!(summary["m.invited_member_count"], 1);

    // Carol joins: the counts change though the timeline filter leaves her join out.
    carol.join(&group).await;
    carol.send_text(&group, "c1", "here").await;
    let messages_only = json!({"room": {"timeline": {"types": ["m.room.message"]}, "state": {"lazy_load_members": true}}});
    let next = sync(&alice, Some(&next_batch(&first)), &messages_only).await;
    let summary = &next["rooms"]["join"][&group]["summary"];
    assert_eq!(summary["m.joined_member_count"], 3, "{next}");
    assert_eq!(summary["m.invited_member_count"], 0);
    assert_eq!(summary["m.heroes"].as_array().unwrap().len(), 2);
    // A named room has no heroes.
    let named = alice
        .create_room(json!({"preset": "private_chat", "name": "named"}))
        .await;
    let with_name = sync(&alice, None, &lazy).await;
    let summary = &with_name["rooms"]["join"][&named]["summary"];
    assert_eq!(summary["m.joined_member_count"], 1, "{summary}");
    assert!(summary.get("m.heroes").is_none(), "{summary}");
}

#[tokio::test]
async fn a_newly_joined_rooms_timeline_reaches_back_and_is_limited() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let filter = json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}, "state": {"types": []}}});
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    alice.send_text(&room, "a1", "before 1").await;
    alice.send_text(&room, "a2", "before 2").await;
    let since = next_batch(&sync(&bob, None, &filter).await);
    alice.send_text(&room, "a3", "after 1").await;
    alice.send_text(&room, "a4", "after 2").await;
    bob.join(&room).await;
    let response = sync(&bob, Some(&since), &filter).await;
    let timeline = &response["rooms"]["join"][&room]["timeline"];
    let bodies: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["before 1", "before 2", "after 1", "after 2"],
        "{timeline}"
    );
    // Events from before the first one shown (the room's creation) are left to paging back.
    assert_eq!(timeline["limited"], true, "{timeline}");
}

#[tokio::test]
async fn state_changes_the_timeline_filter_leaves_out_come_in_the_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({"name": "One"})).await;
    alice.send_text(&room, "m1", "first").await;
    alice
        .put_ok(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            json!({"name": "Two"}),
        )
        .await;
    alice.send_text(&room, "m2", "second").await;
    let filter = json!({"room": {"timeline": {"limit": 2, "not_types": ["m.room.name"]}}});
    let response = sync(&alice, None, &filter).await;
    let joined = &response["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 2);
    let names: Vec<&Value> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.name")
        .map(|event| &event["content"]["name"])
        .collect();
    assert_eq!(names, [&json!("Two")], "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_initial_sync_goes_by_the_dag_and_puts_a_late_state_change_in_the_state() {
    use plait::service::rooms::timeline::PduBuilder;

    use crate::{
        common::send_pdus,
        federation::{forge_shaped, is_message, join_via, two_servers, wait_for_event},
    };
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    join_via(&bob, &room, &hs1).await;
    alice.send_text(&room, "e1", "E1").await;
    wait_for_event(&bob, &room, "E1", is_message("E1")).await;
    // S2 comes after E1 in the DAG, but reaches hs1 only after E3 and E4.
    let (s2, pdu) = forge_shaped(
        &hs2,
        &room,
        &bob_id,
        PduBuilder::state(
            "m.room.member",
            bob_id.as_str(),
            json!({"membership": "join", "displayname": "Bob S2"}),
        ),
        |_| {},
        |value| {
            value.as_object_mut().unwrap().remove("event_id");
        },
    );
    alice.send_text(&room, "e3", "E3").await;
    let e4 = alice.send_text(&room, "e4", "E4").await;
    send_pdus(&hs2, &hs1, "s2", vec![pdu]).await;
    wait_for_event(&alice, &room, "S2", |event| {
        event["event_id"] == s2.as_str()
    })
    .await;
    // E5 merges the forks; the filter hides it.
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/please_filter_me/e5",
                enc(&room)
            ),
            json!({"body": "E5"}),
        )
        .await;
    let filter = json!({"room": {"timeline": {"limit": 1, "not_types": ["please_filter_me"]}}});
    let response = sync(&alice, None, &filter).await;
    let joined = &response["rooms"]["join"][&room];
    assert_eq!(
        joined["timeline"]["events"][0]["event_id"],
        e4.as_str(),
        "{joined}"
    );
    assert!(
        joined["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["event_id"] == s2.as_str()),
        "{joined}"
    );
}

/// `state_after` (MSC4222): with `use_state_after` (stable or unstable name) each joined room
/// carries, in place of `state`, the state changes from `since` to the end of its timeline,
/// including those the timeline also shows and those a limited timeline left out.
#[tokio::test]
async fn state_after_replaces_state_with_the_changes_up_to_the_timelines_end() {
    let server = TestServer::start().await;
    let versions = server.client().get_ok("/_matrix/client/versions").await;
    assert_eq!(
        versions["unstable_features"]["org.matrix.msc4222"], true,
        "{versions}"
    );
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({"name": "first name"})).await;
    let unstable = "org.matrix.msc4222.state_after";
    let sync_after = |since: Option<String>, param: &'static str, limit: u64| {
        let alice = alice.clone();
        async move {
            let filter = enc(&json!({"room": {"timeline": {"limit": limit}}}).to_string());
            let mut path = format!("/_matrix/client/v3/sync?{param}=true&filter={filter}");
            if let Some(since) = since {
                path.push_str(&format!("&since={}", enc(&since)));
            }
            alice.get_ok(&path).await
        }
    };
    let kinds = |section: &Value| -> Vec<String> {
        let mut kinds: Vec<String> = section["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| {
                format!(
                    "{}|{}",
                    event["type"].as_str().unwrap(),
                    event["state_key"].as_str().unwrap()
                )
            })
            .collect();
        kinds.sort();
        kinds
    };
    // Initial: the whole state at the end of the timeline, no `state` section.
    let initial = sync_after(None, "org.matrix.msc4222.use_state_after", 1).await;
    let entry = &initial["rooms"]["join"][&room];
    assert!(entry.get("state").is_none(), "{entry}");
    let all = kinds(&entry[unstable]);
    assert!(all.contains(&"m.room.create|".to_owned()), "{all:?}");
    assert!(all.contains(&"m.room.name|".to_owned()));
    // A state event in a gapless timeline comes in both the timeline and state_after.
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
            json!({"topic": "new topic"}),
        )
        .await;
    let since = next_batch(&initial);
    let incremental = sync_after(Some(since), "org.matrix.msc4222.use_state_after", 10).await;
    let entry = &incremental["rooms"]["join"][&room];
    assert_eq!(
        entry["timeline"]["events"][0]["type"], "m.room.topic",
        "{entry}"
    );
    assert_eq!(kinds(&entry[unstable]), ["m.room.topic|"]);
    assert_eq!(
        entry[unstable]["events"][0]["content"]["topic"],
        "new topic"
    );
    // A limited timeline leaves the rename out; state_after (stable name) still has it.
    alice
        .put_ok(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            json!({"name": "second name"}),
        )
        .await;
    alice.send_text(&room, "t1", "one").await;
    alice.send_text(&room, "t2", "two").await;
    let since = next_batch(&incremental);
    let limited = sync_after(Some(since.clone()), "use_state_after", 1).await;
    let entry = &limited["rooms"]["join"][&room];
    assert_eq!(entry["timeline"]["limited"], true, "{entry}");
    assert!(entry.get("state").is_none() && entry.get(unstable).is_none());
    assert_eq!(kinds(&entry["state_after"]), ["m.room.name|"]);
    assert_eq!(
        entry["state_after"]["events"][0]["content"]["name"],
        "second name"
    );
    // Without the parameter, `state` as before.
    let plain = sync(
        &alice,
        Some(&since),
        &json!({"room": {"timeline": {"limit": 1}}}),
    )
    .await;
    let entry = &plain["rooms"]["join"][&room];
    assert!(
        entry.get("state").is_some() && entry.get("state_after").is_none(),
        "{entry}"
    );
}
