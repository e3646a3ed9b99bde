//! Bundled aggregations (spec, client-server API, "Aggregations of child events"): the
//! `unsigned["m.relations"]` of every event served to a client, built from one prefix seek in
//! the relations index.

use std::collections::{BTreeSet, HashMap};

use ruma::{events::TimelineEventType, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{Child, Relation};
use crate::{
    error::Result,
    service::{
        rooms::{
            members::RoomMembership,
            pdu::{client_event, Pdu},
            visibility,
        },
        Services,
    },
};

/// The client form of an event as `viewer` should see it (see `pdu::client_event`)
/// with the viewer's membership at the event (`unsigned.membership`) and its bundled
/// aggregations. Every path that serves room events to clients calls this.
pub fn serve_event(
    services: &Services,
    pdu: &Pdu,
    room_id: &RoomId,
    viewer: Option<(&UserId, &str)>,
) -> Result<Value> {
    serve(services, pdu, room_id, viewer, true, None)
}

/// [`serve_event`] for an event whose stream position the caller holds, with the viewer's
/// current membership in the room (as `/sync` has both): an event after the viewer's latest
/// membership change gets that membership without reading the event's position or the
/// viewer's membership again.
pub fn serve_event_at(
    services: &Services,
    (pdu, count): (&Pdu, u64),
    room_id: &RoomId,
    viewer: (&UserId, &str),
    membership: &RoomMembership,
) -> Result<Value> {
    serve(
        services,
        pdu,
        room_id,
        Some(viewer),
        true,
        Some((count, membership)),
    )
}

fn serve(
    services: &Services,
    pdu: &Pdu,
    room_id: &RoomId,
    viewer: Option<(&UserId, &str)>,
    with_thread: bool,
    known: Option<(u64, &RoomMembership)>,
) -> Result<Value> {
    let mut event = client_event(pdu, room_id, viewer);
    if let Some((user, _)) = viewer {
        let membership = match known {
            Some((count, latest)) => {
                visibility::membership_at_position(services, user, room_id, (pdu, count), latest)?
            }
            None => visibility::membership_at(services, user, room_id, pdu)?,
        };
        if let Some(membership) = membership {
            unsigned(&mut event)["membership"] = Value::String(membership);
        }
    }
    // "State events do not currently receive bundled aggregations."
    if pdu.state_key.is_some() {
        return Ok(event);
    }
    let redacted = event
        .get("unsigned")
        .and_then(|unsigned| unsigned.get("redacted_because"))
        .is_some();
    let relations = aggregate(services, pdu, room_id, viewer, with_thread, redacted)?;
    if !relations.is_empty() {
        unsigned(&mut event)["m.relations"] = Value::Object(relations);
    }
    Ok(event)
}

/// The `unsigned` object of a client event, made when missing.
fn unsigned(event: &mut Value) -> &mut Value {
    if !event.get("unsigned").is_some_and(Value::is_object) {
        event["unsigned"] = json!({});
    }
    &mut event["unsigned"]
}

/// The aggregations of one event, by `rel_type`:
/// - `m.annotation`: `{"chunk": [{"type", "key", "count"}]}` (MSC2675's format; the spec no
///   longer asks for it, clients still read it), counting distinct senders per type and key,
///   most used first, then first used first;
/// - `m.replace`: the latest valid replacement (by `origin_server_ts`, then event ID) as a client
///   event, unless the event is redacted;
/// - `m.thread`: `count`, `latest_event` (with its own aggregations, except `m.thread`, which no
///   thread reply can have) and `current_user_participated`;
/// - `m.reference`: `{"chunk": [{"event_id"}]}`.
fn aggregate(
    services: &Services,
    pdu: &Pdu,
    room_id: &RoomId,
    viewer: Option<(&UserId, &str)>,
    with_thread: bool,
    redacted: bool,
) -> Result<Map<String, Value>> {
    let mut relations = Map::new();
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(relations);
    };
    let mut annotations: Vec<(String, String, BTreeSet<ruma::OwnedUserId>)> = Vec::new();
    let mut annotation_index: HashMap<(String, String), usize> = HashMap::new();
    let mut edits: Vec<Child> = Vec::new();
    let mut thread_count = 0u64;
    let mut thread_latest: Option<Child> = None;
    let mut participated = viewer.is_some_and(|(user, _)| user == pdu.sender);
    let mut references = Vec::new();
    for entry in services
        .rooms
        .relations
        .children(shortroomid, &pdu.event_id)?
    {
        let child = entry.child;
        match entry.rel_type.as_str() {
            "m.annotation" => {
                let Some(key) = child.key.clone() else {
                    continue;
                };
                let index = *annotation_index
                    .entry((child.kind.clone(), key.clone()))
                    .or_insert_with(|| {
                        annotations.push((child.kind.clone(), key, BTreeSet::new()));
                        annotations.len() - 1
                    });
                annotations[index].2.insert(child.sender);
            }
            "m.replace" => edits.push(child),
            "m.thread" if with_thread => {
                thread_count += 1;
                participated |= viewer.is_some_and(|(user, _)| user == child.sender);
                // Entries of one rel_type come in stream order: the last is the latest.
                thread_latest = Some(child);
            }
            "m.reference" => references.push(json!({ "event_id": child.event_id })),
            _ => {}
        }
    }
    if !annotations.is_empty() {
        relations.insert("m.annotation".into(), annotation_chunk(annotations));
    }
    if !edits.is_empty() && !redacted {
        if let Some(edit) = latest_valid_edit(pdu, edits) {
            if let Some(edit_pdu) = services.rooms.timeline.get_pdu(&edit.event_id)? {
                relations.insert("m.replace".into(), client_event(&edit_pdu, room_id, viewer));
            }
        }
    }
    if let Some(latest) = thread_latest {
        if let Some(latest_pdu) = services.rooms.timeline.get_pdu(&latest.event_id)? {
            let latest_event = serve(services, &latest_pdu, room_id, viewer, false, None)?;
            relations.insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest_event,
                    "count": thread_count,
                    "current_user_participated": participated,
                }),
            );
        }
    }
    if !references.is_empty() {
        relations.insert("m.reference".into(), json!({ "chunk": references }));
    }
    Ok(relations)
}

/// The `m.annotation` aggregation: one entry per (event type, key) with how many distinct senders
/// used it, the most used first.
fn annotation_chunk(mut annotations: Vec<(String, String, BTreeSet<ruma::OwnedUserId>)>) -> Value {
    // A stable sort keeps first-used order among equal counts.
    annotations.sort_by_key(|(_, _, senders)| std::cmp::Reverse(senders.len()));
    let chunk: Vec<Value> = annotations
        .into_iter()
        .map(|(kind, key, senders)| json!({ "type": kind, "key": key, "count": senders.len() }))
        .collect();
    json!({ "chunk": chunk })
}

/// The most recent replacement that satisfies "Validity of replacement events": same sender and
/// type as the original, which is not a state event and not itself a replacement, and with
/// `m.new_content`. (Both events share the room: the index is per room.)
fn latest_valid_edit(original: &Pdu, edits: Vec<Child>) -> Option<Child> {
    if original.state_key.is_some() {
        return None;
    }
    let kind = original.kind.to_string();
    let valid: Vec<Child> = edits
        .into_iter()
        .filter(|edit| edit.sender == original.sender && edit.kind == kind && edit.new_content)
        .collect();
    if valid.is_empty() {
        return None;
    }
    let original_is_edit = Relation::from_content(&original.content_value())
        .is_some_and(|relation| relation.rel_type == "m.replace");
    if original_is_edit || original.kind == TimelineEventType::RoomRedaction {
        return None;
    }
    valid
        .into_iter()
        .max_by(|a, b| (a.origin_server_ts, &a.event_id).cmp(&(b.origin_server_ts, &b.event_id)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pdu(sender: &str, kind: &str, content: Value, state_key: Option<&str>) -> Pdu {
        let mut value = json!({
            "event_id": "$original", "sender": sender, "origin_server_ts": 1, "type": kind,
            "content": content, "prev_events": [], "auth_events": [], "depth": 1
        });
        if let Some(state_key) = state_key {
            value["state_key"] = json!(state_key);
        }
        serde_json::from_value(value).unwrap()
    }

    fn edit(id: &str, sender: &str, kind: &str, ts: u64, new_content: bool) -> Child {
        Child {
            event_id: id.try_into().unwrap(),
            sender: sender.try_into().unwrap(),
            kind: kind.into(),
            key: None,
            origin_server_ts: ts,
            new_content,
        }
    }

    #[test]
    fn the_latest_valid_edit_wins() {
        let original = pdu("@a:x", "m.room.message", json!({"body": "hi"}), None);
        let check = |edits: Vec<Child>, expected: Option<&str>| {
            assert_eq!(
                latest_valid_edit(&original, edits).map(|edit| edit.event_id.to_string()),
                expected.map(str::to_owned)
            );
        };
        check(
            vec![
                edit("$1", "@a:x", "m.room.message", 5, true),
                edit("$3", "@a:x", "m.room.message", 7, true),
                edit("$2", "@a:x", "m.room.message", 7, true),
            ],
            Some("$3"),
        );
        check(vec![edit("$1", "@b:x", "m.room.message", 5, true)], None);
        check(vec![edit("$1", "@a:x", "m.sticker", 5, true)], None);
        check(vec![edit("$1", "@a:x", "m.room.message", 5, false)], None);
        let state = pdu("@a:x", "m.room.topic", json!({"topic": "t"}), Some(""));
        assert!(
            latest_valid_edit(&state, vec![edit("$1", "@a:x", "m.room.topic", 5, true)]).is_none()
        );
        let an_edit = pdu(
            "@a:x",
            "m.room.message",
            json!({"m.relates_to": {"rel_type": "m.replace", "event_id": "$0"}}),
            None,
        );
        assert!(latest_valid_edit(
            &an_edit,
            vec![edit("$1", "@a:x", "m.room.message", 5, true)]
        )
        .is_none());
    }
}
