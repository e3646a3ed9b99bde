//! End-to-end encryption keys: upload, query, claim and changes of device keys.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ruma::{api::client::keys::get_key_changes, OwnedServerName, OwnedUserId};
use serde_json::{json, Map, Value};

use super::object_field;
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        device_lists,
        keys::upload::{self, Upload},
        rate_limits::{self, Limit},
        Services,
    },
};

/// How long a query or claim waits for other servers unless the client says otherwise.
const DEFAULT_REMOTE_TIMEOUT_MS: u64 = 10_000;

/// `POST /_matrix/client/v3/keys/upload`
///
/// Stores the device's identity, one-time and fallback keys (the unstable
/// `org.matrix.msc2732.fallback_keys` too) and answers the one-time key counts.
/// Untyped: ruma's request has no `org.matrix.msc2732.fallback_keys` and refuses a `null`
/// `one_time_keys` or `fallback_keys` as `M_BAD_JSON`, where we read both as absent.
pub async fn upload_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let fallback_keys = match object_field(&ctx.body, "fallback_keys")? {
        Some(keys) => Some(keys),
        None => object_field(&ctx.body, "org.matrix.msc2732.fallback_keys")?,
    };
    let keys = Upload {
        device_keys: object_field(&ctx.body, "device_keys")?,
        one_time_keys: object_field(&ctx.body, "one_time_keys")?,
        fallback_keys,
    };
    let counts = upload::upload(&services, (ctx.user(), ctx.device()), &keys)?;
    Ok(json!({ "one_time_key_counts": counts }))
}

/// The remote timeout a query or claim asked for.
fn remote_timeout(body: &Value) -> Duration {
    Duration::from_millis(
        body.get("timeout")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_REMOTE_TIMEOUT_MS)
            .min(60_000),
    )
}

/// Splits a `{user ID: T}` request into local users and remote users by server.
#[allow(clippy::type_complexity)]
fn split_by_server<T: serde::de::DeserializeOwned>(
    services: &Services,
    field: &str,
    wanted: Option<&Map<String, Value>>,
) -> Result<(
    BTreeMap<OwnedUserId, T>,
    BTreeMap<OwnedServerName, Map<String, Value>>,
)> {
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<OwnedServerName, Map<String, Value>> = BTreeMap::new();
    for (user, value) in wanted.into_iter().flatten() {
        let user_id = OwnedUserId::try_from(user.as_str())
            .map_err(|_| Error::invalid_param(format!("invalid user ID {user} in {field}")))?;
        let parsed: T = serde_json::from_value(value.clone())
            .map_err(|_| Error::bad_json(format!("invalid {field} entry for {user}")))?;
        if user_id.server_name() == services.globals.server_name() {
            local.insert(user_id, parsed);
        } else {
            remote
                .entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user.clone(), value.clone());
        }
    }
    Ok((local, remote))
}

/// Sends one request per server at once; a server that fails or is too slow is listed in
/// `failures`.
async fn ask_servers(
    services: &Services,
    path: &str,
    field: &str,
    remote: BTreeMap<OwnedServerName, Map<String, Value>>,
    timeout: Duration,
) -> (Vec<Value>, Map<String, Value>) {
    let requests = remote.into_iter().map(|(server, wanted)| async move {
        let body = json!({ field: wanted });
        let answer = tokio::time::timeout(
            timeout,
            services.federation_request(&server, http::Method::POST, path, Some(&body)),
        )
        .await;
        (server, answer)
    });
    let mut answers = Vec::new();
    let mut failures = Map::new();
    for (server, answer) in futures_util::future::join_all(requests).await {
        match answer {
            Ok(Ok(answer)) => answers.push(answer),
            Ok(Err(error)) => {
                tracing::debug!(%server, %error, "remote key request failed");
                failures.insert(server.to_string(), json!({}));
            }
            Err(_) => {
                failures.insert(server.to_string(), json!({ "error": "timed out" }));
            }
        }
    }
    (answers, failures)
}

/// Merges the `{user: …}` maps under each of `fields` from a remote answer into `response`,
/// keeping only users of the server that answered.
fn merge_remote(response: &mut Map<String, Value>, answer: &Value, fields: &[&str]) {
    for field in fields {
        let Some(users) = answer.get(*field).and_then(Value::as_object) else {
            continue;
        };
        let target = response
            .entry(field.to_string())
            .or_insert_with(|| json!({}));
        for (user, value) in users {
            target[user] = value.clone();
        }
    }
}

/// `POST /_matrix/client/v3/keys/query`
///
/// Local users are answered from storage. Remote users who share a room with a local user are
/// answered from the cache of their device lists when it is up to date, and otherwise have their
/// list fetched (and cached) with `/user/devices/{userId}`; other remote users are asked with
/// one `/user/keys/query` per server.
/// Untyped: ruma's response leaves out an empty `failures` (sent as `{}` here and by Synapse,
/// tests check it), and its request refuses an invalid user ID as `M_BAD_JSON`, not
/// `M_INVALID_PARAM`.
pub async fn get_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let wanted = object_field(&ctx.body, "device_keys")?
        .ok_or_else(|| Error::bad_json("device_keys is required"))?;
    let (local, mut remote) =
        split_by_server::<Vec<String>>(&services, "device_keys", Some(&wanted))?;
    let mut response = device_lists::query_local(&services, Some(ctx.user()), &local)?;
    let timeout = remote_timeout(&ctx.body);
    let mut tracked_failures = Map::new();
    device_lists::remote::query_tracked(
        &services,
        &mut remote,
        timeout,
        &mut response,
        &mut tracked_failures,
    )
    .await?;
    let (answers, mut failures) = ask_servers(
        &services,
        "/_matrix/federation/v1/user/keys/query",
        "device_keys",
        remote,
        timeout,
    )
    .await;
    failures.extend(tracked_failures);
    for answer in answers {
        merge_remote(
            &mut response,
            &answer,
            &["device_keys", "master_keys", "self_signing_keys"],
        );
    }
    response.insert("failures".into(), Value::Object(failures));
    Ok(Value::Object(response))
}

/// `POST /_matrix/client/v3/keys/claim`
///
/// One key per device and algorithm: a one-time key, removed as it is handed out, or the
/// device's fallback key when none is left. Remote devices are claimed through their server.
/// Limited per user (`rate_limits.key_claims`).
/// Untyped: ruma's response leaves out an empty `failures` (sent as `{}` here and by Synapse),
/// and its request refuses an invalid user ID as `M_BAD_JSON`, not `M_INVALID_PARAM`.
pub async fn claim_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    rate_limits::take_for(&services, Limit::KeyClaims, ctx.user())?;
    let wanted = object_field(&ctx.body, "one_time_keys")?
        .ok_or_else(|| Error::bad_json("one_time_keys is required"))?;
    let (local, remote) =
        split_by_server::<BTreeMap<String, String>>(&services, "one_time_keys", Some(&wanted))?;
    let mut one_time_keys = device_lists::claim_local(&services, &local)?;
    let (answers, failures) = ask_servers(
        &services,
        "/_matrix/federation/v1/user/keys/claim",
        "one_time_keys",
        remote,
        remote_timeout(&ctx.body),
    )
    .await;
    for answer in answers {
        if let Some(users) = answer.get("one_time_keys").and_then(Value::as_object) {
            for (user, devices) in users {
                one_time_keys.insert(user.clone(), devices.clone());
            }
        }
    }
    Ok(json!({ "one_time_keys": one_time_keys, "failures": failures }))
}

/// A `/sync` token as its global stream position.
fn parse_token(token: &str) -> Result<u64> {
    crate::service::globals::SyncToken::parse(token)
        .map(|token| token.count)
        .ok_or_else(|| Error::invalid_param(format!("invalid token {token}")))
}

/// `GET /_matrix/client/v3/keys/changes`
///
/// Users sharing a room with the requester whose keys changed between `from` and `to`, or who
/// started sharing a room; `left` lists users who no longer share one.
pub async fn get_key_changes(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_key_changes::v3::Request,
) -> Result<get_key_changes::v3::Response> {
    let from = parse_token(&request.from)?;
    let to = parse_token(&request.to)?;
    let (changed, left) = device_lists::iter_device_list_changes(&services, ctx.user(), from, to)?;
    Ok(get_key_changes::v3::Response::new(
        changed.into_iter().collect(),
        left.into_iter().collect(),
    ))
}
