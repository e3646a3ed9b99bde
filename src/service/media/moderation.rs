//! Media for server admins: listing a user's uploads, deleting media (by ID, by the event that
//! names it, by uploader, or cached remote media older than a time) and quarantine.
//!
//! Deleting drops the record; the file goes too once no other record names its bytes (the store
//! is content-addressed, so one file may back several media IDs), with the thumbnails made of
//! it. A quarantined item (`admin::blocks`) is `404 M_NOT_FOUND` to everyone but server admins,
//! and remote media under quarantine is never fetched.

use ruma::{MxcUri, OwnedMxcUri, OwnedServerName, ServerName, UserId};
use serde_json::Value;

use super::{media_key, Media, MediaRecord};
use crate::{
    error::{Error, Result},
    service::{stats::Counter, Services},
    store::{key, Batch},
};

/// One media item with its ID.
#[derive(Clone, Debug)]
pub struct MediaEntry {
    pub server: OwnedServerName,
    pub media_id: String,
    pub record: MediaRecord,
}

/// Reads an `mxc://server/media_id` URI; `M_INVALID_PARAM` when malformed.
pub fn parse_mxc(text: &str) -> Result<(OwnedServerName, String)> {
    let uri: &MxcUri = text.into();
    let (server, media_id) = uri
        .parts()
        .map_err(|_| Error::invalid_param(format!("invalid mxc URI {text}")))?;
    Ok((server.to_owned(), media_id.to_owned()))
}

/// `M_NOT_FOUND` for quarantined media unless `requester` is a server admin (another server's
/// request has none).
pub fn check_quarantine(
    services: &Services,
    server: &ServerName,
    media_id: &str,
    requester: Option<&UserId>,
) -> Result<()> {
    if !services
        .admin
        .blocks
        .is_media_quarantined(server, media_id)?
    {
        return Ok(());
    }
    match requester {
        Some(user_id) if services.users.is_admin(user_id)? => Ok(()),
        _ => Err(Error::not_found(format!("media {media_id} is quarantined"))),
    }
}

impl Media {
    /// Every media record, in key order (a scan, for the admins).
    pub fn iter_all(&self) -> Result<Vec<MediaEntry>> {
        let mut entries = Vec::new();
        for entry in self.mediaid_media.iter_prefix(b"") {
            let (db_key, value) = entry?;
            let mut parts = key::split(&db_key);
            let server = parts.next().unwrap_or_default();
            let media_id = parts.next().unwrap_or_default();
            let server = OwnedServerName::try_from(String::from_utf8_lossy(server).as_ref())
                .map_err(|e| Error::corrupt("mediaid_media", e))?;
            let record =
                serde_json::from_slice(&value).map_err(|e| Error::corrupt("mediaid_media", e))?;
            entries.push(MediaEntry {
                server,
                media_id: String::from_utf8_lossy(media_id).into_owned(),
                record,
            });
        }
        Ok(entries)
    }

    /// The media a local user uploaded.
    pub fn iter_by_uploader(&self, user_id: &UserId) -> Result<Vec<MediaEntry>> {
        Ok(self
            .iter_all()?
            .into_iter()
            .filter(|entry| entry.record.uploader.as_deref() == Some(user_id))
            .collect())
    }

    /// Deletes one media item: its record, and its file and thumbnails when no other record
    /// names the same bytes. Answers whether it existed.
    pub async fn delete(&self, server: &ServerName, media_id: &str) -> Result<bool> {
        let record = {
            // Under the upload lock, as every writer of the media counters.
            let _guard = self.upload_lock.lock();
            let Some(record) = self.get(server, media_id)? else {
                return Ok(false);
            };
            let mut batch = Batch::default();
            batch.remove(&self.mediaid_media, &media_key(server, media_id));
            if record.sha256.is_some() {
                let bytes = i64::try_from(record.size).unwrap_or(i64::MAX);
                self.counters
                    .add_in_batch(Counter::MediaFiles, -1, &mut batch)?;
                self.counters
                    .add_in_batch(Counter::MediaBytes, -bytes, &mut batch)?;
            }
            self.mediaid_media.db().write(batch)?;
            record
        };
        let Some(sha256) = record.sha256 else {
            return Ok(true);
        };
        let remaining = self.iter_all()?;
        let named = |hash: &str| {
            remaining
                .iter()
                .any(|entry| entry.record.sha256.as_deref() == Some(hash))
        };
        if !named(&sha256) {
            let mut batch = Batch::default();
            let mut thumbnails = Vec::new();
            for entry in self
                .thumbkey_thumbnail
                .iter_prefix(&key::prefix(&[sha256.as_bytes()]))
            {
                let (db_key, value) = entry?;
                batch.remove(&self.thumbkey_thumbnail, &db_key);
                if let Some(hash) = serde_json::from_slice::<Value>(&value)
                    .ok()
                    .and_then(|thumbnail| thumbnail["sha256"].as_str().map(str::to_owned))
                {
                    thumbnails.push(hash);
                }
            }
            self.mediaid_media.db().write(batch)?;
            for hash in std::iter::once(sha256).chain(thumbnails) {
                if !named(&hash) {
                    self.files.remove(&hash).await?;
                }
            }
        }
        tracing::info!(%server, media_id, "deleted media");
        Ok(true)
    }
}

/// The media IDs an event's content names (`url`, `info.thumbnail_url`, `file.url`,
/// `info.thumbnail_file.url`, an avatar's `url` or `avatar_url`).
pub fn mxcs_of_event(content: &Value) -> Vec<OwnedMxcUri> {
    let pointers = [
        "/url",
        "/avatar_url",
        "/info/thumbnail_url",
        "/file/url",
        "/info/thumbnail_file/url",
    ];
    pointers
        .iter()
        .filter_map(|pointer| content.pointer(pointer)?.as_str())
        .filter(|text| text.starts_with("mxc://"))
        .map(OwnedMxcUri::from)
        .collect()
}

/// Deletes the media an event names; answers the deleted IDs. `M_NOT_FOUND` for an unknown
/// event.
pub async fn delete_by_event(services: &Services, event_id: &ruma::EventId) -> Result<Vec<String>> {
    let pdu = services
        .rooms
        .timeline
        .get_pdu(event_id)?
        .ok_or_else(|| Error::not_found(format!("event {event_id} not found")))?;
    let mut deleted = Vec::new();
    for mxc in mxcs_of_event(&pdu.content_value()) {
        let (server, media_id) = parse_mxc(mxc.as_str())?;
        if services.media.delete(&server, &media_id).await? {
            deleted.push(media_id);
        }
    }
    Ok(deleted)
}

/// Deletes every upload of a local user; answers the deleted IDs.
pub async fn delete_by_uploader(services: &Services, user_id: &UserId) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for entry in services.media.iter_by_uploader(user_id)? {
        if services
            .media
            .delete(&entry.server, &entry.media_id)
            .await?
        {
            deleted.push(entry.media_id);
        }
    }
    Ok(deleted)
}

/// Deletes the cached media of other servers fetched before `before_ts` (ms since the epoch);
/// answers how many.
pub async fn delete_remote_before(services: &Services, before_ts: u64) -> Result<usize> {
    let mut deleted = 0;
    for entry in services.media.iter_all()? {
        if services.media.is_local(&entry.server) || entry.record.created_ts >= before_ts {
            continue;
        }
        if services
            .media
            .delete(&entry.server, &entry.media_id)
            .await?
        {
            deleted += 1;
        }
    }
    Ok(deleted)
}
