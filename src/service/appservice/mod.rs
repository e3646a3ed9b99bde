//! Application services (bridges and bots, spec v1.19 "Application Service API"): the registered
//! appservices with their compiled namespaces, the `as_token` authentication of their requests
//! (`user_id` masquerading within the user namespaces), exclusive namespaces, and the durable
//! queue of events each one receives (`queue.rs`, sent by `sender.rs`) with the ephemeral
//! events, to-device messages and device list changes beside them (`extras.rs`).
//!
//! Registrations come from the YAML files of `appservice_dir` (read at start; a bad file is
//! logged by name and left out) and from `!admin appservices register` (kept in
//! `appserviceid_registration`, so they survive restarts). The set is swapped whole, so a
//! request sees one consistent set.

pub mod accounts;
pub mod extras;
pub mod matcher;
pub mod queue;
pub mod registration;
pub mod sender;
pub mod thirdparty;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use parking_lot::{Mutex, RwLock};
use ruma::{api::error::ErrorKind, OwnedDeviceId, OwnedUserId, RoomAliasId, ServerName, UserId};

pub use registration::{Appservice, Registration};

use crate::{
    crypto,
    error::{Error, Result},
    store::{Db, Tree},
};

/// The device ID of an appservice request that names no device (`device_id` masquerading):
/// handlers that key on a device (transaction IDs) see this one.
pub const NO_DEVICE: &str = "_appservice";

/// Where a registration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    AdminRoom,
}

impl std::fmt::Display for Source {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(formatter, "file {}", path.display()),
            Source::AdminRoom => formatter.write_str("admin room"),
        }
    }
}

/// The registered appservices, swapped whole on a change.
#[derive(Default)]
pub struct Registry {
    pub appservices: Vec<(Arc<Appservice>, Source)>,
    /// Registrations left out, each with its source and reason.
    pub problems: Vec<String>,
    by_token: HashMap<[u8; 32], usize>,
    /// Every appservice's namespaces in one set per kind, in `appservices` order.
    pub matcher: matcher::Matcher,
}

impl Registry {
    /// Adds a registration unless its id or `as_token` is taken or it does not compile; a
    /// refused one is recorded in `problems`.
    fn add(&mut self, registration: Result<Registration>, source: Source, server: &ServerName) {
        let compiled =
            registration.and_then(|registration| Appservice::compile(registration, server));
        let refused = match compiled {
            Ok(appservice) if self.get(appservice.id()).is_some() => {
                format!("duplicate id {}", appservice.id())
            }
            Ok(appservice) if self.by_token.contains_key(&appservice.as_token_hash) => {
                format!("{}: as_token already used", appservice.id())
            }
            Ok(appservice) => {
                self.by_token
                    .insert(appservice.as_token_hash, self.appservices.len());
                self.appservices.push((Arc::new(appservice), source));
                return;
            }
            Err(error) => error.to_string(),
        };
        tracing::error!(%source, reason = %refused, "appservice registration left out");
        self.problems.push(format!("{source}: {refused}"));
    }

    /// Compiles the combined namespaces once every registration is in.
    fn finish(&mut self) {
        let appservices: Vec<&Appservice> = self
            .appservices
            .iter()
            .map(|(appservice, _)| &**appservice)
            .collect();
        self.matcher = matcher::Matcher::compile(&appservices);
    }

    /// The appservice with `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<Appservice>> {
        self.appservices
            .iter()
            .map(|(appservice, _)| appservice)
            .find(|appservice| appservice.id() == id)
    }
}

/// Owns `appserviceid_registration` (id → the registration as JSON, for those registered in the
/// admin room) and, through `queue.rs`, `appserviceidcount_outgoing` (id 0xff count u64 → room
/// ID 0xff event ID; the count is the event's stream position).
pub struct Appservices {
    db: Arc<Db>,
    appserviceid_registration: Tree,
    appserviceidcount_outgoing: Tree,
    server_name: ruma::OwnedServerName,
    directory: Option<PathBuf>,
    registry: RwLock<Arc<Registry>>,
    /// The client for appservice URLs. Not under the outgoing address policy: an appservice's
    /// URL is set by an admin (a file or the admin room), and is usually on loopback.
    client: reqwest::Client,
    /// One wake-up per appservice worker, and the channel that starts new workers.
    workers: sender::Workers,
    /// Serialises registry changes (admin commands), so none is lost.
    changing: Mutex<()>,
}

impl Appservices {
    /// Opens the trees and reads the registrations: files first (in name order), then those
    /// made in the admin room.
    pub fn open(db: &Arc<Db>, config: &crate::config::Config, server: &ServerName) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(sender::REQUEST_TIMEOUT)
            .build()
            .map_err(|error| Error::Internal(format!("building the appservice client: {error}")))?;
        let appservices = Self {
            db: Arc::clone(db),
            appserviceid_registration: db.tree("appserviceid_registration"),
            appserviceidcount_outgoing: db.tree("appserviceidcount_outgoing"),
            server_name: server.to_owned(),
            directory: config.appservice_dir.clone(),
            registry: RwLock::new(Arc::default()),
            client,
            workers: sender::Workers::default(),
            changing: Mutex::new(()),
        };
        appservices.reload()?;
        Ok(appservices)
    }

    /// Reads every registration again and swaps the set.
    fn reload(&self) -> Result<()> {
        let mut registry = Registry::default();
        if let Some(directory) = &self.directory {
            for (path, text) in read_directory(directory)? {
                let parsed = text.and_then(|text| registration::parse(&text));
                registry.add(parsed, Source::File(path), &self.server_name);
            }
        }
        for entry in self.appserviceid_registration.iter_prefix(&[]) {
            let (_, value) = entry?;
            let parsed = serde_json::from_slice(&value)
                .map_err(|error| Error::corrupt("appserviceid_registration", error));
            registry.add(parsed, Source::AdminRoom, &self.server_name);
        }
        registry.finish();
        tracing::info!(
            appservices = registry.appservices.len(),
            left_out = registry.problems.len(),
            "appservices loaded"
        );
        *self.registry.write() = Arc::new(registry);
        Ok(())
    }

    /// The current set.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry.read())
    }

    /// Registers (or replaces) an appservice from the admin room; `M_INVALID_PARAM` with the
    /// reason when it is not valid or clashes with another. Returns it.
    pub fn register(&self, registration: Registration) -> Result<Arc<Appservice>> {
        let _changing = self.changing.lock();
        let id = registration.id.clone();
        let current = self.registry();
        if let Some((_, Source::File(path))) = current
            .appservices
            .iter()
            .find(|(appservice, _)| appservice.id() == id)
        {
            return Err(Error::invalid_param(format!(
                "appservice {id} is registered by {}",
                path.display()
            )));
        }
        let mut check = Registry::default();
        for (appservice, source) in &current.appservices {
            if appservice.id() != id {
                let copy = Ok(appservice.registration.clone());
                check.add(copy, source.clone(), &self.server_name);
            }
        }
        check.add(
            Ok(registration.clone()),
            Source::AdminRoom,
            &self.server_name,
        );
        if let Some(problem) = check.problems.last() {
            return Err(Error::invalid_param(problem.clone()));
        }
        let json = serde_json::to_vec(&registration).map_err(Error::internal)?;
        self.appserviceid_registration
            .insert(id.as_bytes(), &json)?;
        self.reload()?;
        let appservice = self
            .registry()
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("appservice {id} vanished")))?;
        self.workers.start(appservice.id());
        Ok(appservice)
    }

    /// Removes an appservice registered in the admin room, with its queue.
    pub fn unregister(&self, id: &str) -> Result<()> {
        let _changing = self.changing.lock();
        if self.appserviceid_registration.get(id.as_bytes())?.is_none() {
            return Err(Error::not_found(format!(
                "no appservice {id} was registered in the admin room"
            )));
        }
        self.appserviceid_registration.remove(id.as_bytes())?;
        self.reload()?;
        self.workers.wake(id);
        Ok(())
    }

    /// The appservice whose `as_token` `token` is: the token is hashed and looked up by its
    /// hash, so the comparison takes the same time whatever the token.
    pub fn find_by_token(&self, token: &str) -> Option<Arc<Appservice>> {
        let registry = self.registry();
        let index = *registry.by_token.get(&crypto::token_hash(token))?;
        registry
            .appservices
            .get(index)
            .map(|(appservice, _)| Arc::clone(appservice))
    }

    /// The user and device an appservice request acts as: `user_id` (masquerading) or the
    /// appservice's sender, and `device_id` (MSC3202, MSC4326) or [`NO_DEVICE`].
    /// `M_FORBIDDEN` for a user outside its namespaces or a user that does not exist (but the
    /// sender), `M_UNKNOWN_DEVICE` for a device the user does not have.
    pub fn acting_as(
        &self,
        users: &crate::service::users::Users,
        appservice: &Appservice,
        user_id: Option<&str>,
        device_id: Option<&str>,
    ) -> Result<(OwnedUserId, OwnedDeviceId)> {
        let user = match user_id {
            Some(user_id) => OwnedUserId::try_from(user_id)
                .map_err(|_| Error::invalid_param(format!("invalid user_id {user_id}")))?,
            None => appservice.sender.clone(),
        };
        if !appservice.is_user_match(&user) || user.server_name() != self.server_name {
            return Err(Error::forbidden(format!(
                "{user} is not in the namespace of appservice {}",
                appservice.id()
            )));
        }
        if user != appservice.sender && !users.exists(&user)? {
            return Err(Error::forbidden(format!(
                "appservice {} has not registered {user}",
                appservice.id()
            )));
        }
        let device = match device_id {
            Some(device_id) if users.get_device(&user, device_id)?.is_some() => {
                OwnedDeviceId::from(device_id)
            }
            // MSC4326: a device the user does not have is `400 M_UNKNOWN_DEVICE`.
            Some(device_id) => {
                return Err(Error::custom(
                    "M_UNKNOWN_DEVICE",
                    format!("{user} has no device {device_id}"),
                ))
            }
            None => OwnedDeviceId::from(NO_DEVICE),
        };
        Ok((user, device))
    }

    /// Whether `user_id` belongs to an appservice registered with `rate_limited: false` (its
    /// sender or a user of its namespaces): its requests skip the rate limits.
    pub fn is_exempt_from_rate_limits(&self, user_id: &UserId) -> bool {
        self.registry
            .read()
            .appservices
            .iter()
            .any(|(appservice, _)| {
                appservice.is_exempt_from_rate_limits() && appservice.is_user_match(user_id)
            })
    }

    /// `M_EXCLUSIVE` when `user_id` is in an appservice's exclusive user namespace and
    /// `appservice` (the caller, if one) is not that appservice.
    pub fn check_user_not_exclusive(
        &self,
        user_id: &UserId,
        appservice: Option<&Appservice>,
    ) -> Result<()> {
        self.check_not_exclusive(user_id.as_str(), appservice, |owner| &owner.users)
    }

    /// `M_EXCLUSIVE` when `alias` is in an appservice's exclusive alias namespace and
    /// `appservice` (the caller, if one) is not that appservice.
    pub fn check_alias_not_exclusive(
        &self,
        alias: &RoomAliasId,
        appservice: Option<&Appservice>,
    ) -> Result<()> {
        self.check_not_exclusive(alias.as_str(), appservice, |owner| &owner.aliases)
    }

    fn check_not_exclusive(
        &self,
        text: &str,
        caller: Option<&Appservice>,
        set: impl Fn(&Appservice) -> &registration::NamespaceSet,
    ) -> Result<()> {
        let registry = self.registry();
        let owner = registry
            .appservices
            .iter()
            .map(|(appservice, _)| appservice)
            .find(|appservice| set(appservice).is_exclusive_match(text));
        match owner {
            Some(owner) if caller.is_none_or(|caller| caller.id() != owner.id()) => {
                Err(Error::matrix(
                    ErrorKind::Exclusive,
                    format!("{text} is reserved by an appservice"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The registration files of a folder (`*.yaml`, `*.yml`) in name order, each with its text or
/// the reason it could not be read.
fn read_directory(directory: &Path) -> Result<Vec<(PathBuf, Result<String>)>> {
    let entries = std::fs::read_dir(directory).map_err(|error| {
        Error::Config(format!(
            "cannot read appservice_dir {}: {error}",
            directory.display()
        ))
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml" || extension == "yml")
        })
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .map_err(|error| Error::Config(format!("cannot read the file: {error}")));
            (path, text)
        })
        .collect())
}
