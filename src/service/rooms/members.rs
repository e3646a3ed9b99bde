//! Membership indexes: who is in a room, and which rooms a user is in, kept in step with
//! `m.room.member` events by the commit path.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use parking_lot::Mutex;
use ruma::{
    events::room::member::MembershipState, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    UserId,
};
use serde_json::Value;

use super::pdu::Pdu;
use crate::{
    error::{Error, Result},
    store::{key, Batch, Db, Tree, WrittenCache},
};

/// Owns `roomuserid_membership` (room ID 0xff user ID → membership text),
/// `userroomid_membership` (user ID 0xff room ID → stream position u64, membership text) and
/// `userroomid_forgotten` (user ID 0xff room ID → the forgotten membership's position and text,
/// until the user's membership changes again) and `roomid_membershipcount` (room ID → the stream
/// position of the room's newest membership change, so that readers skip rooms whose members did
/// not change instead of reading every member's entry).
pub struct Members {
    roomuserid_membership: Tree,
    roomid_membershipcount: Tree,
    userroomid_membership: Tree,
    userroomid_forgotten: Tree,
    /// The servers with a joined member, per room; dropped when a member event is committed.
    servers: Mutex<HashMap<OwnedRoomId, Arc<BTreeSet<OwnedServerName>>>>,
    /// Each user's rooms and forgotten rooms as read last (every `/sync` reads them, twice when
    /// it waits); a user's entries are dropped as soon as a batch changing them is written.
    rooms_of: Arc<WrittenCache<OwnedUserId, Arc<Vec<RoomMembership>>>>,
    forgotten_of: Arc<WrittenCache<OwnedUserId, Arc<Vec<RoomMembership>>>>,
}

/// The most users whose rooms are kept; past it the cache starts over.
const USERS_CACHED: usize = 100_000;

/// A user's membership in one room.
#[derive(Clone, Debug)]
pub struct RoomMembership {
    pub room_id: OwnedRoomId,
    pub membership: MembershipState,
    /// Stream position of the member event that set it.
    pub count: u64,
}

impl Members {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            roomuserid_membership: db.tree("roomuserid_membership"),
            roomid_membershipcount: db.tree("roomid_membershipcount"),
            userroomid_membership: db.tree("userroomid_membership"),
            userroomid_forgotten: db.tree("userroomid_forgotten"),
            servers: Mutex::new(HashMap::new()),
            rooms_of: WrittenCache::new(USERS_CACHED),
            forgotten_of: WrittenCache::new(USERS_CACHED),
        }
    }

    /// Adds the index updates for a member event at stream position `count`.
    pub fn update_in_batch(
        &self,
        room_id: &RoomId,
        pdu: &Pdu,
        count: u64,
        batch: &mut Batch,
    ) -> Result<()> {
        let Some(target) = pdu.state_key.as_deref() else {
            return Ok(());
        };
        let membership = pdu
            .content_value()
            .get("membership")
            .and_then(Value::as_str)
            .unwrap_or("leave")
            .to_owned();
        batch.insert(
            &self.roomuserid_membership,
            &key::join(&[room_id.as_bytes(), target.as_bytes()]),
            membership.as_bytes(),
        );
        let mut value = key::u64_bytes(count).to_vec();
        value.extend_from_slice(membership.as_bytes());
        let user_room = key::join(&[target.as_bytes(), room_id.as_bytes()]);
        batch.insert(&self.userroomid_membership, &user_room, &value);
        batch.remove(&self.userroomid_forgotten, &user_room);
        if let Ok(target) = OwnedUserId::try_from(target) {
            self.rooms_of.drop_after(target.clone(), batch);
            self.forgotten_of.drop_after(target, batch);
        }
        batch.insert(
            &self.roomid_membershipcount,
            room_id.as_bytes(),
            &key::u64_bytes(count),
        );
        Ok(())
    }

    /// The stream position of the newest membership change in a room, `None` for a room whose
    /// changes were indexed before this index existed (the caller then reads the members).
    pub fn last_change(&self, room_id: &RoomId) -> Result<Option<u64>> {
        let Some(value) = self.roomid_membershipcount.get(room_id.as_bytes())? else {
            return Ok(None);
        };
        key::read_u64(&value)
            .map(Some)
            .ok_or_else(|| Error::corrupt("roomid_membershipcount", "short value"))
    }

    /// Indexes the memberships of a room's state received from another server (the answer to
    /// our `send_join`), at one new stream position, so that the room's servers and members are
    /// known before the join is committed: its device list updates go to those servers.
    pub fn index_received_state(
        &self,
        globals: &crate::service::globals::Globals,
        room_id: &RoomId,
        member_events: &[Pdu],
    ) -> Result<()> {
        globals.write_with_count(|batch, count| {
            for pdu in member_events {
                self.update_in_batch(room_id, pdu, count, batch)?;
            }
            Ok(())
        })?;
        self.invalidate_servers(room_id);
        Ok(())
    }

    /// The servers that have at least one joined member in a room. Cached, so that sending an
    /// event costs nothing proportional to the room's size unless membership changed.
    pub fn servers_in_room(&self, room_id: &RoomId) -> Result<Arc<BTreeSet<OwnedServerName>>> {
        if let Some(servers) = self.servers.lock().get(room_id) {
            return Ok(Arc::clone(servers));
        }
        let servers: BTreeSet<OwnedServerName> = self
            .iter_members(room_id, Some(MembershipState::Join))?
            .into_iter()
            .map(|(user, _)| user.server_name().to_owned())
            .collect();
        let servers = Arc::new(servers);
        self.servers
            .lock()
            .insert(room_id.to_owned(), Arc::clone(&servers));
        Ok(servers)
    }

    /// The servers with a joined member in a room other than `own` (this server): where an
    /// event or EDU of the room goes.
    pub fn servers_in_room_except(
        &self,
        room_id: &RoomId,
        own: &ruma::ServerName,
    ) -> Result<Vec<OwnedServerName>> {
        Ok(self
            .servers_in_room(room_id)?
            .iter()
            .filter(|server| *server != own)
            .cloned()
            .collect())
    }

    /// Forgets the cached server list of a room after its membership changed.
    pub fn invalidate_servers(&self, room_id: &RoomId) {
        self.servers.lock().remove(room_id);
    }

    /// A user's current membership in a room.
    pub fn get_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MembershipState>> {
        let bytes = self
            .roomuserid_membership
            .get(&key::join(&[room_id.as_bytes(), user_id.as_bytes()]))?;
        Ok(bytes.map(|bytes| MembershipState::from(String::from_utf8_lossy(&bytes).as_ref())))
    }

    /// Whether a user is joined to a room.
    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.get_membership(room_id, user_id)? == Some(MembershipState::Join))
    }

    /// Members of a room with the given membership (all memberships if `None`).
    pub fn iter_members(
        &self,
        room_id: &RoomId,
        only: Option<MembershipState>,
    ) -> Result<Vec<(OwnedUserId, MembershipState)>> {
        let prefix = key::prefix(&[room_id.as_bytes()]);
        let mut members = Vec::new();
        for entry in self.roomuserid_membership.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let user = std::str::from_utf8(&db_key[prefix.len()..])
                .map_err(|e| Error::corrupt("roomuserid_membership", e))?;
            let user = OwnedUserId::try_from(user)
                .map_err(|e| Error::corrupt("roomuserid_membership", e))?;
            let membership = MembershipState::from(String::from_utf8_lossy(&value).as_ref());
            if only.as_ref().is_none_or(|wanted| *wanted == membership) {
                members.push((user, membership));
            }
        }
        Ok(members)
    }

    /// Every room a user has a membership in, with the position it last changed at.
    pub fn iter_rooms(&self, user_id: &UserId) -> Result<Vec<RoomMembership>> {
        let rooms = self.rooms_of.get_or_read(user_id, || {
            user_rooms(
                &self.userroomid_membership,
                "userroomid_membership",
                user_id,
            )
            .map(Arc::new)
        })?;
        Ok((*rooms).clone())
    }

    /// A user's membership in one room with the position it last changed at.
    pub fn get_user_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<RoomMembership>> {
        let Some(value) = self
            .userroomid_membership
            .get(&key::join(&[user_id.as_bytes(), room_id.as_bytes()]))?
        else {
            return Ok(None);
        };
        let count = key::read_u64(&value)
            .ok_or_else(|| Error::corrupt("userroomid_membership", "short value"))?;
        let membership = MembershipState::from(String::from_utf8_lossy(&value[8..]).as_ref());
        Ok(Some(RoomMembership {
            room_id: room_id.to_owned(),
            membership,
            count,
        }))
    }

    /// The rooms a user is joined to.
    pub fn iter_joined_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .iter_rooms(user_id)?
            .into_iter()
            .filter(|room| room.membership == MembershipState::Join)
            .map(|room| room.room_id)
            .collect())
    }

    /// The rooms both users are joined to, in room ID order.
    pub fn mutual_rooms(&self, user_id: &UserId, other: &UserId) -> Result<Vec<OwnedRoomId>> {
        let mut rooms = Vec::new();
        for room_id in self.iter_joined_rooms(user_id)? {
            if self.is_joined(&room_id, other)? {
                rooms.push(room_id);
            }
        }
        rooms.sort();
        Ok(rooms)
    }

    /// Forgets a room the user has left: drops the user's index entry, so that the room is gone
    /// from their rooms, initial syncs and history reads, and keeps the departure aside, so that
    /// an incremental sync from before it still reports the leave (another device of the user
    /// would otherwise never learn that the room was left; Synapse behaves the same).
    pub fn forget(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let user_room = key::join(&[user_id.as_bytes(), room_id.as_bytes()]);
        let Some(value) = self.userroomid_membership.get(&user_room)? else {
            return Ok(());
        };
        let mut batch = Batch::default();
        batch.remove(&self.userroomid_membership, &user_room);
        batch.insert(&self.userroomid_forgotten, &user_room, &value);
        self.rooms_of.drop_after(user_id.to_owned(), &mut batch);
        self.forgotten_of.drop_after(user_id.to_owned(), &mut batch);
        self.userroomid_membership.db().write(batch)
    }

    /// The rooms a user forgot, with the membership they had then.
    pub fn iter_forgotten(&self, user_id: &UserId) -> Result<Vec<RoomMembership>> {
        let forgotten = self.forgotten_of.get_or_read(user_id, || {
            user_rooms(&self.userroomid_forgotten, "userroomid_forgotten", user_id).map(Arc::new)
        })?;
        Ok((*forgotten).clone())
    }
}

/// A user's rooms in a `userroomid_*` tree (user ID 0xff room ID → stream position u64, then the
/// membership text); `name` is the tree's name for corruption errors.
fn user_rooms(tree: &Tree, name: &'static str, user_id: &UserId) -> Result<Vec<RoomMembership>> {
    let prefix = key::prefix(&[user_id.as_bytes()]);
    let mut rooms = Vec::new();
    for entry in tree.iter_prefix(&prefix) {
        let (db_key, value) = entry?;
        let room_id = std::str::from_utf8(&db_key[prefix.len()..])
            .ok()
            .and_then(|room| OwnedRoomId::try_from(room).ok())
            .ok_or_else(|| Error::corrupt(name, "bad room ID"))?;
        let count = key::read_u64(&value).ok_or_else(|| Error::corrupt(name, "short value"))?;
        let membership = MembershipState::from(String::from_utf8_lossy(&value[8..]).as_ref());
        rooms.push(RoomMembership {
            room_id,
            membership,
            count,
        });
    }
    Ok(rooms)
}
