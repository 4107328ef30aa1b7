//! The listener: accepts connections within the connection limit, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::Connection;
use super::tls::TlsServer;
use super::Application;
use crate::limits::{CONNECTIONS_MAX, DPA_TIMEOUT_MS};
use crate::peer::PeerConfig;
use crate::replay::{DuplicateCache, KeyCase};

/// State every connection shares.
pub struct Shared {
    /// The peer settings (local identity, dictionary, allowlist), replaceable at run time by
    /// `set_peer_config`. Read under the lock only when a connection starts or sees `peer_version`
    /// change; the hot path never takes it.
    peer: RwLock<Arc<PeerConfig>>,
    /// Bumped by every `set_peer_config`: one atomic load per read tells a connection whether its
    /// cached `PeerConfig` is still the current one.
    peer_version: AtomicU64,
    pub dedupe: DuplicateCache,
    /// Applications with a handler; a request for any other gets 3007.
    pub applications: Vec<Arc<dyn Application>>,
    pub epoch: tokio::time::Instant,
    pub connections_open: AtomicUsize,
    pub in_flight_max: usize,
    /// Requests dispatched and not yet answered, across connections.
    pub in_flight_total: AtomicUsize,
    pub in_flight_total_max: usize,
    /// At or above this many in flight, new work is answered 3004.
    pub shed_new_work_at: usize,
    /// Requests answered 3004 because of the server-wide limits (for metrics and logs).
    pub shed: AtomicU64,
    /// Requests, latency and open peers, for metrics.
    pub metrics: super::metrics::NetMetrics,
    pub connections_max: usize,
    /// Open connections one Origin-Host may hold; a CER beyond it gets CEA 5012 and close.
    pub connections_per_peer_max: usize,
    pub message_size_max: usize,
    seed: AtomicU64,
    /// Open connections by peer Origin-Host, for requests the server sends (RAR, ASR).
    pub(super) outgoing: super::outgoing::Registry,
    /// Numbers connections for the registry.
    pub(super) connection_ids: AtomicU64,
}

/// Per-server limits from the configuration (each at or below its constant in `limits`).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub in_flight_per_connection: usize,
    pub in_flight_total: usize,
    pub connections: usize,
    /// Open connections per peer Origin-Host (at most `connections`).
    pub connections_per_peer: usize,
    pub message_size_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            in_flight_per_connection: crate::limits::IN_FLIGHT_PER_CONNECTION_MAX,
            in_flight_total: crate::limits::IN_FLIGHT_TOTAL_MAX,
            connections: CONNECTIONS_MAX,
            connections_per_peer: crate::limits::CONNECTIONS_PER_PEER_DEFAULT,
            message_size_bytes: crate::limits::MESSAGE_SIZE_MAX_BYTES,
        }
    }
}

impl Shared {
    pub fn new(peer: Arc<PeerConfig>, applications: Vec<Arc<dyn Application>>, limits: ServerLimits) -> Self {
        assert!(limits.connections <= CONNECTIONS_MAX);
        assert!((1..=limits.connections).contains(&limits.connections_per_peer));
        assert!(limits.message_size_bytes <= crate::limits::MESSAGE_SIZE_MAX_BYTES);
        // Seed ids and jitter from the process start time and pid, so restarts differ
        // (RFC 6733 §3: End-to-End ids should not repeat across reboots).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed =
            (now.as_secs() << 52) ^ (u64::from(now.subsec_nanos()) << 20) ^ u64::from(std::process::id());
        Self {
            peer: RwLock::new(peer),
            peer_version: AtomicU64::new(0),
            dedupe: DuplicateCache::with_defaults(KeyCase::Insensitive),
            applications,
            epoch: tokio::time::Instant::now(),
            connections_open: AtomicUsize::new(0),
            in_flight_max: limits.in_flight_per_connection,
            in_flight_total: AtomicUsize::new(0),
            in_flight_total_max: limits.in_flight_total,
            shed_new_work_at: (limits.in_flight_total * crate::limits::SHED_NEW_WORK_PERCENT / 100).max(1),
            shed: AtomicU64::new(0),
            metrics: super::metrics::NetMetrics::new(),
            connections_max: limits.connections,
            connections_per_peer_max: limits.connections_per_peer,
            message_size_max: limits.message_size_bytes,
            seed: AtomicU64::new(seed),
            outgoing: super::outgoing::Registry::default(),
            connection_ids: AtomicU64::new(0),
        }
    }

    /// The current peer settings. Takes a read lock: for start-up, reloads and scrapes, not per
    /// message (a connection keeps its own `Arc` and checks `peer_version`).
    pub fn peer_config(&self) -> Arc<PeerConfig> {
        Arc::clone(&self.peer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Installs new peer settings (a reload): new connections take them at once, open ones at
    /// their next read, without being dropped. The dictionary validates every later message; the
    /// allowlist is checked at the next CER only (RFC 6733 §5.3 makes it part of the capabilities
    /// exchange), so an open peer no longer listed stays connected until it or an operator
    /// closes it. Applications negotiated at CER stay as negotiated on open connections.
    pub fn set_peer_config(&self, cfg: Arc<PeerConfig>) {
        *self.peer.write().unwrap_or_else(PoisonError::into_inner) = cfg;
        // After the store: a connection that sees the new version reads the new config (or a
        // newer one, whose version it will see on its next read and load again, harmlessly).
        self.peer_version.fetch_add(1, Ordering::Release);
    }

    /// The version `set_peer_config` last installed (0 until the first reload).
    pub(super) fn peer_version(&self) -> u64 {
        self.peer_version.load(Ordering::Acquire)
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn next_seed(&self) -> u64 {
        let s = self.seed.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        // splitmix64 finaliser: spreads consecutive seeds.
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn application(&self, id: crate::diameter::ApplicationId) -> Option<&Arc<dyn Application>> {
        self.applications.iter().find(|a| a.id() == id)
    }
}

/// The Diameter server: a plain TCP listener, a TLS one, or both, sharing the connection
/// limit and the shutdown.
pub struct Server {
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, TlsServer)>,
    shared: Arc<Shared>,
}

/// Controls a running server from outside (tests, signal handlers).
#[derive(Clone)]
pub struct ServerHandle {
    pub shutdown: CancellationToken,
    pub local_addr: SocketAddr,
}

impl Server {
    /// A server with no listener yet (see `listen` and `listen_tls`).
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { plain: None, tls: None, shared }
    }

    /// A server with a plain TCP listener on `addr`.
    pub async fn bind(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<Self> {
        let mut server = Self::new(shared);
        server.listen(addr).await?;
        Ok(server)
    }

    /// Adds the plain TCP listener.
    pub async fn listen(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        assert!(self.plain.is_none(), "one plain listener per server");
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        self.plain = Some(listener);
        Ok(bound)
    }

    /// Adds the TLS listener (RFC 6733 §13, TLS at connect).
    pub async fn listen_tls(&mut self, addr: SocketAddr, tls: TlsServer) -> std::io::Result<SocketAddr> {
        assert!(self.tls.is_none(), "one TLS listener per server");
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        self.tls = Some((listener, tls));
        Ok(bound)
    }

    /// The plain listener's address, or the TLS listener's when there is no plain one.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match (&self.plain, &self.tls) {
            (Some(l), _) | (None, Some((l, _))) => l.local_addr(),
            (None, None) => Err(std::io::Error::other("the server has no listener")),
        }
    }

    /// The TLS listener's address, if there is one.
    pub fn tls_local_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.tls.as_ref().map(|(l, _)| l.local_addr())
    }

    /// Serves until `shutdown` is cancelled, then sends DPR to every open peer, waits for the
    /// connections to drain (bounded) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        assert!(self.plain.is_some() || self.tls.is_some(), "a server needs a listener");
        let accept = Accept {
            // One pool for both listeners: `connections_max` bounds TLS and TCP together.
            permits: Arc::new(Semaphore::new(self.shared.connections_max)),
            shared: self.shared,
            tracker: TaskTracker::new(),
            shutdown,
        };
        let plain = async {
            if let Some(listener) = self.plain {
                accept.run(listener, None).await;
            }
        };
        let tls = async {
            if let Some((listener, tls)) = self.tls {
                accept.run(listener, Some(Arc::new(tls))).await;
            }
        };
        tokio::join!(plain, tls);
        accept.tracker.close();
        let grace = Duration::from_millis(DPA_TIMEOUT_MS + 2_000);
        if tokio::time::timeout(grace, accept.tracker.wait()).await.is_err() {
            tracing::warn!("connections did not drain in time; exiting anyway");
        }
    }
}

/// What the accept loops share.
struct Accept {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Accept {
    /// Accepts on one listener until shutdown. Each connection gets a task of its own; over
    /// TLS the handshake runs in that task, so a slow or hostile client never holds up the
    /// loop, but it does hold a connection slot (`connections_max`) while it shakes hands.
    async fn run(&self, listener: TcpListener, tls: Option<Arc<TlsServer>>) {
        loop {
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            let (stream, addr) = match accepted {
                Ok(x) => x,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                tracing::warn!(peer = %addr, limit = self.shared.connections_max, "connection limit reached, closing");
                drop(stream);
                continue;
            };
            // Answers are small and latency-bound; batching happens in our buffer, not in Nagle.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "TCP_NODELAY not set");
            }
            let shared = Arc::clone(&self.shared);
            let token = self.shutdown.clone();
            let tls = tls.clone();
            self.tracker.spawn(async move {
                shared.connections_open.fetch_add(1, Ordering::Relaxed);
                match tls {
                    None => Connection::new(stream, addr, Arc::clone(&shared)).run(token).await,
                    Some(tls) => tls.serve(stream, addr, Arc::clone(&shared), token).await,
                }
                shared.connections_open.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }
}
