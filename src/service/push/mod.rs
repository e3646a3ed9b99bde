//! Push notifications: each user's push rules (`rules`), their evaluation for every committed
//! event and the notifications it produces (the unread counts of `/sync` and
//! `/notifications`), and pushers with their delivery queue (`pushers`, `sender`).
//!
//! `timeline::commit` calls [`prepare`] and [`Push::write_in_batch`] before it takes the commit lock,
//! so that a notification, its unread count and its queued push land with the event.
//!
//! Push notifications. When a local user joins a room whose create event names a `predecessor` (an upgrade, also a manual one), their room rule for the old room is copied to the new one (`carry_over_on_join`, called by `commit` after every local join, whichever way it came).
//! `push/rules.rs`: each user's rule set is `m.push_rules` global account data (written through `account_data`, parsed once per user and cached until the user changes a rule); a user who never changed a rule has the server defaults, which an initial `/sync` and `GET .../account_data/m.push_rules` show too.
//! The defaults are the spec v1.19 rules plus the legacy body-mention rules (`.m.rule.contains_display_name`, `.m.rule.roomnotif`, `.m.rule.contains_user_name`, which the spec dropped in v1.17 and Synapse keeps); like Synapse, the legacy rules are skipped for events with `m.mentions`; unstable rules that ruma adds under its features are left out.
//! `push::prepare` evaluates, before `commit` writes an event, the rules of every local joined member but the sender (and of a local invitee) with ruma's evaluator; the room facts it needs (joined count, local members' display names, power levels) are cached per room with the current-state snapshot they were built from and rebuilt when that snapshot changes; the event is flattened once for all the members evaluated, and a rule that reads nothing of its user (every default rule but the display-name one) is decided once per event for all the members who hold it (`rules::Shared`).
//! Notifying events go into the commit batch as `userroomcount_notification` (per user and room), with the actions, highlight and thread: the unread counts recount them, and `/notifications` merges the lists of the user's rooms by position. (A second index per user, `usercount_notification`, cost a key per notified member and event; it is retired, emptied at start-up by [`drain_retired_index`].)
//! `push/unread.rs`, `push/counters.rs`: a room's unread counts are the notifications after the user's receipts (`m.read` or `m.read.private`; an unthreaded receipt reads everything up to its event, a threaded one only its thread). They are stored as counters per user, room and thread: the commit batch of a notifying event adds to them, and a local user's receipt recounts them (a scan of the notifications after the latest unthreaded receipt) in the receipt's batch, both under the room lock; a sync reads the counters, so its cost does not grow with the number of unread notifications. A database from before the counters gets them built once at startup. A local user's read receipt also deletes their notifications in that room that are read and older than `read_notification_retention_ms` (30 days), at most 1,000 per receipt; unread ones stay.
//! `push/pushers.rs`: pushers per user (`userpusher_pusher`) and a delivery queue per pusher (`pushercount_push`, written in the commit batch, so a restart loses nothing); one worker (`push/sender.rs`) posts them in order to the gateway's `/_matrix/push/v1/notify` (pushers side by side, up to 32 requests in flight, one per pusher; answers read up to 64 KiB; unless `push_gateway_allow_http`, gateway addresses in `url_preview_ip_denylist` are refused when the pusher is set (IP literals) and dropped when the name is resolved), backs off per pusher (1 s doubling to an hour, a notification dropped after a day of failures) and removes a pusher whose pushkey the gateway lists in `rejected`.

mod counters;
pub mod pushers;
pub mod rules;
pub mod sender;
mod unread;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{
    events::{
        room::{
            member::MembershipState,
            power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
        },
        StateEventType, TimelineEventType,
    },
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::{
    counters::build_missing as build_unread_counters,
    unread::{iter_notifications, prune_read, recount_for_receipts, sync_unread, NotificationPage},
};
use crate::{
    error::Result,
    service::{notify::Topic, rooms::pdu::Pdu, Services},
    store::{key, Batch, Db, Tree},
};

/// The largest rule set a user may store, serialized: every event evaluates it.
const MAX_RULES_BYTES: usize = 256 * 1024;

/// Owns `userroomcount_notification` (user ID 0xff room ID 0xff stream position u64 → JSON
/// [`Notification`]), `userroomthread_unreadcount` (the unread counters of `push/counters.rs`)
/// and the retired `usercount_notification` (user ID 0xff stream position u64 → room ID: written
/// by older versions, emptied at start-up); the pusher trees are owned by [`pushers::Pushers`].
pub struct Push {
    db: Arc<Db>,
    userroomcount_notification: Tree,
    userroomthread_unreadcount: Tree,
    usercount_notification: Tree,
    pub pushers: pushers::Pushers,
    /// Parsed rule sets per user; dropped when the user changes a rule.
    rules: Mutex<HashMap<OwnedUserId, Arc<rules::Prepared>>>,
    /// What evaluation needs from a room's state, with the current-state snapshot it was built
    /// from (snapshot ids are never reused, so a different one means the state moved).
    rooms: Mutex<HashMap<OwnedRoomId, (u64, Arc<RoomContext>)>>,
    /// Serialises rule changes (read, change, write).
    rules_write: Mutex<()>,
    /// The numbers of the rules whose outcome members of a room share (`rules::Shared`).
    shared_rules: rules::Shared,
}

/// One notifying event for one user, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Notification {
    pub event_id: ruma::OwnedEventId,
    pub actions: Vec<Action>,
    pub highlight: bool,
    /// The thread root when the event is in a thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Milliseconds since the epoch when the notification was made.
    pub ts: u64,
}

/// The notifications an event makes, computed before its commit and written in its batch.
#[derive(Default)]
pub struct Pending {
    room_id: Option<OwnedRoomId>,
    notifications: Vec<(OwnedUserId, Notification)>,
}

impl Pending {
    /// Whether the event notifies nobody.
    pub fn is_empty(&self) -> bool {
        self.notifications.is_empty()
    }
}

/// The room facts push conditions read: joined member count, the local joined users with
/// their display names, and the power levels.
struct RoomContext {
    member_count: UInt,
    locals: Vec<(OwnedUserId, String)>,
    power_levels: Option<PushConditionPowerLevelsCtx>,
}

/// Empties `usercount_notification`, the per-user notification index older versions wrote (a
/// key per notified member and event; `/notifications` now merges the per-room lists), in
/// batches, once: later starts find it empty with one seek.
pub fn drain_retired_index(services: &Services) -> Result<()> {
    const BATCH_KEYS: usize = 10_000;
    let tree = &services.push.usercount_notification;
    let mut drained = 0usize;
    loop {
        let mut batch = Batch::default();
        let mut keys = 0;
        for entry in tree.iter_from(&[], false).take(BATCH_KEYS) {
            let (entry_key, _) = entry?;
            batch.remove(tree, &entry_key);
            keys += 1;
        }
        if keys == 0 {
            break;
        }
        services.push.db.write(batch)?;
        drained += keys;
    }
    if drained > 0 {
        tracing::info!(drained, "retired per-user notification index emptied");
    }
    Ok(())
}

impl Push {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            db: Arc::clone(db),
            userroomcount_notification: db.tree("userroomcount_notification"),
            userroomthread_unreadcount: db.tree("userroomthread_unreadcount"),
            usercount_notification: db.tree("usercount_notification"),
            pushers: pushers::Pushers::open(db),
            rules: Mutex::new(HashMap::new()),
            rooms: Mutex::new(HashMap::new()),
            rules_write: Mutex::new(()),
            shared_rules: rules::Shared::default(),
        }
    }

    /// Adds the notifications of an event to its commit batch, with the users' unread counters,
    /// and queues them for the users' pushers, keyed by the stream position the batch gets later
    /// (`Batch::insert_at_count`). The caller holds the room lock (see `push/counters.rs`).
    pub fn write_in_batch(&self, pending: &Pending, batch: &mut Batch) -> Result<()> {
        let Some(room_id) = &pending.room_id else {
            return Ok(());
        };
        for (user_id, notification) in &pending.notifications {
            let json = serde_json::to_vec(notification).map_err(crate::error::Error::internal)?;
            let room_key = key::prefix(&[user_id.as_bytes(), room_id.as_bytes()]);
            batch.insert_at_count(&self.userroomcount_notification, &room_key, &json);
            counters::add_in_batch(self, user_id, room_id, notification, batch)?;
            if notification.actions.iter().any(Action::should_notify) {
                self.pushers.queue_in_batch(user_id, room_id, batch)?;
            }
        }
        Ok(())
    }

    /// Wakes the push sender after a commit whose notifications were queued.
    pub fn wake_sender(&self, pending: &Pending) {
        if !pending.is_empty() {
            self.pushers.wake();
        }
    }

    /// A user's rules, for the API (server defaults when they never changed any).
    pub fn get_rules(&self, services: &Services, user_id: &UserId) -> Result<Ruleset> {
        Ok(self.prepared(services, user_id)?.all.clone())
    }

    /// Changes a user's rules with `change` and stores them, one change at a time, so that two
    /// concurrent requests do not lose one another's rule.
    pub fn update_rules(
        &self,
        services: &Services,
        user_id: &UserId,
        change: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        let _guard = self.rules_write.lock();
        let mut ruleset = self.get_rules(services, user_id)?;
        change(&mut ruleset)?;
        self.set_rules(services, user_id, ruleset)
    }

    /// After `user` joined `room_id`: when the room replaces an older one (its create event names
    /// a `predecessor`), the user's room rule for the old room is copied to the new one, so that a
    /// muted or noisy room stays so across an upgrade (as Synapse does). Nothing changes when the
    /// user had no such rule or already has one for the new room.
    pub fn carry_over_on_join(
        &self,
        services: &Services,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<()> {
        let Some(create) = services.rooms.current_state_pdu(
            room_id,
            &ruma::events::StateEventType::RoomCreate,
            "",
        )?
        else {
            return Ok(());
        };
        let Some(old_room) = create.content_value()["predecessor"]["room_id"]
            .as_str()
            .and_then(|room| ruma::OwnedRoomId::try_from(room).ok())
        else {
            return Ok(());
        };
        let rules = self.get_rules(services, user)?;
        let Some(rule) = rules.room.iter().find(|rule| rule.rule_id == old_room) else {
            return Ok(());
        };
        if rules.room.iter().any(|rule| rule.rule_id == room_id) {
            return Ok(());
        }
        let mut copy = rule.clone();
        copy.rule_id = room_id.to_owned();
        self.update_rules(services, user, |ruleset| {
            ruleset.room.insert(copy);
            Ok(())
        })
    }

    /// Stores a user's changed rules as `m.push_rules` account data and wakes their syncs.
    fn set_rules(&self, services: &Services, user_id: &UserId, ruleset: Ruleset) -> Result<()> {
        let content = rules::to_account_data(&ruleset)?;
        if content.to_string().len() > MAX_RULES_BYTES {
            return Err(crate::error::Error::matrix(
                ruma::api::error::ErrorKind::TooLarge,
                format!("the push rules of {user_id} would exceed {MAX_RULES_BYTES} bytes"),
            ));
        }
        services.account_data.set(
            &services.globals,
            user_id,
            None,
            rules::ACCOUNT_DATA_TYPE,
            &content,
        )?;
        self.rules.lock().insert(
            user_id.to_owned(),
            Arc::new(rules::Prepared::new(ruleset, &self.shared_rules)),
        );
        services.notifier.wake(Topic::User(user_id.to_string()));
        Ok(())
    }

    fn prepared(&self, services: &Services, user_id: &UserId) -> Result<Arc<rules::Prepared>> {
        // Locked across the read: `set_rules` stores the new rules first and then waits for this
        // lock to cache them, so an older read cannot overwrite them.
        let mut cache = self.rules.lock();
        if let Some(prepared) = cache.get(user_id) {
            return Ok(Arc::clone(prepared));
        }
        let stored = services
            .account_data
            .get(user_id, None, rules::ACCOUNT_DATA_TYPE)?;
        let prepared = Arc::new(rules::Prepared::new(
            rules::from_account_data(user_id, stored.as_ref()),
            &self.shared_rules,
        ));
        cache.insert(user_id.to_owned(), Arc::clone(&prepared));
        Ok(prepared)
    }

    /// The room context at the room's current state, rebuilt whenever that state changed: by a
    /// state event, but also by a fork merged through state resolution, a join's state or
    /// anything else that moves the room's current snapshot.
    fn room_context(&self, services: &Services, room_id: &RoomId) -> Result<Arc<RoomContext>> {
        let snapshot = services.rooms.current_state_hash(room_id)?;
        if let Some((at, context)) = self.rooms.lock().get(room_id) {
            if Some(*at) == snapshot {
                return Ok(Arc::clone(context));
            }
        }
        let context = Arc::new(build_room_context(services, room_id)?);
        if let Some(snapshot) = snapshot {
            self.rooms
                .lock()
                .insert(room_id.to_owned(), (snapshot, Arc::clone(&context)));
        }
        Ok(context)
    }
}

/// The initial-sync `m.push_rules` event of a user who never changed a rule (stored rules come
/// through account data like any other type).
pub fn initial_sync_rules(services: &Services, user_id: &UserId) -> Result<Option<Value>> {
    if services
        .account_data
        .get(user_id, None, rules::ACCOUNT_DATA_TYPE)?
        .is_some()
    {
        return Ok(None);
    }
    let content = rules::to_account_data(&rules::server_default(user_id))?;
    Ok(Some(
        serde_json::json!({ "type": rules::ACCOUNT_DATA_TYPE, "content": content }),
    ))
}

/// Evaluates the push rules of every local joined member but the sender (and of a local user
/// the event invites) for an event about to be committed. Spec: "Push Notifications", the
/// server evaluates each user's rules for every event.
pub fn prepare(services: &Services, room_id: &RoomId, pdu: &Pdu) -> Result<Pending> {
    if pdu.rejected {
        return Ok(Pending::default());
    }
    let push = &services.push;
    let context = push.room_context(services, room_id)?;
    let content = pdu.content_value();
    let mut targets: Vec<(OwnedUserId, String)> = context
        .locals
        .iter()
        .filter(|(user_id, _)| *user_id != pdu.sender)
        .cloned()
        .collect();
    if let (TimelineEventType::RoomMember, Some(target)) = (&pdu.kind, &pdu.state_key) {
        let invited = content.get("membership").and_then(Value::as_str) == Some("invite");
        if let Ok(target) = OwnedUserId::try_from(target.as_str()) {
            if invited
                && target.server_name() == services.globals.server_name()
                && !targets.iter().any(|(user_id, _)| *user_id == target)
            {
                let name = target.localpart().to_owned();
                targets.push((target, name));
            }
        }
    }
    if targets.is_empty() {
        return Ok(Pending::default());
    }
    let event = Raw::new(&pdu.to_client_value(room_id, Value::Null))
        .map_err(crate::error::Error::internal)?;
    let has_mentions = content.get("m.mentions").is_some();
    let thread_id = content
        .get("m.relates_to")
        .filter(|relation| relation.get("rel_type").and_then(Value::as_str) == Some("m.thread"))
        .and_then(|relation| relation.get("event_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let ts = crate::util::now_millis();
    let mut pending = Pending {
        room_id: Some(room_id.to_owned()),
        notifications: Vec::new(),
    };
    // One flattened event and one context for every target: only the user fields change.
    let event = FlattenedJson::from_raw(&event);
    let mut ctx = PushConditionRoomCtx::new(
        room_id.to_owned(),
        context.member_count,
        pdu.sender.clone(),
        String::new(),
    );
    if let Some(power_levels) = &context.power_levels {
        ctx = ctx.with_power_levels(power_levels.clone());
    }
    let mut outcomes = rules::Outcomes::default();
    for (user_id, display_name) in targets {
        let prepared = push.prepared(services, &user_id)?;
        ctx.user_id = user_id.clone();
        ctx.user_display_name = display_name;
        let actions = prepared.actions(&event, has_mentions, &ctx, &mut outcomes);
        let (notify, highlight) = rules::notify_and_highlight(&actions);
        if notify {
            pending.notifications.push((
                user_id,
                Notification {
                    event_id: pdu.event_id.clone(),
                    actions,
                    highlight,
                    thread_id: thread_id.clone(),
                    ts,
                },
            ));
        }
    }
    Ok(pending)
}

fn build_room_context(services: &Services, room_id: &RoomId) -> Result<RoomContext> {
    let rooms = &services.rooms;
    let joined = rooms
        .members
        .iter_members(room_id, Some(MembershipState::Join))?;
    let own = services.globals.server_name();
    let mut locals = Vec::new();
    for (user_id, _) in &joined {
        if user_id.server_name() != own {
            continue;
        }
        let display_name = rooms
            .current_state_pdu(room_id, &StateEventType::RoomMember, user_id.as_str())?
            .and_then(|member| {
                member
                    .content_value()
                    .get("displayname")
                    .and_then(Value::as_str)
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| user_id.localpart().to_owned());
        locals.push((user_id.clone(), display_name));
    }
    Ok(RoomContext {
        member_count: UInt::try_from(joined.len()).unwrap_or(UInt::MAX),
        locals,
        power_levels: power_levels(services, room_id)?,
    })
}

/// The room's power levels as push conditions read them (`None` if the room's version is
/// unknown here, which makes `sender_notification_permission` never match).
fn power_levels(
    services: &Services,
    room_id: &RoomId,
) -> Result<Option<PushConditionPowerLevelsCtx>> {
    let rooms = &services.rooms;
    let Ok((_, version)) = rooms.room_version(room_id) else {
        return Ok(None);
    };
    let Some(rules) = version.rules() else {
        return Ok(None);
    };
    let creators = crate::service::rooms::power::creators(services, room_id)?;
    let content = rooms
        .current_state_pdu(room_id, &StateEventType::RoomPowerLevels, "")?
        .and_then(|pdu| {
            serde_json::from_str::<RoomPowerLevelsEventContent>(pdu.content.get()).ok()
        });
    let levels = RoomPowerLevels::new(
        RoomPowerLevelsSource::from(content),
        &rules.authorization,
        creators,
    );
    Ok(Some(levels.into()))
}

impl Push {
    fn room_prefix(user_id: &UserId, room_id: &RoomId) -> Vec<u8> {
        key::prefix(&[user_id.as_bytes(), room_id.as_bytes()])
    }
}
