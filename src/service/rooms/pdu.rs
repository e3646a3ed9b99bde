//! The PDU type: a room event as stored and as checked by the auth rules, and its client form.
//!
//! The PDU type and its forms: `client_event` (what a client sees: `age`, `transaction_id` only for the sending device) and `federation_value` (what another server is sent).

use ruma::{
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId,
    RoomId, UInt, UserId,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, value::RawValue, Value};

use crate::error::{Error, Result};

/// A room event in federation form plus its `event_id` (which v3+ rooms derive rather than store).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    #[serde(deserialize_with = "event_id_list")]
    pub prev_events: Vec<OwnedEventId>,
    #[serde(deserialize_with = "event_id_list")]
    pub auth_events: Vec<OwnedEventId>,
    pub depth: UInt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacts: Option<OwnedEventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned: Option<Box<RawValue>>,
    /// Set for events that failed the auth rules but are kept for the DAG.
    #[serde(skip)]
    pub rejected: bool,
}

/// Room versions 1 and 2 list `[event_id, {hashes}]` pairs; later versions list bare IDs.
fn event_id_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<OwnedEventId>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Id(OwnedEventId),
        Pair(OwnedEventId, serde::de::IgnoredAny),
    }
    let entries = Vec::<Entry>::deserialize(deserializer)?;
    Ok(entries
        .into_iter()
        .map(|entry| match entry {
            Entry::Id(id) | Entry::Pair(id, _) => id,
        })
        .collect())
}

impl Pdu {
    /// Parses a stored or received PDU object that has an `event_id` member.
    pub fn from_object(object: &CanonicalJsonObject) -> Result<Self> {
        serde_json::from_value(serde_json::to_value(object).map_err(Error::internal)?)
            .map_err(|error| Error::bad_json(format!("invalid pdu: {error}")))
    }

    /// The room the event belongs to: its `room_id`, or for the create event of room version
    /// 12 on (which has none), the ID derived from its event ID.
    pub fn room(&self) -> Option<OwnedRoomId> {
        if let Some(room_id) = &self.room_id {
            return Some(room_id.clone());
        }
        if self.kind != ruma::events::TimelineEventType::RoomCreate {
            return None;
        }
        let hash = self.event_id.as_str().strip_prefix('$')?;
        OwnedRoomId::try_from(format!("!{hash}")).ok()
    }

    /// Whether the event belongs to `room_id` (see [`Pdu::room`]).
    pub fn is_in_room(&self, room_id: &RoomId) -> bool {
        self.room().is_some_and(|room| room == room_id)
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Null)
    }

    /// The event this one redacts: top-level before room version 11, in `content` from 11 on.
    pub fn redacts_id(&self) -> Option<OwnedEventId> {
        self.redacts.clone().or_else(|| {
            self.content_value()
                .get("redacts")
                .and_then(Value::as_str)
                .and_then(|id| OwnedEventId::try_from(id).ok())
        })
    }

    /// The client-server form (ClientEvent), with `unsigned` as given.
    pub fn to_client_value(&self, room_id: &RoomId, unsigned: Value) -> Value {
        let mut event = json!({
            "event_id": self.event_id,
            "room_id": room_id,
            "sender": self.sender,
            "origin_server_ts": self.origin_server_ts,
            "type": self.kind,
            "content": self.content,
        });
        if let Some(state_key) = &self.state_key {
            event["state_key"] = json!(state_key);
        }
        if let Some(redacts) = &self.redacts {
            event["redacts"] = json!(redacts);
        } else if self.kind == TimelineEventType::RoomRedaction {
            if let Some(redacts) = self.redacts_id() {
                event["redacts"] = json!(redacts);
            }
        }
        if unsigned
            .as_object()
            .is_some_and(|object| !object.is_empty())
        {
            event["unsigned"] = unsigned;
        }
        event
    }

    /// The stripped form used in invite and knock state.
    pub fn to_stripped_value(&self) -> Value {
        json!({ "type": self.kind, "state_key": self.state_key, "sender": self.sender, "content": self.content })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// The client form of an event as `viewer` should see it: `age`, and `transaction_id` only for the
/// device that sent it.
pub fn client_event(pdu: &Pdu, room_id: &RoomId, viewer: Option<(&UserId, &str)>) -> Value {
    let mut unsigned: Value = pdu
        .unsigned
        .as_ref()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_else(|| Value::Object(Default::default()));
    if let Some(map) = unsigned.as_object_mut() {
        let device = map.remove("device_id");
        let own_device = matches!((viewer, device.as_ref().and_then(Value::as_str)), (Some((user, viewer_device)), Some(sender_device)) if user == pdu.sender && viewer_device == sender_device);
        if !own_device {
            map.remove("transaction_id");
        }
        map.remove("age_ts");
        let age = crate::util::now_millis().saturating_sub(u64::from(pdu.origin_server_ts.0));
        map.insert("age".into(), Value::from(age));
    }
    pdu.to_client_value(room_id, unsigned)
}

/// A signed event as sent to other servers: without `event_id` where the room version derives it.
pub fn federation_value(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Value> {
    let mut object = object.clone();
    if rules.event_id_format != EventIdFormatVersion::V1 {
        object.remove("event_id");
    }
    serde_json::to_value(object).map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_prev_event_formats_parse() {
        let v1: Pdu = serde_json::from_value(json!({
            "event_id": "$a:x", "room_id": "!r:x", "sender": "@u:x", "origin_server_ts": 1, "type": "m.room.message",
            "content": {}, "prev_events": [["$p:x", {"sha256": "abc"}]], "auth_events": [], "depth": 2
        }))
        .unwrap();
        assert_eq!(v1.prev_events[0].as_str(), "$p:x");
        let v10: Pdu = serde_json::from_value(json!({
            "event_id": "$abc", "room_id": "!r:x", "sender": "@u:x", "origin_server_ts": 1, "type": "m.room.redaction",
            "content": {"redacts": "$t"}, "prev_events": ["$p"], "auth_events": ["$q"], "depth": 2
        }))
        .unwrap();
        assert_eq!(v10.redacts_id().unwrap().as_str(), "$t");
        let client = v10.to_client_value(<&RoomId>::try_from("!r:x").unwrap(), json!({}));
        assert_eq!(client["redacts"], "$t");
        assert!(client.get("unsigned").is_none());
    }
}
