//! Unit tests of the configuration: the example file, errors naming their key, and value forms.

use super::*;

#[test]
fn example_config_parses_and_covers_every_field() {
    let text = include_str!("../../docs/config.example.toml");
    let config = Config::from_toml(text).expect("example config parses");
    assert_eq!(config.server_name, "localhost");
    let value = toml::Value::try_from(Config::default()).unwrap();
    for (key, field) in value.as_table().unwrap() {
        // A table such as `[rate_limits]` is written as a section with each of its keys.
        match field.as_table() {
            Some(table) if text.contains(&format!("[{key}]")) => {
                for inner in table.keys() {
                    assert!(
                        text.contains(&format!("{inner} =")),
                        "docs/config.example.toml does not mention `{key}.{inner}`"
                    );
                }
            }
            _ => assert!(
                text.contains(&format!("{key} =")),
                "docs/config.example.toml does not mention `{key}`"
            ),
        }
    }
    for key in ENV_KEYS {
        // A dotted key names a key inside a table (`rate_limits.enabled`).
        let known = key
            .split('.')
            .try_fold(&value, |table, part| table.get(part))
            .is_some();
        assert!(known || text.contains(key), "unknown env key {key}");
    }
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        ("server_name = \"bad name!\"", "server_name"),
        ("registration = \"sometimes\"", "registration"),
        ("listen = \"nowhere\"", "listen"),
        ("default_room_version = \"99\"", "default_room_version"),
        ("no_such_key = 1", "no_such_key"),
        (
            "server_notices_localpart = \"Not Valid\"",
            "server_notices_localpart",
        ),
        ("admin_user = \"Not Valid\"", "admin_user"),
        ("admin_user = \"_server\"", "admin_user"),
        (
            "presence_offline_timeout_ms = 10",
            "presence_offline_timeout_ms",
        ),
        (
            "url_preview_ip_denylist = [\"10.0.0.0/99\"]",
            "url_preview_ip_denylist",
        ),
        ("database_memory_mb = 2", "database_memory_mb"),
        (
            "retention_purge_interval_ms = 0",
            "retention_purge_interval_ms",
        ),
        ("memory_trim_quiet_ms = 5", "memory_trim_quiet_ms"),
        ("ip_range_denylist = [\"10.0.0.0/99\"]", "ip_range_denylist"),
        ("ip_range_allowlist = [\"localhost\"]", "ip_range_allowlist"),
        (
            "federation_request_timeout_ms = 5",
            "federation_request_timeout_ms",
        ),
        ("trusted_proxies = [\"proxy\"]", "trusted_proxies"),
        (
            "[rate_limits]\nmessage = { per_second = 0, burst = 10 }",
            "rate_limits.message",
        ),
        (
            "[rate_limits]\njoins = { per_second = 1, burst = 0 }",
            "rate_limits.joins",
        ),
        ("[rate_limits]\nno_such_limit = true", "no_such_limit"),
    ];
    for (text, key) in cases {
        let error = Config::from_toml(text).unwrap_err();
        assert!(error.contains(key), "{text}: {error}");
    }
}

#[test]
fn memory_trimming_defaults_to_a_quiet_second_and_zero_switches_it_off() {
    assert_eq!(Config::default().memory_trim_quiet_ms, 1_000);
    let config = Config::from_toml("memory_trim_quiet_ms = 0").unwrap();
    assert_eq!(config.memory_trim_quiet_ms, 0);
    let config = Config::from_toml("memory_trim_quiet_ms = 250").unwrap();
    assert_eq!(config.memory_trim_quiet_ms, 250);
}

#[test]
fn federation_hosts_come_as_a_table_or_as_text() {
    let config = Config::from_toml("federation_hosts = { \"hs1\" = \"127.0.0.1:8448\" }").unwrap();
    assert_eq!(
        config.federation_hosts["hs1"],
        "127.0.0.1:8448".parse().unwrap()
    );
    let config =
        Config::from_toml("federation_hosts = \"hs1=127.0.0.1:1000, hs2=127.0.0.2:2000\"").unwrap();
    assert_eq!(config.federation_hosts.len(), 2);
    assert_eq!(
        config.federation_hosts["hs2"],
        "127.0.0.2:2000".parse().unwrap()
    );
    let error = Config::from_toml("federation_hosts = \"hs1\"").unwrap_err();
    assert!(error.contains("federation_hosts"), "{error}");
}

#[test]
fn ip_ranges_match_their_addresses() {
    let check = |range: &str, address: &str, expected: bool| {
        let range = IpRange::parse(range).unwrap();
        assert_eq!(
            range.contains(address.parse().unwrap()),
            expected,
            "{address}"
        );
    };
    check("127.0.0.0/8", "127.0.0.1", true);
    check("127.0.0.0/8", "128.0.0.1", false);
    check("127.0.0.0/8", "::ffff:127.0.0.1", true);
    check("10.0.0.0/8", "::1", false);
    check("fe80::/10", "fe80::1", true);
    check("fe80::/10", "2001:db8::1", false);
    check("0.0.0.0/0", "8.8.8.8", true);
    check("::1", "::1", true);
    assert!(IpRange::parse("10.0.0.0/33").is_none());
    assert!(IpRange::parse("nonsense").is_none());
    let denylist = Config::default().url_preview_ip_denylist();
    for address in [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
    ] {
        let address = address.parse().unwrap();
        assert!(
            denylist.iter().any(|range| range.contains(address)),
            "{address}"
        );
    }
    let public = "93.184.216.34".parse().unwrap();
    assert!(!denylist.iter().any(|range| range.contains(public)));
}

#[test]
fn numeric_room_versions_are_accepted() {
    let config = Config::from_toml("default_room_version = 10").unwrap();
    assert_eq!(config.default_room_version, "10");
}

#[test]
fn ip_literal_server_names_are_accepted() {
    let config = Config::from_toml("server_name = \"127.0.0.1:8448\"").unwrap();
    assert_eq!(config.server_name().as_str(), "127.0.0.1:8448");
}

#[test]
fn ip_range_lists_come_from_the_environment_as_arrays() {
    // The form the tests, the benchmark and the Complement deployer use.
    std::env::set_var("PLAIT_IP_RANGE_ALLOWLIST", r#"["127.0.0.0/8","::1/128"]"#);
    let config = Config::load(None);
    std::env::remove_var("PLAIT_IP_RANGE_ALLOWLIST");
    let config = config.unwrap();
    assert_eq!(config.ip_range_allowlist, ["127.0.0.0/8", "::1/128"]);
    assert!(config
        .outbound_ip_policy()
        .permits("127.0.0.1".parse().unwrap()));
    assert!(!Config::default()
        .outbound_ip_policy()
        .permits("127.0.0.1".parse().unwrap()));
}

#[test]
fn rate_limits_default_on_and_switch_off_from_a_table_or_the_environment() {
    let defaults = Config::default().rate_limits;
    assert!(defaults.enabled);
    assert_eq!(
        defaults.registration,
        Rate {
            per_second: 0.17,
            burst: 3
        }
    );
    let config = Config::from_toml(
        "[rate_limits]\nenabled = false\nmessage = { per_second = 2.5, burst = 4 }",
    )
    .unwrap();
    assert!(!config.rate_limits.enabled);
    assert_eq!(
        config.rate_limits.message,
        Rate {
            per_second: 2.5,
            burst: 4
        }
    );
    assert_eq!(
        config.rate_limits.joins, defaults.joins,
        "unnamed limits keep their default"
    );
    // The environment names a key inside a table with an underscore.
    assert_eq!(
        env_key("RATE_LIMITS_ENABLED".into()).as_deref(),
        Some("rate_limits.enabled".into())
    );
    assert_eq!(
        env_key("trusted_proxies".into()).as_deref(),
        Some("trusted_proxies".into())
    );
    assert!(env_key("rate_limits".into()).is_none());
    // The other test that loads from the environment sets an unrelated variable.
    std::env::set_var("PLAIT_RATE_LIMITS_ENABLED", "false");
    let loaded = Config::load(None);
    std::env::remove_var("PLAIT_RATE_LIMITS_ENABLED");
    let loaded = loaded.unwrap();
    assert!(!loaded.rate_limits.enabled);
    assert_eq!(loaded.rate_limits.message, defaults.message);
}

#[test]
fn backups_default_to_a_folder_beside_the_database() {
    let config = Config::from_toml("database_path = \"/var/lib/plait/db\"").unwrap();
    assert_eq!(
        config.backup_path(),
        PathBuf::from("/var/lib/plait/db-backups")
    );
    let config = Config::from_toml("backup_path = \"/backups\"").unwrap();
    assert_eq!(config.backup_path(), PathBuf::from("/backups"));
}
