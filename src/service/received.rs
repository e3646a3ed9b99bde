//! Transactions received from other servers: the answer to each, so that a retried transaction
//! is answered again without being processed twice.
//!
//! The answer to each received transaction, so that a replay is answered without being processed again.

use std::sync::Arc;

use ruma::ServerName;
use serde_json::Value;

use crate::{
    error::{Error, Result},
    store::{key, Db, Tree},
};

/// Owns `servertxnid_response` (origin 0xff transaction ID → the JSON answer sent).
pub struct ReceivedTransactions {
    servertxnid_response: Tree,
}

impl ReceivedTransactions {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            servertxnid_response: db.tree("servertxnid_response"),
        }
    }

    /// The answer already sent for a transaction.
    pub fn get_response(&self, origin: &ServerName, txn_id: &str) -> Result<Option<Value>> {
        self.servertxnid_response
            .get(&key::join(&[origin.as_bytes(), txn_id.as_bytes()]))?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt("servertxnid_response", e))
            })
            .transpose()
    }

    /// Records the answer to a transaction.
    pub fn set_response(&self, origin: &ServerName, txn_id: &str, response: &Value) -> Result<()> {
        self.servertxnid_response.insert(
            &key::join(&[origin.as_bytes(), txn_id.as_bytes()]),
            response.to_string().as_bytes(),
        )
    }
}
