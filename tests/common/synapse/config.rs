//! The `homeserver.yaml` and logging config the Synapse harness writes for each server.
//!
//! Both are written as JSON, which YAML parsers read as well. The choices here are the ones
//! interop tests depend on: loopback federation allowed, only the test CA trusted, no rate
//! limits, and quick retries to a destination that was not up yet.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use rand::{distributions::Alphanumeric, Rng};
use serde_json::{json, Value};

use super::super::tls::TestCa;

/// The harness's `homeserver.yaml`, except `server_name`.
pub(super) fn homeserver(
    dir: &Path,
    ip: IpAddr,
    client_port: u16,
    federation_port: u16,
    ca: &TestCa,
) -> Value {
    let ca_path = ca.write_ca(dir);
    let (chain_path, key_path) = ca.issue(ip, &[], dir);
    let listener = |port: u16, tls: bool, resources: &[&str]| {
        json!({
            "port": port,
            "bind_addresses": [ip.to_string()],
            "type": "http",
            "tls": tls,
            "x_forwarded": false,
            "resources": [{"names": resources, "compress": false}],
        })
    };
    let mut config = json!({
        "public_baseurl": format!("http://{}/", SocketAddr::new(ip, client_port)),
        "pid_file": dir.join("homeserver.pid"),
        "listeners": [
            listener(client_port, false, &["client"]),
            listener(federation_port, true, &["federation", "keys"]),
        ],
        "tls_certificate_path": chain_path,
        "tls_private_key_path": key_path,
        "federation_verify_certificates": true,
        "federation_custom_ca_list": [ca_path],
        "database": {"name": "sqlite3", "args": {"database": dir.join("homeserver.db")}},
        "log_config": dir.join("log.yaml"),
        "media_store_path": dir.join("media"),
        "signing_key_path": dir.join("signing.key"),
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "report_stats": false,
        "enable_metrics": false,
        "enable_registration": true,
        "enable_registration_without_verification": true,
        // The default of 12 rounds costs about 0.3 s per registration or login.
        "bcrypt_rounds": 4,
        "registration_shared_secret": secret(),
        "macaroon_secret_key": secret(),
        "form_secret": secret(),
        "url_preview_enabled": false,
        "presence": {"enabled": true},
        "allow_public_rooms_over_federation": true,
        // Synapse blocks private and loopback ranges by default; tests federate over 127/8.
        // It reads the old key names (`*_blacklist`, `*_whitelist`).
        "ip_range_blacklist": [],
        "federation_ip_range_blacklist": [],
        "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        // A destination that failed once is skipped for 10 minutes by default; a test's
        // other server may simply not have been up yet, so retry quickly instead.
        "federation": {
            "client_timeout": "20s",
            "max_short_retry_delay": "1s",
            "max_long_retry_delay": "2s",
            "max_short_retries": 2,
            "max_long_retries": 3,
            "destination_min_retry_interval": "1s",
            "destination_retry_multiplier": 1,
            "destination_max_retry_interval": "2s",
        },
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 100000,
            "sleep_delay": 1,
            "reject_limit": 100000,
            "concurrent": 1000,
        },
    });
    let unlimited = json!({"per_second": 100000, "burst_count": 100000});
    for key in [
        "rc_message",
        "rc_registration",
        "rc_registration_token_validity",
        "rc_admin_redaction",
        "rc_joins_per_room",
        "rc_key_requests",
        "rc_3pid_validation",
        "rc_third_party_invite",
        "rc_media_create",
        "rc_delayed_event_mgmt",
        "rc_room_creation",
        "rc_reports",
        "rc_user_directory",
        "rc_profile",
    ] {
        config[key] = unlimited.clone();
    }
    for (key, parts) in [
        ("rc_login", &["address", "account", "failed_attempts"][..]),
        ("rc_joins", &["local", "remote"]),
        ("rc_invites", &["per_room", "per_user", "per_issuer"]),
        ("rc_presence", &["per_user"]),
    ] {
        config[key] = parts
            .iter()
            .map(|part| (part.to_string(), unlimited.clone()))
            .collect();
    }
    config
}

/// Python `logging` config: everything at INFO (or `PLAIT_SYNAPSE_LOG_LEVEL`) into
/// `homeserver.log`. Synapse adds the filter that fills in `%(request)s` itself.
pub(super) fn logging(dir: &Path) -> Value {
    let level = std::env::var("PLAIT_SYNAPSE_LOG_LEVEL").unwrap_or_else(|_| "INFO".to_owned());
    json!({
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s %(levelname)s %(name)s:%(lineno)d %(request)s %(message)s",
            },
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": dir.join("homeserver.log"),
                "encoding": "utf8",
            },
        },
        "root": {"level": level, "handlers": ["file"]},
        "disable_existing_loggers": false,
    })
}

/// A random secret for the config's keys that need one.
fn secret() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}
