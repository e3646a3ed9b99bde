//! Domain logic and in-memory state, one module per domain. [`Services`] is built once in
//! `lib.rs` and handed to every handler. It holds no store handle of its own: each service keeps
//! the handles of the trees it owns and writes its own batches.

pub mod account_data;
pub mod admin;
pub mod appservice;
pub mod backup;
pub mod calls;
pub mod dehydrated;
pub mod delayed_events;
pub mod device_lists;
pub mod filter;
pub mod globals;
pub mod identity;
pub mod invite_links;
pub mod key_backup;
pub mod keys;
pub mod media;
pub mod metrics;
pub mod notify;
pub mod oauth;
pub mod policy;
pub mod presence;
pub mod privacy;
pub mod push;
pub mod rate_limits;
pub mod receipts;
pub mod received;
pub mod registration_tokens;
pub mod remote_keys;
pub mod reports;
pub mod rooms;
pub mod sending;
pub mod server_keys;
pub mod server_notices;
pub mod shared_secret;
pub mod sliding;
pub mod stats;
pub mod stories;
pub mod synapse_admin;
pub mod sync;
pub mod to_device;
pub mod typing;
pub mod uiaa;
pub mod users;
pub mod voip;

use std::sync::Arc;

use crate::{config::Config, error::Result, federation::FederationClient, store::Db};

/// Every service, built once at start-up.
pub struct Services {
    pub config: Arc<Config>,
    pub globals: globals::Globals,
    pub users: users::Users,
    pub uiaa: uiaa::Uiaa,
    pub registration_tokens: registration_tokens::RegistrationTokens,
    pub reports: reports::Reports,
    pub shared_secret: shared_secret::SharedSecretRegistration,
    pub server_notices: server_notices::ServerNotices,
    /// The admin room and its command queue.
    pub admin: admin::Admin,
    /// Application services (bridges and bots) and their event queues.
    pub appservices: appservice::Appservices,
    pub account_data: account_data::AccountData,
    /// Online backups of the database.
    pub backups: backup::Backups,
    pub rooms: rooms::Rooms,
    pub notifier: notify::Notifier,
    pub presence: presence::Presence,
    pub server_keys: server_keys::ServerKeys,
    pub sending: sending::Sending,
    pub received: received::ReceivedTransactions,
    pub typing: typing::Typing,
    pub receipts: receipts::Receipts,
    /// The member events each device was sent by lazy-loading syncs (memory only).
    pub sent_members: sync::SentMembers,
    /// Sliding-sync connections and their caches (memory only).
    pub sliding: sliding::Sliding,
    pub keys: keys::Keys,
    pub remote_keys: remote_keys::RemoteKeys,
    pub to_device: to_device::ToDevice,
    /// Dehydrated devices (MSC3814).
    pub dehydrated: dehydrated::Dehydrated,
    /// The OAuth 2.0 API's clients and codes.
    pub oauth: oauth::OAuth,
    pub key_backup: key_backup::KeyBackup,
    pub push: push::Push,
    pub media: media::Media,
    /// Prometheus metrics, served on `metrics_address`.
    pub metrics: metrics::Metrics,
    pub policy: policy::PolicyServers,
    /// The Synapse admin API's room deletions and history purges (memory only).
    pub moderation_tasks: synapse_admin::room_moderation::ModerationTasks,
    /// The rate limits' buckets (memory only).
    pub rate_limits: rate_limits::RateLimits,
    /// The counters of `server stats`.
    pub stats: stats::Stats,
    /// Invite links with expiry and use limits.
    pub invite_links: invite_links::InviteLinks,
    /// The stories index and the story rooms' facts.
    pub stories: stories::Stories,
    /// The outgoing server-server client.
    pub federation: FederationClient,
    /// The call history's index.
    pub calls: calls::Calls,
    /// Delayed events and scheduled messages (MSC4140).
    pub delayed_events: delayed_events::DelayedEvents,
}

impl Services {
    /// Opens the database and builds the services (and, once, the unread counters of a database
    /// from before they existed).
    pub fn build(config: Arc<Config>) -> Result<Arc<Self>> {
        let db = Db::open_with_budget(
            &config.database_path,
            config.sync_writes,
            config.database_memory_mb << 20,
        )?;
        let globals = globals::Globals::open(&db, &config)?;
        let admin = admin::Admin::open(&db, globals.server_name(), &config.admin_user)?;
        let appservices = appservice::Appservices::open(&db, &config, globals.server_name())?;
        let services = Arc::new(Self {
            typing: typing::Typing::open(&globals)?,
            receipts: receipts::Receipts::open(&db),
            sent_members: sync::SentMembers::default(),
            sliding: sliding::Sliding::default(),
            globals,
            users: users::Users::open(&db),
            uiaa: uiaa::Uiaa::default(),
            registration_tokens: registration_tokens::RegistrationTokens::open(&db),
            reports: reports::Reports::open(&db)?,
            shared_secret: shared_secret::SharedSecretRegistration::default(),
            server_notices: server_notices::ServerNotices::open(&db),
            admin,
            appservices,
            account_data: account_data::AccountData::open(&db),
            backups: backup::Backups::open(&db, &config),
            rooms: rooms::Rooms::open(&db)?,
            notifier: notify::Notifier::default(),
            presence: presence::Presence::open(&db, &config)?,
            server_keys: server_keys::ServerKeys::open(&db, config.trusted_key_servers()),
            sending: sending::Sending::open(&db),
            received: received::ReceivedTransactions::open(&db),
            keys: keys::Keys::open(&db),
            remote_keys: remote_keys::RemoteKeys::open(&db),
            to_device: to_device::ToDevice::open(&db),
            dehydrated: dehydrated::Dehydrated::open(&db),
            oauth: oauth::OAuth::open(&db),
            key_backup: key_backup::KeyBackup::open(&db),
            push: push::Push::open(&db),
            federation: FederationClient::new(
                config.federation_ca_file.as_deref(),
                config.federation_hosts.clone(),
                config.outbound_ip_policy(),
                std::time::Duration::from_millis(config.federation_request_timeout_ms),
            )?,
            media: media::Media::open(&db, &config)?,
            metrics: metrics::Metrics::new(&db),
            policy: policy::PolicyServers::open(&db, &config)?,
            moderation_tasks: synapse_admin::room_moderation::ModerationTasks::default(),
            rate_limits: rate_limits::RateLimits::new(&config.rate_limits),
            stats: stats::Stats::open(&db)?,
            calls: calls::Calls::open(&db),
            delayed_events: delayed_events::DelayedEvents::open(&db)?,
            invite_links: invite_links::InviteLinks::open(&db),
            stories: stories::Stories::open(&db),
            config,
        });
        push::build_unread_counters(&services)?;
        push::drain_retired_index(&services)?;
        stats::build(&services)?;
        services.stories.fill_if_needed(&services)?;
        appservice::accounts::create_senders(&services)?;
        Ok(services)
    }
}

impl Services {
    /// A request to another server, signed as this server; none to a server the admins denied.
    pub async fn federation_request(
        &self,
        destination: &ruma::ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        if self.admin.blocks.is_server_denied(destination) {
            return Err(crate::error::Error::forbidden(format!(
                "{destination} is denied by this server's admins"
            )));
        }
        self.federation
            .request(
                self.globals.server_name(),
                self.globals.signing_key(),
                destination,
                method,
                path_and_query,
                body,
            )
            .await
    }
}

/// Starts the background workers (the federation sender, the end of typing, the presence timer,
/// the admin commands and their control socket, the appservice and push senders, the delayed
/// events' timer);
/// each stops when
/// `shutdown` completes.
pub fn start_workers(
    services: &Arc<Services>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    vec![
        tokio::spawn(sending::run(Arc::clone(services), stopped.clone())),
        tokio::spawn(typing::run_expiry(Arc::clone(services), stopped.clone())),
        tokio::spawn(presence::run(Arc::clone(services), stopped.clone())),
        tokio::spawn(admin::run(Arc::clone(services), stopped.clone())),
        tokio::spawn(rooms::retention::run(Arc::clone(services), stopped.clone())),
        tokio::spawn(admin::control::serve(Arc::clone(services), stopped.clone())),
        tokio::spawn(appservice::sender::run(
            Arc::clone(services),
            stopped.clone(),
        )),
        tokio::spawn(push::sender::run(Arc::clone(services), stopped.clone())),
        tokio::spawn(delayed_events::run(Arc::clone(services), stopped)),
        watcher,
    ]
}
