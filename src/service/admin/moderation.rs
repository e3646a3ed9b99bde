//! The `users` commands that moderate an account: lock and suspend (spec v1.18, "Account
//! moderation"), rate-limit overrides, joining and leaving rooms for a user, and redacting
//! everything a user sent. Events go through the normal local-event path (`create_and_commit`).

use clap::Subcommand;
use ruma::{
    events::room::member::MembershipState, OwnedEventId, OwnedRoomAliasId, OwnedRoomId,
    OwnedServerName, OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Value};

use super::{
    account_flags::RateOverride,
    names::{local_user, resolve_room, user_id_of},
    reply::Reply,
    room::server_user,
};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            alias,
            handshake::{self, Handshake},
            membership::{add_profile, set_membership},
            power::PowerLevels,
            timeline::{create_and_commit, PduBuilder},
        },
        Services,
    },
};

/// The moderation commands of the `users` group.
#[derive(Subcommand, Debug)]
pub enum ModerationCommand {
    /// Locks an account: every request but logging out answers M_USER_LOCKED; sessions stay.
    Lock { user: String },
    /// Lifts a lock.
    Unlock { user: String },
    /// Suspends an account: it can read, leave and redact its own events, but not join,
    /// invite, send or change its profile (M_USER_SUSPENDED).
    Suspend { user: String },
    /// Lifts a suspension.
    Unsuspend { user: String },
    /// Joins a local user to a room: one this server is in (invited first by a local member who
    /// may invite, when the room needs an invite), or over federation one it is not in yet.
    ForceJoin {
        user: String,
        /// A room ID or alias (an alias of another server is asked of that server).
        room: String,
        /// A server in the room to join through, for a room this server is not in (repeatable).
        #[arg(long)]
        via: Vec<String>,
    },
    /// Makes a local user leave a room (or reject an invite).
    ForceLeave {
        user: String,
        /// A room ID or alias.
        room: String,
    },
    /// Redacts every message event a local user sent, in every room they were in: as the user
    /// while joined, otherwise as a local member allowed to redact.
    RedactAllEventsOf {
        user: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Shows or sets a user's rate-limit override: a factor (2 doubles every per-user rate and
    /// burst), `off` for no limits, or `default` to remove the override.
    Ratelimit {
        user: String,
        setting: Option<String>,
    },
}

/// Runs one moderation command.
pub async fn run(services: &Services, command: ModerationCommand) -> Result<Reply> {
    match command {
        ModerationCommand::Lock { user } => set_flag(services, &user, Flag::Locked, true),
        ModerationCommand::Unlock { user } => set_flag(services, &user, Flag::Locked, false),
        ModerationCommand::Suspend { user } => set_flag(services, &user, Flag::Suspended, true),
        ModerationCommand::Unsuspend { user } => set_flag(services, &user, Flag::Suspended, false),
        ModerationCommand::ForceJoin { user, room, via } => {
            let user_id = local_user(services, &user)?;
            let (room_id, servers) = room_and_servers(services, &room, &via).await?;
            force_join(services, &user_id, &room_id, servers).await?;
            Ok(Reply::message(format!("{user_id} joined {room_id}")))
        }
        ModerationCommand::ForceLeave { user, room } => {
            let user_id = local_user(services, &user)?;
            let room_id = resolve_room(services, &room)?;
            force_leave(services, &user_id, &room_id).await?;
            Ok(Reply::message(format!("{user_id} left {room_id}")))
        }
        ModerationCommand::RedactAllEventsOf { user, reason } => {
            let user_id = user_id_of(services, &user)?;
            let done = redact_all(services, &user_id, reason.as_deref()).await?;
            let mut message = format!(
                "redacted {} events of {user_id} in {} rooms",
                done.redacted, done.rooms
            );
            if !done.skipped.is_empty() {
                message.push_str(&format!(
                    "; no local member may redact in {}",
                    done.skipped.join(", ")
                ));
            }
            Ok(Reply::message(message))
        }
        ModerationCommand::Ratelimit { user, setting } => {
            let user_id = local_user(services, &user)?;
            rate_limit(services, &user_id, setting.as_deref())
        }
    }
}

#[derive(Clone, Copy)]
enum Flag {
    Locked,
    Suspended,
}

fn set_flag(services: &Services, user: &str, flag: Flag, on: bool) -> Result<Reply> {
    let user_id = local_user(services, user)?;
    if on && services.users.is_admin(&user_id)? {
        return Err(Error::forbidden(format!(
            "{user_id} is a server admin: remove-admin first"
        )));
    }
    let (changed, word) = match flag {
        Flag::Locked => (services.admin.flags.set_locked(&user_id, on)?, "locked"),
        Flag::Suspended => (
            services.admin.flags.set_suspended(&user_id, on)?,
            "suspended",
        ),
    };
    let not = if on { "" } else { "not " };
    if !changed {
        return Err(Error::invalid_param(format!(
            "{user_id} is already {not}{word}"
        )));
    }
    Ok(Reply::message(format!("{user_id} is now {not}{word}")))
}

/// A local member joined to the room whose power reaches `action` (`invite`, `redact`), the
/// server user first when it is one.
fn local_member_who_may(
    services: &Services,
    room_id: &RoomId,
    action: &str,
) -> Result<Option<OwnedUserId>> {
    let levels = PowerLevels::load(services, room_id)?;
    let needed = levels.action_level(action);
    let server_user = server_user(services)?;
    let mut members: Vec<OwnedUserId> = services
        .rooms
        .members
        .iter_members(room_id, Some(MembershipState::Join))?
        .into_iter()
        .map(|(user_id, _)| user_id)
        .filter(|user_id| user_id.server_name() == services.globals.server_name())
        .filter(|user_id| levels.user_level(user_id) >= needed)
        .collect();
    members.sort_by_key(|user_id| *user_id != server_user);
    Ok(members.into_iter().next())
}

/// A room named by ID or alias with the servers to join it through: `--via`, then those another
/// server's alias names.
async fn room_and_servers(
    services: &Services,
    room: &str,
    via: &[String],
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    let mut servers = via
        .iter()
        .map(|server| {
            OwnedServerName::try_from(server.as_str())
                .map_err(|_| Error::invalid_param(format!("invalid server name {server}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let remote_alias = OwnedRoomAliasId::try_from(room)
        .ok()
        .filter(|alias| alias.server_name() != services.globals.server_name());
    let room_id = match remote_alias {
        Some(alias) => {
            let (room_id, alias_servers) = alias::resolve_remote(services, &alias).await?;
            servers.extend(alias_servers);
            room_id
        }
        None => resolve_room(services, room)?,
    };
    Ok((room_id, servers))
}

/// Joins a local user to a room; when the room refuses the join (it needs an invite), a local
/// member who may invite invites the user first. A room this server is not in is joined over
/// federation (`make_join`/`send_join`) through `servers` or the usual candidates.
async fn force_join(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    servers: Vec<OwnedServerName>,
) -> Result<()> {
    if !handshake::is_resident(services, room_id)? {
        return force_join_remote(services, user_id, room_id, servers).await;
    }
    if services.rooms.members.is_joined(room_id, user_id)? {
        return Err(Error::invalid_param(format!(
            "{user_id} is already joined to {room_id}"
        )));
    }
    match set_membership(services, room_id, user_id, user_id, "join", None).await {
        Ok(_) => {}
        Err(Error::Matrix {
            kind: ruma::api::error::ErrorKind::Forbidden,
            ..
        }) => {
            let inviter = local_member_who_may(services, room_id, "invite")?.ok_or_else(|| {
                Error::forbidden(format!("no local member of {room_id} may invite {user_id}"))
            })?;
            let reason = Some("joined by a server admin");
            set_membership(services, room_id, &inviter, user_id, "invite", reason).await?;
            set_membership(services, room_id, user_id, user_id, "join", None).await?;
        }
        Err(error) => return Err(error),
    }
    tracing::info!(user = %user_id, %room_id, "force-joined by an admin");
    Ok(())
}

/// Joins a local user to a room this server is not in through another server of it.
async fn force_join_remote(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    servers: Vec<OwnedServerName>,
) -> Result<()> {
    services.admin.blocks.check_room(room_id)?;
    let candidates = handshake::candidate_servers(services, room_id, user_id, servers)?;
    let own = services.globals.server_name();
    if candidates.iter().all(|server| server == own) {
        return Err(Error::not_found(format!(
            "this server is not in room {room_id}: name a server in it with --via"
        )));
    }
    let mut extra = json!({});
    add_profile(services, user_id, &mut extra)?;
    Handshake::Join
        .through(services, room_id, user_id, &candidates, extra)
        .await?;
    tracing::info!(user = %user_id, %room_id, "force-joined over federation by an admin");
    Ok(())
}

/// Makes a local user leave a room they are joined, invited to or knocking on.
async fn force_leave(services: &Services, user_id: &UserId, room_id: &RoomId) -> Result<()> {
    let membership = services.rooms.members.get_membership(room_id, user_id)?;
    if !matches!(
        membership,
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
    ) {
        return Err(Error::invalid_param(format!(
            "{user_id} is not in room {room_id}"
        )));
    }
    set_membership(
        services,
        room_id,
        user_id,
        user_id,
        "leave",
        Some("removed by a server admin"),
    )
    .await?;
    tracing::info!(user = %user_id, %room_id, "force-left by an admin");
    Ok(())
}

/// What `redact-all-events-of` did.
struct Redacted {
    redacted: usize,
    rooms: usize,
    /// Rooms with events to redact where nobody local may redact them.
    skipped: Vec<String>,
}

/// Redacts every message (non-state) event of `user_id` that is not redacted yet, in every
/// room the user has a membership in: as the user while joined, otherwise as a local member
/// whose power allows redacting others' events.
async fn redact_all(
    services: &Services,
    user_id: &UserId,
    reason: Option<&str>,
) -> Result<Redacted> {
    let mut done = Redacted {
        redacted: 0,
        rooms: 0,
        skipped: Vec::new(),
    };
    let mut rooms = services.rooms.members.iter_rooms(user_id)?;
    rooms.extend(services.rooms.members.iter_forgotten(user_id)?);
    rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
    rooms.dedup_by(|a, b| a.room_id == b.room_id);
    for room in rooms {
        let events = events_to_redact(services, &room.room_id, user_id)?;
        if events.is_empty() {
            continue;
        }
        let redactor = if room.membership == MembershipState::Join {
            Some(user_id.to_owned())
        } else {
            local_member_who_may(services, &room.room_id, "redact")?
        };
        let Some(redactor) = redactor else {
            done.skipped.push(room.room_id.to_string());
            continue;
        };
        for event_id in events {
            let mut content = json!({ "redacts": event_id });
            if let Some(reason) = reason {
                content["reason"] = json!(reason);
            }
            let builder = PduBuilder {
                kind: "m.room.redaction".into(),
                content,
                state_key: None,
                redacts: Some(event_id),
                origin_server_ts: None,
            };
            create_and_commit(services, &room.room_id, &redactor, builder, None).await?;
            done.redacted += 1;
        }
        done.rooms += 1;
    }
    tracing::info!(user = %user_id, redacted = done.redacted, "redacted a user's events");
    Ok(done)
}

/// The user's message events in a room that are neither redactions nor redacted.
fn events_to_redact(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Vec<OwnedEventId>> {
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(Vec::new());
    };
    let mut events = Vec::new();
    for entry in services.rooms.timeline.iter_before(shortroomid, u64::MAX) {
        let (_, pdu) = entry?;
        if pdu.sender != user_id
            || pdu.state_key.is_some()
            || pdu.kind.to_string() == "m.room.redaction"
            || pdu.rejected
        {
            continue;
        }
        let redacted = pdu
            .unsigned
            .as_deref()
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .is_some_and(|unsigned| unsigned.get("redacted_because").is_some());
        if !redacted {
            events.push(pdu.event_id);
        }
    }
    Ok(events)
}

/// Shows, sets or removes a user's rate-limit override.
fn rate_limit(services: &Services, user_id: &UserId, setting: Option<&str>) -> Result<Reply> {
    let describe = |rate: Option<RateOverride>| match rate {
        None => "the server's rate limits".to_owned(),
        Some(RateOverride::Unlimited) => "no rate limits".to_owned(),
        Some(RateOverride::Scaled { rate_factor, .. }) => {
            format!("the server's rate limits times {rate_factor}")
        }
    };
    let Some(setting) = setting else {
        let current = services.admin.flags.get_rate_override(user_id);
        return Ok(Reply::message(format!(
            "{user_id} has {}",
            describe(current)
        )));
    };
    let rate = match setting {
        "off" => Some(RateOverride::Unlimited),
        "default" => None,
        factor => {
            let factor: f64 = factor
                .parse()
                .ok()
                .filter(|factor: &f64| {
                    factor.is_finite() && *factor > 0.0 && *factor <= 1_000_000.0
                })
                .ok_or_else(|| {
                    Error::invalid_param(format!(
                    "invalid setting {factor}: a factor above 0 (at most 1000000), off or default"
                ))
                })?;
            Some(RateOverride::Scaled {
                rate_factor: factor,
                burst_factor: factor,
            })
        }
    };
    services.admin.flags.set_rate_override(user_id, rate)?;
    Ok(Reply::message(format!(
        "{user_id} now has {}",
        describe(rate)
    )))
}
