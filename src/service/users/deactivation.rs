//! An admin's deactivation of an account, shared by the admin room and the Synapse admin API:
//! the account leaves its rooms (`rooms::membership`), so this sits above the room services,
//! then `users::account::deactivate` runs.

use ruma::UserId;

use crate::{
    error::Result,
    service::{rooms::membership, users::account, Services},
};

/// Deactivates an account for an admin: it leaves every room it is joined or invited to, then
/// `account::deactivate` runs; with `erase`, its display name and avatar are removed too.
pub async fn leave_and_deactivate(
    services: &Services,
    user_id: &UserId,
    erase: bool,
) -> Result<()> {
    membership::leave_all(services, user_id).await?;
    account::deactivate(services, user_id)?;
    if erase {
        for field in ["displayname", "avatar_url"] {
            services.users.set_profile_field(user_id, field, None)?;
        }
    }
    Ok(())
}
