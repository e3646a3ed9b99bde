//! The integration test binary: each module drives a real server over HTTP.

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod durability;
mod e2ee;
mod e2ee_clients;
mod ephemeral;
pub mod federation;
mod federation_ephemeral;
mod key_backup;
mod media;
mod presence;
mod rooms;
mod spec_map;
mod synapse_harness;
mod synapse_interop;
pub mod sync;
mod tidy;
