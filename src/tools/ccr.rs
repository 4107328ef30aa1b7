//! `gyro ccr`: curl for Diameter credit control.
//!
//! Owns: turning command-line options or a script into Credit-Control-Requests (RFC 4006 §3.1,
//! TS 32.299 §6.4.2), sending them over one [`Client`] connection, and printing the answers.
//! Must not touch: anything server-side. Building a CCR ([`encode_ccr`]) and reading an answer
//! ([`AnswerSummary::parse`]) are pure functions; only [`run`] does I/O.
//!
//! # `gyro ccr`
//!
//! Sends Credit-Control-Requests (application 4) to a Diameter server, prints each answer
//! decoded AVP by AVP, and ends each with a one-line summary: the Result-Code and, per
//! Multiple-Services-Credit-Control, the rating group, its Result-Code, the granted units and the
//! Final-Unit-Action if any. It connects as `--origin-host`/`--origin-realm` with CER/CEA, sends
//! the requests in order on that one connection, answers the server's DWR while it waits, and
//! disconnects with DPR/DPA.
//!
//! ```text
//! gyro ccr --type initial --subscriber e164:491700000001 --rg 10 --requested 0
//! gyro ccr --type update --session-id 'ccr.gyro.test;1718000000;42' --number 1 \
//!          --rg 10 --used 1048576 --reporting-reason quota-exhausted
//! gyro ccr --type event --context 32274@3gpp.org --action direct-debit --unit events \
//!          --requested 1 --expect 2001
//! gyro ccr --script session.txt --subscriber e164:491700000001 --expect 2001
//! ```
//!
//! Options (the per-request ones, from `--number` to `--expect`, are also script keys):
//!
//! | option | meaning |
//! |---|---|
//! | `--server HOST:PORT` | default `127.0.0.1:3868` |
//! | `--origin-host`, `--origin-realm` | our identity; default `ccr.gyro.test`, `gyro.test` |
//! | `--destination-realm` | default `localdomain` (what `gyro serve` uses) |
//! | `--type initial\|update\|terminate\|event` | CC-Request-Type 1–4; default `initial` |
//! | `--session-id ID` | default `<origin-host>;<unix seconds>;<random>` |
//! | `--number N` | CC-Request-Number; default 0 for initial and event, required otherwise |
//! | `--subscriber TYPE:DATA` | Subscription-Id, repeatable; TYPE is `e164`, `imsi`, `sip`, `nai` or `private` |
//! | `--context ID` | Service-Context-Id; default `32251@3gpp.org` (Gy) |
//! | `--rg N` | one Multiple-Services-Credit-Control per rating group, repeatable |
//! | `--service-id N` | Service-Identifier (inside each MSCC with `--rg`, else at command level) |
//! | `--requested N`, `--used N` | Requested-/Used-Service-Unit; `--requested 0` sends an empty RSU (server's default quota) |
//! | `--unit time\|octets\|events` | CC-Time, CC-Total-Octets or CC-Service-Specific-Units; default `octets` |
//! | `--reporting-reason R` | 3GPP Reporting-Reason inside USU: `threshold`, `qht`, `final`, `quota-exhausted`, `validity-time`, `other-quota-type`, `rating-condition-change`, `forced-reauthorisation`, `pool-exhausted`, `unused-quota-timer` |
//! | `--termination-cause N` | terminate only; default 1 (DIAMETER_LOGOUT) |
//! | `--action A` | Requested-Action, event only: `direct-debit`, `refund`, `check-balance`, `price-enquiry` |
//! | `--timestamp` | Event-Timestamp = now |
//! | `--expect CODE` | fail (exit 1) unless the Result-Code is CODE; repeat to allow several |
//! | `--script FILE` | a whole scripted session, see below |
//! | `--timeout-ms N` | bound on connecting and on each answer; default 5000 |
//! | `-v`, `--verbose` | also print each request |
//!
//! With `--rg`, requested and used units go inside each MSCC and Multiple-Services-Indicator is 1;
//! without it they go at command level (the single-service form).
//!
//! ## Scripts
//!
//! One request per line: the request type, then `key=value` pairs with the option names as keys
//! (`reason` is short for `reporting-reason`; `timestamp` needs no value). `#` starts a comment.
//!
//! ```text
//! # Gy data session, then an SMS
//! initial rg=10 requested=0
//! update rg=10 used=1048576 requested=0
//! update rg=10 rg=20 used=2048 expect=2001
//! terminate rg=10 used=524288 reason=final
//! event context=32274@3gpp.org action=direct-debit unit=events requested=1
//! ```
//!
//! Options given on the command line are defaults for every line; a key on a line replaces
//! them (for the repeatable `rg`, `subscriber` and `expect` the line's values replace the whole
//! list). CC-Request-Number counts from 0 within a session (`number=N` overrides it). Lines
//! share one Session-Id (the first one is `--session-id` if given) until the session ends:
//! after `terminate` (RFC 4006 §5.4, the final interrogation) or `event` (§6: one-time events
//! keep no session state), the next line starts a new session with a new id and number 0.
//! `session=new` starts one explicitly; `session=ID` uses the given id; a line holding only
//! `session=...` applies to the next request. The whole script is checked before anything is
//! sent; errors name the line: `session.txt:3: unknown key "rgg"`. The run stops at the first
//! unmet expectation.
//!
//! ## Exit status
//!
//! 0: every answer arrived and met its expectation (without `--expect` any answer is fine, even
//! an error Result-Code). 1: an expectation failed. 2: usage, script or connection error
//! (timeout, CER refused, connection lost).

use crate::catalog::SubscriptionKind;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::ValueEnum;

use crate::diameter::avp::AvpIter;
use crate::diameter::dictionary::DictError;
use crate::diameter::encode::spec;
use crate::diameter::{
    tree, ApplicationId, AvpCode, AvpRef, AvpSpec, CommandCode, CommandFlags, Dictionary, Encoder,
    MessageRef, ResultCode,
};
use crate::limits::MSCC_PER_REQUEST_MAX;
use crate::net::client::{random_u64, unix_now_secs, Client, ClientError, ClientIdentity};

/// Largest script file we read; a script is typed by hand, this is far beyond any.
pub const SCRIPT_SIZE_MAX_BYTES: usize = 1024 * 1024;

/// RFC 6733 §4.3.1 Time: seconds since 1900-01-01 (NTP); 1970-01-01 is this many seconds later.
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// RFC 4006 §8.15 Termination-Cause DIAMETER_LOGOUT, the default of `--termination-cause`.
const TERMINATION_CAUSE_LOGOUT: u32 = 1;

/// The script format and exit codes, shown by `gyro ccr --help`.
const LONG_HELP: &str = "\
Script (--script FILE): one request per line, the type then key=value pairs named like the
options (reason = reporting-reason; timestamp needs no value); # starts a comment:

    initial rg=10 requested=0
    update rg=10 used=1048576 requested=0 expect=2001
    terminate rg=10 used=524288 reason=final
    event context=32274@3gpp.org action=direct-debit unit=events requested=1

Command-line options are defaults for every line. CC-Request-Number counts from 0 per session;
a session ends after terminate or event (the next line gets a new Session-Id), or with
session=new; session=ID sets the id.

Exit status: 0 all answers met their --expect/expect=; 1 an expectation failed; 2 usage,
script or connection error.";

/// Options of `gyro ccr`.
#[derive(Clone, Debug, clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct CcrArgs {
    /// Diameter server to connect to.
    #[arg(long, default_value = "127.0.0.1:3868", value_name = "HOST:PORT")]
    pub server: String,
    /// Our Origin-Host (in CER and every request).
    #[arg(long, default_value = "ccr.gyro.test")]
    pub origin_host: String,
    /// Our Origin-Realm.
    #[arg(long, default_value = "gyro.test")]
    pub origin_realm: String,
    /// Destination-Realm of the requests.
    #[arg(long, default_value = "localdomain")]
    pub destination_realm: String,
    /// CC-Request-Type [default: initial].
    #[arg(long = "type", value_enum, conflicts_with = "script")]
    pub request_type: Option<RequestType>,
    /// Session-Id [default: ORIGIN_HOST;UNIX_SECONDS;RANDOM].
    #[arg(long)]
    pub session_id: Option<String>,
    /// CC-Request-Number [default: 0 for initial and event; required for update and terminate].
    #[arg(long, conflicts_with = "script")]
    pub number: Option<u32>,
    /// Subscription-Id as TYPE:DATA, TYPE one of e164, imsi, sip, nai, private (repeatable).
    #[arg(long, value_name = "TYPE:DATA")]
    pub subscriber: Vec<Subscriber>,
    /// Service-Context-Id.
    #[arg(long, default_value = "32251@3gpp.org")]
    pub context: String,
    /// Rating-Group: one Multiple-Services-Credit-Control each (repeatable).
    #[arg(long, value_name = "RATING_GROUP")]
    pub rg: Vec<u32>,
    /// Service-Identifier (in each MSCC with --rg, else at command level).
    #[arg(long, value_name = "N")]
    pub service_id: Option<u32>,
    /// Requested-Service-Unit amount in --unit (0 sends an empty RSU).
    #[arg(long, value_name = "N")]
    pub requested: Option<u64>,
    /// Used-Service-Unit amount in --unit.
    #[arg(long, value_name = "N")]
    pub used: Option<u64>,
    /// Unit of --requested and --used.
    #[arg(long, value_enum, default_value = "octets")]
    pub unit: Unit,
    /// 3GPP Reporting-Reason inside Used-Service-Unit.
    #[arg(long, value_enum)]
    pub reporting_reason: Option<ReportingReason>,
    /// Termination-Cause for --type terminate [default: 1 DIAMETER_LOGOUT].
    #[arg(long, value_name = "N")]
    pub termination_cause: Option<u32>,
    /// Requested-Action for --type event.
    #[arg(long, value_enum)]
    pub action: Option<RequestedAction>,
    /// Add Event-Timestamp (now).
    #[arg(long)]
    pub timestamp: bool,
    /// Run a scripted session from FILE, one request per line.
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Exit 1 unless the answer's Result-Code is this (repeat to allow several).
    #[arg(long, value_name = "RESULT_CODE")]
    pub expect: Vec<u32>,
    /// Bound on connecting, on the capabilities exchange and on each answer.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Also print each request.
    #[arg(long, short)]
    pub verbose: bool,
}

impl CcrArgs {
    /// The options with their defaults, as `gyro ccr` without arguments has them.
    pub fn new() -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = Self::augment_args(clap::Command::new("ccr"));
        // The defaults above parse by construction; a failure is a bug in this file.
        let matches = cmd.try_get_matches_from(["ccr"]).expect("the defaults of CcrArgs parse");
        Self::from_arg_matches(&matches).expect("the defaults of CcrArgs parse")
    }
}

impl Default for CcrArgs {
    fn default() -> Self {
        Self::new()
    }
}

/// CC-Request-Type (RFC 4006 §8.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum RequestType {
    Initial,
    Update,
    Terminate,
    Event,
}

impl RequestType {
    pub fn wire(self) -> u32 {
        match self {
            Self::Initial => 1,
            Self::Update => 2,
            Self::Terminate => 3,
            Self::Event => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Update => "update",
            Self::Terminate => "terminate",
            Self::Event => "event",
        }
    }

    /// RFC 4006 §5.4: the final interrogation ends the session; §6: a one-time event keeps
    /// no session state, so each event is a session of its own.
    fn ends_session(self) -> bool {
        matches!(self, Self::Terminate | Self::Event)
    }
}

/// Which unit AVP carries `--requested` and `--used` (RFC 4006 §8.18–§8.21).
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Unit {
    /// CC-Time (420), seconds, Unsigned32.
    Time,
    /// CC-Total-Octets (421), Unsigned64.
    Octets,
    /// CC-Service-Specific-Units (417), Unsigned64.
    Events,
}

/// TS 32.299 §7.2.175 Reporting-Reason; the discriminant is the wire value.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum ReportingReason {
    Threshold = 0,
    Qht = 1,
    Final = 2,
    QuotaExhausted = 3,
    ValidityTime = 4,
    OtherQuotaType = 5,
    RatingConditionChange = 6,
    ForcedReauthorisation = 7,
    PoolExhausted = 8,
    UnusedQuotaTimer = 9,
}

/// RFC 4006 §8.41 Requested-Action; the discriminant is the wire value.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum RequestedAction {
    DirectDebit = 0,
    Refund = 1,
    CheckBalance = 2,
    PriceEnquiry = 3,
}

/// One Subscription-Id, written `e164:491700000001` on the command line.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Subscriber {
    pub kind: SubscriptionKind,
    pub data: String,
}

#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("expected TYPE:DATA with TYPE one of e164, imsi, sip, nai, private")]
pub struct SubscriberError;

impl std::str::FromStr for Subscriber {
    type Err = SubscriberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, data) = s.split_once(':').ok_or(SubscriberError)?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "e164" => SubscriptionKind::E164,
            "imsi" => SubscriptionKind::Imsi,
            "sip" => SubscriptionKind::SipUri,
            "nai" => SubscriptionKind::Nai,
            "private" => SubscriptionKind::Private,
            _ => return Err(SubscriberError),
        };
        if data.is_empty() {
            return Err(SubscriberError);
        }
        // A SIP URI carries its own scheme (RFC 4006 §8.47: "SIP URI as defined in RFC 3261"),
        // so `sip:alice@ims.test` means the URI `sip:alice@ims.test`, not `alice@ims.test`.
        let data = match kind {
            SubscriptionKind::SipUri if !has_uri_scheme(data) => s.to_owned(),
            _ => data.to_owned(),
        };
        Ok(Self { kind, data })
    }
}

fn has_uri_scheme(s: &str) -> bool {
    ["sip:", "sips:", "tel:"].iter().any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

/// Whether to add Event-Timestamp.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Timestamp {
    Omit,
    Now,
}

/// What one CCR carries beyond the session bookkeeping (Session-Id, CC-Request-Number).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CcrRequest {
    pub request_type: RequestType,
    pub subscribers: Vec<Subscriber>,
    pub service_context: String,
    /// One Multiple-Services-Credit-Control each; empty: the single-service form.
    pub rating_groups: Vec<u32>,
    pub service_id: Option<u32>,
    /// 0 means an empty Requested-Service-Unit.
    pub requested: Option<u64>,
    pub used: Option<u64>,
    pub unit: Unit,
    pub reporting_reason: Option<ReportingReason>,
    /// Sent with terminate only.
    pub termination_cause: u32,
    /// Sent with event only.
    pub action: Option<RequestedAction>,
    pub timestamp: Timestamp,
}

/// Which session a step's request belongs to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SessionChoice {
    /// The current session, or a new one if there is none (first request, or the previous
    /// request ended its session).
    Continue,
    /// A new session with a generated id.
    New,
    /// This Session-Id (a new session as far as numbering goes).
    Id(String),
}

/// Where a step came from, for error messages.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Origin {
    Flags,
    Script { path: PathBuf, line: usize },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flags => f.write_str("command line"),
            Self::Script { path, line } => write!(f, "{}:{line}", path.display()),
        }
    }
}

/// One request to send and what its answer must say.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Step {
    pub request: CcrRequest,
    /// CC-Request-Number; `None` counts automatically within the session.
    pub number: Option<u32>,
    pub session: SessionChoice,
    /// Acceptable Result-Codes; empty accepts any.
    pub expect: Vec<ResultCode>,
    pub origin: Origin,
}

/// The part of a CCR that the session and the connection decide.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    pub hop_by_hop: u32,
    pub end_to_end: u32,
    pub origin: &'a ClientIdentity,
    pub destination_realm: &'a str,
    pub session_id: &'a str,
    pub number: u32,
    pub now_unix_secs: u64,
}

/// One request sent and its answer.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub origin: Origin,
    pub request_type: RequestType,
    pub session_id: String,
    pub number: u32,
    pub request: Bytes,
    pub answer: Bytes,
    pub summary: AnswerSummary,
}

/// Why `gyro ccr` failed. [`CcrError::exit_code`] maps each to the documented exit status.
#[derive(Debug, thiserror::Error)]
pub enum CcrError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("{}:{line}: {problem}", .path.display())]
    Script { path: PathBuf, line: usize, problem: LineProblem },
    #[error("cannot read script {}", .path.display())]
    ScriptRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve --server {server}")]
    Resolve {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded dictionary")]
    Dictionary(#[from] DictError),
    /// The connection failed while running a step (the source says how).
    #[error("{}connection failed", prefix(.origin))]
    Client {
        origin: Origin,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Connect(ClientError),
    #[error("{}Result-Code {} {}, expected {}", prefix(.origin), result_text(*.got), .got.map_or("", |r| r.name()), codes_text(.expected))]
    Expectation { origin: Origin, expected: Vec<ResultCode>, got: Option<ResultCode> },
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

impl CcrError {
    /// 1 for an unmet expectation, 2 for everything else (usage, script, connection).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Expectation { .. } => 1,
            _ => 2,
        }
    }
}

/// A command-line combination that cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("--number is required with --type {}: CC-Request-Number counts from 0 at initial", .request_type.name())]
    NumberRequired { request_type: RequestType },
    #[error("{option} {value} does not fit CC-Time (Unsigned32 seconds) for --unit time")]
    TimeTooLarge { option: &'static str, value: u64 },
    #[error("{option} applies to --type {}, not {}", .applies_to.name(), .request_type.name())]
    NotFor { option: &'static str, applies_to: RequestType, request_type: RequestType },
    #[error("--rg given {count} times; at most {max} MSCCs per request", max = MSCC_PER_REQUEST_MAX)]
    TooManyRatingGroups { count: usize },
    #[error("--script file has no requests")]
    EmptyScript,
}

/// What is wrong with one script line.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum LineProblem {
    #[error("unknown request type \"{word}\" (expected initial, update, terminate or event)")]
    UnknownType { word: String },
    #[error("unknown key \"{key}\"")]
    UnknownKey { key: String },
    #[error("\"{word}\" is not key=value")]
    NotKeyValue { word: String },
    #[error("bad {key} \"{value}\": expected {expected}")]
    BadValue { key: &'static str, value: String, expected: &'static str },
    #[error("{key}={value} does not fit CC-Time (Unsigned32 seconds) for unit=time")]
    TimeTooLarge { key: &'static str, value: u64 },
    #[error("{key} applies to {}, not {}", .applies_to.name(), .request_type.name())]
    NotFor { key: &'static str, applies_to: RequestType, request_type: RequestType },
    #[error("{count} rating groups; at most {max} MSCCs per request", max = MSCC_PER_REQUEST_MAX)]
    TooManyRatingGroups { count: usize },
    #[error("session=... with nothing after it")]
    DanglingSession,
}

/// `path:line: ` for a script step, nothing for the command line.
fn prefix(origin: &Origin) -> String {
    match origin {
        Origin::Flags => String::new(),
        Origin::Script { .. } => format!("{origin}: "),
    }
}

fn result_text(r: Option<ResultCode>) -> String {
    r.map_or_else(|| "none".to_owned(), |r| r.0.to_string())
}

fn codes_text(codes: &[ResultCode]) -> String {
    let texts: Vec<String> = codes.iter().map(|c| c.0.to_string()).collect();
    texts.join(" or ")
}

/// Runs `gyro ccr` as a command: prints answers to stdout and errors to stderr, and returns the
/// exit status.
pub fn main(args: &CcrArgs) -> i32 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(error) => {
            eprintln!("gyro ccr: error: cannot start the async runtime: {error}");
            return 2;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match runtime.block_on(run(args, &mut out)) {
        Ok(_) => 0,
        Err(error) => {
            let _ = out.flush();
            let mut text = format!("gyro ccr: error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(s) = source {
                let _ = write!(text, ": {s}");
                source = s.source();
            }
            eprintln!("{text}");
            error.exit_code()
        }
    }
}

/// Plans the requests, connects, sends them in order, prints each answer into `out`, and
/// disconnects. Stops at the first unmet expectation or connection error.
pub async fn run(args: &CcrArgs, out: &mut dyn Write) -> Result<Vec<Exchange>, CcrError> {
    let steps = plan(args)?;
    let dict = Dictionary::embedded()?;
    let addr = resolve(&args.server).await?;
    let identity =
        ClientIdentity { origin_host: args.origin_host.clone(), origin_realm: args.origin_realm.clone() };
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut client = Client::connect(addr, identity.clone(), timeout).await.map_err(CcrError::Connect)?;
    let mut session = Session::new(&args.origin_host);
    let mut exchanges = Vec::with_capacity(steps.len());
    let mut buf = BytesMut::with_capacity(1024);
    for step in &steps {
        let (session_id, number) = session.next(step);
        let (hop_by_hop, end_to_end) = client.next_ids();
        let envelope = Envelope {
            hop_by_hop,
            end_to_end,
            origin: &identity,
            destination_realm: &args.destination_realm,
            session_id: &session_id,
            number,
            now_unix_secs: unix_now_secs(),
        };
        encode_ccr(&mut buf, &envelope, &step.request);
        let request = buf.split().freeze();
        print_request(out, step, &session_id, number)?;
        if args.verbose {
            print_dump(out, &dict, &request)?;
        }
        let answer = match client.request(&request).await {
            Ok(a) => a,
            Err(source) => return Err(CcrError::Client { origin: step.origin.clone(), source }),
        };
        let summary = print_answer(out, &dict, &answer)?;
        let exchange = Exchange {
            origin: step.origin.clone(),
            request_type: step.request.request_type,
            session_id,
            number,
            request,
            answer,
            summary,
        };
        let got = exchange.summary.result;
        exchanges.push(exchange);
        if !step.expect.is_empty() && !got.is_some_and(|g| step.expect.contains(&g)) {
            // Close politely even on failure; the expectation is what the caller must see.
            let _ = client.close().await;
            return Err(CcrError::Expectation {
                origin: step.origin.clone(),
                expected: step.expect.clone(),
                got,
            });
        }
    }
    client.close().await.map_err(|source| CcrError::Client { origin: Origin::Flags, source })?;
    Ok(exchanges)
}

async fn resolve(server: &str) -> Result<std::net::SocketAddr, CcrError> {
    let resolve_error = |source| CcrError::Resolve { server: server.to_owned(), source };
    let mut addrs = tokio::net::lookup_host(server).await.map_err(resolve_error)?;
    addrs.next().ok_or_else(|| resolve_error(std::io::Error::other("no address")))
}

fn print_request(out: &mut dyn Write, step: &Step, session_id: &str, number: u32) -> Result<(), CcrError> {
    let kind = step.request.request_type.name();
    let from = match &step.origin {
        Origin::Flags => String::new(),
        origin => format!(" ({origin})"),
    };
    writeln!(out, ">>> CCR {kind} #{number} session={session_id}{from}").map_err(CcrError::Output)
}

fn print_dump(out: &mut dyn Write, dict: &Dictionary, request: &[u8]) -> Result<(), CcrError> {
    // `encode_ccr` writes whole messages, so the view always exists.
    let Some(msg) = MessageRef::parse(request) else { unreachable!("requests are whole messages") };
    write!(out, "{}", tree::dump(dict, &msg)).map_err(CcrError::Output)
}

fn print_answer(out: &mut dyn Write, dict: &Dictionary, answer: &[u8]) -> Result<AnswerSummary, CcrError> {
    // The client hands back framed messages only, so the view always exists.
    let Some(msg) = MessageRef::parse(answer) else { unreachable!("answers are framed") };
    let summary = AnswerSummary::parse(&msg);
    write!(out, "<<< {}", tree::dump(dict, &msg)).map_err(CcrError::Output)?;
    writeln!(out, "=== {summary}").map_err(CcrError::Output)?;
    Ok(summary)
}

/// Session-Id and CC-Request-Number bookkeeping across the steps of a run.
#[derive(Debug)]
struct Session {
    origin_host: String,
    current: Option<(String, u32)>,
}

impl Session {
    fn new(origin_host: &str) -> Self {
        Self { origin_host: origin_host.to_owned(), current: None }
    }

    /// The Session-Id and CC-Request-Number for this step; advances the counter.
    fn next(&mut self, step: &Step) -> (String, u32) {
        let (id, counter) = match (&step.session, self.current.take()) {
            (SessionChoice::Continue, Some(current)) => current,
            (SessionChoice::Id(id), _) => (id.clone(), 0),
            (SessionChoice::Continue | SessionChoice::New, _) => (self.new_id(), 0),
        };
        let number = step.number.unwrap_or(counter);
        if !step.request.request_type.ends_session() {
            self.current = Some((id.clone(), number.wrapping_add(1)));
        }
        (id, number)
    }

    /// RFC 6733 §8.8: `<DiameterIdentity>;<high 32 bits>;<low 32 bits>`, unique over time.
    fn new_id(&self) -> String {
        format!("{};{};{}", self.origin_host, unix_now_secs(), random_u64() as u32)
    }
}

/// Turns the options (and the script, if any) into the steps to run. Reads the script file;
/// otherwise pure.
pub fn plan(args: &CcrArgs) -> Result<Vec<Step>, CcrError> {
    let template = template(args)?;
    let Some(path) = &args.script else {
        return Ok(vec![single_step(args, template)?]);
    };
    let text = read_script(path)?;
    let steps = parse_script(&text, path, &template)?;
    if steps.is_empty() {
        return Err(UsageError::EmptyScript.into());
    }
    Ok(steps)
}

fn read_script(path: &Path) -> Result<String, CcrError> {
    let read_error = |source| CcrError::ScriptRead { path: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > SCRIPT_SIZE_MAX_BYTES as u64 {
        let text = format!("larger than {SCRIPT_SIZE_MAX_BYTES} bytes");
        return Err(read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, text)));
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// The step the flags describe; a script line starts from it.
fn template(args: &CcrArgs) -> Result<Step, UsageError> {
    if MSCC_PER_REQUEST_MAX < args.rg.len() {
        return Err(UsageError::TooManyRatingGroups { count: args.rg.len() });
    }
    let request = CcrRequest {
        request_type: args.request_type.unwrap_or(RequestType::Initial),
        subscribers: args.subscriber.clone(),
        service_context: args.context.clone(),
        rating_groups: args.rg.clone(),
        service_id: args.service_id,
        requested: args.requested,
        used: args.used,
        unit: args.unit,
        reporting_reason: args.reporting_reason,
        termination_cause: args.termination_cause.unwrap_or(TERMINATION_CAUSE_LOGOUT),
        action: args.action,
        timestamp: if args.timestamp { Timestamp::Now } else { Timestamp::Omit },
    };
    let session = args.session_id.clone().map_or(SessionChoice::New, SessionChoice::Id);
    let expect = args.expect.iter().map(|&c| ResultCode(c)).collect();
    Ok(Step { request, number: args.number, session, expect, origin: Origin::Flags })
}

fn single_step(args: &CcrArgs, mut step: Step) -> Result<Step, UsageError> {
    let request_type = step.request.request_type;
    step.number = match (args.number, request_type) {
        (Some(n), _) => Some(n),
        (None, RequestType::Initial | RequestType::Event) => Some(0),
        (None, _) => return Err(UsageError::NumberRequired { request_type }),
    };
    if let Some(which) = time_overflow(&step.request) {
        let (option, value) = match which {
            Amount::Requested(v) => ("--requested", v),
            Amount::Used(v) => ("--used", v),
        };
        return Err(UsageError::TimeTooLarge { option, value });
    }
    if args.termination_cause.is_some() && request_type != RequestType::Terminate {
        let applies_to = RequestType::Terminate;
        return Err(UsageError::NotFor { option: "--termination-cause", applies_to, request_type });
    }
    if args.action.is_some() && request_type != RequestType::Event {
        return Err(UsageError::NotFor { option: "--action", applies_to: RequestType::Event, request_type });
    }
    Ok(step)
}

enum Amount {
    Requested(u64),
    Used(u64),
}

/// CC-Time is Unsigned32; a larger amount of seconds cannot be sent.
fn time_overflow(req: &CcrRequest) -> Option<Amount> {
    if req.unit != Unit::Time {
        return None;
    }
    let too_large = |v: &u64| u32::try_from(*v).is_err();
    if let Some(v) = req.requested.filter(too_large) {
        return Some(Amount::Requested(v));
    }
    req.used.filter(too_large).map(Amount::Used)
}

/// Script keys, with the flag each stands for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Key {
    Number,
    Subscriber,
    Context,
    Rg,
    ServiceId,
    Requested,
    Used,
    Unit,
    ReportingReason,
    TerminationCause,
    Action,
    Timestamp,
    Expect,
    Session,
}

impl Key {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "number" => Self::Number,
            "subscriber" => Self::Subscriber,
            "context" => Self::Context,
            "rg" => Self::Rg,
            "service-id" => Self::ServiceId,
            "requested" => Self::Requested,
            "used" => Self::Used,
            "unit" => Self::Unit,
            "reporting-reason" | "reason" => Self::ReportingReason,
            "termination-cause" => Self::TerminationCause,
            "action" => Self::Action,
            "timestamp" => Self::Timestamp,
            "expect" => Self::Expect,
            "session" => Self::Session,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Subscriber => "subscriber",
            Self::Context => "context",
            Self::Rg => "rg",
            Self::ServiceId => "service-id",
            Self::Requested => "requested",
            Self::Used => "used",
            Self::Unit => "unit",
            Self::ReportingReason => "reporting-reason",
            Self::TerminationCause => "termination-cause",
            Self::Action => "action",
            Self::Timestamp => "timestamp",
            Self::Expect => "expect",
            Self::Session => "session",
        }
    }
}

/// Parses a script: one request per line, `#` comments, keys as in the module docs. Every line
/// starts from `template` (the command-line options).
pub fn parse_script(text: &str, path: &Path, template: &Step) -> Result<Vec<Step>, CcrError> {
    let mut steps = Vec::new();
    let mut pending_session: Option<(SessionChoice, usize)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let error = |problem| CcrError::Script { path: path.to_owned(), line, problem };
        let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        if content.is_empty() {
            continue;
        }
        let origin = Origin::Script { path: path.to_owned(), line };
        match parse_line(content, template, origin).map_err(error)? {
            Parsed::SessionOnly(choice) => pending_session = Some((choice, line)),
            Parsed::Step(mut step) => {
                if let Some((choice, _)) = pending_session.take() {
                    if step.session == SessionChoice::Continue {
                        step.session = choice;
                    }
                }
                steps.push(step);
            }
        }
    }
    if let Some((_, line)) = pending_session {
        return Err(CcrError::Script { path: path.to_owned(), line, problem: LineProblem::DanglingSession });
    }
    // The first request uses --session-id when given (or a generated id).
    if let Some(first) = steps.first_mut() {
        if first.session == SessionChoice::Continue {
            first.session = template.session.clone();
        }
    }
    Ok(steps)
}

enum Parsed {
    Step(Step),
    SessionOnly(SessionChoice),
}

fn parse_line(content: &str, template: &Step, origin: Origin) -> Result<Parsed, LineProblem> {
    let mut words = content.split_whitespace();
    let first = words.next().unwrap_or_default();
    let (request_type, rest) = if first.contains('=') {
        (None, content.split_whitespace())
    } else {
        let Ok(t) = RequestType::from_str(first, true) else {
            return Err(LineProblem::UnknownType { word: first.to_owned() });
        };
        (Some(t), words)
    };
    let mut step = template.clone();
    step.origin = origin;
    step.number = None;
    step.session = SessionChoice::Continue;
    let mut given: Vec<Key> = Vec::new();
    for word in rest {
        let (key, value) = match word.split_once('=') {
            Some(kv) => kv,
            None if word == "timestamp" => ("timestamp", "now"),
            None => return Err(LineProblem::NotKeyValue { word: word.to_owned() }),
        };
        let Some(key) = Key::parse(key) else {
            return Err(LineProblem::UnknownKey { key: key.to_owned() });
        };
        apply(&mut step, key, value, given.contains(&key))?;
        given.push(key);
    }
    let Some(request_type) = request_type else {
        if given.iter().all(|&k| k == Key::Session) {
            return Ok(Parsed::SessionOnly(step.session));
        }
        return Err(LineProblem::UnknownType { word: first.to_owned() });
    };
    step.request.request_type = request_type;
    check_line(&step, &given)?;
    Ok(Parsed::Step(step))
}

/// Line-level checks once the type and every key are known.
fn check_line(step: &Step, given: &[Key]) -> Result<(), LineProblem> {
    let request_type = step.request.request_type;
    if let Some(which) = time_overflow(&step.request) {
        return Err(match which {
            Amount::Requested(value) => LineProblem::TimeTooLarge { key: "requested", value },
            Amount::Used(value) => LineProblem::TimeTooLarge { key: "used", value },
        });
    }
    let only_for = [(Key::TerminationCause, RequestType::Terminate), (Key::Action, RequestType::Event)];
    for (key, applies_to) in only_for {
        if given.contains(&key) && request_type != applies_to {
            return Err(LineProblem::NotFor { key: key.name(), applies_to, request_type });
        }
    }
    if MSCC_PER_REQUEST_MAX < step.request.rating_groups.len() {
        return Err(LineProblem::TooManyRatingGroups { count: step.request.rating_groups.len() });
    }
    Ok(())
}

/// Applies one `key=value`. `again` is true when the key already appeared on this line, so a
/// repeatable key appends instead of replacing the inherited list.
fn apply(step: &mut Step, key: Key, value: &str, again: bool) -> Result<(), LineProblem> {
    let bad = |expected| LineProblem::BadValue { key: key.name(), value: value.to_owned(), expected };
    let u32_value = || value.parse::<u32>().map_err(|_| bad("an Unsigned32"));
    let u64_value = || value.parse::<u64>().map_err(|_| bad("an Unsigned64"));
    let req = &mut step.request;
    match key {
        Key::Number => step.number = Some(u32_value()?),
        Key::Subscriber => {
            let s = value.parse().map_err(|_| bad("TYPE:DATA, TYPE one of e164, imsi, sip, nai, private"))?;
            replace_or_push(&mut req.subscribers, s, again);
        }
        Key::Context => req.service_context = non_empty(value).ok_or_else(|| bad("a Service-Context-Id"))?,
        Key::Rg => replace_or_push(&mut req.rating_groups, u32_value()?, again),
        Key::ServiceId => req.service_id = Some(u32_value()?),
        Key::Requested => req.requested = Some(u64_value()?),
        Key::Used => req.used = Some(u64_value()?),
        Key::Unit => req.unit = Unit::from_str(value, true).map_err(|_| bad("time, octets or events"))?,
        Key::ReportingReason => {
            let expected = "threshold, qht, final, quota-exhausted, validity-time, other-quota-type, \
                rating-condition-change, forced-reauthorisation, pool-exhausted or unused-quota-timer";
            req.reporting_reason = Some(ReportingReason::from_str(value, true).map_err(|_| bad(expected))?);
        }
        Key::TerminationCause => req.termination_cause = u32_value()?,
        Key::Action => {
            let expected = "direct-debit, refund, check-balance or price-enquiry";
            req.action = Some(RequestedAction::from_str(value, true).map_err(|_| bad(expected))?);
        }
        Key::Timestamp => {
            req.timestamp = match value {
                "now" | "yes" => Timestamp::Now,
                "no" | "none" => Timestamp::Omit,
                _ => return Err(bad("now or no")),
            };
        }
        Key::Expect => replace_or_push(&mut step.expect, ResultCode(u32_value()?), again),
        Key::Session => {
            step.session = match value {
                "new" => SessionChoice::New,
                "" => return Err(bad("new or a Session-Id")),
                id => SessionChoice::Id(id.to_owned()),
            };
        }
    }
    Ok(())
}

fn replace_or_push<T>(list: &mut Vec<T>, value: T, again: bool) {
    if !again {
        list.clear();
    }
    list.push(value);
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// AVPs of RFC 4006 §8 and TS 32.299 §7.2 that a CCR carries, with the flags we send.
pub mod avp {
    use crate::diameter::AvpSpec;

    pub const EVENT_TIMESTAMP: AvpSpec = AvpSpec::mandatory(55);
    pub const TERMINATION_CAUSE: AvpSpec = AvpSpec::mandatory(295);
    pub const CC_INPUT_OCTETS: AvpSpec = AvpSpec::mandatory(412);
    pub const CC_OUTPUT_OCTETS: AvpSpec = AvpSpec::mandatory(414);
    pub const CC_REQUEST_NUMBER: AvpSpec = AvpSpec::mandatory(415);
    pub const CC_REQUEST_TYPE: AvpSpec = AvpSpec::mandatory(416);
    pub const CC_SERVICE_SPECIFIC_UNITS: AvpSpec = AvpSpec::mandatory(417);
    pub const CC_TIME: AvpSpec = AvpSpec::mandatory(420);
    pub const CC_TOTAL_OCTETS: AvpSpec = AvpSpec::mandatory(421);
    pub const FINAL_UNIT_INDICATION: AvpSpec = AvpSpec::mandatory(430);
    pub const GRANTED_SERVICE_UNIT: AvpSpec = AvpSpec::mandatory(431);
    pub const RATING_GROUP: AvpSpec = AvpSpec::mandatory(432);
    pub const REQUESTED_ACTION: AvpSpec = AvpSpec::mandatory(436);
    pub const REQUESTED_SERVICE_UNIT: AvpSpec = AvpSpec::mandatory(437);
    pub const SERVICE_IDENTIFIER: AvpSpec = AvpSpec::mandatory(439);
    pub const SUBSCRIPTION_ID: AvpSpec = AvpSpec::mandatory(443);
    pub const SUBSCRIPTION_ID_DATA: AvpSpec = AvpSpec::mandatory(444);
    pub const USED_SERVICE_UNIT: AvpSpec = AvpSpec::mandatory(446);
    pub const FINAL_UNIT_ACTION: AvpSpec = AvpSpec::mandatory(449);
    pub const SUBSCRIPTION_ID_TYPE: AvpSpec = AvpSpec::mandatory(450);
    pub const MULTIPLE_SERVICES_INDICATOR: AvpSpec = AvpSpec::mandatory(455);
    pub const MULTIPLE_SERVICES_CREDIT_CONTROL: AvpSpec = AvpSpec::mandatory(456);
    pub const SERVICE_CONTEXT_ID: AvpSpec = AvpSpec::mandatory(461);
    pub const EXPERIMENTAL_RESULT: AvpSpec = AvpSpec::mandatory(297);
    pub const EXPERIMENTAL_RESULT_CODE: AvpSpec = AvpSpec::mandatory(298);
    /// TS 32.299 §7.2.175, vendor 10415, V and M set.
    pub const REPORTING_REASON: AvpSpec = AvpSpec::tgpp(872);
}

/// Writes one CCR (RFC 4006 §3.1, with the TS 32.299 §6.4.2 additions) in ABNF order.
/// Returns the message length.
pub fn encode_ccr(buf: &mut BytesMut, env: &Envelope<'_>, req: &CcrRequest) -> usize {
    // RFC 4006 §3.1: "The CCR message ... MUST have the 'R' and 'P' bits set."
    let flags = CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE);
    let application = ApplicationId::CREDIT_CONTROL;
    let command = CommandCode::CREDIT_CONTROL;
    let mut e = Encoder::new(buf, flags, command, application, env.hop_by_hop, env.end_to_end);
    // RFC 6733 §8.8: the Session-Id "MUST appear immediately following the Diameter header".
    e.str(spec::SESSION_ID, env.session_id);
    e.str(spec::ORIGIN_HOST, &env.origin.origin_host);
    e.str(spec::ORIGIN_REALM, &env.origin.origin_realm);
    e.str(spec::DESTINATION_REALM, env.destination_realm);
    e.u32(spec::AUTH_APPLICATION_ID, application.0);
    e.str(avp::SERVICE_CONTEXT_ID, &req.service_context);
    e.u32(avp::CC_REQUEST_TYPE, req.request_type.wire());
    e.u32(avp::CC_REQUEST_NUMBER, env.number);
    if req.timestamp == Timestamp::Now {
        e.u32(avp::EVENT_TIMESTAMP, ntp_seconds(env.now_unix_secs));
    }
    for s in &req.subscribers {
        let g = e.begin_group(avp::SUBSCRIPTION_ID);
        e.u32(avp::SUBSCRIPTION_ID_TYPE, s.kind as u32);
        e.str(avp::SUBSCRIPTION_ID_DATA, &s.data);
        e.end_group(g);
    }
    let single_service = req.rating_groups.is_empty();
    if let Some(id) = req.service_id.filter(|_| single_service) {
        e.u32(avp::SERVICE_IDENTIFIER, id);
    }
    if req.request_type == RequestType::Terminate {
        e.u32(avp::TERMINATION_CAUSE, req.termination_cause);
    }
    if single_service {
        write_requested(&mut e, req);
    }
    if let Some(action) = req.action.filter(|_| req.request_type == RequestType::Event) {
        e.u32(avp::REQUESTED_ACTION, action as u32);
    }
    if single_service {
        write_used(&mut e, req);
    } else {
        // RFC 4006 §8.40: MULTIPLE_SERVICES_SUPPORTED (1) when the client sends MSCCs.
        e.u32(avp::MULTIPLE_SERVICES_INDICATOR, 1);
        for &rg in &req.rating_groups {
            let g = e.begin_group(avp::MULTIPLE_SERVICES_CREDIT_CONTROL);
            write_requested(&mut e, req);
            write_used(&mut e, req);
            if let Some(id) = req.service_id {
                e.u32(avp::SERVICE_IDENTIFIER, id);
            }
            e.u32(avp::RATING_GROUP, rg);
            e.end_group(g);
        }
    }
    e.finish()
}

/// Requested-Service-Unit; 0 sends it empty, the usual way to ask for the server's default
/// quota (TS 32.299 §6.3.2: "the RSU AVP ... may be empty").
fn write_requested(e: &mut Encoder<'_>, req: &CcrRequest) {
    let Some(amount) = req.requested else { return };
    let g = e.begin_group(avp::REQUESTED_SERVICE_UNIT);
    if amount != 0 {
        write_amount(e, req.unit, amount);
    }
    e.end_group(g);
}

/// Used-Service-Unit with the 3GPP Reporting-Reason (TS 32.299 §7.1.10) when given.
fn write_used(e: &mut Encoder<'_>, req: &CcrRequest) {
    if req.used.is_none() && req.reporting_reason.is_none() {
        return;
    }
    let g = e.begin_group(avp::USED_SERVICE_UNIT);
    if let Some(amount) = req.used {
        write_amount(e, req.unit, amount);
    }
    if let Some(reason) = req.reporting_reason {
        e.u32(avp::REPORTING_REASON, reason as u32);
    }
    e.end_group(g);
}

fn write_amount(e: &mut Encoder<'_>, unit: Unit, amount: u64) {
    match unit {
        Unit::Time => {
            // `plan` refuses seconds beyond Unsigned32, so this never saturates.
            e.u32(avp::CC_TIME, u32::try_from(amount).unwrap_or(u32::MAX));
        }
        Unit::Octets => {
            e.u64(avp::CC_TOTAL_OCTETS, amount);
        }
        Unit::Events => {
            e.u64(avp::CC_SERVICE_SPECIFIC_UNITS, amount);
        }
    }
}

/// RFC 6733 §4.3.1 Time: NTP seconds, which wrap in 2036 (the era is not on the wire).
pub fn ntp_seconds(unix_secs: u64) -> u32 {
    (unix_secs.wrapping_add(NTP_UNIX_OFFSET_SECS) & 0xffff_ffff) as u32
}

/// Units in a Granted-Service-Unit (RFC 4006 §8.17).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Granted {
    pub time_secs: Option<u32>,
    pub total_octets: Option<u64>,
    pub input_octets: Option<u64>,
    pub output_octets: Option<u64>,
    pub service_units: Option<u64>,
}

/// What one Multiple-Services-Credit-Control of an answer says.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MsccSummary {
    pub rating_group: Option<u32>,
    pub service_id: Option<u32>,
    pub result: Option<ResultCode>,
    pub granted: Option<Granted>,
    /// Final-Unit-Action inside Final-Unit-Indication (RFC 4006 §8.35).
    pub final_unit_action: Option<u32>,
}

/// The gist of a CCA, for the summary line and for `--expect`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AnswerSummary {
    /// Result-Code, or Experimental-Result-Code when there is no Result-Code.
    pub result: Option<ResultCode>,
    /// Command-level Granted-Service-Unit (the single-service form).
    pub granted: Option<Granted>,
    pub final_unit_action: Option<u32>,
    pub mscc: Vec<MsccSummary>,
}

impl AnswerSummary {
    /// Reads the answer; malformed or unexpected parts are skipped, not errors (this is a
    /// diagnostic tool: the dump above the summary shows what was wrong).
    pub fn parse(msg: &MessageRef<'_>) -> Self {
        let mut s = Self::default();
        for a in msg.avps().map_while(Result::ok).filter(|a| a.vendor.0 == 0) {
            match a.code {
                AvpCode::RESULT_CODE => s.result = u32_of(&a).map(ResultCode),
                c if c == avp::EXPERIMENTAL_RESULT.code && s.result.is_none() => {
                    s.result =
                        member(&a, avp::EXPERIMENTAL_RESULT_CODE).and_then(|m| u32_of(&m)).map(ResultCode);
                }
                c if c == avp::GRANTED_SERVICE_UNIT.code => s.granted = Some(granted(&a)),
                c if c == avp::FINAL_UNIT_INDICATION.code => s.final_unit_action = final_unit_action(&a),
                c if c == avp::MULTIPLE_SERVICES_CREDIT_CONTROL.code => s.mscc.push(mscc(&a)),
                _ => {}
            }
        }
        s
    }
}

fn mscc(a: &AvpRef<'_>) -> MsccSummary {
    let mut m = MsccSummary::default();
    for member in members(a) {
        match member.code {
            AvpCode::RESULT_CODE => m.result = u32_of(&member).map(ResultCode),
            c if c == avp::RATING_GROUP.code => m.rating_group = u32_of(&member),
            c if c == avp::SERVICE_IDENTIFIER.code => m.service_id = u32_of(&member),
            c if c == avp::GRANTED_SERVICE_UNIT.code => m.granted = Some(granted(&member)),
            c if c == avp::FINAL_UNIT_INDICATION.code => m.final_unit_action = final_unit_action(&member),
            _ => {}
        }
    }
    m
}

fn granted(a: &AvpRef<'_>) -> Granted {
    let mut g = Granted::default();
    for member in members(a) {
        match member.code {
            c if c == avp::CC_TIME.code => g.time_secs = u32_of(&member),
            c if c == avp::CC_TOTAL_OCTETS.code => g.total_octets = u64_of(&member),
            c if c == avp::CC_INPUT_OCTETS.code => g.input_octets = u64_of(&member),
            c if c == avp::CC_OUTPUT_OCTETS.code => g.output_octets = u64_of(&member),
            c if c == avp::CC_SERVICE_SPECIFIC_UNITS.code => g.service_units = u64_of(&member),
            _ => {}
        }
    }
    g
}

fn final_unit_action(fui: &AvpRef<'_>) -> Option<u32> {
    member(fui, avp::FINAL_UNIT_ACTION).and_then(|m| u32_of(&m))
}

fn members<'a>(a: &AvpRef<'a>) -> impl Iterator<Item = AvpRef<'a>> {
    AvpIter::new(a.data).map_while(Result::ok).filter(|m| m.vendor.0 == 0)
}

fn member<'a>(a: &AvpRef<'a>, spec: AvpSpec) -> Option<AvpRef<'a>> {
    members(a).find(|m| m.code == spec.code)
}

fn u32_of(a: &AvpRef<'_>) -> Option<u32> {
    Some(u32::from_be_bytes(a.data.try_into().ok()?))
}

fn u64_of(a: &AvpRef<'_>) -> Option<u64> {
    Some(u64::from_be_bytes(a.data.try_into().ok()?))
}

fn final_unit_action_name(v: u32) -> &'static str {
    match v {
        0 => "TERMINATE",
        1 => "REDIRECT",
        2 => "RESTRICT_ACCESS",
        _ => "?",
    }
}

impl fmt::Display for Granted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("granted")?;
        let mut any = false;
        if let Some(v) = self.time_secs {
            write!(f, " time={v}s")?;
            any = true;
        }
        let units = [
            ("octets", self.total_octets),
            ("input-octets", self.input_octets),
            ("output-octets", self.output_octets),
            ("events", self.service_units),
        ];
        for (name, value) in units {
            if let Some(v) = value {
                write!(f, " {name}={v}")?;
                any = true;
            }
        }
        if !any {
            f.write_str(" nothing")?;
        }
        Ok(())
    }
}

impl fmt::Display for AnswerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.result {
            Some(r) => write!(f, "{} {}", r.0, r.name())?,
            None => f.write_str("no Result-Code")?,
        }
        if let Some(g) = &self.granted {
            write!(f, " {g}")?;
        }
        if let Some(a) = self.final_unit_action {
            write!(f, " fui={}", final_unit_action_name(a))?;
        }
        for m in &self.mscc {
            f.write_str(" | rg=")?;
            match m.rating_group {
                Some(rg) => write!(f, "{rg}")?,
                None => f.write_str("-")?,
            }
            if let Some(id) = m.service_id {
                write!(f, " service-id={id}")?;
            }
            if let Some(r) = m.result {
                write!(f, " {} {}", r.0, r.name())?;
            }
            if let Some(g) = &m.granted {
                write!(f, " {g}")?;
            }
            if let Some(a) = m.final_unit_action {
                write!(f, " fui={}", final_unit_action_name(a))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use expect_test::expect;

    use super::*;
    use crate::diameter::validate_request;

    #[derive(Debug, clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: CcrArgs,
    }

    fn args(argv: &[&str]) -> CcrArgs {
        Cmd::try_parse_from(std::iter::once("ccr").chain(argv.iter().copied())).unwrap().args
    }

    fn encode(step: &Step, number: u32) -> Bytes {
        let origin = ClientIdentity { origin_host: "ccr.gyro.test".into(), origin_realm: "gyro.test".into() };
        let env = Envelope {
            hop_by_hop: 0x11,
            end_to_end: 0x22,
            origin: &origin,
            destination_realm: "localdomain",
            session_id: "ccr.gyro.test;1;2",
            number,
            now_unix_secs: 1_700_000_000,
        };
        let mut buf = BytesMut::new();
        let len = encode_ccr(&mut buf, &env, &step.request);
        assert_eq!(len, buf.len());
        buf.freeze()
    }

    fn dump(bytes: &[u8]) -> String {
        let dict = Dictionary::embedded().unwrap();
        let msg = MessageRef::parse(bytes).unwrap();
        assert!(validate_request(&dict, &msg, &[ApplicationId::CREDIT_CONTROL]).is_ok());
        tree::dump(&dict, &msg)
    }

    #[test]
    fn update_with_two_rating_groups() {
        let a = args(&[
            "--type=update",
            "--number=3",
            "--subscriber=e164:491700000001",
            "--rg=10",
            "--rg=20",
            "--service-id=7",
            "--used=2048",
            "--requested=0",
            "--reporting-reason=quota-exhausted",
            "--timestamp",
        ]);
        let steps = plan(&a).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].number, Some(3));
        expect![[r#"
            Credit-Control-Request code=272 app=4 flags=RP-- hbh=0x00000011 e2e=0x00000022 len=396
              Session-Id(263) -M- = "ccr.gyro.test;1;2"
              Origin-Host(264) -M- = "ccr.gyro.test"
              Origin-Realm(296) -M- = "gyro.test"
              Destination-Realm(283) -M- = "localdomain"
              Auth-Application-Id(258) -M- = 4
              Service-Context-Id(461) -M- = "32251@3gpp.org"
              CC-Request-Type(416) -M- = 2 UPDATE_REQUEST
              CC-Request-Number(415) -M- = 3
              Event-Timestamp(55) -M- = ntp:3908988800
              Subscription-Id(443) -M-
                Subscription-Id-Type(450) -M- = 0 END_USER_E164
                Subscription-Id-Data(444) -M- = "491700000001"
              Multiple-Services-Indicator(455) -M- = 1 MULTIPLE_SERVICES_SUPPORTED
              Multiple-Services-Credit-Control(456) -M-
                Requested-Service-Unit(437) -M-
                Used-Service-Unit(446) -M-
                  CC-Total-Octets(421) -M- = 2048
                  Reporting-Reason(872 v=10415) VM- = 3 QUOTA_EXHAUSTED
                Service-Identifier(439) -M- = 7
                Rating-Group(432) -M- = 10
              Multiple-Services-Credit-Control(456) -M-
                Requested-Service-Unit(437) -M-
                Used-Service-Unit(446) -M-
                  CC-Total-Octets(421) -M- = 2048
                  Reporting-Reason(872 v=10415) VM- = 3 QUOTA_EXHAUSTED
                Service-Identifier(439) -M- = 7
                Rating-Group(432) -M- = 20
        "#]]
        .assert_eq(&dump(&encode(&steps[0], 3)));
    }

    #[test]
    fn event_single_service_form() {
        let a = args(&[
            "--type=event",
            "--context=32274@3gpp.org",
            "--action=refund",
            "--unit=events",
            "--requested=1",
            "--subscriber=sip:alice@ims.test",
        ]);
        let steps = plan(&a).unwrap();
        assert_eq!(steps[0].number, Some(0));
        expect![[r#"
            Credit-Control-Request code=272 app=4 flags=RP-- hbh=0x00000011 e2e=0x00000022 len=256
              Session-Id(263) -M- = "ccr.gyro.test;1;2"
              Origin-Host(264) -M- = "ccr.gyro.test"
              Origin-Realm(296) -M- = "gyro.test"
              Destination-Realm(283) -M- = "localdomain"
              Auth-Application-Id(258) -M- = 4
              Service-Context-Id(461) -M- = "32274@3gpp.org"
              CC-Request-Type(416) -M- = 4 EVENT_REQUEST
              CC-Request-Number(415) -M- = 0
              Subscription-Id(443) -M-
                Subscription-Id-Type(450) -M- = 2 END_USER_SIP_URI
                Subscription-Id-Data(444) -M- = "sip:alice@ims.test"
              Requested-Service-Unit(437) -M-
                CC-Service-Specific-Units(417) -M- = 1
              Requested-Action(436) -M- = 1 REFUND_ACCOUNT
        "#]]
        .assert_eq(&dump(&encode(&steps[0], 0)));
    }

    #[test]
    fn terminate_carries_termination_cause() {
        let a = args(&["--type=terminate", "--number=2", "--used=60", "--unit=time"]);
        let bytes = encode(&plan(&a).unwrap()[0], 2);
        let msg = MessageRef::parse(&bytes).unwrap();
        assert_eq!(msg.u32(AvpCode(295)), Some(1));
        let usu = msg.find(AvpCode(446)).unwrap();
        assert_eq!(usu.members().next().unwrap().unwrap().code, AvpCode(420));
    }

    #[test]
    fn usage_errors_name_the_option() {
        let text = |argv: &[&str]| plan(&args(argv)).unwrap_err().to_string();
        assert_eq!(
            text(&["--type=update"]),
            "--number is required with --type update: CC-Request-Number counts from 0 at initial"
        );
        assert!(text(&["--unit=time", "--requested=5000000000"]).starts_with("--requested 5000000000"));
        assert_eq!(text(&["--action=refund"]), "--action applies to --type event, not initial");
        assert!(Cmd::try_parse_from(["ccr", "--subscriber=msisdn:1"])
            .unwrap_err()
            .to_string()
            .contains("TYPE:DATA"));
        assert!(Cmd::try_parse_from(["ccr", "--script=x", "--type=update"]).is_err());
    }

    const SCRIPT: &str = "\
# a Gy session and an SMS
initial rg=10 requested=0
update rg=10 used=1048576 requested=0   # first report
update rg=10 rg=20 used=2048 expect=2001 expect=4012
terminate rg=10 used=524288 reason=final
event context=32274@3gpp.org action=direct-debit unit=events requested=1 timestamp
session=new
initial number=5
update
";

    #[test]
    fn script_lines_inherit_flags_and_count_numbers() {
        let a = args(&["--subscriber=imsi:262011234567890", "--expect=2001", "--session-id=s1"]);
        let steps = parse_script(SCRIPT, Path::new("s.txt"), &template(&a).unwrap()).unwrap();
        let kinds: Vec<_> = steps.iter().map(|s| s.request.request_type.name()).collect();
        assert_eq!(kinds, ["initial", "update", "update", "terminate", "event", "initial", "update"]);
        assert_eq!(steps[0].session, SessionChoice::Id("s1".into()));
        assert_eq!(steps[2].request.rating_groups, [10, 20]);
        assert_eq!(steps[2].expect, [ResultCode(2001), ResultCode(4012)]);
        assert_eq!(steps[1].expect, [ResultCode(2001)]);
        assert_eq!(steps[3].request.reporting_reason, Some(ReportingReason::Final));
        assert_eq!(steps[4].request.action, Some(RequestedAction::DirectDebit));
        assert_eq!(steps[4].request.timestamp, Timestamp::Now);
        assert!(steps[4].request.rating_groups.is_empty());
        assert_eq!(steps[5].session, SessionChoice::New);
        assert_eq!(steps[6].origin, Origin::Script { path: "s.txt".into(), line: 9 });
        assert!(steps.iter().all(|s| s.request.subscribers[0].kind == SubscriptionKind::Imsi));

        let mut session = Session::new("ccr.gyro.test");
        let ids: Vec<_> = steps.iter().map(|s| session.next(s)).collect();
        let numbers: Vec<u32> = ids.iter().map(|(_, n)| *n).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 0, 5, 6]);
        assert!(ids[..4].iter().all(|(id, _)| id == "s1"));
        // The event and the explicit new session each get fresh ids.
        assert!(ids[4].0.starts_with("ccr.gyro.test;") && ids[4].0 != ids[5].0);
        assert_eq!(ids[5].0, ids[6].0);
    }

    #[test]
    fn script_errors_name_file_line_and_problem() {
        let template = template(&CcrArgs::new()).unwrap();
        let err =
            |text: &str| parse_script(text, Path::new("script.txt"), &template).unwrap_err().to_string();
        assert_eq!(err("initial\n\nupdate rgg=10\n"), "script.txt:3: unknown key \"rgg\"");
        assert_eq!(
            err("inital rg=1"),
            "script.txt:1: unknown request type \"inital\" (expected initial, update, terminate or event)"
        );
        assert_eq!(err("update rg=x"), "script.txt:1: bad rg \"x\": expected an Unsigned32");
        assert_eq!(err("update 10"), "script.txt:1: \"10\" is not key=value");
        assert_eq!(err("update action=refund"), "script.txt:1: action applies to event, not update");
        assert_eq!(err("initial\nsession=new\n"), "script.txt:2: session=... with nothing after it");
        assert_eq!(
            err("update unit=time used=4294967296"),
            "script.txt:1: used=4294967296 does not fit CC-Time (Unsigned32 seconds) for unit=time"
        );
    }

    #[test]
    fn summary_reads_result_mscc_and_fui() {
        let mut buf = BytesMut::new();
        let flags = CommandFlags(CommandFlags::PROXIABLE);
        let mut e = Encoder::new(&mut buf, flags, CommandCode::CREDIT_CONTROL, ApplicationId(4), 1, 2);
        e.u32(spec::RESULT_CODE, 2001);
        let g = e.begin_group(avp::MULTIPLE_SERVICES_CREDIT_CONTROL);
        let gsu = e.begin_group(avp::GRANTED_SERVICE_UNIT);
        e.u32(avp::CC_TIME, 60).u64(avp::CC_TOTAL_OCTETS, 1_048_576);
        e.end_group(gsu);
        e.u32(avp::RATING_GROUP, 10).u32(spec::RESULT_CODE, 2001);
        let fui = e.begin_group(avp::FINAL_UNIT_INDICATION);
        e.u32(avp::FINAL_UNIT_ACTION, 0);
        e.end_group(fui);
        e.end_group(g);
        let g = e.begin_group(avp::MULTIPLE_SERVICES_CREDIT_CONTROL);
        e.u32(avp::RATING_GROUP, 20).u32(spec::RESULT_CODE, 4012);
        e.end_group(g);
        e.finish();
        let summary = AnswerSummary::parse(&MessageRef::parse(&buf).unwrap());
        assert_eq!(
            summary.to_string(),
            "2001 DIAMETER_SUCCESS | rg=10 2001 DIAMETER_SUCCESS granted time=60s octets=1048576 fui=TERMINATE \
             | rg=20 4012 DIAMETER_CREDIT_LIMIT_REACHED"
        );
    }

    #[test]
    fn ntp_time_wraps_in_2036() {
        assert_eq!(ntp_seconds(0), 2_208_988_800);
        // 2036-02-07T06:28:16Z is NTP 2^32: era 1 starts at 0 again.
        assert_eq!(ntp_seconds(2_085_978_496), 0);
    }

    #[test]
    fn defaults_parse() {
        let a = CcrArgs::new();
        assert_eq!(a.server, "127.0.0.1:3868");
        assert_eq!(a.unit, Unit::Octets);
        assert!(a.request_type.is_none());
    }
}
