//! Synapse admin API handlers for event reports (`docs/admin_api.md`, "Event reports"): each
//! checks that the caller is an admin and calls one operation of `service::reports`.

use std::sync::Arc;

use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        reports::{self, ReportQuery},
        synapse_admin::{parse_dir, Admin, PageRequest},
        Services,
    },
};

/// `GET /_synapse/admin/v1/event_reports`
///
/// A page of event reports (`from`, `limit`), newest first unless `dir=f`, filtered by
/// `user_id` (the reporter), `room_id` and `event_sender_user_id`.
pub async fn list_event_reports(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Admin::check(&services, ctx.user())?;
    let page = PageRequest::parse(ctx.query("from"), ctx.query("limit"))?;
    let forwards = !parse_dir(ctx.query("dir"), true)?;
    let query = ReportQuery {
        from: page.from,
        limit: page.limit,
        forwards,
        reporter: ctx.query("user_id"),
        room_id: ctx.query("room_id"),
        sender: ctx.query("event_sender_user_id"),
    };
    reports::list_event_reports(&services, &query)
}

/// `GET /_synapse/admin/v1/event_reports/{reportId}`
pub async fn get_event_report(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Admin::check(&services, ctx.user())?;
    reports::get_event_report(&services, report_id(&ctx)?)
}

/// `DELETE /_synapse/admin/v1/event_reports/{reportId}`
pub async fn delete_event_report(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Admin::check(&services, ctx.user())?;
    reports::delete_event_report(&services, report_id(&ctx)?)?;
    Ok(json!({}))
}

/// The report ID of the path: a positive integer (`M_INVALID_PARAM` otherwise).
fn report_id(ctx: &Ctx) -> Result<u64> {
    ctx.param(0)
        .parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Error::invalid_param(format!("invalid report ID {}", ctx.param(0))))
}
