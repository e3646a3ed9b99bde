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
/// Untyped: ruma's `AuthData` refuses a password stage with the legacy top-level `user` as
/// `M_BAD_JSON`, which `uiaa::check_password` accepts (as on `DELETE /devices/{deviceId}`).
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
/// reported per key (see [`cross_signing::upload_signatures`]).
/// Untyped: ruma's request refuses the whole body as `M_BAD_JSON` when a key is not a user ID
/// (reported as `M_NOT_FOUND` in `failures` here), and its `Failure` has no public constructor.
pub async fn upload_signatures(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let signed = ctx
        .body
        .as_object()
        .ok_or_else(|| Error::bad_json("the body must be an object"))?;
    let failures = cross_signing::upload_signatures(&services, ctx.user(), signed)?;
    Ok(json!({ "failures": failures }))
}
