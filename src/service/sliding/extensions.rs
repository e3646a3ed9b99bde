//! Sliding-sync extensions: `to_device` (the same inbox and acknowledgement as `/sync`), `e2ee`
//! (device list changes, one-time key counts, unused fallback key types), `account_data`
//! (global, and for the rooms of the response's windows), `receipts` and `typing` (for those
//! rooms). A room new to the connection gets its receipts, typists and account data in full.
//! The room-scoped ones cover the rooms their `lists` and `rooms` name (`Scope`).

use std::collections::{BTreeMap, BTreeSet};

use ruma::{api::client::sync::sync_events::v5::request::ExtensionRoomConfig, OwnedRoomId};
use serde_json::{json, Map, Value};

use super::Build;
use crate::{
    error::{Error, Result},
    service::{device_lists, push, receipts},
};

/// The rooms the room-scoped extensions (`account_data`, `receipts`, `typing`) may cover.
pub(super) struct Scope<'a> {
    /// Each list's rooms in its windows.
    pub lists: &'a BTreeMap<String, Vec<OwnedRoomId>>,
    /// The subscribed rooms the user may see.
    pub subscribed: Vec<&'a OwnedRoomId>,
    /// Every room of the response's windows and subscriptions.
    pub window: Vec<&'a OwnedRoomId>,
}

impl<'a> Scope<'a> {
    /// The rooms an extension covers by its `lists` and `rooms`: an absent `lists` means every
    /// list and an absent `rooms` every subscription (as ruma documents the fields), `*` all of
    /// either, and an empty one none.
    fn rooms(
        &self,
        lists: Option<&[String]>,
        rooms: Option<&[ExtensionRoomConfig]>,
    ) -> Vec<&'a OwnedRoomId> {
        let mut covered: BTreeSet<&'a OwnedRoomId> = BTreeSet::new();
        let all_lists = lists.is_none_or(|names| names.iter().any(|name| name == "*"));
        for (name, list_rooms) in self.lists {
            if all_lists || lists.is_some_and(|names| names.contains(name)) {
                covered.extend(list_rooms);
            }
        }
        match rooms {
            None => covered.extend(self.subscribed.iter().copied()),
            Some(configs) => {
                for config in configs {
                    match config {
                        ExtensionRoomConfig::AllSubscribed => {
                            covered.extend(self.subscribed.iter().copied());
                        }
                        ExtensionRoomConfig::Room(room_id) => {
                            covered.extend(self.window.iter().copied().filter(|r| *r == room_id));
                        }
                        _ => {}
                    }
                }
            }
        }
        covered.into_iter().collect()
    }
}

/// The `extensions` object and whether it holds news.
pub(super) fn build(
    ctx: &Build<'_>,
    scope: &Scope<'_>,
    initial_rooms: &[&OwnedRoomId],
) -> Result<(Value, bool)> {
    let requested = &ctx.request.body.extensions;
    let mut extensions = Map::new();
    let mut updates = false;
    if requested.to_device.enabled == Some(true) {
        let (value, news) = to_device(ctx, requested.to_device.since.as_deref())?;
        extensions.insert("to_device".into(), value);
        updates |= news;
    }
    if requested.e2ee.enabled == Some(true) {
        let (value, news) = e2ee(ctx)?;
        extensions.insert("e2ee".into(), value);
        updates |= news;
    }
    let is_initial = |room_id: &OwnedRoomId| ctx.base.is_none() || initial_rooms.contains(&room_id);
    if requested.account_data.enabled == Some(true) {
        let config = &requested.account_data;
        let window = scope.rooms(config.lists.as_deref(), config.rooms.as_deref());
        let (value, news) = account_data(ctx, &window, &is_initial)?;
        extensions.insert("account_data".into(), value);
        updates |= news;
    }
    if requested.receipts.enabled == Some(true) {
        let config = &requested.receipts;
        let mut rooms = Map::new();
        for room_id in scope.rooms(config.lists.as_deref(), config.rooms.as_deref()) {
            let since = if is_initial(room_id) {
                None
            } else {
                ctx.since()
            };
            let receipts = ctx.services.receipts.iter_since(room_id, since, ctx.next)?;
            if let Some(event) = merge_receipts(receipts::sync_events(&receipts, ctx.request.user))
            {
                rooms.insert(room_id.to_string(), event);
            }
        }
        updates |= !rooms.is_empty();
        extensions.insert("receipts".into(), json!({ "rooms": rooms }));
    }
    if requested.typing.enabled == Some(true) {
        let config = &requested.typing;
        let mut rooms = Map::new();
        let base_typing = ctx.base.map(|base| base.typing);
        for room_id in scope.rooms(config.lists.as_deref(), config.rooms.as_deref()) {
            let since = if is_initial(room_id) {
                None
            } else {
                base_typing
            };
            if let Some(users) = ctx.services.typing.get_changed(room_id, since) {
                if since.is_some() || !users.is_empty() {
                    let event = json!({ "type": "m.typing", "content": { "user_ids": users } });
                    rooms.insert(room_id.to_string(), event);
                }
            }
        }
        updates |= !rooms.is_empty();
        extensions.insert("typing".into(), json!({ "rooms": rooms }));
    }
    Ok((Value::Object(extensions), updates))
}

/// The device's to-device messages after `since` (the previous response's `next_batch`, whose
/// messages are then deleted, as `/sync` does).
fn to_device(ctx: &Build<'_>, since: Option<&str>) -> Result<(Value, bool)> {
    let since = since
        .map(|since| {
            since
                .parse::<u64>()
                .map_err(|_| Error::invalid_param(format!("invalid to_device since {since}")))
        })
        .transpose()?;
    let request = ctx.request;
    let events =
        ctx.services
            .to_device
            .take_for_sync(request.user, request.device, since, ctx.next)?;
    let news = !events.is_empty();
    Ok((
        json!({ "next_batch": ctx.next.to_string(), "events": events }),
        news,
    ))
}

/// The device list changes since the response built on, and the device's key counts.
fn e2ee(ctx: &Build<'_>) -> Result<(Value, bool)> {
    let (services, user, device) = (ctx.services, ctx.request.user, ctx.request.device);
    let (changed, left) = match ctx.since() {
        Some(since) => device_lists::iter_device_list_changes(services, user, since, ctx.next)?,
        None => Default::default(),
    };
    let news = !changed.is_empty() || !left.is_empty();
    let value = json!({
        "device_lists": { "changed": changed, "left": left },
        "device_one_time_keys_count": services.keys.count_one_time_keys(user, device)?,
        "device_unused_fallback_key_types": services.keys.iter_unused_fallback_key_types(user, device)?,
    });
    Ok((value, news))
}

/// Global account data changed since the response built on (all of it, with the default push
/// rules, on a new connection), and the room account data of the window's rooms.
fn account_data(
    ctx: &Build<'_>,
    window: &[&OwnedRoomId],
    is_initial: &dyn Fn(&OwnedRoomId) -> bool,
) -> Result<(Value, bool)> {
    let (services, user) = (ctx.services, ctx.request.user);
    let since = ctx.since().unwrap_or(0);
    let any_initial_room = window.iter().any(|room_id| is_initial(room_id));
    let changed = services.account_data.iter_changed(user, since)?;
    let all = if any_initial_room && since > 0 {
        services.account_data.iter_changed(user, 0)?
    } else {
        Vec::new()
    };
    let mut global = Vec::new();
    let mut rooms: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in &changed {
        let event = json!({ "type": entry.kind, "content": entry.content });
        match &entry.room_id {
            None => global.push(event),
            Some(room_id) if window.contains(&room_id) && !(since > 0 && is_initial(room_id)) => {
                rooms.entry(room_id.to_string()).or_default().push(event);
            }
            Some(_) => {}
        }
    }
    for entry in &all {
        if let Some(room_id) = entry.room_id.as_ref().filter(|room_id| is_initial(room_id)) {
            if window.contains(&room_id) {
                let event = json!({ "type": entry.kind, "content": entry.content });
                rooms.entry(room_id.to_string()).or_default().push(event);
            }
        }
    }
    if ctx.base.is_none() && !global.iter().any(|event| event["type"] == "m.push_rules") {
        global.extend(push::initial_sync_rules(services, user)?);
    }
    let news = !global.is_empty() || !rooms.is_empty();
    Ok((json!({ "global": global, "rooms": rooms }), news))
}

/// One `m.receipt` event from `/sync`'s per-thread ones (their contents merged per event,
/// receipt type and user).
fn merge_receipts(events: Vec<Value>) -> Option<Value> {
    let mut events = events.into_iter();
    let mut merged = events.next()?;
    for event in events {
        for (event_id, kinds) in event["content"].as_object().into_iter().flatten() {
            for (kind, users) in kinds.as_object().into_iter().flatten() {
                for (user, receipt) in users.as_object().into_iter().flatten() {
                    merged["content"][event_id][kind][user] = receipt.clone();
                }
            }
        }
    }
    Some(merged)
}
