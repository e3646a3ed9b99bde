//! The integration test binary: each module drives a real server over HTTP.
//!
//! Tests: unit tests next to the code; `tests/it/federation.rs` runs two Plait servers on 127.0.0.2 and 127.0.0.3 with TLS from the test CA, including hostile input (bad signatures, hash mismatch, auth failures, replays, oversize PDUs, bad `X-Matrix`); `tests/it/synapse_interop.rs` runs Plait against Synapse in both directions (invites, messages, typing, receipts) and `tests/it/synapse_scenarios.rs` the rest of the cross-server scenarios with each as the room's creator (join by alias, reactions, edits, redactions, presence, device keys and one-time keys, to-device messages, and a leave and rejoin whose missed history is backfilled); `tests/it/timestamp_to_event.rs` covers jump to date on one server and between two; `tests/it/federation_misc.rs` the version-1 invite, the generic query, `/.well-known/matrix/server` and `send_join` with `omit_members`; `tests/it/backfill.rs` covers backfill between two Plait servers and `tests/it/federation_acl.rs` what a server the room's ACL denies is refused; with `PLAIT_TEST_LOG` set to a `tracing` filter, test servers log into the test's output; `tests/it/e2ee_clients.rs` drives two matrix-sdk clients with their crypto machine (the `e2e-encryption` feature of the dev-dependency) through an encrypted room; integration tests in `tests/it/` start the real server on `127.0.0.1:0` with a fresh database (`tests/common/mod.rs`); `tests/it/durability.rs` runs the real binary and kills it with SIGKILL; the benchmarks `benches/load.rs`, `benches/federation.rs` (two servers over TLS) and `benches/relations.rs` (`/messages` pages with and without bundled aggregations) share their client, statistics and a child-process server (`benches/common/child.rs`, used by the single-server benchmarks) in `benches/common/`; `benches/media.rs` times thumbnails; `tests/it/media.rs` covers the content repository on one server (files on disk, headers, limits, thumbnails, previews from a tiny HTTP server on loopback) and between two Plait servers; `tests/it/push_rules.rs` covers the push rule API, `tests/it/push.rs` unread counts and `/notifications`, `tests/it/pushers.rs` pushers with a push gateway served by the test itself; `tests/it/search.rs` covers search (visibility, order, filters, context, paging, redaction, bad requests) and `tests/it/organisation.rs` room tags and ignoring users; `tests/it/relations.rs` covers reactions, edits, threads, `/relations`, `/threads`, bundles on every serving path, redaction and relations from another server; `tests/it/policy_servers.rs` covers policy servers between two Plait servers (signatures on allowed events, refusals passed to the client, soft failure of received events without a valid signature, a policy server without a joined member ignored, local signing, signed remote invites, an unreachable policy server failing the send, and the bad inputs of `/sign` and the well-known); `tests/it/third_party_invites.rs` covers invites by email with a fake identity server served by the test on loopback (lookup, store-invite, onbind across two Plait servers through `/exchange_third_party_invite`, forged signatures, revoked keys and exchange requests that do not match the pending invite); `tests/it/presence.rs` covers presence on one server (with a 1 s offline timeout and restarts) and between two Plait servers; `tests/it/rate_limits.rs` turns the rate limits on (every other test runs with them off) and covers 429s with `retry_after_ms`, admins' exemption, failed logins per account behind a trusted proxy, and federation per origin; `tests/it/spec_map.rs` checks the router against `spec/endpoints.tsv`; `tests/it/tidy.rs` checks module docs and the dependency direction.
//! Interop tests: `tests/common/tls.rs` is a test CA made at run time that issues certificates for loopback IPs; `tests/common/synapse.rs` runs a real Synapse from a venv that `scripts/synapse-venv` installs outside the clone, on its own 127.0.0.x address, trusting only that CA; `tests/it/synapse_harness.rs` checks the harness itself. `Synapse::kill` and `restart` stop it with SIGKILL and start it on the same folder and ports, and `tests/common/plait_process.rs` runs the `plait` binary federating over TLS so that it can be killed the same way: `tests/it/synapse_outages.rs` kills either server mid-conversation (Plait long enough for Synapse to back off from it, which its admin API shows) and checks that both then show every message, and `tests/it/synapse_forks.rs` has both change the power levels and the topic while cut off by outages and checks that both resolve the same state; each with each server as the room's creator. Synapse clears its back-off for a server, and catches it up, as soon as that server sends it a signed request; Plait does the same (`Sending::heard_from`).
//! These are the only tests that need more than loopback: the first run on a machine installs Synapse (and, for `tests/it/appservices.rs`, the `mautrix` bridge framework, `scripts/mautrix-venv`) from PyPI; `tests/it/metrics.rs` and `tests/it/calls.rs` install Prometheus and coturn from Debian.

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod admin_api;
mod admin_commands;
mod admin_federation;
mod admin_media;
mod admin_moderation;
mod admin_room;
mod admin_rooms;
mod aliases;
mod appservices;
mod appservices_extras;
mod backfill;
mod backups;
mod calls;
mod connections;
mod dehydrated;
mod delayed_events;
mod device_lists;
mod durability;
mod e2ee;
mod e2ee_clients;
mod ephemeral;
pub mod federation;
mod federation_acl;
mod federation_edges;
mod federation_ephemeral;
mod federation_hostile;
pub mod federation_misc;
mod federation_receipt;
mod first_run;
mod invite_links;
mod key_backup;
mod media;
mod media_legacy;
mod metrics;
mod mutual_rooms;
mod oauth;
mod organisation;
mod pagination;
mod policy_servers;
mod presence;
mod privacy;
mod privacy_checks;
mod push;
mod push_rules;
mod pushers;
mod rate_limits;
mod relations;
mod rooms;
mod search;
mod sliding_sync;
mod sliding_sync_rooms;
mod sliding_sync_sdk;
mod spaces;
mod spec_map;
mod stories;
mod synapse_admin;
mod synapse_admin_moderation;
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
