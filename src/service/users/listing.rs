//! Listing the server admins (the admin room), from `userid_admin`, which `Users` owns; every
//! account is `Users::iter_user_ids`.

use ruma::OwnedUserId;

use super::Users;
use crate::{
    error::{Error, Result},
    store::Tree,
};

impl Users {
    /// Every server admin, in user ID order.
    pub fn iter_admins(&self) -> Result<Vec<OwnedUserId>> {
        user_ids(&self.userid_admin, "userid_admin")
    }
}

fn user_ids(tree: &Tree, name: &'static str) -> Result<Vec<OwnedUserId>> {
    tree.iter_prefix(&[])
        .map(|entry| {
            let (key, _) = entry?;
            OwnedUserId::try_from(String::from_utf8_lossy(&key).as_ref())
                .map_err(|e| Error::corrupt(name, e))
        })
        .collect()
}
