//! What server admins shut out, stored durably in the admin service's tree: blocked rooms
//! (nobody here joins them, no server joins them through here), denied servers (their requests
//! are refused and nothing is sent to them) and quarantined media (served to admins only,
//! never fetched again).

use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};

use crate::{
    error::{Error, Result},
    store::{key, Tree},
};

/// Key prefix of a blocked room in `adminkey_value`: `blocked_room 0xff room ID` → the admin
/// who blocked it.
const BLOCKED_ROOM: &[u8] = b"blocked_room";
/// Key prefix of a denied server: `denied_server 0xff server name` → empty.
const DENIED_SERVER: &[u8] = b"denied_server";
/// Key prefix of quarantined media: `quarantined_media 0xff server name 0xff media ID` → the
/// admin who quarantined it.
const QUARANTINED_MEDIA: &[u8] = b"quarantined_media";

/// The blocked rooms, denied servers and quarantined media, in `adminkey_value` (the admin
/// service's tree, under their own key prefixes). Denied servers are also kept in memory:
/// every federation request and every transaction sent asks.
pub struct Blocks {
    adminkey_value: Tree,
    denied: parking_lot::RwLock<std::collections::BTreeSet<OwnedServerName>>,
}

impl Blocks {
    /// Loads the denied servers from the admin service's tree.
    pub fn open(adminkey_value: Tree) -> Result<Self> {
        let mut denied = std::collections::BTreeSet::new();
        for name in iter_names(&adminkey_value, DENIED_SERVER) {
            denied.insert(
                OwnedServerName::try_from(name?.as_str())
                    .map_err(|e| Error::corrupt("adminkey_value", e))?,
            );
        }
        Ok(Self {
            adminkey_value,
            denied: parking_lot::RwLock::new(denied),
        })
    }

    /// Blocks (or unblocks) a room; `by` is the admin who did.
    pub fn set_room_blocked(&self, room_id: &RoomId, by: &UserId, blocked: bool) -> Result<()> {
        let entry = key::join(&[BLOCKED_ROOM, room_id.as_bytes()]);
        if blocked {
            self.adminkey_value.insert(&entry, by.as_bytes())
        } else {
            self.adminkey_value.remove(&entry)
        }
    }

    /// The admin who blocked a room, when it is blocked.
    pub fn get_room_block(&self, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
        let entry = key::join(&[BLOCKED_ROOM, room_id.as_bytes()]);
        let Some(value) = self.adminkey_value.get(&entry)? else {
            return Ok(None);
        };
        OwnedUserId::try_from(String::from_utf8_lossy(&value).as_ref())
            .map(Some)
            .map_err(|e| Error::corrupt("adminkey_value", e))
    }

    /// Whether a room is blocked.
    pub fn is_room_blocked(&self, room_id: &RoomId) -> Result<bool> {
        self.adminkey_value
            .contains(&key::join(&[BLOCKED_ROOM, room_id.as_bytes()]))
    }

    /// `M_FORBIDDEN` when a room is blocked: what a join, knock or invite into it gets.
    pub fn check_room(&self, room_id: &RoomId) -> Result<()> {
        if self.is_room_blocked(room_id)? {
            return Err(Error::forbidden(format!(
                "{room_id} is blocked on this server"
            )));
        }
        Ok(())
    }

    /// Every blocked room, in room ID order.
    pub fn iter_blocked_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        iter_names(&self.adminkey_value, BLOCKED_ROOM)
            .into_iter()
            .map(|name| {
                OwnedRoomId::try_from(name?.as_str())
                    .map_err(|e| Error::corrupt("adminkey_value", e))
            })
            .collect()
    }

    /// Denies (or allows again) a server for the whole server.
    pub fn set_server_denied(&self, server: &ServerName, denied: bool) -> Result<()> {
        let entry = key::join(&[DENIED_SERVER, server.as_bytes()]);
        if denied {
            self.adminkey_value.insert(&entry, b"")?;
            self.denied.write().insert(server.to_owned());
        } else {
            self.adminkey_value.remove(&entry)?;
            self.denied.write().remove(server);
        }
        Ok(())
    }

    /// Whether a server is denied (a memory read).
    pub fn is_server_denied(&self, server: &ServerName) -> bool {
        self.denied.read().contains(server)
    }

    /// Every denied server, in name order.
    pub fn iter_denied_servers(&self) -> Vec<OwnedServerName> {
        self.denied.read().iter().cloned().collect()
    }

    /// Quarantines (or releases) a media item; `by` is the admin who did.
    pub fn set_media_quarantined(
        &self,
        server: &ServerName,
        media_id: &str,
        by: &UserId,
        quarantined: bool,
    ) -> Result<()> {
        let entry = key::join(&[QUARANTINED_MEDIA, server.as_bytes(), media_id.as_bytes()]);
        if quarantined {
            self.adminkey_value.insert(&entry, by.as_bytes())
        } else {
            self.adminkey_value.remove(&entry)
        }
    }

    /// The admin who quarantined a media item, when it is quarantined.
    pub fn get_media_quarantine(
        &self,
        server: &ServerName,
        media_id: &str,
    ) -> Result<Option<OwnedUserId>> {
        let entry = key::join(&[QUARANTINED_MEDIA, server.as_bytes(), media_id.as_bytes()]);
        let Some(value) = self.adminkey_value.get(&entry)? else {
            return Ok(None);
        };
        OwnedUserId::try_from(String::from_utf8_lossy(&value).as_ref())
            .map(Some)
            .map_err(|e| Error::corrupt("adminkey_value", e))
    }

    /// Whether a media item is quarantined.
    pub fn is_media_quarantined(&self, server: &ServerName, media_id: &str) -> Result<bool> {
        self.adminkey_value.contains(&key::join(&[
            QUARANTINED_MEDIA,
            server.as_bytes(),
            media_id.as_bytes(),
        ]))
    }
}

/// The names after `kind 0xff` in the tree's keys of that kind.
fn iter_names(tree: &Tree, kind: &[u8]) -> Vec<Result<String>> {
    let prefix = key::prefix(&[kind]);
    tree.iter_prefix(&prefix)
        .map(|entry| {
            let (db_key, _) = entry?;
            String::from_utf8(db_key[prefix.len()..].to_vec())
                .map_err(|e| Error::corrupt("adminkey_value", e))
        })
        .collect()
}
