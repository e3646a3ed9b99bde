//! An admin command's answer: plain text for `body`, HTML for `formatted_body` (a table where the
//! answer is a list).

/// What a command answers, in both forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub html: String,
}

impl Reply {
    /// A message (clap's help and errors are preformatted, so they keep their columns).
    pub fn message(text: impl Into<String>) -> Self {
        let text = text.into();
        let html = format!("<p>{}</p>", escape(&text).replace('\n', "<br>"));
        Self { text, html }
    }

    /// Preformatted text, such as clap's help and errors.
    pub fn preformatted(text: impl Into<String>) -> Self {
        let text = text.into();
        let html = format!("<pre><code>{}</code></pre>", escape(&text));
        Self { text, html }
    }

    /// An error message.
    pub fn error(message: impl std::fmt::Display) -> Self {
        Self::message(format!("error: {message}"))
    }

    /// A title over a table: tab-separated lines in `body`, an HTML `<table>` in `formatted_body`.
    pub fn table(title: &str, headers: &[&str], rows: &[Vec<String>]) -> Self {
        let mut text = format!("{title}\n{}", headers.join("\t"));
        let mut html = format!("<p>{}</p><table><thead><tr>", escape(title));
        for header in headers {
            html.push_str(&format!("<th>{}</th>", escape(header)));
        }
        html.push_str("</tr></thead><tbody>");
        for row in rows {
            text.push('\n');
            text.push_str(&row.join("\t"));
            html.push_str("<tr>");
            for cell in row {
                html.push_str(&format!("<td>{}</td>", escape(cell)));
            }
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table>");
        Self { text, html }
    }
}

/// A time in ms since the epoch as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn format_timestamp(millis: u64) -> String {
    let seconds = millis / 1000;
    let (days, time) = (seconds / 86_400, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let shifted = days as i64 + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// Escapes text for HTML.
pub(super) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            _ => escaped.push(character),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::{format_timestamp, Reply};

    #[test]
    fn timestamps_are_utc_dates() {
        for (millis, expected) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400_000, "2000-02-29 00:00:00 UTC"),
            (1_796_622_853_999, "2026-12-07 05:54:13 UTC"),
        ] {
            assert_eq!(format_timestamp(millis), expected);
        }
    }

    #[test]
    fn a_table_has_a_text_line_and_an_html_row_per_row() {
        let reply = Reply::table(
            "2 users",
            &["user", "admin"],
            &[
                vec!["@a:x".into(), "yes".into()],
                vec!["<b>".into(), "no".into()],
            ],
        );
        assert_eq!(reply.text, "2 users\nuser\tadmin\n@a:x\tyes\n<b>\tno");
        assert_eq!(
            reply.html,
            "<p>2 users</p><table><thead><tr><th>user</th><th>admin</th></tr></thead><tbody>\
             <tr><td>@a:x</td><td>yes</td></tr><tr><td>&lt;b&gt;</td><td>no</td></tr></tbody></table>"
        );
    }
}
