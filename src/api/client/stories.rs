//! Stories (`docs/stories.md`): the Plait endpoint that lists the current stories of the caller's
//! story rooms.

use std::sync::Arc;

use crate::{
    api::{Ctx, HandlerResult},
    service::{stories, Services},
    util,
};

/// `GET /_plait/client/v1/stories`
///
/// The current stories of the story rooms the caller is joined to, newest first; for the
/// caller's own rooms each story also has `view_count` and `viewers`.
/// Untyped: a Plait endpoint, with no ruma request type.
pub async fn get_stories(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    stories::list(&services, ctx.user(), util::now_millis())
}
