//! Invite links (`docs/invite_links.md`): a room or space member who may invite makes a link
//! with an optional expiry and use limit; redeeming it invites the user on behalf of the link's
//! creator (the invite's `reason` names the link) and joins them, and for a space also joins the
//! space's restricted child rooms that allow the space.
//!
//! Codes are 32 random alphanumeric characters (about 190 bits) and only their SHA-256 is stored;
//! a link is listed and revoked by its `id`, the first 16 hex digits of that hash, or its code.
//! Everything a redemption does is ordinary member events through `rooms::membership`.

use std::sync::Arc;

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    EventId, OwnedRoomId, OwnedUserId, RoomId, ServerName, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    crypto,
    error::{Error, Result},
    service::{
        rooms::{
            handshake,
            membership::{send_member_event, set_membership},
            power::PowerLevels,
            resident,
            restricted::{self, JoinCheck},
            retention::MAX_LIFETIME_MS,
            spaces,
        },
        Services,
    },
    store::{key, Batch, Db, Tree},
    util,
};

/// Characters in a generated code.
const CODE_LENGTH: usize = 32;

/// Owns `invitelink_info` (SHA-256 of the code → JSON [`InviteLink`]) and `roomid_invitelink`
/// (room ID 0xff SHA-256 of the code → empty: a room's links).
pub struct InviteLinks {
    invitelink_info: Tree,
    roomid_invitelink: Tree,
    /// Held while a use is counted, so that two redemptions never both take a link's last use.
    uses: parking_lot::Mutex<()>,
}

/// A stored link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteLink {
    /// The first 16 hex digits of the code's hash: how lists name the link.
    pub id: String,
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
    pub created_ts: u64,
    /// Last valid moment (ms since the epoch), if it expires.
    pub expires_ts: Option<u64>,
    /// How many redemptions it allows, if limited.
    pub max_uses: Option<u64>,
    pub uses: u64,
}

/// The limits of a new link.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkLimits {
    pub expires_in_ms: Option<u64>,
    pub max_uses: Option<u64>,
}

impl LinkLimits {
    /// Reads `expires_in_ms` and `max_uses` (absent, `null`, or a positive integer; an expiry at
    /// most 100 years away) from a request body; `M_INVALID_PARAM` otherwise.
    pub fn from_body(body: &Value) -> Result<Self> {
        let positive = |field: &str, max: u64| match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .filter(|number| (1..=max).contains(number))
                .map(Some)
                .ok_or_else(|| {
                    Error::invalid_param(format!("{field} must be an integer from 1 to {max}"))
                }),
        };
        Ok(Self {
            expires_in_ms: positive("expires_in_ms", MAX_LIFETIME_MS)?,
            max_uses: positive("max_uses", u64::from(u32::MAX))?,
        })
    }
}

impl InviteLink {
    /// The link as the API shows it (the code is never stored, so never shown again).
    pub fn to_value(&self) -> Value {
        json!({
            "id": self.id, "room_id": self.room_id, "creator": self.creator,
            "created_ts": self.created_ts, "expires_ts": self.expires_ts,
            "max_uses": self.max_uses, "uses": self.uses,
        })
    }
}

impl InviteLinks {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            invitelink_info: db.tree("invitelink_info"),
            roomid_invitelink: db.tree("roomid_invitelink"),
            uses: parking_lot::Mutex::new(()),
        }
    }

    /// A link by its code.
    pub fn get(&self, code: &str) -> Result<Option<InviteLink>> {
        self.invitelink_info
            .get(&crypto::token_hash(code))?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("invitelink_info", e))
            })
            .transpose()
    }

    /// A room's links with their hashes.
    fn iter_room(&self, room_id: &RoomId) -> Result<Vec<([u8; 32], InviteLink)>> {
        let prefix = key::prefix(&[room_id.as_bytes()]);
        let mut links = Vec::new();
        for entry in self.roomid_invitelink.iter_prefix(&prefix) {
            let (db_key, _) = entry?;
            let hash: [u8; 32] = db_key[prefix.len()..]
                .try_into()
                .map_err(|e| Error::corrupt("roomid_invitelink", e))?;
            if let Some(bytes) = self.invitelink_info.get(&hash)? {
                let link = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt("invitelink_info", e))?;
                links.push((hash, link));
            }
        }
        Ok(links)
    }

    fn write(&self, hash: &[u8; 32], link: &InviteLink) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(
            &self.invitelink_info,
            hash,
            &serde_json::to_vec(link).map_err(Error::internal)?,
        );
        batch.insert(
            &self.roomid_invitelink,
            &[&key::prefix(&[link.room_id.as_bytes()])[..], hash].concat(),
            b"",
        );
        self.invitelink_info.db().write(batch)
    }

    fn delete(&self, hash: &[u8; 32], link: &InviteLink) -> Result<()> {
        let mut batch = Batch::default();
        batch.remove(&self.invitelink_info, hash);
        batch.remove(
            &self.roomid_invitelink,
            &[&key::prefix(&[link.room_id.as_bytes()])[..], hash].concat(),
        );
        self.invitelink_info.db().write(batch)
    }
}

/// `M_FORBIDDEN` unless `user` is joined to the room with the power to invite.
fn check_may_invite(services: &Services, room_id: &RoomId, user: &UserId) -> Result<()> {
    if !services.rooms.members.is_joined(room_id, user)? {
        return Err(Error::forbidden(format!(
            "{user} is not joined to {room_id}"
        )));
    }
    let power = PowerLevels::load(services, room_id)?;
    if power.user_level(user) < power.action_level("invite") {
        return Err(Error::forbidden(format!(
            "{user} may not invite to {room_id}"
        )));
    }
    Ok(())
}

/// Makes a link to a room for `creator`, who must be joined and allowed to invite; answers its
/// code (shown this once) and the link.
pub fn create(
    services: &Services,
    room_id: &RoomId,
    creator: &UserId,
    limits: LinkLimits,
) -> Result<(String, InviteLink)> {
    check_may_invite(services, room_id, creator)?;
    let code = util::random_string(CODE_LENGTH);
    let hash = crypto::token_hash(&code);
    let now = util::now_millis();
    let link = InviteLink {
        id: hex_id(&hash),
        room_id: room_id.to_owned(),
        creator: creator.to_owned(),
        created_ts: now,
        expires_ts: limits.expires_in_ms.map(|ms| now.saturating_add(ms)),
        max_uses: limits.max_uses,
        uses: 0,
    };
    services.invite_links.write(&hash, &link)?;
    Ok((code, link))
}

/// A room's links, for a member who may invite.
pub fn list(services: &Services, room_id: &RoomId, user: &UserId) -> Result<Vec<InviteLink>> {
    check_may_invite(services, room_id, user)?;
    let mut links: Vec<InviteLink> = services
        .invite_links
        .iter_room(room_id)?
        .into_iter()
        .map(|(_, link)| link)
        .collect();
    links.sort_by_key(|link| link.created_ts);
    Ok(links)
}

/// Revokes a room's link named by its code or `id`, for a member who may invite;
/// `M_NOT_FOUND` for no such link of the room.
pub fn revoke(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    code_or_id: &str,
) -> Result<()> {
    check_may_invite(services, room_id, user)?;
    let by_code = crypto::token_hash(code_or_id);
    let found = services
        .invite_links
        .iter_room(room_id)?
        .into_iter()
        .find(|(hash, link)| *hash == by_code || link.id == code_or_id);
    let Some((hash, link)) = found else {
        return Err(Error::not_found(format!(
            "no invite link {code_or_id} in {room_id}"
        )));
    };
    services.invite_links.delete(&hash, &link)
}

/// Why a link cannot be used now, if it cannot.
fn check_usable(services: &Services, link: &InviteLink, now: u64) -> Result<()> {
    if link.expires_ts.is_some_and(|expiry| expiry < now) {
        return Err(Error::forbidden(format!(
            "invite link {} has expired",
            link.id
        )));
    }
    if link.max_uses.is_some_and(|max| link.uses >= max) {
        return Err(Error::forbidden(format!(
            "invite link {} has been used up",
            link.id
        )));
    }
    check_may_invite(services, &link.room_id, &link.creator).map_err(|_| {
        Error::forbidden(format!(
            "the creator of invite link {} can no longer invite to {}",
            link.id, link.room_id
        ))
    })
}

/// A usable link by its code, counting one use; `M_NOT_FOUND` for an unknown or revoked code,
/// `M_FORBIDDEN` for an expired or used-up link or one whose creator can no longer invite.
fn take_use(services: &Services, code: &str) -> Result<InviteLink> {
    let links = &services.invite_links;
    let _guard = links.uses.lock();
    let mut link = links
        .get(code)?
        .ok_or_else(|| Error::not_found("unknown invite link"))?;
    check_usable(services, &link, util::now_millis())?;
    link.uses += 1;
    links.write(&crypto::token_hash(code), &link)?;
    Ok(link)
}

/// Redeems a link for a local user: invites them on behalf of its creator (unless they are
/// already invited or joined) with a reason naming the link, joins them, and for a space also
/// joins the space's restricted children that allow it. Answers the room's ID.
#[tracing::instrument(skip_all, fields(user_id = %user))]
pub async fn redeem(services: &Services, code: &str, user: &UserId) -> Result<OwnedRoomId> {
    let preview = services
        .invite_links
        .get(code)?
        .ok_or_else(|| Error::not_found("unknown invite link"))?;
    let room_id = preview.room_id.clone();
    let membership = services.rooms.members.get_membership(&room_id, user)?;
    if membership == Some(MembershipState::Join) {
        return Ok(room_id);
    }
    if membership == Some(MembershipState::Ban) {
        return Err(Error::forbidden(format!("{user} is banned from {room_id}")));
    }
    let link = take_use(services, code)?;
    if membership != Some(MembershipState::Invite) {
        let reason = format!("invite link {}", link.id);
        set_membership(
            services,
            &room_id,
            &link.creator,
            user,
            "invite",
            Some(reason.as_str()),
        )
        .await?;
    }
    set_membership(services, &room_id, user, user, "join", None).await?;
    if is_space(services, &room_id)? {
        join_children(services, &room_id, user).await?;
    }
    Ok(room_id)
}

fn is_space(services: &Services, room_id: &RoomId) -> Result<bool> {
    Ok(services
        .rooms
        .current_state_pdu(room_id, &StateEventType::RoomCreate, "")?
        .is_some_and(|create| create.content_value()["type"] == "m.space"))
}

/// Joins `user` to each child of a space that this server is in and whose restricted join rule
/// lets the space's members in (with a local authoriser); other children are left alone.
async fn join_children(services: &Services, space: &RoomId, user: &UserId) -> Result<()> {
    for child in spaces::children_state(services, space)? {
        let Some(child) = child["state_key"]
            .as_str()
            .and_then(|id| OwnedRoomId::try_from(id).ok())
        else {
            continue;
        };
        if !services.rooms.exists(&child)? || services.rooms.members.is_joined(&child, user)? {
            continue;
        }
        let JoinCheck::Authorised(authoriser) = restricted::check_join(services, &child, user)?
        else {
            continue;
        };
        let mut content = json!({
            "membership": "join",
            "join_authorised_via_users_server": authoriser,
        });
        crate::service::rooms::membership::add_profile(services, user, &mut content)?;
        send_member_event(services, &child, user, user, content).await?;
    }
    Ok(())
}

/// What the link's page shows: the room's name, avatar, topic and joined member count.
pub fn page_summary(services: &Services, code: &str) -> Result<(InviteLink, Value)> {
    let link = services
        .invite_links
        .get(code)?
        .ok_or_else(|| Error::not_found("unknown invite link"))?;
    check_usable(services, &link, util::now_millis())?;
    let summary = spaces::summary(services, &link.room_id)?.unwrap_or(Value::Null);
    Ok((link, summary))
}

/// The first 16 hex digits of a hash.
fn hex_id(hash: &[u8; 32]) -> String {
    hash[..8].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `send_knock` with invite links: commits a knock from another server (`resident::send_knock`),
/// and when its `reason` carries a usable code of a link to this room, invites the knocking user
/// on behalf of the link's creator, within the link's limits. Answers the stripped state
/// `send_knock` answers; a knock without a usable code stays an ordinary knock.
/// The invite goes out half a second after the answer, so that the knocking server has
/// recorded its knock before the invite replaces it.
pub async fn send_knock(
    services: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    event: &Value,
) -> Result<Vec<Value>> {
    let state = resident::send_knock(services, origin, room_id, event_id, event).await?;
    let knocker = event["state_key"]
        .as_str()
        .and_then(|user| OwnedUserId::try_from(user).ok());
    let reason = event["content"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(knocker) = knocker {
        let services = Arc::clone(services);
        let room_id = room_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if let Err(error) = answer_knock(&services, &room_id, &knocker, &reason).await {
                tracing::debug!(%error, "knock not answered by an invite link");
            }
        });
    }
    Ok(state)
}

/// Invites a knocking user of another server when `reason` carries a usable code of a link to
/// the room.
async fn answer_knock(
    services: &Services,
    room_id: &RoomId,
    knocker: &UserId,
    reason: &str,
) -> Result<()> {
    let links = &services.invite_links;
    let code = reason
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| word.len() == CODE_LENGTH)
        .find(|word| {
            links
                .get(word)
                .ok()
                .flatten()
                .is_some_and(|link| link.room_id == room_id)
        })
        .ok_or_else(|| Error::not_found("no invite link code in the knock"))?;
    let link = take_use(services, code)?;
    let extra = json!({ "reason": format!("invite link {}", link.id) });
    handshake::invite_remote(services, room_id, &link.creator, knocker, extra)
        .await
        .map(drop)
}
