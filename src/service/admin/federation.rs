//! The `federation` command group: the servers this one sends to with their back-off state,
//! retrying one now, and denying or allowing a server for the whole server.

use clap::Subcommand;
use ruma::OwnedServerName;

use super::reply::{format_timestamp, Reply};
use crate::{
    error::{Error, Result},
    service::Services,
};

#[derive(Subcommand, Debug)]
pub enum FederationCommand {
    /// The servers sent to since start-up or with events queued: queue, failures, last error.
    Destinations,
    /// Retries a server that is being backed off from now.
    RetryNow { server: String },
    /// Refuses a server's requests (transactions, joins, reads) and sends it nothing, until
    /// allowed again.
    Deny { server: String },
    /// Allows a denied server again.
    Allow { server: String },
    /// Lists the denied servers.
    Denied,
}

/// Runs one `federation` command.
pub async fn run(services: &Services, command: FederationCommand) -> Result<Reply> {
    let blocks = &services.admin.blocks;
    match command {
        FederationCommand::Destinations => destinations(services),
        FederationCommand::RetryNow { server } => {
            let server = server_name(services, &server)?;
            if !services.sending.retry_now(&server) {
                return Err(Error::invalid_param(format!(
                    "{server} is not being backed off from"
                )));
            }
            Ok(Reply::message(format!("retrying {server} now")))
        }
        FederationCommand::Deny { server } => {
            let server = server_name(services, &server)?;
            if blocks.is_server_denied(&server) {
                return Err(Error::invalid_param(format!("{server} is already denied")));
            }
            blocks.set_server_denied(&server, true)?;
            tracing::info!(%server, "denied a server");
            Ok(Reply::message(format!("denied {server}")))
        }
        FederationCommand::Allow { server } => {
            let server = server_name(services, &server)?;
            if !blocks.is_server_denied(&server) {
                return Err(Error::invalid_param(format!("{server} is not denied")));
            }
            blocks.set_server_denied(&server, false)?;
            tracing::info!(%server, "allowed a server again");
            Ok(Reply::message(format!("allowed {server}")))
        }
        FederationCommand::Denied => {
            let rows: Vec<Vec<String>> = blocks
                .iter_denied_servers()
                .into_iter()
                .map(|server| vec![server.to_string()])
                .collect();
            let title = format!("{} denied servers", rows.len());
            Ok(Reply::table(&title, &["server"], &rows))
        }
    }
}

/// A valid server name other than this server's own.
fn server_name(services: &Services, name: &str) -> Result<OwnedServerName> {
    let server = OwnedServerName::try_from(name)
        .map_err(|_| Error::invalid_param(format!("invalid server name {name}")))?;
    if server == services.globals.server_name() {
        return Err(Error::invalid_param(format!("{server} is this server")));
    }
    Ok(server)
}

fn destinations(services: &Services) -> Result<Reply> {
    let blocks = &services.admin.blocks;
    let rows: Vec<Vec<String>> = services
        .sending
        .iter_destinations(services.globals.server_name())?
        .into_iter()
        .map(|info| {
            let health = info.health;
            let state = if blocks.is_server_denied(&info.server) {
                "denied".to_owned()
            } else if health.failures > 0 {
                format!(
                    "backing off {} s after {} failures",
                    health.retry_interval_ms / 1000,
                    health.failures
                )
            } else {
                "ok".to_owned()
            };
            vec![
                info.server.to_string(),
                state,
                info.queued.to_string(),
                health.failure_ts.map_or_else(String::new, format_timestamp),
                health
                    .last_success_ts
                    .map_or_else(|| "never".to_owned(), format_timestamp),
                health.last_error.unwrap_or_default(),
            ]
        })
        .collect();
    let headers = [
        "server",
        "state",
        "queued",
        "failing since",
        "last success",
        "last error",
    ];
    Ok(Reply::table(
        &format!("{} destinations", rows.len()),
        &headers,
        &rows,
    ))
}
