//! The integration test binary: each module drives a real server over HTTP.

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod admin_api;
mod aliases;
mod backfill;
mod device_lists;
mod durability;
mod e2ee;
mod e2ee_clients;
mod ephemeral;
pub mod federation;
mod federation_acl;
mod federation_edges;
mod federation_ephemeral;
pub mod federation_misc;
mod federation_receipt;
mod first_run;
mod key_backup;
mod media;
mod media_legacy;
mod organisation;
mod pagination;
mod policy_servers;
mod presence;
mod push;
mod push_rules;
mod pushers;
mod relations;
mod rooms;
mod search;
mod spaces;
mod spec_map;
mod synapse_forks;
mod synapse_harness;
mod synapse_interop;
mod synapse_outages;
mod synapse_scenarios;
pub mod sync;
mod sync_state;
mod third_party_invites;
mod tidy;
mod timestamp_to_event;
mod upgrade;
