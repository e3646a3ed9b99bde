//! Cross-signing: uploading a user's signing keys and signatures of devices and keys.

use std::sync::Arc;

use ruma::UserId;
use serde_json::{json, Map, Value};

use super::{account::check_uiaa, keys::object_field};
use crate::{
    error::{Error, Result},
    http::{Ctx, HandlerResult},
    service::{device_lists, keys::CROSS_SIGNING_KINDS, Services},
};

/// The body field that carries each kind of cross-signing key.
fn field_of(kind: &str) -> String {
    format!("{kind}_key")
}

/// Checks a cross-signing key's shape: the user's own, with the right usage and one key.
fn check_signing_key(user_id: &UserId, kind: &str, signing_key: &Value) -> Result<()> {
    let field = field_of(kind);
    if signing_key.get("user_id").and_then(Value::as_str) != Some(user_id.as_str()) {
        return Err(Error::invalid_param(format!(
            "{field} must belong to {user_id}"
        )));
    }
    let usage_ok = signing_key
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|usage| usage.iter().any(|entry| entry == kind));
    if !usage_ok {
        return Err(Error::invalid_param(format!(
            "{field} must have usage {kind}"
        )));
    }
    if signing_key
        .get("keys")
        .and_then(Value::as_object)
        .is_none_or(|keys| keys.len() != 1)
    {
        return Err(Error::invalid_param(format!(
            "{field} must hold exactly one key"
        )));
    }
    Ok(())
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`
///
/// UIA with `m.login.password`, except when the user has no master key yet or the request
/// only repeats the stored keys (spec v1.11). A self-signing or user-signing key needs a
/// master key, stored or in the same request (`400 M_MISSING_PARAM`), and its signature
/// (`400 M_INVALID_SIGNATURE`).
pub async fn upload_cross_signing_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user_id = ctx.user();
    let mut uploaded = Vec::new();
    for kind in CROSS_SIGNING_KINDS {
        if let Some(signing_key) = object_field(&ctx.body, &field_of(kind))? {
            let signing_key = Value::Object(signing_key.clone());
            check_signing_key(user_id, kind, &signing_key)?;
            uploaded.push((kind, signing_key));
        }
    }
    let stored_master = services.keys.get_cross_signing_key(user_id, "master")?;
    let master = uploaded
        .iter()
        .find(|(kind, _)| *kind == "master")
        .map(|(_, master)| master.clone())
        .or_else(|| stored_master.clone());
    let Some(master) = master else {
        if uploaded.is_empty() {
            return Ok(json!({}));
        }
        return Err(Error::missing_param("no master signing key is available"));
    };
    // The self-signing and user-signing keys must carry the master key's signature.
    let (master_key_id, master_public) = master["keys"]
        .as_object()
        .and_then(|keys| keys.iter().next())
        .map(|(key_id, public)| {
            (
                key_id.clone(),
                public.as_str().unwrap_or_default().to_owned(),
            )
        })
        .ok_or_else(|| Error::invalid_param("the master key holds no key"))?;
    for (kind, signing_key) in &uploaded {
        if *kind != "master"
            && crate::crypto::verify_json_signature(
                user_id.as_str(),
                &master_key_id,
                &master_public,
                signing_key,
            )
            .is_err()
        {
            return Err(Error::custom(
                "M_INVALID_SIGNATURE",
                format!("{} is not signed by the master key", field_of(kind)),
            ));
        }
    }
    let mut replaces = false;
    for (kind, signing_key) in &uploaded {
        match services.keys.get_cross_signing_key(user_id, kind)? {
            Some(stored) if stored["keys"] == signing_key["keys"] => {}
            Some(_) => replaces = true,
            None => replaces |= stored_master.is_some(),
        }
    }
    if replaces {
        check_uiaa(
            &services,
            ctx.body.get("auth"),
            &[&["m.login.password"]],
            Some(user_id),
        )?;
    }
    let mut destinations = Vec::new();
    services.globals.write_with_count(|batch, count| {
        let mut content = json!({ "user_id": user_id });
        for (kind, signing_key) in &uploaded {
            services
                .keys
                .set_cross_signing_key_in_batch(batch, user_id, kind, signing_key);
            if *kind != "user_signing" {
                content[field_of(kind)] = signing_key.clone();
            }
        }
        let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
        destinations = device_lists::announce_in_batch(&services, batch, count, user_id, &edu)?;
        Ok(())
    })?;
    device_lists::after_change(&services, user_id, &destinations);
    Ok(json!({}))
}

/// The object without `signatures` and `unsigned`: what a signature covers.
fn signed_part(object: &Value) -> Value {
    let mut part = object.clone();
    if let Some(fields) = part.as_object_mut() {
        fields.remove("signatures");
        fields.remove("unsigned");
    }
    part
}

/// Checks the signer's signature `signature_id` (`ed25519:<device ID or public key>`) on
/// `object` with the signer's device key or cross-signing key of that ID.
fn check_signature(
    services: &Services,
    signer: &UserId,
    signature_id: &str,
    object: &Value,
) -> std::result::Result<(), String> {
    let lookup = || -> Result<Option<String>> {
        let device = signature_id.strip_prefix("ed25519:").unwrap_or_default();
        let mut candidates = vec![services.keys.get_device_keys(signer, device)?];
        for kind in CROSS_SIGNING_KINDS {
            candidates.push(services.keys.get_cross_signing_key(signer, kind)?);
        }
        Ok(candidates
            .into_iter()
            .flatten()
            .find_map(|key| key["keys"][signature_id].as_str().map(str::to_owned)))
    };
    let public_key = lookup()
        .map_err(|_| "the signing key could not be read".to_owned())?
        .ok_or_else(|| format!("{signer} has no key {signature_id}"))?;
    crate::crypto::verify_json_signature(signer.as_str(), signature_id, &public_key, object)
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
///
/// Adds the uploader's new signatures to devices and master keys of local users, after checking
/// each against the uploader's device or cross-signing key it names; the signed object must
/// equal the stored one. Failures are reported per key: `M_NOT_FOUND` for an unknown key (and
/// for remote users' keys, which this server does not store), `M_INVALID_SIGNATURE` for an
/// object that differs from the stored key, carries no signature by the uploader, or a
/// signature that does not verify.
pub async fn upload_signatures(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let signer = ctx.user();
    let body = ctx
        .body
        .as_object()
        .ok_or_else(|| Error::bad_json("the body must be an object"))?;
    let mut failures = Map::new();
    let mut updates = Vec::new();
    for (user, signed) in body {
        let signed = signed
            .as_object()
            .ok_or_else(|| Error::bad_json(format!("signatures for {user} must be an object")))?;
        let mut fail = |key_id: &str, errcode: &str, error: &str| {
            failures.entry(user.clone()).or_insert_with(|| json!({}))[key_id] =
                json!({ "errcode": errcode, "error": error });
        };
        let target = match ruma::OwnedUserId::try_from(user.as_str()) {
            Ok(target) if target.server_name() == services.globals.server_name() => target,
            _ => {
                for key_id in signed.keys() {
                    fail(key_id, "M_NOT_FOUND", "no such local user");
                }
                continue;
            }
        };
        for (key_id, object) in signed {
            let stored = match services.keys.get_device_keys(&target, key_id)? {
                Some(device) => Some((Some(key_id.clone()), device)),
                None => services
                    .keys
                    .get_cross_signing_key(&target, "master")?
                    .filter(|master| master["keys"].get(format!("ed25519:{key_id}")).is_some())
                    .map(|master| (None, master)),
            };
            let Some((device_id, mut stored)) = stored else {
                fail(key_id, "M_NOT_FOUND", "unknown key");
                continue;
            };
            let Some(new_signatures) = object["signatures"][signer.as_str()].as_object() else {
                fail(
                    key_id,
                    "M_INVALID_SIGNATURE",
                    "no signature by the uploader",
                );
                continue;
            };
            if signed_part(object) != signed_part(&stored) {
                fail(
                    key_id,
                    "M_INVALID_SIGNATURE",
                    "the signed object differs from the stored key",
                );
                continue;
            }
            // Only signatures the stored key does not already carry are checked and added.
            let fresh: Vec<(&String, &Value)> = new_signatures
                .iter()
                .filter(|(signature_id, signature)| {
                    stored["signatures"][signer.as_str()].get(signature_id.as_str())
                        != Some(*signature)
                })
                .collect();
            let mut invalid = None;
            for (signature_id, _) in &fresh {
                if let Err(reason) = check_signature(&services, signer, signature_id, object) {
                    invalid = Some(reason);
                    break;
                }
            }
            if let Some(reason) = invalid {
                fail(key_id, "M_INVALID_SIGNATURE", &reason);
                continue;
            }
            if fresh.is_empty() {
                continue;
            }
            if !stored["signatures"].is_object() {
                stored["signatures"] = json!({});
            }
            let mine = stored["signatures"]
                .as_object_mut()
                .expect("just made an object")
                .entry(signer.to_string())
                .or_insert_with(|| json!({}));
            for (signature_id, signature) in fresh {
                mine[signature_id] = signature.clone();
            }
            updates.push((target.clone(), device_id, stored));
        }
    }
    // One batch per update: the sender's queue takes one EDU per destination and position.
    for (target, device_id, stored) in &updates {
        let mut destinations = Vec::new();
        services
            .globals
            .write_with_count(|batch, count| {
                destinations = match device_id {
                    Some(device_id) => {
                        services
                            .keys
                            .set_device_keys_in_batch(batch, target, device_id, stored);
                        let state = device_lists::DeviceState {
                            keys: Some(stored.clone()),
                            display_name: services
                                .users
                                .get_device(target, device_id)?
                                .and_then(|device| device.display_name),
                        };
                        device_lists::announce_devices_in_batch(
                            &services,
                            batch,
                            count,
                            target,
                            &[(device_id.clone(), Some(state))],
                        )?
                    }
                    None => {
                        services
                            .keys
                            .set_cross_signing_key_in_batch(batch, target, "master", stored);
                        let edu = json!({ "edu_type": "m.signing_key_update", "content": { "user_id": target, "master_key": stored } });
                        device_lists::announce_in_batch(&services, batch, count, target, &edu)?
                    }
                };
                Ok(())
            })?;
        device_lists::after_change(&services, target, &destinations);
    }
    Ok(json!({ "failures": failures }))
}
