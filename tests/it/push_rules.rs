//! Push rules: the server defaults (API, initial sync, account data), creating, ordering,
//! enabling, changing and deleting rules, and bad input with the right errors.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, TestServer};

pub const RULES: &str = "/_matrix/client/v3/pushrules/global";

pub fn rule_path(kind: &str, rule_id: &str) -> String {
    format!("{RULES}/{kind}/{}", enc(rule_id))
}

pub fn rule_ids(rules: &Value, kind: &str) -> Vec<String> {
    rules["global"][kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn default_push_rules_are_served_and_come_down_in_an_initial_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let all = alice.get_ok("/_matrix/client/v3/pushrules/").await;
    let overrides = rule_ids(&all, "override");
    assert_eq!(overrides[0], ".m.rule.master");
    for id in [
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
        ".m.rule.tombstone",
        ".m.rule.reaction",
        ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
    ] {
        assert!(overrides.contains(&id.to_owned()), "{id} in {overrides:?}");
    }
    assert_eq!(
        rule_ids(&all, "underride"),
        [
            ".m.rule.call",
            ".m.rule.encrypted_room_one_to_one",
            ".m.rule.room_one_to_one",
            ".m.rule.message",
            ".m.rule.encrypted"
        ]
    );
    assert_eq!(all["global"]["room"], json!([]));
    assert_eq!(all["global"]["sender"], json!([]));
    assert_eq!(all["global"]["override"][0]["enabled"], false);
    assert_eq!(all["global"]["override"][0]["default"], true);
    let global = alice.get_ok("/_matrix/client/v3/pushrules/global/").await;
    assert_eq!(global, all["global"]);

    let sync = alice.get_ok("/_matrix/client/v3/sync").await;
    let events = sync["account_data"]["events"].as_array().unwrap();
    let rules = events
        .iter()
        .find(|event| event["type"] == "m.push_rules")
        .expect("m.push_rules in the initial sync");
    assert_eq!(rules["content"], all);
    let user = alice.user_id().await;
    let stored = alice
        .get_ok(&format!(
            "/_matrix/client/v3/user/{}/account_data/m.push_rules",
            enc(&user)
        ))
        .await;
    assert_eq!(stored, all);
    let refused = alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.push_rules",
                enc(&user)
            ),
            json!({ "global": {} }),
        )
        .await;
    assert_error(&refused, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn push_rules_are_created_ordered_enabled_changed_and_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let since = alice.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let rule = |body: &str| {
        json!({
            "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": body }],
            "actions": ["notify"],
        })
    };
    alice
        .put_ok(&rule_path("override", "one"), rule("one"))
        .await;
    let one = alice.get_ok(&rule_path("override", "one")).await;
    assert_eq!(one["rule_id"], "one");
    assert_eq!(one["enabled"], true);
    assert_eq!(one["default"], false);
    assert_eq!(one["conditions"][0]["pattern"], "one");

    // A new rule is the most important user rule; `after` and `before` place it.
    alice
        .put_ok(&rule_path("override", "two"), rule("two"))
        .await;
    alice
        .put_ok(
            &format!("{}?after=two", rule_path("override", "three")),
            rule("three"),
        )
        .await;
    alice
        .put_ok(
            &format!("{}?before=two", rule_path("override", "four")),
            rule("four"),
        )
        .await;
    let all = alice.get_ok("/_matrix/client/v3/pushrules/").await;
    assert_eq!(
        rule_ids(&all, "override")[..6],
        [
            ".m.rule.master",
            "four",
            "two",
            "three",
            "one",
            ".m.rule.suppress_notices"
        ]
    );

    // Enabled and actions, on user rules and server-default ones.
    alice
        .put_ok(
            &format!("{}/enabled", rule_path("override", "one")),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(
        alice
            .get_ok(&format!("{}/enabled", rule_path("override", "one")))
            .await,
        json!({ "enabled": false })
    );
    // Replacing a rule keeps whether it is enabled.
    alice
        .put_ok(&rule_path("override", "one"), rule("uno"))
        .await;
    let one = alice.get_ok(&rule_path("override", "one")).await;
    assert_eq!(
        (
            one["enabled"].clone(),
            one["conditions"][0]["pattern"].clone()
        ),
        (json!(false), json!("uno"))
    );
    let actions = json!(["notify", { "set_tweak": "sound", "value": "bing" }, { "set_tweak": "highlight", "value": false }]);
    alice
        .put_ok(
            &format!("{}/actions", rule_path("underride", ".m.rule.message")),
            json!({ "actions": actions }),
        )
        .await;
    assert_eq!(
        alice
            .get_ok(&format!(
                "{}/actions",
                rule_path("underride", ".m.rule.message")
            ))
            .await,
        json!({ "actions": actions })
    );
    alice
        .put_ok(
            &format!("{}/enabled", rule_path("override", ".m.rule.master")),
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(
        alice
            .get_ok(&format!(
                "{}/enabled",
                rule_path("override", ".m.rule.master")
            ))
            .await["enabled"],
        true
    );

    // Room, sender and content rules.
    alice
        .put_ok(
            &rule_path("room", "!foo:example.com"),
            json!({ "actions": [] }),
        )
        .await;
    alice
        .put_ok(
            &rule_path("sender", "@carol:example.com"),
            json!({ "actions": ["dont_notify"] }),
        )
        .await;
    alice
        .put_ok(
            &rule_path("content", "cake"),
            json!({ "pattern": "cake*lie", "actions": ["notify"] }),
        )
        .await;
    for _ in 0..2 {
        let all = alice.get_ok("/_matrix/client/v3/pushrules/").await;
        assert_eq!(all["global"]["sender"][0]["actions"][0], "dont_notify");
        assert_eq!(all["global"]["room"][0]["rule_id"], "!foo:example.com");
        assert_eq!(all["global"]["content"][0]["pattern"], "cake*lie");
    }

    // Deleting.
    alice.delete(&rule_path("override", "one"), json!({})).await;
    assert_error(
        &alice.get(&rule_path("override", "one")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice.delete(&rule_path("override", "one"), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice
            .delete(&rule_path("override", ".m.rule.master"), json!({}))
            .await,
        400,
        "M_INVALID_PARAM",
    );

    // Bob's rules are his own.
    let bobs = bob.get_ok("/_matrix/client/v3/pushrules/").await;
    assert!(!rule_ids(&bobs, "override").contains(&"two".to_owned()));
    assert_eq!(bobs["global"]["override"][0]["enabled"], false);

    // The change reaches alice's next sync as account data.
    let changed = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}&timeout=0"))
        .await;
    let rules = changed["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.push_rules")
        .expect("changed rules in the incremental sync")
        .clone();
    assert_eq!(rules["content"]["global"]["override"][1]["rule_id"], "four");
}

#[tokio::test]
async fn bad_push_rules_are_refused_with_the_right_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let notify = json!({ "actions": ["notify"] });
    alice
        .put_ok(&rule_path("override", "mine"), notify.clone())
        .await;
    let check = |response: (u16, Value), status: u16, errcode: &str| {
        assert_error(&response, status, errcode);
    };
    check(
        alice
            .put(&rule_path("override", ".mine"), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(&rule_path("override", "back\\slash"), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(&rule_path("override", &"x".repeat(300)), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(
                &format!("{}?before=.m.rule.master", rule_path("override", "x")),
                notify.clone(),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(
                &format!("{}?after=missing", rule_path("override", "x")),
                notify.clone(),
            )
            .await,
        400,
        "M_UNKNOWN",
    );
    check(
        alice
            .put(&rule_path("room", "not-a-room"), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(&rule_path("sender", "not-a-user"), notify.clone())
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice.put(&rule_path("content", "c"), notify.clone()).await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice.put(&rule_path("override", "x"), json!({})).await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(&rule_path("override", "x"), json!({ "actions": "notify" }))
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(&rule_path("override", "x"), json!({ "actions": ["bogus"] }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice
            .put(&rule_path("override", "x"), json!({ "actions": [7] }))
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(
                &rule_path("override", "x"),
                json!({ "actions": [], "conditions": "nope" }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(
                &rule_path("override", "x"),
                json!({ "actions": [], "conditions": [{ "kind": "event_match" }] }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice.put(&rule_path("bogus", "x"), notify.clone()).await,
        400,
        "M_INVALID_PARAM",
    );
    check(
        alice.get(&rule_path("bogus", "x")).await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice.get(&rule_path("override", "missing")).await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice
            .get(&format!("{}/enabled", rule_path("override", "missing")))
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice
            .put(
                &format!("{}/enabled", rule_path("override", "missing")),
                json!({ "enabled": true }),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice
            .put(
                &format!("{}/enabled", rule_path("override", "mine")),
                json!({ "enabled": "yes" }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        alice
            .put(
                &format!("{}/actions", rule_path("override", "missing")),
                json!({ "actions": [] }),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        alice
            .put(
                &format!("{}/actions", rule_path("override", "mine")),
                json!({ "actions": {} }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    check(
        server.client().get("/_matrix/client/v3/pushrules/").await,
        401,
        "M_MISSING_TOKEN",
    );
    // A rule set may not grow without bound.
    let big = json!({ "pattern": "x".repeat(60_000), "actions": ["notify"] });
    for index in 0..4 {
        alice
            .put_ok(&rule_path("content", &format!("big{index}")), big.clone())
            .await;
    }
    check(
        alice.put(&rule_path("content", "big4"), big.clone()).await,
        413,
        "M_TOO_LARGE",
    );
    for index in 0..4 {
        alice
            .delete(&rule_path("content", &format!("big{index}")), json!({}))
            .await;
    }
    // None of the refused requests changed anything.
    let all = alice.get_ok("/_matrix/client/v3/pushrules/").await;
    assert_eq!(rule_ids(&all, "override")[1], "mine");
    assert_eq!(all["global"]["content"].as_array().unwrap().len(), 1);
}
