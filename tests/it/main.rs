//! The integration test binary: each module drives a real server over HTTP.

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod durability;
pub mod federation;
mod presence;
mod rooms;
mod spec_map;
mod synapse_harness;
mod synapse_interop;
mod sync;
mod tidy;
