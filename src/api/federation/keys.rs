//! Server keys: this server's key document, the notary API, and `/version`.

use std::sync::Arc;

use ruma::{
    api::federation::discovery::{
        get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version,
        ServerSigningKeys,
    },
    serde::Raw,
    CanonicalJsonObject, CanonicalJsonValue, ServerName,
};
use serde_json::Value;

use crate::{
    api::Ctx,
    crypto,
    error::{Error, Result},
    service::Services,
    util,
};

/// The most servers one notary query may ask about.
const MAX_QUERY_SERVERS: usize = 100;

/// `GET /_matrix/federation/v1/version`
pub async fn get_server_version(
    _services: Arc<Services>,
    _ctx: Ctx,
    _request: get_server_version::v1::Request,
) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Plait".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}

/// `GET /_matrix/key/v2/server`
///
/// The signed document of this server's verify keys. It has no old keys yet: the key is never
/// rotated.
pub async fn get_server_keys(
    services: Arc<Services>,
    _ctx: Ctx,
    _request: get_server_keys::v2::Request,
) -> Result<get_server_keys::v2::Response> {
    let document = services.server_keys.own_document(&services.globals)?;
    Ok(get_server_keys::v2::Response::new(raw_document(&document)?))
}

/// `GET /_matrix/key/v2/query/{serverName}`
///
/// Notary: another server's keys as this server last verified them (fetched now when the cache
/// has none valid at `minimum_valid_until_ts`), countersigned by this server.
pub async fn get_remote_server_keys(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_remote_server_keys::v2::Request,
) -> Result<get_remote_server_keys::v2::Response> {
    let minimum = request.minimum_valid_until_ts.get().into();
    let documents = notarise(&services, &request.server_name, minimum).await?;
    Ok(get_remote_server_keys::v2::Response::new(documents))
}

/// `POST /_matrix/key/v2/query`
///
/// Notary for several servers at once; the per-key `minimum_valid_until_ts` is honoured per
/// server. A server name or key ID that is not valid makes the body `400 M_BAD_JSON`.
pub async fn get_remote_server_keys_batch(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_remote_server_keys_batch::v2::Request,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    if request.server_keys.len() > MAX_QUERY_SERVERS {
        return Err(Error::bad_json(format!(
            "at most {MAX_QUERY_SERVERS} servers per query"
        )));
    }
    let mut documents = Vec::new();
    for (server, keys) in &request.server_keys {
        let minimum = keys
            .values()
            .filter_map(|criteria| criteria.minimum_valid_until_ts)
            .map(|ts| u64::from(ts.get()))
            .max()
            .unwrap_or(0);
        documents.extend(notarise(&services, server, minimum).await?);
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(documents))
}

/// A key document as the raw JSON it was signed as.
fn raw_document(document: &Value) -> Result<Raw<ServerSigningKeys>> {
    Raw::new(document)
        .map(Raw::cast_unchecked)
        .map_err(Error::internal)
}

async fn notarise(
    services: &Services,
    server: &ServerName,
    minimum: u64,
) -> Result<Vec<Raw<ServerSigningKeys>>> {
    if server == services.globals.server_name() {
        let document = services.server_keys.own_document(&services.globals)?;
        return Ok(vec![raw_document(&document)?]);
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
    let document =
        serde_json::to_value(CanonicalJsonObject::from(object)).map_err(Error::internal)?;
    Ok(vec![raw_document(&document)?])
}
