//! Server-server API handlers, one file per spec area. Every route except the key endpoints,
//! `/version` and `/3pid/onbind` (called by identity servers) requires `X-Matrix`
//! authentication (checked in `http/`).

pub mod events;
pub mod keys;
pub mod media;
pub mod membership;
pub mod policy;
pub mod query;
pub mod space;
pub mod third_party_invite;
pub mod transactions;
pub mod user_keys;
