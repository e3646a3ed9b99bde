//! Tests of the crypto module against the test vectors of the spec's appendices.

use ruma::{room_version_rules::RoomVersionRules, signatures::Verified, CanonicalJsonObject};

use super::*;

/// `SIGNING_KEY_SEED` from the appendix "Cryptographic test vectors", key ID `ed25519:1`, server `domain`.
fn spec_key() -> SigningKey {
    // The appendix's seed has non-zero trailing bits, so decode it leniently.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let seed: [u8; 32] = engine
        .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
        .unwrap()
        .try_into()
        .unwrap();
    SigningKey::from_seed(&seed, "1").unwrap()
}

fn object(json: &str) -> CanonicalJsonObject {
    serde_json::from_str(json).unwrap()
}

fn signature(object: &CanonicalJsonObject) -> String {
    let value = serde_json::to_value(object).unwrap();
    value["signatures"]["domain"]["ed25519:1"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn spec_key_has_the_appendix_public_key() {
    assert_eq!(
        spec_key().public_key_base64(),
        "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
    );
    assert_eq!(spec_key().key_id(), "ed25519:1");
}

#[test]
fn canonical_json_matches_the_appendix_examples() {
    let check = |input: &str, expected: &str| {
        let value: serde_json::Value = serde_json::from_str(input).unwrap();
        assert_eq!(canonical_json(&value).unwrap(), expected, "{input}");
    };
    check("{}", "{}");
    check(r#"{"one": 1, "two": "Two"}"#, r#"{"one":1,"two":"Two"}"#);
    check(r#"{"b": "2", "a": "1"}"#, r#"{"a":"1","b":"2"}"#);
    check(
        r#"{"auth":{"success":true,"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"medium":"email","address":"john.doe@example.org"},{"medium":"msisdn","address":"123456789"}]}}}"#,
        r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
    );
    check(r#"{"a": "日本語"}"#, r#"{"a":"日本語"}"#);
    check(r#"{"本": 2, "日": 1}"#, r#"{"日":1,"本":2}"#);
    check(r#"{"a": "\u65E5"}"#, r#"{"a":"日"}"#);
    check(r#"{"a": null}"#, r#"{"a":null}"#);
    // Floats and integers outside [-(2^53)+1, 2^53-1] have no canonical form.
    assert!(canonical_json(&serde_json::json!({"a": 1.5})).is_err());
    assert!(canonical_json(&serde_json::json!({"a": 9007199254740992u64})).is_err());
}

#[test]
fn json_signing_matches_the_appendix() {
    let key = spec_key();
    let mut empty = object("{}");
    sign_json("domain", &key, &mut empty).unwrap();
    assert_eq!(
        signature(&empty),
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
    );
    let mut data = object(r#"{"one": 1, "two": "Two"}"#);
    sign_json("domain", &key, &mut data).unwrap();
    assert_eq!(
        signature(&data),
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    );
}

const MINIMAL_EVENT: &str = r#"{
    "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain", "origin_server_ts": 1000000,
    "signatures": {}, "hashes": {}, "type": "X", "content": {}, "prev_events": [], "auth_events": [],
    "depth": 3, "unsigned": {"age_ts": 1000000}
}"#;

#[test]
fn event_signing_matches_the_appendix() {
    let rules = RoomVersionRules::V1;
    let mut event = object(MINIMAL_EVENT);
    event.remove("hashes");
    hash_and_sign_event("domain", &spec_key(), &mut event, &rules).unwrap();
    let value = serde_json::to_value(&event).unwrap();
    assert_eq!(
        value["hashes"]["sha256"],
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    );
    assert_eq!(
        signature(&event),
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
    );
}

#[test]
fn message_content_hash_matches_the_appendix() {
    let event = object(
        r#"{"content": {"body": "Here is the message content"}, "event_id": "$0:domain", "origin": "domain",
            "origin_server_ts": 1000000, "type": "m.room.message", "room_id": "!r:domain", "sender": "@u:domain",
            "signatures": {}, "unsigned": {"age_ts": 1000000}}"#,
    );
    assert_eq!(
        content_hash(&event).unwrap(),
        "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    );
}

#[test]
fn signed_events_verify_and_tampering_is_caught() {
    let key = spec_key();
    let rules = RoomVersionRules::V10;
    let mut event = object(MINIMAL_EVENT);
    event.remove("hashes");
    event.insert(
        "sender".into(),
        CanonicalJsonValue::String("@a:domain".into()),
    );
    hash_and_sign_event("domain", &key, &mut event, &rules).unwrap();
    let mut keys = PublicKeyMap::new();
    keys.insert(
        "domain".into(),
        [(
            key.key_id(),
            ruma::serde::Base64::new(key.pair().public_key().to_vec()),
        )]
        .into_iter()
        .collect(),
    );
    assert_eq!(verify_event(&keys, &event, &rules).unwrap(), Verified::All);

    // A changed content keeps the signature (it covers the redacted form) but breaks the hash.
    let mut changed = event.clone();
    changed.insert(
        "content".into(),
        CanonicalJsonValue::Object(object(r#"{"body": "changed"}"#)),
    );
    assert_eq!(
        verify_event(&keys, &changed, &rules).unwrap(),
        Verified::Signatures
    );

    // A changed signed field breaks the signature.
    let mut forged = event.clone();
    forged.insert("depth".into(), CanonicalJsonValue::Integer(4u32.into()));
    assert!(verify_event(&keys, &forged, &rules).is_err());
}

#[test]
fn reference_hash_event_ids_are_url_safe_from_v4() {
    let mut event = object(MINIMAL_EVENT);
    event.remove("hashes");
    hash_and_sign_event("domain", &spec_key(), &mut event, &RoomVersionRules::V10).unwrap();
    let id = reference_event_id(&event, &RoomVersionRules::V10).unwrap();
    assert!(id.as_str().starts_with('$'));
    assert_eq!(id.as_str().len(), 44, "{id}");
    assert!(!id.as_str().contains('+') && !id.as_str().contains('/'));
    // The ID does not depend on signatures or unsigned data.
    let mut resigned = event.clone();
    resigned.insert(
        "unsigned".into(),
        CanonicalJsonValue::Object(object(r#"{"age": 5}"#)),
    );
    resigned.remove("signatures");
    assert_eq!(
        reference_event_id(&resigned, &RoomVersionRules::V10).unwrap(),
        id
    );
}

#[test]
fn generated_keys_round_trip_through_pkcs8() {
    let key = SigningKey::generate("abc").unwrap();
    let again = SigningKey::from_pkcs8(key.pkcs8(), "abc").unwrap();
    assert_eq!(key.public_key_base64(), again.public_key_base64());
    assert_eq!(key.sign_bytes(b"x"), again.sign_bytes(b"x"));
    assert_eq!(token_hash("a"), token_hash("a"));
    assert_ne!(token_hash("a"), token_hash("b"));
}

#[test]
fn json_signatures_verify_with_the_named_key_only() {
    let key = spec_key();
    let mut signed = object(r#"{"keys": {"ed25519:DEV": "abc"}, "user_id": "@a:domain"}"#);
    sign_json("@a:domain", &key, &mut signed).unwrap();
    let signed = serde_json::to_value(&signed).unwrap();
    let public = key.public_key_base64();
    verify_json_signature("@a:domain", "ed25519:1", &public, &signed).unwrap();
    let mut tampered = signed.clone();
    tampered["user_id"] = serde_json::json!("@b:domain");
    assert!(verify_json_signature("@a:domain", "ed25519:1", &public, &tampered).is_err());
    assert!(verify_json_signature("@a:domain", "ed25519:2", &public, &signed).is_err());
}
