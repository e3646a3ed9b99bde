//! The `server` command group: statistics, version and backups.

use clap::Subcommand;

use super::{reply::Reply, room::server_user};
use crate::{
    error::Result,
    service::{server_notices, Services},
};

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Users (total and active), rooms, events, messages today, media, federation peers,
    /// database size per tree, memory, uptime and version.
    Stats,
    /// The server's name and version.
    Version,
    /// Online backups of the database into `backup_path` (restored with `plait restore`).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Sends a server notice (in the user's server notices room) to one local user, or with
    /// --all to every active local account.
    Notice {
        /// Every active local account instead of one user.
        #[arg(long)]
        all: bool,
        /// The user then the message (`@bob:example.org Hello`), or with --all only the message.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        words: Vec<String>,
    },
    /// Stops the server gracefully: the listeners stop, the running requests and workers finish,
    /// the database is synced, and the process exits with status 0.
    Shutdown,
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Takes a backup now, while the server keeps serving.
    Create,
    /// The backups in `backup_path`, oldest first.
    List,
    /// Opens a backup read-only and reads every entry (checking every checksum).
    Verify {
        /// The backup's name, as `server backup list` shows it (backup-<unix ms>).
        name: String,
    },
}

/// Runs one `server` command.
pub async fn run(services: &Services, command: ServerCommand) -> Result<Reply> {
    match command {
        ServerCommand::Stats => stats(services),
        ServerCommand::Version => Ok(Reply::message(version(services))),
        ServerCommand::Backup(command) => backup(services, command).await,
        ServerCommand::Notice { all, words } => {
            let (user, message) = match (all, words.split_first()) {
                (false, Some((user, message))) => (Some(user.as_str()), message),
                _ => (None, words.as_slice()),
            };
            notice(services, user, &message.join(" ")).await
        }
        ServerCommand::Shutdown => {
            services.admin.request_shutdown();
            Ok(Reply::message("shutting down"))
        }
    }
}

/// Sends a server notice to one user, or to every active local account but the server's own
/// users.
async fn notice(services: &Services, user: Option<&str>, message: &str) -> Result<Reply> {
    if message.trim().is_empty() {
        return Err(crate::error::Error::invalid_param("the message is empty"));
    }
    let recipients = match user {
        Some(user) => vec![super::names::local_user(services, user)?],
        None => {
            let own = [
                server_user(services)?,
                server_notices::notices_user(services)?,
            ];
            let mut users = Vec::new();
            for user_id in services.users.iter_user_ids() {
                let user_id = user_id?;
                if !own.contains(&user_id) && !services.users.is_deactivated(&user_id)? {
                    users.push(user_id);
                }
            }
            users
        }
    };
    for user_id in &recipients {
        server_notices::send_text(services, user_id, message).await?;
    }
    Ok(Reply::message(match recipients.as_slice() {
        [one] => format!("sent a server notice to {one}"),
        many => format!("sent a server notice to {} users", many.len()),
    }))
}

async fn backup(services: &Services, command: BackupCommand) -> Result<Reply> {
    use crate::service::backup;
    Ok(match command {
        BackupCommand::Create => {
            let taken = backup::create(services).await?;
            Reply::message(format!(
                "backup {} taken ({}) in {}",
                taken.name,
                mib(taken.size_bytes),
                taken.path.display()
            ))
        }
        BackupCommand::List => {
            let rows: Vec<Vec<String>> = backup::list(services)
                .await?
                .into_iter()
                .map(|info| {
                    vec![
                        info.name,
                        super::reply::format_timestamp(info.created_ms),
                        mib(info.size_bytes),
                    ]
                })
                .collect();
            Reply::table("backups", &["name", "taken", "size"], &rows)
        }
        BackupCommand::Verify { name } => {
            let check = backup::verify(services, &name).await?;
            Reply::message(format!(
                "backup {name} is sound: {} trees, {} entries read",
                check.trees, check.entries
            ))
        }
    })
}

fn version(services: &Services) -> String {
    format!(
        "Plait {} on {}",
        env!("CARGO_PKG_VERSION"),
        services.globals.server_name()
    )
}

/// The statistics, from counters kept at write time (`service::stats`) and RocksDB's properties:
/// a few point reads whatever the size of the server.
fn stats(services: &Services) -> Result<Reply> {
    let snapshot = services.stats.snapshot()?;
    // The server's own user is an account, but no user.
    let own_user = u64::from(services.users.exists(&server_user(services)?)?);
    let uptime = services.admin.uptime().as_secs();
    let mut rows: Vec<(String, String)> = [
        ("users", snapshot.accounts.saturating_sub(own_user)),
        ("deactivated users", snapshot.deactivated),
        ("active users, 1 day", snapshot.active[0]),
        ("active users, 7 days", snapshot.active[1]),
        ("active users, 30 days", snapshot.active[2]),
        ("server admins", services.users.iter_admins()?.len() as u64),
        ("rooms", snapshot.rooms),
        ("events", snapshot.events),
        ("local events", snapshot.local_events),
        ("messages today", snapshot.messages_today),
        ("media files", snapshot.media_files),
        ("media bytes", snapshot.media_bytes),
        ("federation peers", snapshot.peers),
        ("stream position", services.globals.current_count()),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_owned(), value.to_string()))
    .collect();
    rows.push((
        "uptime".to_owned(),
        format!(
            "{}d {:02}:{:02}:{:02}",
            uptime / 86_400,
            uptime % 86_400 / 3600,
            uptime % 3600 / 60,
            uptime % 60
        ),
    ));
    rows.push(("version".to_owned(), version(services)));
    rows.push(("resident memory".to_owned(), memory("VmRSS:")));
    rows.push(("peak resident memory".to_owned(), memory("VmHWM:")));
    let total: u64 = snapshot.tree_sizes.iter().map(|(_, size)| size).sum();
    rows.push(("database size".to_owned(), mib(total)));
    for (tree, size) in snapshot.tree_sizes {
        rows.push((format!("database size: {tree}"), mib(size)));
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(field, value)| vec![field, value])
        .collect();
    Ok(Reply::table("server stats", &["field", "value"], &rows))
}

/// Bytes in MiB, to one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A memory line of `/proc/self/status` (`VmRSS:` is the resident set), in MiB, or "unknown"
/// off Linux.
fn memory(field: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map_or_else(
            || "unknown".to_owned(),
            |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
        )
}
