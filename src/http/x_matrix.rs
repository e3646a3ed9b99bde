//! `X-Matrix` request authentication for the federation API: the origin's signature over the
//! request, checked with the origin's published key (server-server API, "Request Authentication").

use http::request::Parts;
use ruma::{
    api::{error::ErrorKind, federation::authentication::XMatrix},
    signatures::PublicKeyMap,
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName,
};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::{server_keys, Services},
    util,
};

/// The length of an ed25519 signature.
const ED25519_SIGNATURE_BYTES: usize = 64;

fn unauthorized(message: impl Into<String>) -> Error {
    Error::matrix(ErrorKind::Unauthorized, message)
}

/// The `Authorization: X-Matrix` header of a request, checked for its shape, its destination
/// and an origin other than this server and than the servers the admins denied, from the headers alone: before the body is read and
/// before the origin's keys are fetched (whose fetch `ServerKeys::get_keys` bounds per origin).
pub fn parse(services: &Services, parts: &Parts) -> Result<XMatrix> {
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| unauthorized("missing X-Matrix authorization"))?;
    let x_matrix =
        XMatrix::parse(header).map_err(|_| unauthorized("malformed X-Matrix authorization"))?;
    let own_name = services.globals.server_name();
    if x_matrix
        .destination
        .as_deref()
        .is_some_and(|destination| destination != own_name)
    {
        return Err(unauthorized("X-Matrix destination is another server"));
    }
    if x_matrix.origin == own_name {
        return Err(unauthorized(
            "requests cannot come from this server's own name",
        ));
    }
    // A server the admins denied is refused whatever it asks (transactions, joins, reads).
    if services.admin.blocks.is_server_denied(&x_matrix.origin) {
        return Err(Error::forbidden(format!(
            "{} is denied by this server",
            x_matrix.origin
        )));
    }
    // A signature that cannot verify whatever the key is refused before the origin's keys are
    // fetched: only ed25519 keys are published, and their signatures are 64 bytes.
    if x_matrix.key.algorithm() != ruma::SigningKeyAlgorithm::Ed25519
        || x_matrix.sig.as_bytes().len() != ED25519_SIGNATURE_BYTES
    {
        return Err(unauthorized("X-Matrix key or signature is not ed25519"));
    }
    Ok(x_matrix)
}

/// Checks a parsed `X-Matrix` header's signature over the request (with its JSON body, if any)
/// with the origin's published key, and returns the origin server.
pub async fn verify(
    services: &Services,
    parts: &Parts,
    x_matrix: XMatrix,
    body: Option<&Value>,
) -> Result<OwnedServerName> {
    let own_name = services.globals.server_name();
    let keys = services
        .server_keys
        .get_keys(
            &services.federation,
            &services.globals,
            &x_matrix.origin,
            Some(x_matrix.key.as_str()),
            util::now_millis(),
        )
        .await?;
    let Some(public) = keys.get(x_matrix.key.as_str()) else {
        return Err(unauthorized(format!(
            "unknown key {} of {}",
            x_matrix.key, x_matrix.origin
        )));
    };
    let uri = parts
        .uri
        .path_and_query()
        .map(|value| value.as_str())
        .unwrap_or("/");
    let mut object = CanonicalJsonObject::new();
    object.insert("method".into(), parts.method.as_str().into());
    object.insert("uri".into(), uri.into());
    object.insert("origin".into(), x_matrix.origin.as_str().into());
    object.insert("destination".into(), own_name.as_str().into());
    if let Some(body) = body {
        let content = CanonicalJsonValue::try_from(body.clone())
            .map_err(|_| Error::bad_json("request body is not canonical JSON"))?;
        object.insert("content".into(), content);
    }
    let signature = CanonicalJsonObject::from([(
        x_matrix.key.to_string(),
        CanonicalJsonValue::String(x_matrix.sig.encode()),
    )]);
    object.insert(
        "signatures".into(),
        CanonicalJsonValue::Object(CanonicalJsonObject::from([(
            x_matrix.origin.to_string(),
            CanonicalJsonValue::Object(signature),
        )])),
    );
    let mut key_map = PublicKeyMap::new();
    let single = std::collections::BTreeMap::from([(x_matrix.key.to_string(), public.clone())]);
    key_map.insert(
        x_matrix.origin.to_string(),
        server_keys::to_key_set(&single)?,
    );
    ruma::signatures::verify_json(&key_map, &object)
        .map_err(|_| unauthorized("X-Matrix signature does not verify"))?;
    // A server that signs requests to us is up: anything queued for it goes out now instead of
    // after the sender's back-off (which reaches an hour for a server that was down long).
    services.sending.heard_from(&x_matrix.origin);
    services.stats.heard_from(&x_matrix.origin)?;
    Ok(x_matrix.origin)
}
