//! The content repository for clients: uploads (direct and reserved), authenticated downloads
//! and thumbnails (local media, or another server's fetched over federation and cached), the
//! media config, URL previews, and the deprecated unauthenticated download and thumbnail
//! endpoints (frozen unless `legacy_media_unauthenticated`, then the same code answers them).
//!
//! Downloads carry the spec's safe headers: `Content-Disposition` is `inline` only for the
//! spec's inline-safe content types and `attachment` otherwise, with the file name encoded as
//! RFC 6266 and 8187 say; a sandboxing `Content-Security-Policy`, `X-Content-Type-Options:
//! nosniff` and `Cross-Origin-Resource-Policy: cross-origin` are always sent.

use std::{sync::Arc, time::Duration};

use axum::{body::Body, response::Response};
use futures_util::StreamExt;
use http::{header, HeaderValue, StatusCode};
use ruma::{
    api::client::{
        authenticated_media::{get_media_config, get_media_preview},
        media::{
            create_mxc_uri, get_media_config as get_media_config_deprecated,
            get_media_preview as get_media_preview_deprecated, is_safe_inline_content_type,
        },
    },
    http_headers::{ContentDisposition, ContentDispositionType},
    MilliSecondsSinceUnixEpoch, OwnedServerName, UInt,
};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::{
    api::{json_response, Ctx, RawResult},
    error::{Error, Result},
    service::{
        media::{
            files::Upload, moderation::check_quarantine, preview, remote, thumbnail, MediaRecord,
        },
        rate_limits::{self, Limit},
        Services,
    },
};

/// The sandbox every download is served in (from the spec's content repository section).
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";
/// Longest file name kept from an upload.
const MAX_FILENAME_BYTES: usize = 255;
/// `timeout_ms` when the client gives none (the spec's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// POST /_matrix/media/v3/upload
///
/// Stores the body (at most `max_upload_bytes`, else `413 M_TOO_LARGE`) under a new media ID,
/// with the `Content-Type` header and the `filename` query parameter. Counted by
/// `rate_limits.media_create` before the body is read.
pub async fn create_content(services: Arc<Services>, ctx: Ctx) -> RawResult {
    rate_limits::take_for(&services, Limit::MediaCreate, ctx.user())?;
    let (content_type, filename) = upload_fields(&ctx)?;
    let upload = receive(&services, &ctx).await?;
    let uri = services
        .media
        .create(ctx.user(), upload, content_type, filename)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "content_uri": uri }),
    ))
}

/// POST /_matrix/media/v1/create
///
/// Reserves a media ID for a later upload; a user may hold ten unexpired reservations
/// (`429 M_LIMIT_EXCEEDED` beyond that). Reservations expire after 24 hours.
pub async fn create_mxc_uri(
    services: Arc<Services>,
    ctx: Ctx,
    _request: create_mxc_uri::v1::Request,
) -> Result<create_mxc_uri::v1::Response> {
    rate_limits::take_for(&services, Limit::MediaCreate, ctx.user())?;
    let (uri, expires) = services.media.reserve(ctx.user())?;
    let mut response = create_mxc_uri::v1::Response::new(uri);
    response.unused_expires_at = Some(MilliSecondsSinceUnixEpoch(UInt::new_saturating(expires)));
    Ok(response)
}

/// PUT /_matrix/media/v3/upload/{serverName}/{mediaId}
///
/// Uploads to a reserved media ID: only its creator (`403`), only once
/// (`409 M_CANNOT_OVERWRITE_MEDIA`), only before it expires (`404`).
pub async fn create_content_async(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let server = server_param(&ctx)?;
    let media_id = ctx.param(1).to_owned();
    // Refuse before reading a body that would be thrown away.
    services
        .media
        .check_reserved(ctx.user(), &server, &media_id)?;
    let (content_type, filename) = upload_fields(&ctx)?;
    let upload = receive(&services, &ctx).await?;
    services
        .media
        .complete_reserved(ctx.user(), &media_id, upload, content_type, filename)
        .await?;
    Ok(json_response(StatusCode::OK, &json!({})))
}

/// GET /_matrix/client/v1/media/download/{serverName}/{mediaId}
///
/// Local media (waiting up to `timeout_ms`, at most 60 s, for a reserved upload, then
/// `504 M_NOT_YET_UPLOADED`), or another server's media fetched once and then served from the
/// cache. Quarantined media is `404 M_NOT_FOUND` to all but server admins (and not fetched).
pub async fn get_content(services: Arc<Services>, ctx: Ctx) -> RawResult {
    download(&services, &ctx, None).await
}

/// GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}
///
/// As the download without a file name, with `fileName` in `Content-Disposition`.
pub async fn get_content_as_filename(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let filename = ctx.param(2).to_owned();
    download(&services, &ctx, Some(filename)).await
}

/// GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}
///
/// A thumbnail (`width`, `height`, `method` `scale` or `crop`, `animated`), made once per size
/// and cached; media of other servers is thumbnailed here from the cached original. Content
/// that is not an image is `400 M_UNKNOWN`.
pub async fn get_content_thumbnail(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let server = server_param(&ctx)?;
    let wanted = thumbnail_query(&ctx)?;
    check_quarantine(&services, &server, ctx.param(1), ctx.user.as_deref())?;
    let record = remote::get_or_fetch(&services, &server, ctx.param(1), timeout(&ctx)?).await?;
    match services.media.thumbnail(&record, wanted).await? {
        Some((bytes, content_type)) => {
            let extension = if content_type == "image/png" {
                "png"
            } else {
                "jpg"
            };
            let disposition = ContentDisposition::new(ContentDispositionType::Inline)
                .with_filename(Some(format!("thumbnail.{extension}")));
            Ok(media_response(
                Body::from(bytes),
                None,
                &content_type,
                &disposition,
            ))
        }
        None => serve(&services, &record, None).await,
    }
}

/// GET /_matrix/client/v1/media/config
pub async fn get_media_config(
    services: Arc<Services>,
    _ctx: Ctx,
    _request: get_media_config::v1::Request,
) -> Result<get_media_config::v1::Response> {
    Ok(get_media_config::v1::Response::new(upload_size(&services)))
}

/// GET /_matrix/media/v3/config
///
/// Deprecated, answered as [`get_media_config`] is.
#[allow(deprecated)] // It serves the deprecated endpoint.
pub async fn get_media_config_v3(
    services: Arc<Services>,
    _ctx: Ctx,
    _request: get_media_config_deprecated::v3::Request,
) -> Result<get_media_config_deprecated::v3::Response> {
    Ok(get_media_config_deprecated::v3::Response::new(upload_size(
        &services,
    )))
}

/// `m.upload.size`: `max_upload_bytes`.
fn upload_size(services: &Services) -> UInt {
    UInt::new_saturating(services.media.max_upload_bytes())
}

/// GET /_matrix/client/v1/media/preview_url
///
/// Open Graph data of `url` (`og:image` stored as local media), when `url_preview_enabled`;
/// otherwise, and for addresses in `url_preview_ip_denylist`, `403 M_FORBIDDEN`. `ts` is
/// accepted and not used: the newest preview (at most an hour old) is answered.
pub async fn get_media_preview(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_media_preview::v1::Request,
) -> Result<get_media_preview::v1::Response> {
    let data = preview::preview(&services.media, &services.config, &request.url).await?;
    Ok(get_media_preview::v1::Response::from_raw_value(raw(&data)?))
}

/// GET /_matrix/media/v3/preview_url
///
/// Deprecated, answered as [`get_media_preview`] is.
#[allow(deprecated)] // It serves the deprecated endpoint.
pub async fn get_media_preview_v3(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_media_preview_deprecated::v3::Request,
) -> Result<get_media_preview_deprecated::v3::Response> {
    let data = preview::preview(&services.media, &services.config, &request.url).await?;
    Ok(get_media_preview_deprecated::v3::Response::from_raw_value(
        raw(&data)?,
    ))
}

/// A preview as the raw JSON both preview responses carry.
fn raw(data: &serde_json::Value) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(data).map_err(Error::internal)
}

/// GET /_matrix/media/v3/download/{serverName}/{mediaId}
///
/// Deprecated and unauthenticated, also on `r0`. Off by default: Plait froze unauthenticated
/// media from its first release, so every request is `404 M_NOT_FOUND` (spec 1.11, "Client
/// behaviour" of the content repository). With `legacy_media_unauthenticated` it answers as
/// [`get_content`] does, and with `allow_remote=false` serves another server's media only from
/// the cache.
pub async fn get_content_unauthenticated(services: Arc<Services>, ctx: Ctx) -> RawResult {
    check_legacy(&services, &ctx)?;
    get_content(services, ctx).await
}

/// GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}
///
/// As [`get_content_unauthenticated`], answering as [`get_content_as_filename`] does.
pub async fn get_content_as_filename_unauthenticated(
    services: Arc<Services>,
    ctx: Ctx,
) -> RawResult {
    check_legacy(&services, &ctx)?;
    get_content_as_filename(services, ctx).await
}

/// GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}
///
/// As [`get_content_unauthenticated`], answering as [`get_content_thumbnail`] does.
pub async fn get_content_thumbnail_unauthenticated(services: Arc<Services>, ctx: Ctx) -> RawResult {
    check_legacy(&services, &ctx)?;
    get_content_thumbnail(services, ctx).await
}

/// Whether a deprecated unauthenticated endpoint may answer this request (see
/// [`crate::service::media::Media::check_legacy_access`]).
fn check_legacy(services: &Services, ctx: &Ctx) -> Result<()> {
    let allow_remote = match ctx.query("allow_remote") {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(Error::invalid_param("allow_remote must be true or false")),
    };
    services
        .media
        .check_legacy_access(&server_param(ctx)?, ctx.param(1), allow_remote)
}

async fn download(services: &Services, ctx: &Ctx, filename: Option<String>) -> RawResult {
    let server = server_param(ctx)?;
    check_quarantine(services, &server, ctx.param(1), ctx.user.as_deref())?;
    let record = remote::get_or_fetch(services, &server, ctx.param(1), timeout(ctx)?).await?;
    serve(services, &record, filename).await
}

/// Streams a stored file with its safe headers.
async fn serve(services: &Services, record: &MediaRecord, filename: Option<String>) -> RawResult {
    let sha256 = record
        .sha256
        .as_deref()
        .ok_or_else(|| Error::internal("serving media without bytes"))?;
    let file = services.media.files().open_file(sha256).await?;
    let content_type = record
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let disposition_type = if is_safe_inline_content_type(essence) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    let disposition = ContentDisposition::new(disposition_type)
        .with_filename(filename.or_else(|| record.filename.clone()));
    Ok(media_response(
        file_body(file),
        Some(record.size),
        content_type,
        &disposition,
    ))
}

/// A response with media bytes and the headers every download carries.
pub fn media_response(
    body: Body,
    length: Option<u64>,
    content_type: &str,
    disposition: &ContentDisposition,
) -> Response {
    let content_type = HeaderValue::from_str(content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let disposition = HeaderValue::from_str(&disposition.to_string())
        .unwrap_or(HeaderValue::from_static("attachment"));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// The file as a body read in 64 KiB chunks, so a large file is never whole in memory.
fn file_body(file: tokio::fs::File) -> Body {
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(bytes::Bytes::from(buffer)), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    Body::from_stream(stream)
}

/// Reads the request body into a new upload, enforcing `max_upload_bytes` (a `Content-Length`
/// over it is refused before reading) and `http_body_timeout_ms` between pieces.
async fn receive(services: &Services, ctx: &Ctx) -> Result<Upload> {
    let limit = services.media.max_upload_bytes();
    let declared = crate::api::ctx::declared_length(&ctx.headers);
    if declared.is_some_and(|length| length > limit) {
        return Err(crate::service::media::files::too_large(limit));
    }
    let body = ctx.raw_body.lock().take().unwrap_or_default();
    let mut upload = services.media.begin_upload().await?;
    let mut stream = body.into_data_stream();
    // An upload may take long on a slow link, but it may not stall: each piece must arrive
    // within the body timeout of the one before.
    let stall = std::time::Duration::from_millis(services.config.http_body_timeout_ms);
    loop {
        let next = tokio::time::timeout(stall, stream.next())
            .await
            .map_err(|_| Error::RequestTimeout("the upload stalled".to_owned()))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|_| Error::custom("M_UNKNOWN", "the upload was cut short"))?;
        upload.write(&chunk).await?;
    }
    Ok(upload)
}

/// The content type and file name of an upload.
fn upload_fields(ctx: &Ctx) -> Result<(Option<String>, Option<String>)> {
    let content_type = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned);
    let filename = ctx.query("filename").map(str::to_owned);
    if filename
        .as_ref()
        .is_some_and(|name| name.len() > MAX_FILENAME_BYTES || name.chars().any(char::is_control))
    {
        return Err(Error::invalid_param(format!(
            "filename must be at most {MAX_FILENAME_BYTES} bytes without control characters"
        )));
    }
    Ok((content_type, filename))
}

fn server_param(ctx: &Ctx) -> Result<OwnedServerName> {
    OwnedServerName::try_from(ctx.param(0))
        .map_err(|_| Error::invalid_param(format!("invalid server name {}", ctx.param(0))))
}

/// `timeout_ms`, defaulting to 20 s.
fn timeout(ctx: &Ctx) -> Result<Duration> {
    match ctx.query("timeout_ms") {
        None => Ok(DEFAULT_TIMEOUT),
        Some(text) => text
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| Error::invalid_param("timeout_ms must be a non-negative integer")),
    }
}

/// The thumbnail query parameters: `width` and `height` required integers, `method`, `animated`.
pub fn thumbnail_query(ctx: &Ctx) -> Result<thumbnail::Wanted> {
    let number = |name: &str| -> Result<i64> {
        let text = ctx
            .query(name)
            .ok_or_else(|| Error::missing_param(format!("missing {name}")))?;
        text.parse()
            .map_err(|_| Error::invalid_param(format!("{name} must be an integer")))
    };
    let animated = match ctx.query("animated") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid_param("animated must be true or false")),
    };
    thumbnail::Wanted::new(
        number("width")?,
        number("height")?,
        ctx.query("method"),
        animated,
    )
}
