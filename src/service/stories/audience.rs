//! Story rooms follow their owner's `stories` privacy setting for new audience members: an
//! invite or a join of a user the setting leaves out is refused with `M_FORBIDDEN`, before
//! anything is stored. Members already joined stay (the listing still hides the stories from
//! them while the setting excludes them). Only the settings of this server's users are known,
//! so only their story rooms are guarded, and only where this server makes or accepts the
//! membership (local invites and joins, `createRoom`'s invitees, `make_join`/`send_join`).

use ruma::{events::TimelineEventType, RoomId, UserId};

use super::Stories;
use crate::{
    error::{Error, Result},
    service::{
        privacy::{self, Aspect},
        rooms::pdu::Pdu,
        Services,
    },
};

impl Stories {
    /// Refuses a member event that would add a user to a story room's audience against its
    /// owner's `stories` setting: an invite, or a join of a user not joined yet. Other events
    /// pass. Called by `auth::check_local_event` and by `send_join`.
    pub fn check_new_member(&self, services: &Services, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
        if pdu.kind != TimelineEventType::RoomMember {
            return Ok(());
        }
        let Some(target) = pdu
            .state_key
            .as_deref()
            .and_then(|key| UserId::parse(key).ok())
        else {
            return Ok(());
        };
        let Some(room) = self.story_room(services, room_id)? else {
            return Ok(());
        };
        let adds = match pdu.content_value()["membership"].as_str() {
            Some("invite") => true,
            Some("join") => !services.rooms.members.is_joined(room_id, &target)?,
            _ => false,
        };
        if adds {
            self.check_audience(services, &room.owner, &target)?;
        }
        Ok(())
    }

    /// `M_FORBIDDEN` when `owner` is a user of this server whose `stories` setting leaves `user`
    /// out (`createRoom` checks the invitees of a new story room with it).
    pub fn check_audience(&self, services: &Services, owner: &UserId, user: &UserId) -> Result<()> {
        if owner.server_name() != services.globals.server_name()
            || privacy::allows(services, owner, user, Aspect::Stories)?
        {
            return Ok(());
        }
        Err(Error::forbidden(format!(
            "the stories setting of {owner} leaves {user} out of their story rooms"
        )))
    }
}
