//! Push rules: reading and changing a user's rule set (`/pushrules`).

use std::sync::Arc;

use ruma::{
    api::client::push::{
        delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
        set_pushrule_enabled, PushRule,
    },
    push::{
        Action, AnyPushRuleRef, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule,
        NewPushRule, NewSimplePushRule, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
    },
    OwnedRoomId, OwnedUserId,
};
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{push::rules, Services},
};

/// The longest rule ID accepted, in bytes.
const MAX_RULE_ID_BYTES: usize = 255;
/// The most rules a user may have of one kind.
const MAX_RULES_PER_KIND: usize = 500;

/// `GET /_matrix/client/v3/pushrules/`
///
/// The whole rule set under `global`, every kind present.
/// Untyped: ruma's `Ruleset` leaves out a kind without rules, clients get every kind today.
pub async fn get_pushrules_all(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let ruleset = services.push.get_rules(&services, ctx.user())?;
    rules::to_account_data(&ruleset)
}

/// `GET /_matrix/client/v3/pushrules/global/`
///
/// The `global` rule set.
/// Untyped: ruma's `Ruleset` leaves out a kind without rules, as for [`get_pushrules_all`].
pub async fn get_pushrules_global_scope(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let ruleset = services.push.get_rules(&services, ctx.user())?;
    Ok(rules::to_account_data(&ruleset)?["global"].take())
}

/// The rule kind of a path; `None` for a kind the spec does not define.
fn parse_kind(kind: &str) -> Option<RuleKind> {
    match kind {
        "override" => Some(RuleKind::Override),
        "underride" => Some(RuleKind::Underride),
        "sender" => Some(RuleKind::Sender),
        "room" => Some(RuleKind::Room),
        "content" => Some(RuleKind::Content),
        _ => None,
    }
}

fn not_found(kind: &str, rule_id: &str) -> Error {
    Error::not_found(format!("no push rule {kind}/{rule_id}"))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
///
/// An unknown kind or rule is `404 M_NOT_FOUND`.
pub async fn get_pushrule(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_pushrule::v3::Request,
) -> Result<get_pushrule::v3::Response> {
    // Only the spec's kinds: ruma's `RuleKind` also parses unstable ones (MSC4306's
    // `postcontent` when ruma has that feature), which this endpoint does not serve.
    let kind = parse_kind(request.kind.as_str())
        .ok_or_else(|| not_found(request.kind.as_str(), &request.rule_id))?;
    let rule = with_rule(&services, &ctx, kind, &request.rule_id, |rule| {
        PushRule::from(rule)
    })?;
    Ok(get_pushrule::v3::Response::new(rule))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
///
/// Creates or replaces a user-defined rule, placed by `before`/`after` (user rules only) or
/// first among the user rules of its kind; an existing rule keeps its `enabled`. Errors: an
/// unknown kind, a rule ID starting with `.` or holding `\`, a room or sender rule whose ID is
/// not a room or user ID, and placing next to a server-default rule are `400 M_INVALID_PARAM`;
/// a missing or malformed `actions`, `conditions` or `pattern` is `400 M_BAD_JSON`; a
/// `before`/`after` rule that does not exist is `400 M_UNKNOWN` (the spec's example); a rule set
/// that would grow past 256 KiB is `413 M_TOO_LARGE`.
/// Untyped: ruma takes an unknown action as a custom one, where the errors above need the JSON.
pub async fn set_pushrule(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (kind_name, rule_id) = (ctx.param(0), ctx.param(1).to_owned());
    let kind = parse_kind(kind_name)
        .ok_or_else(|| Error::invalid_param(format!("unknown push rule kind {kind_name}")))?;
    if rule_id.is_empty() || rule_id.len() > MAX_RULE_ID_BYTES {
        return Err(Error::invalid_param("a rule ID has 1 to 255 bytes"));
    }
    let actions = parse_actions(ctx.body.get("actions"))?;
    let rule = match kind {
        RuleKind::Override | RuleKind::Underride => {
            let conditions: Vec<PushCondition> = match ctx.body.get("conditions") {
                None | Some(Value::Null) => Vec::new(),
                Some(conditions) => serde_json::from_value(conditions.clone())
                    .map_err(|error| Error::bad_json(format!("invalid conditions: {error}")))?,
            };
            let rule = NewConditionalPushRule::new(rule_id.clone(), conditions, actions);
            if kind == RuleKind::Override {
                NewPushRule::Override(rule)
            } else {
                NewPushRule::Underride(rule)
            }
        }
        RuleKind::Content => {
            let pattern = ctx
                .body
                .get("pattern")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::bad_json("a content rule needs a string pattern"))?;
            NewPushRule::Content(NewPatternedPushRule::new(
                rule_id.clone(),
                pattern.to_owned(),
                actions,
            ))
        }
        RuleKind::Room => {
            let room_id = OwnedRoomId::try_from(rule_id.as_str()).map_err(|_| {
                Error::invalid_param(format!("room rule ID {rule_id} is not a room ID"))
            })?;
            NewPushRule::Room(NewSimplePushRule::new(room_id, actions))
        }
        _ => {
            let user_id = OwnedUserId::try_from(rule_id.as_str()).map_err(|_| {
                Error::invalid_param(format!("sender rule ID {rule_id} is not a user ID"))
            })?;
            NewPushRule::Sender(NewSimplePushRule::new(user_id, actions))
        }
    };
    let (before, after) = (ctx.query("before"), ctx.query("after"));
    services
        .push
        .update_rules(&services, ctx.user(), |ruleset| {
            let existing = ruleset.get(kind.clone(), &rule_id).is_some();
            if !existing && kind_len(ruleset, &kind) >= MAX_RULES_PER_KIND {
                return Err(Error::invalid_param("too many push rules of this kind"));
            }
            ruleset
                .insert(rule, after, before)
                .map_err(|error| match error {
                    InsertPushRuleError::UnknownRuleId => Error::custom(
                        "M_UNKNOWN",
                        format!(
                            "before/after rule not found: {}",
                            before.or(after).unwrap_or_default()
                        ),
                    ),
                    InsertPushRuleError::ServerDefaultRuleId => {
                        Error::invalid_param("rule IDs starting with . are server-default rules")
                    }
                    other => Error::invalid_param(other.to_string()),
                })
        })?;
    Ok(json!({}))
}

fn kind_len(ruleset: &Ruleset, kind: &RuleKind) -> usize {
    match kind {
        RuleKind::Override => ruleset.override_.len(),
        RuleKind::Underride => ruleset.underride.len(),
        RuleKind::Sender => ruleset.sender.len(),
        RuleKind::Room => ruleset.room.len(),
        _ => ruleset.content.len(),
    }
}

/// Actions as the spec lists them: `notify`, the legacy `dont_notify` and `coalesce` (kept,
/// they do nothing), and `set_tweak` objects.
fn parse_actions(actions: Option<&Value>) -> Result<Vec<Action>> {
    let Some(Value::Array(actions)) = actions else {
        return Err(Error::bad_json("actions must be an array"));
    };
    for action in actions {
        match action {
            Value::String(name)
                if ["notify", "dont_notify", "coalesce"].contains(&name.as_str()) => {}
            Value::String(name) => {
                return Err(Error::invalid_param(format!(
                    "unknown push rule action {name}"
                )))
            }
            Value::Object(object) if object.get("set_tweak").is_some_and(Value::is_string) => {}
            _ => {
                return Err(Error::bad_json(
                    "an action is a string or a set_tweak object",
                ))
            }
        }
    }
    serde_json::from_value(Value::Array(actions.clone()))
        .map_err(|error| Error::bad_json(format!("invalid actions: {error}")))
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
///
/// Removes a user-defined rule; a server-default rule is `400 M_INVALID_PARAM`, an unknown one
/// (or an unknown kind) `404 M_NOT_FOUND`.
pub async fn delete_pushrule(
    services: Arc<Services>,
    ctx: Ctx,
    request: delete_pushrule::v3::Request,
) -> Result<delete_pushrule::v3::Response> {
    let (kind, rule_id) = (request.kind, request.rule_id);
    services
        .push
        .update_rules(&services, ctx.user(), |ruleset| {
            ruleset
                .remove(kind.clone(), &rule_id)
                .map_err(|error| match error {
                    RemovePushRuleError::ServerDefault => {
                        Error::invalid_param(format!("{rule_id} is a server-default rule"))
                    }
                    _ => not_found(kind.as_str(), &rule_id),
                })
        })?;
    Ok(delete_pushrule::v3::Response::new())
}

/// What `read` takes from one of the user's rules; an unknown rule or kind is `404 M_NOT_FOUND`.
fn with_rule<T>(
    services: &Services,
    ctx: &Ctx,
    kind: RuleKind,
    rule_id: &str,
    read: impl FnOnce(AnyPushRuleRef<'_>) -> T,
) -> Result<T> {
    let ruleset = services.push.get_rules(services, ctx.user())?;
    let rule = ruleset
        .get(kind.clone(), rule_id)
        .ok_or_else(|| not_found(kind.as_str(), rule_id))?;
    Ok(read(rule))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn is_pushrule_enabled(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_pushrule_enabled::v3::Request,
) -> Result<get_pushrule_enabled::v3::Response> {
    let enabled = with_rule(&services, &ctx, request.kind, &request.rule_id, |rule| {
        rule.enabled()
    })?;
    Ok(get_pushrule_enabled::v3::Response::new(enabled))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
///
/// `enabled` must be a boolean (`400 M_BAD_JSON`); an unknown rule is `404 M_NOT_FOUND`.
pub async fn set_pushrule_enabled(
    services: Arc<Services>,
    ctx: Ctx,
    request: set_pushrule_enabled::v3::Request,
) -> Result<set_pushrule_enabled::v3::Response> {
    let (kind, rule_id) = (request.kind, request.rule_id);
    services
        .push
        .update_rules(&services, ctx.user(), |ruleset| {
            ruleset
                .set_enabled(kind.clone(), &rule_id, request.enabled)
                .map_err(|_| not_found(kind.as_str(), &rule_id))
        })?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn get_pushrule_actions(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_pushrule_actions::v3::Request,
) -> Result<get_pushrule_actions::v3::Response> {
    let actions = with_rule(&services, &ctx, request.kind, &request.rule_id, |rule| {
        rule.actions().to_vec()
    })?;
    Ok(get_pushrule_actions::v3::Response::new(actions))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
///
/// Server-default rules too; bad actions are `400 M_BAD_JSON` (`M_INVALID_PARAM` for an
/// unknown action name); an unknown rule is `404 M_NOT_FOUND`.
/// Untyped: ruma takes an unknown action as a custom one, as for [`set_pushrule`].
pub async fn set_pushrule_actions(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (kind_name, rule_id) = (ctx.param(0), ctx.param(1));
    let kind = parse_kind(kind_name).ok_or_else(|| not_found(kind_name, rule_id))?;
    let actions = parse_actions(ctx.body.get("actions"))?;
    services
        .push
        .update_rules(&services, ctx.user(), |ruleset| {
            ruleset
                .set_actions(kind, rule_id, actions)
                .map_err(|_| not_found(kind_name, rule_id))
        })?;
    Ok(json!({}))
}
