//! Policy servers (server-server API, "Policy Servers"; MSC4284): whether a room uses one, the
//! policy server's signature on an event, asking for it (`ask.rs`, for local events and check 7 on
//! received ones) and this server's own policy-server role (`serve.rs`).
//!
//! Policy servers (spec v1.18, MSC4284; operators' page `docs/policy_servers.md`). `room_policy` decides whether a room uses one (a valid `m.room.policy` in current state whose `via` has a joined member); `has_valid_signature` checks the `ed25519:policy_server` signature over the redacted event with the key from that state event.
//! `policy/ask.rs` asks the policy server (`/_matrix/policy/v1/sign`, 10 s; in process when it is this server): `timeline::create_and_commit` prepares a local event under the room lock, releases it to ask, and commits under the lock again if the room's state is unchanged (else builds again, at most three rounds), and `handshake::invite_remote` has a remote invite signed before sending it; a refusal or an unreachable policy server fails the client's request and nothing is stored. `incoming::handle` calls `check_received` before it takes the room lock (check 7: one more ask when the signature is missing or invalid) and soft-fails the event without one.
//! `policy/serve.rs` is this server's policy-server role (`policy_server_*` settings): deny globs for servers and users, forbidden texts, joined senders only; its key lives in `policyserver_key` (`b"ed25519"` → PKCS#8), apart from the federation key.
//! Invariant: no lock is held while a policy server is asked; the `m.room.policy` state event with an empty state key is never sent to it.

mod ask;
mod serve;

use std::sync::Arc;

use base64::{
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
    Engine,
};
use ruma::{
    events::StateEventType, room_version_rules::RoomVersionRules, serde::Base64,
    signatures::PublicKeyMap, CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, RoomId,
    ServerName,
};
use serde_json::Value;

pub use self::ask::{ask, check_received, sign_local_event};
pub use self::serve::sign_as_policy_server;
use crate::{
    config::Config,
    crypto::SigningKey,
    error::{Error, Result},
    service::Services,
    store::{Db, Tree},
};

/// The key ID of every policy-server signature (spec: "always `ed25519:policy_server`").
pub const KEY_ID: &str = "ed25519:policy_server";
/// The version part of [`KEY_ID`].
const KEY_VERSION: &str = "policy_server";
/// The state event that names a room's policy server (with an empty state key).
pub const EVENT_TYPE: &str = "m.room.policy";

/// Owns `policyserver_key` (`b"ed25519"` → PKCS#8 of the policy-server signing key). The key is
/// made the first time the server starts with `policy_server_enabled` and kept from then on; it
/// is never the federation signing key in `globals` (spec: a room can revoke it without the
/// policy server's help, and "can send federation traffic" stays apart from "can recommend
/// events").
pub struct PolicyServers {
    key: Option<SigningKey>,
}

/// A room's policy server, from a valid `m.room.policy` in its current state.
#[derive(Clone, Debug)]
pub struct RoomPolicy {
    pub via: OwnedServerName,
    pub public_key: Base64,
}

impl PolicyServers {
    /// Loads the policy-server key, or makes and stores it when the role is enabled.
    pub fn open(db: &Arc<Db>, config: &Config) -> Result<Self> {
        let tree: Tree = db.tree("policyserver_key");
        let key = match tree.get(b"ed25519")? {
            Some(document) => Some(
                SigningKey::from_pkcs8(&document, KEY_VERSION)
                    .map_err(|e| Error::corrupt("policyserver_key", e))?,
            ),
            None if config.policy_server_enabled => {
                let created = SigningKey::generate(KEY_VERSION).map_err(Error::internal)?;
                tree.insert(b"ed25519", created.pkcs8())?;
                Some(created)
            }
            None => None,
        };
        let key = if config.policy_server_enabled {
            key
        } else {
            None
        };
        Ok(Self { key })
    }

    /// The policy-server signing key, when this server acts as a policy server.
    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.key.as_ref()
    }

    /// The public key rooms put in `m.room.policy` (unpadded standard base64), when enabled.
    pub fn public_key(&self) -> Option<String> {
        self.key.as_ref().map(SigningKey::public_key_base64)
    }
}

/// The policy server a room uses, if any (spec, "Determining if a Policy Server is enabled in a
/// room"): a valid `m.room.policy` with an empty state key in current state, whose `via` has at
/// least one joined member in current state.
pub fn room_policy(services: &Services, room_id: &RoomId) -> Result<Option<RoomPolicy>> {
    let Some(event) =
        services
            .rooms
            .current_state_pdu(room_id, &StateEventType::from(EVENT_TYPE), "")?
    else {
        return Ok(None);
    };
    let Some(policy) = policy_of_content(&event.content_value()) else {
        return Ok(None);
    };
    if !services
        .rooms
        .members
        .servers_in_room(room_id)?
        .contains(&policy.via)
    {
        return Ok(None);
    }
    Ok(Some(policy))
}

/// The policy server named by an `m.room.policy` content: a string `via` that is a server name
/// and a string `public_keys.ed25519` that decodes to 32 bytes.
pub fn policy_of_content(content: &Value) -> Option<RoomPolicy> {
    let via = OwnedServerName::try_from(content.get("via")?.as_str()?).ok()?;
    let public_key = decode_key(content.get("public_keys")?.get("ed25519")?.as_str()?)?;
    Some(RoomPolicy { via, public_key })
}

/// Unpadded base64 in the standard or the URL-safe alphabet (the spec's own example of the
/// well-known answer uses the latter), padding tolerated; an ed25519 key is 32 bytes.
fn decode_key(text: &str) -> Option<Base64> {
    let trimmed = text.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()?;
    (bytes.len() == 32).then(|| Base64::new(bytes))
}

/// Whether an event is never sent to the policy server: the `m.room.policy` state event with an
/// empty state key, so that a room can always change or drop a policy server that is down.
pub fn is_exempt(object: &CanonicalJsonObject) -> bool {
    matches!(object.get("type"), Some(CanonicalJsonValue::String(kind)) if kind == EVENT_TYPE)
        && matches!(object.get("state_key"), Some(CanonicalJsonValue::String(key)) if key.is_empty())
}

/// Whether `object` (an event as sent over federation) carries a valid signature of the room's
/// policy server: `ed25519:policy_server` by `via`, over the redacted event, checked with the
/// key from `m.room.policy` (never a key fetched from the server itself).
pub fn has_valid_signature(
    policy: &RoomPolicy,
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> bool {
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return false;
    };
    let Some(CanonicalJsonValue::Object(by_via)) = signatures.get(policy.via.as_str()) else {
        return false;
    };
    let Some(signature) = by_via.get(KEY_ID).cloned() else {
        return false;
    };
    let Ok(mut redacted) = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
    else {
        return false;
    };
    // Only the policy server's signature is checked here; the sender's server's signatures
    // (possibly under the same name) were checked with its published keys.
    let only_this = CanonicalJsonObject::from([(
        policy.via.to_string(),
        CanonicalJsonValue::Object(CanonicalJsonObject::from([(KEY_ID.to_owned(), signature)])),
    )]);
    redacted.insert("signatures".into(), CanonicalJsonValue::Object(only_this));
    let keys: PublicKeyMap = [(
        policy.via.to_string(),
        [(KEY_ID.to_owned(), policy.public_key.clone())]
            .into_iter()
            .collect(),
    )]
    .into_iter()
    .collect();
    ruma::signatures::verify_json(&keys, &redacted).is_ok()
}

/// Adds a policy server's signature to an event, keeping every signature already there (the
/// policy server may be the sender's own server).
pub fn add_signature(object: &mut CanonicalJsonObject, via: &ServerName, signature: String) {
    let signatures = object
        .entry("signatures".to_owned())
        .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
    if !matches!(signatures, CanonicalJsonValue::Object(_)) {
        *signatures = CanonicalJsonValue::Object(CanonicalJsonObject::new());
    }
    let CanonicalJsonValue::Object(signatures) = signatures else {
        return;
    };
    let by_via = signatures
        .entry(via.to_string())
        .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
    if !matches!(by_via, CanonicalJsonValue::Object(_)) {
        *by_via = CanonicalJsonValue::Object(CanonicalJsonObject::new());
    }
    if let CanonicalJsonValue::Object(by_via) = by_via {
        by_via.insert(KEY_ID.to_owned(), CanonicalJsonValue::String(signature));
    }
}

/// Signs the redacted form of an event with the policy-server key, as event signatures are made
/// (server-server API, "Signing Events"), and returns the signature alone.
pub fn sign_redacted(
    key: &SigningKey,
    server_name: &ServerName,
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<String> {
    let mut redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
        .map_err(|error| Error::bad_json(format!("pdu cannot be redacted: {error}")))?;
    redacted.remove("signatures");
    crate::crypto::sign_json(server_name.as_str(), key, &mut redacted)
        .map_err(|error| Error::bad_json(format!("pdu cannot be signed: {error}")))?;
    match redacted.get("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => match signatures
            .get(server_name.as_str())
            .and_then(|by_server| match by_server {
                CanonicalJsonValue::Object(keys) => keys.get(KEY_ID),
                _ => None,
            }) {
            Some(CanonicalJsonValue::String(signature)) => Ok(signature.clone()),
            _ => Err(Error::internal(
                "the policy signature is missing after signing",
            )),
        },
        _ => Err(Error::internal(
            "the policy signature is missing after signing",
        )),
    }
}

#[cfg(test)]
mod tests;
