//! Media of other servers: fetched once with the federation media API
//! (`GET /_matrix/federation/v1/media/download/{mediaId}`, a `multipart/mixed` answer of a JSON
//! part and the file or a `Location`), then stored in the content-addressed store and served
//! from there. Remote thumbnails are made here from the cached original.

use std::{sync::atomic::Ordering, time::Duration};

use ruma::{
    api::{federation::authenticated_media::FileOrLocation, IncomingResponse},
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
    let answer = services
        .federation
        .request_bytes(
            services.globals.server_name(),
            services.globals.signing_key(),
            server,
            &path,
            envelope,
        )
        .await?;
    let parsed = ruma::api::federation::authenticated_media::get_content::v1::Response::try_from_http_response(answer)
        .map_err(|error| remote(server, format!("bad media answer: {error}")))?;
    let content = match parsed.content {
        FileOrLocation::File(content) => content,
        FileOrLocation::Location(url) => {
            let answer = services.federation.get_url(server, &url, limit).await?;
            let content_type = answer
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let mut content = ruma::api::federation::authenticated_media::Content::new(
                answer.into_body(),
                String::new(),
                ruma::http_headers::ContentDisposition::new(
                    ruma::http_headers::ContentDispositionType::Attachment,
                ),
            );
            content.content_type = content_type;
            content.content_disposition = None;
            content
        }
        _ => return Err(remote(server, "unknown media answer".to_owned())),
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

fn remote(server: &ServerName, detail: String) -> Error {
    Error::Remote {
        server: server.to_string(),
        source: detail.into(),
    }
}
