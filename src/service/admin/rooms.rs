//! The `rooms` command group: the rooms this server knows, their members, deleting and
//! blocking them, purging old history, the directory and local aliases.

use clap::Subcommand;
use ruma::{events::room::member::MembershipState, OwnedRoomAliasId, OwnedRoomId, RoomId};

use super::{reply::Reply, room::server_user};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            purge::{self, HistoryPurge},
            shutdown::{self, DeleteRoom},
        },
        Services,
    },
    util,
};

/// A room is named by ID (`!abc:example.org`) or by a local alias (`#room:example.org`).
#[derive(Subcommand, Debug)]
pub enum RoomsCommand {
    /// Lists the rooms this server knows, with members, local members, events and version.
    List,
    /// Shows one room.
    Info { room: String },
    /// Lists a room's members and their membership.
    Members { room: String },
    /// Makes every local user leave, blocks the room, takes it out of the directory and removes
    /// its local aliases; with --purge also drops its events from the database.
    Delete {
        room: String,
        #[arg(long)]
        purge: bool,
    },
    /// Deletes a room's events sent before a time (ms since the epoch, or an age such as
    /// `30d`, `12h`, `15m`), except state events and the newest event.
    PurgeHistory { room: String, before: String },
    /// Blocks a room (known here or not): local users cannot join it, servers cannot join it
    /// through this one.
    Block { room: String },
    /// Unblocks a room.
    Unblock { room: String },
    /// Publishes a room in this server's room directory.
    Publish { room: String },
    /// Takes a room out of this server's room directory.
    Unpublish { room: String },
    /// Local aliases.
    #[command(subcommand)]
    Alias(AliasCommand),
}

#[derive(Subcommand, Debug)]
pub enum AliasCommand {
    /// Points a new local alias at a room.
    Set { alias: String, room: String },
    /// Removes a local alias.
    Remove { alias: String },
}

/// Runs one `rooms` command.
pub async fn run(services: &Services, command: RoomsCommand) -> Result<Reply> {
    match command {
        RoomsCommand::List => list(services),
        RoomsCommand::Info { room } => info(services, &known_room(services, &room)?),
        RoomsCommand::Members { room } => members(services, &known_room(services, &room)?),
        RoomsCommand::Delete { room, purge } => {
            delete(services, &room_id(services, &room)?, purge).await
        }
        RoomsCommand::PurgeHistory { room, before } => {
            let room_id = known_room(services, &room)?;
            let before_ts = parse_before(&before, util::now_millis())?;
            let purge = HistoryPurge {
                before_ts,
                keep_from: None,
            };
            let deleted = purge::purge_history(services, &room_id, purge)?;
            Ok(Reply::message(format!(
                "deleted {deleted} events of {room_id} sent before {}",
                super::reply::format_timestamp(before_ts)
            )))
        }
        RoomsCommand::Block { room } => set_blocked(services, &room, true),
        RoomsCommand::Unblock { room } => set_blocked(services, &room, false),
        RoomsCommand::Publish { room } => set_public(services, &room, true),
        RoomsCommand::Unpublish { room } => set_public(services, &room, false),
        RoomsCommand::Alias(command) => alias(services, command),
    }
}

/// A room ID, or the room a local alias points to.
fn room_id(services: &Services, name: &str) -> Result<OwnedRoomId> {
    super::names::resolve_room(services, name)
}

/// [`room_id`] of a room this server has state of.
fn known_room(services: &Services, name: &str) -> Result<OwnedRoomId> {
    let room_id = room_id(services, name)?;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found(format!(
            "room {room_id} is unknown to this server"
        )));
    }
    Ok(room_id)
}

/// A valid alias of this server.
fn local_alias(services: &Services, name: &str) -> Result<OwnedRoomAliasId> {
    let alias = OwnedRoomAliasId::try_from(name)
        .map_err(|_| Error::invalid_param(format!("invalid alias {name}")))?;
    if alias.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param(format!(
            "{alias} is not an alias of this server"
        )));
    }
    Ok(alias)
}

/// A time given as ms since the epoch, or as an age (`30d`, `12h`, `15m`, `10s`) before `now`.
pub(super) fn parse_before(text: &str, now: u64) -> Result<u64> {
    if let Ok(millis) = text.parse::<u64>() {
        return Ok(millis);
    }
    let invalid = || {
        Error::invalid_param(format!(
            "invalid time {text}: give ms since the epoch or an age such as 30d, 12h, 15m, 10s"
        ))
    };
    let split = text.len().checked_sub(1).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return Err(invalid()),
    };
    Ok(now.saturating_sub(number.saturating_mul(unit_ms)))
}

/// Counts the events of a room the timeline holds.
fn count_events(services: &Services, room_id: &RoomId) -> Result<usize> {
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(0);
    };
    let mut count = 0;
    for entry in services.rooms.timeline.iter_before(shortroomid, u64::MAX) {
        entry?;
        count += 1;
    }
    Ok(count)
}

/// A room's joined members, and how many of them are local.
fn joined_counts(services: &Services, room_id: &RoomId) -> Result<(usize, usize)> {
    let joined = services
        .rooms
        .members
        .iter_members(room_id, Some(MembershipState::Join))?;
    let server_name = services.globals.server_name();
    let local = joined
        .iter()
        .filter(|(user_id, _)| user_id.server_name() == server_name)
        .count();
    Ok((joined.len(), local))
}

fn name_of(services: &Services, room_id: &RoomId) -> Result<String> {
    let name = services
        .rooms
        .current_state_pdu(room_id, &ruma::events::StateEventType::RoomName, "")?
        .and_then(|pdu| pdu.content_value()["name"].as_str().map(str::to_owned));
    Ok(name.unwrap_or_default())
}

fn list(services: &Services) -> Result<Reply> {
    let mut rows = Vec::new();
    for room_id in services.rooms.short.iter_room_ids() {
        let room_id = room_id?;
        if !services.rooms.exists(&room_id)? {
            continue;
        }
        let (joined, local) = joined_counts(services, &room_id)?;
        let (_, version) = services.rooms.room_version(&room_id)?;
        rows.push(vec![
            room_id.to_string(),
            name_of(services, &room_id)?,
            joined.to_string(),
            local.to_string(),
            count_events(services, &room_id)?.to_string(),
            version.to_string(),
        ]);
    }
    let headers = [
        "room",
        "name",
        "members",
        "local members",
        "events",
        "version",
    ];
    Ok(Reply::table(
        &format!("{} rooms", rows.len()),
        &headers,
        &rows,
    ))
}

fn info(services: &Services, room_id: &RoomId) -> Result<Reply> {
    let (joined, local) = joined_counts(services, room_id)?;
    let (_, version) = services.rooms.room_version(room_id)?;
    let rooms = &services.rooms;
    let aliases: Vec<String> = rooms
        .alias
        .iter_room_aliases(room_id)?
        .iter()
        .map(ToString::to_string)
        .collect();
    let yes_no = |value: bool| if value { "yes" } else { "no" }.to_owned();
    let rows = [
        ("name", name_of(services, room_id)?),
        ("version", version.to_string()),
        ("members", joined.to_string()),
        ("local members", local.to_string()),
        ("events", count_events(services, room_id)?.to_string()),
        ("local aliases", aliases.join(", ")),
        ("published", yes_no(rooms.alias.is_public(room_id)?)),
        (
            "blocked",
            yes_no(services.admin.blocks.is_room_blocked(room_id)?),
        ),
    ]
    .map(|(field, value)| vec![field.to_owned(), value]);
    Ok(Reply::table(room_id.as_str(), &["field", "value"], &rows))
}

fn members(services: &Services, room_id: &RoomId) -> Result<Reply> {
    let rows: Vec<Vec<String>> = services
        .rooms
        .members
        .iter_members(room_id, None)?
        .into_iter()
        .map(|(user_id, membership)| vec![user_id.to_string(), membership.to_string()])
        .collect();
    let title = format!("{} members of {room_id}", rows.len());
    Ok(Reply::table(&title, &["user", "membership"], &rows))
}

async fn delete(services: &Services, room_id: &RoomId, purge: bool) -> Result<Reply> {
    let request = DeleteRoom {
        by: server_user(services)?,
        block: true,
        purge,
        new_room: None,
    };
    let outcome = shutdown::delete_room(services, room_id, &request).await?;
    let names = |users: &[ruma::OwnedUserId]| {
        users
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut message = format!(
        "deleted and blocked {room_id}: {} local users left ({})",
        outcome.kicked_users.len(),
        names(&outcome.kicked_users)
    );
    if !outcome.failed_to_kick_users.is_empty() {
        message.push_str(&format!(
            "; could not remove {}",
            names(&outcome.failed_to_kick_users)
        ));
    }
    let aliases: Vec<String> = outcome
        .local_aliases
        .iter()
        .map(ToString::to_string)
        .collect();
    message.push_str(&format!("; removed aliases: {}", aliases.join(", ")));
    if purge {
        message.push_str(&format!("; purged {} events", outcome.purged_events));
    }
    Ok(Reply::message(message))
}

fn set_blocked(services: &Services, room: &str, blocked: bool) -> Result<Reply> {
    let room_id = room_id(services, room)?;
    if blocked && services.admin.get_room().as_ref() == Some(&room_id) {
        return Err(Error::forbidden("the admin room cannot be blocked"));
    }
    let blocks = &services.admin.blocks;
    if !blocked && !blocks.is_room_blocked(&room_id)? {
        return Err(Error::invalid_param(format!("{room_id} is not blocked")));
    }
    blocks.set_room_blocked(&room_id, &server_user(services)?, blocked)?;
    let verb = if blocked { "blocked" } else { "unblocked" };
    Ok(Reply::message(format!("{verb} {room_id}")))
}

fn set_public(services: &Services, room: &str, public: bool) -> Result<Reply> {
    let room_id = known_room(services, room)?;
    services.rooms.alias.set_public(&room_id, public)?;
    let verb = if public { "published" } else { "took out of" };
    Ok(Reply::message(format!("{verb} the directory: {room_id}")))
}

fn alias(services: &Services, command: AliasCommand) -> Result<Reply> {
    let aliases = &services.rooms.alias;
    match command {
        AliasCommand::Set { alias, room } => {
            let alias = local_alias(services, &alias)?;
            let room_id = known_room(services, &room)?;
            if let Some((taken_by, _)) = aliases.get(&alias)? {
                return Err(Error::matrix(
                    ruma::api::error::ErrorKind::RoomInUse,
                    format!("{alias} already points to {taken_by}"),
                ));
            }
            aliases.set(&alias, &room_id, &server_user(services)?)?;
            Ok(Reply::message(format!("{alias} now points to {room_id}")))
        }
        AliasCommand::Remove { alias } => {
            let alias = local_alias(services, &alias)?;
            let (room_id, _) = aliases
                .get(&alias)?
                .ok_or_else(|| Error::not_found(format!("alias {alias} not found")))?;
            aliases.remove(&alias, &room_id)?;
            Ok(Reply::message(format!(
                "removed {alias} (it pointed to {room_id})"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_before;

    #[test]
    fn times_are_epoch_ms_or_ages() {
        let now = 1_000_000_000;
        for (text, expected) in [
            ("123", Some(123)),
            ("1d", Some(now - 86_400_000)),
            ("2h", Some(now - 7_200_000)),
            ("15m", Some(now - 900_000)),
            ("10s", Some(now - 10_000)),
            ("", None),
            ("d", None),
            ("5w", None),
            ("-1", None),
        ] {
            assert_eq!(parse_before(text, now).ok(), expected, "{text}");
        }
    }
}
