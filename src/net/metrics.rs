//! What the connections count for metrics: requests by command, CC-Request-Type and
//! Result-Code, their latency, and the peers that are open. Recorded on the connection tasks
//! with relaxed atomic adds and lock-free histograms (no label lookup per request: the label
//! sets are fixed arrays), read by `crate::metrics` at scrape time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus::{Histogram, HistogramOpts, HistogramVec};

use crate::diameter::avp::AvpIter;
use crate::diameter::{AvpCode, MessageRef};

/// The commands counted by name; any other is `other`.
pub const COMMANDS: [(u32, &str); 5] = [(272, "CCR"), (257, "CER"), (280, "DWR"), (282, "DPR"), (0, "other")];
/// CC-Request-Type (RFC 4006 §8.3) values by name; `none` for requests without one.
pub const REQUEST_TYPES: [&str; 6] = ["none", "initial", "update", "termination", "event", "other"];
/// Result-Codes counted by value (RFC 6733 §7.1, RFC 4006 §9.1, TS 29.229/32.299 as met in
/// Ro/Gy); any other is counted as `other`, so the label set stays bounded.
pub const RESULT_CODES: [u32; 34] = [
    2001, 2002, 3001, 3002, 3003, 3004, 3005, 3007, 3008, 3009, 3010, 4001, 4010, 4011, 4012, 5001, 5002,
    5003, 5004, 5005, 5006, 5007, 5008, 5009, 5010, 5011, 5012, 5013, 5014, 5015, 5017, 5030, 5031, 0,
];
const RESULTS: usize = RESULT_CODES.len() + 1;
/// Hosts remembered for `gyro_diameter_peer_up` beyond the allowlist (bounded labels).
const PEER_HOSTS_MAX: usize = 1024;

/// Request latency buckets, seconds: from 100 µs (an answer from memory) to 2.5 s (past any
/// client's Tx timer).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// See the module doc.
pub struct NetMetrics {
    /// Transport-level duplicates (same Origin-Host and End-to-End id) answered from the
    /// duplicate cache, for applications that do not remember their own answers.
    pub replayed: AtomicU64,
    /// CERs refused because their Origin-Host already had `diameter.connections_per_peer_max`
    /// open connections.
    pub peer_refused: AtomicU64,
    requests: Box<[AtomicU64]>,
    latency_vec: HistogramVec,
    latency: Vec<Histogram>,
    peers: Mutex<HashMap<String, u32>>,
    /// Server-initiated requests (RAR, ASR) sent, by command.
    server_sent: [AtomicU64; 2],
    /// Their answers by command × (2001, 2002, 5002, other).
    server_answers: [[AtomicU64; 4]; 2],
    /// Server-initiated requests that got no answer on either attempt.
    pub server_unanswered: AtomicU64,
}

/// The Result-Codes of RAA/ASA counted by value; any other is `other`.
pub const SERVER_ANSWER_CODES: [&str; 4] = ["2001", "2002", "5002", "other"];

/// Where a request falls: its command and CC-Request-Type slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Class {
    command: u8,
    request_type: u8,
}

impl Class {
    /// The class of `msg` (a request).
    pub fn of(msg: &MessageRef<'_>) -> Self {
        let code = msg.header.command.0;
        let command = COMMANDS.iter().position(|&(c, _)| c == code).unwrap_or(COMMANDS.len() - 1);
        let request_type = if code == 272 {
            match msg
                .find(AvpCode(416))
                .and_then(|a| <[u8; 4]>::try_from(a.data).ok())
                .map(u32::from_be_bytes)
            {
                Some(t @ 1..=4) => t as usize,
                Some(_) => 5,
                None => 0,
            }
        } else {
            0
        };
        Self { command: command as u8, request_type: request_type as u8 }
    }
}

/// The Result-Code of an answer: the Result-Code AVP, else the Experimental-Result-Code in
/// Experimental-Result (RFC 6733 §7.6–7.7); 0 when it has neither.
pub fn result_code(answer: &[u8]) -> u32 {
    let Some(msg) = MessageRef::parse(answer) else { return 0 };
    let u32_of = |data: &[u8]| <[u8; 4]>::try_from(data).ok().map(u32::from_be_bytes);
    if let Some(code) = msg.find(AvpCode(268)).and_then(|a| u32_of(a.data)) {
        return code;
    }
    msg.find(AvpCode(297))
        .and_then(|group| AvpIter::new(group.data).map_while(Result::ok).find(|a| a.code == AvpCode(298)))
        .and_then(|a| u32_of(a.data))
        .unwrap_or(0)
}

impl Default for NetMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NetMetrics {
    pub fn new() -> Self {
        let opts = HistogramOpts::new(
            "gyro_diameter_request_duration_seconds",
            "Time from reading a request to releasing its answer for writing (after its journal record is durable).",
        )
        .buckets(LATENCY_BUCKETS.to_vec());
        let latency_vec = HistogramVec::new(opts, &["command"]).expect("valid histogram options");
        let latency = COMMANDS.iter().map(|(_, name)| latency_vec.with_label_values(&[name])).collect();
        Self {
            replayed: AtomicU64::new(0),
            peer_refused: AtomicU64::new(0),
            requests: (0..COMMANDS.len() * REQUEST_TYPES.len() * RESULTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency_vec,
            latency,
            peers: Mutex::new(HashMap::new()),
            server_sent: Default::default(),
            server_answers: Default::default(),
            server_unanswered: AtomicU64::new(0),
        }
    }

    pub(super) fn server_request_sent(&self, command: super::outgoing::ServerCommand) {
        self.server_sent[command as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn server_answer(&self, command: super::outgoing::ServerCommand, result_code: Option<u32>) {
        let slot = match result_code {
            Some(2001) => 0,
            Some(2002) => 1,
            Some(5002) => 2,
            _ => 3,
        };
        self.server_answers[command as usize][slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Server-initiated requests sent: (command, count) for RAR and ASR.
    pub fn server_requests(&self) -> [(&'static str, u64); 2] {
        use super::outgoing::ServerCommand::{AbortSession, ReAuth};
        [ReAuth, AbortSession].map(|c| (c.name(), self.server_sent[c as usize].load(Ordering::Relaxed)))
    }

    /// Their answers: (command, Result-Code label, count), non-zero ones.
    pub fn server_answers(&self) -> Vec<(&'static str, &'static str, u64)> {
        use super::outgoing::ServerCommand::{AbortSession, ReAuth};
        let mut out = Vec::new();
        for c in [ReAuth, AbortSession] {
            for (i, label) in SERVER_ANSWER_CODES.iter().enumerate() {
                let n = self.server_answers[c as usize][i].load(Ordering::Relaxed);
                if n > 0 {
                    out.push((c.name(), *label, n));
                }
            }
        }
        out
    }

    /// One answer released: `answer` is its bytes, `received` when its request was read.
    pub fn answered(&self, class: Class, answer: &[u8], received: std::time::Instant) {
        let code = result_code(answer);
        let result = RESULT_CODES.iter().position(|&c| c == code).unwrap_or(RESULT_CODES.len());
        let i = (usize::from(class.command) * REQUEST_TYPES.len() + usize::from(class.request_type))
            * RESULTS
            + result;
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.latency[usize::from(class.command)].observe(received.elapsed().as_secs_f64());
    }

    /// The latency histograms, for the registry.
    pub fn latency(&self) -> &HistogramVec {
        &self.latency_vec
    }

    /// Every non-zero request counter: (command, request type, Result-Code label, count).
    pub fn requests(&self) -> Vec<(&'static str, &'static str, String, u64)> {
        let mut out = Vec::new();
        for (i, counter) in self.requests.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let result = i % RESULTS;
            let request_type = (i / RESULTS) % REQUEST_TYPES.len();
            let command = i / RESULTS / REQUEST_TYPES.len();
            let code = match RESULT_CODES.get(result) {
                Some(0) => "none".to_owned(),
                Some(c) => c.to_string(),
                None => "other".to_owned(),
            };
            out.push((COMMANDS[command].1, REQUEST_TYPES[request_type], code, n));
        }
        out
    }

    /// A connection's peer reached the Open state (its CER was accepted).
    pub fn peer_opened(&self, host: &str) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let known = peers.contains_key(host);
        if known || peers.len() < PEER_HOSTS_MAX {
            *peers.entry(host.to_owned()).or_insert(0) += 1;
        }
    }

    /// A connection whose peer was open is gone.
    pub fn peer_closed(&self, host: &str) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(host) {
            *n = n.saturating_sub(1);
        }
    }

    /// Open connections per peer host seen since start (0: none open now).
    pub fn peers(&self) -> Vec<(String, u32)> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u32)> = peers.iter().map(|(h, &n)| (h.clone(), n)).collect();
        out.sort();
        out
    }
}
