//! Pure cryptography over JSON: canonical form, content and reference hashes, ed25519 signing and
//! verification. No I/O; the algorithms themselves come from `ruma-signatures`, and the tests pin
//! them to the vectors of the spec's appendices.
//!
//! Canonical JSON, content and reference hashes, ed25519 signing and verifying, token hashing; pure functions over `ruma-signatures`, tested against the spec appendix vectors.

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ruma::{
    room_version_rules::RoomVersionRules,
    signatures::{self, Ed25519KeyPair, KeyPair, PublicKeyMap, Verified},
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId,
};
use sha2::{Digest, Sha256};

/// The DER prefix of a PKCS#8 v1 document holding a raw 32-byte ed25519 seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A server's ed25519 signing key with its version (`ed25519:<version>` is the key ID).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// A fresh random key with the given version.
    pub fn generate(version: &str) -> Result<Self, String> {
        let document = Ed25519KeyPair::generate();
        Self::from_pkcs8(&document, version)
    }

    /// A key from its PKCS#8 DER form, as stored.
    pub fn from_pkcs8(document: &[u8], version: &str) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_der(document, version.to_owned())
            .map_err(|error| error.to_string())?;
        Ok(Self {
            pair,
            pkcs8: document.to_vec(),
        })
    }

    /// A key from a raw 32-byte seed (the form the spec's test vectors use).
    pub fn from_seed(seed: &[u8; 32], version: &str) -> Result<Self, String> {
        let mut document = PKCS8_ED25519_PREFIX.to_vec();
        document.extend_from_slice(seed);
        Self::from_pkcs8(&document, version)
    }

    /// The PKCS#8 DER form to store.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    /// The public key, unpadded standard base64 as served in `/_matrix/key/v2/server`.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    /// Signs raw bytes, returning unpadded base64.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        STANDARD_NO_PAD.encode(self.pair.sign(message).as_bytes())
    }

    pub(crate) fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }
}

/// The canonical JSON text of a value (sorted keys, no insignificant white space).
pub fn canonical_json(value: &serde_json::Value) -> Result<String, String> {
    let canonical =
        CanonicalJsonValue::try_from(value.clone()).map_err(|error| error.to_string())?;
    Ok(canonical.to_string())
}

/// Adds a signature by `entity` to a JSON object (`signatures` and `unsigned` are not signed).
pub fn sign_json(
    entity: &str,
    key: &SigningKey,
    object: &mut CanonicalJsonObject,
) -> Result<(), String> {
    signatures::sign_json(entity, key.pair(), object).map_err(|error| error.to_string())
}

/// Checks one signature of a signed JSON object (a device or cross-signing key): the signature
/// by `entity` with `key_id`, against the unpadded base64 `public_key`.
pub fn verify_json_signature(
    entity: &str,
    key_id: &str,
    public_key: &str,
    object: &serde_json::Value,
) -> Result<(), String> {
    let signature = object["signatures"][entity][key_id]
        .as_str()
        .ok_or_else(|| format!("no signature by {entity} with {key_id}"))?;
    let mut only_this = object.clone();
    only_this["signatures"] = serde_json::json!({ entity: { key_id: signature } });
    let only_this = match CanonicalJsonValue::try_from(only_this).map_err(|e| e.to_string())? {
        CanonicalJsonValue::Object(object) => object,
        _ => return Err("a signed value must be an object".to_owned()),
    };
    let public_key = ruma::serde::Base64::parse(public_key).map_err(|e| e.to_string())?;
    let keys: PublicKeyMap = [(
        entity.to_owned(),
        [(key_id.to_owned(), public_key)].into_iter().collect(),
    )]
    .into_iter()
    .collect();
    signatures::verify_json(&keys, &only_this).map_err(|error| error.to_string())
}

/// Adds the content hash, then signs the redacted form of an event, as the room version says.
pub fn hash_and_sign_event(
    entity: &str,
    key: &SigningKey,
    event: &mut CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<(), String> {
    signatures::hash_and_sign_event(entity, key.pair(), event, &rules.redaction)
        .map_err(|error| error.to_string())
}

/// The content hash of an event (unpadded standard base64 of SHA-256).
pub fn content_hash(event: &CanonicalJsonObject) -> Result<String, String> {
    signatures::content_hash(event)
        .map(|hash| hash.encode())
        .map_err(|error| error.to_string())
}

/// The event ID that the reference hash gives (room versions 3 and later).
pub fn reference_event_id(
    event: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, String> {
    let hash = signatures::reference_hash(event, rules).map_err(|error| error.to_string())?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|error| error.to_string())
}

/// Checks an event's signatures against `keys` and its content hash.
pub fn verify_event(
    keys: &PublicKeyMap,
    event: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<Verified, String> {
    signatures::verify_event(keys, event, rules).map_err(|error| error.to_string())
}

/// SHA-256 of a secret (an access or refresh token), so that stored values are useless if leaked.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests;
