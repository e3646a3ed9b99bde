//! The registered steps of the event pipeline (`pipeline::commit`): the index writers, in the
//! event's batch, and the effects run once it is written. Each is one small function taking the
//! commit context; adding an index or an effect (the appservice queue, call history) is one more
//! entry in one of the lists below, each marked with whether it runs for history too.

use ruma::{events::TimelineEventType, OwnedServerName, RoomId, UserId};
use serde_json::Value;

use super::{
    pipeline::{CommitContext, Mode, SendTo},
    read,
};
use crate::{
    error::Result,
    service::{device_lists, notify::Topic, rooms::pdu::Pdu, Services},
    store::{key, Batch},
};

/// One registered step: what it runs and whether it runs for history too.
pub(super) struct Step<F> {
    /// Whether it runs for backfilled history as well as for live events.
    history: bool,
    pub(super) run: F,
}

impl<F> Step<F> {
    /// A step for live events only: it concerns the room's present.
    const fn live(run: F) -> Self {
        Self {
            history: false,
            run,
        }
    }

    /// A step for every event, history included.
    const fn always(run: F) -> Self {
        Self { history: true, run }
    }

    pub(super) fn runs_in(&self, mode: Mode) -> bool {
        mode == Mode::Live || self.history
    }
}

type Index = fn(&CommitContext<'_>, &mut Batch) -> Result<()>;
type AtCount = fn(&CommitContext<'_>, u64, &mut Batch) -> Result<()>;
type Effect = fn(&CommitContext<'_>);

/// Index writers that do not need the stream position, or that leave it to
/// `Batch::insert_at_count`: they run before the global commit lock is taken.
pub(super) const INDEXES: &[Step<Index>] = &[
    Step::always(no_longer_outlier),
    Step::live(transaction_id),
    Step::live(room_version),
    Step::always(backward_extremities),
    Step::live(forward_extremities),
    Step::always(redaction),
    Step::always(search),
    Step::always(relations),
    Step::always(timestamps),
    Step::live(push_actions),
    Step::live(|ctx, batch| {
        ctx.services
            .calls
            .index(ctx.services, ctx.room_id, ctx.pdu, batch)
    }),
    Step::live(|ctx, batch| {
        ctx.services
            .stories
            .index_in_batch(ctx.services, ctx.room_id, ctx.pdu, batch)
    }),
];

/// Writers that need the stream position, under the global commit lock (and the sliding-sync
/// bump stamps, which must be noted before the position is published).
pub(super) const AT_COUNT: &[Step<AtCount>] = &[
    Step::live(device_lists),
    Step::live(members),
    Step::live(outgoing_queue),
    Step::live(|ctx, count, batch| {
        ctx.services
            .appservices
            .queue_in_batch(ctx.services, ctx.room_id, ctx.pdu, count, batch)
    }),
    Step::always(count_event),
    Step::live(|ctx, count, _| {
        let bumps = &ctx.services.sliding.bumps;
        bumps.note_event(ctx.shortroomid, count, &ctx.pdu.kind);
        Ok(())
    }),
];

/// Counts the event for `server stats` (`service::stats`), under the commit lock that serialises
/// those counters.
fn count_event(ctx: &CommitContext<'_>, _count: u64, batch: &mut Batch) -> Result<()> {
    let local = ctx.pdu.sender.server_name() == ctx.services.globals.server_name();
    let message = ctx.mode == Mode::Live
        && matches!(
            ctx.pdu.kind,
            TimelineEventType::RoomMessage | TimelineEventType::RoomEncrypted
        );
    let stats = &ctx.services.stats;
    stats.count_event_in_batch(local, message, &ctx.destinations, batch)
}

/// The effects after the batch is written, in this order.
pub(super) const EFFECTS: &[Step<Effect>] = &[
    Step::live(forget_room_version),
    Step::always(forget_redacted),
    Step::live(forget_room_servers),
    Step::live(wake_sync),
    Step::live(member_effects),
    Step::live(wake_federation_sender),
    Step::live(wake_push_sender),
    Step::live(|ctx| ctx.services.appservices.wake_all()),
    Step::live(|ctx| ctx.services.admin.spot(ctx.room_id, ctx.pdu)),
    Step::live(cancel_overwritten_delayed_state),
    // History too: a backfilled redaction rewrites a live story.
    Step::always(|ctx| {
        let stories = &ctx.services.stories;
        for pdu in ctx.with_resolved() {
            stories.after_commit(ctx.room_id, pdu);
        }
    }),
];

/// Another user's state event cancels the delayed events that would overwrite it (MSC4140).
fn cancel_overwritten_delayed_state(ctx: &CommitContext<'_>) {
    let delayed = &ctx.services.delayed_events;
    if let Err(error) = delayed.cancel_overwritten(ctx.room_id, ctx.pdu) {
        tracing::error!(%error, "cancelling overwritten delayed state events");
    }
}

/// The servers a live event is queued for.
pub(super) fn destinations(
    services: &Services,
    room_id: &RoomId,
    pdu: &Pdu,
    send_to: SendTo<'_>,
) -> Result<Vec<OwnedServerName>> {
    let SendTo::RoomExcept(origin) = send_to else {
        return Ok(Vec::new());
    };
    let own_server = services.globals.server_name();
    let mut servers = services
        .rooms
        .members
        .servers_in_room_except(room_id, own_server)?;
    servers.retain(|server| Some(server.as_ref()) != origin);
    // An invite or a kick reaches the target's server even when none of its users is joined.
    if let Some(target) = member_target(pdu) {
        let server = target.server_name();
        if server != own_server
            && Some(server) != origin
            && !servers.iter().any(|known| known == server)
        {
            servers.push(server.to_owned());
        }
    }
    Ok(servers)
}

/// The user a member event is about.
fn member_target(pdu: &Pdu) -> Option<&UserId> {
    match (&pdu.kind, &pdu.state_key) {
        (TimelineEventType::RoomMember, Some(target)) => <&UserId>::try_from(target.as_str()).ok(),
        _ => None,
    }
}

fn no_longer_outlier(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    let timeline = &ctx.services.rooms.timeline;
    batch.remove(&timeline.eventid_outlierpdu, ctx.pdu.event_id.as_bytes());
    Ok(())
}

fn transaction_id(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    let Some((device, txn_id)) = ctx.transaction else {
        return Ok(());
    };
    let txn_key = key::join(&[
        ctx.pdu.sender.as_bytes(),
        device.as_bytes(),
        ctx.room_id.as_bytes(),
        txn_id.as_bytes(),
    ]);
    let timeline = &ctx.services.rooms.timeline;
    batch.insert(
        &timeline.userdevicetxnid_eventid,
        &txn_key,
        ctx.pdu.event_id.as_bytes(),
    );
    Ok(())
}

fn room_version(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    if ctx.pdu.kind != TimelineEventType::RoomCreate {
        return Ok(());
    }
    let version = ctx
        .pdu
        .content_value()
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1")
        .to_owned();
    let timeline = &ctx.services.rooms.timeline;
    batch.insert(
        &timeline.roomid_info,
        &key::u64_bytes(ctx.shortroomid),
        version.as_bytes(),
    );
    Ok(())
}

fn backward_extremities(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    let timeline = &ctx.services.rooms.timeline;
    timeline.note_backward_extremities(ctx.shortroomid, ctx.pdu, batch)
}

/// The room's forward extremities: this event replaces the ones it references. The first event
/// after a gap is marked as such (`gaps.rs`).
fn forward_extremities(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    let timeline = &ctx.services.rooms.timeline;
    let mut extremities = timeline.extremities(ctx.shortroomid)?;
    let had_extremities = !extremities.is_empty();
    timeline.note_gap(
        ctx.services,
        ctx.shortroomid,
        ctx.pdu,
        had_extremities,
        batch,
    )?;
    extremities.retain(|extremity| !ctx.pdu.prev_events.contains(extremity));
    extremities.push(ctx.pdu.event_id.clone());
    timeline.set_extremities(ctx.shortroomid, &extremities, batch);
    Ok(())
}

fn redaction(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    match redacted(ctx.pdu) {
        Some(target) => read::redact_in_batch(ctx.services, ctx.room_id, &target, ctx.pdu, batch),
        None => Ok(()),
    }
}

/// The event a redaction redacts.
fn redacted(pdu: &Pdu) -> Option<ruma::OwnedEventId> {
    (pdu.kind == TimelineEventType::RoomRedaction)
        .then(|| pdu.redacts_id())
        .flatten()
}

fn search(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    let search = &ctx.services.rooms.search;
    search.index_in_batch((ctx.shortroomid, ctx.shorteventid), ctx.pdu, batch);
    Ok(())
}

fn relations(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    let backfilled = ctx.mode == Mode::History;
    let relations = &ctx.services.rooms.relations;
    relations.index_in_batch(ctx.shortroomid, ctx.pdu, backfilled, batch)
}

fn timestamps(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    let timestamps = &ctx.services.rooms.timestamps;
    timestamps.index_at_count(ctx.shortroomid, ctx.pdu, batch);
    Ok(())
}

fn push_actions(ctx: &CommitContext<'_>, batch: &mut Batch) -> Result<()> {
    ctx.services.push.write_in_batch(&ctx.push, batch)
}

fn device_lists(ctx: &CommitContext<'_>, count: u64, batch: &mut Batch) -> Result<()> {
    for pdu in ctx.with_resolved() {
        if pdu.kind == TimelineEventType::RoomMember {
            let services = ctx.services;
            device_lists::membership::member_event_in_batch(
                services,
                batch,
                count,
                ctx.room_id,
                pdu,
            )?;
        }
    }
    Ok(())
}

/// Indexes the event's membership, and the memberships that state resolution changed with it.
fn members(ctx: &CommitContext<'_>, count: u64, batch: &mut Batch) -> Result<()> {
    let members = &ctx.services.rooms.members;
    for pdu in ctx.with_resolved() {
        if pdu.kind == TimelineEventType::RoomMember {
            members.update_in_batch(ctx.room_id, pdu, count, batch)?;
        }
    }
    Ok(())
}

fn outgoing_queue(ctx: &CommitContext<'_>, count: u64, batch: &mut Batch) -> Result<()> {
    let sending = &ctx.services.sending;
    sending.queue_pdu_in_batch(batch, &ctx.destinations, count, &ctx.pdu.event_id);
    Ok(())
}

fn forget_room_version(ctx: &CommitContext<'_>) {
    if ctx.pdu.kind == TimelineEventType::RoomCreate {
        ctx.services.rooms.timeline.forget_version(ctx.shortroomid);
    }
}

/// A redaction rewrote its target in the batch; the cached copy is dropped only now that the
/// new form is stored, so that no reader can cache the old one again.
fn forget_redacted(ctx: &CommitContext<'_>) {
    if let Some(target) = redacted(ctx.pdu) {
        ctx.services.rooms.timeline.pdu_cache.lock().remove(&target);
    }
}

fn forget_room_servers(ctx: &CommitContext<'_>) {
    let kinds = ctx.with_resolved();
    if kinds
        .map(|pdu| &pdu.kind)
        .any(|kind| *kind == TimelineEventType::RoomMember)
    {
        ctx.services.rooms.members.invalidate_servers(ctx.room_id);
    }
}

fn wake_sync(ctx: &CommitContext<'_>) {
    let notifier = &ctx.services.notifier;
    notifier.wake(Topic::Room(ctx.room_id.to_string()));
}

/// A member event wakes its target's `/sync`, brings a local joiner's push rules over from the
/// room this one replaces, and wakes the sender for the device lists it queued. A membership
/// that state resolution changed with the event does the same, but for the push rules.
fn member_effects(ctx: &CommitContext<'_>) {
    let services = ctx.services;
    for pdu in ctx.with_resolved() {
        let (TimelineEventType::RoomMember, Some(target)) = (&pdu.kind, &pdu.state_key) else {
            continue;
        };
        services.notifier.wake(Topic::User(target.clone()));
        device_lists::membership::after_member_event(services, ctx.room_id, pdu);
    }
    if let (TimelineEventType::RoomMember, Some(target)) = (&ctx.pdu.kind, &ctx.pdu.state_key) {
        carry_over_push_rules(services, ctx.room_id, target, ctx.pdu);
    }
}

fn wake_federation_sender(ctx: &CommitContext<'_>) {
    ctx.services.sending.wake(&ctx.destinations);
}

fn wake_push_sender(ctx: &CommitContext<'_>) {
    ctx.services.push.wake_sender(&ctx.push);
}

/// After a local user's join: their push rules for the room this one replaces follow them here
/// (`Push::carry_over_on_join`). The join is already committed, so a failure is only logged.
fn carry_over_push_rules(services: &Services, room_id: &RoomId, target: &str, pdu: &Pdu) {
    let Ok(user) = <&UserId>::try_from(target) else {
        return;
    };
    if user.server_name() != services.globals.server_name()
        || pdu.content_value()["membership"] != "join"
    {
        return;
    }
    if let Err(error) = services.push.carry_over_on_join(services, room_id, user) {
        tracing::warn!(%error, %user, "carrying push rules over to an upgraded room failed");
    }
}
