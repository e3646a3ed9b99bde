//! Device lists and room membership, decided in `timeline::commit`'s batch for each member
//! event: a local user joining a room tells its servers that did not share a room with them yet
//! about every device (server-server API, "Device Management": updates are sent "when that
//! user joins a room which contains servers which are not already receiving updates for that
//! user's device list"), and a membership that ends drops the cached lists of remote users no
//! local user shares a room with any more (they are no longer kept up to date).

use std::collections::BTreeSet;

use ruma::{RoomId, UserId};

use super::{get_device_state, iter_remote_servers, queue_device_snapshot_in_batch};
use crate::{
    error::Result,
    service::{rooms::pdu::Pdu, Services},
    store::Batch,
};

/// Most devices announced to a server on a join; a longer list reaches it through the resync
/// that the first update starts.
const MAX_ANNOUNCED_DEVICES: usize = 1000;

/// Called by `commit` inside its batch (stream position `count`) for every member event, before
/// the batch updates the membership indexes, so that they still show the membership before it.
pub fn member_event_in_batch(
    services: &Services,
    batch: &mut Batch,
    count: u64,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<()> {
    let Some(target) = pdu
        .state_key
        .as_deref()
        .and_then(|key| <&UserId>::try_from(key).ok())
    else {
        return Ok(());
    };
    let joins = pdu.content_value()["membership"] == "join";
    let was_joined = services.rooms.members.is_joined(room_id, target)?;
    let local = target.server_name() == services.globals.server_name();
    match (was_joined, joins) {
        (false, true) if local => announce_to_new_servers(services, batch, count, room_id, target),
        (true, false) => forget_untracked(services, batch, room_id, target),
        _ => Ok(()),
    }
}

/// Queues an update restating each of a joining local user's devices to the room's servers that
/// share no other room with the user. The sender is woken by [`after_member_event`].
fn announce_to_new_servers(
    services: &Services,
    batch: &mut Batch,
    count: u64,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<()> {
    let already: BTreeSet<_> = iter_remote_servers(services, user_id)?
        .into_iter()
        .collect();
    let own = services.globals.server_name();
    let new_servers: Vec<_> = services
        .rooms
        .members
        .servers_in_room(room_id)?
        .iter()
        .filter(|server| *server != own && !already.contains(*server))
        .cloned()
        .collect();
    if new_servers.is_empty() {
        return Ok(());
    }
    let mut devices = Vec::new();
    for device in services
        .users
        .iter_devices(user_id)?
        .into_iter()
        .take(MAX_ANNOUNCED_DEVICES)
    {
        if let Some(state) = get_device_state(services, user_id, device.device_id.as_str())? {
            devices.push((device.device_id.to_string(), state));
        }
    }
    queue_device_snapshot_in_batch(services, batch, count, user_id, &devices, &new_servers)
}

/// After `user_id` stops being joined to `room_id`: drops the cached list of every remote user
/// who no longer shares a room with a local user because of it.
fn forget_untracked(
    services: &Services,
    batch: &mut Batch,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<()> {
    let own = services.globals.server_name();
    let cache = &services.remote_keys;
    let candidates = if user_id.server_name() == own {
        let members = services.rooms.members.iter_members(
            room_id,
            Some(ruma::events::room::member::MembershipState::Join),
        )?;
        // Another local member keeps the room's remote members tracked.
        if members
            .iter()
            .any(|(member, _)| member != user_id && member.server_name() == own)
        {
            return Ok(());
        }
        members
            .into_iter()
            .map(|(member, _)| member)
            .filter(|member| member.server_name() != own)
            .collect()
    } else {
        vec![user_id.to_owned()]
    };
    for remote_user in candidates {
        if cache.get_user(&remote_user)?.is_some()
            && !super::remote::is_tracked_outside(services, &remote_user, Some(room_id))?
        {
            cache.drop_user_in_batch(batch, &remote_user)?;
        }
    }
    Ok(())
}

/// Called by `commit` after its batch is written: wakes the sender for the servers of a room a
/// local user joined, which [`member_event_in_batch`] may have queued updates for (a join made
/// through another server is not sent to the room's servers by `commit` itself).
pub fn after_member_event(services: &Services, room_id: &RoomId, pdu: &Pdu) {
    let Some(target) = pdu
        .state_key
        .as_deref()
        .and_then(|key| <&UserId>::try_from(key).ok())
    else {
        return;
    };
    if target.server_name() != services.globals.server_name()
        || pdu.content_value()["membership"] != "join"
    {
        return;
    }
    if let Ok(servers) = services.rooms.members.servers_in_room(room_id) {
        let servers: Vec<_> = servers.iter().cloned().collect();
        services.sending.wake(&servers);
    }
}
