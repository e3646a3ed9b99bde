//! The content repository: uploads (direct, or reserved with `/create` and uploaded later),
//! media of other servers fetched once over federation and cached, thumbnails cached by size,
//! and URL previews. File bytes live in the content-addressed [`files::Files`] store; metadata
//! lives in RocksDB.
//!
//! Trees:
//! - `mediaid_media`: `server_name 0xff media_id` → JSON [`MediaRecord`] (local and cached
//!   remote media; a reserved upload is a record without a hash).
//! - `useridmediaid_pending`: `user_id 0xff media_id` → `unused_expires_at` (u64 BE), one entry
//!   per reserved upload not yet done, to limit how many a user may hold.
//! - `thumbkey_thumbnail`: `sha256 0xff width (u32 BE) height (u32 BE) method animated` → JSON
//!   [`ThumbnailRecord`].
//! - `url_preview`: the URL → JSON `{ "ts": fetched at, "preview": Open Graph object }`.
//!
//! Invariant: a record names a hash only after that file is durable on disk, so a `200` for an
//! upload means its bytes and metadata both survive a crash.
//!
//! The content repository. Files live under `media_path` (default `<database_path>/media`) named by their SHA-256 (`files.rs`: written to `tmp/`, fsynced, renamed, folder fsynced; the same bytes are stored once); metadata in `mediaid_media` (`server 0xff media_id` → hash, content type, file name, size, uploader, created; a reservation from `/create` is a record without a hash), `useridmediaid_pending` (reservations per user, at most ten unexpired, 24-hour expiry), `thumbkey_thumbnail` (hash, size, method, animated → the thumbnail's hash; thumbnails are files in the same store) and `url_preview` (URL → preview and fetch time, answered for an hour).
//! `remote.rs` fetches another server's media once over `/_matrix/federation/v1/media/download` (multipart, following a `Location` part, or the bare file; a server that answers `M_UNRECOGNIZED` or a `400`/`404`/`405` without a Matrix error code is asked on its deprecated `/_matrix/media/v3/download` with `allow_remote=false`; concurrent requests for the same media wait for one fetch, with no lock held across it) and caches it under the remote server's name; remote thumbnails are made here from the cached original.
//! `thumbnail.rs` is pure (the `image` crate with PNG, JPEG, GIF and WebP only; decoding limits against decompression bombs); a requested size moves up to one of a few boxes (the spec's recommended sizes and larger; crops keep their aspect ratio to within 1/32 of the long side), so a media has a bounded number of cached thumbnails however many sizes are asked for; generation runs on the blocking pool.
//! `preview.rs` fetches pages only when `url_preview_enabled`, checks every resolved address and every redirect against `url_preview_ip_denylist`, and pins the connection to the checked addresses.
//! Invariant: a media record names a hash only after the file is durable, so a `200` for an upload survives a crash; unauthenticated `/_matrix/media/v3|r0/download|thumbnail` answer `404` (media is frozen from the first release) unless `legacy_media_unauthenticated` opens them, and then the authenticated handlers answer them.

mod counts;
pub mod files;
pub mod moderation;
pub mod preview;
pub mod remote;
pub mod thumbnail;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{
    api::error::{ErrorKind, LimitExceededErrorData},
    OwnedMxcUri, OwnedServerName, OwnedUserId, ServerName, UserId,
};
use serde::{Deserialize, Serialize};

use self::files::{Files, Stored, Upload};
use crate::{
    config::Config,
    error::{Error, Result},
    service::stats::Counters,
    store::{Batch, Db, Tree},
    util,
};

/// How long a reserved media ID waits for its upload (the spec recommends 24 hours).
const UNUSED_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;
/// How many reserved, not yet uploaded media IDs one user may hold.
const MAX_PENDING_PER_USER: usize = 10;
/// The longest a download waits for a reserved upload (`timeout_ms` is capped to this).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// What is known about one piece of media.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    /// SHA-256 of the bytes (hex); `None` while a reserved upload has not happened.
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    /// The local uploader; `None` for media cached from another server.
    pub uploader: Option<OwnedUserId>,
    pub created_ts: u64,
    /// When a reserved upload expires unused.
    pub unused_expires_at: Option<u64>,
}

impl MediaRecord {
    /// The record of bytes a local user uploaded just now.
    fn uploaded(
        stored: Stored,
        uploader: &UserId,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Self {
        Self {
            sha256: Some(stored.sha256),
            content_type,
            filename,
            size: stored.size,
            uploader: Some(uploader.to_owned()),
            created_ts: util::now_millis(),
            unused_expires_at: None,
        }
    }
}

/// A cached thumbnail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThumbnailRecord {
    pub sha256: String,
    pub content_type: String,
    pub size: u64,
}

/// How many thumbnails are generated at the same time.
const THUMBNAILS_AT_ONCE: usize = 2;

/// The content repository service.
pub struct Media {
    mediaid_media: Tree,
    useridmediaid_pending: Tree,
    thumbkey_thumbnail: Tree,
    url_preview: Tree,
    files: Files,
    server_name: OwnedServerName,
    max_upload_bytes: u64,
    /// Whether the deprecated unauthenticated endpoints serve media (`legacy_media_unauthenticated`).
    legacy_unauthenticated: bool,
    /// Serialises the check-and-write of a reserved upload and every counted write of a record
    /// (no await while held).
    upload_lock: Mutex<()>,
    /// The media counters of `server stats` (see `counts.rs`).
    counters: Counters,
    /// Woken whenever media becomes available, for downloads waiting on a reserved upload.
    uploaded: tokio::sync::Notify,
    thumbnails_generated: AtomicU64,
    /// Thumbnails decoded at once: each decode may take hundreds of MiB for a large image, so
    /// requests beyond this wait instead of exhausting memory.
    thumbnail_slots: tokio::sync::Semaphore,
    /// Remote media being fetched now, so that concurrent requests wait for one fetch; the
    /// fetcher drops its sender when done.
    fetching: Mutex<HashMap<(OwnedServerName, String), tokio::sync::watch::Receiver<()>>>,
    remote_fetches: AtomicU64,
}

impl Media {
    /// Opens the trees and the file store.
    pub fn open(db: &std::sync::Arc<Db>, config: &Config) -> Result<Self> {
        Ok(Self {
            mediaid_media: db.tree("mediaid_media"),
            useridmediaid_pending: db.tree("useridmediaid_pending"),
            thumbkey_thumbnail: db.tree("thumbkey_thumbnail"),
            url_preview: db.tree("url_preview"),
            files: Files::open(&config.media_path())?,
            server_name: config.server_name().to_owned(),
            max_upload_bytes: config.max_upload_bytes,
            legacy_unauthenticated: config.legacy_media_unauthenticated,
            upload_lock: Mutex::new(()),
            counters: Counters::open(db),
            uploaded: tokio::sync::Notify::new(),
            thumbnails_generated: AtomicU64::new(0),
            thumbnail_slots: tokio::sync::Semaphore::new(THUMBNAILS_AT_ONCE),
            fetching: Mutex::new(HashMap::new()),
            remote_fetches: AtomicU64::new(0),
        })
    }

    /// The upload size limit in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    /// The file store.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// How many thumbnails this process generated (cache hits do not count).
    pub fn thumbnails_generated(&self) -> u64 {
        self.thumbnails_generated.load(Ordering::Relaxed)
    }

    /// How many files this process fetched from other servers.
    pub fn remote_fetches(&self) -> u64 {
        self.remote_fetches.load(Ordering::Relaxed)
    }

    /// Starts receiving the bytes of an upload.
    pub async fn begin_upload(&self) -> Result<Upload> {
        self.files.begin(self.max_upload_bytes).await
    }

    /// Stores a finished upload as new media of `uploader` and returns its `mxc://` URI.
    #[tracing::instrument(skip_all, fields(uploader = %uploader))]
    pub async fn create(
        &self,
        uploader: &UserId,
        upload: Upload,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<OwnedMxcUri> {
        let stored = self.files.finish(upload).await?;
        let media_id = util::random_string(24);
        let record = MediaRecord::uploaded(stored, uploader, content_type, filename);
        let _guard = self.upload_lock.lock();
        let server_name = &self.server_name;
        self.write_counted((server_name, &media_id), &record, Batch::default())?;
        Ok(self.mxc(&media_id))
    }

    /// Reserves a media ID for a later upload (`POST /create`); answers the URI and when it
    /// expires unused. A user holding too many reservations gets `429 M_LIMIT_EXCEEDED`.
    pub fn reserve(&self, uploader: &UserId) -> Result<(OwnedMxcUri, u64)> {
        let now = util::now_millis();
        let _guard = self.upload_lock.lock();
        let mut prefix = uploader.as_bytes().to_vec();
        prefix.push(0xff);
        let mut batch = Batch::default();
        let mut pending = 0;
        for entry in self.useridmediaid_pending.iter_prefix(&prefix) {
            let (key, value) = entry?;
            if decode_u64(&value) <= now {
                // Expired: the reservation and its record go.
                let media_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                batch.remove(&self.useridmediaid_pending, &key);
                batch.remove(
                    &self.mediaid_media,
                    &media_key(&self.server_name, &media_id),
                );
            } else {
                pending += 1;
            }
        }
        if pending >= MAX_PENDING_PER_USER {
            self.mediaid_media.db().write(batch)?;
            return Err(Error::matrix(
                ErrorKind::LimitExceeded(LimitExceededErrorData::new()),
                "too many media uploads pending",
            ));
        }
        let media_id = util::random_string(24);
        let expires = now + UNUSED_EXPIRY_MS;
        let record = MediaRecord {
            sha256: None,
            content_type: None,
            filename: None,
            size: 0,
            uploader: Some(uploader.to_owned()),
            created_ts: now,
            unused_expires_at: Some(expires),
        };
        batch.insert(
            &self.mediaid_media,
            &media_key(&self.server_name, &media_id),
            &encode(&record)?,
        );
        let mut pending_key = prefix;
        pending_key.extend_from_slice(media_id.as_bytes());
        batch.insert(
            &self.useridmediaid_pending,
            &pending_key,
            &expires.to_be_bytes(),
        );
        self.mediaid_media.db().write(batch)?;
        Ok((self.mxc(&media_id), expires))
    }

    /// Checks that `uploader` may upload to a reserved ID now: `404` unknown or expired, `403`
    /// someone else's, `409 M_CANNOT_OVERWRITE_MEDIA` already uploaded.
    pub fn check_reserved(
        &self,
        uploader: &UserId,
        server: &ServerName,
        media_id: &str,
    ) -> Result<()> {
        if server != self.server_name {
            return Err(Error::not_found(format!(
                "media {server}/{media_id} is not from this server"
            )));
        }
        let record = self
            .get(server, media_id)?
            .ok_or_else(|| Error::not_found(format!("unknown media {media_id}")))?;
        if record.sha256.is_some() {
            return Err(Error::matrix(
                ErrorKind::CannotOverwriteMedia,
                format!("media {media_id} is already uploaded"),
            ));
        }
        if record.uploader.as_deref() != Some(uploader) {
            return Err(Error::forbidden(format!(
                "media {media_id} was reserved by another user"
            )));
        }
        if record
            .unused_expires_at
            .is_some_and(|expiry| expiry <= util::now_millis())
        {
            return Err(Error::not_found(format!("media {media_id} has expired")));
        }
        Ok(())
    }

    /// Completes a reserved upload; the checks of [`Self::check_reserved`] are made again once
    /// the bytes are stored, so of two racing uploads one gets `409`.
    #[tracing::instrument(skip_all, fields(media_id = %media_id))]
    pub async fn complete_reserved(
        &self,
        uploader: &UserId,
        media_id: &str,
        upload: Upload,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<()> {
        let stored = self.files.finish(upload).await?;
        {
            let _guard = self.upload_lock.lock();
            self.check_reserved(uploader, &self.server_name, media_id)?;
            let record = MediaRecord::uploaded(stored, uploader, content_type, filename);
            let mut batch = Batch::default();
            let mut pending_key = uploader.as_bytes().to_vec();
            pending_key.push(0xff);
            pending_key.extend_from_slice(media_id.as_bytes());
            batch.remove(&self.useridmediaid_pending, &pending_key);
            self.write_counted((&self.server_name, media_id), &record, batch)?;
        }
        self.uploaded.notify_waiters();
        Ok(())
    }

    /// Stores bytes fetched from elsewhere (another server, a previewed page) under
    /// `server/media_id`.
    pub async fn store_fetched(
        &self,
        server: &ServerName,
        media_id: &str,
        bytes: &[u8],
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<MediaRecord> {
        let Stored { sha256, size } = self.files.store(bytes, self.max_upload_bytes).await?;
        let record = MediaRecord {
            sha256: Some(sha256),
            content_type,
            filename,
            size,
            uploader: None,
            created_ts: util::now_millis(),
            unused_expires_at: None,
        };
        {
            let _guard = self.upload_lock.lock();
            self.write_counted((server, media_id), &record, Batch::default())?;
        }
        self.uploaded.notify_waiters();
        Ok(record)
    }

    /// A new local media ID for stored bytes that no user uploaded (a preview's image).
    pub async fn store_local(
        &self,
        bytes: &[u8],
        content_type: Option<String>,
    ) -> Result<(OwnedMxcUri, MediaRecord)> {
        let media_id = util::random_string(24);
        let server_name = self.server_name.clone();
        let record = self
            .store_fetched(&server_name, &media_id, bytes, content_type, None)
            .await?;
        Ok((self.mxc(&media_id), record))
    }

    /// The record of `server/media_id`, uploaded or reserved.
    pub fn get(&self, server: &ServerName, media_id: &str) -> Result<Option<MediaRecord>> {
        self.mediaid_media
            .get(&media_key(server, media_id))?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|error| Error::corrupt("mediaid_media", error))
            })
            .transpose()
    }

    /// Whether a deprecated unauthenticated endpoint (`/_matrix/media/v3/download`,
    /// `/thumbnail`) may serve `server/media_id`. Unless `legacy_media_unauthenticated` is set,
    /// never: all media counts as uploaded after the freeze of spec 1.11, so it is
    /// `404 M_NOT_FOUND`. With it, yes, except that `allow_remote=false` limits another server's
    /// media to what is cached here (`404` otherwise), as the spec asks to prevent loops.
    pub fn check_legacy_access(
        &self,
        server: &ServerName,
        media_id: &str,
        allow_remote: bool,
    ) -> Result<()> {
        if !self.legacy_unauthenticated {
            return Err(Error::not_found(
                "unauthenticated media is not served; use /_matrix/client/v1/media",
            ));
        }
        if allow_remote || self.is_local(server) {
            return Ok(());
        }
        match self.get(server, media_id)? {
            Some(record) if record.sha256.is_some() => Ok(()),
            _ => Err(Error::not_found(format!(
                "media {server}/{media_id} is not cached here and allow_remote is false"
            ))),
        }
    }

    /// Whether the media is this server's.
    pub fn is_local(&self, server: &ServerName) -> bool {
        server == self.server_name
    }

    /// Local media with its bytes stored, waiting up to `timeout` for a reserved upload:
    /// `404` unknown or expired, `504 M_NOT_YET_UPLOADED` still not uploaded.
    pub async fn wait_local(&self, media_id: &str, timeout: Duration) -> Result<MediaRecord> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        loop {
            let notified = self.uploaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let record = self
                .get(&self.server_name, media_id)?
                .ok_or_else(|| Error::not_found(format!("unknown media {media_id}")))?;
            if record.sha256.is_some() {
                return Ok(record);
            }
            if record
                .unused_expires_at
                .is_some_and(|expiry| expiry <= util::now_millis())
            {
                return Err(Error::not_found(format!("media {media_id} has expired")));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::matrix(
                    ErrorKind::NotYetUploaded,
                    format!("media {media_id} is not uploaded yet"),
                ));
            }
        }
    }

    /// A thumbnail of stored media, from the cache or generated (and cached) now. `None` means
    /// the original itself is the answer (an animated image when animation is asked for).
    pub async fn thumbnail(
        &self,
        record: &MediaRecord,
        wanted: thumbnail::Wanted,
    ) -> Result<Option<(Vec<u8>, String)>> {
        let sha256 = record
            .sha256
            .as_deref()
            .ok_or_else(|| Error::internal("thumbnail of media without bytes"))?;
        let key = thumbnail_key(sha256, wanted);
        if let Some(bytes) = self.thumbkey_thumbnail.get(&key)? {
            let cached: ThumbnailRecord = serde_json::from_slice(&bytes)
                .map_err(|error| Error::corrupt("thumbkey_thumbnail", error))?;
            let data = self.files.read(&cached.sha256).await?;
            return Ok(Some((data, cached.content_type)));
        }
        let _slot = self
            .thumbnail_slots
            .acquire()
            .await
            .map_err(Error::internal)?;
        let original = self.files.read(sha256).await?;
        let content_type = record.content_type.clone();
        let generated = tokio::task::spawn_blocking(move || {
            thumbnail::generate(&original, content_type.as_deref(), wanted)
        })
        .await
        .map_err(Error::internal)??;
        let Some((data, content_type)) = generated else {
            return Ok(None);
        };
        self.thumbnails_generated.fetch_add(1, Ordering::Relaxed);
        let stored = self.files.store(&data, u64::MAX).await?;
        let cached = ThumbnailRecord {
            sha256: stored.sha256,
            content_type: content_type.to_owned(),
            size: stored.size,
        };
        self.thumbkey_thumbnail.insert(&key, &encode(&cached)?)?;
        Ok(Some((data, content_type.to_owned())))
    }

    /// A cached URL preview fetched after `since` (ms).
    pub fn get_preview(&self, url: &str, since: u64) -> Result<Option<serde_json::Value>> {
        let Some(bytes) = self.url_preview.get(url.as_bytes())? else {
            return Ok(None);
        };
        let cached: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|error| Error::corrupt("url_preview", error))?;
        let fetched = cached["ts"].as_u64().unwrap_or(0);
        Ok((fetched >= since).then(|| cached["preview"].clone()))
    }

    /// Caches a URL preview.
    pub fn set_preview(&self, url: &str, preview: &serde_json::Value) -> Result<()> {
        let cached = serde_json::json!({ "ts": util::now_millis(), "preview": preview });
        self.url_preview
            .insert(url.as_bytes(), cached.to_string().as_bytes())
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name))
    }
}

fn media_key(server: &ServerName, media_id: &str) -> Vec<u8> {
    let mut key = server.as_bytes().to_vec();
    key.push(0xff);
    key.extend_from_slice(media_id.as_bytes());
    key
}

fn thumbnail_key(sha256: &str, wanted: thumbnail::Wanted) -> Vec<u8> {
    let mut key = sha256.as_bytes().to_vec();
    key.push(0xff);
    key.extend_from_slice(&wanted.width.to_be_bytes());
    key.extend_from_slice(&wanted.height.to_be_bytes());
    key.push(wanted.method as u8);
    key.push(u8::from(wanted.animated));
    key
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(Error::internal)
}

fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

/// A media ID as the spec allows it (`[A-Za-z0-9_-]+`), so it is safe in keys and paths.
pub fn is_valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= 255
        && media_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}
