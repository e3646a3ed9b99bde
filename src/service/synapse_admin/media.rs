//! Media as Synapse's admin API handles it: a user's uploads (listed and deleted in an order),
//! deleting one item, quarantine (of one item, a room's media, a user's uploads), and purging the
//! remote media cache (`media::moderation` does the work).

use std::collections::BTreeSet;

use ruma::{RoomId, ServerName, UserId};
use serde_json::{json, Value};

use super::{parse_dir, rooms::compare, Admin, PageRequest};
use crate::{
    error::{Error, Result},
    service::{
        media::moderation::{self, MediaEntry},
        Services,
    },
};

/// The orders of a user's media list (Synapse's `order_by`); ties go by `media_id`.
const ORDERS: &[&str] = &[
    "media_id",
    "upload_name",
    "created_ts",
    "last_access_ts",
    "media_length",
    "media_type",
    "quarantined_by",
    "safe_from_quarantine",
];

/// How a user's media is listed or deleted: `order_by` (default `created_ts`) and `dir`
/// (default `f`, but newest first when neither is given, as Synapse does).
pub struct MediaOrder<'a> {
    pub order_by: Option<&'a str>,
    pub dir: Option<&'a str>,
}

/// A page of the media a local user uploaded, in the order asked for.
pub fn list_user_media(
    services: &Services,
    _admin: &Admin,
    user_id: &UserId,
    page: PageRequest,
    order: &MediaOrder<'_>,
) -> Result<Value> {
    let media = user_media(services, user_id, order)?;
    let total = media.len();
    let (media, next) = page.take(media);
    let media: Vec<Value> = media.into_iter().map(|(_, json)| json).collect();
    let mut answer = json!({ "media": media, "total": total });
    if let Some(next) = next {
        answer["next_token"] = json!(next);
    }
    Ok(answer)
}

/// Deletes a page (`from`, `limit`) of a local user's uploads in the order asked for (newest
/// first by default); answers `deleted_media` and `total`.
pub async fn delete_user_media(
    services: &Services,
    _admin: &Admin,
    user_id: &UserId,
    page: PageRequest,
    order: &MediaOrder<'_>,
) -> Result<Value> {
    let (media, _) = page.take(user_media(services, user_id, order)?);
    let mut deleted = Vec::new();
    for (entry, _) in media {
        if services
            .media
            .delete(&entry.server, &entry.media_id)
            .await?
        {
            deleted.push(entry.media_id);
        }
    }
    Ok(json!({ "total": deleted.len(), "deleted_media": deleted }))
}

/// A local user's uploads with their JSON form, sorted; `400` for another server's user or a
/// bad order, `404` for an unknown one.
fn user_media(
    services: &Services,
    user_id: &UserId,
    order: &MediaOrder<'_>,
) -> Result<Vec<(MediaEntry, Value)>> {
    let field = order.order_by.unwrap_or("created_ts");
    if !ORDERS.contains(&field) {
        return Err(Error::invalid_param(format!("unknown order_by {field}")));
    }
    let newest_first = order.order_by.is_none() && order.dir.is_none();
    let backwards = parse_dir(order.dir, newest_first)?;
    local_user(services, user_id)?;
    let blocks = &services.admin.blocks;
    let mut media = Vec::new();
    for entry in services.media.iter_by_uploader(user_id)? {
        let quarantined_by = blocks.get_media_quarantine(&entry.server, &entry.media_id)?;
        let json = json!({
            "media_id": entry.media_id,
            "media_type": entry.record.content_type,
            "media_length": entry.record.size,
            "upload_name": entry.record.filename,
            "created_ts": entry.record.created_ts,
            "last_access_ts": entry.record.created_ts,
            "quarantined_by": quarantined_by,
            "safe_from_quarantine": false,
        });
        media.push((entry, json));
    }
    media.sort_by(|(_, a), (_, b)| {
        let by_field = compare(&a[field], &b[field]);
        let by_field = if backwards {
            by_field.reverse()
        } else {
            by_field
        };
        by_field.then_with(|| compare(&a["media_id"], &b["media_id"]))
    });
    Ok(media)
}

/// `400` for a user of another server, `404` for an unknown local one.
fn local_user(services: &Services, user_id: &UserId) -> Result<()> {
    if user_id.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param("can only look up local users"));
    }
    if !services.users.exists(user_id)? {
        return Err(Error::not_found(format!("user {user_id} not found")));
    }
    Ok(())
}

/// Quarantines every item of media that the room's events name (`url`, thumbnails, encrypted
/// `file`s, avatars), local or remote; answers `num_quarantined`, the distinct items named.
/// `404` for a room this server has no events of. Encrypted events name nothing readable.
pub fn quarantine_room_media(
    services: &Services,
    admin: &Admin,
    room_id: &RoomId,
) -> Result<Value> {
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(room_id)?
        .ok_or_else(|| Error::not_found(format!("room {room_id} is unknown to this server")))?;
    let mut items = BTreeSet::new();
    for entry in services.rooms.timeline.iter_before(shortroomid, u64::MAX) {
        let (_, pdu) = entry?;
        for mxc in moderation::mxcs_of_event(&pdu.content_value()) {
            if let Ok(item) = moderation::parse_mxc(mxc.as_str()) {
                items.insert(item);
            }
        }
    }
    for (server, media_id) in &items {
        services
            .admin
            .blocks
            .set_media_quarantined(server, media_id, admin.user_id(), true)?;
    }
    Ok(json!({ "num_quarantined": items.len() }))
}

/// Quarantines every upload of a local user; answers `num_quarantined`.
pub fn quarantine_user_media(
    services: &Services,
    admin: &Admin,
    user_id: &UserId,
) -> Result<Value> {
    local_user(services, user_id)?;
    let uploads = services.media.iter_by_uploader(user_id)?;
    for entry in &uploads {
        services.admin.blocks.set_media_quarantined(
            &entry.server,
            &entry.media_id,
            admin.user_id(),
            true,
        )?;
    }
    Ok(json!({ "num_quarantined": uploads.len() }))
}

/// Deletes one item of this server's media; `400` for another server's, `404` for unknown.
pub async fn delete(
    services: &Services,
    _admin: &Admin,
    server: &ServerName,
    media_id: &str,
) -> Result<Value> {
    if !services.media.is_local(server) {
        return Err(Error::invalid_param("can only delete local media"));
    }
    if !services.media.delete(server, media_id).await? {
        return Err(Error::not_found(format!("unknown media {media_id}")));
    }
    Ok(json!({ "deleted_media": [media_id], "total": 1 }))
}

/// Quarantines or releases one item (known here or not).
pub fn set_quarantine(
    services: &Services,
    admin: &Admin,
    server: &ServerName,
    media_id: &str,
    quarantined: bool,
) -> Result<Value> {
    services
        .admin
        .blocks
        .set_media_quarantined(server, media_id, admin.user_id(), quarantined)?;
    Ok(json!({}))
}

/// Deletes other servers' media cached before `before_ts`; answers how many.
pub async fn purge_cache(services: &Services, _admin: &Admin, before_ts: u64) -> Result<Value> {
    let deleted = moderation::delete_remote_before(services, before_ts).await?;
    Ok(json!({ "deleted": deleted }))
}
