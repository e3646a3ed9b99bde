//! Media of other servers: fetched once with the federation media API
//! (`GET /_matrix/federation/v1/media/download/{mediaId}`, a `multipart/mixed` answer of a JSON
//! part and the file or a `Location`; an answer that is the bare file is taken too, and a server
//! that does not know that endpoint is asked on the deprecated `/_matrix/media/v3/download`),
//! then stored in the content-addressed store and served from there. Remote thumbnails are made
//! here from the cached original.

use std::{sync::atomic::Ordering, time::Duration};

use ruma::{
    api::{
        federation::authenticated_media::{Content, FileOrLocation},
        IncomingResponse,
    },
    http_headers::{ContentDisposition, ContentDispositionType},
    ServerName,
};

use super::MediaRecord;
use crate::{
    error::{Error, Result},
    service::Services,
};

/// The record of `server/media_id` with its bytes stored here: local media (waiting up to
/// `timeout` for a reserved upload), cached remote media, or remote media fetched now.
pub async fn get_or_fetch(
    services: &Services,
    server: &ServerName,
    media_id: &str,
    timeout: Duration,
) -> Result<MediaRecord> {
    let media = &services.media;
    if !super::is_valid_media_id(media_id) {
        return Err(Error::not_found(format!("unknown media {media_id}")));
    }
    if media.is_local(server) {
        return media.wait_local(media_id, timeout).await;
    }
    loop {
        if let Some(record) = media.get(server, media_id)? {
            if record.sha256.is_some() {
                return Ok(record);
            }
        }
        // Quarantined media is never fetched again (an admin sees only what is cached).
        if services
            .admin
            .blocks
            .is_media_quarantined(server, media_id)?
        {
            return Err(Error::not_found(format!("media {media_id} is quarantined")));
        }
        let key = (server.to_owned(), media_id.to_owned());
        let waiting = {
            let mut fetching = media.fetching.lock();
            match fetching.get(&key) {
                Some(receiver) => Err(receiver.clone()),
                None => {
                    let (sender, receiver) = tokio::sync::watch::channel(());
                    fetching.insert(key.clone(), receiver);
                    Ok(sender)
                }
            }
        };
        if let Ok(sender) = waiting {
            let _guard = Fetching {
                media,
                key,
                _sender: sender,
            };
            media.remote_fetches.fetch_add(1, Ordering::Relaxed);
            return fetch(services, server, media_id, timeout).await;
        }
        if let Err(mut receiver) = waiting {
            // Another request is fetching it: wait until its sender is dropped, then look again
            // (after a failed fetch, this request tries itself).
            while receiver.changed().await.is_ok() {}
        }
    }
}

/// Removes the in-flight entry when a fetch ends, also when the request is dropped midway; the
/// sender goes with it, which wakes the waiting requests.
struct Fetching<'a> {
    media: &'a super::Media,
    key: (ruma::OwnedServerName, String),
    _sender: tokio::sync::watch::Sender<()>,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.media.fetching.lock().remove(&self.key);
    }
}

#[tracing::instrument(skip_all, fields(server = %server, media_id = %media_id))]
async fn fetch(
    services: &Services,
    server: &ServerName,
    media_id: &str,
    timeout: Duration,
) -> Result<MediaRecord> {
    let limit = usize::try_from(services.media.max_upload_bytes()).unwrap_or(usize::MAX);
    // The file part comes with some headers and the JSON part around it.
    let envelope = limit.saturating_add(64 * 1024);
    let path = format!(
        "/_matrix/federation/v1/media/download/{media_id}?timeout_ms={}",
        timeout.min(super::MAX_WAIT).as_millis()
    );
    let request = |path: String| async move {
        services
            .federation
            .request_bytes(
                services.globals.server_name(),
                services.globals.signing_key(),
                server,
                &path,
                envelope,
            )
            .await
    };
    let answer = match request(path).await {
        // Server-server API, "Content Repository" (v1.11): a server that does not know the
        // endpoint is asked on the deprecated one, with `allow_remote=false`.
        Err(error) if not_understood(&error) => {
            request(format!(
                "/_matrix/media/v3/download/{server}/{media_id}?allow_remote=false&timeout_ms={}",
                timeout.min(super::MAX_WAIT).as_millis()
            ))
            .await?
        }
        answer => answer?,
    };
    let content = if is_multipart(&answer) {
        let parsed = ruma::api::federation::authenticated_media::get_content::v1::Response::try_from_http_response(answer)
            .map_err(|error| remote(server, format!("bad media answer: {error}")))?;
        match parsed.content {
            FileOrLocation::File(content) => content,
            FileOrLocation::Location(url) => {
                plain_content(services.federation.get_url(server, &url, limit).await?)
            }
            _ => return Err(remote(server, "unknown media answer".to_owned())),
        }
    } else {
        // The deprecated endpoint answers the file itself, and so do some servers on the new
        // one, which the spec has answer `multipart/mixed`: take it as it comes.
        plain_content(answer)
    };
    if content.file.len() > limit {
        return Err(super::files::too_large(limit as u64));
    }
    let filename = content
        .content_disposition
        .and_then(|disposition| disposition.filename);
    services
        .media
        .store_fetched(
            server,
            media_id,
            &content.file,
            content.content_type,
            filename,
        )
        .await
}

/// Whether the other server did not understand a request to the federation media endpoint: it
/// answered `M_UNRECOGNIZED` (what the spec names for falling back), or `400`, `404` or `405`
/// without a Matrix error code (servers from before spec v1.6 settled on `M_UNRECOGNIZED`, and
/// Complement's federation server, whose route for this endpoint always answers `400`).
fn not_understood(error: &Error) -> bool {
    let Error::Remote { source, .. } = error else {
        return false;
    };
    source
        .downcast_ref::<crate::federation::RemoteError>()
        .is_some_and(|answer| {
            answer.errcode == "M_UNRECOGNIZED"
                || (matches!(answer.status, 400 | 404 | 405) && answer.errcode == "M_UNKNOWN")
        })
}

/// Whether a federation media answer is `multipart/mixed` (a JSON part, then the file or a
/// `Location`).
fn is_multipart(answer: &http::Response<Vec<u8>>) -> bool {
    answer
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("multipart/mixed"))
}

/// The file of an answer that is the file itself (a `Location` target, or a server that does not
/// wrap it in `multipart/mixed`), with its `Content-Type` and `Content-Disposition`.
fn plain_content(answer: http::Response<Vec<u8>>) -> Content {
    let header = |name: http::header::HeaderName| {
        answer
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(http::header::CONTENT_TYPE);
    let content_disposition =
        header(http::header::CONTENT_DISPOSITION).and_then(|value| value.parse().ok());
    let mut content = Content::new(
        answer.into_body(),
        String::new(),
        ContentDisposition::new(ContentDispositionType::Attachment),
    );
    content.content_type = content_type;
    content.content_disposition = content_disposition;
    content
}

fn remote(server: &ServerName, detail: String) -> Error {
    Error::Remote {
        server: server.to_string(),
        source: detail.into(),
    }
}
