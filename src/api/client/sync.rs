//! `/sync`: initial and incremental, long-polling on the notifier.

use std::{sync::Arc, time::Duration};

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        presence::{self, State},
        sync, Services,
    },
};

/// Longest long-poll a client may ask for.
const MAX_TIMEOUT_MS: u64 = 60_000;

/// `GET /_matrix/client/v3/sync`
///
/// Returns at once when there is news after `since`, otherwise waits up to `timeout` ms for the
/// notifier to wake one of the user's topics.
/// `set_presence` (default `online`) sets the user's presence and keeps them from going offline
/// while the sync is open; `offline` leaves presence alone. The route does not count as activity
/// by itself (see `Route::without_activity`), so that a `set_presence=offline` sync does not.
/// `use_state_after=true` (or its unstable name) swaps each room's `state` for `state_after`
/// (MSC4222).
/// Untyped: ruma's `Response` leaves out empty sections (`rooms`, `presence`, `account_data`)
/// that we always send (tests read `rooms.join` of an empty sync), and its `set_presence`
/// accepts any value where we answer `M_INVALID_PARAM`.
pub async fn sync_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let since = match ctx.query("since") {
        Some(token) => Some(
            crate::service::globals::SyncToken::parse(token)
                .ok_or_else(|| Error::invalid_param(format!("invalid since token {token}")))?,
        ),
        None => None,
    };
    let timeout = ctx
        .query("timeout")
        .map(|timeout| {
            timeout
                .parse::<u64>()
                .map_err(|_| Error::invalid_param("invalid timeout"))
        })
        .transpose()?
        .unwrap_or(0)
        .min(MAX_TIMEOUT_MS);
    let full_state = ctx.query("full_state") == Some("true");
    let set_presence = match ctx.query("set_presence") {
        None => State::Online,
        Some(text) => State::parse(text)
            .ok_or_else(|| Error::invalid_param(format!("invalid set_presence {text}")))?,
    };
    let filter = services
        .users
        .sync_filter(ctx.user(), ctx.query("filter"))?;
    let state_after = sync::StateAfter::from_query(
        ctx.query(sync::state_after::STABLE_PARAM),
        ctx.query(sync::state_after::UNSTABLE_PARAM),
    );
    let _syncing = presence::start_sync(&services, ctx.user(), ctx.device(), set_presence)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
    loop {
        let request = sync::SyncRequest {
            user: ctx.user(),
            device: ctx.device(),
            since,
            full_state,
            filter: &filter,
            state_after,
        };
        if let Some(waiter) = sync::subscribe_if_caught_up(&services, &request)? {
            // Nothing to answer yet; on timeout the (empty) response is built below.
            let _ = tokio::time::timeout_at(deadline, waiter.wait()).await;
        }
        let (response, has_updates, waiter) = sync::subscribe_and_build(&services, &request)?;
        if has_updates || since.is_none() || full_state || tokio::time::Instant::now() >= deadline {
            return Ok(response);
        }
        if tokio::time::timeout_at(deadline, waiter.wait())
            .await
            .is_err()
        {
            return Ok(response);
        }
    }
}
