//! `state_after` in `/sync` (MSC4222): asked for with `use_state_after=true` (unstable
//! `org.matrix.msc4222.use_state_after`), each joined and left room carries, in place of its
//! `state` section, the state changes between `since` and the end of its timeline, so that a
//! client can keep the room's state from this section alone and ignore the timeline's state
//! events (which may have lost state resolution).
//! The section is computed by `state.rs`'s `Snapshots::state_section` (the same state filter and
//! lazy-loaded members), from the state at the end of the timeline against the state at `since`.

use std::collections::BTreeSet;

use ruma::{events::room::member::MembershipState, OwnedUserId, RoomId};
use serde_json::{json, Value};

use super::{
    state::{self, LazyMembers, Snapshots},
    Rooms, SyncContext,
};
use crate::{
    error::Result,
    service::rooms::{members::RoomMembership, pdu::Pdu},
};

/// The query parameter's stable name.
pub const STABLE_PARAM: &str = "use_state_after";
/// The query parameter's unstable name, advertised in `/versions`.
pub const UNSTABLE_PARAM: &str = "org.matrix.msc4222.use_state_after";

/// Which name the client asked with: the response answers under the matching field name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateAfter {
    Stable,
    Unstable,
}

impl StateAfter {
    /// From the values of the stable and unstable query parameters: `None` unless one is `true`.
    pub fn from_query(stable: Option<&str>, unstable: Option<&str>) -> Option<Self> {
        if stable == Some("true") {
            Some(Self::Stable)
        } else if unstable == Some("true") {
            Some(Self::Unstable)
        } else {
            None
        }
    }

    /// The room field that replaces `state`.
    pub fn field(self) -> &'static str {
        match self {
            Self::Stable => "state_after",
            Self::Unstable => "org.matrix.msc4222.state_after",
        }
    }
}

/// Replaces the `state` section of every joined and left room of a built response with its
/// `state_after`, when the request asks for it.
pub(super) fn apply(
    ctx: &SyncContext<'_>,
    rooms: &mut Rooms,
    memberships: &[RoomMembership],
) -> Result<()> {
    let Some(kind) = ctx.request.state_after else {
        return Ok(());
    };
    for membership in memberships {
        let room_id = membership.room_id.as_str();
        let (entry, end) = match membership.membership {
            MembershipState::Join => (rooms.join.get_mut(room_id), ctx.next()),
            MembershipState::Leave | MembershipState::Ban => {
                (rooms.leave.get_mut(room_id), membership.count)
            }
            _ => continue,
        };
        if let Some(entry) = entry {
            let events = state_after(ctx, membership, entry, end)?;
            if let Some(fields) = entry.as_object_mut() {
                fields.remove("state");
                fields.insert(kind.field().to_owned(), json!({ "events": events }));
            }
        }
    }
    // Rooms with only account data news have no membership here to match; their state did not
    // change, so their section is empty (the MSC requires it even then).
    for entry in rooms.join.values_mut() {
        if let Some(fields) = entry.as_object_mut() {
            if fields.remove("state").is_some() {
                fields.insert(kind.field().to_owned(), json!({ "events": [] }));
            }
        }
    }
    Ok(())
}

/// The state at stream position `end` that the client did not have at `since` (all of it for a
/// room new to the client), with only the lazy-loaded members the entry needs.
fn state_after(
    ctx: &SyncContext<'_>,
    membership: &RoomMembership,
    entry: &Value,
    end: u64,
) -> Result<Vec<Value>> {
    let services = ctx.services;
    let room_id: &RoomId = &membership.room_id;
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(Vec::new());
    };
    let newly_joined =
        membership.membership == MembershipState::Join && membership.count > ctx.since;
    let initial = ctx.request.since.is_none() || ctx.request.full_state || newly_joined;
    let snapshots = Snapshots {
        start: state::state_at_position(services, shortroomid, end)?,
        seen: if initial {
            None
        } else {
            state::state_at_position(services, shortroomid, ctx.since)?
        },
        end: None,
        members_only: false,
    };
    let lazy = lazy_members(ctx, room_id, entry, initial);
    let no_timeline: &[(u64, Pdu)] = &[];
    snapshots.state_section(ctx, room_id, no_timeline, lazy.as_ref())
}

/// With lazy-loaded members: the entry's timeline senders, its heroes and the user, less the
/// member events the device holds (unless the room is new to it).
fn lazy_members(
    ctx: &SyncContext<'_>,
    room_id: &RoomId,
    entry: &Value,
    initial: bool,
) -> Option<LazyMembers> {
    if !ctx.filters.lazy_members() {
        return None;
    }
    let request = ctx.request;
    let senders = entry["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| event["sender"].as_str());
    let heroes = entry["summary"]["m.heroes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    let wanted: BTreeSet<OwnedUserId> = senders
        .chain(heroes)
        .filter_map(|user| OwnedUserId::try_from(user).ok())
        .chain([request.user.to_owned()])
        .collect();
    Some(LazyMembers {
        wanted,
        known: if initial {
            Default::default()
        } else {
            ctx.services
                .sent_members
                .known(request.user, request.device, room_id)
        },
        include_redundant: ctx.filters.include_redundant_members(),
    })
}

#[cfg(test)]
mod tests {
    use super::StateAfter;

    #[test]
    fn the_field_follows_the_parameter_asked_with() {
        assert_eq!(StateAfter::from_query(None, None), None);
        assert_eq!(StateAfter::from_query(Some("false"), None), None);
        let stable = StateAfter::from_query(Some("true"), None).unwrap();
        assert_eq!(stable.field(), "state_after");
        let unstable = StateAfter::from_query(None, Some("true")).unwrap();
        assert_eq!(unstable.field(), "org.matrix.msc4222.state_after");
    }
}
