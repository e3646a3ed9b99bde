//! Unit tests of the pure parts: `m.room.policy` parsing, signing and checking policy-server
//! signatures, and the deny globs.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId, ServerName};
use serde_json::json;

use super::{
    add_signature, has_valid_signature, is_exempt, policy_of_content, serve::glob_matches,
    sign_redacted, KEY_ID,
};
use crate::crypto::SigningKey;

fn object(value: serde_json::Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value).unwrap() {
        CanonicalJsonValue::Object(object) => object,
        _ => unreachable!(),
    }
}

fn event() -> CanonicalJsonObject {
    object(json!({
        "type": "m.room.message",
        "room_id": "!room:a.example",
        "sender": "@alice:a.example",
        "origin_server_ts": 1,
        "depth": 3,
        "content": { "msgtype": "m.text", "body": "hello" },
        "prev_events": ["$prev"],
        "auth_events": ["$auth"],
        "hashes": { "sha256": "abc" },
        "signatures": { "a.example": { "ed25519:a_1": "serversig" } },
    }))
}

#[test]
fn policy_content_needs_a_server_name_and_a_32_byte_key() {
    let key = SigningKey::generate("policy_server").unwrap();
    let good =
        json!({ "via": "ps.example", "public_keys": { "ed25519": key.public_key_base64() } });
    let policy = policy_of_content(&good).expect("valid content");
    assert_eq!(policy.via, "ps.example");
    assert_eq!(policy.public_key.encode(), key.public_key_base64());
    // The spec's own well-known example is URL-safe base64.
    let url_safe = key.public_key_base64().replace('+', "-").replace('/', "_");
    assert!(policy_of_content(
        &json!({ "via": "ps.example", "public_keys": { "ed25519": url_safe } })
    )
    .is_some());
    for bad in [
        json!({}),
        json!({ "via": "ps.example" }),
        json!({ "via": 5, "public_keys": { "ed25519": key.public_key_base64() } }),
        json!({ "via": "not a server", "public_keys": { "ed25519": key.public_key_base64() } }),
        json!({ "via": "ps.example", "public_keys": { "ed25519": 1 } }),
        json!({ "via": "ps.example", "public_keys": { "ed25519": "c2hvcnQ" } }),
        json!({ "via": "ps.example", "public_keys": "abc" }),
    ] {
        assert!(policy_of_content(&bad).is_none(), "{bad}");
    }
}

#[test]
fn a_policy_signature_verifies_only_with_the_policy_key_and_survives_redaction() {
    let rules = RoomVersionId::V11.rules().unwrap();
    let key = SigningKey::generate("policy_server").unwrap();
    let via = <&ServerName>::try_from("a.example").unwrap();
    let policy = policy_of_content(
        &json!({ "via": via, "public_keys": { "ed25519": key.public_key_base64() } }),
    )
    .unwrap();
    let mut signed = event();
    assert!(!has_valid_signature(&policy, &signed, &rules));
    let signature = sign_redacted(&key, via, &signed, &rules).unwrap();
    add_signature(&mut signed, via, signature);
    // The sender's server signature under the same name is kept.
    assert_eq!(
        signed["signatures"],
        CanonicalJsonValue::try_from(json!({ "a.example": {
            "ed25519:a_1": "serversig",
            KEY_ID: signed_signature(&signed),
        } }))
        .unwrap()
    );
    assert!(has_valid_signature(&policy, &signed, &rules));
    // Content is not covered beyond the content hash: redaction keeps the signature valid.
    let mut changed_content = signed.clone();
    changed_content.insert(
        "content".into(),
        CanonicalJsonValue::try_from(json!({ "body": "other" })).unwrap(),
    );
    assert!(has_valid_signature(&policy, &changed_content, &rules));
    // Anything the redaction keeps is covered.
    let mut moved = signed.clone();
    moved.insert("depth".into(), CanonicalJsonValue::Integer(4u32.into()));
    assert!(!has_valid_signature(&policy, &moved, &rules));
    // Another key (a rotated one) does not verify.
    let other = SigningKey::generate("policy_server").unwrap();
    let rotated = policy_of_content(
        &json!({ "via": via, "public_keys": { "ed25519": other.public_key_base64() } }),
    )
    .unwrap();
    assert!(!has_valid_signature(&rotated, &signed, &rules));
}

fn signed_signature(object: &CanonicalJsonObject) -> String {
    match &object["signatures"] {
        CanonicalJsonValue::Object(signatures) => match &signatures["a.example"] {
            CanonicalJsonValue::Object(keys) => match &keys[KEY_ID] {
                CanonicalJsonValue::String(signature) => signature.clone(),
                _ => panic!("not a string"),
            },
            _ => panic!("not an object"),
        },
        _ => panic!("not an object"),
    }
}

#[test]
fn only_the_policy_state_event_is_exempt() {
    let check = |kind: &str, state_key: Option<&str>, expected: bool| {
        let mut value = json!({ "type": kind });
        if let Some(state_key) = state_key {
            value["state_key"] = json!(state_key);
        }
        assert_eq!(is_exempt(&object(value)), expected, "{kind} {state_key:?}");
    };
    check("m.room.policy", Some(""), true);
    check("m.room.policy", Some("x"), false);
    check("m.room.policy", None, false);
    check("m.room.message", None, false);
    check("m.room.member", Some(""), false);
}

#[test]
fn globs_match_like_server_acls() {
    let check = |glob: &str, text: &str, expected: bool| {
        assert_eq!(glob_matches(glob, text), expected, "{glob} ~ {text}");
    };
    check("evil.example", "evil.example", true);
    check("*.evil.example", "a.evil.example", true);
    check("*.evil.example", "evil.example", false);
    check("@spam*:*", "@spammer:b.example", true);
    check("@spam*:*", "@alice:b.example", false);
    check("ev?l.example", "evil.example", true);
    check("*", "", true);
    check("", "x", false);
    check("a*b*c", "axxbyyc", true);
    check("a*b*c", "axxbyy", false);
    let hostile = "*a".repeat(50);
    check(&hostile, &"b".repeat(2000), false);
}
