//! The operations behind the Synapse admin API subset (`docs/admin_api.md`): accounts
//! (`synapse_admin/users.rs`) and rooms (`synapse_admin/rooms.rs`) as admin tools see them, and
//! room deletion, history purges and blocks (`synapse_admin/moderation.rs`), federation
//! destinations (`synapse_admin/destinations.rs`) and media (`synapse_admin/media.rs`).
//! Every operation takes an [`Admin`], which only [`Admin::check`] makes, so none runs for a
//! caller who is not a server admin.

pub mod destinations;
pub mod media;
pub mod moderation;
pub mod room_moderation;
pub mod rooms;
pub mod users;

use ruma::{OwnedUserId, UserId};

use crate::{
    error::{Error, Result},
    service::Services,
};

/// A caller known to be a server admin.
pub struct Admin(OwnedUserId);

impl Admin {
    /// The caller as an admin; `M_FORBIDDEN` unless `user_id` is a server admin.
    pub fn check(services: &Services, user_id: &UserId) -> Result<Self> {
        if !services.users.is_admin(user_id)? {
            return Err(Error::forbidden(format!("{user_id} is not a server admin")));
        }
        Ok(Self(user_id.to_owned()))
    }

    /// The admin's user ID.
    pub fn user_id(&self) -> &UserId {
        &self.0
    }
}

/// A page of a list: the offset to start at and how many entries at most.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    pub from: usize,
    pub limit: usize,
}

impl PageRequest {
    /// Reads `from` (default 0) and `limit` (default 100) as Synapse does: each must be a
    /// non-negative integer (`M_INVALID_PARAM`).
    pub fn parse(from: Option<&str>, limit: Option<&str>) -> Result<Self> {
        let number = |name: &str, value: Option<&str>, default: usize| match value {
            None => Ok(default),
            Some(text) => text.parse::<usize>().map_err(|_| {
                Error::invalid_param(format!(
                    "query parameter {name} must be a non-negative integer"
                ))
            }),
        };
        Ok(Self {
            from: number("from", from, 0)?,
            limit: number("limit", limit, 100)?,
        })
    }

    /// The page of `entries` and the offset of the next page, if any entries are left.
    pub fn take<T>(self, entries: Vec<T>) -> (Vec<T>, Option<usize>) {
        let total = entries.len();
        let page: Vec<T> = entries
            .into_iter()
            .skip(self.from)
            .take(self.limit)
            .collect();
        let next = self.from.saturating_add(self.limit);
        (page, (next < total).then_some(next))
    }
}

/// Whether a `dir` parameter (`f` or `b`, `M_INVALID_PARAM` otherwise) reads backwards;
/// `backwards_by_default` when absent.
pub fn parse_dir(value: Option<&str>, backwards_by_default: bool) -> Result<bool> {
    match value {
        None => Ok(backwards_by_default),
        Some("f") => Ok(false),
        Some("b") => Ok(true),
        Some(other) => Err(Error::invalid_param(format!(
            "dir must be f or b, not {other}"
        ))),
    }
}

/// A query flag that must read `true` or `false` (`M_INVALID_PARAM` otherwise).
pub fn parse_flag(name: &str, value: Option<&str>) -> Result<Option<bool>> {
    match value {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(Error::invalid_param(format!(
            "query parameter {name} must be true or false, not {other}"
        ))),
    }
}
