//! Where outgoing connections may go: a `reqwest` resolver that keeps only the addresses an
//! [`IpPolicy`] permits (with host overrides for SRV targets and `federation_hosts`), and the
//! check of IP literals, which reqwest connects to without asking any resolver. Every outgoing
//! client (federation, push, identity servers, URL previews) goes through one of the two before
//! a connection is opened.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use parking_lot::RwLock;

use crate::config::IpPolicy;

/// Why a destination is refused, as the error a client reports.
pub type Refused = Box<dyn std::error::Error + Send + Sync>;

/// A host looked up as another name or address (an SRV target, a `federation_hosts` entry).
#[derive(Clone, Debug)]
struct Override {
    target: String,
    port: u16,
    /// Fixed by the operator (`federation_hosts`): not subject to the policy.
    exempt: bool,
}

/// The resolver of an outgoing client: a host's addresses less those the policy refuses; a host
/// with none left does not resolve, so no connection is opened.
pub struct GuardedResolver {
    policy: IpPolicy,
    overrides: RwLock<HashMap<String, Override>>,
}

impl GuardedResolver {
    /// A resolver that applies `policy`.
    pub fn new(policy: IpPolicy) -> Self {
        Self {
            policy,
            overrides: RwLock::new(HashMap::new()),
        }
    }

    /// The policy it applies.
    pub fn policy(&self) -> &IpPolicy {
        &self.policy
    }

    /// Looks `host` up as `target` (a name or IP literal) on `port` from now on; an `exempt`
    /// override (the operator's own) is not checked against the policy, and a later
    /// non-exempt one does not replace it.
    pub fn set_override(&self, host: &str, target: (String, u16), exempt: bool) {
        let mut overrides = self.overrides.write();
        if !exempt && overrides.get(host).is_some_and(|known| known.exempt) {
            return;
        }
        let (target, port) = target;
        overrides.insert(
            host.to_owned(),
            Override {
                target,
                port,
                exempt,
            },
        );
    }

    /// Whether `host` is looked up through an operator's fixed address.
    pub fn is_exempt(&self, host: &str) -> bool {
        self.overrides
            .read()
            .get(host)
            .is_some_and(|known| known.exempt)
    }

    /// The addresses of `host` the policy permits (all of them for an exempt override).
    pub async fn addresses(&self, host: &str) -> Result<Vec<SocketAddr>, Refused> {
        let known = self.overrides.read().get(host).cloned();
        let (name, port, exempt) = match known {
            Some(known) => (known.target, known.port, known.exempt),
            None => (host.to_owned(), 0, false),
        };
        let resolved = lookup_host(&name, port).await?;
        if exempt {
            return Ok(resolved);
        }
        let permitted: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|address| self.policy.permits(address.ip()))
            .collect();
        if permitted.is_empty() {
            return Err(format!("{host} has no address this server may connect to").into());
        }
        Ok(permitted)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        // The future must own what it uses: look up with a copy of the state it needs.
        let host = name.as_str().to_owned();
        let copy = Self {
            policy: self.policy.clone(),
            overrides: RwLock::new(
                self.overrides
                    .read()
                    .get(&host)
                    .map(|known| (host.clone(), known.clone()))
                    .into_iter()
                    .collect(),
            ),
        };
        Box::pin(async move {
            let addresses = copy.addresses(&host).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The IP address of a host that is an IP literal (IPv6 with or without brackets).
pub fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Refuses a URL host that is an IP literal the policy does not permit (names are checked by
/// the resolver).
pub fn check_host(policy: &IpPolicy, host: &str) -> Result<(), Refused> {
    match literal(host) {
        Some(address) if !policy.permits(address) => {
            Err(format!("{address} is an address this server does not connect to").into())
        }
        _ => Ok(()),
    }
}

/// Why [`checked_addresses`] gives no address.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// The name does not resolve (in time).
    Unresolved,
    /// One of its addresses is refused by the policy.
    Refused,
}

/// The addresses of `host` on `port` (looked up within `timeout`), for a client that pins its
/// connection to them: refused as a whole when the policy refuses any of them, since a host
/// that resolves to an internal address is not one to talk to.
pub async fn checked_addresses(
    policy: &IpPolicy,
    host: &str,
    port: u16,
    timeout: std::time::Duration,
) -> Result<Vec<SocketAddr>, Unusable> {
    let addresses = tokio::time::timeout(timeout, lookup_host(host, port))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if addresses.is_empty() {
        return Err(Unusable::Unresolved);
    }
    if addresses
        .iter()
        .any(|address| !policy.permits(address.ip()))
    {
        return Err(Unusable::Refused);
    }
    Ok(addresses)
}

/// The socket addresses of a host: IP literals directly, names by DNS.
pub async fn lookup_host(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Some(address) = literal(host) {
        return Ok(vec![SocketAddr::new(address, port)]);
    }
    Ok(
        tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await?
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_default_policy_refuses_internal_addresses_and_the_allowlist_reopens_them() {
        let policy = Config::default().outbound_ip_policy();
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let address: IpAddr = internal.parse().unwrap();
            assert!(!policy.permits(address), "{internal} is permitted");
            assert!(check_host(&policy, internal).is_err(), "{internal} passes");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(
                policy.permits(public.parse().unwrap()),
                "{public} is refused"
            );
        }
        let config = Config {
            ip_range_allowlist: vec!["127.0.0.0/8".to_owned()],
            ..Config::default()
        };
        assert!(config
            .outbound_ip_policy()
            .permits("127.0.0.2".parse().unwrap()));
        assert!(!config
            .outbound_ip_policy()
            .permits("10.0.0.1".parse().unwrap()));
        // The URL-preview list stays closed whatever the allowlist says.
        assert!(!config
            .user_url_ip_policy()
            .permits("127.0.0.2".parse().unwrap()));
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses_but_not_exempt_overrides() {
        let resolver = GuardedResolver::new(Config::default().outbound_ip_policy());
        // `localhost` resolves to loopback only, all of it refused.
        assert!(resolver.addresses("localhost").await.is_err());
        resolver.set_override("hs1", ("127.0.0.1".to_owned(), 8448), true);
        assert_eq!(
            resolver.addresses("hs1").await.unwrap(),
            vec!["127.0.0.1:8448".parse().unwrap()]
        );
        // Nobody else's SRV answer replaces the operator's address.
        resolver.set_override("hs1", ("10.0.0.1".to_owned(), 1), false);
        assert!(resolver.is_exempt("hs1"));
        resolver.set_override("evil", ("127.0.0.1".to_owned(), 1), false);
        assert!(resolver.addresses("evil").await.is_err());
    }
}
