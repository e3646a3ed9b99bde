//! Media as Synapse's admin API handles it: a user's uploads, deleting one item, quarantine,
//! and purging the remote media cache (`media::moderation` does the work).

use ruma::{ServerName, UserId};
use serde_json::{json, Value};

use super::{Admin, PageRequest};
use crate::{
    error::{Error, Result},
    service::{media::moderation, Services},
};

/// A page of the media a local user uploaded, newest first.
pub fn list_user_media(
    services: &Services,
    _admin: &Admin,
    user_id: &UserId,
    page: PageRequest,
) -> Result<Value> {
    if user_id.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param("can only look up local users"));
    }
    if !services.users.exists(user_id)? {
        return Err(Error::not_found(format!("user {user_id} not found")));
    }
    let blocks = &services.admin.blocks;
    let mut entries = services.media.iter_by_uploader(user_id)?;
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.record.created_ts));
    let total = entries.len();
    let (entries, next) = page.take(entries);
    let mut media = Vec::with_capacity(entries.len());
    for entry in entries {
        let quarantined_by = blocks.get_media_quarantine(&entry.server, &entry.media_id)?;
        media.push(json!({
            "media_id": entry.media_id,
            "media_type": entry.record.content_type,
            "media_length": entry.record.size,
            "upload_name": entry.record.filename,
            "created_ts": entry.record.created_ts,
            "last_access_ts": entry.record.created_ts,
            "quarantined_by": quarantined_by,
            "safe_from_quarantine": false,
        }));
    }
    let mut answer = json!({ "media": media, "total": total });
    if let Some(next) = next {
        answer["next_token"] = json!(next);
    }
    Ok(answer)
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
