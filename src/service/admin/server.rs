//! The `server` command group: statistics, version and backups.

use clap::Subcommand;

use super::{reply::Reply, room::server_user};
use crate::{error::Result, service::Services};

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
    }
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
