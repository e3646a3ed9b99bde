//! Membership handshakes with other servers, from this side: joining a remote room
//! (`make_join`/`send_join`, `join.rs`), inviting a remote user (`/v2/invite`, `invite.rs`),
//! knocking on one (`make_knock`/`send_knock`), leaving a room this server only knows through an
//! invite or a knock (`make_leave`/`send_leave`), and storing invites that arrive (`outside.rs`).
//!
//! (`join.rs`, `invite.rs`, `outside.rs`) this side of joins (`make_join`/`send_join`, then the received state and auth chain are verified, stored as outliers and their members indexed, and the join itself goes through `incoming`'s checks 1 to 5 against that state and `commit_received`, the state snapshot in the join's batch), knocks (`make_knock`/`send_knock`), remote invites (`/v2/invite`, countersigned, then sent to the room, the invitee's server included when one of its users is joined, since its `/v2/invite` answer does not put the event in its timeline), invites arriving from other servers and our own remote knocks (both stored as outliers with the room's stripped state for `/sync`, since this server is not in the room) and rejections or rescinded knocks (`make_leave`/`send_leave`, through the servers named in that stripped state).

use ruma::{
    events::room::member::MembershipState, CanonicalJsonObject, CanonicalJsonValue, OwnedEventId,
    OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{json, Value};

use super::{timeline::build_and_sign, version::rules_for};
use crate::{
    error::{Error, Result},
    service::Services,
    store::{key, Tree},
};

mod invite;
mod join;
mod outside;

pub use self::invite::invite_remote;
use self::join::join_through;
use self::outside::knock_through;
pub use self::outside::{leave_remote, outside_membership_update, store_outside_membership};

/// Room versions this server can join, for `make_join`'s `ver` parameters.
const SUPPORTED_VERSIONS: [&str; 12] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

/// Owns `userroomid_invitestate` (user ID 0xff room ID → JSON array of stripped state events of a
/// room this server is not in, that came with an invite from another server or answered a knock).
pub struct Handshakes {
    userroomid_invitestate: Tree,
    /// Serialise, per room (striped), the changes of local users' memberships in a room this
    /// server is not in: see [`Handshakes::lock_outside`].
    outside_locks: Vec<tokio::sync::Mutex<()>>,
}

/// How many stripes [`Handshakes::lock_outside`] spreads rooms over.
const OUTSIDE_LOCK_STRIPES: usize = 64;

impl Handshakes {
    /// Opens the tree.
    pub fn open(db: &std::sync::Arc<crate::store::Db>) -> Self {
        Self {
            userroomid_invitestate: db.tree("userroomid_invitestate"),
            outside_locks: (0..OUTSIDE_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The lock held while a local user's membership in a room this server is not in may change:
    /// an invite arriving through `/invite`, and a membership event for the room arriving in a
    /// transaction, from its check against the membership held to its commit. Without it an
    /// unban's `leave` checked before the invite that follows it arrived, and committed after,
    /// would overwrite that invite.
    pub async fn lock_outside(&self, room_id: &RoomId) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(room_id.as_str());
        let stripe = usize::try_from(hash % OUTSIDE_LOCK_STRIPES as u64).unwrap_or(0);
        self.outside_locks[stripe].lock().await
    }

    /// The stripped state that came with an invite from another server or answered a knock.
    pub fn get_invite_state(&self, user: &UserId, room_id: &RoomId) -> Result<Option<Vec<Value>>> {
        let Some(bytes) = self
            .userroomid_invitestate
            .get(&key::join(&[user.as_bytes(), room_id.as_bytes()]))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("userroomid_invitestate", e))
    }
}

use crate::federation::encode;

fn request_path(kind: &str, room_id: &RoomId, rest: &str) -> String {
    format!(
        "/_matrix/federation/{kind}/{}/{rest}",
        encode(room_id.as_str())
    )
}

/// Whether this server takes part in a room (has a joined member).
pub fn is_resident(services: &Services, room_id: &RoomId) -> Result<bool> {
    Ok(services
        .rooms
        .members
        .servers_in_room(room_id)?
        .contains(services.globals.server_name()))
}

/// A membership in a room on other servers that takes a handshake with one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// `make_join`/`send_join`, then the room's state and the join are received (`join.rs`).
    Join,
    /// `make_knock`/`send_knock`, then the knock is kept like an invite from another server
    /// (`outside.rs`).
    Knock,
}

impl Handshake {
    /// Joins or knocks on a room on other servers for a local user, trying each of `servers`
    /// (but this one) in turn: a template from `make_join` or `make_knock`, signed here, then
    /// `send_join` or `send_knock`. The last error is returned when every server failed.
    #[tracing::instrument(skip_all, fields(room_id = %room_id, user = %user, handshake = ?self))]
    pub async fn through(
        self,
        services: &Services,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        content_extra: Value,
    ) -> Result<OwnedEventId> {
        let (membership, what, none) = match self {
            Handshake::Join => (
                "join",
                "joining",
                format!("no server to join {room_id} through"),
            ),
            Handshake::Knock => (
                "knock",
                "knocking",
                format!("no server to knock on {room_id} through"),
            ),
        };
        let mut last_error = Error::not_found(none);
        for server in other_servers(services, servers) {
            let signed =
                signed_membership(services, room_id, user, server, membership, &content_extra);
            let result = match (self, signed.await) {
                (_, Err(error)) => Err(error),
                (Handshake::Join, Ok(signed)) => join_through(services, server, signed).await,
                (Handshake::Knock, Ok(signed)) => knock_through(services, server, signed).await,
            };
            match result {
                Ok(event_id) => return Ok(event_id),
                Err(error) => last_error = failed_through(server, what, error),
            }
        }
        Err(last_error)
    }
}

/// The servers of a list other than this one, in order.
fn other_servers<'a>(
    services: &Services,
    servers: &'a [OwnedServerName],
) -> impl Iterator<Item = &'a ServerName> {
    let own = services.globals.server_name().to_owned();
    servers
        .iter()
        .filter(move |server| **server != own)
        .map(|server| server.as_ref())
}

/// Logs that a handshake through `server` failed and hands the error on.
fn failed_through(server: &ServerName, what: &str, error: Error) -> Error {
    tracing::info!(%server, %error, "{what} through a server failed");
    error
}

/// A membership event signed here for a room on another server.
struct Signed<'a> {
    room_id: &'a RoomId,
    version: RoomVersionId,
    object: CanonicalJsonObject,
    event_id: OwnedEventId,
}

/// Asks `server` for a `make_join` or `make_knock` template (offering every room version this
/// server supports), fills in the membership and `content_extra`, and signs it.
async fn signed_membership<'a>(
    services: &Services,
    room_id: &'a RoomId,
    user: &UserId,
    server: &ServerName,
    membership: &str,
    content_extra: &Value,
) -> Result<Signed<'a>> {
    let versions: Vec<String> = SUPPORTED_VERSIONS
        .iter()
        .map(|version| format!("ver={version}"))
        .collect();
    let path = format!(
        "{}?{}",
        request_path(
            &format!("v1/make_{membership}"),
            room_id,
            &encode(user.as_str())
        ),
        versions.join("&")
    );
    let answer = services
        .federation_request(server, http::Method::GET, &path, None)
        .await?;
    let version = RoomVersionId::try_from(answer["room_version"].as_str().unwrap_or("1"))
        .map_err(|_| Error::bad_json("the template has an invalid room version"))?;
    let rules = rules_for(&version)?;
    let mut template = answer["event"].clone();
    if template["type"] != "m.room.member"
        || template["state_key"] != user.as_str()
        || template["sender"] != user.as_str()
    {
        return Err(Error::forbidden(format!(
            "make_{membership} answered a template for another event"
        )));
    }
    template["content"]["membership"] = json!(membership);
    if let Some(extra) = content_extra.as_object() {
        for (field, value) in extra {
            template["content"][field] = value.clone();
        }
    }
    template["origin_server_ts"] = json!(crate::util::now_millis());
    template["origin"] = json!(services.globals.server_name());
    let object = template_object(template, &rules)?;
    let (object, event_id) = build_and_sign(services, &object, &rules)?;
    Ok(Signed {
        room_id,
        version,
        object,
        event_id,
    })
}

/// Turns a template from another server into an object to sign: no `event_id`, hashes or
/// signatures of its own, and `room_id` only where the room version has it.
fn template_object(
    template: Value,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<CanonicalJsonObject> {
    let Ok(CanonicalJsonValue::Object(mut object)) = CanonicalJsonValue::try_from(template) else {
        return Err(Error::bad_json(
            "the template is not a canonical JSON object",
        ));
    };
    for field in ["hashes", "signatures", "unsigned"] {
        object.remove(field);
    }
    if rules.event_id_format != ruma::room_version_rules::EventIdFormatVersion::V1 {
        object.remove("event_id");
    }
    Ok(object)
}

/// The servers to try for a room this server is not in: those the client named, the server of
/// whoever invited the user, and without any of those the server in the room ID (before room
/// version 12).
pub fn candidate_servers(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    named: Vec<OwnedServerName>,
) -> Result<Vec<OwnedServerName>> {
    let mut servers = named;
    if matches!(
        services.rooms.members.get_membership(room_id, user)?,
        Some(MembershipState::Invite | MembershipState::Knock)
    ) {
        if let Some(state) = services.rooms.handshakes.get_invite_state(user, room_id)? {
            for event in state {
                // The inviter's server, then the creator's and whoever set the join rules.
                let relevant = (event["type"] == "m.room.member"
                    && event["state_key"] == user.as_str())
                    || event["type"] == "m.room.create"
                    || event["type"] == "m.room.join_rules";
                if relevant {
                    if let Some(sender) = event["sender"]
                        .as_str()
                        .and_then(|sender| <&UserId>::try_from(sender).ok())
                    {
                        servers.push(sender.server_name().to_owned());
                    }
                }
            }
        }
    }
    // The room ID's server is a last resort: servers the client names are the ones to use (a
    // restricted join must fail over only to servers that can authorise it).
    if servers.is_empty() {
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_owned());
        }
    }
    let mut seen = std::collections::HashSet::new();
    servers.retain(|server| seen.insert(server.clone()));
    Ok(servers)
}
