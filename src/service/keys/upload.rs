//! `/keys/upload`: a device's identity keys, one-time keys and fallback keys, written in one
//! batch with the device list update that announces new identity keys.

use std::collections::BTreeMap;

use ruma::UserId;
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    service::{device_lists, Services},
};

/// What one `/keys/upload` carries; each part is optional.
#[derive(Default)]
pub struct Upload {
    pub device_keys: Option<Map<String, Value>>,
    pub one_time_keys: Option<Map<String, Value>>,
    pub fallback_keys: Option<Map<String, Value>>,
}

/// Stores a device's keys and returns how many one-time keys of each algorithm it has left.
///
/// Device keys must name the uploading user and device; new identity keys replace the stored
/// ones, and signatures added by others are kept while the keys stay the same. A change is
/// announced to users and servers sharing a room. Everything lands in one batch.
pub fn upload(
    services: &Services,
    (user_id, device_id): (&UserId, &str),
    upload: &Upload,
) -> Result<BTreeMap<String, u64>> {
    check(user_id, device_id, upload)?;
    let mut destinations = None;
    services.globals.write_with_count(|batch, count| {
        if let Some(new) = &upload.device_keys {
            let mut new = Value::Object(new.clone());
            let existing = services.keys.get_device_keys(user_id, device_id)?;
            // New identity keys replace the old ones (as Synapse does: a client that lost its
            // keys re-creates them; other users' clients see the change and warn about it);
            // signatures others made stay only while the keys they signed stay.
            if let Some(existing) = existing.as_ref().filter(|old| old["keys"] == new["keys"]) {
                merge_signatures(&mut new, existing);
            }
            if existing.as_ref() != Some(&new) {
                services
                    .keys
                    .set_device_keys_in_batch(batch, user_id, device_id, &new);
                destinations = Some(device_lists::announce_device_keys_in_batch(
                    services, batch, count, user_id, device_id, new,
                )?);
            }
        }
        if let Some(keys) = &upload.one_time_keys {
            services
                .keys
                .add_one_time_keys_in_batch(batch, user_id, device_id, keys, count)?;
        }
        if let Some(keys) = &upload.fallback_keys {
            services
                .keys
                .set_fallback_keys_in_batch(batch, user_id, device_id, keys)?;
        }
        Ok(())
    })?;
    if let Some(destinations) = destinations {
        device_lists::after_change(services, user_id, &destinations);
    }
    services.keys.count_one_time_keys(user_id, device_id)
}

/// Device keys must be those of the uploading device and carry keys and algorithms.
/// Checks an upload without storing anything: device keys naming the user and device, with
/// keys and algorithms; one-time and fallback key IDs of the form `algorithm:key_id`.
pub fn check(user_id: &UserId, device_id: &str, upload: &Upload) -> Result<()> {
    if let Some(keys) = &upload.device_keys {
        check_device_keys(user_id, device_id, keys)?;
    }
    for (field, keys) in [
        ("one_time_keys", &upload.one_time_keys),
        ("fallback_keys", &upload.fallback_keys),
    ] {
        if let Some(keys) = keys {
            check_key_ids(field, keys)?;
        }
    }
    Ok(())
}

fn check_device_keys(user_id: &UserId, device_id: &str, keys: &Map<String, Value>) -> Result<()> {
    if keys.get("user_id").and_then(Value::as_str) != Some(user_id.as_str())
        || keys.get("device_id").and_then(Value::as_str) != Some(device_id)
    {
        return Err(Error::invalid_param(format!(
            "device_keys must be those of {user_id} device {device_id}"
        )));
    }
    if !keys.get("keys").is_some_and(Value::is_object)
        || !keys.get("algorithms").is_some_and(Value::is_array)
    {
        return Err(Error::bad_json("device_keys needs keys and algorithms"));
    }
    Ok(())
}

/// Checks that every key ID of a one-time or fallback key map is `algorithm:key_id`.
fn check_key_ids(field: &str, keys: &Map<String, Value>) -> Result<()> {
    for (key_id, key) in keys {
        let valid = key_id
            .split_once(':')
            .is_some_and(|(algorithm, id)| !algorithm.is_empty() && !id.is_empty());
        if !valid || !(key.is_object() || key.is_string()) {
            return Err(Error::bad_json(format!(
                "{field} entry {key_id} is not an algorithm:key_id with a key"
            )));
        }
    }
    Ok(())
}

/// Copies signatures from `existing` that `new` lacks (signatures others uploaded for this key).
fn merge_signatures(new: &mut Value, existing: &Value) {
    let Some(old) = existing.get("signatures").and_then(Value::as_object) else {
        return;
    };
    for (signer, keys) in old {
        let Some(keys) = keys.as_object() else {
            continue;
        };
        let target = signatures_of(new, signer);
        for (key_id, signature) in keys {
            if target.get(key_id).is_none() {
                target[key_id] = signature.clone();
            }
        }
    }
}

/// The signatures of `signer` on a key (`signatures.<signer>`), made an object if missing.
pub(super) fn signatures_of<'a>(key: &'a mut Value, signer: &str) -> &'a mut Value {
    if !key.get("signatures").is_some_and(Value::is_object) {
        key["signatures"] = json!({});
    }
    key["signatures"]
        .as_object_mut()
        .expect("just made an object")
        .entry(signer.to_owned())
        .or_insert_with(|| json!({}))
}
