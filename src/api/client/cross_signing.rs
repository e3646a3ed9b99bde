//! Cross-signing: uploading a user's signing keys and signatures of devices and keys.

use std::sync::Arc;

use serde_json::{json, Value};

use super::object_field;
use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        keys::{
            cross_signing::{self, field_of},
            CROSS_SIGNING_KINDS,
        },
        Services,
    },
};

/// `POST /_matrix/client/v3/keys/device_signing/upload`
///
/// UIA with `m.login.password`, except when the user has no master key yet or the request
/// only repeats the stored keys (spec v1.11); see [`cross_signing::upload_signing_keys`].
/// Stays on an untyped route: the keys service checks each key's shape on the body as sent
/// (`M_INVALID_PARAM` for a key of another user or usage, `M_INVALID_SIGNATURE` for a missing
/// master signature), and reads the UIA stage as sent.
pub async fn upload_cross_signing_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let mut uploaded = Vec::new();
    for kind in CROSS_SIGNING_KINDS {
        if let Some(signing_key) = object_field(&ctx.body, &field_of(kind))? {
            uploaded.push((kind, Value::Object(signing_key)));
        }
    }
    cross_signing::upload_signing_keys(&services, ctx.user(), &uploaded, ctx.body.get("auth"))
        .await?;
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
///
/// Adds the uploader's new signatures to devices and master keys of local users; failures are
/// reported per key (see [`cross_signing::upload_signatures`]). Stays on an untyped route: the
/// signed objects are compared with the stored keys as sent.
pub async fn upload_signatures(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let signed = ctx
        .body
        .as_object()
        .ok_or_else(|| Error::bad_json("the body must be an object"))?;
    let failures = cross_signing::upload_signatures(&services, ctx.user(), signed)?;
    Ok(json!({ "failures": failures }))
}
