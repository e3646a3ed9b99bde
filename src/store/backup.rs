//! Online backups of the database: RocksDB checkpoints taken while the server runs, listed,
//! verified by opening them read-only, and restored into an empty folder.
//!
//! A backup is a folder `backup-<unix ms>` inside the backup folder that is itself a whole
//! RocksDB database (a checkpoint: table files are hard-linked when the backup folder is on the
//! same file system, copied otherwise; the live write-ahead log and the MANIFEST are copied, and
//! fsynced). The checkpoint copies the logs rather than flushing the memtables, so every write
//! acknowledged before [`Db::backup`] began is in the backup's logs or tables, and opening the
//! backup replays its logs.
//! Restoring copies a backup's files into a staging folder next to the target and renames it
//! into place, so a failed restore leaves the target as it was.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use std::ffi::{CStr, CString};

use rocksdb::{checkpoint::Checkpoint, IteratorMode, Options, DB};

use super::{Db, TREES};
use crate::error::{Error, Result};

/// Name prefix of backup folders; the rest is the creation time in Unix milliseconds.
const BACKUP_PREFIX: &str = "backup-";

/// One backup on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// The folder name (`backup-<unix ms>`), which names the backup in commands.
    pub name: String,
    /// Its full path.
    pub path: PathBuf,
    /// When it was taken, in Unix milliseconds.
    pub created_ms: u64,
    /// The bytes of its files (hard-linked table files count in full).
    pub size_bytes: u64,
}

/// What [`verify_backup`] found: every tree opens, and every entry reads back with its checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCheck {
    /// The trees (column families) the backup holds.
    pub trees: usize,
    /// The entries read, over all trees.
    pub entries: u64,
}

impl Db {
    /// Takes an online backup into a new folder inside `backup_dir` (created when missing): a
    /// RocksDB checkpoint that copies the write-ahead logs instead of flushing the memtables. Writes go on meanwhile; it blocks, so async callers run it on a
    /// blocking thread.
    pub fn backup(&self, backup_dir: &Path) -> Result<BackupInfo> {
        std::fs::create_dir_all(backup_dir).map_err(|error| {
            Error::Config(format!(
                "cannot create backup folder {}: {error}",
                backup_dir.display()
            ))
        })?;
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let mut name = format!("{BACKUP_PREFIX}{created_ms}");
        // Two backups within one millisecond get distinct folders.
        let mut path = backup_dir.join(&name);
        let mut created = created_ms;
        while path.exists() {
            created += 1;
            name = format!("{BACKUP_PREFIX}{created}");
            path = backup_dir.join(&name);
        }
        // Writes reach the log file at once (no `manual_wal_flush`), so the checkpoint's copy of
        // the log, read through the OS, holds every write acknowledged so far, fsynced or not;
        // this only hands RocksDB's own buffer, if any, to the OS. No fsync of the live log here:
        // it would queue behind (and hold up) the group commit's fsync that requests wait for.
        self.db.flush_wal(false)?;
        let checkpoint = Checkpoint::new(&*self.db)?;
        checkpoint_copying_logs(&checkpoint, &path).map_err(|error| {
            Error::Config(format!(
                "cannot write a backup into {}: {error}",
                backup_dir.display()
            ))
        })?;
        Ok(BackupInfo {
            size_bytes: folder_size(&path)?,
            name,
            path,
            created_ms: created,
        })
    }
}

/// RocksDB's `log_size_for_flush` for checkpoints: with write-ahead logs smaller than this in
/// all, the checkpoint copies them instead of flushing the memtables; `u64::MAX` never flushes.
///
/// The `rocksdb` crate's `create_checkpoint` passes 0 (always flush), which flushes the memtable
/// of every tree that holds anything: each backup wrote about 15 tiny level-0 tables with their
/// fsyncs, and their compactions slowed sends by 23 to 38 % while backups ran back to back
/// (docs/performance.md, "Backup while sending"). The logs are capped at 64 MiB
/// (`MAX_TOTAL_WAL_BYTES`), so a checkpoint copies at most about that much.
const LOG_SIZE_FOR_FLUSH: u64 = u64::MAX;

/// `Checkpoint::create_checkpoint` with [`LOG_SIZE_FOR_FLUSH`] instead of the crate's 0, through
/// RocksDB's C function (the crate, pinned at 0.20.1, does not expose the parameter).
fn checkpoint_copying_logs(checkpoint: &Checkpoint<'_>, path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    type RawCheckpoint = *mut librocksdb_sys::rocksdb_checkpoint_t;
    // `Checkpoint` of rocksdb 0.20.1 holds the C object's pointer and a `PhantomData`; its size
    // being one pointer's leaves no room for anything else, so the pointer is its first field.
    const _: () =
        assert!(std::mem::size_of::<Checkpoint<'static>>() == std::mem::size_of::<RawCheckpoint>());
    // SAFETY: the assertion above; `checkpoint` outlives the call and is dropped (destroying the
    // C object) by its owner as usual.
    let raw = unsafe { *(checkpoint as *const Checkpoint<'_>).cast::<RawCheckpoint>() };
    let dir = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} holds a NUL byte", path.display()))?;
    let mut error: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: `raw` is a live checkpoint object and `dir` a NUL-terminated string; RocksDB sets
    // `error` to a string it allocated, or leaves it null.
    unsafe {
        librocksdb_sys::rocksdb_checkpoint_create(
            raw,
            dir.as_ptr(),
            LOG_SIZE_FOR_FLUSH,
            &mut error,
        );
    }
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null `error` is a NUL-terminated string that the caller must free.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { librocksdb_sys::rocksdb_free(error.cast()) };
    Err(message)
}

/// The backups in `backup_dir`, oldest first; none when the folder does not exist.
pub fn list_backups(backup_dir: &Path) -> Result<Vec<BackupInfo>> {
    let entries = match std::fs::read_dir(backup_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error("reading", backup_dir, error)),
    };
    let mut backups = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| io_error("reading", backup_dir, error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(created_ms) = name
            .strip_prefix(BACKUP_PREFIX)
            .and_then(|millis| millis.parse().ok())
        else {
            continue;
        };
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        backups.push(BackupInfo {
            size_bytes: folder_size(&path)?,
            name,
            path,
            created_ms,
        });
    }
    backups.sort_by_key(|backup| backup.created_ms);
    Ok(backups)
}

/// Opens the database at `path` read-only and reads every entry of every tree, which checks
/// each block's checksum; fails when a tree of [`TREES`] is missing or a read fails.
pub fn verify_backup(path: &Path) -> Result<BackupCheck> {
    if !path.join("CURRENT").is_file() {
        return Err(Error::invalid_param(format!(
            "{} is not a database backup (it has no CURRENT file)",
            path.display()
        )));
    }
    let options = Options::default();
    let names = DB::list_cf(&options, path)?;
    if let Some(missing) = TREES
        .iter()
        .find(|tree| !names.iter().any(|name| name == *tree))
    {
        return Err(Error::invalid_param(format!(
            "the backup at {} lacks the tree {missing}",
            path.display()
        )));
    }
    let db = DB::open_cf_for_read_only(&options, path, &names, false)?;
    let mut entries = 0;
    for name in &names {
        let cf = db
            .cf_handle(name)
            .expect("every listed column family is opened");
        for entry in db.iterator_cf(cf, IteratorMode::Start) {
            entry?;
            entries += 1;
        }
    }
    Ok(BackupCheck {
        trees: names.len(),
        entries,
    })
}

/// Restores the backup at `backup` into `target`, which must be missing or an empty folder:
/// checks the backup, copies it (subfolders included) into a staging folder beside `target`,
/// fsyncs the files, checks the copy and renames it into place. On any error the target is
/// left as it was.
pub fn restore_backup(backup: &Path, target: &Path) -> Result<BackupCheck> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::invalid_param(format!(
                    "refusing to restore into {}: the folder is not empty",
                    target.display()
                )));
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("reading", target, error)),
    }
    verify_backup(backup)?;
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|error| io_error("creating", &parent, error))?;
    let file_name = target.file_name().map_or_else(
        || "restore".to_owned(),
        |name| name.to_string_lossy().into_owned(),
    );
    let staging = parent.join(format!(".{file_name}.restoring-{}", std::process::id()));
    let staged = copy_folder(backup, &staging)
        .and_then(|()| verify_backup(&staging))
        .and_then(|check| {
            // An empty target folder is replaced by the staged one; `rename` needs it gone.
            if target.exists() {
                std::fs::remove_dir(target)
                    .map_err(|error| io_error("replacing", target, error))?;
            }
            std::fs::rename(&staging, target)
                .map_err(|error| io_error("renaming into", target, error))?;
            sync_folder(&parent)?;
            Ok(check)
        });
    if staged.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    staged
}

/// Copies `from` into the new folder `to`, recursively, fsyncing every file and folder.
fn copy_folder(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir(to).map_err(|error| io_error("creating", to, error))?;
    for entry in std::fs::read_dir(from).map_err(|error| io_error("reading", from, error))? {
        let entry = entry.map_err(|error| io_error("reading", from, error))?;
        let source = entry.path();
        let destination = to.join(entry.file_name());
        if source.is_dir() {
            copy_folder(&source, &destination)?;
        } else {
            std::fs::copy(&source, &destination)
                .map_err(|error| io_error("copying", &source, error))?;
            std::fs::File::open(&destination)
                .and_then(|file| file.sync_all())
                .map_err(|error| io_error("syncing", &destination, error))?;
        }
    }
    sync_folder(to)
}

/// Fsyncs a folder, so that the names created in it survive a power cut.
fn sync_folder(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|folder| folder.sync_all())
        .map_err(|error| io_error("syncing", path, error))
}

/// The bytes of every file under `path`.
fn folder_size(path: &Path) -> Result<u64> {
    let mut size = 0;
    for entry in std::fs::read_dir(path).map_err(|error| io_error("reading", path, error))? {
        let entry = entry.map_err(|error| io_error("reading", path, error))?;
        let metadata = entry
            .metadata()
            .map_err(|error| io_error("reading", &entry.path(), error))?;
        size += if metadata.is_dir() {
            folder_size(&entry.path())?
        } else {
            metadata.len()
        };
    }
    Ok(size)
}

/// An I/O failure on `path`, as an error whose message names what was being done.
fn io_error(doing: &str, path: &Path, error: std::io::Error) -> Error {
    Error::Internal(format!("{doing} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_holds_every_write_and_restores_only_into_an_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db"), false).unwrap();
        let tree = db.tree("global");
        tree.insert(b"before", b"1").unwrap();
        let backups = dir.path().join("backups");
        let backup = db.backup(&backups).unwrap();
        tree.insert(b"after", b"2").unwrap();
        assert!(backup.size_bytes > 0);
        assert_eq!(list_backups(&backups).unwrap(), vec![backup.clone()]);
        let check = verify_backup(&backup.path).unwrap();
        assert_eq!(check.trees, TREES.len() + 1, "every tree and `default`");
        assert!(check.entries >= 1);

        let occupied = dir.path().join("occupied");
        std::fs::create_dir(&occupied).unwrap();
        std::fs::write(occupied.join("keep"), b"mine").unwrap();
        let refused = restore_backup(&backup.path, &occupied).unwrap_err();
        assert!(refused.to_string().contains("not empty"), "{refused}");
        assert_eq!(std::fs::read(occupied.join("keep")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1);

        let restored = dir.path().join("restored");
        restore_backup(&backup.path, &restored).unwrap();
        let db = Db::open(&restored, false).unwrap();
        let tree = db.tree("global");
        assert_eq!(tree.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(tree.get(b"after").unwrap(), None);
    }

    #[test]
    fn a_backup_copies_the_log_instead_of_flushing_the_memtables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = Db::open(&path, false).unwrap();
        let tables = |folder: &Path| {
            std::fs::read_dir(folder)
                .unwrap()
                .filter(|entry| {
                    let name = entry.as_ref().unwrap().file_name();
                    name.to_string_lossy().ends_with(".sst")
                })
                .count()
        };
        let tree = db.tree("global");
        tree.insert(b"in a memtable", b"1").unwrap();
        let before = tables(&path);
        let backup = db.backup(&dir.path().join("backups")).unwrap();
        assert_eq!(tables(&path), before, "the backup flushed a memtable");
        let restored = dir.path().join("restored");
        restore_backup(&backup.path, &restored).unwrap();
        let db = Db::open(&restored, false).unwrap();
        let value = db.tree("global").get(b"in a memtable").unwrap();
        assert_eq!(
            value.as_deref(),
            Some(&b"1"[..]),
            "replayed from the copied log"
        );
    }

    #[test]
    fn a_folder_that_is_no_database_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        assert!(verify_backup(dir.path()).is_err());
        assert!(list_backups(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }
}
