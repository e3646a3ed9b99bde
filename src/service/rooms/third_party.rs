//! Third-party invites (client-server module "Third-party invites", server-server section of the
//! same name): inviting a third-party identifier through an identity server, and turning the
//! identity server's signed proof of a later binding into an `m.room.member` invite that carries
//! it (`content.third_party_invite`). Owns no tree: the pending invite is the room's
//! `m.room.third_party_invite` state event, whose state key is the identity server's token.
//!
//! The invite that redeems a pending one must be sent by the user who sent the
//! `m.room.third_party_invite` (auth rules), so only that user's server can sign it: the
//! invitee's server asks it through `/exchange_third_party_invite`, also when the invitee's
//! server is itself in the room.
//!
//! Third-party invites. The client's `/invite` with `medium`/`address`/`id_server`/`id_access_token` puts the address in its canonical form (appendix "3PID Types": email lowercased, phone numbers as digits), checks the sender may invite, then invites the user the identity server has bound, or stores the invite there and sends `m.room.third_party_invite` (state key: the identity server's token; display name and public keys).
//! `/3pid/onbind` (unauthenticated: identity servers have no federation key) redeems each pending invite of a local user: here when the inviter is local, otherwise through `/exchange_third_party_invite` on the inviter's server, even when this server is in the room, because the auth rules want the invite sent by the `m.room.third_party_invite`'s sender and only that user's server can sign for them.
//! The issuing server checks the `signed` block against the room's `m.room.third_party_invite` for the token (same sender, a signature by one of its public keys, that key's validity URL still answering `valid`), then sends the invite with `content.third_party_invite` (local invitee: `create_and_commit`; remote: `handshake::invite_remote`); ruma's auth rules check the signature again on every server.
//! Owns no tree.

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    handshake,
    power::PowerLevels,
    timeline::{create_and_commit, PduBuilder},
};
use crate::{
    crypto,
    error::{Error, Result},
    service::{
        identity::{self, IdentityServer},
        Services,
    },
};

/// The longest third-party address accepted, in bytes.
const MAX_ADDRESS_BYTES: usize = 512;

/// At most this many invites are taken from one `/3pid/onbind`.
const MAX_ONBIND_INVITES: usize = 100;

/// A third-party identifier to invite, with the identity server to ask.
pub struct ThirdPartyInvitee<'a> {
    pub medium: &'a str,
    pub address: &'a str,
    pub id_server: &'a str,
    pub id_access_token: &'a str,
}

/// Looks the identifier up on the identity server once the sender is known to be allowed to
/// invite. Returns the bound user, whom the caller invites like any other; when nobody is
/// bound, stores the invite on the identity server and sends the room's
/// `m.room.third_party_invite` event, and returns `None`.
#[tracing::instrument(skip_all, fields(room_id = %room_id, sender = %sender))]
pub async fn invite(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    invitee: &ThirdPartyInvitee<'_>,
) -> Result<Option<OwnedUserId>> {
    let address = canonical_address(invitee.medium, invitee.address)?;
    require_may_invite(services, room_id, sender)?;
    let server = IdentityServer::new(&services.config, invitee.id_server, invitee.id_access_token)?;
    if let Some(user) = server.lookup(invitee.medium, &address).await? {
        return Ok(Some(user));
    }
    let body = store_invite_body(services, room_id, sender, invitee.medium, &address)?;
    let stored = server.store_invite(&body).await?;
    let (public_key, key_validity_url) = stored.public_keys[0].clone();
    let public_keys: Vec<Value> = stored
        .public_keys
        .iter()
        .map(|(key, url)| json!({ "public_key": key, "key_validity_url": url }))
        .collect();
    let content = json!({
        "display_name": stored.display_name,
        "key_validity_url": key_validity_url,
        "public_key": public_key,
        "public_keys": public_keys,
    });
    create_and_commit(
        services,
        room_id,
        sender,
        PduBuilder::state("m.room.third_party_invite", stored.token, content),
        None,
    )
    .await?;
    Ok(None)
}

/// The canonical form of a third-party identifier (appendix "3PID Types"): an email address
/// as `user@domain`, lowercased (Unicode lowercase mapping, which is case folding for all but a
/// few characters such as `ß`); a phone number as its digits without `+`. Anything else, and
/// an unknown medium, is `400 M_INVALID_PARAM`.
pub fn canonical_address(medium: &str, address: &str) -> Result<String> {
    let invalid = || Error::invalid_param(format!("invalid {medium} address"));
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(invalid());
    }
    match medium {
        "email" => {
            let (user, domain) = address.split_once('@').ok_or_else(invalid)?;
            let plain = |part: &str| {
                !part.is_empty()
                    && !part.contains(['@', '<', '>', ' ', '\t', '\n', '\r'])
                    && !part.starts_with("mailto:")
            };
            if !plain(user) || !plain(domain) {
                return Err(invalid());
            }
            Ok(address.to_lowercase())
        }
        "msisdn" => {
            if address.is_empty() || !address.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(invalid());
            }
            Ok(address.to_owned())
        }
        _ => Err(Error::invalid_param(format!("unknown medium {medium}"))),
    }
}

/// The sender must be joined and have the invite level, checked before anything is asked of an
/// identity server (the auth rules check it again on the event).
fn require_may_invite(services: &Services, room_id: &RoomId, sender: &UserId) -> Result<()> {
    if !services.rooms.members.is_joined(room_id, sender)? {
        return Err(Error::forbidden(format!(
            "{sender} is not in room {room_id}"
        )));
    }
    let power = PowerLevels::load(services, room_id)?;
    if power.user_level(sender) < power.action_level("invite") {
        return Err(Error::forbidden(format!(
            "{sender} may not invite to {room_id}"
        )));
    }
    Ok(())
}

/// The `/store-invite` body: the identifier, the room and sender, and what the identity server
/// may show in its message (room name, alias, avatar, join rule and type, sender's profile).
fn store_invite_body(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    medium: &str,
    address: &str,
) -> Result<Value> {
    let mut body = json!({
        "medium": medium,
        "address": address,
        "room_id": room_id,
        "sender": sender,
    });
    let state = |kind: StateEventType, field: &str| -> Result<Option<Value>> {
        Ok(services
            .rooms
            .current_state_pdu(room_id, &kind, "")?
            .and_then(|pdu| pdu.content_value().get(field).cloned())
            .filter(Value::is_string))
    };
    for (key, kind, field) in [
        ("room_alias", StateEventType::RoomCanonicalAlias, "alias"),
        ("room_avatar_url", StateEventType::RoomAvatar, "url"),
        (
            "room_join_rules",
            StateEventType::RoomJoinRules,
            "join_rule",
        ),
        ("room_name", StateEventType::RoomName, "name"),
        ("room_type", StateEventType::RoomCreate, "type"),
    ] {
        if let Some(value) = state(kind, field)? {
            body[key] = value;
        }
    }
    if let Some(profile) = services.users.get_profile(sender)? {
        for (key, field) in [
            ("sender_display_name", "displayname"),
            ("sender_avatar_url", "avatar_url"),
        ] {
            if let Some(value) = profile.get(field).filter(|value| value.is_string()) {
                body[key] = value.clone();
            }
        }
    }
    Ok(body)
}

/// `PUT /3pid/onbind` from an identity server: each pending invite of the now bound local user
/// is redeemed, here when its sender is a user of this server, otherwise through
/// `/exchange_third_party_invite` on the sender's server. Every invite is tried; the first
/// failure is returned.
#[tracing::instrument(skip_all)]
pub async fn on_bind(services: &Services, body: &Value) -> Result<()> {
    for field in ["medium", "address", "mxid"] {
        if !body[field].is_string() {
            return Err(Error::missing_param(format!("missing {field}")));
        }
    }
    let mxid = user_field(body, "mxid")?;
    if mxid.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param(format!(
            "{mxid} is not a user of this server"
        )));
    }
    if !services.users.exists(&mxid)? {
        return Err(Error::not_found(format!("user {mxid} does not exist")));
    }
    let invites = body["invites"]
        .as_array()
        .ok_or_else(|| Error::missing_param("missing invites"))?;
    if invites.len() > MAX_ONBIND_INVITES {
        return Err(Error::invalid_param(format!(
            "more than {MAX_ONBIND_INVITES} invites"
        )));
    }
    let mut first_error = None;
    for invite in invites {
        if let Err(error) = redeem(services, &mxid, invite).await {
            tracing::debug!(%error, "a third-party invite was not redeemed");
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One invite of an `/3pid/onbind`.
async fn redeem(services: &Services, mxid: &UserId, invite: &Value) -> Result<()> {
    let room_id = OwnedRoomId::try_from(invite["room_id"].as_str().unwrap_or_default())
        .map_err(|_| Error::invalid_param("invalid or missing room_id in an invite"))?;
    let sender = user_field(invite, "sender")?;
    let signed = &invite["signed"];
    if user_field(invite, "mxid")? != mxid || signed["mxid"] != json!(mxid) {
        return Err(Error::invalid_param(format!(
            "an invite names another user than {mxid}"
        )));
    }
    if sender.server_name() == services.globals.server_name() {
        return issue_invite(services, &room_id, &sender, mxid, signed).await;
    }
    let event = json!({
        "type": "m.room.member",
        "room_id": room_id,
        "sender": sender,
        "state_key": mxid,
        "content": { "membership": "invite", "third_party_invite": { "signed": signed } },
    });
    let path = format!(
        "/_matrix/federation/v1/exchange_third_party_invite/{}",
        crate::federation::encode(room_id.as_str())
    );
    services
        .federation_request(sender.server_name(), http::Method::PUT, &path, Some(&event))
        .await?;
    Ok(())
}

/// `PUT /exchange_third_party_invite/{roomId}` from `origin`, the invitee's server: the partial
/// member event must invite a user of `origin` on behalf of a user of this server, the room's
/// sender of the matching `m.room.third_party_invite`.
#[tracing::instrument(skip_all, fields(room_id = %room_id, origin = %origin))]
pub async fn exchange(
    services: &Services,
    origin: &ruma::ServerName,
    room_id: &RoomId,
    event: &Value,
) -> Result<()> {
    if !handshake::is_resident(services, room_id)? {
        return Err(Error::not_found(format!("this server is not in {room_id}")));
    }
    if !super::incoming::server_allowed(services, room_id, origin)? {
        return Err(Error::forbidden("the room's server ACL denies this server"));
    }
    if event["type"] != "m.room.member"
        || event["room_id"] != json!(room_id)
        || event["content"]["membership"] != "invite"
    {
        return Err(Error::bad_json(format!(
            "expected an m.room.member invite in {room_id}"
        )));
    }
    let sender = user_field(event, "sender")?;
    let invitee = user_field(event, "state_key")?;
    if sender.server_name() != services.globals.server_name() {
        return Err(Error::forbidden(format!(
            "{sender} is not a user of this server"
        )));
    }
    if invitee.server_name() != origin {
        return Err(Error::forbidden(format!(
            "{invitee} is not a user of the asking server"
        )));
    }
    let signed = &event["content"]["third_party_invite"]["signed"];
    issue_invite(services, room_id, &sender, &invitee, signed).await
}

/// Checks the identity server's `signed` block against the room's `m.room.third_party_invite`
/// of the same token (the sender matches, a signature verifies with one of its public keys, and
/// that key's `key_validity_url` still says it is valid, which the spec asks of the server that
/// issues the invite), then sends the invite from `sender` with the event's display name.
async fn issue_invite(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    invitee: &UserId,
    signed: &Value,
) -> Result<()> {
    if !signed.is_object() || signed["mxid"] != json!(invitee) {
        return Err(Error::forbidden(format!(
            "the signed block does not name {invitee}"
        )));
    }
    let token = signed["token"]
        .as_str()
        .ok_or_else(|| Error::forbidden("the signed block has no token"))?;
    let pending = services
        .rooms
        .current_state_pdu(room_id, &StateEventType::RoomThirdPartyInvite, token)?
        .ok_or_else(|| {
            Error::forbidden(format!("no third-party invite in {room_id} has that token"))
        })?;
    if pending.sender != sender {
        return Err(Error::forbidden(format!(
            "the third-party invite was not sent by {sender}"
        )));
    }
    let pending = pending.content_value();
    let (public_key, key_validity_url) = verifying_key(&pending, signed).ok_or_else(|| {
        Error::forbidden("no public key of the third-party invite verifies the signature")
    })?;
    if let Some(url) = key_validity_url {
        if !identity::key_is_valid(&services.config, &url, &public_key).await? {
            return Err(Error::forbidden(
                "the identity server no longer vouches for the invite's key",
            ));
        }
    }
    // The auth rules would let this invite replace a join; an invite or join already there wins.
    let membership = services.rooms.members.get_membership(room_id, invitee)?;
    if matches!(
        membership,
        Some(MembershipState::Invite | MembershipState::Join)
    ) {
        return Ok(());
    }
    let mut third_party_invite = Map::new();
    third_party_invite.insert("display_name".into(), pending["display_name"].clone());
    third_party_invite.insert("signed".into(), signed.clone());
    let extra = json!({ "third_party_invite": third_party_invite });
    if invitee.server_name() == services.globals.server_name() {
        let mut content = extra;
        content["membership"] = json!("invite");
        create_and_commit(
            services,
            room_id,
            sender,
            PduBuilder::state("m.room.member", invitee.as_str(), content),
            None,
        )
        .await?;
    } else {
        handshake::invite_remote(services, room_id, sender, invitee, extra).await?;
    }
    Ok(())
}

/// The public key of an `m.room.third_party_invite` (its `public_keys`, then the older
/// `public_key`) that verifies a signature of the `signed` block, with its validity URL.
fn verifying_key(pending: &Value, signed: &Value) -> Option<(String, Option<String>)> {
    let mut keys: Vec<(String, Option<String>)> =
        crate::service::identity::public_keys(&pending["public_keys"]).collect();
    if let Some(key) = pending["public_key"].as_str() {
        keys.push((
            key.to_owned(),
            pending["key_validity_url"].as_str().map(str::to_owned),
        ));
    }
    let signatures = signed["signatures"].as_object()?;
    for (entity, by_entity) in signatures {
        for key_id in by_entity
            .as_object()
            .into_iter()
            .flatten()
            .map(|(id, _)| id)
        {
            if !key_id.starts_with("ed25519:") {
                continue;
            }
            for (public_key, url) in &keys {
                // Keys may use the URL-safe alphabet; the verifier reads the standard one.
                let standard = public_key.replace('-', "+").replace('_', "/");
                if crypto::verify_json_signature(entity, key_id, &standard, signed).is_ok() {
                    return Some((public_key.clone(), url.clone()));
                }
            }
        }
    }
    None
}

fn user_field(object: &Value, field: &str) -> Result<OwnedUserId> {
    let text = object[field]
        .as_str()
        .ok_or_else(|| Error::missing_param(format!("missing {field}")))?;
    OwnedUserId::try_from(text).map_err(|_| Error::invalid_param(format!("invalid {field} {text}")))
}

#[cfg(test)]
mod tests {
    use super::canonical_address;

    #[test]
    fn addresses_take_their_canonical_form() {
        let check = |medium: &str, address: &str, expected: Option<&str>| {
            assert_eq!(
                canonical_address(medium, address).ok().as_deref(),
                expected,
                "{medium} {address}"
            );
        };
        check("email", "Bob@Example.ORG", Some("bob@example.org"));
        check("email", "bob@example.org", Some("bob@example.org"));
        check("msisdn", "447700900123", Some("447700900123"));
        for bad in [
            "bob",
            "@example.org",
            "bob@",
            "a@b@c",
            "Bob <bob@example.org>",
            "mailto:bob@example.org",
        ] {
            check("email", bad, None);
        }
        check("email", &format!("{}@example.org", "b".repeat(600)), None);
        check("msisdn", "+447700900123", None);
        check("msisdn", "", None);
        check("pigeon", "coop 7", None);
    }
}
