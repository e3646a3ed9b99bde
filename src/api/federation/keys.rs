//! Server keys: this server's key document, the notary API, and `/version`.

use std::sync::Arc;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    crypto,
    error::{Error, Result},
    service::Services,
    util,
};

/// The most servers one notary query may ask about.
const MAX_QUERY_SERVERS: usize = 100;

/// `GET /_matrix/federation/v1/version`
pub async fn get_server_version(_services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    Ok(json!({ "server": { "name": "Plait", "version": env!("CARGO_PKG_VERSION") } }))
}

/// `GET /_matrix/key/v2/server`
///
/// The signed document of this server's verify keys. It has no old keys yet: the key is never
/// rotated.
pub async fn get_server_keys(services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    services.server_keys.own_document(&services.globals)
}

/// `GET /_matrix/key/v2/query/{serverName}`
///
/// Notary: another server's keys as this server last verified them (fetched now when the cache
/// has none valid at `minimum_valid_until_ts`), countersigned by this server.
pub async fn get_remote_server_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let server = OwnedServerName::try_from(ctx.param(0))
        .map_err(|_| Error::invalid_param(format!("invalid server name {}", ctx.param(0))))?;
    let minimum = ctx
        .query("minimum_valid_until_ts")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let documents = notarise(&services, &server, minimum).await?;
    Ok(json!({ "server_keys": documents }))
}

/// `POST /_matrix/key/v2/query`
///
/// Notary for several servers at once; the per-key `minimum_valid_until_ts` is honoured per server.
pub async fn get_remote_server_keys_batch(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let Some(servers) = ctx.body.get("server_keys").and_then(Value::as_object) else {
        return Err(Error::bad_json("server_keys must be an object"));
    };
    if servers.len() > MAX_QUERY_SERVERS {
        return Err(Error::bad_json(format!(
            "at most {MAX_QUERY_SERVERS} servers per query"
        )));
    }
    let mut documents = Vec::new();
    for (name, keys) in servers {
        let Ok(server) = OwnedServerName::try_from(name.as_str()) else {
            continue;
        };
        let minimum = keys
            .as_object()
            .into_iter()
            .flat_map(|keys| keys.values())
            .filter_map(|criteria| criteria["minimum_valid_until_ts"].as_u64())
            .max()
            .unwrap_or(0);
        documents.extend(notarise(&services, &server, minimum).await?);
    }
    Ok(json!({ "server_keys": documents }))
}

async fn notarise(services: &Services, server: &ServerName, minimum: u64) -> Result<Vec<Value>> {
    if server == services.globals.server_name() {
        return Ok(vec![services
            .server_keys
            .own_document(&services.globals)?]);
    }
    let at = minimum.max(util::now_millis());
    let keys = services
        .server_keys
        .get_keys(&services.federation, &services.globals, server, None, at)
        .await
        .unwrap_or_default();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let Some(document) = services.server_keys.get_document(server)? else {
        return Ok(Vec::new());
    };
    let Ok(CanonicalJsonValue::Object(mut object)) = CanonicalJsonValue::try_from(document) else {
        return Ok(Vec::new());
    };
    // Keep only the origin's own signature, then add ours as the notary.
    if let Some(CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") {
        signatures.retain(|name, _| name == server.as_str());
    }
    crypto::sign_json(
        services.globals.server_name().as_str(),
        services.globals.signing_key(),
        &mut object,
    )
    .map_err(Error::internal)?;
    Ok(vec![serde_json::to_value(CanonicalJsonObject::from(
        object,
    ))
    .map_err(Error::internal)?])
}
