//! Third-party networks: the protocols the appservices declare and the lookups of portal rooms
//! and remote users, which `service::appservice::thirdparty` passes on to them.
//!
//! Untyped: the appservices' answers are passed on as they are (ruma would drop fields it does
//! not know), and a protocol's fields are any query parameters.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    service::{
        appservice::thirdparty::{self, Lookup},
        Services,
    },
};

/// `GET /_matrix/client/v3/thirdparty/protocols`
///
/// Every protocol an appservice declares, described by the appservices that declare it.
pub async fn get_protocols(services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    Ok(Value::Object(thirdparty::get_protocols(&services).await?))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
///
/// `404 M_NOT_FOUND` when no appservice declares the protocol or none answers.
pub async fn get_protocol(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    thirdparty::get_protocol(&services, ctx.param(0)).await
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
///
/// Portal rooms matching the query's fields, from every appservice that declares the protocol;
/// `404 M_NOT_FOUND` for a protocol none declares.
pub async fn get_location_for_protocol(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let query = forwarded_query(&ctx);
    let found = thirdparty::lookup(&services, Lookup::Location, Some(ctx.param(0)), &query);
    Ok(json!(found.await?))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
///
/// Remote users matching the query's fields, from every appservice that declares the protocol;
/// `404 M_NOT_FOUND` for a protocol none declares.
pub async fn get_user_for_protocol(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let query = forwarded_query(&ctx);
    let found = thirdparty::lookup(&services, Lookup::User, Some(ctx.param(0)), &query);
    Ok(json!(found.await?))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=`
///
/// The portal rooms behind a Matrix room alias, from every appservice with a protocol.
pub async fn get_location_for_room_alias(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let query = forwarded_query(&ctx);
    let found = thirdparty::lookup(&services, Lookup::Location, None, &query);
    Ok(json!(found.await?))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=`
///
/// The remote users behind a Matrix user ID, from every appservice with a protocol.
pub async fn get_user_for_user_id(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let query = forwarded_query(&ctx);
    let found = thirdparty::lookup(&services, Lookup::User, None, &query);
    Ok(json!(found.await?))
}

/// The request's query parameters for the appservice, without the caller's credentials or
/// appservice identity assertion.
fn forwarded_query(ctx: &Ctx) -> String {
    let mut pairs: Vec<(&String, &String)> = ctx
        .query
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "access_token" | "user_id" | "device_id"))
        .collect();
    pairs.sort();
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}
