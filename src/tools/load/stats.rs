//! What a run measured: an HDR histogram of latencies, counts per Result-Code and of everything
//! that went wrong, and the report printed at the end (a table, or one JSON object).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::diameter::ResultCode;

/// Latencies are recorded in microseconds, from 1 µs up to an hour (anything longer is
/// recorded as an hour), with 3 significant digits: 0.1 % resolution at every magnitude, in
/// ≈ 190 KB per histogram.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Why a message from the server was not accepted as the answer to an outstanding request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProtocolError {
    /// Its Hop-by-Hop id matches no request outstanding or recently timed out.
    UnknownHopByHop,
    /// The Hop-by-Hop id matches, the End-to-End id does not (RFC 6733 §6.2: both are copied).
    WrongEndToEnd,
    /// Another Session-Id than the request's (RFC 6733 §8.8), or none.
    WrongSessionId,
    /// Another CC-Request-Number than the request's (RFC 4006 §8.2).
    WrongRequestNumber,
    /// Not a Credit-Control answer, no Result-Code, a malformed AVP, or a corrupt stream.
    Malformed,
}

impl ProtocolError {
    pub const ALL: [Self; 5] = [
        Self::UnknownHopByHop,
        Self::WrongEndToEnd,
        Self::WrongSessionId,
        Self::WrongRequestNumber,
        Self::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::UnknownHopByHop => "unknown Hop-by-Hop",
            Self::WrongEndToEnd => "wrong End-to-End",
            Self::WrongSessionId => "wrong Session-Id",
            Self::WrongRequestNumber => "wrong CC-Request-Number",
            Self::Malformed => "malformed",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::UnknownHopByHop => "unknown_hop_by_hop",
            Self::WrongEndToEnd => "wrong_end_to_end",
            Self::WrongSessionId => "wrong_session_id",
            Self::WrongRequestNumber => "wrong_request_number",
            Self::Malformed => "malformed",
        }
    }
}

/// Counts of one connection (or, merged, of the run). Requests count when their send time
/// (for the open loop: their intended send time) is inside the measured window; every such
/// request ends as exactly one of answered, timed out or lost.
#[derive(Clone, Debug)]
pub struct Stats {
    pub latency_us: Histogram<u64>,
    pub requests: u64,
    pub request_bytes: u64,
    pub answers: u64,
    /// (Result-Code, answers), in order of first appearance (2001 first, in a healthy run).
    pub result_codes: Vec<(u32, u64)>,
    pub timeouts: u64,
    /// Answers that came after their request had timed out (not in `answers`).
    pub late_answers: u64,
    pub protocol_errors: [u64; 5],
    /// Requests outstanding on a connection that broke.
    pub lost: u64,
    /// Open loop: requests due in the window that the generator could not send (no session
    /// was free, or the connection had too many outstanding).
    pub unsent: u64,
    /// Sessions given up: their request failed, timed out or got no valid answer.
    pub sessions_dropped: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        let latency_us = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Self {
            latency_us,
            requests: 0,
            request_bytes: 0,
            answers: 0,
            result_codes: Vec::new(),
            timeouts: 0,
            late_answers: 0,
            protocol_errors: [0; 5],
            lost: 0,
            unsent: 0,
            sessions_dropped: 0,
        }
    }

    /// An answer to a counted request: its Result-Code and how long it took.
    pub fn answer(&mut self, result: u32, latency_us: u64) {
        self.answers += 1;
        self.latency_us.saturating_record(latency_us.max(1));
        match self.result_codes.iter_mut().find(|(code, _)| *code == result) {
            Some((_, n)) => *n += 1,
            None => self.result_codes.push((result, 1)),
        }
    }

    pub fn protocol_error(&mut self, e: ProtocolError) {
        self.protocol_errors[e as usize] += 1;
    }

    pub fn protocol_errors_total(&self) -> u64 {
        self.protocol_errors.iter().sum()
    }

    pub fn merge(&mut self, other: &Self) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.requests += other.requests;
        self.request_bytes += other.request_bytes;
        self.answers += other.answers;
        for &(code, n) in &other.result_codes {
            match self.result_codes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, m)) => *m += n,
                None => self.result_codes.push((code, n)),
            }
        }
        self.timeouts += other.timeouts;
        self.late_answers += other.late_answers;
        for (a, b) in self.protocol_errors.iter_mut().zip(other.protocol_errors) {
            *a += b;
        }
        self.lost += other.lost;
        self.unsent += other.unsent;
        self.sessions_dropped += other.sessions_dropped;
    }

    pub fn mean_request_bytes(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.request_bytes as f64 / self.requests as f64
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// How the run was driven, for the report's heading and JSON.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub scenario: String,
    pub connections: usize,
    pub in_flight: usize,
    /// Requests per second asked for (open loop); `None` for the closed loop.
    pub offered_rate: Option<u64>,
    pub sessions: u64,
    pub only_updates: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
}

/// The end result of a run.
#[derive(Clone, Debug)]
pub struct Report {
    pub info: RunInfo,
    pub stats: Stats,
}

impl Report {
    /// Answers per second over the measured window.
    pub fn rate(&self) -> f64 {
        if self.info.duration_s > 0.0 {
            self.stats.answers as f64 / self.info.duration_s
        } else {
            0.0
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        let p = Percentiles::of(&s.latency_us);
        let codes: serde_json::Map<String, serde_json::Value> =
            s.result_codes.iter().map(|(c, n)| (c.to_string(), json!(n))).collect();
        let kinds: serde_json::Map<String, serde_json::Value> = ProtocolError::ALL
            .iter()
            .map(|e| (e.key().to_owned(), json!(s.protocol_errors[*e as usize])))
            .collect();
        json!({
            "requests": s.requests,
            "answers": s.answers,
            "duration_s": self.info.duration_s,
            "rate": round2(self.rate()),
            "latency_us": { "p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max },
            "result_codes": codes,
            "timeouts": s.timeouts,
            "protocol_errors": s.protocol_errors_total(),
            "protocol_error_kinds": kinds,
            "late_answers": s.late_answers,
            "lost": s.lost,
            "unsent": s.unsent,
            "sessions_dropped": s.sessions_dropped,
            "mean_request_bytes": round2(s.mean_request_bytes()),
            "scenario": self.info.scenario,
            "connections": self.info.connections,
            "in_flight": self.info.in_flight,
            "offered_rate": self.info.offered_rate,
            "sessions": self.info.sessions,
            "only_updates": self.info.only_updates,
            "warmup_s": self.info.warmup_s,
        })
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let s = &self.stats;
        let i = &self.info;
        let p = Percentiles::of(&s.latency_us);
        let mut t = String::new();
        let mode = match i.offered_rate {
            Some(r) => format!("open loop at {r} requests/s over {} connections", i.connections),
            None => format!("closed loop, {} connections × {} in flight", i.connections, i.in_flight),
        };
        let only = if i.only_updates { ", CCR-U only" } else { "" };
        let _ = writeln!(
            t,
            "gyro load: {} scenario{only}, {mode}, {} sessions; {} s measured after {} s warm-up",
            i.scenario, i.sessions, i.duration_s, i.warmup_s
        );
        let _ = writeln!(
            t,
            "  {:<28}{:>12}   mean {:.0} bytes",
            "requests sent",
            s.requests,
            s.mean_request_bytes()
        );
        let _ = writeln!(t, "  {:<28}{:>12}   {:.1} answers/s", "answers", s.answers, self.rate());
        let _ = writeln!(
            t,
            "  {:<28}p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            "latency",
            duration_text(p.p50),
            duration_text(p.p90),
            duration_text(p.p99),
            duration_text(p.p999),
            duration_text(p.max)
        );
        let mut codes = s.result_codes.clone();
        codes.sort_unstable();
        for (code, n) in codes {
            let label = format!("Result-Code {code} {}", ResultCode(code).name());
            let _ = writeln!(t, "  {label:<40}{n:>12}");
        }
        let _ = writeln!(t, "  {:<28}{:>12}", "timeouts", s.timeouts);
        let _ = writeln!(t, "  {:<28}{:>12}", "late answers", s.late_answers);
        let _ = writeln!(t, "  {:<28}{:>12}", "protocol errors", s.protocol_errors_total());
        for e in ProtocolError::ALL {
            let n = s.protocol_errors[e as usize];
            if n > 0 {
                let _ = writeln!(t, "    {:<26}{n:>12}", e.name());
            }
        }
        if s.lost > 0 {
            let _ = writeln!(t, "  {:<28}{:>12}", "lost with a connection", s.lost);
        }
        if i.offered_rate.is_some() {
            let _ = writeln!(t, "  {:<28}{:>12}", "due but not sent", s.unsent);
        }
        let _ = writeln!(t, "  {:<28}{:>12}", "sessions dropped", s.sessions_dropped);
        t
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// "87 µs", "1.23 ms", "2.50 s".
pub fn duration_text(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            scenario: "data".into(),
            connections: 4,
            in_flight: 16,
            offered_rate: None,
            sessions: 64,
            only_updates: false,
            duration_s: 2.0,
            warmup_s: 1.0,
        }
    }

    #[test]
    fn merged_counts_add_up_and_percentiles_come_from_the_histogram() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for us in 1..=1000 {
            a.requests += 1;
            a.answer(2001, us);
        }
        b.requests += 3;
        b.answer(5002, 5_000);
        b.timeouts += 1;
        b.protocol_error(ProtocolError::WrongSessionId);
        b.lost += 1;
        a.merge(&b);
        assert_eq!(a.requests, 1003);
        assert_eq!(a.answers, 1001);
        assert_eq!(a.result_codes, [(2001, 1000), (5002, 1)]);
        assert_eq!(a.requests, a.answers + a.timeouts + a.lost);
        let p = Percentiles::of(&a.latency_us);
        assert!((499..=501).contains(&p.p50), "{p:?}");
        assert!((989..=991).contains(&p.p99), "{p:?}");
        assert_eq!(p.max, 5_003); // 5000 with 3 significant digits: the bucket's highest value
        let report = Report { info: info(), stats: a };
        let j = report.json();
        assert_eq!(j["answers"], 1001);
        assert_eq!(j["result_codes"]["2001"], 1000);
        assert_eq!(j["protocol_errors"], 1);
        assert_eq!(j["protocol_error_kinds"]["wrong_session_id"], 1);
        assert_eq!(j["rate"], 500.5);
        assert!(j["offered_rate"].is_null());
        let table = report.table();
        assert!(table.contains("Result-Code 5002 DIAMETER_UNKNOWN_SESSION_ID"), "{table}");
        assert!(table.contains("wrong Session-Id"), "{table}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(87), "87 µs");
        assert_eq!(duration_text(1_234), "1.23 ms");
        assert_eq!(duration_text(2_500_000), "2.50 s");
    }
}
