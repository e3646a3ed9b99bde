//! Federation media (`/_matrix/federation/v1/media/*`): this server's own media for other
//! servers, as `multipart/mixed` (an empty JSON metadata part, then the file).

use std::sync::Arc;

use axum::{body::Body, response::Response};
use ruma::{
    api::{
        federation::authenticated_media::{
            get_content::v1 as download, Content, ContentMetadata, FileOrLocation,
        },
        OutgoingResponse,
    },
    http_headers::{ContentDisposition, ContentDispositionType},
};

use crate::{
    api::client::media::thumbnail_query,
    api::{Ctx, RawResult},
    error::{Error, Result},
    service::{
        media::{is_valid_media_id, MAX_WAIT},
        Services,
    },
};

/// GET /_matrix/federation/v1/media/download/{mediaId}
///
/// Only media uploaded here; a reserved upload is waited for up to `timeout_ms` (at most 60 s).
pub async fn get_content(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let (bytes, content_type, filename) = original(&services, &ctx).await?;
    multipart(bytes, content_type, filename)
}

/// GET /_matrix/federation/v1/media/thumbnail/{mediaId}
///
/// A thumbnail made (and cached) here, with the client endpoint's parameters and errors.
pub async fn get_content_thumbnail(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let wanted = thumbnail_query(&ctx)?;
    let record = local_record(&services, &ctx).await?;
    match services.media.thumbnail(&record, wanted).await? {
        Some((bytes, content_type)) => multipart(bytes, content_type, None),
        None => {
            let (bytes, content_type, filename) = original(&services, &ctx).await?;
            multipart(bytes, content_type, filename)
        }
    }
}

async fn local_record(
    services: &Services,
    ctx: &Ctx,
) -> Result<crate::service::media::MediaRecord> {
    let media_id = ctx.param(0);
    if !is_valid_media_id(media_id) {
        return Err(Error::not_found(format!("unknown media {media_id}")));
    }
    let timeout = ctx
        .query("timeout_ms")
        .and_then(|text| text.parse::<u64>().ok())
        .map_or(
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis,
        )
        .min(MAX_WAIT);
    let own_name = services.globals.server_name();
    crate::service::media::moderation::check_quarantine(services, own_name, media_id, None)?;
    services.media.wait_local(media_id, timeout).await
}

async fn original(services: &Services, ctx: &Ctx) -> Result<(Vec<u8>, String, Option<String>)> {
    let record = local_record(services, ctx).await?;
    let sha256 = record
        .sha256
        .as_deref()
        .ok_or_else(|| Error::internal("serving media without bytes"))?;
    let bytes = services.media.files().read(sha256).await?;
    let content_type = record
        .content_type
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    Ok((bytes, content_type, record.filename))
}

fn multipart(bytes: Vec<u8>, content_type: String, filename: Option<String>) -> RawResult {
    let disposition =
        ContentDisposition::new(ContentDispositionType::Attachment).with_filename(filename);
    let content = FileOrLocation::File(Content::new(bytes, content_type, disposition));
    let answer = download::Response::new(ContentMetadata::new(), content)
        .try_into_http_response::<Vec<u8>>()
        .map_err(Error::internal)?;
    let (parts, body) = answer.into_parts();
    Ok(Response::from_parts(parts, Body::from(body)))
}
