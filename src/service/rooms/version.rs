//! Room versions: which ones this server supports and the rules (auth, redaction, power levels,
//! event format) of each. A leaf: it depends on no other service, so that the timeline, push,
//! power levels and the federation handshakes can all look rules up without importing each
//! other.
//!
//! The room versions this server supports (`SUPPORTED`, offered in `make_join`) and each version's rules (`rules_for`: auth, redaction, power levels, event format); a leaf that the timeline, push, power levels and the handshakes all import, so that none of them imports another for the rules.

use ruma::{room_version_rules::RoomVersionRules, RoomVersionId};

use crate::error::{Error, Result};

/// Room versions this server can join, for `make_join`'s `ver` parameters.
pub const SUPPORTED: [&str; 12] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

/// Looks up the rules of a room version; `M_UNSUPPORTED_ROOM_VERSION` for one this server does not
/// implement.
pub fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version.rules().ok_or_else(|| {
        Error::matrix(
            ruma::api::error::ErrorKind::UnsupportedRoomVersion,
            format!("room version {version} is not supported"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_rules() {
        for version in SUPPORTED {
            let version = RoomVersionId::try_from(version).unwrap();
            assert!(rules_for(&version).is_ok(), "{version}");
        }
    }

    #[test]
    fn an_unknown_version_is_unsupported() {
        let version = RoomVersionId::try_from("org.example.unknown").unwrap();
        let error = rules_for(&version).unwrap_err();
        assert!(error.to_string().contains("org.example.unknown"), "{error}");
    }
}
