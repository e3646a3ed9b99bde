//! The call history (`docs/calls.md`), a Plait extension under `/_plait/client/v1/`.

use std::sync::Arc;

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{calls, Services},
};

/// `GET /_plait/client/v1/calls`
///
/// The user's calls, newest first: `from` (a `next_batch`) and `limit` (1 to 100, default 20).
/// A `from` that does not parse is `400 M_INVALID_PARAM`.
pub async fn get_calls(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let limit = ctx
        .query("limit")
        .map(|limit| {
            limit
                .parse::<usize>()
                .map_err(|_| Error::invalid_param("limit must be a whole number"))
        })
        .transpose()?;
    calls::list(&services, ctx.user(), ctx.query("from"), limit)
}
