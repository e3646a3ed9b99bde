//! Cross-signing: a user's master, self-signing and user-signing keys, and signatures that
//! users add to devices and master keys, each change written in one batch with its
//! announcement.

use ruma::{OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    service::{device_lists, keys::CROSS_SIGNING_KINDS, uiaa, Services},
};

/// The request field that carries each kind of cross-signing key.
pub fn field_of(kind: &str) -> String {
    format!("{kind}_key")
}

/// Stores a user's cross-signing keys (`(kind, key)` pairs) and announces the master and
/// self-signing keys in an `m.signing_key_update`.
///
/// UIA with `m.login.password`, except when the user has no master key yet or the request
/// only repeats the stored keys (spec v1.11). A self-signing or user-signing key needs a
/// master key, stored or in the same request (`400 M_MISSING_PARAM`), and its signature
/// (`400 M_INVALID_SIGNATURE`).
pub async fn upload_signing_keys(
    services: &Services,
    user_id: &UserId,
    uploaded: &[(&str, Value)],
    auth: Option<&Value>,
) -> Result<()> {
    for (kind, signing_key) in uploaded {
        check_signing_key(user_id, kind, signing_key)?;
    }
    let stored_master = services.keys.get_cross_signing_key(user_id, "master")?;
    let master = uploaded
        .iter()
        .find(|(kind, _)| *kind == "master")
        .map(|(_, master)| master)
        .or(stored_master.as_ref());
    let Some(master) = master else {
        if uploaded.is_empty() {
            return Ok(());
        }
        return Err(Error::missing_param("no master signing key is available"));
    };
    check_master_signatures(user_id, master, uploaded)?;
    let mut replaces = false;
    for (kind, signing_key) in uploaded {
        match services.keys.get_cross_signing_key(user_id, kind)? {
            Some(stored) if stored["keys"] == signing_key["keys"] => {}
            Some(_) => replaces = true,
            None => replaces |= stored_master.is_some(),
        }
    }
    if replaces {
        uiaa::check_password(services, auth, user_id).await?;
    }
    let mut destinations = Vec::new();
    services.globals.write_with_count(|batch, count| {
        let mut content = json!({ "user_id": user_id });
        for (kind, signing_key) in uploaded {
            services
                .keys
                .set_cross_signing_key_in_batch(batch, user_id, kind, signing_key);
            if *kind != "user_signing" {
                content[field_of(kind)] = signing_key.clone();
            }
        }
        let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
        destinations = device_lists::announce_in_batch(services, batch, count, user_id, &edu)?;
        Ok(())
    })?;
    device_lists::after_change(services, user_id, &destinations);
    Ok(())
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

/// The self-signing and user-signing keys must carry the master key's signature.
fn check_master_signatures(
    user_id: &UserId,
    master: &Value,
    uploaded: &[(&str, Value)],
) -> Result<()> {
    let (master_key_id, master_public) = master["keys"]
        .as_object()
        .and_then(|keys| keys.iter().next())
        .map(|(key_id, public)| (key_id.clone(), public.as_str().unwrap_or_default()))
        .ok_or_else(|| Error::invalid_param("the master key holds no key"))?;
    for (kind, signing_key) in uploaded {
        if *kind != "master"
            && crate::crypto::verify_json_signature(
                user_id.as_str(),
                &master_key_id,
                master_public,
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
    Ok(())
}

/// A stored key that gains signatures: the device it belongs to (`None`: the master key) and
/// the key with the signatures added.
struct Signed {
    target: OwnedUserId,
    device_id: Option<String>,
    key: Value,
}

/// Adds `signer`'s new signatures (`{user ID: {key ID: signed object}}`) to devices and master
/// keys of local users, after checking each against the signer's device or cross-signing key it
/// names; the signed object must equal the stored one. Returns the failures per user and key:
/// `M_NOT_FOUND` for an unknown key (and for remote users' keys, which this server does not
/// store), `M_INVALID_SIGNATURE` for an object that differs from the stored key, carries no
/// signature by the uploader, or a signature that does not verify.
pub fn upload_signatures(
    services: &Services,
    signer: &UserId,
    signed: &Map<String, Value>,
) -> Result<Map<String, Value>> {
    let mut failures = Map::new();
    let mut updates = Vec::new();
    for (user, objects) in signed {
        let objects = objects
            .as_object()
            .ok_or_else(|| Error::bad_json(format!("signatures for {user} must be an object")))?;
        let mut fail = |key_id: &str, (errcode, error): (&str, String)| {
            failures.entry(user.clone()).or_insert_with(|| json!({}))[key_id] =
                json!({ "errcode": errcode, "error": error });
        };
        let target = match OwnedUserId::try_from(user.as_str()) {
            Ok(target) if target.server_name() == services.globals.server_name() => target,
            _ => {
                for key_id in objects.keys() {
                    fail(key_id, ("M_NOT_FOUND", "no such local user".to_owned()));
                }
                continue;
            }
        };
        for (key_id, object) in objects {
            match add_signatures(services, signer, &target, key_id, object)? {
                Ok(Some(update)) => updates.push(update),
                Ok(None) => {}
                Err(failure) => fail(key_id, failure),
            }
        }
    }
    // One batch per update: the sender's queue takes one EDU per destination and position.
    for update in &updates {
        store_signed(services, update)?;
    }
    Ok(failures)
}

/// The stored key `key_id` of `target` with the signer's new signatures from `object`, `None`
/// when it carries none, or the failure's `errcode` and message.
fn add_signatures(
    services: &Services,
    signer: &UserId,
    target: &UserId,
    key_id: &str,
    object: &Value,
) -> Result<std::result::Result<Option<Signed>, (&'static str, String)>> {
    let invalid = |message: &str| Ok(Err(("M_INVALID_SIGNATURE", message.to_owned())));
    let stored = match services.keys.get_device_keys(target, key_id)? {
        Some(device) => Some((Some(key_id.to_owned()), device)),
        None => services
            .keys
            .get_cross_signing_key(target, "master")?
            .filter(|master| master["keys"].get(format!("ed25519:{key_id}")).is_some())
            .map(|master| (None, master)),
    };
    let Some((device_id, mut stored)) = stored else {
        return Ok(Err(("M_NOT_FOUND", "unknown key".to_owned())));
    };
    let Some(new_signatures) = object["signatures"][signer.as_str()].as_object() else {
        return invalid("no signature by the uploader");
    };
    if signed_part(object) != signed_part(&stored) {
        return invalid("the signed object differs from the stored key");
    }
    // Only signatures the stored key does not already carry are checked and added.
    let fresh: Vec<(&String, &Value)> = new_signatures
        .iter()
        .filter(|(signature_id, signature)| {
            stored["signatures"][signer.as_str()].get(signature_id.as_str()) != Some(*signature)
        })
        .collect();
    for (signature_id, _) in &fresh {
        if let Err(reason) = check_signature(services, signer, signature_id, object) {
            return invalid(&reason);
        }
    }
    if fresh.is_empty() {
        return Ok(Ok(None));
    }
    let mine = super::upload::signatures_of(&mut stored, signer.as_str());
    for (signature_id, signature) in fresh {
        mine[signature_id] = signature.clone();
    }
    Ok(Ok(Some(Signed {
        target: target.to_owned(),
        device_id,
        key: stored,
    })))
}

/// Writes a key with new signatures and announces it: a device's keys in an
/// `m.device_list_update`, a master key in an `m.signing_key_update`.
fn store_signed(services: &Services, update: &Signed) -> Result<()> {
    let Signed {
        target,
        device_id,
        key,
    } = update;
    let mut destinations = Vec::new();
    services
        .globals
        .write_with_count(|batch, count| {
            destinations = match device_id {
                Some(device_id) => {
                    services
                        .keys
                        .set_device_keys_in_batch(batch, target, device_id, key);
                    device_lists::announce_device_keys_in_batch(
                        services,
                        batch,
                        count,
                        target,
                        device_id,
                        key.clone(),
                    )?
                }
                None => {
                    services
                        .keys
                        .set_cross_signing_key_in_batch(batch, target, "master", key);
                    let edu = json!({ "edu_type": "m.signing_key_update", "content": { "user_id": target, "master_key": key } });
                    device_lists::announce_in_batch(services, batch, count, target, &edu)?
                }
            };
            Ok(())
        })?;
    device_lists::after_change(services, target, &destinations);
    Ok(())
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
