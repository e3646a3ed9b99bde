//! Profiles: display name and avatar, propagated to joined rooms as member events.

use std::sync::Arc;

use ruma::{
    api::client::profile::{delete_profile_field, get_profile, get_profile_field},
    events::room::member::MembershipState,
    profile::ProfileFieldValue,
};
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        privacy::{self, Viewer},
        rooms::timeline::{create_and_commit, PduBuilder},
        Services,
    },
};

/// `GET /_matrix/client/v3/profile/{userId}`
///
/// A user of another server is asked for through that server's `/query/profile`.
pub async fn get_profile(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_profile::v3::Request,
) -> Result<get_profile::v3::Response> {
    Ok(profile_of(&services, &request.user_id, ctx.user.as_deref())
        .await?
        .into_iter()
        .collect())
}

/// The profile of a local user as `viewer` (the caller, when a token came with the request) may
/// see it (`service::privacy`), or of a remote one
/// over federation (whose server applies its own rules).
async fn profile_of(
    services: &Services,
    user_id: &ruma::UserId,
    viewer: Option<&ruma::UserId>,
) -> Result<serde_json::Map<String, Value>> {
    if user_id.server_name() != services.globals.server_name() {
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            crate::federation::encode(user_id.as_str())
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
    if !services.users.exists(user_id)? {
        // An appservice may create a user of its namespace on demand.
        crate::service::appservice::sender::query_user(services, user_id).await?;
    }
    let mut profile = services
        .users
        .get_profile(user_id)?
        .ok_or_else(|| Error::not_found(format!("profile of {user_id} not found")))?;
    let viewer = viewer.map_or(Viewer::Anyone, Viewer::User);
    privacy::filter_profile(services, user_id, viewer, &mut profile)?;
    Ok(profile)
}

/// `GET /_matrix/client/v3/profile/{userId}/{keyName}`
pub async fn get_profile_field(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_profile_field::v3::Request,
) -> Result<get_profile_field::v3::Response> {
    let (user_id, field) = (request.user_id, request.field);
    let mut profile = profile_of(&services, &user_id, ctx.user.as_deref()).await?;
    let value = profile
        .remove(field.as_str())
        .ok_or_else(|| Error::not_found(format!("{user_id} has no {field}")))?;
    let value = ProfileFieldValue::new(field.as_str(), value).map_err(Error::internal)?;
    Ok(get_profile_field::v3::Response::new(value))
}

/// `PUT /_matrix/client/v3/profile/{userId}/{keyName}`
///
/// `displayname` and `avatar_url` changes become new member events in every joined room.
/// A suspended account gets `403 M_USER_SUSPENDED` (spec v1.18, "Account suspension").
/// Untyped: a `null` value clears the field here, ruma's request refuses it for known fields.
pub async fn set_profile_field(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user_id = ctx.user_param(0)?;
    ctx.require_self(&user_id, "change the profile of")?;
    services.admin.flags.check_not_suspended(ctx.user())?;
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
pub async fn delete_profile_field(
    services: Arc<Services>,
    ctx: Ctx,
    request: delete_profile_field::v3::Request,
) -> Result<delete_profile_field::v3::Response> {
    let (user_id, field) = (request.user_id, request.field);
    ctx.require_self(&user_id, "change the profile of")?;
    services.admin.flags.check_not_suspended(ctx.user())?;

    services
        .users
        .set_profile_field(&user_id, field.as_str(), None)?;
    if field.as_str() == "displayname" || field.as_str() == "avatar_url" {
        propagate(&services, &user_id).await?;
    }
    Ok(delete_profile_field::v3::Response::new())
}

async fn propagate(services: &Services, user_id: &ruma::UserId) -> Result<()> {
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
