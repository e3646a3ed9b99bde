//! Server-wide facts: the server name, the signing key, the global stream counter and the
//! reserved range of the typing counter.
//!
//! Server name (fixed at first start), the signing key (generated on first start, stored as PKCS#8 with a versioned key ID), and the global stream counter used for `/sync` tokens.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use ruma::{OwnedServerName, ServerName};

use crate::{
    config::Config,
    crypto::SigningKey,
    error::{Error, Result},
    store::{key, Batch, Db, Tree},
};

/// Owns the `global` tree: `b"server_name"` → text, `b"signing_key"` → version 0xff PKCS#8,
/// `b"count"` → u64 (the last stream position handed out), `b"typing_reserved"` → u64 (typing
/// positions up to here may have been handed out; see [`Globals::reserve_typing`]) and
/// `b"typing_run_start"` → u64 (the first typing position of the latest run).
pub struct Globals {
    db: Arc<Db>,
    global: Tree,
    server_name: OwnedServerName,
    signing_key: SigningKey,
    count: AtomicU64,
    /// Serialises the allocation of stream positions with their batch writes, so that positions
    /// become visible in order.
    pub(crate) commit_lock: parking_lot::Mutex<()>,
}

impl Globals {
    /// Loads (or on first start creates) the persisted globals.
    pub fn open(db: &Arc<Db>, config: &Config) -> Result<Self> {
        let global = db.tree("global");
        let server_name = config.server_name().to_owned();
        match global.get(b"server_name")? {
            Some(stored) if stored != server_name.as_bytes() => {
                return Err(Error::Config(format!(
                    "the database belongs to server `{}`, but server_name is `{server_name}`",
                    String::from_utf8_lossy(&stored)
                )))
            }
            Some(_) => {}
            None => global.insert(b"server_name", server_name.as_bytes())?,
        }
        let signing_key = match global.get(b"signing_key")? {
            Some(stored) => {
                let mut parts = stored.splitn(2, |byte| *byte == key::SEP);
                let version = std::str::from_utf8(parts.next().unwrap_or_default())
                    .map_err(|e| Error::corrupt("global", e))?;
                let document = parts
                    .next()
                    .ok_or_else(|| Error::corrupt("global", "signing key without version"))?;
                SigningKey::from_pkcs8(document, version)
                    .map_err(|e| Error::corrupt("global", e))?
            }
            None => {
                let version = format!("a_{}", crate::util::random_string(4));
                let created = SigningKey::generate(&version).map_err(Error::internal)?;
                global.insert(
                    b"signing_key",
                    &key::join(&[version.as_bytes(), created.pkcs8()]),
                )?;
                created
            }
        };
        // The server name and a new signing key are on disk before anything signed with it
        // leaves the server.
        db.durable_blocking()?;
        let count = global
            .get(b"count")?
            .and_then(|bytes| key::read_u64(&bytes))
            .unwrap_or(0);
        Ok(Self {
            db: Arc::clone(db),
            global,
            server_name,
            signing_key,
            count: AtomicU64::new(count),
            commit_lock: parking_lot::Mutex::new(()),
        })
    }

    /// This server's name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// Waits until every write made so far is on disk (see `store::Durable`): called before a
    /// request is answered and before anything written leaves the server.
    pub async fn durable(&self) -> Result<()> {
        self.db.durable().await
    }

    /// The server's signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The last stream position handed out.
    pub fn current_count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Reserves the next stream position and records it in `batch`; call with `commit_lock` held
    /// and write the batch before releasing it.
    pub fn next_count(&self, batch: &mut Batch) -> u64 {
        let next = self.count.load(Ordering::Acquire) + 1;
        batch.insert(&self.global, b"count", &key::u64_bytes(next));
        next
    }

    /// Makes a position visible after its batch was written.
    pub fn publish_count(&self, count: u64) {
        self.count.fetch_max(count, Ordering::AcqRel);
    }

    /// The typing positions of earlier runs: the end of the reserved range and the first
    /// position of the last run (both 0 on a new database).
    pub fn typing_history(&self) -> Result<(u64, u64)> {
        let read = |name: &[u8]| -> Result<u64> {
            Ok(self
                .global
                .get(name)?
                .and_then(|bytes| key::read_u64(&bytes))
                .unwrap_or(0))
        };
        Ok((read(b"typing_reserved")?, read(b"typing_run_start")?))
    }

    /// Records the first typing position of this run and the range reserved for it.
    pub fn start_typing_run(&self, start: u64, reserved: u64) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(&self.global, b"typing_run_start", &key::u64_bytes(start));
        batch.insert(&self.global, b"typing_reserved", &key::u64_bytes(reserved));
        self.global.db().write(batch)
    }

    /// Records that typing positions up to `end` may be handed out, before any of them is: the
    /// typing counter lives in memory, and a restart continues after the reserved range so that
    /// a sync token from an earlier run is never ahead of the new counter.
    pub fn reserve_typing(&self, end: u64) -> Result<()> {
        self.global.insert(b"typing_reserved", &key::u64_bytes(end))
    }

    /// Writes a batch that carries one new stream position: allocates it, lets `fill` add the
    /// writes, writes everything at once and publishes the position.
    pub fn write_with_count(
        &self,
        fill: impl FnOnce(&mut Batch, u64) -> Result<()>,
    ) -> Result<u64> {
        let _guard = self.commit_lock.lock();
        let mut batch = Batch::default();
        let count = self.next_count(&mut batch);
        fill(&mut batch, count)?;
        self.db.write(batch)?;
        self.publish_count(count);
        Ok(count)
    }
}

/// A sync position: the global stream position (timeline, state, membership, account data,
/// receipts) and the typing position, which lives in memory (see `service::typing`).
///
/// Written `s{count}_{typing}`. The older `s{count}` form still parses, with typing position 0:
/// a client that never saw typing, told of every room whose typists changed in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    pub count: u64,
    pub typing: u64,
}

impl SyncToken {
    /// Parses `s{count}_{typing}`, `s{count}` or a bare count.
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix('s').unwrap_or(token);
        let (count, typing) = match rest.split_once('_') {
            Some((count, typing)) => (count, typing.parse().ok()?),
            None => (rest, 0),
        };
        Some(Self {
            count: count.parse().ok()?,
            typing,
        })
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "s{}_{}", self.count, self.typing)
    }
}
