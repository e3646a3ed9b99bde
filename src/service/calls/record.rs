//! One call of the call history and how call events move it: a 1:1 call from `m.call.invite`
//! through `m.call.answer`, `m.call.reject` or `m.call.hangup`, and a group call (MatrixRTC)
//! as a session from the first `m.call.member` join to the last leave. Pure functions, so that
//! the outcome rules are tested without a server.

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The state event types of group-call membership, stable and unstable (Element Call sends
/// `org.matrix.msc3401.call.member`).
pub const MEMBER_TYPES: &[&str] = &[
    "m.call.member",
    "org.matrix.msc3401.call.member",
    "m.rtc.member",
    "org.matrix.msc4143.rtc.member",
];

/// `m.call.hangup` reasons that mean the call failed rather than ended.
const FAILURE_REASONS: &[&str] = &[
    "ice_failed",
    "ice_timeout",
    "user_media_failed",
    "unknown_error",
];

/// One call, as stored in `roomcallkey_call`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallRecord {
    pub room_id: OwnedRoomId,
    pub call_id: String,
    /// A MatrixRTC session rather than a 1:1 call.
    pub group: bool,
    /// `voice` or `video`.
    pub kind: String,
    pub caller: OwnedUserId,
    pub callees: Vec<OwnedUserId>,
    pub start_ts: u64,
    pub answer_ts: Option<u64>,
    pub end_ts: Option<u64>,
    /// The first event of the call, whose visibility decides who may see the call.
    pub first_event: OwnedEventId,
    /// An invite's lifetime in ms: unanswered past it, the call was missed.
    pub lifetime: Option<u64>,
    pub declined_by: Option<OwnedUserId>,
    pub hangup_by: Option<OwnedUserId>,
    pub hangup_reason: Option<String>,
    pub participants: Vec<Participant>,
}

/// A group call's participant: time in the call, and the devices (state keys) in it now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Participant {
    pub user_id: OwnedUserId,
    pub joined_ts: u64,
    pub left_ts: Option<u64>,
    /// Time spent in the call by finished stays, in ms.
    pub past_ms: u64,
    /// The devices in the call now: state key and since when.
    pub active: Vec<(String, u64)>,
}

impl CallRecord {
    /// The record of an `m.call.invite` by `caller` to `callees`.
    pub fn invited(
        room_id: OwnedRoomId,
        first_event: OwnedEventId,
        caller: OwnedUserId,
        callees: Vec<OwnedUserId>,
        ts: u64,
        content: &Value,
    ) -> Self {
        let sdp = content["offer"]["sdp"].as_str().unwrap_or_default();
        Self {
            room_id,
            call_id: call_id(content),
            group: false,
            kind: if sdp.contains("m=video") {
                "video"
            } else {
                "voice"
            }
            .to_owned(),
            caller,
            callees,
            start_ts: ts,
            answer_ts: None,
            end_ts: None,
            first_event,
            lifetime: content["lifetime"].as_u64(),
            declined_by: None,
            hangup_by: None,
            hangup_reason: None,
            participants: Vec::new(),
        }
    }

    /// The record of a group call that `user` starts by joining with `content`.
    pub fn group_started(
        room_id: OwnedRoomId,
        first_event: OwnedEventId,
        user: OwnedUserId,
        ts: u64,
        content: &Value,
    ) -> Self {
        let intent = content["m.call.intent"].as_str().unwrap_or("video");
        Self {
            room_id,
            call_id: group_call_id(content),
            group: true,
            kind: if intent == "audio" { "voice" } else { "video" }.to_owned(),
            caller: user,
            callees: Vec::new(),
            start_ts: ts,
            answer_ts: None,
            end_ts: None,
            first_event,
            lifetime: None,
            declined_by: None,
            hangup_by: None,
            hangup_reason: None,
            participants: Vec::new(),
        }
    }

    /// Applies a 1:1 call event (`m.call.answer`, `m.call.reject`, `m.call.hangup`) by `sender`
    /// at `ts`; anything else, or anything after the end, changes nothing.
    pub fn apply(&mut self, event_type: &str, sender: &UserId, ts: u64, content: &Value) {
        if self.end_ts.is_some() {
            return;
        }
        match event_type {
            "m.call.answer" if self.answer_ts.is_none() => self.answer_ts = Some(ts),
            "m.call.reject" if self.answer_ts.is_none() => {
                self.end_ts = Some(ts);
                self.declined_by = Some(sender.to_owned());
            }
            "m.call.hangup" => {
                self.end_ts = Some(ts);
                self.hangup_by = Some(sender.to_owned());
                self.hangup_reason = content["reason"].as_str().map(str::to_owned);
            }
            _ => {}
        }
    }

    /// A group participant's device `state_key` joined at `ts`.
    pub fn member_joined(&mut self, user: &UserId, state_key: &str, ts: u64) {
        let index = match self.participants.iter().position(|p| p.user_id == user) {
            Some(index) => index,
            None => {
                self.participants.push(Participant {
                    user_id: user.to_owned(),
                    joined_ts: ts,
                    left_ts: None,
                    past_ms: 0,
                    active: Vec::new(),
                });
                self.participants.len() - 1
            }
        };
        let participant = &mut self.participants[index];
        if !participant.active.iter().any(|(key, _)| key == state_key) {
            participant.active.push((state_key.to_owned(), ts));
            participant.left_ts = None;
        }
        if self.answer_ts.is_none() && self.participants.len() > 1 {
            self.answer_ts = Some(ts);
        }
    }

    /// A group participant's device left at `ts`; returns whether the session is now over
    /// (nobody left in it).
    pub fn member_left(&mut self, user: &UserId, state_key: &str, ts: u64) -> bool {
        if let Some(participant) = self.participants.iter_mut().find(|p| p.user_id == user) {
            if let Some(index) = participant
                .active
                .iter()
                .position(|(key, _)| key == state_key)
            {
                let (_, since) = participant.active.remove(index);
                participant.past_ms += ts.saturating_sub(since);
                if participant.active.is_empty() {
                    participant.left_ts = Some(ts);
                }
            }
        }
        let over = self.participants.iter().all(|p| p.active.is_empty());
        if over {
            self.end_ts = Some(ts);
        }
        over
    }

    /// The outcome for `user` at `now`: `completed`, `missed`, `declined`, `failed` or
    /// `ongoing`.
    pub fn outcome(&self, user: &UserId, now: u64) -> &'static str {
        if self.group {
            return self.group_outcome(user);
        }
        let Some(_end) = self.end_ts else {
            let expired = self.answer_ts.is_none()
                && self
                    .lifetime
                    .is_some_and(|lifetime| self.start_ts + lifetime < now);
            return if expired { "missed" } else { "ongoing" };
        };
        let reason = self.hangup_reason.as_deref();
        if reason.is_some_and(|reason| FAILURE_REASONS.contains(&reason)) {
            return "failed";
        }
        if self.answer_ts.is_some() {
            return "completed";
        }
        let callee_hung_up = self.hangup_by.as_ref().is_some_and(|by| *by != self.caller);
        if self.declined_by.is_some() || reason == Some("user_busy") || callee_hung_up {
            return "declined";
        }
        "missed"
    }

    fn group_outcome(&self, user: &UserId) -> &'static str {
        let took_part = self.participants.iter().any(|p| p.user_id == user);
        match (self.end_ts, took_part) {
            (None, _) => "ongoing",
            (Some(_), true) if self.participants.len() > 1 => "completed",
            _ => "missed",
        }
    }

    /// The call as `GET /_plait/client/v1/calls` shows it to `user` at `now`.
    pub fn shown_to(&self, user: &UserId, now: u64) -> Value {
        let until = self.end_ts.unwrap_or(now);
        let duration = match (self.group, self.answer_ts) {
            (true, _) => until.saturating_sub(self.start_ts),
            (false, Some(answer)) => until.saturating_sub(answer),
            (false, None) => 0,
        };
        let participants: Vec<Value> = self
            .participants
            .iter()
            .map(|p| {
                let current: u64 = p
                    .active
                    .iter()
                    .map(|(_, since)| now.saturating_sub(*since))
                    .sum();
                json!({
                    "user_id": p.user_id,
                    "joined_ts": p.joined_ts,
                    "left_ts": p.left_ts,
                    "duration_ms": p.past_ms + current,
                })
            })
            .collect();
        json!({
            "room_id": self.room_id,
            "call_id": self.call_id,
            "group": self.group,
            "type": self.kind,
            "direction": if self.caller == user { "outgoing" } else { "incoming" },
            "caller": self.caller,
            "callees": self.callees,
            "start_ts": self.start_ts,
            "answer_ts": self.answer_ts,
            "end_ts": self.end_ts,
            "duration_ms": duration,
            "outcome": self.outcome(user, now),
            "participants": participants,
        })
    }
}

/// A 1:1 call event's `call_id`.
pub fn call_id(content: &Value) -> String {
    content["call_id"].as_str().unwrap_or_default().to_owned()
}

/// A group membership's call ID: the content's own (per-device events) or its first
/// membership's (the older `memberships` list); `""` is the room's call.
pub fn group_call_id(content: &Value) -> String {
    content["call_id"]
        .as_str()
        .or_else(|| content["memberships"][0]["call_id"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Whether a group membership's content says the device is in the call (a leave is `{}` or an
/// empty `memberships` list).
pub fn is_in_call(content: &Value) -> bool {
    match content.get("memberships") {
        Some(memberships) => memberships.as_array().is_some_and(|list| !list.is_empty()),
        None => content.as_object().is_some_and(|object| !object.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> OwnedUserId {
        OwnedUserId::try_from(format!("@{name}:x")).unwrap()
    }

    fn invite(sdp: &str) -> CallRecord {
        CallRecord::invited(
            "!r:x".try_into().unwrap(),
            "$e".try_into().unwrap(),
            user("a"),
            vec![user("b")],
            1_000,
            &json!({"call_id": "c1", "lifetime": 60_000, "offer": {"type": "offer", "sdp": sdp}}),
        )
    }

    fn check(events: &[(&str, &str, u64, Value)], now: u64, expected: &str, duration: u64) {
        let mut record = invite("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
        for (event_type, sender, ts, content) in events {
            record.apply(event_type, &user(sender), *ts, content);
        }
        let shown = record.shown_to(&user("b"), now);
        assert_eq!(shown["outcome"], expected, "{events:?}");
        assert_eq!(shown["duration_ms"], duration, "{events:?}");
        assert_eq!(shown["type"], "voice");
    }

    #[test]
    fn outcomes_of_one_to_one_calls() {
        let hangup = json!({"reason": "user_hangup"});
        check(
            &[
                ("m.call.answer", "b", 2_000, json!({})),
                ("m.call.hangup", "a", 9_000, hangup.clone()),
            ],
            10_000,
            "completed",
            7_000,
        );
        check(
            &[("m.call.hangup", "a", 5_000, hangup.clone())],
            10_000,
            "missed",
            0,
        );
        check(
            &[(
                "m.call.hangup",
                "a",
                61_000,
                json!({"reason": "invite_timeout"}),
            )],
            70_000,
            "missed",
            0,
        );
        check(&[], 70_000, "missed", 0);
        check(
            &[("m.call.reject", "b", 3_000, json!({}))],
            10_000,
            "declined",
            0,
        );
        check(
            &[("m.call.hangup", "b", 3_000, hangup)],
            10_000,
            "declined",
            0,
        );
        check(
            &[("m.call.answer", "b", 2_000, json!({}))],
            10_000,
            "ongoing",
            8_000,
        );
        check(
            &[("m.call.hangup", "a", 3_000, json!({"reason": "ice_failed"}))],
            10_000,
            "failed",
            0,
        );
    }

    #[test]
    fn video_from_the_offer() {
        assert_eq!(invite("m=audio 1\r\nm=video 2\r\n").kind, "video");
    }

    #[test]
    fn group_session_durations() {
        let content = json!({"application": "m.call", "call_id": "", "m.call.intent": "audio"});
        let mut record = CallRecord::group_started(
            "!r:x".try_into().unwrap(),
            "$e".try_into().unwrap(),
            user("a"),
            1_000,
            &content,
        );
        assert_eq!(record.kind, "voice");
        record.member_joined(&user("a"), "_@a:x_D", 1_000);
        record.member_joined(&user("b"), "_@b:x_D", 3_000);
        assert!(!record.member_left(&user("b"), "_@b:x_D", 8_000));
        assert!(record.member_left(&user("a"), "_@a:x_D", 11_000));
        let shown = record.shown_to(&user("b"), 20_000);
        assert_eq!(shown["outcome"], "completed");
        assert_eq!(shown["duration_ms"], 10_000);
        assert_eq!(shown["participants"][0]["duration_ms"], 10_000);
        assert_eq!(shown["participants"][1]["duration_ms"], 5_000);
        assert_eq!(record.shown_to(&user("c"), 20_000)["outcome"], "missed");
        assert!(is_in_call(&content));
        assert!(!is_in_call(&json!({})));
        assert!(!is_in_call(&json!({"memberships": []})));
    }
}
