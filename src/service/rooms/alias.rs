//! Room aliases and the public room directory.

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};

use crate::{
    error::{Error, Result},
    store::{key, Batch, Db, Tree},
};

/// Owns `alias_roomid` (alias → room ID 0xff creator user ID), `roomidalias_` (room ID 0xff alias
/// → empty) and `publicroomid_` (room ID → empty: rooms published in the directory).
pub struct Aliases {
    alias_roomid: Tree,
    roomidalias: Tree,
    publicroomid: Tree,
}

impl Aliases {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            alias_roomid: db.tree("alias_roomid"),
            roomidalias: db.tree("roomidalias_"),
            publicroomid: db.tree("publicroomid_"),
        }
    }

    /// The room an alias points to, and who created the alias.
    pub fn get(&self, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>> {
        let Some(bytes) = self.alias_roomid.get(alias.as_bytes())? else {
            return Ok(None);
        };
        let mut parts = key::split(&bytes);
        let room = std::str::from_utf8(parts.next().unwrap_or_default())
            .map_err(|e| Error::corrupt("alias_roomid", e))?;
        let creator = std::str::from_utf8(parts.next().unwrap_or_default())
            .map_err(|e| Error::corrupt("alias_roomid", e))?;
        Ok(Some((
            OwnedRoomId::try_from(room).map_err(|e| Error::corrupt("alias_roomid", e))?,
            OwnedUserId::try_from(creator).map_err(|e| Error::corrupt("alias_roomid", e))?,
        )))
    }

    /// Points a new alias at a room; `M_UNKNOWN`-free conflict reporting is the caller's.
    pub fn set(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(
            &self.alias_roomid,
            alias.as_bytes(),
            &key::join(&[room_id.as_bytes(), creator.as_bytes()]),
        );
        batch.insert(
            &self.roomidalias,
            &key::join(&[room_id.as_bytes(), alias.as_bytes()]),
            b"",
        );
        self.alias_roomid.db().write(batch)
    }

    /// Removes an alias.
    pub fn remove(&self, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        let mut batch = Batch::default();
        batch.remove(&self.alias_roomid, alias.as_bytes());
        batch.remove(
            &self.roomidalias,
            &key::join(&[room_id.as_bytes(), alias.as_bytes()]),
        );
        self.alias_roomid.db().write(batch)
    }

    /// The local aliases of a room.
    pub fn iter_room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let prefix = key::prefix(&[room_id.as_bytes()]);
        self.roomidalias
            .iter_prefix(&prefix)
            .map(|entry| {
                let (db_key, _) = entry?;
                let alias = std::str::from_utf8(&db_key[prefix.len()..])
                    .map_err(|e| Error::corrupt("roomidalias_", e))?;
                OwnedRoomAliasId::try_from(alias).map_err(|e| Error::corrupt("roomidalias_", e))
            })
            .collect()
    }

    /// Publishes a room in (or removes it from) the directory.
    pub fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()> {
        if public {
            self.publicroomid.insert(room_id.as_bytes(), b"")
        } else {
            self.publicroomid.remove(room_id.as_bytes())
        }
    }

    /// Whether a room is published in the directory.
    pub fn is_public(&self, room_id: &RoomId) -> Result<bool> {
        self.publicroomid.contains(room_id.as_bytes())
    }

    /// Every published room, in room ID order.
    pub fn iter_public(&self) -> Result<Vec<OwnedRoomId>> {
        self.publicroomid
            .iter_prefix(b"")
            .map(|entry| {
                let (db_key, _) = entry?;
                OwnedRoomId::try_from(String::from_utf8_lossy(&db_key).as_ref())
                    .map_err(|e| Error::corrupt("publicroomid_", e))
            })
            .collect()
    }
}
