//! The `media` command group: one item's details, deleting media (by mxc URI, by event, by
//! uploader, cached remote media older than an age) and quarantine.

use clap::Subcommand;

use super::{
    reply::{format_timestamp, Reply},
    room::server_user,
    rooms::parse_before,
};
use crate::{
    error::{Error, Result},
    service::{
        media::moderation::{self, parse_mxc},
        Services,
    },
    util,
};

#[derive(Subcommand, Debug)]
pub enum MediaCommand {
    /// Shows one media item (`mxc://server/id`).
    Info { mxc: String },
    /// Deletes media.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// Serves an item as 404 to everyone but server admins, and never fetches it again.
    Quarantine { mxc: String },
    /// Lifts a quarantine.
    Unquarantine { mxc: String },
}

#[derive(Subcommand, Debug)]
pub enum DeleteCommand {
    /// One item, by its mxc URI.
    Mxc { mxc: String },
    /// The media an event names (its `url`, thumbnail, encrypted `file`).
    Event { event_id: String },
    /// Every upload of a local user.
    User { user: String },
    /// Other servers' media cached before a time (ms since the epoch, or an age: `30d`, `12h`).
    RemoteCache { older_than: String },
}

/// Runs one `media` command.
pub async fn run(services: &Services, command: MediaCommand) -> Result<Reply> {
    match command {
        MediaCommand::Info { mxc } => info(services, &mxc),
        MediaCommand::Delete(command) => delete(services, command).await,
        MediaCommand::Quarantine { mxc } => set_quarantine(services, &mxc, true),
        MediaCommand::Unquarantine { mxc } => set_quarantine(services, &mxc, false),
    }
}

fn info(services: &Services, mxc: &str) -> Result<Reply> {
    let (server, media_id) = parse_mxc(mxc)?;
    let record = services
        .media
        .get(&server, &media_id)?
        .ok_or_else(|| Error::not_found(format!("media {mxc} not found")))?;
    let quarantined = services
        .admin
        .blocks
        .is_media_quarantined(&server, &media_id)?;
    let rows = [
        ("content type", record.content_type.unwrap_or_default()),
        ("file name", record.filename.unwrap_or_default()),
        ("size", format!("{} bytes", record.size)),
        (
            "uploader",
            record
                .uploader
                .map_or_else(|| "(remote)".to_owned(), |user| user.to_string()),
        ),
        ("stored", format_timestamp(record.created_ts)),
        (
            "sha256",
            record
                .sha256
                .unwrap_or_else(|| "(not uploaded yet)".to_owned()),
        ),
        (
            "quarantined",
            if quarantined { "yes" } else { "no" }.to_owned(),
        ),
    ]
    .map(|(field, value)| vec![field.to_owned(), value]);
    Ok(Reply::table(mxc, &["field", "value"], &rows))
}

async fn delete(services: &Services, command: DeleteCommand) -> Result<Reply> {
    let deleted = match command {
        DeleteCommand::Mxc { mxc } => {
            let (server, media_id) = parse_mxc(&mxc)?;
            if !services.media.delete(&server, &media_id).await? {
                return Err(Error::not_found(format!("media {mxc} not found")));
            }
            1
        }
        DeleteCommand::Event { event_id } => {
            let event_id = ruma::OwnedEventId::try_from(event_id.as_str())
                .map_err(|_| Error::invalid_param(format!("invalid event ID {event_id}")))?;
            moderation::delete_by_event(services, &event_id)
                .await?
                .len()
        }
        DeleteCommand::User { user } => {
            let user_id = ruma::OwnedUserId::try_from(user.as_str())
                .map_err(|_| Error::invalid_param(format!("invalid user ID {user}")))?;
            if !services.users.exists(&user_id)? {
                return Err(Error::not_found(format!("user {user_id} does not exist")));
            }
            moderation::delete_by_uploader(services, &user_id)
                .await?
                .len()
        }
        DeleteCommand::RemoteCache { older_than } => {
            let before = parse_before(&older_than, util::now_millis())?;
            moderation::delete_remote_before(services, before).await?
        }
    };
    Ok(Reply::message(format!("deleted {deleted} media")))
}

fn set_quarantine(services: &Services, mxc: &str, quarantined: bool) -> Result<Reply> {
    let (server, media_id) = parse_mxc(mxc)?;
    let blocks = &services.admin.blocks;
    if !quarantined && !blocks.is_media_quarantined(&server, &media_id)? {
        return Err(Error::invalid_param(format!("{mxc} is not quarantined")));
    }
    blocks.set_media_quarantined(&server, &media_id, &server_user(services)?, quarantined)?;
    let verb = if quarantined {
        "quarantined"
    } else {
        "released"
    };
    Ok(Reply::message(format!("{verb} {mxc}")))
}
