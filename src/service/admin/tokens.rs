//! The `tokens` command group: registration tokens (the invite codes registration's
//! `m.login.registration_token` stage accepts), through `service::registration_tokens`.

use clap::Subcommand;

use super::reply::{format_timestamp, Reply};
use crate::{
    error::{Error, Result},
    service::{
        registration_tokens::{NewToken, TokenLimits},
        Services,
    },
    util,
};

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Creates a registration token (a random one unless --token names it).
    Create {
        /// The token itself: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -
        #[arg(long)]
        token: Option<String>,
        /// The length of a random token (16 by default).
        #[arg(long)]
        length: Option<u64>,
        /// How many registrations it allows (any number when omitted).
        #[arg(long)]
        uses: Option<u64>,
        /// When it expires: a duration from now (30m, 12h, 7d, 2w), a date (2030-01-31, midnight
        /// UTC), a time (2030-01-31T18:00:00Z) or ms since the epoch; never when omitted.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Lists the tokens with their uses and expiry.
    List,
    /// Deletes a token: no registration can use it any more.
    Revoke { token: String },
}

/// Runs one `tokens` command.
pub fn run(services: &Services, command: TokensCommand) -> Result<Reply> {
    let tokens = &services.registration_tokens;
    match command {
        TokensCommand::Create {
            token,
            length,
            uses,
            expires,
        } => {
            let expiry = expires
                .as_deref()
                .map(|text| parse_expiry(text, util::now_millis()))
                .transpose()?;
            let created = tokens.create(NewToken {
                token,
                length,
                limits: TokenLimits {
                    uses_allowed: Some(uses),
                    expiry_time: Some(expiry),
                },
            })?;
            tracing::info!("registration token created from the admin room");
            Ok(Reply::message(format!(
                "created registration token {} ({}, {})",
                created.token,
                uses_text(created.uses_allowed),
                expiry_text(created.expiry_time)
            )))
        }
        TokensCommand::List => {
            let now = util::now_millis();
            let rows: Vec<Vec<String>> = tokens
                .iter_tokens(None)?
                .into_iter()
                .map(|token| {
                    let valid = if token.is_valid_at(now) { "yes" } else { "no" };
                    vec![
                        token.token.clone(),
                        token.completed.to_string(),
                        uses_text(token.uses_allowed),
                        expiry_text(token.expiry_time),
                        valid.to_owned(),
                    ]
                })
                .collect();
            let title = format!("{} registration tokens", rows.len());
            let headers = ["token", "used", "allowed", "expires", "valid"];
            Ok(Reply::table(&title, &headers, &rows))
        }
        TokensCommand::Revoke { token } => {
            tokens.delete(&token)?;
            Ok(Reply::message(format!(
                "revoked registration token {token}"
            )))
        }
    }
}

fn uses_text(uses_allowed: Option<u64>) -> String {
    uses_allowed.map_or_else(
        || "any number of uses".to_owned(),
        |uses| format!("{uses} uses"),
    )
}

fn expiry_text(expiry: Option<u64>) -> String {
    expiry.map_or_else(
        || "never expires".to_owned(),
        |ms| format!("expires {}", format_timestamp(ms)),
    )
}

/// An expiry in ms since the epoch from a duration after `now`, a date, a time or a number of
/// ms; `M_INVALID_PARAM` for anything else or a moment that has passed.
fn parse_expiry(text: &str, now: u64) -> Result<u64> {
    let invalid = || {
        Error::invalid_param(format!(
            "invalid expiry {text}: a duration (30m, 12h, 7d, 2w), a date (2030-01-31), a time \
             (2030-01-31T18:00:00Z) or ms since the epoch"
        ))
    };
    let expiry = if let Some(date) = parse_time(text) {
        date
    } else if text.bytes().all(|byte| byte.is_ascii_digit()) {
        text.parse::<u64>().map_err(|_| invalid())?
    } else {
        let split = text.len().checked_sub(1).ok_or_else(invalid)?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let unit_ms: u64 = match unit {
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(invalid()),
        };
        number
            .checked_mul(unit_ms)
            .and_then(|ms| ms.checked_add(now))
            .ok_or_else(invalid)?
    };
    if expiry <= now {
        return Err(Error::invalid_param(format!(
            "expiry {text} is in the past"
        )));
    }
    Ok(expiry)
}

/// `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ` in ms since the epoch.
fn parse_time(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    if date.len() != 10 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let seconds_of_day = match time {
        None => 0,
        Some(time) => {
            let mut parts = time.splitn(3, ':').map(str::parse::<i64>);
            let (hour, minute, second) = (
                parts.next()?.ok()?,
                parts.next()?.ok()?,
                parts.next()?.ok()?,
            );
            if hour > 23 || minute > 59 || second > 59 || hour < 0 || minute < 0 || second < 0 {
                return None;
            }
            hour * 3600 + minute * 60 + second
        }
    };
    // Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    u64::try_from((days * 86_400 + seconds_of_day) * 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_expiry;

    #[test]
    fn expiries_are_durations_dates_times_or_milliseconds() {
        let now = 1_700_000_000_000;
        for (text, expected) in [
            ("30m", Some(now + 1_800_000)),
            ("12h", Some(now + 43_200_000)),
            ("7d", Some(now + 604_800_000)),
            ("2w", Some(now + 1_209_600_000)),
            ("2030-01-31", Some(1_896_048_000_000)),
            ("2030-01-31T18:00:00Z", Some(1_896_112_800_000)),
            ("1896048000000", Some(1_896_048_000_000)),
            ("2020-01-01", None),
            ("5", None),
            ("7y", None),
            ("d", None),
            ("", None),
            ("2030-13-01", None),
        ] {
            assert_eq!(parse_expiry(text, now).ok(), expected, "{text}");
        }
    }
}
