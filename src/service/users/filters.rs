//! A user's filters (`POST /filter`, and the `filter` parameter of `/sync`), stored in
//! `useridfilterid_filter`, which `Users` owns.

use ruma::UserId;
use serde_json::Value;

use super::Users;
use crate::{
    error::{Error, Result},
    service::filter,
    store::key,
    util,
};

impl Users {
    /// Checks a filter (`filter::validate`), stores it and returns its ID.
    pub fn create_filter(&self, user_id: &UserId, filter: &Value) -> Result<String> {
        filter::validate(filter)?;
        let filter_id = util::random_string(12);
        self.useridfilterid_filter.insert(
            &key::join(&[user_id.as_bytes(), filter_id.as_bytes()]),
            filter.to_string().as_bytes(),
        )?;
        Ok(filter_id)
    }
    /// The filter a `/sync` names in its `filter` parameter: inline JSON, or the ID of one of the
    /// user's stored filters (`M_NOT_FOUND` for an unknown one); no parameter is `{}`.
    pub fn sync_filter(&self, user_id: &UserId, filter: Option<&str>) -> Result<Value> {
        match filter {
            None => Ok(Value::Object(Default::default())),
            Some(text) if text.trim_start().starts_with('{') => {
                let filter = serde_json::from_str(text)
                    .map_err(|_| Error::bad_json("filter is not valid JSON"))?;
                filter::validate(&filter).map(|()| filter)
            }
            Some(id) => self
                .get_filter(user_id, id)?
                .ok_or_else(|| Error::not_found(format!("filter {id} not found"))),
        }
    }

    /// A stored filter (every `/sync` that names one reads it; a filter never changes).
    pub fn get_filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<Value>> {
        let key = (user_id.to_owned(), filter_id.to_owned());
        if let Some(filter) = self.filters.get(&key) {
            return Ok(Some(filter));
        }
        // Only filters that exist are kept: an unknown ID may be stored later.
        let read_at = self.filters.read_started();
        let filter = self.read_filter(user_id, filter_id)?;
        if let Some(filter) = &filter {
            self.filters.store(key, filter.clone(), read_at);
        }
        Ok(filter)
    }

    fn read_filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<Value>> {
        let Some(bytes) = self
            .useridfilterid_filter
            .get(&key::join(&[user_id.as_bytes(), filter_id.as_bytes()]))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("useridfilterid_filter", e))
    }
}
