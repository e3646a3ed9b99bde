//! Push rule sets: the server-default rules, each user's rules as `m.push_rules` global account
//! data, and evaluating them against one event for one user.

use std::{
    collections::HashMap,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use parking_lot::Mutex;
use ruma::{
    push::{
        Action, AnyPushRuleRef, ConditionalPushRule, FlattenedJson, PatternedPushRule,
        PushCondition, PushConditionRoomCtx, Ruleset, Tweak,
    },
    UserId,
};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The account data type that holds a user's rules.
pub const ACCOUNT_DATA_TYPE: &str = "m.push_rules";

/// The rules marked legacy: they look for mentions in `content.body`. Spec v1.17 removed them
/// from the specified defaults, but a server may keep its own defaults and clients still show
/// them; like Synapse, they are skipped for events that carry `m.mentions` (MSC3952), so that
/// only senders without intentional mentions trigger them.
const LEGACY_RULES: [&str; 3] = [
    ".m.rule.contains_display_name",
    ".m.rule.roomnotif",
    ".m.rule.contains_user_name",
];

/// The server-default rules of a user: the spec v1.19 set (ruma's `server_default`) plus the
/// legacy body-mention rules, placed where the spec listed them before v1.17.
pub fn server_default(user_id: &UserId) -> Ruleset {
    let mut ruleset = specified_only(&Ruleset::server_default(user_id));
    let display_name: ConditionalPushRule = legacy_rule(json!({
        "rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
        "conditions": [{ "kind": "contains_display_name" }],
        "actions": ["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }],
    }));
    let room_notification: ConditionalPushRule = legacy_rule(json!({
        "rule_id": ".m.rule.roomnotif", "default": true, "enabled": true,
        "conditions": [
            { "kind": "event_match", "key": "content.body", "pattern": "@room" },
            { "kind": "sender_notification_permission", "key": "room" },
        ],
        "actions": ["notify", { "set_tweak": "highlight" }],
    }));
    let user_name: PatternedPushRule = legacy_rule(json!({
        "rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true,
        "pattern": user_id.localpart(),
        "actions": ["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }],
    }));
    insert_after(&mut ruleset, ".m.rule.is_user_mention", display_name);
    insert_after(&mut ruleset, ".m.rule.is_room_mention", room_notification);
    ruleset.content.insert(user_name);
    ruleset
}

/// The rules of the five kinds the spec defines whose IDs are the spec's (`.m.rule.`): ruma
/// adds unstable rules (polls, thread subscriptions) when another crate in the build enables
/// their features, and the server's defaults must not depend on that.
fn specified_only(ruleset: &Ruleset) -> Ruleset {
    let mut value = serde_json::to_value(ruleset).expect("a rule set serializes");
    if let Some(kinds) = value.as_object_mut() {
        kinds.retain(|kind, _| {
            ["override", "content", "room", "sender", "underride"].contains(&kind.as_str())
        });
        for rules in kinds.values_mut() {
            if let Some(rules) = rules.as_array_mut() {
                rules.retain(|rule| {
                    rule["rule_id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with(".m.rule."))
                });
            }
        }
    }
    serde_json::from_value(value).expect("the specified default rules deserialize")
}

fn legacy_rule<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the legacy rules are valid push rules")
}

fn insert_after(ruleset: &mut Ruleset, anchor: &str, rule: ConditionalPushRule) {
    let position = ruleset
        .override_
        .get_index_of(anchor)
        .map_or(ruleset.override_.len(), |index| index + 1);
    let (index, _) = ruleset.override_.insert_full(rule);
    ruleset
        .override_
        .move_index(index, position.min(ruleset.override_.len() - 1));
}

/// A user's rules from their stored account data (server defaults when there is none), with
/// the server-default rules brought up to date (their `enabled` and `actions` kept).
pub fn from_account_data(user_id: &UserId, stored: Option<&Value>) -> Ruleset {
    let Some(global) = stored.and_then(|content| content.get("global")) else {
        return server_default(user_id);
    };
    match serde_json::from_value::<Ruleset>(global.clone()) {
        Ok(mut ruleset) => {
            ruleset.update_with_server_default(server_default(user_id));
            ruleset
        }
        Err(error) => {
            tracing::warn!(%user_id, %error, "stored push rules do not parse; using the defaults");
            server_default(user_id)
        }
    }
}

/// The account data content of a rule set: `{"global": ...}` with every kind present, as
/// clients expect even when a kind has no rules.
pub fn to_account_data(ruleset: &Ruleset) -> Result<Value> {
    let mut global = serde_json::to_value(ruleset).map_err(Error::internal)?;
    for kind in ["override", "content", "room", "sender", "underride"] {
        if global.get(kind).is_none() {
            global[kind] = json!([]);
        }
    }
    Ok(json!({ "global": global }))
}

/// A user's rules prepared for evaluation: the whole set, and the set without the legacy
/// rules for events that carry `m.mentions`, each with the shared identity of every rule whose
/// outcome is the same for every user of a room (see [`Shared`]).
pub struct Prepared {
    pub all: Ruleset,
    pub without_legacy: Ruleset,
    all_ids: Vec<Option<u32>>,
    without_legacy_ids: Vec<Option<u32>>,
}

/// The most rules [`Shared`] numbers (a few hundred bytes each).
const MAX_SHARED_RULES: usize = 20_000;

/// Numbers the rules whose outcome for an event does not depend on whose rules they are: an
/// override or underride rule whose conditions read only the event, the room's member count and
/// its power levels (not `contains_display_name`). Two users holding the same such rule (every
/// server-default one, for users who did not change it) get the same number, so that one event's
/// evaluation for all the members of a room decides each such rule once ([`Outcomes`]).
/// The numbers are kept for the life of the process: one per distinct rule prepared, at most
/// `MAX_SHARED_RULES`.
#[derive(Default)]
pub struct Shared {
    ids: Mutex<HashMap<String, u32>>,
}

impl Shared {
    fn ids(&self, ruleset: &Ruleset) -> Vec<Option<u32>> {
        ruleset.iter().map(|rule| self.id(rule)).collect()
    }

    fn id(&self, rule: AnyPushRuleRef<'_>) -> Option<u32> {
        let rule = match rule {
            AnyPushRuleRef::Override(rule) | AnyPushRuleRef::Underride(rule) => rule,
            _ => return None,
        };
        if !rule.conditions.iter().all(same_for_every_user) {
            return None;
        }
        let text = serde_json::to_string(rule).ok()?;
        let mut ids = self.ids.lock();
        if let Some(id) = ids.get(&text) {
            return Some(*id);
        }
        // Rules changed again and again (or naming their user) would otherwise grow the numbering
        // without bound; past the cap a new rule is simply evaluated for each user.
        if ids.len() >= MAX_SHARED_RULES {
            return None;
        }
        let id = u32::try_from(ids.len()).ok()?;
        ids.insert(text, id);
        Some(id)
    }
}

/// Whether a condition reads nothing of the user whose rule it is. Every condition is false for
/// the event's own sender, which [`Prepared::actions`] never evaluates.
fn same_for_every_user(condition: &PushCondition) -> bool {
    matches!(
        condition,
        PushCondition::EventMatch(_)
            | PushCondition::RoomMemberCount(_)
            | PushCondition::SenderNotificationPermission(_)
            | PushCondition::EventPropertyIs(_)
            | PushCondition::EventPropertyContains(_)
    )
}

/// The outcomes of the shared rules for one event in one room context, filled in as the
/// members' rules are evaluated.
#[derive(Default)]
pub struct Outcomes(HashMap<u32, bool>);

impl Prepared {
    /// Prepares a rule set.
    pub fn new(all: Ruleset, shared: &Shared) -> Self {
        let mut without_legacy = all.clone();
        without_legacy
            .override_
            .retain(|rule| !(rule.default && LEGACY_RULES.contains(&rule.rule_id.as_str())));
        without_legacy
            .content
            .retain(|rule| !(rule.default && LEGACY_RULES.contains(&rule.rule_id.as_str())));
        Self {
            all_ids: shared.ids(&all),
            without_legacy_ids: shared.ids(&without_legacy),
            all,
            without_legacy,
        }
    }

    /// The actions for an event (client form, flattened once for all the users it is checked
    /// for) in a room context; empty when no rule matches or the user sent the event.
    /// `outcomes` holds what the shared rules decided for this event and context so far.
    pub fn actions(
        &self,
        event: &FlattenedJson,
        has_mentions: bool,
        ctx: &PushConditionRoomCtx,
        outcomes: &mut Outcomes,
    ) -> Vec<Action> {
        let (ruleset, ids) = if has_mentions {
            (&self.without_legacy, &self.without_legacy_ids)
        } else {
            (&self.all, &self.all_ids)
        };
        if event.get_str("sender") == Some(ctx.user_id.as_str()) {
            return Vec::new();
        }
        for (rule, id) in ruleset.iter().zip(ids) {
            let applies = match id {
                Some(id) => *outcomes
                    .0
                    .entry(*id)
                    .or_insert_with(|| poll_ready(rule.applies(event, ctx)).unwrap_or(false)),
                None => poll_ready(rule.applies(event, ctx)).unwrap_or(false),
            };
            if applies {
                return rule.actions().to_vec();
            }
        }
        Vec::new()
    }
}

/// Ruma's evaluation is `async` only for thread subscriptions (MSC4306, not enabled here), so
/// its future is ready on the first poll; `None` if it ever is not.
fn poll_ready<T>(future: impl Future<Output = T>) -> Option<T> {
    let mut context = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut context) {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

/// Whether the actions notify, and whether they highlight.
pub fn notify_and_highlight(actions: &[Action]) -> (bool, bool) {
    let notify = actions.iter().any(Action::should_notify);
    let highlight = actions.iter().any(|action| {
        matches!(action, Action::SetTweak(Tweak::Highlight(_))) && action.is_highlight()
    });
    (notify, notify && highlight)
}

#[cfg(test)]
mod tests {
    use ruma::{owned_room_id, owned_user_id, serde::Raw, uint};

    use super::*;

    fn event(body: Value) -> FlattenedJson {
        FlattenedJson::from_raw(&Raw::new(&body).unwrap())
    }

    #[test]
    fn defaults_hold_the_spec_rules_and_the_legacy_ones_in_place() {
        let user = owned_user_id!("@bob:example.org");
        let ruleset = server_default(&user);
        let overrides: Vec<_> = ruleset
            .override_
            .iter()
            .map(|rule| rule.rule_id.as_str())
            .collect();
        assert_eq!(overrides[0], ".m.rule.master");
        let position = |id: &str| overrides.iter().position(|rule| *rule == id).unwrap();
        assert_eq!(
            position(".m.rule.contains_display_name"),
            position(".m.rule.is_user_mention") + 1
        );
        assert_eq!(
            position(".m.rule.roomnotif"),
            position(".m.rule.is_room_mention") + 1
        );
        for id in [
            ".m.rule.tombstone",
            ".m.rule.reaction",
            ".m.rule.room.server_acl",
            ".m.rule.suppress_edits",
        ] {
            position(id);
        }
        assert_eq!(ruleset.content.len(), 1);
        assert_eq!(ruleset.underride.len(), 5);
        let all: Vec<_> = ruleset
            .iter()
            .map(|rule| rule.rule_id().to_owned())
            .collect();
        assert!(all.iter().all(|id| id.starts_with(".m.rule.")), "{all:?}");
        let stored = to_account_data(&ruleset).unwrap();
        assert_eq!(stored["global"]["room"], json!([]));
        let back = from_account_data(&user, Some(&stored));
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&ruleset).unwrap()
        );
    }

    #[test]
    fn mentions_highlight_and_legacy_rules_skip_events_with_m_mentions() {
        let user = owned_user_id!("@bob:example.org");
        let prepared = Prepared::new(server_default(&user), &Shared::default());
        let ctx = PushConditionRoomCtx::new(
            owned_room_id!("!room:example.org"),
            uint!(3),
            user.clone(),
            "Bobby".to_owned(),
        );
        let check = |content: Value| {
            let has_mentions = content.get("m.mentions").is_some();
            let flattened = event(json!({
                "type": "m.room.message", "sender": "@alice:example.org",
                "content": content, "event_id": "$e", "origin_server_ts": 1,
            }));
            notify_and_highlight(&prepared.actions(
                &flattened,
                has_mentions,
                &ctx,
                &mut Outcomes::default(),
            ))
        };
        assert_eq!(
            check(json!({ "msgtype": "m.text", "body": "hi" })),
            (true, false)
        );
        assert_eq!(
            check(json!({ "msgtype": "m.text", "body": "hi Bobby" })),
            (true, true)
        );
        assert_eq!(
            check(json!({ "msgtype": "m.text", "body": "hi @bob:example.org" })),
            (true, true)
        );
        assert_eq!(
            check(json!({ "msgtype": "m.text", "body": "hi Bobby", "m.mentions": {} })),
            (true, false)
        );
        assert_eq!(
            check(
                json!({ "msgtype": "m.text", "body": "x", "m.mentions": { "user_ids": ["@bob:example.org"] } })
            ),
            (true, true)
        );
        assert_eq!(
            check(json!({ "msgtype": "m.notice", "body": "Bobby" })),
            (false, false)
        );
        let own = event(json!({
            "type": "m.room.message", "sender": "@bob:example.org",
            "content": { "msgtype": "m.text", "body": "hi Bobby" },
            "event_id": "$own", "origin_server_ts": 1,
        }));
        assert!(prepared
            .actions(&own, false, &ctx, &mut Outcomes::default())
            .is_empty());
    }

    #[test]
    fn the_shared_numbering_is_bounded() {
        let shared = Shared::default();
        let rule = |n: usize| -> ConditionalPushRule {
            legacy_rule(json!({
                "rule_id": format!("r{n}"), "default": false, "enabled": true,
                "conditions": [{ "kind": "event_match", "key": "type", "pattern": format!("t{n}") }],
                "actions": [],
            }))
        };
        let first = shared.id(AnyPushRuleRef::Override(&rule(0)));
        assert_eq!(first, Some(0));
        for n in 1..MAX_SHARED_RULES {
            assert!(shared.id(AnyPushRuleRef::Override(&rule(n))).is_some());
        }
        assert_eq!(
            shared.id(AnyPushRuleRef::Override(&rule(MAX_SHARED_RULES))),
            None,
            "past the cap a rule is evaluated per user"
        );
        assert_eq!(shared.id(AnyPushRuleRef::Override(&rule(0))), first);
        assert_eq!(shared.ids.lock().len(), MAX_SHARED_RULES);
    }

    #[test]
    fn members_share_the_outcome_of_a_rule_only_where_it_is_the_same_rule() {
        let shared = Shared::default();
        let bob = owned_user_id!("@bob:example.org");
        let carol = owned_user_id!("@carol:example.org");
        let dave = owned_user_id!("@dave:example.org");
        let bobs = Prepared::new(server_default(&bob), &shared);
        let carols = Prepared::new(server_default(&carol), &shared);
        // Dave turned the catch-all message rule off.
        let mut muted = server_default(&dave);
        muted
            .set_enabled(ruma::push::RuleKind::Underride, ".m.rule.message", false)
            .unwrap();
        let daves = Prepared::new(muted, &shared);
        let id_of = |prepared: &Prepared, rule_id: &str| {
            let position = prepared
                .all
                .iter()
                .position(|rule| rule.rule_id() == rule_id)
                .unwrap();
            prepared.all_ids[position]
        };
        let common = (bobs.all_ids.iter().zip(&carols.all_ids))
            .filter(|(bob, carol)| bob.is_some() && bob == carol)
            .count();
        assert!(common > 10, "the defaults are shared: {common}");
        // Rules that name their user are rules of their own.
        assert_ne!(
            id_of(&bobs, ".m.rule.is_user_mention"),
            id_of(&carols, ".m.rule.is_user_mention")
        );
        assert!(id_of(&bobs, ".m.rule.message").is_some());
        assert_eq!(
            id_of(&bobs, ".m.rule.message"),
            id_of(&carols, ".m.rule.message")
        );
        assert_ne!(
            id_of(&bobs, ".m.rule.message"),
            id_of(&daves, ".m.rule.message"),
            "a changed rule is another rule"
        );
        assert_eq!(
            id_of(&bobs, ".m.rule.contains_display_name"),
            None,
            "it reads the display name"
        );

        let flattened = event(json!({
            "type": "m.room.message", "sender": "@alice:example.org",
            "content": { "msgtype": "m.text", "body": "hi Bobby" },
            "event_id": "$e", "origin_server_ts": 1,
        }));
        let mut outcomes = Outcomes::default();
        let mut check = |user: &ruma::OwnedUserId, name: &str, prepared: &Prepared| {
            let ctx = PushConditionRoomCtx::new(
                owned_room_id!("!room:example.org"),
                uint!(4),
                user.clone(),
                name.to_owned(),
            );
            notify_and_highlight(&prepared.actions(&flattened, false, &ctx, &mut outcomes))
        };
        assert_eq!(check(&bob, "Bobby", &bobs), (true, true));
        assert_eq!(check(&carol, "Carol", &carols), (true, false));
        assert_eq!(check(&dave, "Dave", &daves), (false, false));
        assert!(!outcomes.0.is_empty());
    }
}
