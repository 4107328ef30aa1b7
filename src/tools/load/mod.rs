//! `gyro load`: a Diameter credit-control load generator, to measure how many CCRs per second
//! a server answers and at what latency.
//!
//! Owns: the load run (connections, sessions, pacing, measurement, the report) and `gyro load
//! provision`, which writes a catalog with the run's subscribers. Must not touch: anything
//! server-side; like `gyro ccr`, it sees a server only through the wire. Submodules:
//! [`scenario`] (what is sent: templates, kinds, subscriber choice), [`schedule`] (the open
//! loop's send times), [`conn`] (one connection's writer and reader), [`stats`] (histogram,
//! counts, report), [`provision`].
//!
//! # `gyro load`
//!
//! ```text
//! gyro load provision --subscribers 10000 --out catalog.toml
//! printf '[charging]\ncatalog = "catalog.toml"\n' > cfg.toml
//! gyro serve --listen 127.0.0.1:3868 --config cfg.toml &
//! gyro load --server 127.0.0.1:3868 --subscribers 10000                      # closed loop
//! gyro load --server 127.0.0.1:3868 --subscribers 10000 --rate 20000          # open loop
//! gyro load --subscribers 10000 --sessions 100000 --only-updates --json       # W1/W2
//! ```
//!
//! Each of `--connections` connections does its own CER/CEA (Auth-Application-Id 4), answers
//! the server's DWR, and ends with DPR/DPA. Sessions (`--sessions`, spread over the
//! connections) follow their scenario: a data or voice session sends CCR-I, `--updates` CCR-U
//! and CCR-T with CC-Request-Numbers 0, 1, 2, …; an SMS is one CCR-E (DIRECT_DEBITING). A
//! session sends its next request only after the answer to the previous one (RFC 4006 §5.1),
//! and when it ends (or fails) a new session with a new Session-Id and subscriber takes its
//! place. A session whose request fails (any Result-Code but 2xxx) or times out is dropped,
//! never continued.
//!
//! **Closed loop** (default): each connection keeps `--in-flight` requests outstanding (at most
//! its number of sessions). **Open loop** (`--rate R`): R requests per second in total at fixed
//! intended times, whatever the answers do; latency is measured from the intended time (wrk2's
//! correction of coordinated omission), so a server that stalls is charged for the requests
//! the stall held back, and requests due that could not be sent at all are reported as "due but
//! not sent".
//!
//! **`--only-updates`**: every session is opened first with CCR-I (not measured), then only
//! CCR-U are sent, rotating over the open sessions, for warm-up and the measured window. That
//! isolates the update path (W1: CCR-U ≈ 500 bytes; W2: 100 k open sessions).
//!
//! Every answer must match its request: Hop-by-Hop id → an outstanding request, then the same
//! End-to-End id, Session-Id and CC-Request-Number, and a Result-Code. Anything else is a
//! protocol error (the request then stays outstanding and times out unless its real answer
//! comes). Requests counted are those whose (intended) send time falls in the measured window,
//! and each ends as exactly one of: answered (`answers` = the sum over Result-Codes), timed
//! out (`--timeout-ms` after it was sent), or lost with a connection.
//!
//! Output: a progress line on stderr every second; at the end a table on stdout, or with
//! `--json` one JSON object and nothing else on stdout.
//!
//! Exit status: 0 the run completed; 1 it completed but a connection failed during it (the
//! report is still printed); 2 usage error, or the server could not be reached.

pub mod conn;
pub mod provision;
pub mod scenario;
pub mod schedule;
pub mod stats;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use self::conn::{Conn, Phase, Run, Status};
use self::provision::ProvisionArgs;
use self::scenario::{
    decimal_digits, Chooser, Identity, Mix, Scenario, Shape, Skew, Subscribers, Templates, MSISDN_DIGITS_MAX,
};
use self::stats::{duration_text, Percentiles, Report, RunInfo, Stats};
use crate::limits::{DPA_TIMEOUT_MS, MSCC_PER_REQUEST_MAX};
use crate::net::client::{random_u64, unix_now_secs, Client, ClientError, ClientIdentity};

/// The first MSISDN of `--first-msisdn` (a German mobile range, as in the demo catalog).
pub const FIRST_MSISDN_DEFAULT: u64 = 491_700_000_000;

/// At most as many connections as `gyro serve` accepts by default.
pub const CONNECTIONS_MAX: usize = crate::limits::CONNECTIONS_MAX;
/// Outstanding requests per connection in the closed loop (each fits the connection's ring
/// with room to spot late answers). Beyond a server's own limit (`in_flight_per_connection`,
/// 1024 for gyro) the answers are 3004 TOO_BUSY, which the report shows.
pub const IN_FLIGHT_MAX: usize = conn::RING_SLOTS_MAX / 4;
/// Sessions kept open at once, over all connections (≈ 24 bytes each in the generator).
pub const SESSIONS_MAX: u64 = 10_000_000;
/// Open-loop rate, requests per second in total.
pub const RATE_MAX: u64 = 10_000_000;
/// Longest warm-up or measured window, seconds.
pub const DURATION_MAX_S: f64 = 86_400.0;
/// Longest `--timeout-ms`.
pub const TIMEOUT_MAX_MS: u64 = 3_600_000;
/// How often the progress line is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the coordinator looks at the connections while it waits for them.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The run's help after the options: how to provision and what the numbers mean.
const LONG_HELP: &str = "\
Subscribers: the server must know them. `gyro load provision` writes a catalog with one
prepaid account per MSISDN; point gyro at it and use the same --subscribers/--first-msisdn:

    gyro load provision --subscribers 10000 --out catalog.toml
    printf '[charging]\\ncatalog = \"catalog.toml\"\\n' > cfg.toml
    gyro serve --listen 127.0.0.1:3868 --config cfg.toml
    gyro load --server 127.0.0.1:3868 --subscribers 10000 --duration 10

Closed loop (default): every connection keeps --in-flight requests outstanding; the result is
the server's throughput at that concurrency. Open loop (--rate R): R requests/s in total at
fixed intended times; latency counts from the intended time, so it includes any queueing the
server caused (no coordinated omission). --only-updates opens --sessions sessions first, then
sends only CCR-U over them, and reports only that phase.

Report: answers/s over the measured window (--duration, after --warmup); latency percentiles
from an HDR histogram; answers per Result-Code; timeouts (no answer within --timeout-ms);
protocol errors (an answer whose Hop-by-Hop matches nothing, or whose End-to-End, Session-Id
or CC-Request-Number is not its request's, or that is malformed); the mean request size.
--json prints one JSON object on stdout instead of the table.

Exit status: 0 the run completed; 1 a connection failed during the run (the report is still
printed); 2 usage error or the server could not be reached.";

/// `gyro load` and `gyro load provision`.
#[derive(Clone, Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, after_long_help = LONG_HELP)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Clone, Debug, Subcommand)]
pub enum LoadCommand {
    /// Write a catalog with one prepaid account per subscriber of a load run, for `gyro serve`
    /// (`[charging] catalog = "FILE"` in the file given to `gyro serve --config`).
    Provision(ProvisionArgs),
}

/// Options of a load run.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Diameter server to load.
    #[arg(long, default_value = "127.0.0.1:3868", value_name = "HOST:PORT")]
    pub server: String,
    /// What the sessions are: data (Gy), voice (IMS), sms (CCR-E) or a mix (see --mix).
    #[arg(long, value_enum, default_value = "data")]
    pub scenario: Scenario,
    /// Weights of the kinds for --scenario mix [default: data=8,voice=1,sms=1].
    #[arg(long, value_name = "data=W,voice=W,sms=W")]
    pub mix: Option<Mix>,
    /// Subscribers: E.164 MSISDNs FIRST .. FIRST+N-1 (see --first-msisdn).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub subscribers: u64,
    /// The first MSISDN (digits, no +).
    #[arg(long, default_value_t = FIRST_MSISDN_DEFAULT, value_name = "DIGITS")]
    pub first_msisdn: u64,
    /// Which subscriber a new session picks: uniform, or zipf:S (rank k with weight 1/k^S).
    #[arg(long, default_value = "uniform", value_name = "uniform|zipf:S")]
    pub skew: Skew,
    /// Sessions kept open at once over all connections [default: connections × in-flight].
    #[arg(long, value_name = "N")]
    pub sessions: Option<u64>,
    /// CCR-U per data or voice session, between its CCR-I and CCR-T.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub updates: u32,
    /// Multiple-Services-Credit-Control AVPs (rating groups 10, 11, …) per data request.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub rating_groups: u32,
    /// Open --sessions sessions first, then send only CCR-U over them; report only those.
    #[arg(long)]
    pub only_updates: bool,
    /// TCP connections, each with its own CER/CEA.
    #[arg(long, default_value_t = 4, value_name = "C")]
    pub connections: usize,
    /// Closed loop: requests outstanding per connection.
    #[arg(long, default_value_t = 16, value_name = "K")]
    pub in_flight: usize,
    /// Open loop: requests per second in total, at scheduled times (latency from those times).
    #[arg(long, value_name = "R")]
    pub rate: Option<u64>,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds of load before the measured window, not counted.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup: f64,
    /// A request without an answer after this long is a timeout (and its session is dropped).
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Our Origin-Host (in CER and every request).
    #[arg(long, default_value = "load.localdomain")]
    pub origin_host: String,
    /// Our Origin-Realm.
    #[arg(long, default_value = "localdomain")]
    pub origin_realm: String,
    /// Destination-Realm of the requests.
    #[arg(long, default_value = "localdomain")]
    pub destination_realm: String,
    /// Print one JSON object on stdout at the end instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Tokio worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

impl RunArgs {
    /// The options with their defaults, as `gyro load` without arguments has them.
    pub fn new() -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = Self::augment_args(clap::Command::new("load"));
        let matches = cmd.try_get_matches_from(["load"]).expect("the defaults of RunArgs parse");
        Self::from_arg_matches(&matches).expect("the defaults of RunArgs parse")
    }
}

impl Default for RunArgs {
    fn default() -> Self {
        Self::new()
    }
}

/// MSISDNs that cannot be patched in place.
#[derive(Debug, thiserror::Error)]
pub enum MsisdnError {
    #[error("--first-msisdn {0}: an E.164 number has at most {MSISDN_DIGITS_MAX} digits")]
    TooLong(u64),
    #[error(
        "--subscribers {count} from --first-msisdn {first}: the last MSISDN, {last}, has more digits \
         than the first; choose a first MSISDN with room for {count} numbers"
    )]
    DigitsChange { first: u64, count: u64, last: u64 },
}

/// Every MSISDN of the range has the first one's number of digits, at most 15.
pub fn check_msisdns(first: u64, count: u64) -> Result<(), MsisdnError> {
    if decimal_digits(first) > MSISDN_DIGITS_MAX {
        return Err(MsisdnError::TooLong(first));
    }
    let last = first.saturating_add(count.saturating_sub(1));
    if decimal_digits(last) != decimal_digits(first) {
        return Err(MsisdnError::DigitsChange { first, count, last });
    }
    Ok(())
}

/// An option or combination of options that cannot run; the text names the option.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{option} {value}: {problem}")]
    Bad { option: &'static str, value: String, problem: String },
    #[error("--mix applies to --scenario mix, not {0}")]
    MixWithoutMix(&'static str),
    #[error("--only-updates needs sessions to update, and an SMS is one CCR-E: use --scenario data or voice, or a --mix without sms")]
    OnlyUpdatesWithSms,
    #[error(
        "--sessions {sessions} is fewer than --connections {connections}: every connection needs a session"
    )]
    FewerSessionsThanConnections { sessions: u64, connections: usize },
    #[error(transparent)]
    Msisdn(#[from] MsisdnError),
}

fn bad(option: &'static str, value: impl ToString, problem: impl Into<String>) -> UsageError {
    UsageError::Bad { option, value: value.to_string(), problem: problem.into() }
}

/// The options of a run, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub server: String,
    pub scenario: Scenario,
    pub mix: Mix,
    pub subscribers: Subscribers,
    pub skew: Skew,
    pub sessions: u64,
    pub updates: u32,
    pub rating_groups: u32,
    pub only_updates: bool,
    pub connections: usize,
    pub in_flight: usize,
    pub rate: Option<u64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub identity: ClientIdentity,
    pub destination_realm: String,
    pub json: bool,
    pub workers: Option<usize>,
}

impl Settings {
    pub fn from_args(a: &RunArgs) -> Result<Self, UsageError> {
        if a.connections == 0 || a.connections > CONNECTIONS_MAX {
            return Err(bad("--connections", a.connections, format!("must be from 1 to {CONNECTIONS_MAX}")));
        }
        if a.in_flight == 0 || a.in_flight > IN_FLIGHT_MAX {
            return Err(bad("--in-flight", a.in_flight, format!("must be from 1 to {IN_FLIGHT_MAX}")));
        }
        if let Some(r) = a.rate.filter(|r| *r == 0 || *r > RATE_MAX) {
            return Err(bad("--rate", r, format!("must be from 1 to {RATE_MAX} requests/s")));
        }
        if a.subscribers == 0 {
            return Err(bad("--subscribers", 0, "must be at least 1"));
        }
        check_msisdns(a.first_msisdn, a.subscribers)?;
        let sessions = a.sessions.unwrap_or((a.connections * a.in_flight) as u64);
        if sessions > SESSIONS_MAX {
            return Err(bad("--sessions", sessions, format!("must be at most {SESSIONS_MAX}")));
        }
        if sessions < a.connections as u64 {
            return Err(UsageError::FewerSessionsThanConnections { sessions, connections: a.connections });
        }
        if a.rating_groups == 0 || a.rating_groups as usize > MSCC_PER_REQUEST_MAX {
            let problem = format!("must be from 1 to {MSCC_PER_REQUEST_MAX} (MSCCs per request)");
            return Err(bad("--rating-groups", a.rating_groups, problem));
        }
        if a.mix.is_some() && a.scenario != Scenario::Mix {
            return Err(UsageError::MixWithoutMix(a.scenario.name()));
        }
        let mix = Mix::for_scenario(a.scenario, a.mix.unwrap_or_default());
        if a.only_updates && mix.includes(scenario::Kind::Sms) {
            return Err(UsageError::OnlyUpdatesWithSms);
        }
        let seconds = |option, v: f64, min_exclusive: bool| {
            let low_ok = if min_exclusive { v > 0.0 } else { v >= 0.0 };
            if !(low_ok && v <= DURATION_MAX_S) {
                let from = if min_exclusive { "above 0" } else { "from 0" };
                return Err(bad(option, v, format!("must be {from} and at most {DURATION_MAX_S} seconds")));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let duration = seconds("--duration", a.duration, true)?;
        let warmup = seconds("--warmup", a.warmup, false)?;
        if a.timeout_ms == 0 || a.timeout_ms > TIMEOUT_MAX_MS {
            return Err(bad("--timeout-ms", a.timeout_ms, format!("must be from 1 to {TIMEOUT_MAX_MS}")));
        }
        if a.workers == Some(0) {
            return Err(bad("--workers", 0, "must be at least 1"));
        }
        Ok(Self {
            server: a.server.clone(),
            scenario: a.scenario,
            mix,
            subscribers: Subscribers { first: a.first_msisdn, count: a.subscribers },
            skew: a.skew,
            sessions,
            updates: a.updates,
            rating_groups: a.rating_groups,
            only_updates: a.only_updates,
            connections: a.connections,
            in_flight: a.in_flight,
            rate: a.rate,
            duration,
            warmup,
            timeout: Duration::from_millis(a.timeout_ms),
            identity: ClientIdentity {
                origin_host: a.origin_host.clone(),
                origin_realm: a.origin_realm.clone(),
            },
            destination_realm: a.destination_realm.clone(),
            json: a.json,
            workers: a.workers,
        })
    }
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("cannot resolve --server {server}")]
    Resolve {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection {index} to {server}")]
    Connect {
        index: usize,
        server: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// Connections that failed during the run, with why.
    pub failed: Vec<(usize, String)>,
}

/// Runs `gyro load` as a command: the report on stdout, progress and errors on stderr; returns
/// the exit status.
pub fn main(args: &LoadArgs) -> i32 {
    match &args.command {
        Some(LoadCommand::Provision(p)) => match provision::provision(p) {
            Ok(done) => {
                println!(
                    "{}: {} prepaid accounts, e164:{} .. e164:{}\nserve it with a config file holding\n  \
                     [charging]\n  catalog = \"{}\"",
                    p.out.display(),
                    done.accounts,
                    done.first,
                    done.last,
                    p.out.display()
                );
                0
            }
            Err(e) => {
                eprintln!("gyro load provision: error: {}", error_chain(&e));
                2
            }
        },
        None => run_command(&args.run),
    }
}

fn run_command(args: &RunArgs) -> i32 {
    let settings = match Settings::from_args(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gyro load: error: {e}");
            return 2;
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = settings.workers {
        rt.worker_threads(n);
    }
    let outcome = match rt.build().map_err(LoadError::Runtime) {
        Ok(rt) => rt.block_on(run(&settings, &mut std::io::stderr())),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(outcome) => {
            if settings.json {
                println!("{}", outcome.report.json());
            } else {
                print!("{}", outcome.report.table());
            }
            for (index, why) in &outcome.failed {
                eprintln!("gyro load: connection {index} failed during the run: {why}");
            }
            if outcome.failed.is_empty() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("gyro load: error: {}", error_chain(&e));
            2
        }
    }
}

/// The error and its sources, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// Connects, runs the phases, disconnects and returns the report. Progress lines go to
/// `progress` once a second.
pub async fn run(settings: &Settings, progress: &mut dyn std::io::Write) -> Result<Outcome, LoadError> {
    let addr = {
        let resolve_error = |source| LoadError::Resolve { server: settings.server.clone(), source };
        let mut addrs = tokio::net::lookup_host(&settings.server).await.map_err(resolve_error)?;
        addrs.next().ok_or_else(|| resolve_error(std::io::Error::other("no address")))?
    };
    let mut connecting = JoinSet::new();
    for index in 0..settings.connections {
        let identity = settings.identity.clone();
        let timeout = settings.timeout;
        connecting.spawn(async move { (index, Client::connect(addr, identity, timeout).await) });
    }
    let mut clients: Vec<Option<Client>> = (0..settings.connections).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        let Ok((index, result)) = joined else { continue };
        match result {
            Ok(c) => clients[index] = Some(c),
            Err(source) => {
                return Err(LoadError::Connect { index, server: settings.server.clone(), source });
            }
        }
    }

    let run = Arc::new(Run::new(
        settings.timeout,
        settings.in_flight,
        settings.rate,
        settings.connections,
        settings.updates,
        settings.only_updates,
        Chooser::new(settings.mix, settings.subscribers.count, settings.skew),
    ));
    // RFC 6733 §8.8: <DiameterIdentity>;<high 32 bits>;<low 32 bits>;<optional>: the start
    // time and a random number name the run (Session-Ids never repeat across runs against the
    // same server), the optional part the connection and the session.
    let secs = unix_now_secs();
    let nonce = random_u64() as u32;
    let identity = Identity {
        origin_host: settings.identity.origin_host.clone(),
        origin_realm: settings.identity.origin_realm.clone(),
        destination_realm: settings.destination_realm.clone(),
        origin_state_id: secs as u32,
    };
    let shape = Shape { rating_groups: settings.rating_groups, subscribers: settings.subscribers };
    let per_conn = settings.sessions / settings.connections as u64;
    let extra = settings.sessions % settings.connections as u64;
    let mut conns = Vec::with_capacity(settings.connections);
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        let Some(client) = client else { unreachable!("every connection was set up or the run failed") };
        let parts = client.into_parts();
        let prefix = format!("{};{secs};{nonce};{index}.", settings.identity.origin_host);
        let templates = Templates::new(&identity, &prefix, shape, settings.mix);
        let sessions = per_conn + u64::from((index as u64) < extra);
        let conn = Arc::new(Conn::new(
            index,
            Arc::clone(&run),
            templates,
            parts.local,
            usize::try_from(sessions).unwrap_or(usize::MAX),
            (parts.next_hop_by_hop, parts.next_end_to_end),
            random_u64() ^ index as u64,
        ));
        let (rd, wr) = parts.stream.into_split();
        tasks.spawn(Arc::clone(&conn).write_loop(wr));
        tasks.spawn(Arc::clone(&conn).read_loop(rd, parts.read_buf));
        conns.push(conn);
    }
    if settings.in_flight as u64 * settings.connections as u64 > settings.sessions && settings.rate.is_none()
    {
        let _ = writeln!(
            progress,
            "gyro load: note: {} sessions allow at most that many requests in flight, not {} × {}",
            settings.sessions, settings.connections, settings.in_flight
        );
    }

    let mut meter = Meter::new(&run);
    if settings.only_updates {
        run.set_phase(Phase::Opening);
        wake_all(&conns);
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if conns.iter().all(|c| c.opening_done()) {
                break;
            }
            if meter.due(&run) {
                let opened: usize = conns.iter().map(|c| c.opened().0).sum();
                let what = format!("opening sessions: {opened} of {}", settings.sessions);
                meter.line(&run, &conns, progress, &what, 0);
            }
        }
        let (opened, live): (usize, usize) =
            conns.iter().map(|c| c.opened()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let _ = writeln!(
            progress,
            "gyro load: {opened} of {} sessions open ({} refused or timed out); sending CCR-U only",
            settings.sessions,
            settings.sessions.saturating_sub(live as u64)
        );
    }

    let start = run.now_ns();
    meter.restart(&run, &conns);
    let from = start + nanos(settings.warmup);
    let until = from + nanos(settings.duration);
    run.start_running(start, from, until);
    wake_all(&conns);
    loop {
        let now = run.now_ns();
        if now >= until {
            break;
        }
        let next = meter.next_line_ns().min(until);
        tokio::time::sleep(Duration::from_nanos(next.saturating_sub(now))).await;
        if meter.due(&run) {
            let what = if run.now_ns() < from { "warm-up" } else { "measuring" };
            meter.line(&run, &conns, progress, what, start);
        }
    }

    // Stop sending; the requests still outstanding get their answers or time out.
    run.set_phase(Phase::Stopping);
    wake_all(&conns);
    let drain_until = run.now_ns() + nanos(settings.timeout) + 2 * nanos(POLL_INTERVAL);
    while !conns.iter().all(|c| c.drained()) && run.now_ns() < drain_until {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // RFC 6733 §5.4: DPR, then wait (bounded) for DPA.
    run.set_phase(Phase::Disconnecting);
    wake_all(&conns);
    let dpa_wait = Duration::from_millis(DPA_TIMEOUT_MS).min(settings.timeout.max(POLL_INTERVAL * 10));
    if tokio::time::timeout(dpa_wait, join_all(&mut tasks)).await.is_err() {
        run.hard_stop.cancel();
        wake_all(&conns);
        join_all(&mut tasks).await;
    }

    let mut stats = Stats::new();
    let mut failed = Vec::new();
    for c in &conns {
        let st = c.lock();
        stats.merge(&st.stats);
        if let Status::Broken(why) = &st.status {
            failed.push((c.index, why.clone()));
        }
    }
    let info = RunInfo {
        scenario: settings.scenario.name().to_owned(),
        connections: settings.connections,
        in_flight: settings.in_flight,
        offered_rate: settings.rate,
        sessions: settings.sessions,
        only_updates: settings.only_updates,
        duration_s: settings.duration.as_secs_f64(),
        warmup_s: settings.warmup.as_secs_f64(),
    };
    Ok(Outcome { report: Report { info, stats }, failed })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn wake_all(conns: &[Arc<Conn>]) {
    for c in conns {
        c.wake();
    }
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

/// The once-a-second progress line: answers per second since the last line, p99 of the
/// measured window so far, errors so far.
struct Meter {
    last_ns: u64,
    last_answers: u64,
    merged: Histogram<u64>,
}

impl Meter {
    fn new(run: &Run) -> Self {
        Self { last_ns: run.now_ns(), last_answers: 0, merged: Stats::new().latency_us }
    }

    /// The next line covers only what happens from now on.
    fn restart(&mut self, run: &Run, conns: &[Arc<Conn>]) {
        self.last_ns = run.now_ns();
        self.last_answers = conns.iter().map(|c| c.lock().answers_total).sum();
    }

    fn next_line_ns(&self) -> u64 {
        self.last_ns + nanos(PROGRESS_INTERVAL)
    }

    fn due(&self, run: &Run) -> bool {
        run.now_ns() >= self.next_line_ns()
    }

    /// One line; the time shown is seconds since `since_ns` (the start of the phase).
    fn line(
        &mut self,
        run: &Run,
        conns: &[Arc<Conn>],
        out: &mut dyn std::io::Write,
        what: &str,
        since_ns: u64,
    ) {
        let now = run.now_ns();
        self.merged.reset();
        let (mut answers, mut timeouts, mut protocol, mut broken) = (0, 0, 0, 0);
        for c in conns {
            let st = c.lock();
            answers += st.answers_total;
            timeouts += st.stats.timeouts;
            protocol += st.stats.protocol_errors_total();
            broken += u64::from(st.status != Status::Open);
            let _ = self.merged.add(&st.stats.latency_us);
        }
        let rate = (answers - self.last_answers) as f64 / ((now - self.last_ns) as f64 / 1e9);
        let p99 = if self.merged.is_empty() {
            "-".to_owned()
        } else {
            duration_text(Percentiles::of(&self.merged).p99)
        };
        let mut line = format!(
            "gyro load: {:>5.1} s  {what}  {rate:>9.0} answers/s  p99 {p99}",
            (now - since_ns) as f64 / 1e9
        );
        let _ = write!(line, "  timeouts {timeouts}  protocol errors {protocol}");
        if broken > 0 {
            let _ = write!(line, "  connections down {broken}");
        }
        let _ = writeln!(out, "{line}");
        self.last_ns = now;
        self.last_answers = answers;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn parse(argv: &[&str]) -> Result<LoadArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("load").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn usage(argv: &[&str]) -> String {
        match parse(argv) {
            Err(e) => e.to_string(),
            Ok(a) => Settings::from_args(&a.run).map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::from_args(&RunArgs::new()).unwrap();
        assert_eq!((s.connections, s.in_flight, s.sessions), (4, 16, 64));
        assert_eq!(s.subscribers, Subscribers { first: 491_700_000_000, count: 1000 });
        assert_eq!((s.updates, s.rating_groups, s.rate), (8, 1, None));
        assert_eq!(
            (s.duration, s.warmup, s.timeout),
            (Duration::from_secs(10), Duration::from_secs(2), Duration::from_secs(5))
        );
        assert_eq!(s.mix, Mix { weights: [1, 0, 0] });
    }

    #[test]
    fn usage_errors_name_the_option() {
        assert_eq!(usage(&["--rate", "0"]), "--rate 0: must be from 1 to 10000000 requests/s");
        assert!(
            usage(&["--skew", "zipf:x"]).contains("'--skew <uniform|zipf:S>'"),
            "{}",
            usage(&["--skew", "zipf:x"])
        );
        let mix = usage(&["--scenario", "mix", "--mix", "data=x"]);
        assert!(mix.contains("--mix") && mix.contains("weight \"x\" of data is not a whole number"), "{mix}");
        assert_eq!(usage(&["--mix", "data=1"]), "--mix applies to --scenario mix, not data");
        assert!(usage(&["--scenario", "sms", "--only-updates"]).starts_with("--only-updates needs"));
        assert_eq!(
            usage(&["--sessions", "2"]),
            "--sessions 2 is fewer than --connections 4: every connection needs a session"
        );
        assert!(usage(&["--connections", "0"]).starts_with("--connections 0: "));
        assert!(usage(&["--in-flight", "0"]).starts_with("--in-flight 0: "));
        assert!(usage(&["--duration", "0"]).starts_with("--duration 0: "));
        assert!(usage(&["--warmup=-1"]).starts_with("--warmup -1: "));
        assert!(usage(&["--rating-groups", "65"]).starts_with("--rating-groups 65: "));
        assert!(usage(&["--subscribers", "0"]).starts_with("--subscribers 0: "));
        assert!(
            usage(&["--first-msisdn", "9999999999999999"]).starts_with("--first-msisdn 9999999999999999: ")
        );
        assert!(usage(&["--first-msisdn", "99", "--subscribers", "2"])
            .starts_with("--subscribers 2 from --first-msisdn 99"));
        assert_eq!(usage(&["--scenario", "mix", "--mix", "data=3,voice=1", "--only-updates"]), "ok");
    }

    #[test]
    fn provision_is_a_subcommand_and_excludes_run_options() {
        let a = parse(&["provision", "--subscribers", "10", "--out", "c.toml"]).unwrap();
        assert!(matches!(a.command, Some(LoadCommand::Provision(ref p)) if p.subscribers == 10));
        assert!(parse(&["--json", "provision", "--subscribers", "1", "--out", "c.toml"]).is_err());
    }
}
