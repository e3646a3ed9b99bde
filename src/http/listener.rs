//! The accept loop of both listeners (the client API in plain HTTP, federation and the client API
//! over TLS): a cap on open connections in all and per peer address, one task per connection, a
//! deadline for each request head, and graceful shutdown.
//!
//! hyper starts a connection's header deadline whenever the connection is ready for a request
//! head: when it opens, and again after each response. So one deadline bounds a socket that
//! never sends, a head sent byte by byte, and a keep-alive connection left idle. Bodies have a
//! deadline of their own where they are read (`http::prepare`, raw handlers).
//!
//! [`Connections`] also counts activity (connections opened and closed, request heads read), which
//! tells `http::trim` when the server has gone quiet.
//!
//! Each request carries its client's address as a [`ClientAddr`] extension: the peer's, or for a
//! peer in `trusted_proxies`, the one its `X-Forwarded-For` header names.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use parking_lot::Mutex;
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};

use crate::config::{Config, IpRange};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections get this long to finish their requests on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept out of the connection cap: the database, outgoing requests and media.
const RESERVED_FILES: usize = 256;

/// The address a request comes from, a request extension that the accept loop sets: the peer's,
/// or for a peer in `trusted_proxies`, the address its `X-Forwarded-For` header names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The connections open on every listener, counted in all and per peer address, and the
/// listeners' activity.
pub struct Connections {
    max_total: usize,
    max_per_ip: usize,
    header_timeout: Duration,
    trusted_proxies: Arc<[IpRange]>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Connections admitted and closed and request heads read, since start-up.
    activity: AtomicU64,
}

/// One admitted connection; dropping it frees its place.
struct Admitted {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    /// The caps of `config`, the total one lowered to fit the open-file limit `open_files`.
    pub fn new(config: &Config, open_files: Option<usize>) -> Arc<Self> {
        let fit = open_files.map_or(usize::MAX, |limit| {
            limit.saturating_sub(RESERVED_FILES).max(limit / 2)
        });
        Arc::new(Self {
            max_total: config.max_connections.min(fit),
            max_per_ip: config.max_connections_per_ip,
            header_timeout: Duration::from_millis(config.http_header_timeout_ms),
            trusted_proxies: config.trusted_proxies().into(),
            open: Mutex::new((0, HashMap::new())),
            activity: AtomicU64::new(0),
        })
    }

    /// How many connections were admitted and closed and request heads read since start-up:
    /// unchanged over an interval, the listeners were quiet.
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    fn note_activity(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection cap in all, after the open-file limit.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock();
        let (total, per_ip) = &mut *open;
        let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
        // A refused address leaves no entry behind: the map holds only addresses with a
        // connection open.
        if *total >= self.max_total || from_ip >= self.max_per_ip {
            return None;
        }
        per_ip.insert(ip, from_ip + 1);
        *total += 1;
        self.note_activity();
        Some(Admitted {
            connections: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.note_activity();
        let mut open = self.connections.open.lock();
        let (total, per_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(from_ip) = per_ip.get_mut(&self.ip) {
            *from_ip = from_ip.saturating_sub(1);
            if *from_ip == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Raises the soft limit on open files to the hard one, where the system allows, and returns the
/// limit in force.
pub fn raise_open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).ok()
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until `shutdown` completes, then
/// drains the open connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    connections: Arc<Connections>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admitted) = connections.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: too many open connections");
            continue;
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let peer = Peer {
            ip: peer.ip().to_canonical(),
            connections: Arc::clone(&connections),
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _admitted = admitted;
            match acceptor {
                None => serve_connection(stream, router, peer, watcher).await,
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    serve_connection(stream, router, peer, watcher).await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// What a connection's requests need to know of its peer, and where they count as activity.
struct Peer {
    ip: IpAddr,
    connections: Arc<Connections>,
}

async fn serve_connection<S>(
    stream: S,
    router: Router,
    peer: Peer,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = peer.connections.header_timeout;
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        peer.connections.note_activity();
        let client = client_address(
            peer.ip,
            request.headers(),
            &peer.connections.trusted_proxies,
        );
        request.extensions_mut().insert(ClientAddr(client));
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, request).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let _ = watcher.watch(connection).await;
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the last address
/// of `X-Forwarded-For` that is not itself a trusted proxy, since each proxy appends the address
/// it was reached from and anything before could have been written by the client. An entry
/// that is no address ends the walk at the last address found.
fn client_address(peer: IpAddr, headers: &http::HeaderMap, trusted_proxies: &[IpRange]) -> IpAddr {
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|range| range.contains(ip));
    if !trusted(peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer;
    for entry in forwarded.into_iter().rev() {
        let entry = entry.trim();
        let Some(ip) = entry.parse::<IpAddr>().ok().or_else(|| {
            entry
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|address| address.ip())
        }) else {
            break;
        };
        client = ip.to_canonical();
        if !trusted(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxies: Vec<crate::config::IpRange> = ["10.0.0.0/8", "::1"]
            .iter()
            .map(|range| crate::config::IpRange::parse(range).unwrap())
            .collect();
        let check = |peer: &str, forwarded: &[&str], expected: &str| {
            let mut headers = http::HeaderMap::new();
            for value in forwarded {
                headers.append("x-forwarded-for", value.parse().unwrap());
            }
            let client = super::client_address(peer.parse().unwrap(), &headers, &proxies);
            assert_eq!(
                client,
                expected.parse::<IpAddr>().unwrap(),
                "{peer} {forwarded:?}"
            );
        };
        // An untrusted peer's header is ignored.
        check("203.0.113.9", &["198.51.100.1"], "203.0.113.9");
        check("10.0.0.1", &[], "10.0.0.1");
        check("10.0.0.1", &["198.51.100.1"], "198.51.100.1");
        // What the client wrote before the proxies' own entries does not count.
        check(
            "10.0.0.1",
            &["1.1.1.1, 198.51.100.1, 10.0.0.2"],
            "198.51.100.1",
        );
        check("10.0.0.1", &["1.1.1.1", "198.51.100.1"], "198.51.100.1");
        check("::1", &["[2001:db8::1]:443"], "2001:db8::1");
        check("::ffff:10.0.0.1", &["198.51.100.1"], "198.51.100.1");
        check("10.0.0.1", &["10.0.0.2, 10.0.0.3"], "10.0.0.2");
        check("10.0.0.1", &["1.1.1.1, nonsense"], "10.0.0.1");
    }

    #[test]
    fn caps_hold_per_address_and_in_all_and_a_closed_connection_frees_its_place() {
        let config = crate::config::Config {
            max_connections: 2,
            max_connections_per_ip: 1,
            ..Default::default()
        };
        let connections = super::Connections::new(&config, None);
        let [a, b, c]: [IpAddr; 3] =
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(|ip| ip.parse().unwrap());
        let first = connections.admit(a).expect("a first connection");
        assert!(
            connections.admit(a).is_none(),
            "over the cap of one address"
        );
        let _second = connections.admit(b).expect("another address");
        assert!(connections.admit(c).is_none(), "over the cap in all");
        // Refused addresses leave nothing behind.
        assert_eq!(connections.open.lock().1.len(), 2);
        drop(first);
        assert!(
            connections.admit(c).is_some(),
            "the closed connection's place"
        );
        assert_eq!(connections.open.lock().1.len(), 1);
    }

    #[tokio::test]
    async fn activity_counts_connections_opened_and_closed_and_request_heads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let connections = super::Connections::new(&Default::default(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve(
            listener,
            router,
            None,
            std::sync::Arc::clone(&connections),
            async move {
                let _ = stopped.await;
            },
        ));
        assert_eq!(connections.activity(), 0);
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: plait\r\n\r\n";
        let mut answer = [0u8; 1024];
        for _ in 0..2 {
            stream.write_all(request).await.unwrap();
            let read = stream.read(&mut answer).await.unwrap();
            assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
        }
        assert_eq!(connections.activity(), 3, "one connection, two requests");
        drop(stream);
        for _ in 0..200 {
            if connections.activity() == 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(connections.activity(), 4, "and its close");
        let _ = stop.send(());
        server.await.unwrap();
    }
}
