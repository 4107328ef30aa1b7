//! The listener: accepts connections within the connection limit, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::Connection;
use super::Application;
use crate::limits::{CONNECTIONS_MAX, DPA_TIMEOUT_MS};
use crate::peer::PeerConfig;
use crate::replay::{DuplicateCache, KeyCase};

/// State every connection shares.
pub struct Shared {
    pub peer: Arc<PeerConfig>,
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
    pub message_size_max: usize,
    seed: AtomicU64,
}

/// Per-server limits from the configuration (each at or below its constant in `limits`).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub in_flight_per_connection: usize,
    pub in_flight_total: usize,
    pub connections: usize,
    pub message_size_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            in_flight_per_connection: crate::limits::IN_FLIGHT_PER_CONNECTION_MAX,
            in_flight_total: crate::limits::IN_FLIGHT_TOTAL_MAX,
            connections: CONNECTIONS_MAX,
            message_size_bytes: crate::limits::MESSAGE_SIZE_MAX_BYTES,
        }
    }
}

impl Shared {
    pub fn new(peer: Arc<PeerConfig>, applications: Vec<Arc<dyn Application>>, limits: ServerLimits) -> Self {
        assert!(limits.connections <= CONNECTIONS_MAX);
        assert!(limits.message_size_bytes <= crate::limits::MESSAGE_SIZE_MAX_BYTES);
        // Seed ids and jitter from the process start time and pid, so restarts differ
        // (RFC 6733 §3: End-to-End ids should not repeat across reboots).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed =
            (now.as_secs() << 52) ^ (u64::from(now.subsec_nanos()) << 20) ^ u64::from(std::process::id());
        Self {
            peer,
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
            message_size_max: limits.message_size_bytes,
            seed: AtomicU64::new(seed),
        }
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

/// The Diameter server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Controls a running server from outside (tests, signal handlers).
#[derive(Clone)]
pub struct ServerHandle {
    pub shutdown: CancellationToken,
    pub local_addr: SocketAddr,
}

impl Server {
    pub async fn bind(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, shared })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then sends DPR to every open peer, waits for the
    /// connections to drain (bounded) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.shared.connections_max));
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.listener.accept() => r,
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
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                tracing::warn!(peer = %addr, limit = self.shared.connections_max, "connection limit reached, closing");
                drop(stream);
                continue;
            };
            let shared = Arc::clone(&self.shared);
            let token = shutdown.clone();
            tracker.spawn(async move {
                shared.connections_open.fetch_add(1, Ordering::Relaxed);
                Connection::new(stream, addr, Arc::clone(&shared)).run(token).await;
                shared.connections_open.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
        drop(self.listener);
        tracker.close();
        let grace = Duration::from_millis(DPA_TIMEOUT_MS + 2_000);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("connections did not drain in time; exiting anyway");
        }
    }
}
