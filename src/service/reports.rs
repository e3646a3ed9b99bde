//! Reports of events, rooms and users that users send to this server (client-server API,
//! "Reporting content"), kept for admins: Synapse's admin API lists, shows and deletes the
//! event reports (`docs/admin_api.md`). Report IDs count up from 1 and are never reused.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use ruma::{
    events::StateEventType, EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    service::{rooms::pdu::client_event, synapse_admin::rooms::state_field, Services},
    store::{key, Db, Tree},
    util,
};

/// Owns `reportid_report` (u64 report ID → JSON [`Report`]).
pub struct Reports {
    reportid_report: Tree,
    /// The last report ID handed out.
    last_id: AtomicU64,
}

/// What a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    Event,
    Room,
    User,
}

/// A stored report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub id: u64,
    pub kind: ReportKind,
    /// Who reported.
    pub reporter: OwnedUserId,
    /// The room of a room or event report.
    pub room_id: Option<OwnedRoomId>,
    pub event_id: Option<OwnedEventId>,
    /// The reported user of a user report, or the sender of a reported event.
    pub user_id: Option<OwnedUserId>,
    pub reason: Option<String>,
    /// When it arrived, in ms since the epoch.
    pub received_ts: u64,
    /// When an admin resolved it (`reports resolve`), in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ts: Option<u64>,
}

/// The filters of the event report list, as sent.
pub struct ReportQuery<'a> {
    pub from: usize,
    pub limit: usize,
    /// Oldest first when true; newest first by default.
    pub forwards: bool,
    /// Only reports by this user (part of the user ID).
    pub reporter: Option<&'a str>,
    /// Only reports about this room (part of the room ID).
    pub room_id: Option<&'a str>,
    /// Only reports of events by this sender.
    pub sender: Option<&'a str>,
}

impl Reports {
    /// Opens the tree and finds the last report ID.
    pub fn open(db: &Arc<Db>) -> Result<Self> {
        let reportid_report = db.tree("reportid_report");
        let last_id = match reportid_report.iter_from(&[0xff; 9], true).next() {
            Some(entry) => key::read_u64(&entry?.0).unwrap_or(0),
            None => 0,
        };
        Ok(Self {
            reportid_report,
            last_id: AtomicU64::new(last_id),
        })
    }

    /// Stores a new report and returns it with its ID.
    fn add(&self, mut report: Report) -> Result<Report> {
        report.id = self.last_id.fetch_add(1, Ordering::SeqCst) + 1;
        self.store(&report)?;
        tracing::info!(report = report.id, kind = ?report.kind, "content reported");
        Ok(report)
    }

    fn store(&self, report: &Report) -> Result<()> {
        self.reportid_report.insert(
            &key::u64_bytes(report.id),
            &serde_json::to_vec(report).map_err(Error::internal)?,
        )
    }

    /// Marks a report resolved; `M_NOT_FOUND` for an unknown one, `M_INVALID_PARAM` for one
    /// resolved already.
    pub fn resolve(&self, id: u64) -> Result<Report> {
        let mut report = self
            .get(id)?
            .ok_or_else(|| Error::not_found(format!("report {id} not found")))?;
        if report.resolved_ts.is_some() {
            return Err(Error::invalid_param(format!(
                "report {id} is already resolved"
            )));
        }
        report.resolved_ts = Some(util::now_millis());
        self.store(&report)?;
        Ok(report)
    }

    /// A stored report.
    pub fn get(&self, id: u64) -> Result<Option<Report>> {
        self.reportid_report
            .get(&key::u64_bytes(id))?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("reportid_report", e))
            })
            .transpose()
    }

    /// Every stored report, oldest first.
    pub fn iter_reports(&self) -> Result<Vec<Report>> {
        self.reportid_report
            .iter_prefix(b"")
            .map(|entry| {
                serde_json::from_slice(&entry?.1).map_err(|e| Error::corrupt("reportid_report", e))
            })
            .collect()
    }

    /// Deletes a report; `M_NOT_FOUND` for an unknown one.
    pub fn delete(&self, id: u64) -> Result<()> {
        if self.get(id)?.is_none() {
            return Err(not_found(id));
        }
        self.reportid_report.remove(&key::u64_bytes(id))
    }
}

fn not_found(id: u64) -> Error {
    Error::not_found(format!("event report {id} not found"))
}

fn new_report(kind: ReportKind, reporter: &UserId, reason: Option<String>) -> Report {
    Report {
        id: 0,
        kind,
        reporter: reporter.to_owned(),
        room_id: None,
        event_id: None,
        user_id: None,
        reason,
        received_ts: util::now_millis(),
        resolved_ts: None,
    }
}

impl Report {
    /// What the report is about, in words: the event and its sender, the room, or the user.
    pub fn describe(&self) -> String {
        describe_target(self)
    }
}

fn describe_target(report: &Report) -> String {
    let show = |value: Option<&str>| value.unwrap_or("?").to_owned();
    match report.kind {
        ReportKind::Event => format!(
            "event {} of {} in {}",
            show(report.event_id.as_deref().map(EventId::as_str)),
            show(report.user_id.as_deref().map(UserId::as_str)),
            show(report.room_id.as_deref().map(RoomId::as_str)),
        ),
        ReportKind::Room => format!(
            "room {}",
            show(report.room_id.as_deref().map(RoomId::as_str))
        ),
        ReportKind::User => format!(
            "user {}",
            show(report.user_id.as_deref().map(UserId::as_str))
        ),
    }
}

/// Stores a report and announces it in the admin room.
fn add_and_announce(services: &Services, report: Report) -> Result<u64> {
    let report = services.reports.add(report)?;
    let reason = report.reason.as_deref().unwrap_or("no reason given");
    services.admin.announce(format!(
        "new report {}: {} reported {} ({reason}); `!admin reports list` lists the open reports",
        report.id,
        report.reporter,
        describe_target(&report),
    ));
    Ok(report.id)
}

/// Reports an event of a room the reporter is joined to; `M_NOT_FOUND` when they are not
/// joined or the room holds no such event (the spec's one answer for both).
pub fn report_event(
    services: &Services,
    reporter: &UserId,
    (room_id, event_id): (&RoomId, &EventId),
    reason: Option<String>,
) -> Result<u64> {
    let hidden = || Error::not_found("the event was not found or you are not joined to the room");
    if !services.rooms.members.is_joined(room_id, reporter)? {
        return Err(hidden());
    }
    let pdu = services
        .rooms
        .timeline
        .get_pdu(event_id)?
        .ok_or_else(hidden)?;
    if !pdu.is_in_room(room_id) {
        return Err(hidden());
    }
    let mut report = new_report(ReportKind::Event, reporter, reason);
    report.room_id = Some(room_id.to_owned());
    report.event_id = Some(event_id.to_owned());
    report.user_id = Some(pdu.sender);
    add_and_announce(services, report)
}

/// Reports a room this server knows (the reporter need not be in it); `M_NOT_FOUND` otherwise.
pub fn report_room(
    services: &Services,
    reporter: &UserId,
    room_id: &RoomId,
    reason: String,
) -> Result<u64> {
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found(format!("room {room_id} not found")));
    }
    let mut report = new_report(ReportKind::Room, reporter, Some(reason));
    report.room_id = Some(room_id.to_owned());
    add_and_announce(services, report)
}

/// Reports a user: an account of this server (`M_NOT_FOUND` for an unknown one), or a user of
/// another server, who is taken on trust.
pub fn report_user(
    services: &Services,
    reporter: &UserId,
    user_id: &UserId,
    reason: String,
) -> Result<u64> {
    let local = user_id.server_name() == services.globals.server_name();
    if local && !services.users.exists(user_id)? {
        return Err(Error::not_found(format!("user {user_id} not found")));
    }
    let mut report = new_report(ReportKind::User, reporter, Some(reason));
    report.user_id = Some(user_id.to_owned());
    add_and_announce(services, report)
}

/// A page of the event reports in Synapse's shape: `event_reports`, `total` and `next_token`.
pub fn list_event_reports(services: &Services, query: &ReportQuery<'_>) -> Result<Value> {
    let contains = |filter: Option<&str>, value: Option<&str>| {
        filter.is_none_or(|filter| value.is_some_and(|value| value.contains(filter)))
    };
    let mut reports: Vec<Report> = services
        .reports
        .iter_reports()?
        .into_iter()
        .filter(|report| report.kind == ReportKind::Event)
        .filter(|report| {
            contains(query.reporter, Some(report.reporter.as_str()))
                && contains(query.room_id, report.room_id.as_deref().map(RoomId::as_str))
                && contains(query.sender, report.user_id.as_deref().map(UserId::as_str))
        })
        .collect();
    if !query.forwards {
        reports.reverse();
    }
    let total = reports.len();
    let mut page = Vec::new();
    for report in reports.iter().skip(query.from).take(query.limit) {
        page.push(event_report_json(services, report)?);
    }
    let mut answer = json!({ "event_reports": page, "total": total });
    let next = query.from.saturating_add(query.limit);
    if next < total {
        answer["next_token"] = json!(next);
    }
    Ok(answer)
}

/// One event report with the reported event (`event_json`); `M_NOT_FOUND` for an unknown ID
/// or a report of a room or user.
pub fn get_event_report(services: &Services, id: u64) -> Result<Value> {
    let report = services
        .reports
        .get(id)?
        .filter(|report| report.kind == ReportKind::Event)
        .ok_or_else(|| not_found(id))?;
    let mut answer = event_report_json(services, &report)?;
    let event = match (&report.event_id, &report.room_id) {
        (Some(event_id), Some(room_id)) => services
            .rooms
            .timeline
            .get_pdu(event_id)?
            .map(|pdu| client_event(&pdu, room_id, None)),
        _ => None,
    };
    answer["event_json"] = event.unwrap_or(Value::Null);
    Ok(answer)
}

/// Deletes an event report; `M_NOT_FOUND` for an unknown ID or a report of a room or user.
pub fn delete_event_report(services: &Services, id: u64) -> Result<()> {
    let known = services
        .reports
        .get(id)?
        .is_some_and(|report| report.kind == ReportKind::Event);
    if !known {
        return Err(not_found(id));
    }
    services.reports.delete(id)
}

/// An event report in the list's shape, with the room's current name and canonical alias.
fn event_report_json(services: &Services, report: &Report) -> Result<Value> {
    let room_field = |kind: StateEventType, field: &str| match &report.room_id {
        Some(room_id) => state_field(services, room_id, kind, field),
        None => Ok(Value::Null),
    };
    Ok(json!({
        "id": report.id,
        "received_ts": report.received_ts,
        "room_id": report.room_id,
        "event_id": report.event_id,
        "user_id": report.reporter,
        "sender": report.user_id,
        "reason": report.reason,
        "score": null,
        "name": room_field(StateEventType::RoomName, "name")?,
        "canonical_alias": room_field(StateEventType::RoomCanonicalAlias, "alias")?,
    }))
}
