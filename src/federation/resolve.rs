//! Server discovery: from a server name to the address to connect to and the name to present,
//! in the order of the spec's "Resolving server names" (server-server API, v1.19).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

/// The default federation port.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a `.well-known` answer is trusted when it says nothing (the spec suggests 24 hours).
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Upper bound on a `.well-known` answer's lifetime (the spec suggests 48 hours).
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long a failed `.well-known` lookup is remembered.
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(3600);

/// Where to send requests for a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Host and port for the URL: the TLS certificate must be valid for this host.
    pub authority: String,
    /// The `Host` header to send.
    pub host_header: String,
    /// Addresses to connect to instead of resolving `authority`'s host (SRV targets).
    pub connect_to: Option<(String, u16)>,
}

/// A `.well-known/matrix/server` answer: the delegated server name and how long to keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WellKnown {
    pub server: Option<String>,
    pub ttl: Option<Duration>,
}

/// The network look-ups discovery needs, so that the decision logic can be tested without a network.
pub trait Lookups {
    /// `GET https://<host>/.well-known/matrix/server`; `None` when it fails or is invalid.
    fn well_known(&self, host: &str)
        -> impl std::future::Future<Output = Option<WellKnown>> + Send;
    /// An SRV lookup: the first (target, port) by priority and weight.
    fn srv(&self, name: &str) -> impl std::future::Future<Output = Option<(String, u16)>> + Send;
}

/// Splits a server name into host and optional port; IPv6 literals keep their brackets.
pub fn split_server_name(name: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = name.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &name[..end + 2];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((name, None)),
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

fn with_port(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// Discovery with a cache of `.well-known` answers.
#[derive(Default)]
pub struct Resolver {
    well_known: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl Resolver {
    /// Resolves a server name, following the spec's steps in order.
    pub async fn resolve(&self, lookups: &impl Lookups, server_name: &str) -> Option<Resolved> {
        let (host, port) = split_server_name(server_name)?;
        // Steps 1 and 2: an IP literal, or a hostname with an explicit port, is used as it is.
        if is_ip_literal(host) || port.is_some() {
            return Some(Resolved {
                authority: with_port(host, port.unwrap_or(DEFAULT_PORT)),
                host_header: server_name.to_owned(),
                connect_to: None,
            });
        }
        // Step 3: `.well-known` delegation.
        if let Some(delegated) = self.delegation(lookups, host).await {
            if let Some((delegated_host, delegated_port)) = split_server_name(&delegated) {
                if is_ip_literal(delegated_host) || delegated_port.is_some() {
                    return Some(Resolved {
                        authority: with_port(
                            delegated_host,
                            delegated_port.unwrap_or(DEFAULT_PORT),
                        ),
                        host_header: delegated.clone(),
                        connect_to: None,
                    });
                }
                return Some(srv_or_default(lookups, delegated_host).await);
            }
        }
        // Steps 4–6: SRV records of the server name itself, then the default port.
        Some(srv_or_default(lookups, host).await)
    }

    async fn delegation(&self, lookups: &impl Lookups, host: &str) -> Option<String> {
        if let Some((expires, server)) = self.well_known.lock().get(host) {
            if *expires > Instant::now() {
                return server.clone();
            }
        }
        let answer = lookups.well_known(host).await;
        let (ttl, server) = match answer {
            Some(WellKnown { server, ttl }) => (
                ttl.unwrap_or(WELL_KNOWN_DEFAULT_TTL)
                    .min(WELL_KNOWN_MAX_TTL),
                server,
            ),
            None => (WELL_KNOWN_ERROR_TTL, None),
        };
        self.well_known
            .lock()
            .insert(host.to_owned(), (Instant::now() + ttl, server.clone()));
        server
    }
}

/// SRV `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, then port 8448; the certificate
/// and `Host` header are for `host` in every case.
async fn srv_or_default(lookups: &impl Lookups, host: &str) -> Resolved {
    for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
        if let Some((target, port)) = lookups.srv(&format!("{prefix}.{host}")).await {
            return Resolved {
                authority: with_port(host, port),
                host_header: host.to_owned(),
                connect_to: Some((target.trim_end_matches('.').to_owned(), port)),
            };
        }
    }
    Resolved {
        authority: with_port(host, DEFAULT_PORT),
        host_header: host.to_owned(),
        connect_to: None,
    }
}

/// Parses a `Cache-Control` header's `max-age` (or `no-store`/`no-cache` as zero).
pub fn cache_ttl(cache_control: Option<&str>) -> Option<Duration> {
    let value = cache_control?;
    let mut ttl = None;
    for directive in value.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            ttl = seconds.parse().ok().map(Duration::from_secs);
        }
    }
    ttl
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Fake {
        well_known: HashMap<&'static str, &'static str>,
        srv: HashMap<&'static str, (&'static str, u16)>,
        calls: Mutex<Vec<String>>,
    }

    impl Lookups for Fake {
        async fn well_known(&self, host: &str) -> Option<WellKnown> {
            self.calls.lock().push(format!("well-known {host}"));
            self.well_known.get(host).map(|server| WellKnown {
                server: Some((*server).to_owned()),
                ttl: None,
            })
        }

        async fn srv(&self, name: &str) -> Option<(String, u16)> {
            self.calls.lock().push(format!("srv {name}"));
            self.srv
                .get(name)
                .map(|(target, port)| ((*target).to_owned(), *port))
        }
    }

    /// The lookups behind the spec's discovery cases: `.well-known` delegations of `a.org` to
    /// `e.org`, and SRV records (current and deprecated names) for some of the names.
    fn fake() -> Fake {
        let mut fake = Fake::default();
        fake.well_known.extend([
            ("a.org", "10.0.0.1"),
            ("b.org", "matrix.b.org:443"),
            ("c.org", "fed.c.org"),
            ("d.org", "fed.d.org"),
            ("e.org", "fed.e.org"),
        ]);
        fake.srv.extend([
            ("_matrix-fed._tcp.fed.c.org", ("target.c.org.", 8443)),
            ("_matrix._tcp.fed.d.org", ("old.d.org", 8000)),
            ("_matrix-fed._tcp.f.org", ("t.f.org", 1)),
            ("_matrix._tcp.g.org", ("t.g.org", 2)),
        ]);
        fake
    }

    /// A server name and what it resolves to: the authority, the `Host` header, and the SRV
    /// target to connect to, if any.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Option<(&'static str, u16)>,
    );

    async fn check(fake: &Fake, cases: &[Case]) {
        for (name, authority, host, connect) in cases {
            let expected = Resolved {
                authority: (*authority).to_owned(),
                host_header: (*host).to_owned(),
                connect_to: connect.map(|(target, port)| (target.to_owned(), port)),
            };
            let got = Resolver::default().resolve(fake, name).await.unwrap();
            assert_eq!(got, expected, "resolving {name}");
        }
    }

    #[tokio::test]
    async fn ip_literals_and_explicit_ports_look_nothing_up() {
        let fake = fake();
        check(
            &fake,
            &[
                // 1: IP literals, with and without a port.
                ("127.0.0.2:9000", "127.0.0.2:9000", "127.0.0.2:9000", None),
                ("[::1]", "[::1]:8448", "[::1]", None),
                // 2: a hostname with an explicit port.
                (
                    "example.org:1234",
                    "example.org:1234",
                    "example.org:1234",
                    None,
                ),
            ],
        )
        .await;
        assert!(fake.calls.lock().is_empty());
    }

    #[tokio::test]
    async fn delegation_follows_the_spec_order() {
        check(
            &fake(),
            &[
                // 3.1–3.2: delegation to an IP literal or a name with a port.
                ("a.org", "10.0.0.1:8448", "10.0.0.1", None),
                ("b.org", "matrix.b.org:443", "matrix.b.org:443", None),
                // 3.3–3.5: delegation to a bare name: SRV of the delegated name, legacy SRV,
                // then 8448.
                (
                    "c.org",
                    "fed.c.org:8443",
                    "fed.c.org",
                    Some(("target.c.org", 8443)),
                ),
                (
                    "d.org",
                    "fed.d.org:8000",
                    "fed.d.org",
                    Some(("old.d.org", 8000)),
                ),
                ("e.org", "fed.e.org:8448", "fed.e.org", None),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn without_delegation_srv_comes_before_the_default_port() {
        let fake = fake();
        check(
            &fake,
            &[
                // 4–6: SRV of the name, legacy SRV, then the default port.
                ("f.org", "f.org:1", "f.org", Some(("t.f.org", 1))),
                ("g.org", "g.org:2", "g.org", Some(("t.g.org", 2))),
                ("h.org", "h.org:8448", "h.org", None),
            ],
        )
        .await;
        // The new SRV name is asked before the deprecated one.
        let calls = fake.calls.lock().clone();
        let position = |call: &str| calls.iter().position(|made| made == call).unwrap();
        assert!(position("srv _matrix-fed._tcp.h.org") < position("srv _matrix._tcp.h.org"));
    }

    #[tokio::test]
    async fn well_known_answers_are_cached() {
        let mut fake = Fake::default();
        fake.well_known.insert("a.org", "10.0.0.1:9");
        let resolver = Resolver::default();
        for _ in 0..3 {
            resolver.resolve(&fake, "a.org").await.unwrap();
        }
        let asked = fake
            .calls
            .lock()
            .iter()
            .filter(|c| c.starts_with("well-known"))
            .count();
        assert_eq!(asked, 1);
    }

    #[test]
    fn server_names_and_cache_headers_parse() {
        assert_eq!(split_server_name("a.org"), Some(("a.org", None)));
        assert_eq!(split_server_name("a.org:80"), Some(("a.org", Some(80))));
        assert_eq!(split_server_name("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(split_server_name("a.org:x"), None);
        assert_eq!(
            cache_ttl(Some("public, max-age=600")),
            Some(Duration::from_secs(600))
        );
        assert_eq!(cache_ttl(Some("no-store")), Some(Duration::ZERO));
        assert_eq!(cache_ttl(None), None);
    }
}
