//! Profiles: display name and avatar, propagated to joined rooms as member events.

use std::sync::Arc;

use ruma::events::room::member::MembershipState;
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        rooms::timeline::{create_and_commit, PduBuilder},
        Services,
    },
};

/// `GET /_matrix/client/v3/profile/{userId}`
///
/// A user of another server is asked for through that server's `/query/profile`.
pub async fn get_profile(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user_id = ctx.user_param(0)?;
    Ok(Value::Object(profile_of(&services, &user_id).await?))
}

/// The profile of a local user, or of a remote one over federation.
async fn profile_of(
    services: &Services,
    user_id: &ruma::UserId,
) -> Result<serde_json::Map<String, Value>, Error> {
    if user_id.server_name() != services.globals.server_name() {
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            crate::service::rooms::handshake::encode(user_id.as_str())
        );
        let answer = services
            .federation_request(user_id.server_name(), http::Method::GET, &path, None)
            .await?;
        let Value::Object(mut profile) = answer else {
            return Err(Error::not_found(format!("profile of {user_id} not found")));
        };
        profile.retain(|_, value| !value.is_null());
        return Ok(profile);
    }
    services
        .users
        .get_profile(user_id)?
        .ok_or_else(|| Error::not_found(format!("profile of {user_id} not found")))
}

/// `GET /_matrix/client/v3/profile/{userId}/{keyName}`
pub async fn get_profile_field(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user_id = ctx.user_param(0)?;
    let profile = profile_of(&services, &user_id).await?;
    let field = ctx.param(1);
    let value = profile
        .get(field)
        .cloned()
        .ok_or_else(|| Error::not_found(format!("{user_id} has no {field}")))?;
    Ok(json!({ field: value }))
}

/// `PUT /_matrix/client/v3/profile/{userId}/{keyName}`
///
/// `displayname` and `avatar_url` changes become new member events in every joined room.
pub async fn set_profile_field(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user_id = ctx.user_param(0)?;
    if user_id != ctx.user() {
        return Err(Error::forbidden("cannot change another user's profile"));
    }
    let field = ctx.param(1).to_owned();
    if field.len() > 255 {
        return Err(Error::bad_json("profile field name too long"));
    }
    let value = ctx
        .body
        .get(&field)
        .cloned()
        .ok_or_else(|| Error::bad_json(format!("missing {field}")))?;
    if value.to_string().len() > 4096 {
        return Err(Error::matrix(
            ruma::api::error::ErrorKind::TooLarge,
            "profile value too large",
        ));
    }
    let value = if value.is_null() { None } else { Some(value) };
    services.users.set_profile_field(&user_id, &field, value)?;
    if field == "displayname" || field == "avatar_url" {
        propagate(&services, &user_id).await?;
    }
    Ok(json!({}))
}

/// `DELETE /_matrix/client/v3/profile/{userId}/{keyName}`
pub async fn delete_profile_field(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user_id = ctx.user_param(0)?;
    if user_id != ctx.user() {
        return Err(Error::forbidden("cannot change another user's profile"));
    }
    services
        .users
        .set_profile_field(&user_id, ctx.param(1), None)?;
    if ctx.param(1) == "displayname" || ctx.param(1) == "avatar_url" {
        propagate(&services, &user_id).await?;
    }
    Ok(json!({}))
}

async fn propagate(services: &Services, user_id: &ruma::UserId) -> crate::error::Result<()> {
    let profile = services.users.get_profile(user_id)?.unwrap_or_default();
    for membership in services.rooms.members.iter_rooms(user_id)? {
        if membership.membership != MembershipState::Join {
            continue;
        }
        let Some(current) = services.rooms.current_state_pdu(
            &membership.room_id,
            &ruma::events::StateEventType::RoomMember,
            user_id.as_str(),
        )?
        else {
            continue;
        };
        let mut content = current.content_value();
        for field in ["displayname", "avatar_url"] {
            match profile.get(field) {
                Some(value) => content[field] = value.clone(),
                None => {
                    if let Some(map) = content.as_object_mut() {
                        map.remove(field);
                    }
                }
            }
        }
        create_and_commit(
            services,
            &membership.room_id,
            user_id,
            PduBuilder::state("m.room.member", user_id.as_str(), content),
            None,
        )
        .await?;
    }
    Ok(())
}
