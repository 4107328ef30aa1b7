//! The credit-control engine behind the `Application` trait, and its supervision task.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use super::{Application, Handled, Reply, Request};
use crate::cc::{Engine, Now};
use crate::diameter::ApplicationId;
use crate::durable::{ChargingJournal, Sink};

/// Application 4 (RFC 4006) served by the engine.
pub struct Charging {
    engine: Arc<Engine>,
    epoch: tokio::time::Instant,
    /// With a journal, an answer that reflects a change is sent once its record is durable.
    journal: Option<Arc<ChargingJournal>>,
}

impl Charging {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine, epoch: tokio::time::Instant::now(), journal: None }
    }

    /// Serving with `journal`; `epoch` is the monotonic origin the engine was recovered with.
    pub fn with_journal(
        engine: Arc<Engine>,
        epoch: tokio::time::Instant,
        journal: Arc<ChargingJournal>,
    ) -> Self {
        Self { engine, epoch, journal: Some(journal) }
    }

    /// An engine clock reading for a given monotonic origin.
    pub fn now_from(epoch: tokio::time::Instant) -> Now {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Now { mono_ms: epoch.elapsed().as_millis() as u64, unix_secs: unix.as_secs() }
    }

    /// The monotonic origin of the engine's clock.
    pub fn epoch(&self) -> tokio::time::Instant {
        self.epoch
    }

    pub fn journal(&self) -> Option<&Arc<ChargingJournal>> {
        self.journal.as_ref()
    }

    /// The engine's clocks: monotonic for deadlines, wall time for tariffs.
    pub fn now(&self) -> Now {
        Self::now_from(self.epoch)
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
            let stats = match &self.journal {
                Some(journal) => self.engine.sweep_with(self.now(), &mut Sink::new(journal, None)),
                None => self.engine.sweep(self.now()),
            };
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

/// CC-Request-Type (RFC 4006 §8.3), read straight from the message (before validation).
fn request_type(msg: &crate::diameter::MessageRef<'_>) -> Option<u32> {
    let avp = msg.find(crate::diameter::AvpCode(416))?;
    Some(u32::from_be_bytes(<[u8; 4]>::try_from(avp.data).ok()?))
}

impl Application for Charging {
    fn id(&self) -> ApplicationId {
        ApplicationId::CREDIT_CONTROL
    }

    /// CCR-I and CCR-E (RFC 4006 CC-Request-Type 1 and 4) start new work; CCR-U/T continue it.
    fn is_new_work(&self, msg: &crate::diameter::MessageRef<'_>) -> bool {
        matches!(request_type(msg), Some(1 | 4))
    }

    /// CCR-T (CC-Request-Type 3) ends a session.
    fn is_ending(&self, msg: &crate::diameter::MessageRef<'_>) -> bool {
        request_type(msg) == Some(3)
    }

    /// The engine answers a retransmitted CCR from the session (Session-Id +
    /// CC-Request-Number) and a CCR-E from its event cache, byte for byte with the new ids.
    fn remembers_answers(&self) -> bool {
        true
    }

    fn handle(&self, req: &Request<'_>, out: &mut BytesMut, reply: &Reply<'_>) -> Handled {
        // The request's ids on every line it causes: the peer, Hop-by-Hop and End-to-End, as
        // tshark shows them, so a line and a captured packet can be matched. A debug span,
        // so it exists only when debug lines are on: at info it is `Span::none()` after one
        // level check, where a live span per request would cost more than deciding the CCR.
        // Its target is the engine's module, so `gyro::cc=debug` shows the ids with the
        // decisions.
        let span = tracing::debug_span!(
            target: "gyro::cc",
            "request",
            peer = req.peer,
            hbh = format_args!("{:#010x}", req.msg.header.hop_by_hop),
            e2e = format_args!("{:#010x}", req.msg.header.end_to_end),
        );
        let _entered = span.enter();
        let Some(journal) = &self.journal else {
            self.engine.handle(self.now(), &req.msg, out);
            return Handled::Answered;
        };
        // The journal's append blocks only while its buffer is full (backpressure, bounded by
        // JOURNAL_BUFFER_MAX_BYTES): for as long as one batch takes to write and sync.
        let mut sink = Sink::new(journal, Some(reply.durable_waker()));
        let took = self.engine.handle_with(self.now(), &req.msg, out, &mut sink);
        debug_assert!(!took, "the journal sink leaves the answer in `out`");
        match sink.lsn {
            Some(lsn) => Handled::AfterDurable(lsn.0),
            None => Handled::Answered,
        }
    }
}
