//! Dehydrated devices (MSC3814, unstable prefix `org.matrix.msc3814.v1`): upload, download and
//! delete the user's dehydrated device, and read its to-device inbox.

use std::sync::Arc;

use ruma::api::client::dehydrated_device::{
    delete_dehydrated_device::unstable as delete, get_dehydrated_device::unstable as get,
    get_events::unstable as get_events, put_dehydrated_device::unstable as put,
};
use serde_json::{json, Map, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        dehydrated::{self, NewDehydrated},
        Services,
    },
};

/// `PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`
///
/// Replaces the user's dehydrated device (see [`dehydrated::put`]).
pub async fn put_dehydrated_device(
    services: Arc<Services>,
    ctx: Ctx,
    request: put::Request,
) -> Result<put::Response> {
    let body = json!({
        "device_keys": request.device_keys,
        "one_time_keys": request.one_time_keys,
        "fallback_keys": request.fallback_keys,
    });
    let keys = dehydrated::keys_from(body.as_object().unwrap_or(&Map::new()));
    let device_data: Value = serde_json::to_value(&request.device_data).map_err(Error::internal)?;
    let new = NewDehydrated {
        device_id: request.device_id,
        display_name: request.initial_device_display_name,
        device_data,
        keys,
    };
    let device_id = dehydrated::put(&services, ctx.user(), new)?;
    Ok(put::Response::new(device_id))
}

/// `GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`
pub async fn get_dehydrated_device(
    services: Arc<Services>,
    ctx: Ctx,
    _request: get::Request,
) -> Result<get::Response> {
    let record = dehydrated::current(&services, ctx.user())?
        .ok_or_else(|| Error::not_found("no dehydrated device available"))?;
    let device_data = ruma::serde::Raw::from_json(
        serde_json::value::to_raw_value(&record.device_data).map_err(Error::internal)?,
    );
    Ok(get::Response::new(record.device_id, device_data))
}

/// `DELETE /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`
pub async fn delete_dehydrated_device(
    services: Arc<Services>,
    ctx: Ctx,
    _request: delete::Request,
) -> Result<delete::Response> {
    let device_id = dehydrated::delete(&services, ctx.user())?;
    Ok(delete::Response::new(device_id))
}

/// `POST /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events`
///
/// The first draft's form, which matrix-rust-sdk sends: `next_batch` in the body, and always
/// one in the answer.
pub async fn post_dehydrated_events(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_events::Request,
) -> Result<get_events::Response> {
    let after = dehydrated::parse_token(request.next_batch.as_deref())?;
    let answer = dehydrated::events(
        &services,
        ctx.user(),
        request.device_id.as_str(),
        after,
        dehydrated::MAX_EVENTS,
    )?;
    let events = answer
        .events
        .into_iter()
        .map(|event| {
            serde_json::value::to_raw_value(&event)
                .map(ruma::serde::Raw::from_json)
                .map_err(Error::internal)
        })
        .collect::<Result<_>>()?;
    let mut response = get_events::Response::new(events);
    response.next_batch = Some(answer.next_batch.to_string());
    Ok(response)
}

/// `GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events`
///
/// The later draft's form: `from` and `limit` in the query, `next_batch` only while more
/// messages may follow.
/// Untyped: ruma has only the `POST` form.
pub async fn get_dehydrated_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let after = dehydrated::parse_token(ctx.query("from"))?;
    let limit = match ctx.query("limit") {
        None => dehydrated::MAX_EVENTS,
        Some(limit) => limit
            .parse()
            .map_err(|_| Error::invalid_param("limit must be a number"))?,
    };
    let answer = dehydrated::events(&services, ctx.user(), ctx.param(0), after, limit)?;
    let mut body = json!({ "events": answer.events });
    if answer.limited {
        body["next_batch"] = json!(answer.next_batch.to_string());
    }
    Ok(body)
}
