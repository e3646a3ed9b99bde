//! Who hears about whose keys: the end-to-end encryption part of `/sync` (`to_device`,
//! `device_lists`, one-time key counts), and announcing a user's key changes to the users and
//! servers that share a room with them.
//!
//! Who hears about whose keys: the end-to-end fields of `/sync` (one call from `sync::build`; a user who joined a room is in their own `changed`), `/keys/changes`, announcing a local user's change (the key-change entry and the EDUs in the same batch, then waking the syncs of everyone sharing a room), and answering key queries and claims for local users (used by the client and the federation handlers alike).
//! Outgoing: a new device (registration, login), a renamed or deleted device, and new keys or signatures each send an `m.device_list_update` with the user's next `stream_id` and the previous one as `prev_id`, through the durable federation queue (so it survives restarts of either side); cross-signing keys send `m.signing_key_update`.
//! `device_lists/membership.rs`, called once from `commit`'s batch for member events: a local user's join restates every device (at the current `stream_id`, no `prev_id`) to the room's servers that shared no room with the user, and a membership that ends drops the cached lists of remote users who no longer share a room with a local user.
//! `device_lists/remote.rs`: received updates are applied to the cache of remote lists when their `prev_id` is the cached `stream_id`; otherwise (a gap, or nothing cached) the list is fetched whole with `/user/devices/{userId}` in the background; local users see the remote user in `changed` when a device changed or the list went stale (not for the first update without `prev_id` that fills an empty cache: no local client holds a newer list then).
//! Client key queries answer tracked users from an up-to-date cache without a request, fetch (and cache) the others, and fall back to a stale list (listing the server in `failures`) when the fetch fails; untracked users are asked with `/user/keys/query` and not cached.

pub mod edus;
pub mod membership;
pub mod remote;

use std::collections::{BTreeMap, BTreeSet};

use ruma::{events::room::member::MembershipState, OwnedServerName, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::Result,
    service::{notify::Topic, Services},
    store::Batch,
};

/// Every user (local or remote) joined to a room that `user_id` is joined to, `user_id` included.
pub fn iter_shared_users(services: &Services, user_id: &UserId) -> Result<BTreeSet<OwnedUserId>> {
    let mut users = BTreeSet::from([user_id.to_owned()]);
    for room_id in services.rooms.members.iter_joined_rooms(user_id)? {
        for (member, _) in services
            .rooms
            .members
            .iter_members(&room_id, Some(MembershipState::Join))?
        {
            users.insert(member);
        }
    }
    Ok(users)
}

/// Users whose device lists a user must refresh, and users the user no longer shares a room
/// with, for changes after `from` up to `to`.
///
/// Changed: users sharing a room whose keys changed, users who started sharing a room (either
/// side joined), and the user themself after joining a room. Left: users who share no room any
/// more after a membership ended.
pub fn iter_device_list_changes(
    services: &Services,
    user_id: &UserId,
    from: u64,
    to: u64,
) -> Result<(BTreeSet<OwnedUserId>, BTreeSet<OwnedUserId>)> {
    let mut changed = BTreeSet::new();
    let mut left = BTreeSet::new();
    // Read once something needs it: most syncs see neither a key change nor a membership change.
    let mut shared = None;
    for changed_user in services.keys.iter_changed_users(from, to)? {
        if shared_users(services, user_id, &mut shared)?.contains(&changed_user) {
            changed.insert(changed_user);
        }
    }
    let in_range = |count: u64| count > from && count <= to;
    for membership in services.rooms.members.iter_rooms(user_id)? {
        let room_id = &membership.room_id;
        let own_change = in_range(membership.count);
        if !own_change && membership.membership != MembershipState::Join {
            continue;
        }
        // The user's other devices learn about the room's encryption partners, and the
        // partners' servers about this user's devices: the user is in their own list (as
        // Synapse does; Complement's TestDeviceListsUpdateOverFederation expects it).
        if own_change && membership.membership == MembershipState::Join {
            changed.insert(user_id.to_owned());
        }
        if !own_change && !members_changed_in(services, room_id, from, to)? {
            continue;
        }
        for (member, state) in services.rooms.members.iter_members(room_id, None)? {
            if member == user_id {
                continue;
            }
            let their_change = !own_change
                && services
                    .rooms
                    .members
                    .get_user_room(&member, room_id)?
                    .is_some_and(|theirs| in_range(theirs.count));
            if !own_change && !their_change {
                continue;
            }
            if shared_users(services, user_id, &mut shared)?.contains(&member) {
                if own_change || state == MembershipState::Join {
                    changed.insert(member);
                }
            } else {
                left.insert(member);
            }
        }
    }
    Ok((changed, left))
}

/// The users sharing a room with `user_id`, read into `cache` on first use.
fn shared_users<'a>(
    services: &Services,
    user_id: &UserId,
    cache: &'a mut Option<BTreeSet<OwnedUserId>>,
) -> Result<&'a BTreeSet<OwnedUserId>> {
    if cache.is_none() {
        *cache = Some(iter_shared_users(services, user_id)?);
    }
    Ok(cache.get_or_insert_default())
}

/// Whether a room's membership may have changed after `from` up to `to`: the room's newest
/// membership change is read from one index entry; a room indexed before that entry existed
/// falls back to whether it has any timeline event in the range (others' membership changes are
/// timeline events), so that a quiet room costs one seek instead of a read per member.
fn members_changed_in(
    services: &Services,
    room_id: &ruma::RoomId,
    from: u64,
    to: u64,
) -> Result<bool> {
    match services.rooms.members.last_change(room_id)? {
        Some(last) if last <= from => Ok(false),
        _ => has_events_in(services, room_id, from, to),
    }
}

/// Whether a room has a timeline event after `from` and at or before `to`.
fn has_events_in(services: &Services, room_id: &ruma::RoomId, from: u64, to: u64) -> Result<bool> {
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(false);
    };
    match services
        .rooms
        .timeline
        .iter_before(shortroomid, to.saturating_add(1))
        .next()
    {
        Some(entry) => Ok(entry?.0 > from),
        None => Ok(false),
    }
}

/// The `/sync` fields for end-to-end encryption (`to_device`, `device_lists`, one-time key counts
/// and unused fallback key types), and whether they hold anything a long-poll should return
/// for. Device lists are only sent on incremental syncs.
pub fn sync_fields(
    services: &Services,
    (user_id, device_id): (&UserId, &str),
    since: Option<u64>,
    next: u64,
) -> Result<(Map<String, Value>, bool)> {
    let to_device = services
        .to_device
        .take_for_sync(user_id, device_id, since, next)?;
    let (changed, left) = match since {
        Some(since) => iter_device_list_changes(services, user_id, since, next)?,
        None => Default::default(),
    };
    let one_time_key_counts = services.keys.count_one_time_keys(user_id, device_id)?;
    let fallback_types = services
        .keys
        .iter_unused_fallback_key_types(user_id, device_id)?;
    let has_updates = !to_device.is_empty() || !changed.is_empty() || !left.is_empty();
    let mut fields = Map::new();
    fields.insert("to_device".into(), json!({ "events": to_device }));
    fields.insert(
        "device_lists".into(),
        json!({ "changed": changed, "left": left }),
    );
    fields.insert(
        "device_one_time_keys_count".into(),
        json!(one_time_key_counts),
    );
    fields.insert(
        "device_unused_fallback_key_types".into(),
        json!(fallback_types),
    );
    Ok((fields, has_updates))
}

/// The other servers that share a room with a local user.
pub fn iter_remote_servers(services: &Services, user_id: &UserId) -> Result<Vec<OwnedServerName>> {
    let mut servers = BTreeSet::new();
    for room_id in services.rooms.members.iter_joined_rooms(user_id)? {
        servers.extend(
            services
                .rooms
                .members
                .servers_in_room(&room_id)?
                .iter()
                .cloned(),
        );
    }
    servers.remove(services.globals.server_name());
    Ok(servers.into_iter().collect())
}

/// Records in `batch` (which carries stream position `count`) that a user's keys changed, and
/// for a local user queues `edu` (an `m.signing_key_update`) to every server sharing a room;
/// returns those servers for [`after_change`]. Device changes go through
/// [`announce_devices_in_batch`] instead, which chains them.
pub fn announce_in_batch(
    services: &Services,
    batch: &mut Batch,
    count: u64,
    user_id: &UserId,
    edu: &Value,
) -> Result<Vec<OwnedServerName>> {
    mark_changed_in_batch(services, batch, user_id, count)?;
    if user_id.server_name() != services.globals.server_name() {
        return Ok(Vec::new());
    }
    let destinations = iter_remote_servers(services, user_id)?;
    services
        .sending
        .queue_edu_in_batch(batch, &destinations, count, edu);
    Ok(destinations)
}

/// Records in `batch` (stream position `count`) that a user's devices or keys changed: for
/// `/sync` and `/keys/changes`, and for the appservices that follow device lists (MSC3202).
pub fn mark_changed_in_batch(
    services: &Services,
    batch: &mut Batch,
    user_id: &UserId,
    count: u64,
) -> Result<()> {
    services.keys.mark_changed_in_batch(batch, user_id, count)?;
    services
        .appservices
        .queue_device_change_in_batch(batch, count, user_id)
}

/// After the batch of [`announce_in_batch`] is written: wakes the syncs of everyone sharing a room
/// with the user, the federation sender and the appservice workers.
pub fn after_change(services: &Services, user_id: &UserId, destinations: &[OwnedServerName]) {
    services.appservices.wake_all();
    services.notifier.wake(Topic::User(user_id.to_string()));
    if let Ok(rooms) = services.rooms.members.iter_joined_rooms(user_id) {
        for room_id in rooms {
            services.notifier.wake(Topic::Room(room_id.to_string()));
        }
    }
    services.sending.wake(destinations);
}

/// What an `m.device_list_update` says about a device that still exists.
pub struct DeviceState {
    /// The device's identity keys, once it uploaded them.
    pub keys: Option<Value>,
    pub display_name: Option<String>,
}

/// The current state of a local device, or `None` once it is gone.
pub fn get_device_state(
    services: &Services,
    user_id: &UserId,
    device_id: &str,
) -> Result<Option<DeviceState>> {
    let Some(device) = services.users.get_device(user_id, device_id)? else {
        return Ok(None);
    };
    Ok(Some(DeviceState {
        keys: services.keys.get_device_keys(user_id, device_id)?,
        display_name: device.display_name,
    }))
}

/// Queues in `batch` (stream position `count`) the next `m.device_list_update` of a local user
/// for each device given (`None`: deleted) to `destinations`.
///
/// Each update gets the user's next `stream_id` (one more than the last, kept in `Keys`) and
/// names the one before it in `prev_id`, whoever it was sent to: a server that missed one (it
/// was down, or did not share a room then) sees an unknown `prev_id` and fetches the whole list
/// (server-server API, "Device Management"). The batch must be written by
/// `Globals::write_with_count`, whose lock keeps the chain in order.
pub fn queue_device_updates_in_batch(
    services: &Services,
    batch: &mut Batch,
    count: u64,
    user_id: &UserId,
    devices: &[(String, Option<DeviceState>)],
    destinations: &[OwnedServerName],
) -> Result<()> {
    let mut last = services.keys.get_device_list_id(user_id)?;
    let mut edus = Vec::with_capacity(devices.len());
    for (device_id, state) in devices {
        let stream_id = last.unwrap_or(0) + 1;
        let mut content = json!({
            "user_id": user_id,
            "device_id": device_id,
            "stream_id": stream_id,
            "prev_id": last.into_iter().collect::<Vec<_>>(),
            "deleted": state.is_none(),
        });
        if let Some(state) = state {
            if let Some(keys) = &state.keys {
                content["keys"] = keys.clone();
            }
            if let Some(name) = &state.display_name {
                content["device_display_name"] = json!(name);
            }
        }
        edus.push(json!({ "edu_type": "m.device_list_update", "content": content }));
        last = Some(stream_id);
    }
    if let Some(last) = last {
        services
            .keys
            .set_device_list_id_in_batch(batch, user_id, last);
    }
    services
        .sending
        .queue_edus_in_batch(batch, destinations, count, &edus);
    Ok(())
}

/// Queues in `batch` (stream position `count`) an `m.device_list_update` restating each device
/// given at the user's current `stream_id`, with no `prev_id`, to `destinations`: servers that
/// just started sharing a room with the user. Nothing changed, so the chain does not move: a
/// server that knows the list at that `stream_id` already has these devices, and one that does
/// not fetches the list.
pub fn queue_device_snapshot_in_batch(
    services: &Services,
    batch: &mut Batch,
    count: u64,
    user_id: &UserId,
    devices: &[(String, DeviceState)],
    destinations: &[OwnedServerName],
) -> Result<()> {
    let stream_id = match services.keys.get_device_list_id(user_id)? {
        Some(id) => id,
        None => {
            services.keys.set_device_list_id_in_batch(batch, user_id, 1);
            1
        }
    };
    let edus: Vec<Value> = devices
        .iter()
        .map(|(device_id, state)| {
            let mut content = json!({
                "user_id": user_id,
                "device_id": device_id,
                "stream_id": stream_id,
                "prev_id": [],
                "deleted": false,
            });
            if let Some(keys) = &state.keys {
                content["keys"] = keys.clone();
            }
            if let Some(name) = &state.display_name {
                content["device_display_name"] = json!(name);
            }
            json!({ "edu_type": "m.device_list_update", "content": content })
        })
        .collect();
    services
        .sending
        .queue_edus_in_batch(batch, destinations, count, &edus);
    Ok(())
}

/// Records in `batch` (stream position `count`) that devices of a local user changed: marks the
/// user's keys changed for `/sync` and queues an `m.device_list_update` per device to every
/// server sharing a room; returns those servers for [`after_change`].
pub fn announce_devices_in_batch(
    services: &Services,
    batch: &mut Batch,
    count: u64,
    user_id: &UserId,
    devices: &[(String, Option<DeviceState>)],
) -> Result<Vec<OwnedServerName>> {
    mark_changed_in_batch(services, batch, user_id, count)?;
    let destinations = iter_remote_servers(services, user_id)?;
    queue_device_updates_in_batch(services, batch, count, user_id, devices, &destinations)?;
    Ok(destinations)
}

/// Records in `batch` (stream position `count`) a local device's new identity keys, announced
/// with the device's display name; returns the servers for [`after_change`].
pub fn announce_device_keys_in_batch(
    services: &Services,
    batch: &mut Batch,
    count: u64,
    user_id: &UserId,
    device_id: &str,
    keys: Value,
) -> Result<Vec<OwnedServerName>> {
    let state = DeviceState {
        display_name: services
            .users
            .get_device(user_id, device_id)?
            .and_then(|device| device.display_name),
        keys: Some(keys),
    };
    announce_devices_in_batch(
        services,
        batch,
        count,
        user_id,
        &[(device_id.to_owned(), Some(state))],
    )
}

/// Announces a new device or a device's new display name (after the change is stored).
pub fn announce_device(services: &Services, user_id: &UserId, device_id: &str) -> Result<()> {
    let state = get_device_state(services, user_id, device_id)?;
    let mut destinations = Vec::new();
    services.globals.write_with_count(|batch, count| {
        destinations = announce_devices_in_batch(
            services,
            batch,
            count,
            user_id,
            &[(device_id.to_owned(), state)],
        )?;
        Ok(())
    })?;
    after_change(services, user_id, &destinations);
    Ok(())
}

/// Removes a device's keys and inbox after logout or deletion, and announces the deletion.
pub fn delete_device(services: &Services, user_id: &UserId, device_id: &str) -> Result<()> {
    let mut destinations = Vec::new();
    services.globals.write_with_count(|batch, count| {
        services
            .keys
            .delete_device_keys_in_batch(batch, user_id, device_id)?;
        services
            .to_device
            .delete_device_in_batch(batch, user_id, device_id)?;
        destinations = announce_devices_in_batch(
            services,
            batch,
            count,
            user_id,
            &[(device_id.to_owned(), None)],
        )?;
        Ok(())
    })?;
    after_change(services, user_id, &destinations);
    Ok(())
}

/// Answers a key query for local users: `device_keys` (with each device's display name in
/// `unsigned.device_display_name`), `master_keys`, `self_signing_keys`, and `user_signing_keys`
/// for the requester's own keys only. An empty device list asks for every device.
pub fn query_local(
    services: &Services,
    requester: Option<&UserId>,
    wanted: &BTreeMap<OwnedUserId, Vec<String>>,
) -> Result<Map<String, Value>> {
    let mut device_keys = Map::new();
    let mut master_keys = Map::new();
    let mut self_signing_keys = Map::new();
    let mut user_signing_keys = Map::new();
    for (user_id, devices) in wanted {
        let mut stored = services.keys.iter_device_keys(user_id)?;
        if !devices.is_empty() {
            stored.retain(|device_id, _| devices.contains(device_id));
        }
        let mut user_devices = Map::new();
        for (device_id, mut keys) in stored {
            if let Some(device) = services.users.get_device(user_id, &device_id)? {
                if let Some(name) = device.display_name {
                    keys["unsigned"] = json!({ "device_display_name": name });
                }
            }
            user_devices.insert(device_id, keys);
        }
        device_keys.insert(user_id.to_string(), Value::Object(user_devices));
        let mut kinds = vec![
            ("master", &mut master_keys),
            ("self_signing", &mut self_signing_keys),
        ];
        if requester == Some(&**user_id) {
            kinds.push(("user_signing", &mut user_signing_keys));
        }
        for (kind, out) in kinds {
            if let Some(key) = services.keys.get_cross_signing_key(user_id, kind)? {
                out.insert(user_id.to_string(), key);
            }
        }
    }
    let mut response = Map::new();
    response.insert("device_keys".into(), Value::Object(device_keys));
    response.insert("master_keys".into(), Value::Object(master_keys));
    response.insert("self_signing_keys".into(), Value::Object(self_signing_keys));
    if requester.is_some() {
        response.insert("user_signing_keys".into(), Value::Object(user_signing_keys));
    }
    Ok(response)
}

/// Claims one key per local device and algorithm: `{user: {device: {"algorithm:id": key}}}`.
pub fn claim_local(
    services: &Services,
    wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
) -> Result<Map<String, Value>> {
    let requests: Vec<(OwnedUserId, String, String)> = wanted
        .iter()
        .flat_map(|(user_id, devices)| {
            devices.iter().map(move |(device_id, algorithm)| {
                (user_id.clone(), device_id.clone(), algorithm.clone())
            })
        })
        .collect();
    let claimed = services.keys.claim(&requests)?;
    let mut one_time_keys = Map::new();
    // Users (and devices) with nothing to hand out are left out, as Synapse and Complement expect.
    for ((user_id, device_id, _), key) in requests.into_iter().zip(claimed) {
        if let Some((key_id, key)) = key {
            let user = one_time_keys
                .entry(user_id.to_string())
                .or_insert_with(|| json!({}));
            user[device_id] = json!({ key_id: key });
        }
    }
    Ok(one_time_keys)
}
