//! Event filters (the spec's `RoomEventFilter` and the parts of `Filter` that sync uses).
//!
//! `RoomEventFilter` matching (also used for the sync filter's `presence` part).

use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::rooms::pdu::Pdu,
};

/// Checks a filter definition (`POST /filter`, or inline in `/sync`'s `filter` parameter): each
/// top-level part has its type, and every field its spec type (room IDs in `rooms`, user IDs in
/// `senders`, strings in `types`...), as ruma's `FilterDefinition` reads them. `M_BAD_JSON`
/// otherwise.
pub fn validate(filter: &Value) -> Result<()> {
    if !filter.is_object() {
        return Err(Error::bad_json("a filter is a JSON object"));
    }
    for field in ["event_fields", "account_data", "presence", "room"] {
        let Some(value) = filter.get(field) else {
            continue;
        };
        let typed = match field {
            "event_fields" => value.is_array(),
            _ => value.is_object(),
        };
        if !typed {
            return Err(Error::bad_json(format!(
                "filter field {field} has the wrong type"
            )));
        }
    }
    serde_json::from_value::<ruma::api::client::filter::FilterDefinition>(filter.clone())
        .map(drop)
        .map_err(|error| Error::bad_json(format!("invalid filter: {error}")))
}

/// A parsed `RoomEventFilter`.
#[derive(Clone, Debug, Default)]
pub struct RoomEventFilter {
    pub limit: Option<usize>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub contains_url: Option<bool>,
    pub lazy_load_members: bool,
    pub include_redundant_members: bool,
}

fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    value.and_then(Value::as_array).map(|list| {
        list.iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    })
}

/// Matches an event type against a pattern where `*` stands for any run of characters.
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == kind,
        Some((prefix, rest)) => {
            if !kind.starts_with(prefix) {
                return false;
            }
            let tail = &kind[prefix.len()..];
            (0..=tail.len())
                .any(|start| tail.is_char_boundary(start) && type_matches(rest, &tail[start..]))
        }
    }
}

impl RoomEventFilter {
    /// Parses a filter object; unknown or mistyped fields are ignored as the spec allows.
    pub fn from_value(value: &Value) -> Self {
        Self {
            limit: value
                .get("limit")
                .and_then(Value::as_u64)
                .map(|limit| limit as usize),
            types: strings(value.get("types")),
            not_types: strings(value.get("not_types")).unwrap_or_default(),
            senders: strings(value.get("senders")),
            not_senders: strings(value.get("not_senders")).unwrap_or_default(),
            rooms: strings(value.get("rooms")),
            not_rooms: strings(value.get("not_rooms")).unwrap_or_default(),
            contains_url: value.get("contains_url").and_then(Value::as_bool),
            lazy_load_members: value
                .get("lazy_load_members")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            include_redundant_members: value
                .get("include_redundant_members")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    /// Whether a room passes `rooms`/`not_rooms`.
    pub fn room_allowed(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|room| room == room_id)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.iter().any(|room| room == room_id))
    }

    /// Whether an event passes the filter.
    pub fn matches(&self, pdu: &Pdu) -> bool {
        if !self.matches_type(&pdu.kind.to_string()) || !self.matches_sender(pdu.sender.as_str()) {
            return false;
        }
        if let Some(wanted) = self.contains_url {
            let has_url = pdu.content_value().get("url").is_some_and(Value::is_string);
            if has_url != wanted {
                return false;
            }
        }
        true
    }

    /// Whether an event type passes `types` and `not_types`.
    pub fn matches_type(&self, kind: &str) -> bool {
        !self
            .not_types
            .iter()
            .any(|pattern| type_matches(pattern, kind))
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.iter().any(|pattern| type_matches(pattern, kind)))
    }

    /// Whether a sender passes `senders` and `not_senders`.
    pub fn matches_sender(&self, sender: &str) -> bool {
        !self.not_senders.iter().any(|denied| denied == sender)
            && self
                .senders
                .as_ref()
                .is_none_or(|senders| senders.iter().any(|allowed| allowed == sender))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pdu(kind: &str, sender: &str, content: Value) -> Pdu {
        serde_json::from_value(json!({
            "event_id": "$e", "room_id": "!r:x", "sender": sender, "origin_server_ts": 1, "type": kind,
            "content": content, "prev_events": [], "auth_events": [], "depth": 1
        }))
        .unwrap()
    }

    #[test]
    fn filters_match_types_senders_and_urls() {
        let check = |filter: Value, event: &Pdu, expected: bool| {
            assert_eq!(
                RoomEventFilter::from_value(&filter).matches(event),
                expected,
                "{filter}"
            )
        };
        let message = pdu("m.room.message", "@a:x", json!({"body": "hi"}));
        let image = pdu(
            "m.room.message",
            "@b:x",
            json!({"body": "pic", "url": "mxc://x/y"}),
        );
        check(json!({}), &message, true);
        check(json!({"types": ["m.room.*"]}), &message, true);
        check(json!({"types": ["m.room.member"]}), &message, false);
        check(json!({"not_types": ["m.*"]}), &message, false);
        check(json!({"senders": ["@b:x"]}), &message, false);
        check(json!({"not_senders": ["@a:x"]}), &message, false);
        check(json!({"contains_url": true}), &message, false);
        check(json!({"contains_url": true}), &image, true);
        check(json!({"contains_url": false}), &image, false);
        assert!(type_matches("*", "anything"));
        assert!(type_matches("a*c", "abbc"));
        assert!(!type_matches("a*c", "abd"));
    }
}
