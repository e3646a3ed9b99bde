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

/// Takes an online backup (a checkpoint that copies the write-ahead logs) while requests go on,
/// on a thread of its own at the lowest CPU and I/O priority, so that requests come first; a
/// second call waits for the first to finish.
#[tracing::instrument(skip_all)]
pub async fn create(services: &Services) -> Result<BackupInfo> {
    let backups = &services.backups;
    let _running = backups.running.lock().await;
    let db = Arc::clone(&backups.db);
    let folder = backups.folder.clone();
    let (done, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("plait-backup".to_owned())
        .spawn(move || {
            lower_priority();
            let _ = done.send(db.backup(&folder));
        })
        .map_err(|error| Error::Internal(format!("starting the backup thread: {error}")))?;
    let backup = answer
        .await
        .map_err(|_| Error::Internal("the backup thread stopped".to_owned()))??;
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

/// Puts the calling thread (only it: Linux applies both per thread) at the lowest CPU priority
/// (nice 19) and in the idle I/O class, which the kernel's I/O schedulers (BFQ, mq-deadline)
/// serve after everything else. Both are best effort: a failure changes nothing else.
fn lower_priority() {
    /// `ioprio_set`'s `IOPRIO_WHO_PROCESS` (a thread ID; 0 is the caller) and the idle class
    /// (`IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT`), from `linux/ioprio.h`.
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    const IOPRIO_IDLE: libc::c_int = 3 << 13;
    // SAFETY: plain system calls on the calling thread, with integer arguments only.
    unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 19);
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_IDLE);
    }
}

/// Runs blocking file and database work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("backup task: {error}")))?
}
