//! URL previews: fetch a page (or an image) with a size limit and a timeout, and answer its Open
//! Graph data, with the page's image stored as local media.
//!
//! Every address a host name resolves to is checked against `url_preview_ip_denylist` (and
//! `ip_range_denylist`, less `ip_range_allowlist`) before
//! connecting, the connection is pinned to those checked addresses (so a second DNS answer
//! cannot point elsewhere), and redirects are followed by hand, each one checked the same way.

use std::{net::SocketAddr, time::Duration};

use serde_json::{Map, Value};

use super::Media;
use crate::{
    config::{Config, IpPolicy},
    error::{Error, Result},
    federation::guard::{self, Unusable},
    util,
};

/// Largest page read; the rest of a longer page is ignored.
const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Longest URL previewed.
const MAX_URL_BYTES: usize = 4096;
/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;
/// Time for one fetch, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cached preview is answered.
const CACHE_MS: u64 = 60 * 60 * 1000;

/// The Open Graph preview of `url`, from the cache when it is less than an hour old.
#[tracing::instrument(skip_all)]
pub async fn preview(media: &Media, config: &Config, url: &str) -> Result<Value> {
    if !config.url_preview_enabled {
        return Err(Error::forbidden("URL previews are disabled on this server"));
    }
    if url.len() > MAX_URL_BYTES {
        return Err(Error::invalid_param("the URL is too long"));
    }
    let denylist = config.user_url_ip_policy();
    let parsed =
        reqwest::Url::parse(url).map_err(|_| Error::invalid_param(format!("invalid URL {url}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid_param(
            "only http and https URLs can be previewed",
        ));
    }
    if let Some(cached) = media.get_preview(url, util::now_millis().saturating_sub(CACHE_MS))? {
        return Ok(cached);
    }
    let page = fetch(&denylist, parsed, MAX_PAGE_BYTES, true).await?;
    let mut preview = Map::new();
    if page.content_type.starts_with("image/") {
        // The URL is an image itself: the upload limit applies to it, not the page limit.
        let image = if page.truncated {
            let limit = usize::try_from(media.max_upload_bytes()).unwrap_or(usize::MAX);
            fetch(&denylist, page.url.clone(), limit, false).await?
        } else {
            page
        };
        attach_image(media, &mut preview, image).await?;
    } else if page.content_type.contains("html") {
        let html = String::from_utf8_lossy(&page.body);
        let tags = open_graph(&html);
        let image_url = tags
            .get("og:image")
            .and_then(Value::as_str)
            .and_then(|image| page.url.join(image).ok());
        for (name, value) in tags {
            if name != "og:image" {
                preview.insert(name, value);
            }
        }
        if let Some(image_url) = image_url {
            let limit = usize::try_from(media.max_upload_bytes()).unwrap_or(usize::MAX);
            // A page whose image cannot be fetched still has a preview.
            if let Ok(image) = fetch(&denylist, image_url, limit, false).await {
                if image.content_type.starts_with("image/") {
                    attach_image(media, &mut preview, image).await?;
                }
            }
        }
    }
    let preview = Value::Object(preview);
    media.set_preview(url, &preview)?;
    Ok(preview)
}

struct Fetched {
    url: reqwest::Url,
    content_type: String,
    body: Vec<u8>,
    truncated: bool,
}

/// Fetches `url`, following redirects by hand, refusing denied addresses; a body longer than
/// `limit` is cut (`truncate`) or refused.
async fn fetch(
    denylist: &IpPolicy,
    mut url: reqwest::Url,
    limit: usize,
    truncate: bool,
) -> Result<Fetched> {
    for _ in 0..=MAX_REDIRECTS {
        let host = url
            .host_str()
            .ok_or_else(|| Error::invalid_param("the URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addresses = allowed_addresses(denylist, &host, port).await?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .no_proxy()
            .user_agent(concat!(
                "Plait/",
                env!("CARGO_PKG_VERSION"),
                " (URL preview)"
            ))
            .resolve_to_addrs(&host, &addresses)
            .build()
            .map_err(Error::internal)?;
        let response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|error| fetch_failed(&url, crate::error::with_sources(&error)))?;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| fetch_failed(&url, "redirect without a location"))?;
            url = url
                .join(location)
                .map_err(|error| fetch_failed(&url, error))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Error::forbidden("the URL redirects to another scheme"));
            }
            continue;
        }
        if !response.status().is_success() {
            return Err(fetch_failed(&url, response.status()));
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_ascii_lowercase();
        let (body, truncated) = read_body(response, &url, limit, truncate).await?;
        return Ok(Fetched {
            url,
            content_type,
            body,
            truncated,
        });
    }
    Err(Error::forbidden("the URL redirects too often"))
}

/// Reads a response's body up to `limit` bytes: a longer one is cut (`truncate`, answering
/// `true`) or refused.
async fn read_body(
    mut response: reqwest::Response,
    url: &reqwest::Url,
    limit: usize,
    truncate: bool,
) -> Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| fetch_failed(url, error))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            if truncate {
                body.truncate(limit);
                return Ok((body, true));
            }
            return Err(super::files::too_large(limit as u64));
        }
    }
    Ok((body, false))
}

/// The addresses of `host`, all of which the policy must permit (`403 M_FORBIDDEN`).
async fn allowed_addresses(policy: &IpPolicy, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    guard::checked_addresses(policy, host, port, FETCH_TIMEOUT)
        .await
        .map_err(|unusable| match unusable {
            Unusable::Unresolved => Error::not_found(format!("cannot resolve {host}")),
            Unusable::Refused => Error::forbidden(format!(
                "{host} resolves to an address that may not be previewed"
            )),
        })
}

async fn attach_image(
    media: &Media,
    preview: &mut Map<String, Value>,
    image: Fetched,
) -> Result<()> {
    let content_type = image
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let dimensions = image::ImageReader::new(std::io::Cursor::new(&image.body))
        .with_guessed_format()
        .ok()
        .and_then(|reader| reader.into_dimensions().ok());
    let (uri, record) = media
        .store_local(&image.body, Some(content_type.clone()))
        .await?;
    preview.insert("og:image".into(), Value::String(uri.to_string()));
    preview.insert("og:image:type".into(), Value::String(content_type));
    preview.insert("matrix:image:size".into(), Value::from(record.size));
    if let Some((width, height)) = dimensions {
        preview.insert("og:image:width".into(), Value::from(width));
        preview.insert("og:image:height".into(), Value::from(height));
    }
    Ok(())
}

fn fetch_failed(url: &reqwest::Url, detail: impl std::fmt::Display) -> Error {
    Error::Remote {
        server: url.host_str().unwrap_or("").to_owned(),
        source: format!("URL preview fetch failed: {detail}").into(),
    }
}

/// The `og:*` meta tags of a page (the first of each name), with `<title>` as `og:title` when the
/// page has none.
pub fn open_graph(html: &str) -> Map<String, Value> {
    let mut tags = Map::new();
    let lower = html.to_ascii_lowercase();
    let mut position = 0;
    while let Some(start) = lower[position..].find("<meta") {
        let start = position + start;
        let end = lower[start..]
            .find('>')
            .map_or(lower.len(), |end| start + end);
        let tag = &html[start..end];
        let name = attribute(tag, "property").or_else(|| attribute(tag, "name"));
        if let (Some(name), Some(content)) = (name, attribute(tag, "content")) {
            let name = name.to_ascii_lowercase();
            if name.starts_with("og:") && !tags.contains_key(&name) {
                tags.insert(name, Value::String(content));
            }
        }
        position = end;
    }
    if !tags.contains_key("og:title") {
        if let Some(start) = lower.find("<title") {
            let open_end = lower[start..].find('>').map(|end| start + end + 1);
            if let Some(open_end) = open_end {
                let close = lower[open_end..]
                    .find("</title")
                    .map_or(lower.len(), |end| open_end + end);
                let title = decode_entities(html[open_end..close].trim());
                if !title.is_empty() {
                    tags.insert("og:title".into(), Value::String(title));
                }
            }
        }
    }
    tags
}

/// The value of `name="…"` (or single-quoted) inside one tag.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut position = 0;
    while let Some(found) = lower[position..].find(name) {
        let at = position + found;
        position = at + name.len();
        let preceded = lower[..at]
            .chars()
            .next_back()
            .is_some_and(char::is_whitespace);
        let rest = lower[position..].trim_start();
        if !preceded || !rest.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - rest.len() + 1;
        let value = tag[value_start..].trim_start();
        let quote = value.chars().next()?;
        let text = if quote == '"' || quote == '\'' {
            let inner = &value[1..];
            &inner[..inner.find(quote).unwrap_or(inner.len())]
        } else {
            value
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or("")
        };
        return Some(decode_entities(text));
    }
    None
}

fn decode_entities(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_graph_tags_and_title_fallback() {
        let html = r#"<html><head><title>Fallback</title>
            <meta property="og:title" content="Plait &amp; friends">
            <META name='og:description' content='A "homeserver"'/>
            <meta property="og:title" content="second title is ignored">
            <meta name="viewport" content="width=device-width">
            <meta property="og:image" content="/logo.png"></head></html>"#;
        let tags = open_graph(html);
        assert_eq!(tags["og:title"], "Plait & friends");
        assert_eq!(tags["og:description"], "A \"homeserver\"");
        assert_eq!(tags["og:image"], "/logo.png");
        assert!(!tags.contains_key("viewport"));
        let tags = open_graph("<title> Only a title </title>");
        assert_eq!(tags["og:title"], "Only a title");
        assert!(open_graph("<meta content=x").is_empty());
    }
}
