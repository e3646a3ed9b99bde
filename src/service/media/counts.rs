//! The media counters of `server stats` (files with content and their bytes), written with each
//! record under the upload lock, and counted once for a database from before them.

use super::{encode, media_key, Media, MediaRecord};
use crate::{
    error::{Error, Result},
    service::stats::Counter,
    store::Batch,
};
use ruma::ServerName;

impl Media {
    /// Writes a record with content at `server/media_id` with `batch`, counting it (and no
    /// longer counting the record it replaces). The caller holds `upload_lock`.
    pub(super) fn write_counted(
        &self,
        (server, media_id): (&ServerName, &str),
        record: &MediaRecord,
        mut batch: Batch,
    ) -> Result<()> {
        let record_key = media_key(server, media_id);
        let (mut files, mut bytes) = (1, i64::try_from(record.size).unwrap_or(i64::MAX));
        if let Some(previous) = self.get(server, media_id)? {
            if previous.sha256.is_some() {
                files -= 1;
                bytes -= i64::try_from(previous.size).unwrap_or(i64::MAX);
            }
        }
        batch.insert(&self.mediaid_media, &record_key, &encode(record)?);
        if files != 0 {
            self.counters
                .add_in_batch(Counter::MediaFiles, files, &mut batch)?;
        }
        if bytes != 0 {
            self.counters
                .add_in_batch(Counter::MediaBytes, bytes, &mut batch)?;
        }
        self.mediaid_media.db().write(batch)
    }

    /// How many records have content, and their bytes (one scan, for an older database).
    pub fn count_stored(&self) -> Result<(u64, u64)> {
        let (mut files, mut bytes) = (0, 0);
        for entry in self.mediaid_media.iter_prefix(b"") {
            let (_, value) = entry?;
            let record: MediaRecord = serde_json::from_slice(&value)
                .map_err(|error| Error::corrupt("mediaid_media", error))?;
            if record.sha256.is_some() {
                files += 1;
                bytes += record.size;
            }
        }
        Ok((files, bytes))
    }
}
