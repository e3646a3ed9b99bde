//! Server-server API handlers, one file per spec area. Every route except the key endpoints,
//! `/version` and `/3pid/onbind` (called by identity servers) requires `X-Matrix`
//! authentication (checked in `http/`).
//!
//! Server-server handlers: keys and the notary API, `/send` (PDUs through `incoming::handle`, a rejected one answered `{}` as the spec's "Rejection" asks and a dropped or unprocessed one with an error, then `m.typing`, `m.receipt` and `m.presence` EDUs through `typing::receive_edu`, `receipts::receive_edu` and `presence::receive_edu`, which ignore a user of another server than the origin, a user not joined to the room and a room whose ACL denies the origin), the membership handshakes (resident side; the deprecated `/v1/invite`, whose body is the event with its stripped state in `unsigned` and whose room version is taken as 1 or 2, shares the checks of `/v2/invite`), a room's hierarchy (`space.rs`, through `rooms::spaces`), event and state reads (gated by the room's ACL, membership of the asking server and history visibility), and queries (`/query/profile`, `/query/directory`, and the generic `/query/{queryType}`, which answers those two and `404 M_NOT_FOUND` for any other type).
//! `user_keys.rs` answers key queries, claims and device lists for local users, and acts on the encryption EDUs of `/send`: `m.device_list_update` and `m.signing_key_update` update the cache of remote device lists through `device_lists::remote` (a gap in `prev_id` starts a background resync), `m.direct_to_device` fills local inboxes once per `message_id`; each is applied only when its user belongs to the origin.
//! `media.rs` serves this server's own media and thumbnails as `multipart/mixed` (ruma's encoder), never media cached from others.
//! `third_party_invite.rs` serves `/exchange_third_party_invite` and `/3pid/onbind` through `rooms::third_party`.
//! `policy.rs` serves `POST /_matrix/policy/v1/sign` through `service::policy` (refusals are `Error::Refused`, the one `400 M_FORBIDDEN`).
//! Every route but the key endpoints, `/version` and `/3pid/onbind` is `Auth::Server`: `http/x_matrix.rs` checks the origin's signature with its published key before the handler runs.

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
