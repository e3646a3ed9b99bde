//! The `server` command group: statistics and version.

use clap::Subcommand;

use super::{reply::Reply, room::server_user};
use crate::{error::Result, service::Services};

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Counts of users and rooms, stream position, uptime, version and memory.
    Stats,
    /// The server's name and version.
    Version,
}

/// Runs one `server` command.
pub fn run(services: &Services, command: ServerCommand) -> Result<Reply> {
    match command {
        ServerCommand::Stats => stats(services),
        ServerCommand::Version => Ok(Reply::message(version(services))),
    }
}

fn version(services: &Services) -> String {
    format!(
        "Plait {} on {}",
        env!("CARGO_PKG_VERSION"),
        services.globals.server_name()
    )
}

/// Counts users and rooms by scanning their trees (fine for thousands; counters would be needed
/// for the 100,000 users).
fn stats(services: &Services) -> Result<Reply> {
    let server_user = server_user(services)?;
    let users: Vec<_> = services
        .users
        .iter_user_ids().collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|user_id| *user_id != server_user)
        .collect();
    let mut deactivated = 0;
    for user_id in &users {
        if services.users.is_deactivated(user_id)? {
            deactivated += 1;
        }
    }
    let uptime = services.admin.uptime().as_secs();
    let rows = [
        ("users", users.len().to_string()),
        ("deactivated users", deactivated.to_string()),
        (
            "server admins",
            services.users.iter_admins()?.len().to_string(),
        ),
        ("rooms", services.rooms.short.count_rooms()?.to_string()),
        (
            "stream position",
            services.globals.current_count().to_string(),
        ),
        (
            "uptime",
            format!(
                "{}d {:02}:{:02}:{:02}",
                uptime / 86_400,
                uptime % 86_400 / 3600,
                uptime % 3600 / 60,
                uptime % 60
            ),
        ),
        ("version", version(services)),
        ("resident memory", memory("VmRSS:")),
        ("peak resident memory", memory("VmHWM:")),
    ]
    .map(|(field, value)| vec![field.to_owned(), value]);
    Ok(Reply::table("server stats", &["field", "value"], &rows))
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
