//! Other servers' users' device lists (server-server API, "Device Management"): applying their
//! `m.device_list_update` and `m.signing_key_update` EDUs to the cache in `RemoteKeys`, fetching
//! a whole list with `GET /_matrix/federation/v1/user/devices/{userId}` when an update cannot be
//! applied, and answering client key queries from the cache.
//!
//! A list is cached only while its user is tracked: joined to a room that has a local member.
//! Every cache write checks that under the commit lock (`Globals::write_with_count`), the lock
//! under which `timeline::commit` drops the lists of users who stopped being tracked.
//! (`Members::servers_in_room` is refreshed just after that lock is released, so a fetch that
//! lands in that moment can still store a list; the next check at query time does not answer it
//! while the user stays untracked.)

use std::{collections::BTreeMap, time::Duration};

use ruma::{OwnedServerName, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    federation::encode,
    service::{
        remote_keys::{RemoteDevice, RemoteUser},
        Services,
    },
    store::Batch,
};

/// Most devices kept from one fetched list.
const MAX_DEVICES: usize = 1000;

/// Whether a user is joined to a room that also has a local member: this server then keeps
/// their device list and tells local users about its changes.
pub fn is_tracked(services: &Services, user_id: &UserId) -> Result<bool> {
    is_tracked_outside(services, user_id, None)
}

/// Whether a user is joined to a room other than `except` that also has a local member.
pub(super) fn is_tracked_outside(
    services: &Services,
    user_id: &UserId,
    except: Option<&RoomId>,
) -> Result<bool> {
    let own = services.globals.server_name();
    for room_id in services.rooms.members.iter_joined_rooms(user_id)? {
        if Some(&*room_id) != except
            && services
                .rooms
                .members
                .servers_in_room(&room_id)?
                .contains(own)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes a change to a user's cached list with a new stream position, unless no local user
/// shares a room with them any more: `fill` runs under the commit lock after that check, so a
/// cache that a membership change just dropped is not written again.
fn write_if_tracked(
    services: &Services,
    user_id: &UserId,
    fill: impl FnOnce(&mut Batch, u64) -> Result<()>,
) -> Result<()> {
    services.globals.write_with_count(|batch, count| {
        if !is_tracked(services, user_id)? {
            return Ok(());
        }
        fill(batch, count)
    })?;
    Ok(())
}

/// One parsed `m.device_list_update`.
struct DeviceListUpdate {
    device_id: String,
    stream_id: u64,
    prev_ids: Vec<u64>,
    /// `None` when the device was deleted.
    device: Option<RemoteDevice>,
}

/// Device keys of a remote device, which must name its user and device: a server may not pass
/// off one device's keys as another's.
fn checked_keys(user_id: &UserId, device_id: &str, keys: Option<&Value>) -> Result<Option<Value>> {
    let Some(keys) = keys.filter(|keys| !keys.is_null()) else {
        return Ok(None);
    };
    if !keys.is_object()
        || keys["user_id"].as_str() != Some(user_id.as_str())
        || keys["device_id"].as_str() != Some(device_id)
    {
        return Err(Error::bad_json(format!(
            "keys of {user_id} device {device_id} name another device"
        )));
    }
    Ok(Some(keys.clone()))
}

fn parse_update(user_id: &UserId, content: &Value) -> Result<DeviceListUpdate> {
    let device_id = content["device_id"]
        .as_str()
        .filter(|id| !id.is_empty() && id.len() <= 255)
        .ok_or_else(|| Error::bad_json("m.device_list_update needs a device_id"))?
        .to_owned();
    let stream_id = content["stream_id"]
        .as_u64()
        .ok_or_else(|| Error::bad_json("m.device_list_update needs a stream_id"))?;
    let prev_ids = match &content["prev_id"] {
        Value::Null => Vec::new(),
        Value::Array(ids) => ids
            .iter()
            .map(|id| id.as_u64().ok_or_else(|| Error::bad_json("bad prev_id")))
            .collect::<Result<_>>()?,
        _ => return Err(Error::bad_json("prev_id must be a list")),
    };
    let device = match content["deleted"].as_bool().unwrap_or(false) {
        true => None,
        false => Some(RemoteDevice {
            keys: checked_keys(user_id, &device_id, content.get("keys"))?,
            device_display_name: content["device_display_name"].as_str().map(str::to_owned),
        }),
    };
    Ok(DeviceListUpdate {
        device_id,
        stream_id,
        prev_ids,
        device,
    })
}

/// Applies an `m.device_list_update` about `user_id` (already checked to be the origin's);
/// returns whether the user's list must be fetched whole ([`resync`]). Ignored for a user no
/// local user shares a room with.
///
/// With a cached list: an update that follows on from it (every `prev_id` is the cached
/// `stream_id`), or restates the update it is at, is applied; an older one is ignored; any other
/// marks the list stale and asks for a resync. Local users sharing a room see the user in
/// `device_lists.changed` when a device changed or the list went stale.
///
/// Without a cached list the list is fetched, and local users are told only when the update
/// names a `prev_id`: an update without one is the first this server hears (a server restates
/// a user's devices to servers that just started sharing a room with them), and no local client
/// can hold a list newer than the tracking that began then (a query caches what it fetches).
pub fn receive_device_list_update(
    services: &Services,
    user_id: &UserId,
    content: &Value,
) -> Result<bool> {
    let update = parse_update(user_id, content)?;
    if !is_tracked(services, user_id)? {
        return Ok(false);
    }
    let cache = &services.remote_keys;
    let mut resync = false;
    let mut changed = false;
    write_if_tracked(services, user_id, |batch, count| {
        let Some(mut record) = cache.get_user(user_id)? else {
            resync = true;
            changed = !update.prev_ids.is_empty();
            if changed {
                super::mark_changed_in_batch(services, batch, user_id, count)?;
            }
            return Ok(());
        };
        let restates =
            update.stream_id == record.stream_id && update.prev_ids == record.last_prev_ids;
        if update.stream_id < record.stream_id
            || (update.stream_id == record.stream_id && !restates)
        {
            return Ok(());
        }
        let follows =
            !update.prev_ids.is_empty() && update.prev_ids.iter().all(|id| *id == record.stream_id);
        if !record.stale && (restates || follows) {
            changed = cache.get_device(user_id, &update.device_id)? != update.device;
            match &update.device {
                Some(device) => {
                    cache.set_device_in_batch(batch, user_id, &update.device_id, device)?
                }
                None => cache.delete_device_in_batch(batch, user_id, &update.device_id),
            }
            record.stream_id = update.stream_id;
            record.last_prev_ids = update.prev_ids.clone();
        } else {
            changed = !record.stale;
            record.stale = true;
            record.pending_stream_id = record.pending_stream_id.max(update.stream_id);
            resync = true;
        }
        cache.set_user_in_batch(batch, user_id, &record)?;
        if changed {
            super::mark_changed_in_batch(services, batch, user_id, count)?;
        }
        Ok(())
    })?;
    if changed {
        super::after_change(services, user_id, &[]);
    }
    Ok(resync)
}

/// A cross-signing key of `user_id` from another server, which must name that user.
fn checked_signing_key(user_id: &UserId, key: Option<&Value>) -> Result<Option<Value>> {
    let Some(key) = key.filter(|key| !key.is_null()) else {
        return Ok(None);
    };
    if !key.is_object() || key["user_id"].as_str() != Some(user_id.as_str()) {
        return Err(Error::bad_json(format!(
            "a cross-signing key of {user_id} names another user"
        )));
    }
    Ok(Some(key.clone()))
}

/// Applies an `m.signing_key_update` about `user_id` (already checked to be the origin's): the
/// cached master and self-signing keys are replaced, and local users sharing a room see the user
/// in `device_lists.changed`. Ignored for a user no local user shares a room with.
pub fn receive_signing_key_update(
    services: &Services,
    user_id: &UserId,
    content: &Value,
) -> Result<()> {
    let master_key = checked_signing_key(user_id, content.get("master_key"))?;
    let self_signing_key = checked_signing_key(user_id, content.get("self_signing_key"))?;
    if !is_tracked(services, user_id)? {
        return Ok(());
    }
    let mut changed = false;
    write_if_tracked(services, user_id, |batch, count| {
        if let Some(mut record) = services.remote_keys.get_user(user_id)? {
            if master_key.is_some() {
                record.master_key = master_key.clone();
            }
            if self_signing_key.is_some() {
                record.self_signing_key = self_signing_key.clone();
            }
            services
                .remote_keys
                .set_user_in_batch(batch, user_id, &record)?;
        }
        super::mark_changed_in_batch(services, batch, user_id, count)?;
        changed = true;
        Ok(())
    })?;
    if changed {
        super::after_change(services, user_id, &[]);
    }
    Ok(())
}

/// A fetched device list: the user's record (not stale) and their devices.
type FetchedList = (RemoteUser, BTreeMap<String, RemoteDevice>);

/// Reads a `/user/devices/{userId}` answer; devices whose keys name another device are kept
/// without keys, and at most [`MAX_DEVICES`] devices are kept.
fn parse_devices_answer(user_id: &UserId, answer: &Value) -> Result<FetchedList> {
    if answer["user_id"].as_str() != Some(user_id.as_str()) {
        return Err(Error::bad_json(format!(
            "the device list of {user_id} names another user"
        )));
    }
    let stream_id = answer["stream_id"]
        .as_u64()
        .ok_or_else(|| Error::bad_json("the device list has no stream_id"))?;
    let mut devices = BTreeMap::new();
    for device in answer["devices"].as_array().into_iter().flatten() {
        let Some(device_id) = device["device_id"].as_str().filter(|id| !id.is_empty()) else {
            continue;
        };
        if devices.len() == MAX_DEVICES {
            tracing::warn!(%user_id, "a remote device list is longer than {MAX_DEVICES}");
            break;
        }
        let keys = checked_keys(user_id, device_id, device.get("keys")).unwrap_or_default();
        let device_display_name = device["device_display_name"].as_str().map(str::to_owned);
        devices.insert(
            device_id.to_owned(),
            RemoteDevice {
                keys,
                device_display_name,
            },
        );
    }
    let user = RemoteUser {
        stream_id,
        master_key: checked_signing_key(user_id, answer.get("master_key")).unwrap_or_default(),
        self_signing_key: checked_signing_key(user_id, answer.get("self_signing_key"))
            .unwrap_or_default(),
        ..RemoteUser::default()
    };
    Ok((user, devices))
}

/// Fetches a remote user's whole device list from their server and caches it while the user is
/// tracked; returns the fetched list. A list that is older than an update announced meanwhile is
/// cached as stale, and one older than an update already applied is not cached.
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub async fn resync(services: &Services, user_id: &UserId) -> Result<FetchedList> {
    let path = format!(
        "/_matrix/federation/v1/user/devices/{}",
        encode(user_id.as_str())
    );
    let answer = services
        .federation_request(user_id.server_name(), http::Method::GET, &path, None)
        .await?;
    let (fetched, devices) = parse_devices_answer(user_id, &answer)?;
    let cache = &services.remote_keys;
    write_if_tracked(services, user_id, |batch, _| {
        let existing = cache.get_user(user_id)?;
        if existing
            .as_ref()
            .is_some_and(|known| !known.stale && known.stream_id > fetched.stream_id)
        {
            return Ok(());
        }
        let pending = existing.map_or(0, |known| known.pending_stream_id);
        let mut record = fetched.clone();
        if pending > fetched.stream_id {
            record.stale = true;
            record.pending_stream_id = pending;
        }
        cache.replace_in_batch(batch, user_id, &record, &devices)
    })?;
    Ok((fetched, devices))
}

/// Adds one user's list to a key query answer: their devices with keys (only those in
/// `wanted_devices` unless it is empty), with the display name in
/// `unsigned.device_display_name`, and their master and self-signing keys.
fn add_to_answer(
    answer: &mut Map<String, Value>,
    user_id: &UserId,
    wanted_devices: &[String],
    (user, devices): &FetchedList,
) {
    let mut user_devices = Map::new();
    for (device_id, device) in devices {
        if !wanted_devices.is_empty() && !wanted_devices.contains(device_id) {
            continue;
        }
        let Some(mut keys) = device.keys.clone() else {
            continue;
        };
        if let Some(name) = &device.device_display_name {
            keys["unsigned"] = json!({ "device_display_name": name });
        }
        user_devices.insert(device_id.clone(), keys);
    }
    let mut add = |field: &str, value: Value| {
        answer
            .entry(field.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("answer fields are objects")
            .insert(user_id.to_string(), value);
    };
    add("device_keys", Value::Object(user_devices));
    if let Some(key) = &user.master_key {
        add("master_keys", key.clone());
    }
    if let Some(key) = &user.self_signing_key {
        add("self_signing_keys", key.clone());
    }
}

/// The part of a client's key query about tracked remote users, taken out of `remote` (users by
/// server, each with the device IDs asked for); the users left in it are for the caller to ask
/// their servers about without caching.
///
/// A user whose cached list is up to date is answered from the cache without a request. Any
/// other tracked user's list is fetched ([`resync`], at most `timeout`); when that fails the
/// server is listed in `failures` and a stale cached list, if any, is answered anyway.
pub async fn query_tracked(
    services: &Services,
    remote: &mut BTreeMap<OwnedServerName, Map<String, Value>>,
    timeout: Duration,
    answer: &mut Map<String, Value>,
    failures: &mut Map<String, Value>,
) -> Result<()> {
    let mut to_fetch: Vec<(OwnedUserId, Vec<String>, Option<FetchedList>)> = Vec::new();
    for users in remote.values_mut() {
        let mut untracked = Map::new();
        for (user, wanted) in std::mem::take(users) {
            let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else {
                continue;
            };
            if !is_tracked(services, &user_id)? {
                untracked.insert(user, wanted);
                continue;
            }
            let wanted_devices: Vec<String> = serde_json::from_value(wanted).unwrap_or_default();
            let cached = match services.remote_keys.get_user(&user_id)? {
                Some(record) => Some((record, services.remote_keys.iter_devices(&user_id)?)),
                None => None,
            };
            match cached {
                Some(list) if !list.0.stale => {
                    add_to_answer(answer, &user_id, &wanted_devices, &list)
                }
                cached => to_fetch.push((user_id, wanted_devices, cached)),
            }
        }
        *users = untracked;
    }
    remote.retain(|_, users| !users.is_empty());
    let fetches = to_fetch
        .into_iter()
        .map(|(user_id, wanted, cached)| async move {
            let fetched = tokio::time::timeout(timeout, resync(services, &user_id)).await;
            (user_id, wanted, cached, fetched)
        });
    for (user_id, wanted, cached, fetched) in futures_util::future::join_all(fetches).await {
        match fetched {
            Ok(Ok(list)) => add_to_answer(answer, &user_id, &wanted, &list),
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(%user_id, %error, "fetching a remote device list failed");
                failures.insert(user_id.server_name().to_string(), json!({}));
                if let Some(stale) = &cached {
                    add_to_answer(answer, &user_id, &wanted, stale);
                }
            }
        }
    }
    Ok(())
}
