//! Configuration: one serde struct, loaded from TOML and `PLAIT_*` environment variables.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

mod rate_limits;

pub use rate_limits::{Rate, RateLimitSettings};

/// Prefix of environment variables that override single keys (`PLAIT_SERVER_NAME` → `server_name`).
pub const ENV_PREFIX: &str = "PLAIT_";

/// Who may create accounts through `/register`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone who can reach the client API.
    Open,
    /// Only callers who present `registration_token` or a registration token an admin made
    /// (`docs/admin_api.md`).
    Token,
    /// Nobody.
    Closed,
}

/// The whole server configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name: the part after the colon in user IDs. A DNS name or an IP literal, with an optional port.
    pub server_name: String,
    /// Address and port of the client API listener.
    pub listen: SocketAddr,
    /// Folder of the RocksDB database (created when missing).
    pub database_path: PathBuf,
    /// Folder of online backups (`server backup create`); defaults to a folder beside the
    /// database named after it with `-backups` added (`./data-backups` for `./data`). Put it on
    /// another disk to survive the loss of the database's; on the same file system the backups
    /// share the database's table files through hard links and take little room.
    pub backup_path: Option<PathBuf>,
    /// Registration mode: `open`, `token` or `closed`.
    pub registration: Registration,
    /// A shared token that `registration = "token"` accepts besides the tokens admins make;
    /// unset, only those.
    pub registration_token: Option<String>,
    /// The secret of Synapse's shared-secret registration (`/_synapse/admin/v1/register`), which
    /// creates accounts, admins included, whatever `registration` says; that endpoint is off
    /// while unset or empty.
    pub registration_shared_secret: Option<String>,
    /// Localpart of the user that sends server notices (created on the first notice; nobody may
    /// register it).
    pub server_notices_localpart: String,
    /// Name of each user's server notices room.
    pub server_notices_room_name: String,
    /// Localpart of the server's own user, which owns the admin room `#admins:<server_name>` and
    /// answers its `!admin` commands (created at start-up; nobody may register it).
    pub admin_user: String,
    /// Log filter in `tracing` syntax; `RUST_LOG` overrides it.
    pub log: String,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// A connection must deliver each request head (method, path and headers) within this long of
    /// being ready for one, in milliseconds: from when it opens, and again after each response,
    /// so the same deadline closes keep-alive connections left idle.
    pub http_header_timeout_ms: u64,
    /// A request body must arrive whole within this long of its head, in milliseconds.
    pub http_body_timeout_ms: u64,
    /// Open connections on all listeners together; the server lowers it to fit the open-file
    /// limit, which it raises to the hard limit at start-up.
    pub max_connections: usize,
    /// Open connections from one IP address.
    pub max_connections_per_ip: usize,
    /// IP ranges (CIDR) of reverse proxies in front of the server: a request from one of them
    /// counts as coming from the address its `X-Forwarded-For` header names (the last one not
    /// itself a trusted proxy). Empty by default: the header is then ignored, since any client
    /// could write it.
    pub trusted_proxies: Vec<String>,
    /// Token-bucket rate limits per client address, user and origin server (`[rate_limits]`).
    pub rate_limits: RateLimitSettings,
    /// Room version of new rooms when the client does not ask for one. A bare number (as an
    /// environment variable gives it, `PLAIT_DEFAULT_ROOM_VERSION=10`) is accepted too.
    #[serde(deserialize_with = "string_or_number")]
    pub default_room_version: String,
    /// Answer a request only once what it wrote is fsynced (on by default): a `200` survives a
    /// power cut, not only a crash of the process. Concurrent requests share fsyncs (group
    /// commit). Off, writes still reach the write-ahead log before the answer.
    pub sync_writes: bool,
    /// RocksDB's memory in MiB: half for the memtables of all trees, half for one shared block
    /// cache (which holds index and filter blocks too).
    pub database_memory_mb: usize,
    /// After this long without a new connection, a closed one or a request, in milliseconds,
    /// the server gives the heap memory it has freed back to the operating system (once per
    /// quiet spell); 0 never does.
    pub memory_trim_quiet_ms: u64,
    /// Lifetime of access tokens issued together with a refresh token, in milliseconds.
    pub refreshable_token_lifetime_ms: u64,
    /// `base_url` served in `/.well-known/matrix/client`; defaults to `http://<listen>`.
    pub client_base_url: Option<String>,
    /// Where other servers should send this server's federation traffic, served as `m.server` in
    /// `/.well-known/matrix/server` (a host name with an optional port, e.g.
    /// `matrix.example.com:443`); while unset that path answers `404 M_NOT_FOUND`.
    pub well_known_server: Option<String>,
    /// Address of the Prometheus metrics listener (`GET /metrics`, plain HTTP, nothing else);
    /// off while unset. Keep it on loopback or a private network: it tells who this server
    /// federates with and how busy each endpoint is.
    pub metrics_address: Option<SocketAddr>,
    /// Federation listener address (TLS); federation is off while unset.
    pub federation_listen: Option<SocketAddr>,
    /// Time one outgoing server-server request (server keys, federation, remote media) may take
    /// in all, connection included, in milliseconds; a server that answers slower is treated as
    /// unreachable.
    pub federation_request_timeout_ms: u64,
    /// IP ranges (CIDR) this server never connects to for any outgoing request: federation,
    /// server keys and notaries, remote media, push gateways, identity servers and URL previews.
    /// Every address a host name resolves to is checked before connecting, and so is an IP
    /// literal. The default covers loopback, private (RFC 1918, shared 100.64.0.0/10, unique
    /// local fc00::/7), link-local, multicast, unspecified and reserved ranges of IPv4 and IPv6;
    /// IPv4-mapped IPv6 addresses are checked as IPv4. The addresses named in
    /// `federation_hosts` are exempt (the operator chose them).
    pub ip_range_denylist: Vec<String>,
    /// IP ranges reached even though `ip_range_denylist` covers them (e.g. `127.0.0.0/8` for
    /// servers that federate on loopback in tests, or a private network of trusted servers).
    /// URL previews and, unless their `*_allow_http` key is set, identity servers and push
    /// gateways also keep to `url_preview_ip_denylist`, which this list does not override.
    pub ip_range_allowlist: Vec<String>,
    /// PEM certificate chain of the federation listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the federation listener.
    pub tls_key: Option<PathBuf>,
    /// Extra PEM CA certificate trusted for outgoing federation requests.
    pub federation_ca_file: Option<PathBuf>,
    /// Notary servers asked for another server's keys when that server cannot be reached.
    pub trusted_key_servers: Vec<String>,
    /// Fixed addresses for server names (`name → ip:port`), used before any discovery; for
    /// private deployments and test harnesses without DNS. From the environment as
    /// `PLAIT_FEDERATION_HOSTS="hs1=127.0.0.1:8448,hs2=127.0.0.1:8449"`. TLS certificates are
    /// still verified against the server name.
    #[serde(deserialize_with = "string_or_map")]
    pub federation_hosts: BTreeMap<String, SocketAddr>,
    /// A local user whose clients neither sync nor send any request for this long goes
    /// offline, in milliseconds (at least 1000).
    pub presence_offline_timeout_ms: u64,
    /// Accept pushers whose push gateway URL is plain `http`, at any address (for a gateway on
    /// loopback in tests and development); the spec asks for `https`. Off by default: gateways
    /// are then never reached at an address in `url_preview_ip_denylist`.
    pub push_gateway_allow_http: bool,
    /// How long a notification stays listed by `/notifications` once its user has read it, in
    /// milliseconds; older read ones are dropped when the user sends a read receipt in its room.
    pub read_notification_retention_ms: u64,
    /// Folder of uploaded and cached remote media; defaults to `media` inside `database_path`.
    pub media_path: Option<PathBuf>,
    /// Folder of appservice registration files (`*.yaml`, `*.yml`) read at start
    /// (docs/appservices.md); unset: only those registered in the admin room.
    pub appservice_dir: Option<PathBuf>,
    /// Largest upload accepted (and largest remote file fetched), in bytes.
    pub max_upload_bytes: u64,
    /// Serve media without an access token on the deprecated `GET /_matrix/media/v3` (and `r0`)
    /// `download` and `thumbnail` endpoints, as on `/_matrix/client/v1/media`. Off by default:
    /// those endpoints then answer `404 M_NOT_FOUND` for all media (the freeze of spec 1.11),
    /// since anyone who learns a media ID could fetch it, or make this server fetch and cache
    /// another server's media. For old clients and test suites only; the counterpart of
    /// Synapse's `enable_authenticated_media: false`.
    pub legacy_media_unauthenticated: bool,
    /// Whether `/preview_url` fetches pages; off by default, since it makes the server fetch
    /// any URL a user names.
    pub url_preview_enabled: bool,
    /// IP ranges (CIDR) that URL previews never connect to, besides `ip_range_denylist`;
    /// checked for every resolved address and every redirect. The default is the default of
    /// `ip_range_denylist`, so that allowing a range for federation does not open it to
    /// previews.
    pub url_preview_ip_denylist: Vec<String>,
    /// Reach identity servers (third-party invites) over plain `http`, at any address, loopback
    /// included (a fake identity server in tests and development). Off by default: identity
    /// servers are reached over `https`, never at an address in `url_preview_ip_denylist`.
    pub identity_server_allow_http: bool,
    /// Act as a policy server (MSC4284) for rooms whose `m.room.policy` names this server and its
    /// policy-server key: serve `POST /_matrix/policy/v1/sign` and
    /// `/.well-known/matrix/policy_server`. Off by default.
    pub policy_server_enabled: bool,
    /// As a policy server: refuse events whose sender's server (or, for an invite, join or knock,
    /// the target's) matches one of these globs (`*` and `?`, as in server ACLs).
    pub policy_server_deny_servers: Vec<String>,
    /// As a policy server: refuse events whose sender (or, for an invite, join or knock, the
    /// target), a full user ID, matches one of these globs.
    pub policy_server_deny_users: Vec<String>,
    /// As a policy server: refuse events whose `body`, `formatted_body`, `name`, `topic` or
    /// `displayname` contains one of these texts (compared in lower case).
    pub policy_server_forbidden_text: Vec<String>,
    /// As a policy server: refuse events from senders who are not joined to the room in this
    /// server's view, except their own membership changes (joins, knocks, leaves).
    pub policy_server_require_membership: bool,
    /// TURN server URIs handed to clients by `GET /voip/turnServer` (`turn:host:3478?transport=udp`,
    /// `turns:…`); TURN is off while this or `turn_shared_secret` is empty.
    pub turn_uris: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret` with
    /// `use-auth-secret`): credentials are `expiry:user` and its base64 HMAC-SHA1.
    pub turn_shared_secret: Option<String>,
    /// How long TURN credentials stay valid, in milliseconds.
    pub turn_ttl_ms: u64,
    /// Longest delay of a delayed event (MSC4140, `org.matrix.msc4140.delay`), in milliseconds;
    /// 0 turns delayed events off.
    pub max_event_delay_duration_ms: u64,
    /// LiveKit JWT service URLs offered as MatrixRTC transports (MSC4143: `rtc/transports` and
    /// `org.matrix.msc4143.rtc_foci` in `/.well-known/matrix/client`).
    pub rtc_livekit_service_urls: Vec<String>,
    /// How often the retention job deletes events that outlived their room's `max_lifetime`
    /// (`m.room.retention`, and story rooms' default), in milliseconds (at least 10).
    pub retention_purge_interval_ms: u64,
    /// The `max_lifetime` of story rooms (`docs/stories.md`) without an `m.room.retention`
    /// event, in milliseconds: 24 hours by default.
    pub story_lifetime_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            database_path: PathBuf::from("./data"),
            backup_path: None,
            registration: Registration::Open,
            registration_token: None,
            registration_shared_secret: None,
            server_notices_localpart: "_server".to_owned(),
            server_notices_room_name: "Server Notices".to_owned(),
            admin_user: "plait".to_owned(),
            log: "info,ruma_state_res=warn".to_owned(),
            max_request_bytes: 20 * 1024 * 1024,
            http_header_timeout_ms: 30_000,
            http_body_timeout_ms: 60_000,
            max_connections: 8192,
            max_connections_per_ip: 512,
            trusted_proxies: Vec::new(),
            rate_limits: RateLimitSettings::default(),
            default_room_version: "12".to_owned(),
            sync_writes: true,
            database_memory_mb: 64,
            memory_trim_quiet_ms: 1_000,
            refreshable_token_lifetime_ms: 60 * 60 * 1000,
            client_base_url: None,
            well_known_server: None,
            metrics_address: None,
            federation_listen: None,
            federation_request_timeout_ms: 60_000,
            ip_range_denylist: default_ip_ranges(),
            ip_range_allowlist: Vec::new(),
            tls_cert: None,
            tls_key: None,
            federation_ca_file: None,
            trusted_key_servers: Vec::new(),
            federation_hosts: BTreeMap::new(),
            presence_offline_timeout_ms: 5 * 60 * 1000,
            push_gateway_allow_http: false,
            read_notification_retention_ms: 30 * 24 * 60 * 60 * 1000,
            media_path: None,
            appservice_dir: None,
            max_upload_bytes: 50 * 1024 * 1024,
            legacy_media_unauthenticated: false,
            url_preview_enabled: false,
            url_preview_ip_denylist: default_ip_ranges(),
            identity_server_allow_http: false,
            policy_server_enabled: false,
            policy_server_deny_servers: Vec::new(),
            policy_server_deny_users: Vec::new(),
            policy_server_forbidden_text: Vec::new(),
            policy_server_require_membership: true,
            turn_uris: Vec::new(),
            turn_shared_secret: None,
            turn_ttl_ms: 24 * 60 * 60 * 1000,
            max_event_delay_duration_ms: 7 * 24 * 60 * 60 * 1000,
            rtc_livekit_service_urls: Vec::new(),
            retention_purge_interval_ms: 60_000,
            story_lifetime_ms: 24 * 60 * 60 * 1000,
        }
    }
}

/// The default of `ip_range_denylist` and `url_preview_ip_denylist`.
fn default_ip_ranges() -> Vec<String> {
    DEFAULT_IP_RANGE_DENYLIST
        .iter()
        .map(|range| (*range).to_owned())
        .collect()
}

/// Ranges no outgoing request connects to unless the operator says otherwise: this host,
/// private networks, link-local, multicast, documentation and other reserved ranges.
const DEFAULT_IP_RANGE_DENYLIST: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// An IP range in CIDR notation (`10.0.0.0/8`, `fe80::/10`; a bare address is a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    network: std::net::IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `address/prefix`.
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: std::net::IpAddr = address.trim().parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().ok()?,
            None => bits,
        };
        (prefix <= bits).then_some(Self { network, prefix })
    }

    /// Whether `address` lies in the range; an IPv4-mapped IPv6 address is checked as IPv4.
    pub fn contains(&self, address: std::net::IpAddr) -> bool {
        let address = match address {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, std::net::IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (std::net::IpAddr::V4(network), std::net::IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (std::net::IpAddr::V6(network), std::net::IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// Where outgoing connections may go: an address is refused when a `strict` range holds it, or
/// when a `denied` range holds it and no `allowed` one does.
#[derive(Clone, Debug, Default)]
pub struct IpPolicy {
    denied: Vec<IpRange>,
    allowed: Vec<IpRange>,
    strict: Vec<IpRange>,
}

impl IpPolicy {
    /// Whether a connection to `address` is allowed.
    pub fn permits(&self, address: IpAddr) -> bool {
        let within = |ranges: &[IpRange]| ranges.iter().any(|range| range.contains(address));
        !within(&self.strict) && (within(&self.allowed) || !within(&self.denied))
    }
}

/// Accepts `"10"` and `10` alike.
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        String(String),
        Number(u64),
    }
    Ok(match Text::deserialize(deserializer)? {
        Text::String(text) => text,
        Text::Number(number) => number.to_string(),
    })
}

/// Accepts a map, or the text `name=address,name=address` (as an environment variable gives it).
fn string_or_map<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Hosts {
        Text(String),
        Map(BTreeMap<String, SocketAddr>),
    }
    match Hosts::deserialize(deserializer)? {
        Hosts::Map(map) => Ok(map),
        Hosts::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (name, address) = entry.split_once('=').ok_or_else(|| {
                    serde::de::Error::custom(format!("`{entry}` is not name=ip:port"))
                })?;
                let address = address.trim().parse().map_err(|_| {
                    serde::de::Error::custom(format!("`{address}` is not an ip:port address"))
                })?;
                Ok((name.trim().to_owned(), address))
            })
            .collect(),
    }
}

/// Keys that may be overridden from the environment; anything else with the prefix is ignored.
/// A key inside a table is named with a dot and set with an underscore
/// (`rate_limits.enabled` from `PLAIT_RATE_LIMITS_ENABLED`).
const ENV_KEYS: &[&str] = &[
    "server_name",
    "listen",
    "database_path",
    "registration",
    "registration_token",
    "registration_shared_secret",
    "server_notices_localpart",
    "server_notices_room_name",
    "admin_user",
    "log",
    "max_request_bytes",
    "http_header_timeout_ms",
    "http_body_timeout_ms",
    "max_connections",
    "max_connections_per_ip",
    "trusted_proxies",
    "rate_limits.enabled",
    "default_room_version",
    "sync_writes",
    "database_memory_mb",
    "memory_trim_quiet_ms",
    "refreshable_token_lifetime_ms",
    "client_base_url",
    "well_known_server",
    "federation_listen",
    "federation_request_timeout_ms",
    "ip_range_denylist",
    "ip_range_allowlist",
    "tls_cert",
    "tls_key",
    "federation_ca_file",
    "trusted_key_servers",
    "federation_hosts",
    "presence_offline_timeout_ms",
    "push_gateway_allow_http",
    "read_notification_retention_ms",
    "media_path",
    "appservice_dir",
    "max_upload_bytes",
    "legacy_media_unauthenticated",
    "url_preview_enabled",
    "url_preview_ip_denylist",
    "identity_server_allow_http",
    "policy_server_enabled",
    "policy_server_deny_servers",
    "policy_server_deny_users",
    "policy_server_forbidden_text",
    "policy_server_require_membership",
];

/// The configuration key an environment variable (its name after the prefix) sets, if any.
fn env_key(name: &figment::value::UncasedStr) -> Option<figment::value::Uncased<'_>> {
    ENV_KEYS
        .iter()
        .find(|key| key.replace('.', "_").eq_ignore_ascii_case(name.as_str()))
        .map(|key| (*key).into())
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then `PLAIT_*` variables, and validates the result.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter_map(env_key)
                .lowercase(true),
        );
        Self::from_figment(figment)
    }

    /// Loads from a TOML string only (tests and the example-file check).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn from_figment(figment: Figment) -> Result<Self, String> {
        let config: Config = figment.extract().map_err(|error| {
            let key = error.path.join(".");
            if key.is_empty() {
                format!("invalid configuration: {error}")
            } else {
                format!("invalid configuration key `{key}`: {}", error.kind)
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that serde cannot, naming the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if <&ruma::ServerName>::try_from(self.server_name.as_str()).is_err() {
            return Err(format!(
                "invalid configuration key `server_name`: `{}` is not a valid server name",
                self.server_name
            ));
        }
        for (key, localpart) in [
            ("server_notices_localpart", &self.server_notices_localpart),
            ("admin_user", &self.admin_user),
        ] {
            let user_id = format!("@{localpart}:{}", self.server_name);
            if localpart.is_empty()
                || *localpart != localpart.to_lowercase()
                || <&ruma::UserId>::try_from(user_id.as_str()).is_err()
            {
                return Err(format!(
                    "invalid configuration key `{key}`: `{localpart}` is not a lower-case user ID localpart"
                ));
            }
        }
        if self.admin_user == self.server_notices_localpart {
            return Err(
                "invalid configuration key `admin_user`: the server notices user has that localpart"
                    .to_owned(),
            );
        }
        let version = ruma::RoomVersionId::try_from(self.default_room_version.as_str())
            .map_err(|_| "invalid configuration key `default_room_version`".to_owned())?;
        if version.rules().is_none() {
            return Err(format!(
                "invalid configuration key `default_room_version`: room version {version} is not supported"
            ));
        }
        self.validate_limits()?;
        if let Some(delegated) = &self.well_known_server {
            if <&ruma::ServerName>::try_from(delegated.as_str()).is_err() {
                return Err(format!(
                    "invalid configuration key `well_known_server`: `{delegated}` is not a host name with an optional port"
                ));
            }
        }
        for notary in &self.trusted_key_servers {
            if <&ruma::ServerName>::try_from(notary.as_str()).is_err() {
                return Err(format!(
                    "invalid configuration key `trusted_key_servers`: `{notary}` is not a valid server name"
                ));
            }
        }
        if self.presence_offline_timeout_ms < 1000 {
            return Err(
                "invalid configuration key `presence_offline_timeout_ms`: must be at least 1000"
                    .to_owned(),
            );
        }
        for (key, ranges) in [
            ("url_preview_ip_denylist", &self.url_preview_ip_denylist),
            ("ip_range_denylist", &self.ip_range_denylist),
            ("ip_range_allowlist", &self.ip_range_allowlist),
            ("trusted_proxies", &self.trusted_proxies),
        ] {
            if let Some(range) = ranges.iter().find(|range| IpRange::parse(range).is_none()) {
                return Err(format!(
                    "invalid configuration key `{key}`: `{range}` is not an IP range"
                ));
            }
        }
        self.rate_limits.validate()?;
        if self.federation_listen.is_some() != (self.tls_cert.is_some() && self.tls_key.is_some()) {
            return Err("invalid configuration key `federation_listen`: needs `tls_cert` and `tls_key` (and they need it)".to_owned());
        }
        Ok(())
    }

    /// The sizes, timeouts and connection caps: each at least its floor.
    fn validate_limits(&self) -> Result<(), String> {
        if self.max_request_bytes < 65536 {
            return Err(
                "invalid configuration key `max_request_bytes`: must be at least 65536".to_owned(),
            );
        }
        for (key, value) in [
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("http_body_timeout_ms", self.http_body_timeout_ms),
            (
                "federation_request_timeout_ms",
                self.federation_request_timeout_ms,
            ),
        ] {
            if value < 100 {
                return Err(format!(
                    "invalid configuration key `{key}`: must be at least 100"
                ));
            }
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err(
                "invalid configuration key `max_connections`: it and `max_connections_per_ip` must be at least 1"
                    .to_owned(),
            );
        }
        if self.memory_trim_quiet_ms != 0 && self.memory_trim_quiet_ms < 100 {
            return Err(
                "invalid configuration key `memory_trim_quiet_ms`: must be 0 (off) or at least 100"
                    .to_owned(),
            );
        }
        if self.database_memory_mb < 8 {
            return Err(
                "invalid configuration key `database_memory_mb`: must be at least 8".to_owned(),
            );
        }
        if self.retention_purge_interval_ms < 10 || self.story_lifetime_ms == 0 {
            return Err(
                "invalid configuration key `retention_purge_interval_ms`: must be at least 10 (and `story_lifetime_ms` at least 1)"
                    .to_owned(),
            );
        }
        if self.max_upload_bytes == 0 {
            return Err(
                "invalid configuration key `max_upload_bytes`: must be at least 1".to_owned(),
            );
        }
        Ok(())
    }

    /// The trusted notary servers as ruma types; valid after `validate`.
    pub fn trusted_key_servers(&self) -> Vec<ruma::OwnedServerName> {
        self.trusted_key_servers
            .iter()
            .filter_map(|name| ruma::OwnedServerName::try_from(name.as_str()).ok())
            .collect()
    }

    /// The URL-preview deny-list as ranges; valid after `validate`.
    pub fn url_preview_ip_denylist(&self) -> Vec<IpRange> {
        parse_ranges(&self.url_preview_ip_denylist)
    }

    /// Where outgoing server-server requests may connect: `ip_range_denylist` less
    /// `ip_range_allowlist`.
    pub fn outbound_ip_policy(&self) -> IpPolicy {
        IpPolicy {
            denied: parse_ranges(&self.ip_range_denylist),
            allowed: parse_ranges(&self.ip_range_allowlist),
            strict: Vec::new(),
        }
    }

    /// Where requests to a URL a user named (previews, identity servers, push gateways) may
    /// connect: [`Self::outbound_ip_policy`], and never into `url_preview_ip_denylist`.
    pub fn user_url_ip_policy(&self) -> IpPolicy {
        IpPolicy {
            strict: self.url_preview_ip_denylist(),
            ..self.outbound_ip_policy()
        }
    }

    /// The trusted reverse proxies as ranges; valid after `validate`.
    pub fn trusted_proxies(&self) -> Vec<IpRange> {
        self.trusted_proxies
            .iter()
            .filter_map(|range| IpRange::parse(range))
            .collect()
    }

    /// The media folder: `media_path`, or `media` inside the database folder.
    pub fn media_path(&self) -> PathBuf {
        self.media_path
            .clone()
            .unwrap_or_else(|| self.database_path.join("media"))
    }

    /// The backup folder: `backup_path`, or `<database_path>-backups` beside the database.
    pub fn backup_path(&self) -> PathBuf {
        if let Some(path) = &self.backup_path {
            return path.clone();
        }
        match self.database_path.file_name() {
            Some(name) => {
                let mut name = name.to_owned();
                name.push("-backups");
                self.database_path.with_file_name(name)
            }
            None => self.database_path.join("backups"),
        }
    }

    /// The server name as a ruma type; valid after `validate`.
    pub fn server_name(&self) -> &ruma::ServerName {
        <&ruma::ServerName>::try_from(self.server_name.as_str())
            .expect("validated in Config::validate")
    }
}

/// Ranges from their text; valid after `validate`.
fn parse_ranges(ranges: &[String]) -> Vec<IpRange> {
    ranges
        .iter()
        .filter_map(|range| IpRange::parse(range))
        .collect()
}

#[cfg(test)]
mod tests;
