//! The call history (`GET /_plait/client/v1/calls`, `docs/calls.md`): an index of calls built
//! as call events are committed, never by reading history per request. 1:1 calls come from
//! `m.call.*` events, group calls (MatrixRTC) from `m.call.member` state; events that arrive
//! over federation are committed by the same pipeline, so a call with a remote user is indexed
//! on both servers. Each local member of the room when the call starts (and each local
//! participant who joins later) gets the call in their list; a request shows only the calls
//! whose first event the user may see (history visibility).

mod record;

use std::sync::Arc;

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};

pub use record::CallRecord;
use record::{call_id, group_call_id, is_in_call, MEMBER_TYPES};

use crate::{
    error::{Error, Result},
    service::{
        rooms::{members::RoomMembership, pdu::Pdu, visibility::user_can_see_short},
        Services,
    },
    store::{key, Batch, Db, Tree},
    util,
};

/// Rooms with more local members than this index a call for its caller, callees and
/// participants only, not for every member.
const MAX_FAN_OUT: usize = 50;
/// Largest page.
const MAX_LIMIT: usize = 100;

/// Owns `roomcallkey_call` (room ID 0xff call key → JSON [`CallRecord`]; the call key is the
/// `call_id` of a 1:1 call, `group:{call_id}:{start_ts}` of a group call),
/// `roomgroupcall_session` (room ID 0xff group call ID → the call key of the session in
/// progress) and `userstartcall_` (user ID 0xff `u64::MAX - start_ts` (8 bytes) room ID 0xff
/// call key → empty: each user's calls, newest first).
pub struct Calls {
    roomcallkey_call: Tree,
    roomgroupcall_session: Tree,
    userstartcall_: Tree,
}

impl Calls {
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            roomcallkey_call: db.tree("roomcallkey_call"),
            roomgroupcall_session: db.tree("roomgroupcall_session"),
            userstartcall_: db.tree("userstartcall_"),
        }
    }

    fn get(&self, room_id: &RoomId, call_key: &str) -> Result<Option<CallRecord>> {
        self.roomcallkey_call
            .get(&key::join(&[room_id.as_bytes(), call_key.as_bytes()]))?
            .map(|value| {
                serde_json::from_slice(&value)
                    .map_err(|error| Error::corrupt("roomcallkey_call", error))
            })
            .transpose()
    }

    fn put(&self, call_key: &str, record: &CallRecord, batch: &mut Batch) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(Error::internal)?;
        let record_key = key::join(&[record.room_id.as_bytes(), call_key.as_bytes()]);
        batch.insert(&self.roomcallkey_call, &record_key, &value);
        Ok(())
    }

    /// Lists the call for `users` (newest first by start time).
    fn list_for(
        &self,
        users: &[OwnedUserId],
        record: &CallRecord,
        call_key: &str,
        batch: &mut Batch,
    ) {
        for user in users {
            batch.insert(&self.userstartcall_, &user_key(user, record, call_key), b"");
        }
    }
}

fn user_key(user: &UserId, record: &CallRecord, call_key: &str) -> Vec<u8> {
    let mut user_key = key::prefix(&[user.as_bytes()]);
    user_key.extend_from_slice(&key::u64_bytes(u64::MAX - record.start_ts));
    user_key.extend_from_slice(&key::join(&[
        record.room_id.as_bytes(),
        call_key.as_bytes(),
    ]));
    user_key
}

impl Calls {
    /// Indexes a committed event when it is a call event (a step of the commit pipeline, in
    /// the event's batch, under the room's lock).
    pub fn index(
        &self,
        services: &Services,
        room_id: &RoomId,
        pdu: &Pdu,
        batch: &mut Batch,
    ) -> Result<()> {
        index_event(services, room_id, pdu, batch)
    }
}

fn index_event(services: &Services, room_id: &RoomId, pdu: &Pdu, batch: &mut Batch) -> Result<()> {
    let event_type = pdu.kind.to_string();
    if MEMBER_TYPES.contains(&event_type.as_str()) {
        return index_member(services, room_id, pdu, batch);
    }
    if !event_type.starts_with("m.call.") {
        return Ok(());
    }
    let calls = &services.calls;
    let content = pdu.content_value();
    let call = call_id(&content);
    if call.is_empty() {
        return Ok(());
    }
    let ts = u64::from(pdu.origin_server_ts.get());
    if event_type == "m.call.invite" {
        if calls.get(room_id, &call)?.is_some() {
            return Ok(());
        }
        let callees = callees(services, room_id, &pdu.sender, &content)?;
        let record = CallRecord::invited(
            room_id.to_owned(),
            pdu.event_id.clone(),
            pdu.sender.clone(),
            callees.clone(),
            ts,
            &content,
        );
        let mut listed = fan_out(services, room_id)?;
        listed.extend(
            callees
                .into_iter()
                .chain([pdu.sender.clone()])
                .filter(|user| is_local(services, user)),
        );
        calls.list_for(&listed, &record, &call, batch);
        return calls.put(&call, &record, batch);
    }
    let Some(mut record) = calls.get(room_id, &call)? else {
        return Ok(());
    };
    record.apply(&event_type, &pdu.sender, ts, &content);
    calls.put(&call, &record, batch)
}

/// A group membership change: starts, joins, leaves or ends the room's session of its call.
fn index_member(services: &Services, room_id: &RoomId, pdu: &Pdu, batch: &mut Batch) -> Result<()> {
    let Some(state_key) = pdu.state_key.as_deref() else {
        return Ok(());
    };
    let calls = &services.calls;
    let content = pdu.content_value();
    let ts = u64::from(pdu.origin_server_ts.get());
    let joining = is_in_call(&content);
    // A leave's content names no call: it leaves the session this device is in.
    let group_id = match joining {
        true => group_call_id(&content),
        false => match session_of_device(services, room_id, state_key)? {
            Some(group_id) => group_id,
            None => return Ok(()),
        },
    };
    let session_key = key::join(&[room_id.as_bytes(), group_id.as_bytes()]);
    let current = calls.roomgroupcall_session.get(&session_key)?;
    let current = current.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let (call_key, mut record, new) = match (current, joining) {
        (Some(call_key), _) => match calls.get(room_id, &call_key)? {
            Some(record) => (call_key, record, false),
            None => return Ok(()),
        },
        (None, true) => {
            let record = CallRecord::group_started(
                room_id.to_owned(),
                pdu.event_id.clone(),
                pdu.sender.clone(),
                ts,
                &content,
            );
            let call_key = format!("group:{group_id}:{ts}");
            batch.insert(
                &calls.roomgroupcall_session,
                &session_key,
                call_key.as_bytes(),
            );
            (call_key, record, true)
        }
        (None, false) => return Ok(()),
    };
    if joining {
        let first_time = !record.participants.iter().any(|p| p.user_id == pdu.sender);
        record.member_joined(&pdu.sender, state_key, ts);
        let mut listed = if new {
            fan_out(services, room_id)?
        } else {
            Vec::new()
        };
        if first_time && is_local(services, &pdu.sender) {
            listed.push(pdu.sender.clone());
        }
        calls.list_for(&listed, &record, &call_key, batch);
    } else if record.member_left(&pdu.sender, state_key, ts) {
        batch.remove(&calls.roomgroupcall_session, &session_key);
    }
    calls.put(&call_key, &record, batch)
}

/// The group call ID whose session in progress has device `state_key` in it.
fn session_of_device(
    services: &Services,
    room_id: &RoomId,
    state_key: &str,
) -> Result<Option<String>> {
    let calls = &services.calls;
    let prefix = key::prefix(&[room_id.as_bytes()]);
    for entry in calls.roomgroupcall_session.iter_prefix(&prefix) {
        let (session_key, call_key) = entry?;
        let call_key = String::from_utf8_lossy(&call_key).into_owned();
        let Some(record) = calls.get(room_id, &call_key)? else {
            continue;
        };
        let in_it = record
            .participants
            .iter()
            .any(|p| p.active.iter().any(|(key, _)| key == state_key));
        if in_it {
            return Ok(Some(
                String::from_utf8_lossy(&session_key[prefix.len()..]).into_owned(),
            ));
        }
    }
    Ok(None)
}

/// Who an invite calls: its `invitee`, else every other joined member.
fn callees(
    services: &Services,
    room_id: &RoomId,
    caller: &UserId,
    content: &Value,
) -> Result<Vec<OwnedUserId>> {
    if let Some(invitee) = content["invitee"]
        .as_str()
        .and_then(|id| OwnedUserId::try_from(id).ok())
    {
        return Ok(vec![invitee]);
    }
    let members = services.rooms.members.iter_members(
        room_id,
        Some(ruma::events::room::member::MembershipState::Join),
    )?;
    Ok(members
        .into_iter()
        .map(|(user, _)| user)
        .filter(|user| user != caller)
        .take(MAX_FAN_OUT)
        .collect())
}

/// The local joined members who get a new call in their list: all of them in a room of up to
/// [`MAX_FAN_OUT`] local members, none in a larger one.
fn fan_out(services: &Services, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
    let members = services.rooms.members.iter_members(
        room_id,
        Some(ruma::events::room::member::MembershipState::Join),
    )?;
    let local: Vec<OwnedUserId> = members
        .into_iter()
        .map(|(user, _)| user)
        .filter(|user| is_local(services, user))
        .collect();
    Ok(if local.len() > MAX_FAN_OUT {
        Vec::new()
    } else {
        local
    })
}

fn is_local(services: &Services, user: &UserId) -> bool {
    user.server_name() == services.globals.server_name()
}

/// A page of `user`'s calls, newest first, from the token `from` (from the newest when
/// `None`); with the token of the next page when there is one. A token that does not parse is
/// `400 M_INVALID_PARAM`.
pub fn list(
    services: &Services,
    user: &UserId,
    from: Option<&str>,
    limit: Option<usize>,
) -> Result<Value> {
    let calls = &services.calls;
    let limit = limit.unwrap_or(20).clamp(1, MAX_LIMIT);
    let prefix = key::prefix(&[user.as_bytes()]);
    let start = match from {
        Some(token) => {
            let mut start = prefix.clone();
            start.extend(decode_token(token)?);
            start
        }
        None => prefix.clone(),
    };
    let now = util::now_millis();
    let mut shown = Vec::new();
    let mut next = None;
    let mut seen = Seen::default();
    for entry in calls.userstartcall_.iter_from(&start, false) {
        let (user_key, _) = entry?;
        if !user_key.starts_with(&prefix) {
            break;
        }
        if shown.len() == limit {
            next = Some(encode_token(&user_key[prefix.len()..]));
            break;
        }
        let Some(record) = record_of(services, &user_key[prefix.len() + 8..])? else {
            continue;
        };
        if may_see(services, user, &record, &mut seen)? {
            shown.push(record.shown_to(user, now));
        }
    }
    Ok(json!({ "calls": shown, "next_batch": next }))
}

/// The record that a `userstartcall_` key's tail (room ID 0xff call key) names.
fn record_of(services: &Services, tail: &[u8]) -> Result<Option<CallRecord>> {
    services
        .calls
        .roomcallkey_call
        .get(tail)?
        .map(|value| {
            serde_json::from_slice(&value)
                .map_err(|error| Error::corrupt("roomcallkey_call", error))
        })
        .transpose()
}

/// What one page's visibility checks remember: the user's membership per room and the answer
/// per state snapshot, so that a page of calls in a few rooms reads each once.
#[derive(Default)]
struct Seen {
    memberships: std::collections::HashMap<ruma::OwnedRoomId, Option<RoomMembership>>,
    by_state: std::collections::HashMap<u64, bool>,
}

/// Whether `user` may see the call's first event. Reads its position and short ID, not the
/// event itself: a call's first event is never the viewer's own membership event, the one
/// case where the event's content matters.
fn may_see(
    services: &Services,
    user: &UserId,
    record: &CallRecord,
    seen: &mut Seen,
) -> Result<bool> {
    let rooms = &services.rooms;
    let (Some(pdu_id), Some(short)) = (
        rooms.timeline.get_pdu_id(&record.first_event)?,
        rooms.short.get_shorteventid(&record.first_event)?,
    ) else {
        return Ok(false);
    };
    if !seen.memberships.contains_key(&record.room_id) {
        let membership = rooms.members.get_user_room(user, &record.room_id)?;
        seen.memberships.insert(record.room_id.clone(), membership);
    }
    let membership = seen.memberships[&record.room_id].as_ref();
    user_can_see_short(
        services,
        user,
        membership,
        (pdu_id.count, short),
        &mut seen.by_state,
    )
}

fn encode_token(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_token(token: &str) -> Result<Vec<u8>> {
    let invalid = || Error::invalid_param(format!("invalid pagination token {token:?}"));
    if !token.len().is_multiple_of(2) || token.len() < 18 {
        return Err(invalid());
    }
    (0..token.len())
        .step_by(2)
        .map(|index| {
            token
                .get(index..index + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(invalid)
        })
        .collect()
}
