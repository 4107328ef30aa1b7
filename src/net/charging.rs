//! The credit-control engine behind the `Application` trait, and its supervision task.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use super::{Application, Handled, Reply, Request};
use crate::cc::{Engine, Now};
use crate::diameter::ApplicationId;

/// Application 4 (RFC 4006) served by the engine.
pub struct Charging {
    engine: Arc<Engine>,
    epoch: tokio::time::Instant,
}

impl Charging {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine, epoch: tokio::time::Instant::now() }
    }

    /// The engine's clocks: monotonic for deadlines, wall time for tariffs.
    pub fn now(&self) -> Now {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Now { mono_ms: self.epoch.elapsed().as_millis() as u64, unix_secs: unix.as_secs() }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Runs session supervision (Tcc) once a second until `shutdown`.
    pub async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stats = self.engine.sweep(self.now());
            if stats.sessions_expired > 0 || stats.reservations_released > 0 {
                tracing::info!(
                    expired = stats.sessions_expired,
                    released = stats.reservations_released,
                    removed = stats.sessions_removed,
                    "session supervision"
                );
            }
        }
    }
}

impl Application for Charging {
    fn id(&self) -> ApplicationId {
        ApplicationId::CREDIT_CONTROL
    }

    /// The engine answers a retransmitted CCR from the session (Session-Id +
    /// CC-Request-Number) and a CCR-E from its event cache, byte for byte with the new ids.
    fn remembers_answers(&self) -> bool {
        true
    }

    fn handle(&self, req: &Request<'_>, out: &mut BytesMut, _reply: Reply) -> Handled {
        self.engine.handle(self.now(), &req.msg, out);
        Handled::Answered
    }
}
