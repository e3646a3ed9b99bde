//! The `appservices` command group: registering a bridge or bot from its YAML (in a code block
//! after the command), unregistering one, and listing them, through `service::appservice`.

use clap::Subcommand;

use super::reply::Reply;
use crate::{
    error::Result,
    service::{
        appservice::{accounts, registration, Source},
        Services,
    },
};

#[derive(Subcommand, Debug)]
pub enum AppservicesCommand {
    /// Registers an appservice (or replaces one registered here): the registration YAML goes in
    /// a code block after the command.
    Register {
        /// The registration (YAML).
        yaml: String,
    },
    /// Removes an appservice registered here, with everything queued for it.
    Unregister { id: String },
    /// Lists the appservices with their source, and the registrations left out.
    List,
}

/// Runs one `appservices` command.
pub fn run(services: &Services, command: AppservicesCommand) -> Result<Reply> {
    let appservices = &services.appservices;
    match command {
        AppservicesCommand::Register { yaml } => {
            let appservice = appservices.register(registration::parse(&yaml)?)?;
            accounts::create_sender(services, &appservice)?;
            tracing::info!(
                appservice = appservice.id(),
                "appservice registered from the admin room"
            );
            Ok(Reply::message(format!(
                "registered appservice {} (sender {})",
                appservice.id(),
                appservice.sender
            )))
        }
        AppservicesCommand::Unregister { id } => {
            appservices.unregister(&id)?;
            tracing::info!(appservice = %id, "appservice unregistered from the admin room");
            Ok(Reply::message(format!("unregistered appservice {id}")))
        }
        AppservicesCommand::List => {
            let registry = appservices.registry();
            let rows: Vec<Vec<String>> = registry
                .appservices
                .iter()
                .map(|(appservice, source)| {
                    let source = match source {
                        Source::File(_) => source.to_string(),
                        Source::AdminRoom => "admin room".to_owned(),
                    };
                    vec![
                        appservice.id().to_owned(),
                        appservice.sender.to_string(),
                        appservice.registration.url.clone().unwrap_or_default(),
                        source,
                    ]
                })
                .collect();
            let mut reply = Reply::table(
                &format!("{} appservices", rows.len()),
                &["id", "sender", "url", "source"],
                &rows,
            );
            for problem in &registry.problems {
                let line = format!("left out: {problem}");
                reply
                    .html
                    .push_str(&format!("<p>{}</p>", super::reply::escape(&line)));
                reply.text.push('\n');
                reply.text.push_str(&line);
            }
            Ok(reply)
        }
    }
}

/// Splits a message into its command line and the text of its first code block (fenced with
/// three backticks, an info string such as `yaml` dropped), which becomes the last argument.
pub(super) fn split_code_block(body: &str) -> (&str, Option<&str>) {
    let Some((line, rest)) = body.split_once("```") else {
        return (body, None);
    };
    let block = rest.split_once("```").map_or(rest, |(block, _)| block);
    // The info string runs to the end of the fence's line.
    let block = block.split_once('\n').map_or(block, |(_, text)| text);
    (line.trim_end(), Some(block))
}

#[cfg(test)]
mod tests {
    use super::split_code_block;

    #[test]
    fn a_code_block_after_the_command_is_its_argument() {
        let body = "!admin appservices register\n```yaml\nid: x\nurl: null\n```\n";
        assert_eq!(
            split_code_block(body),
            ("!admin appservices register", Some("id: x\nurl: null\n"))
        );
        assert_eq!(
            split_code_block("!admin appservices list"),
            ("!admin appservices list", None)
        );
    }
}
