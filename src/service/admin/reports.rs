//! The `reports` command group: the event, room and user reports users sent
//! (`service::reports`, each announced in the admin room when it arrives), listed and resolved.

use clap::Subcommand;

use super::reply::{format_timestamp, Reply};
use crate::{error::Result, service::Services};

#[derive(Subcommand, Debug)]
pub enum ReportsCommand {
    /// Lists the open reports, oldest first (with --all, the resolved ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Marks a report resolved.
    Resolve {
        /// The report's number, as `reports list` shows it.
        id: u64,
    },
}

/// Runs one `reports` command.
pub fn run(services: &Services, command: ReportsCommand) -> Result<Reply> {
    match command {
        ReportsCommand::List { all } => {
            let rows: Vec<Vec<String>> = services
                .reports
                .iter_reports()?
                .into_iter()
                .filter(|report| all || report.resolved_ts.is_none())
                .map(|report| {
                    vec![
                        report.id.to_string(),
                        report.describe(),
                        report.reporter.to_string(),
                        report.reason.clone().unwrap_or_default(),
                        format_timestamp(report.received_ts),
                        report
                            .resolved_ts
                            .map_or_else(|| "open".to_owned(), format_timestamp),
                    ]
                })
                .collect();
            let which = if all { "reports" } else { "open reports" };
            let title = format!("{} {which}", rows.len());
            let headers = ["id", "about", "by", "reason", "received", "resolved"];
            Ok(Reply::table(&title, &headers, &rows))
        }
        ReportsCommand::Resolve { id } => {
            let report = services.reports.resolve(id)?;
            Ok(Reply::message(format!(
                "resolved report {id} about {}",
                report.describe()
            )))
        }
    }
}
