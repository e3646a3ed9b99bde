//! The admin commands' definitions (clap derive, so `help` and `--help` come from them) and the
//! dispatch from a command line to the group that runs it.

use clap::{Parser, Subcommand};

use super::{
    appservices::{self, AppservicesCommand},
    federation::{self, FederationCommand},
    media::{self, MediaCommand},
    queue::PREFIX,
    reply::Reply,
    reports::{self, ReportsCommand},
    rooms::{self, RoomsCommand},
    server::{self, ServerCommand},
    tokens::{self, TokensCommand},
    users::{self, UsersCommand},
};
use crate::service::Services;

/// Server admin commands, sent in the admin room as `!admin <group> <command>`.
#[derive(Parser, Debug)]
#[command(name = "!admin", disable_version_flag = true)]
struct AdminCommand {
    #[command(subcommand)]
    group: Group,
}

#[derive(Subcommand, Debug)]
enum Group {
    /// Local accounts: list, inspect, create, reset passwords, deactivate, admins, devices,
    /// locks, suspensions, rate limits, forced joins and leaves, redactions.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Registration tokens (invite codes): create, list, revoke.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Reports of events, rooms and users: list, resolve.
    #[command(subcommand)]
    Reports(ReportsCommand),
    /// Rooms: list, inspect, delete, block, purge history, directory and aliases.
    #[command(subcommand)]
    Rooms(RoomsCommand),
    /// Federation: destinations and their back-off, retrying one now, denying a server.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Media: details, deleting (by mxc, event, user, old remote cache) and quarantine.
    #[command(subcommand)]
    Media(MediaCommand),
    /// The server itself: statistics, version, backups, notices and shutdown.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Appservices (bridges and bots): register from YAML, unregister, list.
    #[command(subcommand)]
    Appservices(AppservicesCommand),
}

/// Parses a command line (`!admin ...`) and runs it; a parse failure, `help` or `--help` answers
/// clap's text, and a failed command answers its error.
/// A code block after the command line (`appservices register`'s YAML) is its last argument.
pub async fn run_command(services: &Services, line: &str) -> Reply {
    let (line, block) = appservices::split_code_block(line);
    let mut words = split(line);
    words.extend(block.map(str::to_owned));
    run_args(services, words).await
}

/// Runs a command given as words without the `!admin` (`plait admin ...` on the command line).
pub async fn run_args(services: &Services, words: Vec<String>) -> Reply {
    let mut line = words;
    if line.first().map(String::as_str) != Some(PREFIX) {
        line.insert(0, PREFIX.to_owned());
    }
    let command = match AdminCommand::try_parse_from(line) {
        Ok(command) => command,
        Err(error) => return Reply::preformatted(error.render().to_string().trim_end()),
    };
    let result = match command.group {
        Group::Users(command) => users::run(services, command).await,
        Group::Tokens(command) => tokens::run(services, command),
        Group::Reports(command) => reports::run(services, command),
        Group::Rooms(command) => rooms::run(services, command).await,
        Group::Federation(command) => federation::run(services, command).await,
        Group::Media(command) => media::run(services, command).await,
        Group::Server(command) => server::run(services, command).await,
        Group::Appservices(command) => appservices::run(services, command),
    };
    result.unwrap_or_else(Reply::error)
}

/// Splits a command line into words at white space; double quotes keep a word together
/// (`--password "two words"`).
fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for character in line.chars() {
        match character {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            character if character.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            character => {
                word.push(character);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{split, AdminCommand};

    #[test]
    fn words_split_at_white_space_outside_quotes() {
        for (line, expected) in [
            ("!admin users list", vec!["!admin", "users", "list"]),
            (
                "!admin  users\tinfo  @a:x ",
                vec!["!admin", "users", "info", "@a:x"],
            ),
            (
                "!admin users create bob --password \"two words\"",
                vec![
                    "!admin",
                    "users",
                    "create",
                    "bob",
                    "--password",
                    "two words",
                ],
            ),
            ("a \"\" b", vec!["a", "", "b"]),
        ] {
            assert_eq!(split(line), expected, "{line}");
        }
    }

    #[test]
    fn the_definitions_are_consistent() {
        AdminCommand::command().debug_assert();
    }
}
