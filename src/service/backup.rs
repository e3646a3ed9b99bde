//! Online backups for admins: [`create`] takes one into `backup_path` while the server runs,
//! [`list`] shows them with their size and time, [`verify`] opens one read-only and reads it
//! whole. The admin room and `plait admin server backup …` call these; `plait restore` restores
//! one with `store::restore_backup` while no server runs.
//!
//! The backup is of the RocksDB database only (see `store/backup.rs`); media files under
//! `media_path` are not in it (docs/admin_api.md says how to copy them).

use std::{path::PathBuf, sync::Arc};

use crate::{
    config::Config,
    error::{Error, Result},
    service::Services,
    store::{self, BackupCheck, BackupInfo, Db},
};

/// The database handle and the backup folder; one backup runs at a time.
pub struct Backups {
    db: Arc<Db>,
    folder: PathBuf,
    running: tokio::sync::Mutex<()>,
}

impl Backups {
    /// Remembers the database and `backup_path`.
    pub fn open(db: &Arc<Db>, config: &Config) -> Self {
        Self {
            db: Arc::clone(db),
            folder: config.backup_path(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The folder backups go into.
    pub fn folder(&self) -> &std::path::Path {
        &self.folder
    }
}

/// Takes an online backup (the write-ahead log fsynced, the memtables flushed, then a
/// checkpoint) while requests go on; a second call waits for the first to finish.
#[tracing::instrument(skip_all)]
pub async fn create(services: &Services) -> Result<BackupInfo> {
    let backups = &services.backups;
    let _running = backups.running.lock().await;
    let db = Arc::clone(&backups.db);
    let folder = backups.folder.clone();
    let backup = blocking(move || db.backup(&folder)).await?;
    tracing::info!(
        backup = %backup.path.display(),
        size_bytes = backup.size_bytes,
        "backup taken"
    );
    Ok(backup)
}

/// The backups in `backup_path`, oldest first.
pub async fn list(services: &Services) -> Result<Vec<BackupInfo>> {
    let folder = services.backups.folder.clone();
    blocking(move || store::list_backups(&folder)).await
}

/// Opens the backup called `name` (as [`list`] names it) read-only and reads every entry.
pub async fn verify(services: &Services, name: &str) -> Result<BackupCheck> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::invalid_param(format!(
            "`{name}` is not a backup name (such as backup-1700000000000)"
        )));
    }
    let path = services.backups.folder.join(name);
    if !path.is_dir() {
        return Err(Error::not_found(format!("no backup named {name}")));
    }
    blocking(move || store::verify_backup(&path)).await
}

/// Runs blocking file and database work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("backup task: {error}")))?
}
