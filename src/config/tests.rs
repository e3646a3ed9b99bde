//! Unit tests of the configuration: the example file, errors naming their key, and value forms.

use super::*;

#[test]
fn example_config_parses_and_covers_every_field() {
    let text = include_str!("../../docs/config.example.toml");
    let config = Config::from_toml(text).expect("example config parses");
    assert_eq!(config.server_name, "localhost");
    let value = toml::Value::try_from(Config::default()).unwrap();
    for key in value.as_table().unwrap().keys() {
        assert!(
            text.contains(&format!("{key} =")),
            "docs/config.example.toml does not mention `{key}`"
        );
    }
    for key in ENV_KEYS {
        assert!(
            value.as_table().unwrap().contains_key(*key) || text.contains(key),
            "unknown env key {key}"
        );
    }
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        ("server_name = \"bad name!\"", "server_name"),
        ("registration = \"sometimes\"", "registration"),
        ("registration = \"token\"", "registration_token"),
        ("listen = \"nowhere\"", "listen"),
        ("default_room_version = \"99\"", "default_room_version"),
        ("no_such_key = 1", "no_such_key"),
        (
            "server_notices_localpart = \"Not Valid\"",
            "server_notices_localpart",
        ),
        (
            "presence_offline_timeout_ms = 10",
            "presence_offline_timeout_ms",
        ),
        (
            "url_preview_ip_denylist = [\"10.0.0.0/99\"]",
            "url_preview_ip_denylist",
        ),
        ("database_memory_mb = 2", "database_memory_mb"),
        ("ip_range_denylist = [\"10.0.0.0/99\"]", "ip_range_denylist"),
        ("ip_range_allowlist = [\"localhost\"]", "ip_range_allowlist"),
        (
            "federation_request_timeout_ms = 5",
            "federation_request_timeout_ms",
        ),
    ];
    for (text, key) in cases {
        let error = Config::from_toml(text).unwrap_err();
        assert!(error.contains(key), "{text}: {error}");
    }
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
