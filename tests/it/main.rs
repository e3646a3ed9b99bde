//! The integration test binary: each module drives a real server over HTTP.

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod durability;
mod e2ee;
pub mod federation;
mod rooms;
mod spec_map;
mod synapse_harness;
mod synapse_interop;
mod sync;
mod tidy;
