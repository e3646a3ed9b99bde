//! The `users` command group: local accounts, through the users service's own operations
//! (registration's checks, password change, deactivation, device removal).

use clap::Subcommand;
use ruma::{events::room::member::MembershipState, OwnedUserId};

use super::{
    moderation::{self, ModerationCommand},
    names::local_user,
    reply::{format_timestamp, Reply},
    room::{self, server_user},
};
use crate::{
    error::{Error, Result},
    service::{
        users::{account, deactivation, devices, Device},
        Services,
    },
    util,
};

/// A user is named by full ID (`@alice:example.org`) or by localpart (`alice`).
#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Lists local accounts with their admin flag, devices and last activity.
    List,
    /// Shows one account.
    Info { user: String },
    /// Creates an account; without --password one is generated and shown.
    Create {
        localpart: String,
        #[arg(long)]
        password: Option<String>,
        /// Makes the account a server admin (invited to this room).
        #[arg(long)]
        admin: bool,
    },
    /// Sets a new password (a generated one when omitted, shown) and logs every device out.
    ResetPassword {
        user: String,
        password: Option<String>,
    },
    /// Leaves the account's rooms, logs its devices out and deactivates it for good.
    Deactivate {
        user: String,
        /// Also removes the display name and avatar (as the API's `erase`).
        #[arg(long)]
        erase: bool,
    },
    /// Makes an account a server admin and invites it to this room.
    MakeAdmin { user: String },
    /// Makes a server admin an ordinary user and kicks it from this room.
    RemoveAdmin { user: String },
    /// Lists an account's devices.
    ListDevices { user: String },
    /// Logs every device of an account out.
    LogoutAll { user: String },
    #[command(flatten)]
    Moderation(ModerationCommand),
}

/// Length of a generated password.
const GENERATED_PASSWORD_LENGTH: usize = 20;

/// Runs one `users` command.
pub async fn run(services: &Services, command: UsersCommand) -> Result<Reply> {
    match command {
        UsersCommand::List => list(services),
        UsersCommand::Info { user } => info(services, &local_user(services, &user)?),
        UsersCommand::Create {
            localpart,
            password,
            admin,
        } => create(services, &localpart, password, admin).await,
        UsersCommand::ResetPassword { user, password } => {
            reset_password(services, &local_user(services, &user)?, password).await
        }
        UsersCommand::Deactivate { user, erase } => {
            deactivate(services, &local_user(services, &user)?, erase).await
        }
        UsersCommand::MakeAdmin { user } => {
            let user_id = local_user(services, &user)?;
            room::make_admin(services, &user_id).await?;
            Ok(Reply::message(format!("{user_id} is now a server admin")))
        }
        UsersCommand::RemoveAdmin { user } => {
            let user_id = local_user(services, &user)?;
            if !services.users.is_admin(&user_id)? {
                return Err(Error::invalid_param(format!(
                    "{user_id} is not a server admin"
                )));
            }
            room::remove_admin(services, &user_id).await?;
            Ok(Reply::message(format!(
                "{user_id} is no longer a server admin"
            )))
        }
        UsersCommand::ListDevices { user } => list_devices(services, &local_user(services, &user)?),
        UsersCommand::Moderation(command) => moderation::run(services, command).await,
        UsersCommand::LogoutAll { user } => {
            let user_id = local_user(services, &user)?;
            let count = services.users.iter_devices(&user_id)?.len();
            devices::remove_all(services, &user_id, None)?;
            Ok(Reply::message(format!(
                "logged out {count} devices of {user_id}"
            )))
        }
    }
}

/// "yes" or "no".
fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// The latest time any of the devices was seen, formatted, or "never".
fn last_seen(devices: &[Device]) -> String {
    devices
        .iter()
        .filter_map(|device| device.last_seen_ts)
        .max()
        .map_or_else(|| "never".to_owned(), format_timestamp)
}

fn list(services: &Services) -> Result<Reply> {
    let server_user = server_user(services)?;
    let mut rows = Vec::new();
    for user_id in services.users.iter_user_ids().collect::<Result<Vec<_>>>()? {
        if user_id == server_user {
            continue;
        }
        let devices = services.users.iter_devices(&user_id)?;
        rows.push(vec![
            user_id.to_string(),
            yes_no(services.users.is_admin(&user_id)?),
            yes_no(services.users.is_deactivated(&user_id)?),
            devices.len().to_string(),
            last_seen(&devices),
        ]);
    }
    let headers = ["user", "admin", "deactivated", "devices", "last seen"];
    Ok(Reply::table(
        &format!("{} users", rows.len()),
        &headers,
        &rows,
    ))
}

fn info(services: &Services, user_id: &OwnedUserId) -> Result<Reply> {
    let devices = services.users.iter_devices(user_id)?;
    let display_name = services
        .users
        .get_profile(user_id)?
        .and_then(|profile| profile.get("displayname")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let joined = services
        .rooms
        .members
        .iter_rooms(user_id)?
        .into_iter()
        .filter(|room| room.membership == MembershipState::Join)
        .count();
    let rows = [
        ("display name", display_name),
        ("admin", yes_no(services.users.is_admin(user_id)?)),
        (
            "deactivated",
            yes_no(services.users.is_deactivated(user_id)?),
        ),
        ("locked", yes_no(services.admin.flags.is_locked(user_id))),
        (
            "suspended",
            yes_no(services.admin.flags.is_suspended(user_id)),
        ),
        ("devices", devices.len().to_string()),
        ("joined rooms", joined.to_string()),
        ("last seen", last_seen(&devices)),
    ]
    .map(|(field, value)| vec![field.to_owned(), value]);
    Ok(Reply::table(user_id.as_str(), &["field", "value"], &rows))
}

/// Creates an account with registration's checks (reserved and taken names), without a device.
async fn create(
    services: &Services,
    localpart: &str,
    password: Option<String>,
    admin: bool,
) -> Result<Reply> {
    let user_id = account::user_for_localpart(services, &localpart.to_lowercase())?;
    account::check_available(services, &user_id)?;
    let generated = password.is_none();
    let password = password.unwrap_or_else(|| util::random_string(GENERATED_PASSWORD_LENGTH));
    let hash = services.users.passwords.hash(password.clone()).await?;
    // The hash took a while: another registration may have taken the name meanwhile.
    account::check_available(services, &user_id)?;
    services.users.create_hashed(&user_id, &hash, None, false)?;
    tracing::info!(user = %user_id, admin, "created an account from the admin room");
    if admin {
        room::make_admin(services, &user_id).await?;
    }
    let role = if admin { "server admin" } else { "account" };
    let mut message = format!("created {role} {user_id}");
    if generated {
        message.push_str(&format!(" with password {password}"));
    }
    Ok(Reply::message(message))
}

async fn reset_password(
    services: &Services,
    user_id: &OwnedUserId,
    password: Option<String>,
) -> Result<Reply> {
    if services.users.is_deactivated(user_id)? {
        return Err(Error::invalid_param(format!("{user_id} is deactivated")));
    }
    let generated = password.is_none();
    let password = password.unwrap_or_else(|| util::random_string(GENERATED_PASSWORD_LENGTH));
    account::reset_password(services, user_id, &password, true).await?;
    let mut message = format!("reset the password of {user_id} and logged out its devices");
    if generated {
        message.push_str(&format!("; the new password is {password}"));
    }
    Ok(Reply::message(message))
}

/// Deactivates an account as `POST /account/deactivate` does (`users::deactivation`),
/// and takes away its admin flag; with `erase`, its display name and avatar go too.
async fn deactivate(services: &Services, user_id: &OwnedUserId, erase: bool) -> Result<Reply> {
    if services.users.is_deactivated(user_id)? {
        return Err(Error::invalid_param(format!(
            "{user_id} is already deactivated"
        )));
    }
    if services.users.is_admin(user_id)? {
        room::remove_admin(services, user_id).await?;
    }
    deactivation::leave_and_deactivate(services, user_id, erase).await?;
    tracing::info!(user = %user_id, erase, "deactivated from the admin room");
    let erased = if erase { " and erased" } else { "" };
    Ok(Reply::message(format!("deactivated{erased} {user_id}")))
}

fn list_devices(services: &Services, user_id: &OwnedUserId) -> Result<Reply> {
    let rows: Vec<Vec<String>> = services
        .users
        .iter_devices(user_id)?
        .into_iter()
        .map(|device| {
            vec![
                device.device_id.to_string(),
                device.display_name.unwrap_or_default(),
                device
                    .last_seen_ts
                    .map_or_else(|| "never".to_owned(), format_timestamp),
                device.last_seen_ip.unwrap_or_default(),
            ]
        })
        .collect();
    let title = format!("{} devices of {user_id}", rows.len());
    let headers = ["device", "name", "last seen", "last address"];
    Ok(Reply::table(&title, &headers, &rows))
}
