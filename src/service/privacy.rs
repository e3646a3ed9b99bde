//! Privacy settings (`docs/privacy.md`): who sees a user's last seen and presence, profile photo
//! and stories, from the user's `io.plait.privacy` account data (`everyone`, `contacts` or
//! `nobody` for each; `everyone` when unset), and blocking: a user who ignores another
//! (`m.ignored_user_list`) also hides their presence from them.
//!
//! A contact is a user the person shares a direct-message room with: a room the person's
//! `m.direct` lists for that user, which both are joined to. A server asking over federation
//! is no viewer in particular: it gets what `everyone` may see, and a `contacts` user's presence
//! goes only to the servers of their contacts.
//! Settings are read through the account data service (one point read per check); the ignore
//! list comes from its memory cache.

use std::collections::BTreeSet;

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedServerName, UserId};
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    service::Services,
};

/// The account data type of the settings.
pub const PRIVACY: &str = "io.plait.privacy";

/// What a setting covers: the fields of `io.plait.privacy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Presence and `last_active_ago`.
    LastSeen,
    /// The profile photo in profile lookups and user-directory results.
    Avatar,
    /// New members of the user's story rooms.
    Stories,
}

impl Subject {
    fn field(self) -> &'static str {
        match self {
            Self::LastSeen => "last_seen",
            Self::Avatar => "avatar",
            Self::Stories => "stories",
        }
    }
}

/// Who may see a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    Everyone,
    Contacts,
    Nobody,
}

impl Audience {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "everyone" => Some(Self::Everyone),
            "contacts" => Some(Self::Contacts),
            "nobody" => Some(Self::Nobody),
            _ => None,
        }
    }
}

/// Who looks: a local or remote user, or no user in particular (another server, or a request
/// without an access token).
#[derive(Clone, Copy, Debug)]
pub enum Viewer<'a> {
    User(&'a UserId),
    Anonymous,
}

/// Checks `io.plait.privacy` content before it is stored: an object whose `last_seen`, `avatar`
/// and `stories`, when present, are `everyone`, `contacts` or `nobody`; `M_BAD_JSON` otherwise.
pub fn check_settings(content: &Value) -> Result<()> {
    let object = content
        .as_object()
        .ok_or_else(|| Error::bad_json("io.plait.privacy must be an object"))?;
    for subject in [Subject::LastSeen, Subject::Avatar, Subject::Stories] {
        let field = subject.field();
        if let Some(value) = object.get(field) {
            if value.as_str().and_then(Audience::parse).is_none() {
                return Err(Error::bad_json(format!(
                    "{field} must be everyone, contacts or nobody"
                )));
            }
        }
    }
    Ok(())
}

/// A user's setting for `subject`; `everyone` when unset or unreadable.
pub fn audience(services: &Services, owner: &UserId, subject: Subject) -> Result<Audience> {
    Ok(services
        .account_data
        .get(owner, None, PRIVACY)?
        .as_ref()
        .and_then(|content| content.get(subject.field()))
        .and_then(Value::as_str)
        .and_then(Audience::parse)
        .unwrap_or(Audience::Everyone))
}

/// Whether `viewer` may see `owner`'s `subject`. The owner always sees their own; a user the
/// owner ignores never sees the owner's presence.
pub fn may_see(
    services: &Services,
    owner: &UserId,
    viewer: Viewer<'_>,
    subject: Subject,
) -> Result<bool> {
    if let Viewer::User(user) = viewer {
        if user == owner {
            return Ok(true);
        }
        if subject == Subject::LastSeen
            && services.account_data.ignored_users(owner)?.contains(user)
        {
            return Ok(false);
        }
    }
    Ok(match (audience(services, owner, subject)?, viewer) {
        (Audience::Everyone, _) => true,
        (Audience::Nobody, _) | (Audience::Contacts, Viewer::Anonymous) => false,
        (Audience::Contacts, Viewer::User(user)) => is_contact(services, owner, user)?,
    })
}

/// A local user's profile as `viewer` may see it: without `avatar_url` unless their `avatar`
/// setting lets the viewer see it; `None` for a user without a profile.
pub fn visible_profile(
    services: &Services,
    owner: &UserId,
    viewer: Viewer<'_>,
) -> Result<Option<Map<String, Value>>> {
    let Some(mut profile) = services.users.get_profile(owner)? else {
        return Ok(None);
    };
    if profile.contains_key("avatar_url") && !may_see(services, owner, viewer, Subject::Avatar)? {
        profile.remove("avatar_url");
    }
    Ok(Some(profile))
}

/// The rooms `owner`'s `m.direct` lists for `other`.
fn direct_rooms(services: &Services, owner: &UserId, other: &UserId) -> Result<Vec<OwnedRoomId>> {
    Ok(services
        .account_data
        .get(owner, None, "m.direct")?
        .as_ref()
        .and_then(|direct| direct.get(other.as_str()))
        .and_then(Value::as_array)
        .map(|rooms| {
            rooms
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|room| OwnedRoomId::try_from(room).ok())
                .collect()
        })
        .unwrap_or_default())
}

/// Whether `other` is a contact of `owner`: they share a direct-message room that `owner`'s
/// `m.direct` lists for `other` and both are joined to.
pub fn is_contact(services: &Services, owner: &UserId, other: &UserId) -> Result<bool> {
    let members = &services.rooms.members;
    for room_id in direct_rooms(services, owner, other)? {
        if members.get_membership(&room_id, owner)? == Some(MembershipState::Join)
            && members.get_membership(&room_id, other)? == Some(MembershipState::Join)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The servers among `destinations` that may get `owner`'s presence EDUs: all for `everyone`,
/// none for `nobody`, and for `contacts` those where one of the owner's contacts lives.
pub fn presence_destinations(
    services: &Services,
    owner: &UserId,
    destinations: Vec<OwnedServerName>,
) -> Result<Vec<OwnedServerName>> {
    match audience(services, owner, Subject::LastSeen)? {
        Audience::Everyone => Ok(destinations),
        Audience::Nobody => Ok(Vec::new()),
        Audience::Contacts => {
            let mut allowed = BTreeSet::new();
            if let Some(direct) = services.account_data.get(owner, None, "m.direct")? {
                for user in direct
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(user, _)| user)
                {
                    let Ok(user) = <&UserId>::try_from(user.as_str()) else {
                        continue;
                    };
                    if is_contact(services, owner, user)? {
                        allowed.insert(user.server_name().to_owned());
                    }
                }
            }
            Ok(destinations
                .into_iter()
                .filter(|server| allowed.contains(server))
                .collect())
        }
    }
}
