//! The Prometheus exposition (issue 7): what `/metrics` serves.
//!
//! Owns: the registry, the metric names and help texts, and turning every other module's
//! counters into metric families at scrape time. Must not touch: anything's state — it only
//! reads the stats each module already keeps (`net::metrics`, the engine's counters, the
//! ledger's sums, the journal's stats, the outbox's and the worker's counters), so the hot
//! paths pay a relaxed atomic add at most and nothing here runs per request.
//!
//! Names follow the Prometheus conventions: `gyro_` prefix, base units (seconds, bytes),
//! `_total` for counters, and bounded labels only (command, request type, Result-Code from a
//! fixed list, currency, peer host from the allowlist or the first 1 024 seen) — never a
//! Session-Id or a subscriber.

use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::cc::Engine;
use crate::durable::ChargingJournal;
use crate::journal::{BATCH_RECORDS_BUCKETS, SYNC_SECONDS_BUCKETS};
use crate::net::Shared;
use crate::settlement::worker::WorkerStats;

/// What the exporter reads. The pieces come up at different times in `gyro serve` (the
/// listener before recovery, the engine after it), so each is optional.
#[derive(Default, Clone)]
pub struct Sources {
    pub net: Option<Arc<Shared>>,
    pub engine: Option<Arc<Engine>>,
    pub journal: Option<Arc<ChargingJournal>>,
    pub worker: Option<Arc<Mutex<WorkerStats>>>,
    /// `gyro_config_info` labels: the catalog in force's name and digest.
    pub catalog: Option<Arc<crate::catalog::Live>>,
    /// Reloads, and the configuration's and dictionaries' versions.
    pub reload: Option<Arc<crate::reload::ReloadStats>>,
}

/// The registry `/metrics` encodes: the exporter's own families, the request latency
/// histograms, and (on Linux) the process collector.
pub struct Metrics {
    registry: Registry,
    sources: Arc<Mutex<Sources>>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let sources = Arc::new(Mutex::new(Sources::default()));
        registry
            .register(Box::new(Exporter { sources: Arc::clone(&sources), descs: Vec::new() }))
            .expect("the exporter registers once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector registers once");
        Self { registry, sources }
    }

    /// Changes what the exporter reads (as `gyro serve` comes up).
    pub fn update(&self, f: impl FnOnce(&mut Sources)) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let had_net = sources.net.is_some();
        f(&mut sources);
        if let (false, Some(net)) = (had_net, &sources.net) {
            // The latency histograms are live prometheus histograms: registered as they are.
            if let Err(e) = self.registry.register(Box::new(net.metrics.latency().clone())) {
                tracing::warn!(error = %e, "request latency histograms not registered");
            }
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the families from [`Sources`] at each scrape. It declares no descriptors: its
/// families change with what is up (Prometheus' registry accepts such "unchecked" collectors).
struct Exporter {
    sources: Arc<Mutex<Sources>>,
    descs: Vec<Desc>,
}

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut f = Families::default();
        f.gauge(
            "gyro_build_info",
            "The running build: version label, value 1.",
            vec![metric(&[("version", env!("CARGO_PKG_VERSION"))], Value::Gauge(1.0))],
        );
        if let Some(live) = &sources.catalog {
            let c = live.current();
            let v =
                sources.reload.as_ref().map(|r| r.versions.lock().unwrap_or_else(|e| e.into_inner()).clone());
            let v = v.unwrap_or_default();
            f.gauge(
                "gyro_config_info",
                "What is in force: the catalog's name and digest (version), the configuration's and \
                 the dictionaries' digests; value 1. A reload changes the labels.",
                vec![metric(
                    &[
                        ("catalog", &c.name),
                        ("version", &c.digest),
                        ("config", &v.config),
                        ("dictionaries", &v.dictionaries),
                    ],
                    Value::Gauge(1.0),
                )],
            );
        }
        if let Some(r) = &sources.reload {
            f.counter(
                "gyro_reloads_total",
                "Reloads (SIGHUP, POST /v1/reload) by outcome: ok, or failed (nothing changed).",
                vec![
                    metric(
                        &[("outcome", "ok")],
                        Value::Counter(r.succeeded.load(std::sync::atomic::Ordering::Relaxed) as f64),
                    ),
                    metric(
                        &[("outcome", "failed")],
                        Value::Counter(r.failed.load(std::sync::atomic::Ordering::Relaxed) as f64),
                    ),
                ],
            );
            f.gauge1(
                "gyro_reload_last_success_timestamp_seconds",
                "When the last reload that succeeded ended (Unix seconds; 0: none since start).",
                r.last_success_unix_s.load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
        }
        if let Some(net) = &sources.net {
            net_families(&mut f, net);
        }
        if let Some(engine) = &sources.engine {
            engine_families(&mut f, engine, &sources);
        }
        if let Some(journal) = &sources.journal {
            journal_families(&mut f, journal);
        }
        if let Some(worker) = &sources.worker {
            let w = worker.lock().unwrap_or_else(|e| e.into_inner()).clone();
            f.counter1(
                "gyro_settlement_payment_attempts_total",
                "Charge attempts sent to the payment adapter.",
                w.charge_attempts,
            );
            f.counter1(
                "gyro_settlement_settled_total",
                "Settlements carried to their end (invoice written, e-mails handed over).",
                w.settled,
            );
            f.counter1(
                "gyro_settlement_failures_total",
                "Settlements that could not be invoiced at all (no address, not in the catalog).",
                w.failed,
            );
            f.counter1(
                "gyro_settlement_deliveries_deferred_total",
                "Deliveries put off by a database error or a transient mail failure.",
                w.deliveries_deferred,
            );
            f.counter1(
                "gyro_emails_sent_total",
                "E-mails delivered (accepted by the relay, or written as .eml files).",
                w.emails_written,
            );
            f.counter1(
                "gyro_emails_refused_total",
                "E-mails the relay refused for good (5yz).",
                w.emails_refused,
            );
        }
        f.0
    }
}

fn net_families(f: &mut Families, net: &Shared) {
    use std::sync::atomic::Ordering::Relaxed;
    // The allowlist in force now (it may have been replaced by a reload): its hosts get a
    // `gyro_diameter_peer_up` series even before they connect.
    let peer_config = net.peer_config();
    let allowed = peer_config.allowed_peers.as_deref().unwrap_or_default();
    let requests = net
        .metrics
        .requests()
        .into_iter()
        .map(|(command, request_type, code, n)| {
            metric(
                &[("command", command), ("request_type", request_type), ("result_code", &code)],
                Value::Counter(n as f64),
            )
        })
        .collect();
    f.counter(
        "gyro_diameter_requests_total",
        "Diameter requests answered, by command, CC-Request-Type and Result-Code.",
        requests,
    );
    f.counter1(
        "gyro_overload_shed_total",
        "Requests answered 3004 DIAMETER_TOO_BUSY by overload control.",
        net.shed.load(Relaxed),
    );
    f.counter1(
        "gyro_diameter_peer_connections_refused_total",
        "CERs answered 5012 and closed because their Origin-Host had diameter.connections_per_peer_max connections open.",
        net.metrics.peer_refused.load(Relaxed),
    );
    f.gauge1(
        "gyro_diameter_connections",
        "Open Diameter connections.",
        net.connections_open.load(Relaxed) as f64,
    );
    f.gauge1(
        "gyro_requests_in_flight",
        "Requests read and not yet answered.",
        net.in_flight_total.load(Relaxed) as f64,
    );
    let mut peers = net.metrics.peers();
    for host in allowed {
        if !peers.iter().any(|(h, _)| h.eq_ignore_ascii_case(host)) {
            peers.push((host.clone(), 0));
        }
    }
    peers.sort();
    let open: u32 = peers.iter().map(|(_, n)| n).sum();
    f.gauge(
        "gyro_diameter_peers",
        "Peer connections by state (open: capabilities exchanged).",
        vec![metric(&[("state", "open")], Value::Gauge(f64::from(open)))],
    );
    let up = peers
        .iter()
        .map(|(h, n)| metric(&[("peer", h)], Value::Gauge(f64::from(u8::from(*n > 0)))))
        .collect();
    f.gauge(
        "gyro_diameter_peer_up",
        "1 while the peer (allowlisted or seen) has an open connection, else 0.",
        up,
    );
    let sent = net
        .metrics
        .server_requests()
        .iter()
        .map(|(c, n)| metric(&[("command", c)], Value::Counter(*n as f64)))
        .collect();
    f.counter(
        "gyro_diameter_server_requests_total",
        "Requests the server sent to clients (RAR, ASR), by command.",
        sent,
    );
    let answers = net
        .metrics
        .server_answers()
        .iter()
        .map(|(c, r, n)| metric(&[("command", c), ("result", r)], Value::Counter(*n as f64)))
        .collect();
    f.counter(
        "gyro_diameter_server_answers_total",
        "Answers to the server's requests (RAA, ASA), by command and Result-Code (2001, 2002, 5002, other).",
        answers,
    );
    f.counter1(
        "gyro_diameter_server_requests_unanswered_total",
        "Server requests (RAR, ASR) with no answer on either attempt (timeout or connection lost).",
        net.metrics.server_unanswered.load(Relaxed),
    );
}

fn engine_families(f: &mut Families, engine: &Engine, sources: &Sources) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = engine.counters();
    f.gauge1("gyro_sessions_open", "Credit-control sessions open.", engine.open_sessions() as f64);
    f.counter1(
        "gyro_granted_time_seconds_total",
        "Time granted (reserved) in Granted-Service-Unit.",
        c.granted_seconds.load(Relaxed),
    );
    f.counter1(
        "gyro_granted_volume_bytes_total",
        "Volume granted (reserved) in Granted-Service-Unit.",
        c.granted_octets.load(Relaxed),
    );
    f.counter1(
        "gyro_granted_events_total",
        "Service-specific units (events) granted.",
        c.granted_events.load(Relaxed),
    );
    let transport = sources.net.as_ref().map_or(0, |n| n.metrics.replayed.load(Relaxed));
    f.counter1(
        "gyro_duplicates_replayed_total",
        "Retransmitted requests answered again from memory (credit control's own, and the transport's duplicate cache).",
        c.replayed.load(Relaxed) + transport,
    );
    let ledger = engine.ledger().stats();
    f.gauge1("gyro_reservations_open", "Reservations (holds) open.", ledger.open_reservations as f64);
    f.gauge1("gyro_accounts", "Accounts in the ledger.", f64::from(ledger.accounts));
    let reserved = ledger
        .reserved_money_by_currency
        .iter()
        .map(|(cur, m)| metric(&[("currency", cur.code)], Value::Gauge(major(m.0.into(), cur.exponent))))
        .collect();
    f.gauge(
        "gyro_reserved_money",
        "Money held by open reservations, in the currency's major unit.",
        reserved,
    );
    let debited = ledger
        .debited_money_by_currency
        .iter()
        .map(|(cur, m)| metric(&[("currency", cur.code)], Value::Counter(major(*m, cur.exponent))))
        .collect();
    f.counter(
        "gyro_debited_money_total",
        "Money debited since start (the journal replayed at start included), in the currency's major unit.",
        debited,
    );
    let outbox = engine.outbox();
    let o = outbox.stats();
    f.gauge1("gyro_settlement_queue_depth", "Settlements waiting in the outbox.", outbox.len() as f64);
    f.counter(
        "gyro_settlement_payments_total",
        "Payment outcomes journaled, by outcome (since start, the journal replayed at start included).",
        vec![
            metric(&[("outcome", "paid")], Value::Counter(o.paid as f64)),
            metric(&[("outcome", "declined")], Value::Counter(o.declined as f64)),
            metric(&[("outcome", "dead_letter")], Value::Counter(o.dead_letters as f64)),
        ],
    );
    f.counter1(
        "gyro_settlement_dead_letters_total",
        "Payments given up after the last attempt: the invoice stays open.",
        o.dead_letters,
    );
    f.counter1(
        "gyro_settlement_dropped_total",
        "Settlements dropped because the outbox was full.",
        o.dropped,
    );
}

fn journal_families(f: &mut Families, journal: &ChargingJournal) {
    let s = journal.stats();
    f.counter1("gyro_journal_records_total", "Journal records written.", s.records);
    f.counter1(
        "gyro_journal_written_bytes_total",
        "Journal bytes written (record headers included).",
        s.bytes,
    );
    f.gauge1(
        "gyro_journal_failed",
        "1 once a journal write or sync failed (answers that change state stop).",
        f64::from(u8::from(s.failed)),
    );
    f.histogram(
        "gyro_journal_batch_records",
        "Records per group commit.",
        &BATCH_RECORDS_BUCKETS,
        &s.batch_records_hist,
        s.records as f64,
    );
    f.histogram(
        "gyro_journal_fsync_duration_seconds",
        "fdatasync latency per group commit.",
        &SYNC_SECONDS_BUCKETS,
        &s.sync_seconds_hist,
        s.sync_ns_sum as f64 / 1e9,
    );
}

/// An amount in minor units as the major unit (cents → euros).
fn major(minor: i128, exponent: u8) -> f64 {
    minor as f64 / 10f64.powi(i32::from(exponent))
}

enum Value {
    Counter(f64),
    Gauge(f64),
}

fn metric(labels: &[(&str, &str)], value: Value) -> Metric {
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut l = LabelPair::default();
                l.set_name((*name).to_owned());
                l.set_value((*value).to_owned());
                l
            })
            .collect(),
    );
    match value {
        Value::Counter(v) => {
            let mut c = Counter::default();
            c.set_value(v);
            m.set_counter(c);
        }
        Value::Gauge(v) => {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
    }
    m
}

#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn push(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) {
        if metrics.is_empty() {
            return;
        }
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.0.push(family);
    }

    fn counter(&mut self, name: &str, help: &str, metrics: Vec<Metric>) {
        self.push(name, help, MetricType::COUNTER, metrics);
    }

    fn gauge(&mut self, name: &str, help: &str, metrics: Vec<Metric>) {
        self.push(name, help, MetricType::GAUGE, metrics);
    }

    fn counter1(&mut self, name: &str, help: &str, value: u64) {
        self.counter(name, help, vec![metric(&[], Value::Counter(value as f64))]);
    }

    fn gauge1(&mut self, name: &str, help: &str, value: f64) {
        self.gauge(name, help, vec![metric(&[], Value::Gauge(value))]);
    }

    /// A histogram from per-slot counts (`counts[i]` for values up to `bounds[i]`, the last
    /// slot above them all).
    fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(&bound, &n)| {
                cumulative += n;
                let mut b = Bucket::default();
                b.set_upper_bound(bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(counts.iter().sum());
        h.set_sample_sum(sum);
        let mut m = Metric::default();
        m.set_histogram(h);
        self.push(name, help, MetricType::HISTOGRAM, vec![m]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_registry_renders_build_info_and_valid_text() {
        let m = Metrics::new();
        let text = m.render();
        assert!(text.contains("# TYPE gyro_build_info gauge"), "{text}");
        assert!(text.contains(&format!("gyro_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn histograms_from_slots_are_cumulative() {
        let mut f = Families::default();
        f.histogram("h", "help", &[1.0, 2.0], &[3, 4, 5], 10.0);
        let h = f.0[0].get_metric()[0].get_histogram();
        let cumulative: Vec<u64> = h.get_bucket().iter().map(|b| b.get_cumulative_count()).collect();
        assert_eq!(cumulative, [3, 7]);
        assert_eq!(h.get_sample_count(), 12);
    }
}
