//! One room of a sliding-sync response: in full when the connection has not sent it (or its
//! `required_state` changed), with its latest events again when a longer timeline is asked for
//! (`expanded_timeline`), otherwise its news since it was last sent, if any. The timeline, invite state, summary and unread counts come from `/sync`'s code.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedUserId, RoomId,
};
use serde_json::{json, Map, Value};

use super::{
    connections::SentRoom,
    lists::RoomConfig,
    required_state::{self, Wanted},
    Build,
};
use crate::{
    error::Result,
    service::{
        globals::SyncToken,
        push,
        rooms::members::RoomMembership,
        sync::{self, joined::ServedTimeline, SyncContext, SyncRequest},
        Services,
    },
};

/// A listed or subscribed room's entry and what the client holds after it; `None` when the
/// client is up to date with the room.
pub(super) fn build(ctx: &Build<'_>, config: &RoomConfig) -> Result<Option<(Value, SentRoom)>> {
    match config.membership.membership {
        MembershipState::Join => joined(ctx, config),
        MembershipState::Invite | MembershipState::Knock => not_joined(ctx, config),
        _ => Ok(None),
    }
}

/// A joined room.
fn joined(ctx: &Build<'_>, config: &RoomConfig) -> Result<Option<(Value, SentRoom)>> {
    let (services, user) = (ctx.services, ctx.request.user);
    let room_id = &config.membership.room_id;
    let Some(shortroomid) = config.shortroomid else {
        return Ok(None);
    };
    let (unread, _) = push::sync_unread(services, user, room_id, &Value::Null)?;
    let counts = (
        unread["notification_count"].as_u64().unwrap_or(0),
        unread["highlight_count"].as_u64().unwrap_or(0),
    );
    // What the client holds of the room; with another `required_state` it is sent anew, in full.
    let prior = ctx
        .sent(room_id)
        .filter(|sent| sent.membership == MembershipState::Join);
    let since = prior
        .filter(|sent| sent.required_state == config.required_state)
        .map(|sent| sent.count);
    // MSC4186 "Changes to `timeline_limit`": a larger limit than the room was sent with resends
    // the latest events at once, older ones included, rather than only the news.
    let expanded = prior.is_some_and(|sent| sent.timeline_limit < config.timeline_limit);
    if let Some(sent) = prior.filter(|_| since.is_some() && !expanded) {
        if is_up_to_date(ctx, config, shortroomid, sent, counts)? {
            return Ok(None);
        }
    }
    let timeline_since = since.filter(|_| !expanded);
    let (timeline, next) = timeline(
        ctx,
        &config.membership,
        timeline_since,
        config.timeline_limit,
    )?;
    // Events the client may already hold are flagged, as the MSC requires.
    let resent = prior.is_some_and(|sent| timeline.counts.iter().any(|count| *count <= sent.count));
    let senders: BTreeSet<OwnedUserId> = timeline
        .events
        .iter()
        .filter_map(|event| event["sender"].as_str())
        .filter_map(|sender| OwnedUserId::try_from(sender).ok())
        .collect();
    let wanted = Wanted {
        entries: &config.required_state,
        user,
        senders,
    };
    let state = required_state::required_state(services, room_id, shortroomid, &wanted, since)?;
    let mut entry = timeline_entry(ctx, timeline);
    extend(
        &mut entry,
        json!({
            "bump_stamp": config.bump,
            "required_state": state,
            "notification_count": counts.0,
            "highlight_count": counts.1,
            "is_dm": ctx.direct.contains(room_id),
            "membership": "join",
        }),
    );
    if since.is_none() {
        entry["initial"] = json!(true);
    }
    if resent {
        // The MSC's name, and the one of the unstable shape deployed servers send and clients
        // of this endpoint read.
        entry["expanded_timeline"] = json!(true);
        entry["unstable_expanded_timeline"] = json!(true);
    }
    describe(services, room_id, user, &mut entry)?;
    let sent = SentRoom {
        count: next,
        membership: MembershipState::Join,
        required_state: Arc::clone(&config.required_state),
        timeline_limit: config.timeline_limit,
        unread: counts,
    };
    Ok(Some((entry, sent)))
}

/// Whether the client holds everything of a room it was sent with the same config: no event,
/// membership change or unread count since.
fn is_up_to_date(
    ctx: &Build<'_>,
    config: &RoomConfig,
    shortroomid: u64,
    sent: &SentRoom,
    counts: (u64, u64),
) -> Result<bool> {
    let newest = ctx
        .services
        .rooms
        .timeline
        .iter_before(shortroomid, ctx.next.saturating_add(1))
        .next()
        .transpose()?
        .map_or(0, |(count, _)| count);
    Ok(newest <= sent.count && config.membership.count <= sent.count && counts == sent.unread)
}

/// The timeline after `since` (none: the room's recent history) through `/sync`'s code, with
/// the stream position it ends at.
fn timeline(
    ctx: &Build<'_>,
    membership: &RoomMembership,
    since: Option<u64>,
    limit: u64,
) -> Result<(ServedTimeline, u64)> {
    let filter = json!({ "room": { "timeline": { "limit": limit } } });
    let request = SyncRequest {
        user: ctx.request.user,
        device: ctx.request.device,
        since: since.map(|count| SyncToken { count, typing: 0 }),
        full_state: false,
        filter: &filter,
        state_after: None,
    };
    let sync_ctx = SyncContext::new(ctx.services, &request)?;
    let timeline = sync::joined::served_timeline(&sync_ctx, membership)?;
    Ok((timeline, sync_ctx.next()))
}

/// A room entry's timeline fields; `num_live` counts the events after the response built on.
fn timeline_entry(ctx: &Build<'_>, timeline: ServedTimeline) -> Value {
    let live = |since: u64| {
        timeline
            .counts
            .iter()
            .filter(|count| **count > since)
            .count()
    };
    let num_live = ctx.since().map_or(0, live);
    json!({
        "timeline": timeline.events,
        "limited": timeline.limited,
        "prev_batch": timeline.prev_batch,
        "num_live": num_live,
    })
}

/// Adds the fields of `more` to the object `entry`.
fn extend(entry: &mut Value, more: Value) {
    if let (Some(entry), Value::Object(more)) = (entry.as_object_mut(), more) {
        entry.extend(more);
    }
}

/// The name, avatar, member counts and (for a room without a name or alias) heroes.
fn describe(
    services: &Services,
    room_id: &RoomId,
    user: &ruma::UserId,
    entry: &mut Value,
) -> Result<()> {
    let rooms = &services.rooms;
    if let Some(name) = rooms
        .current_state_pdu(room_id, &StateEventType::RoomName, "")?
        .and_then(|pdu| pdu.content_value()["name"].as_str().map(str::to_owned))
        .filter(|name| !name.is_empty())
    {
        entry["name"] = json!(name);
    }
    if let Some(url) = rooms
        .current_state_pdu(room_id, &StateEventType::RoomAvatar, "")?
        .and_then(|pdu| pdu.content_value()["url"].as_str().map(str::to_owned))
    {
        entry["avatar"] = json!(url);
    }
    let (summary, heroes) = sync::state::summary(services, room_id, user)?;
    entry["joined_count"] = summary["m.joined_member_count"].clone();
    entry["invited_count"] = summary["m.invited_member_count"].clone();
    if !heroes.is_empty() {
        let mut described = Vec::new();
        for hero in heroes {
            let mut fields = Map::new();
            fields.insert("user_id".into(), json!(hero));
            if let Some(member) =
                rooms.current_state_pdu(room_id, &StateEventType::RoomMember, hero.as_str())?
            {
                let content = member.content_value();
                for field in ["displayname", "avatar_url"] {
                    if let Some(value) = content[field].as_str() {
                        fields.insert(field.into(), json!(value));
                    }
                }
            }
            described.push(Value::Object(fields));
        }
        entry["heroes"] = Value::Array(described);
    }
    Ok(())
}

/// An invited or knocked room: sent once per membership, with the stripped state `/sync` gives
/// (`invite_state` or `knock_state`); `None` once sent, or when the invite comes from an ignored
/// user.
fn not_joined(ctx: &Build<'_>, config: &RoomConfig) -> Result<Option<(Value, SentRoom)>> {
    let room_id = &config.membership.room_id;
    let membership = &config.membership.membership;
    if ctx
        .sent(room_id)
        .is_some_and(|sent| &sent.membership == membership)
    {
        return Ok(None);
    }
    let filter = Value::Null;
    let request = SyncRequest {
        user: ctx.request.user,
        device: ctx.request.device,
        since: None,
        full_state: false,
        filter: &filter,
        state_after: None,
    };
    let sync_ctx = SyncContext::new(ctx.services, &request)?;
    let (field, section) = if *membership == MembershipState::Knock {
        (
            "knock_state",
            sync::invited::knocked_room(&sync_ctx, room_id)?,
        )
    } else {
        match sync::invited::invited_room(&sync_ctx, room_id)? {
            Some(section) => ("invite_state", section),
            None => return Ok(None),
        }
    };
    let events = section[field]["events"].clone();
    let own_member = events.as_array().into_iter().flatten().find(|event| {
        event["type"] == "m.room.member" && event["state_key"] == ctx.request.user.as_str()
    });
    let mut entry = json!({
        "initial": true,
        field: events,
        "bump_stamp": config.bump,
        "membership": membership.as_str(),
        "is_dm": own_member.is_some_and(|event| event["content"]["is_direct"] == true),
    });
    if let Some(name) = events
        .as_array()
        .into_iter()
        .flatten()
        .find(|event| event["type"] == "m.room.name")
        .and_then(|event| event["content"]["name"].as_str())
    {
        entry["name"] = json!(name);
    }
    let sent = SentRoom {
        count: sync_ctx.next(),
        membership: membership.clone(),
        required_state: Arc::clone(&config.required_state),
        timeline_limit: config.timeline_limit,
        unread: (0, 0),
    };
    Ok(Some((entry, sent)))
}

/// A room the connection has sent that the user has left or been banned from since: its
/// timeline up to the departure, once.
pub(super) fn departed(
    ctx: &Build<'_>,
    membership: &RoomMembership,
) -> Result<Option<(Value, SentRoom)>> {
    let Some(sent) = ctx.sent(&membership.room_id) else {
        return Ok(None);
    };
    let departed = matches!(
        membership.membership,
        MembershipState::Leave | MembershipState::Ban
    );
    if !departed || sent.membership == membership.membership || membership.count <= sent.count {
        return Ok(None);
    }
    let since = (sent.membership == MembershipState::Join).then_some(sent.count);
    let (timeline, next) = timeline(ctx, membership, since, sent.timeline_limit.max(1))?;
    let mut entry = timeline_entry(ctx, timeline);
    extend(
        &mut entry,
        json!({
            "bump_stamp": membership.count,
            "membership": membership.membership.as_str(),
        }),
    );
    let sent = SentRoom {
        count: next,
        membership: membership.membership.clone(),
        ..sent.clone()
    };
    Ok(Some((entry, sent)))
}
