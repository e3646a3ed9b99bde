//! The route table: every endpoint with its method, path template and authentication, one
//! function per area of the spec, in a file per part of the API: the client-server API by topic
//! (`account`, `rooms`, `calls`, `sync`, `keys`), the content repository (`media`) and the server-server
//! API (`federation`), and Synapse's admin API (`synapse_admin`, with its registration and
//! notices in `account`). Paths use `{name}` parameters as the spec writes them.

mod account;
mod calls;
mod federation;
mod keys;
mod media;
mod moderation;
mod rooms;
mod synapse_admin;
mod sync;

use super::Route;

/// Every served route. The order does not matter: `http::router` groups the routes by path.
pub fn all() -> Vec<Route> {
    let tables: [fn() -> Vec<Route>; 37] = [
        account::discovery,
        account::account,
        account::appservices,
        account::oauth,
        account::devices,
        account::profiles_and_presence,
        account::synapse_admin,
        synapse_admin::users,
        synapse_admin::moderation,
        synapse_admin::rooms,
        synapse_admin::registration_tokens,
        synapse_admin::reports,
        moderation::rooms,
        moderation::federation,
        moderation::media,
        rooms::rooms,
        rooms::membership,
        rooms::state,
        rooms::events,
        rooms::directory,
        calls::calls,
        rooms::social,
        sync::sync_and_ephemeral,
        sync::push_rules,
        sync::pushers,
        sync::account_data,
        keys::keys,
        keys::backup_versions,
        keys::backup_keys,
        keys::dehydrated_devices,
        media::client,
        media::unauthenticated,
        media::federation,
        federation::events,
        federation::membership,
        federation::queries,
        federation::keys,
    ];
    tables.into_iter().flat_map(|table| table()).collect()
}
