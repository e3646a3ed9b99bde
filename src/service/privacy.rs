//! Privacy settings: who may see a user's presence and last seen, avatar and stories, chosen by
//! the user in the global account data `io.plait.privacy` (docs/privacy.md) and enforced here
//! for viewers of this server and of others.
//!
//! Each setting is `everyone` (the default), `contacts` (users the person shares a direct-message
//! room with: a room the person's `m.direct` lists for that user, both joined) or `nobody`.
//! Presence is also withheld from the users the person ignores (`m.ignored_user_list`).
//! Another server gets what only its users may see: under `contacts`, only when every user of
//! that server who shares a joined room with the person is a contact (a presence EDU or a
//! profile answer cannot be split between a server's users).
//! The parsed settings are cached by `account_data` (dropped when the entry is set).

use std::collections::BTreeSet;

use ruma::{events::room::member::MembershipState, OwnedUserId, ServerName, UserId};
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    service::Services,
};

/// The global account data type holding the settings.
pub const ACCOUNT_DATA_TYPE: &str = "io.plait.privacy";

/// Who may see one thing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Audience {
    #[default]
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

/// The things a setting covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aspect {
    /// Presence, `last_active_ago` and `currently_active` (the account data key `last_seen`).
    Presence,
    /// The avatar in profile lookups and user-directory results (`avatar`).
    Avatar,
    /// Stories (`stories`): who may join the person's story rooms.
    Stories,
}

impl Aspect {
    const ALL: [Self; 3] = [Self::Presence, Self::Avatar, Self::Stories];

    fn key(self) -> &'static str {
        match self {
            Self::Presence => "last_seen",
            Self::Avatar => "avatar",
            Self::Stories => "stories",
        }
    }
}

/// One user's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub presence: Audience,
    pub avatar: Audience,
    pub stories: Audience,
}

impl Settings {
    /// The settings an account data entry holds; a missing or unreadable key is `everyone`
    /// (entries are validated when set, so only a hand-edited database has bad ones).
    pub fn from_content(content: Option<&Value>) -> Self {
        let read = |aspect: Aspect| {
            content
                .and_then(|content| content.get(aspect.key()))
                .and_then(Value::as_str)
                .and_then(Audience::parse)
                .unwrap_or_default()
        };
        Self {
            presence: read(Aspect::Presence),
            avatar: read(Aspect::Avatar),
            stories: read(Aspect::Stories),
        }
    }

    pub fn get(&self, aspect: Aspect) -> Audience {
        match aspect {
            Aspect::Presence => self.presence,
            Aspect::Avatar => self.avatar,
            Aspect::Stories => self.stories,
        }
    }
}

/// Checks an `io.plait.privacy` entry before it is stored: an object whose `presence`, `avatar`
/// and `stories`, where present, are `everyone`, `contacts` or `nobody`. Other keys are kept
/// (for settings a later version adds).
pub fn validate(content: &Value) -> Result<()> {
    let object = content
        .as_object()
        .ok_or_else(|| Error::bad_json(format!("{ACCOUNT_DATA_TYPE} must be an object")))?;
    for aspect in Aspect::ALL {
        let Some(value) = object.get(aspect.key()) else {
            continue;
        };
        if value.as_str().and_then(Audience::parse).is_none() {
            return Err(Error::bad_json(format!(
                "{ACCOUNT_DATA_TYPE}: {} must be \"everyone\", \"contacts\" or \"nobody\"",
                aspect.key()
            )));
        }
    }
    Ok(())
}

/// Whether `viewer` (a user of this server or another) may see `owner`'s `aspect`.
pub fn allows(
    services: &Services,
    owner: &UserId,
    viewer: &UserId,
    aspect: Aspect,
) -> Result<bool> {
    if owner == viewer {
        return Ok(true);
    }
    if aspect == Aspect::Presence && services.account_data.ignored_users(owner)?.contains(viewer) {
        return Ok(false);
    }
    match services.account_data.privacy(owner)?.get(aspect) {
        Audience::Everyone => Ok(true),
        Audience::Nobody => Ok(false),
        Audience::Contacts => is_contact(services, owner, viewer),
    }
}

/// Whether `server` may be sent `owner`'s `aspect`: every user of it who could see it must be
/// allowed to. `everyone` allows every server; `contacts` those whose users sharing a joined room
/// with `owner` are all contacts (and not ignored, for presence); `nobody` none.
pub fn allows_server(
    services: &Services,
    owner: &UserId,
    server: &ServerName,
    aspect: Aspect,
) -> Result<bool> {
    let audience = services.account_data.privacy(owner)?.get(aspect);
    let ignored = services.account_data.ignored_users(owner)?;
    let ignores_there =
        aspect == Aspect::Presence && ignored.iter().any(|user| user.server_name() == server);
    match audience {
        Audience::Nobody => Ok(false),
        Audience::Everyone if !ignores_there => Ok(true),
        Audience::Everyone | Audience::Contacts => {
            for viewer in users_of_server_sharing_rooms(services, owner, server)? {
                if !allows(services, owner, &viewer, aspect)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// The users of `server` joined to a room `owner` is joined to.
fn users_of_server_sharing_rooms(
    services: &Services,
    owner: &UserId,
    server: &ServerName,
) -> Result<BTreeSet<OwnedUserId>> {
    let members = &services.rooms.members;
    let mut users = BTreeSet::new();
    for room_id in members.iter_joined_rooms(owner)? {
        if !members
            .servers_in_room(&room_id)?
            .iter()
            .any(|s| s == server)
        {
            continue;
        }
        users.extend(
            members
                .iter_members(&room_id, Some(MembershipState::Join))?
                .into_iter()
                .map(|(user, _)| user)
                .filter(|user| user.server_name() == server),
        );
    }
    Ok(users)
}

/// Whether `viewer` is a contact of `owner`: `owner`'s `m.direct` lists a room for `viewer`
/// that both are joined to.
pub fn is_contact(services: &Services, owner: &UserId, viewer: &UserId) -> Result<bool> {
    let direct = services.account_data.direct_rooms(owner)?;
    let Some(rooms) = direct.get(viewer) else {
        return Ok(false);
    };
    let members = &services.rooms.members;
    for room_id in rooms {
        if members.is_joined(room_id, owner)? && members.is_joined(room_id, viewer)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A local user's profile as `viewer` may see it: the avatar is left out unless allowed.
/// `viewer` is a user, a server (for a federation query, which names no user) or anyone (a
/// request without a token: only `everyone` shows it).
pub fn filter_profile(
    services: &Services,
    owner: &UserId,
    viewer: Viewer<'_>,
    profile: &mut Map<String, Value>,
) -> Result<()> {
    if !profile.contains_key("avatar_url") {
        return Ok(());
    }
    let allowed = match viewer {
        Viewer::User(user) => allows(services, owner, user, Aspect::Avatar)?,
        Viewer::Server(server) => allows_server(services, owner, server, Aspect::Avatar)?,
        Viewer::Anyone => services.account_data.privacy(owner)?.avatar == Audience::Everyone,
    };
    if !allowed {
        profile.remove("avatar_url");
    }
    Ok(())
}

/// Who is looking.
#[derive(Clone, Copy, Debug)]
pub enum Viewer<'a> {
    User(&'a UserId),
    Server(&'a ServerName),
    /// A request without an access token.
    Anyone,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn settings_default_to_everyone_and_read_each_key() {
        assert_eq!(Settings::from_content(None), Settings::default());
        let settings = Settings::from_content(Some(
            &json!({ "last_seen": "contacts", "avatar": "nobody", "other": 1 }),
        ));
        assert_eq!(settings.get(Aspect::Presence), Audience::Contacts);
        assert_eq!(settings.get(Aspect::Avatar), Audience::Nobody);
        assert_eq!(settings.get(Aspect::Stories), Audience::Everyone);
    }

    #[test]
    fn validation_refuses_values_outside_the_three() {
        assert!(validate(&json!({ "last_seen": "contacts", "future": true })).is_ok());
        assert!(validate(&json!({ "last_seen": "friends" })).is_err());
        assert!(validate(&json!({ "avatar": 1 })).is_err());
        assert!(validate(&json!("everyone")).is_err());
    }
}
