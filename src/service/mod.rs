//! Domain logic and in-memory state, one module per domain. [`Services`] is built once in
//! `lib.rs` and handed to every handler.

pub mod account_data;
pub mod filter;
pub mod globals;
pub mod notify;
pub mod rooms;
pub mod sync;
pub mod uiaa;
pub mod users;

use std::sync::Arc;

use crate::{config::Config, error::Result, store::Db};

/// Every service, built once at start-up.
pub struct Services {
    pub config: Arc<Config>,
    pub db: Arc<Db>,
    pub globals: globals::Globals,
    pub users: users::Users,
    pub uiaa: uiaa::Uiaa,
    pub account_data: account_data::AccountData,
    pub rooms: rooms::Rooms,
    pub notifier: notify::Notifier,
}

impl Services {
    /// Opens the database and builds the services.
    pub fn build(config: Arc<Config>) -> Result<Arc<Self>> {
        let db = Db::open(&config.database_path, config.sync_writes)?;
        Ok(Arc::new(Self {
            globals: globals::Globals::open(&db, &config)?,
            users: users::Users::open(&db),
            uiaa: uiaa::Uiaa::default(),
            account_data: account_data::AccountData::open(&db),
            rooms: rooms::Rooms::open(&db)?,
            notifier: notify::Notifier::default(),
            config,
            db,
        }))
    }
}
