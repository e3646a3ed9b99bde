//! The content-addressed file store under `media_path`: every file is named by the SHA-256 of its
//! bytes (`ab/abcdef…`), so the same bytes are stored once. A file is written to `tmp/`, fsynced
//! and renamed into place (then the folder is fsynced), so a name that exists always has its full
//! bytes.

use std::path::{Path, PathBuf};

use ruma::api::error::ErrorKind;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    error::{Error, Result},
    util,
};

/// The folder of stored files.
pub struct Files {
    root: PathBuf,
}

/// A file being written: bytes go to a temporary file and into the hash as they arrive.
pub struct Upload {
    file: tokio::fs::File,
    temp_path: PathBuf,
    hasher: Sha256,
    size: u64,
    limit: u64,
    finished: bool,
}

/// A stored file: its hash (hex) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
}

impl Files {
    /// Creates the folders when missing.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("tmp")).map_err(|error| {
            Error::Config(format!(
                "invalid configuration key `media_path`: cannot create {}: {error}",
                root.display()
            ))
        })?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Where the file with this hash lives.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("00");
        self.root.join(prefix).join(sha256)
    }

    /// Starts writing a file of at most `limit` bytes.
    pub async fn begin(&self, limit: u64) -> Result<Upload> {
        let temp_path = self.root.join("tmp").join(util::random_string(24));
        let file = tokio::fs::File::create(&temp_path).await.map_err(|error| {
            Error::internal(format!("creating {}: {error}", temp_path.display()))
        })?;
        Ok(Upload {
            file,
            temp_path,
            hasher: Sha256::new(),
            size: 0,
            limit,
            finished: false,
        })
    }

    /// Stores a whole buffer (thumbnails, fetched remote files).
    pub async fn store(&self, bytes: &[u8], limit: u64) -> Result<Stored> {
        let mut upload = self.begin(limit).await?;
        upload.write(bytes).await?;
        self.finish(upload).await
    }

    /// Makes the file durable and moves it to its content address; when that name exists (the
    /// same bytes were stored before) the new copy is dropped.
    pub async fn finish(&self, mut upload: Upload) -> Result<Stored> {
        let io = |error: std::io::Error| Error::internal(format!("storing media: {error}"));
        upload.file.flush().await.map_err(io)?;
        upload.file.sync_all().await.map_err(io)?;
        let sha256 = hex(&upload.hasher.clone().finalize());
        let path = self.path_of(&sha256);
        let folder = path.parent().expect("a media path has a folder").to_owned();
        if tokio::fs::try_exists(&path).await.map_err(io)? {
            tokio::fs::remove_file(&upload.temp_path)
                .await
                .map_err(io)?;
        } else {
            tokio::fs::create_dir_all(&folder).await.map_err(io)?;
            tokio::fs::rename(&upload.temp_path, &path)
                .await
                .map_err(io)?;
            // The rename is durable only once the folder's entry is.
            tokio::fs::File::open(&folder)
                .await
                .map_err(io)?
                .sync_all()
                .await
                .map_err(io)?;
        }
        upload.finished = true;
        Ok(Stored {
            sha256,
            size: upload.size,
        })
    }

    /// The bytes of a stored file.
    pub async fn read(&self, sha256: &str) -> Result<Vec<u8>> {
        let path = self.path_of(sha256);
        tokio::fs::read(&path)
            .await
            .map_err(|error| Error::internal(format!("reading {}: {error}", path.display())))
    }

    /// Opens a stored file for streaming.
    pub async fn open_file(&self, sha256: &str) -> Result<tokio::fs::File> {
        let path = self.path_of(sha256);
        tokio::fs::File::open(&path)
            .await
            .map_err(|error| Error::internal(format!("opening {}: {error}", path.display())))
    }

    /// Removes a stored file (one already gone is no error), for media the admins deleted.
    pub async fn remove(&self, sha256: &str) -> Result<()> {
        let path = self.path_of(sha256);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Error::internal(format!(
                "removing {}: {error}",
                path.display()
            ))),
        }
    }
}

impl Upload {
    /// Appends a chunk; more than the limit in total is `M_TOO_LARGE`.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(too_large(self.limit));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|error| Error::internal(format!("writing media: {error}")))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

/// `M_TOO_LARGE` for an upload over `limit` bytes.
pub fn too_large(limit: u64) -> Error {
    Error::matrix(
        ErrorKind::TooLarge,
        format!("media is larger than the limit of {limit} bytes"),
    )
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_bytes_are_stored_once_and_limits_hold() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::open(dir.path()).unwrap();
        let first = files.store(b"hello", 10).await.unwrap();
        let second = files.store(b"hello", 10).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(
            first.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(files.read(&first.sha256).await.unwrap(), b"hello");
        let error = files.store(b"too many bytes", 10).await.unwrap_err();
        assert!(matches!(
            error,
            Error::Matrix {
                kind: ErrorKind::TooLarge,
                ..
            }
        ));
        // Neither the duplicate nor the refused upload leaves a temporary file.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
