//! Simplified sliding sync (MSC4186): the thin handler over `service::sliding`.

use std::{sync::Arc, time::Duration};

use ruma::api::client::sync::sync_events::v5;

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        presence::{self, State},
        sliding, Services,
    },
};

/// Longest long-poll a client may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`
///
/// Answers at once on a new connection (no `pos`) or when there is news since `pos`; otherwise
/// waits up to `timeout` for the notifier to wake one of the user's topics, as `/sync` does.
/// Errors: `M_UNKNOWN_POS` for a `pos` this connection does not hold, `M_INVALID_PARAM` for
/// ranges out of order or too wide, `M_BAD_JSON` for filters of the wrong type.
/// `set_presence` works as on `/sync`.
/// Untyped: ruma's `Request` parses the request, but the list filters MSC4186 adds (`spaces`,
/// `tags`, `not_tags`) are read from the body, and the response is built as JSON like `/sync`'s.
pub async fn sync_events_v5(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let body = ctx.parse::<v5::Request>()?;
    let extra_filters = sliding::extra_filters(&ctx.body)?;
    let set_presence = State::parse(body.set_presence.as_str()).ok_or_else(|| {
        Error::invalid_param(format!("invalid set_presence {}", body.set_presence))
    })?;
    let request = sliding::SlidingRequest {
        user: ctx.user(),
        device: ctx.device(),
        body: &body,
        extra_filters: &extra_filters,
    };
    let base = sliding::start(&services, &request)?;
    let _syncing = presence::start_sync(&services, ctx.user(), ctx.device(), set_presence)?;
    let timeout = body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (built, waiter) = sliding::subscribe_and_build(&services, &request, base.as_deref())?;
        if built.has_updates || base.is_none() || tokio::time::Instant::now() >= deadline {
            return Ok(sliding::finish(&services, &request, built));
        }
        if tokio::time::timeout_at(deadline, waiter.wait())
            .await
            .is_err()
        {
            return Ok(sliding::finish(&services, &request, built));
        }
    }
}
