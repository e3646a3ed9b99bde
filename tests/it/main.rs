//! The integration test binary: each module drives a real server over HTTP.

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod durability;
mod e2ee;
mod e2ee_clients;
pub mod federation;
mod key_backup;
mod rooms;
mod spec_map;
mod synapse_harness;
mod synapse_interop;
mod sync;
mod tidy;
