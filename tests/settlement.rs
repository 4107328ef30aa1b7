//! Settlement (issue 6): a session's end becomes an invoice, a payment and e-mails, once.
//!
//! - `sessions_over_diameter_are_invoiced_paid_and_mailed`: `gyro serve` as a child process
//!   with a data directory; sessions (CCR-I, CCR-U with usage, CCR-T) of a prepaid account, an
//!   on_file account with the sandbox's succeeding card and one with its declined card, and a
//!   CCR-E debit. Each gets one invoice (JSON + UBL) whose total is what the session debited,
//!   to the cent; the on_file charge in the sandbox's books is that total; the `.eml` files
//!   have the stable Message-IDs and the invoice attachments; a retransmitted CCR-T creates
//!   nothing more; the declined account is barred (next CCR-I: 4010); the paid one has its
//!   credit line back.
//! - `a_crash_at_every_step_resumes_with_one_number_and_one_charge`: in process, the worker is
//!   stopped after each of its steps, and inside the charge (before the gateway charged, and
//!   after it charged but before the outcome was journaled); a new engine recovered from the
//!   journal (or from a snapshot) and a new worker finish: numbers 1 and 2 without a gap, one
//!   successful charge in the gateway's books, one of each e-mail.
//! - `transient_failures_are_retried_lost_replies_looked_up_and_exhausted_attempts_dead_lettered`:
//!   the sandbox's transient and lost-reply cards are charged once each; with `attempts_max`
//!   reached the invoice stays open and the account is not barred.
//! - `an_expired_session_is_settled_when_it_is_forgotten`: a session silent past Tcc and the
//!   retention period is settled by the sweep that forgets it, and recovered from that record.
//! - `a_relay_out_of_reach_delays_done_and_the_e_mails_go_when_it_answers`: with
//!   `Mailer::Smtp` to a loopback port that refuses connections, the invoice files are written
//!   but the delivery is put off (`RetryAfter`, the settlement still pending, charged once);
//!   once a relay listens there, the next try sends the invoice and the confirmation once each
//!   and journals `Done`. `a_recipient_refused_for_good_does_not_hold_the_settlement`: a 550
//!   for the recipient is logged and the settlement finishes.
//! - `with_smtp_and_postgres_configured_serve_mails_through_the_relay_and_records_billing_once`
//!   (`#[ignore]`d: it needs aiosmtpd and PostgreSQL; `.ci/run` runs it): `gyro serve` with
//!   `[settlement.smtp]` pointing at `tests/interop/smtp_sink.py` (STARTTLS + AUTH) and
//!   `[settlement.postgres]` at the local server in a schema of its own (dropped after) settles
//!   a prepaid, a card and a declined session: six e-mails at the relay, each once, no `.eml`
//!   files; one invoice row each with the outcome's status, its line and usage rows, one payment
//!   row each (wallet, succeeded, declined) for the debited amount; a restart adds nothing.
//! - `with_the_stripe_adapter_a_settlement_is_charged_once_through_a_failure`: the worker with
//!   `ConfiguredAdapter` (`adapter = "stripe"`) against a fake Stripe on loopback that answers
//!   the first POST with a 500: retried under the same key, one PaymentIntent for the debited
//!   amount charged to the account's `gateway_customer` and `payment_method_id` (never the card
//!   number), the invoice paid. `with_the_stripe_adapter_an_account_without_gateway_references_is_dead_lettered_unsent`:
//!   the card account without them: no POST at all, each attempt `Rejected`, then a dead letter
//!   with the invoice open, as for any rejected charge. `start_up_stops_on_a_missing_secret_or_an_unreachable_billing_database_naming_the_key`:
//!   `gyro serve` exits before listening, naming `settlement.stripe.secret_key_file` or
//!   `settlement.postgres`.
//!   `with_postgres_a_lost_connection_is_reconnected_before_the_next_rows` (ignored, in
//!   process): the server ends the worker's database connection; the next settlement's rows
//!   are written over a new one before its `Done`.
//! - `killed_at_random_moments_every_session_is_settled_once`: rounds of three connections
//!   running sessions, each round ended by SIGKILL at a random moment (requests in flight, the
//!   worker settling); finally every acknowledged CCR-T has exactly one invoice (one in doubt
//!   may have one too), numbers run 1..N, and the books hold one success per card invoice.
//!   `GYRO_SETTLE_CRASH_ROUNDS` (default 5) and `GYRO_SETTLE_CRASH_SEED` (printed).

#![cfg(unix)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gyro::catalog::{Catalog, SubscriptionKind};
use gyro::cc::{Engine, EngineConfig, Now, RecordSink};
use gyro::diameter::encode::spec;
use gyro::diameter::{ApplicationId, AvpSpec, CommandCode, CommandFlags, Encoder, VendorId};
use gyro::durable::{self, ChargingJournal, Sink};
use gyro::journal::JournalConfig;
use gyro::ledger::AccountId;
use gyro::net::client::{Client, ClientIdentity};
use gyro::settlement::outbox::SettlementKey;
use gyro::settlement::payment::{
    read_books, ChargeOutcome, ChargeRequest, IdempotencyKey, PaymentAdapter, PaymentError,
    SANDBOX_BOOKS_FILE,
};
use gyro::settlement::smtp::{Mailer, SmtpConfig, SmtpMailer, SmtpSecurity};
use gyro::settlement::worker::{Advanced, Output, Worker};
use gyro::settlement::{Sandbox, SettlementConfig};

#[path = "common/answers.rs"]
mod answers;
use answers::{local, money, msg, result_code, retransmission};

const STEP: Duration = Duration::from_secs(5);
/// How long the worker may take to settle what a test sent (a debug build on a busy machine).
const SETTLE_MAX: Duration = Duration::from_secs(60);
const MIB: u64 = 1_048_576;

const INITIAL: u32 = 1;
const UPDATE: u32 = 2;
const TERMINATE: u32 = 3;
const EVENT: u32 = 4;
const DIRECT_DEBITING: u32 = 0;
const CHECK_BALANCE: u32 = 2;
const GY: u32 = 32251;
const SMS: u32 = 32274;

const PREPAID: &str = "e164:491710000001";
const CARD: &str = "e164:491710000002";
const DECLINED: &str = "e164:491710000003";

const CATALOG: &str = r#"
[[plans]]
id = "flat"
name = "Flat"
currency = "EUR"
vat_rate = "0.19"

  [[plans.services]]
  name = "data"
  contexts = [32251]
  unit = "octets"
  price = "0.01"
  per = 1048576
  quota = 10485760

  [[plans.services]]
  name = "sms"
  contexts = [32274]
  unit = "events"
  price = "0.05"
  quota = 1

[[customers]]
id = "c-pre"
name = "Pre Paid"
email = "pre@example.org"
address = "Main Street 1, 10115 Berlin, DE"
plan = "flat"

[[customers]]
id = "c-card"
name = "Card Holder"
email = "card@example.org"
address = "Main Street 2, 10115 Berlin, DE"
plan = "flat"

[[customers]]
id = "c-declined"
name = "Declined Card"
email = "declined@example.org"
address = "Main Street 3, 10115 Berlin, DE"
plan = "flat"

[[accounts]]
customer = "c-pre"
subscription_ids = ["e164:491710000001"]
funding = "prepaid"
balance = "100.00"

[[accounts]]
customer = "c-card"
subscription_ids = ["e164:491710000002"]
funding = "on_file"
credit_limit = "100.00"
card = "4242424242424242"

[[accounts]]
customer = "c-declined"
subscription_ids = ["e164:491710000003"]
funding = "on_file"
credit_limit = "100.00"
card = "4000000000000002"
"#;

// ---------------------------------------------------------------------------------------------
// Requests and answers

#[derive(Clone, Debug)]
struct Ccr {
    session: String,
    request_type: u32,
    number: u32,
    subscriber: String,
    context: u32,
    action: Option<u32>,
    /// (rating group, requested, used) in octets; or for events the single-service units.
    rg: Option<(u32, bool, u64)>,
    events: Option<u64>,
}

fn avp(code: u32) -> AvpSpec {
    AvpSpec::mandatory(code)
}

impl Ccr {
    fn data(request_type: u32, session: &str, number: u32, subscriber: &str, used: u64) -> Self {
        let requested = request_type != TERMINATE;
        Self {
            session: session.into(),
            request_type,
            number,
            subscriber: subscriber.into(),
            context: GY,
            action: None,
            rg: Some((10, requested, used)),
            events: None,
        }
    }

    fn event(session: &str, subscriber: &str, action: u32) -> Self {
        Self {
            session: session.into(),
            request_type: EVENT,
            number: 0,
            subscriber: subscriber.into(),
            context: SMS,
            action: Some(action),
            rg: None,
            events: Some(1),
        }
    }

    fn encode(&self, origin_host: &str, hop_by_hop: u32, end_to_end: u32) -> Bytes {
        let mut b = BytesMut::new();
        let flags = CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE);
        let (command, app) = (CommandCode::CREDIT_CONTROL, ApplicationId::CREDIT_CONTROL);
        let mut e = Encoder::new(&mut b, flags, command, app, hop_by_hop, end_to_end);
        e.str(spec::SESSION_ID, &self.session);
        e.str(spec::ORIGIN_HOST, origin_host);
        e.str(spec::ORIGIN_REALM, "gyro.test");
        e.str(spec::DESTINATION_REALM, "localdomain");
        e.u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(avp(461), &format!("{}@3gpp.org", self.context));
        e.u32(avp(416), self.request_type);
        e.u32(avp(415), self.number);
        let digits = self.subscriber.strip_prefix("e164:").expect("e164 subscribers only");
        let g = e.begin_group(avp(443));
        e.u32(avp(450), SubscriptionKind::E164 as u32);
        e.str(avp(444), digits);
        e.end_group(g);
        if let Some(a) = self.action {
            e.u32(avp(436), a);
        }
        if self.request_type == TERMINATE {
            e.u32(avp(295), 1);
        }
        if let Some(n) = self.events {
            let g = e.begin_group(avp(437));
            e.u64(avp(417), n);
            e.end_group(g);
        }
        if let Some((rg, requested, used)) = self.rg {
            e.u32(avp(455), 1);
            let g = e.begin_group(avp(456));
            if requested {
                let r = e.begin_group(avp(437));
                e.end_group(r);
            }
            if 0 < used {
                let u = e.begin_group(avp(446));
                e.u64(avp(421), used);
                e.end_group(u);
            }
            e.u32(avp(432), rg);
            e.end_group(g);
        }
        e.finish();
        b.freeze()
    }
}

fn cost(a: &[u8]) -> i64 {
    money(a, 423, VendorId::IETF).expect("Cost-Information")
}

/// "0.08" → 8.
fn cents(text: &str) -> i64 {
    let (units, fraction) = text.split_once('.').unwrap_or((text, "00"));
    units.parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Files

/// Invoice JSON by number.
fn invoices(data: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(data.join("invoices")) else { return out };
    for entry in dir {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            out.insert(v["number"].as_str().unwrap().to_owned(), v);
        }
    }
    out
}

/// What an invoice collected (BT-112 + BT-114), in cents.
fn collected(invoice: &serde_json::Value) -> i64 {
    let t = &invoice["totals"];
    cents(t["tax_inclusive_amount"].as_str().unwrap()) + cents(t["rounding_amount"].as_str().unwrap())
}

fn mail(data: &Path, number: &str, kind: &str) -> Option<String> {
    std::fs::read_to_string(data.join("mail").join(format!("{number}.{kind}.eml"))).ok()
}

/// Successful charges in the sandbox's books, by idempotency key (with their count).
fn successes(data: &Path) -> HashMap<String, (usize, i64)> {
    let mut out: HashMap<String, (usize, i64)> = HashMap::new();
    for (line, _) in read_books(&data.join(SANDBOX_BOOKS_FILE)).unwrap() {
        if matches!(line.outcome, ChargeOutcome::Succeeded { .. }) {
            let e = out.entry(line.key.0).or_default();
            e.0 += 1;
            e.1 = line.amount.0;
        }
    }
    out
}

/// Numbers `GYR-YYYY-000001..N`, each once: no gap, no reuse.
fn assert_gapless(invoices: &BTreeMap<String, serde_json::Value>) {
    for (i, number) in invoices.keys().enumerate() {
        assert!(
            number.ends_with(&format!("-{:06}", i + 1)),
            "numbers run without a gap: {:?}",
            invoices.keys()
        );
    }
    let mut keys: Vec<&str> = invoices.values().map(|v| v["settlement_key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "one invoice per settlement");
}

// ---------------------------------------------------------------------------------------------
// The server process

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("gyro-settlement-").tempdir().unwrap();
        let catalog = dir.path().join("catalog.toml");
        std::fs::write(&catalog, CATALOG).unwrap();
        Catalog::load(&catalog).expect("the test catalog is valid");
        let config = dir.path().join("gyro.toml");
        let path = catalog.to_str().unwrap().replace('\\', "\\\\").replace('"', "\\\"");
        let text = format!(
            "[charging]\ncatalog = \"{path}\"\n\n[journal]\nsegment_mib = 1\n\n[log]\nlevel = \"info\"\n\n\
             [settlement.retry]\nbase_ms = 10\ncap_ms = 100\n"
        );
        std::fs::write(&config, text).unwrap();
        let data = dir.path().join("data");
        Self { dir, config, data }
    }
}

#[path = "common/serve.rs"]
mod serve;
use serve::Gyro;

/// Run `run` of `gyro serve` on the setup's directory, its log in `gyro-RUN.log`.
fn start_gyro(setup: &Setup, run: usize) -> Gyro {
    Gyro::start(&setup.config, &setup.data, setup.dir.path().join(format!("gyro-{run}.log")))
}

struct Peer {
    client: Client,
}

impl Peer {
    async fn open(addr: SocketAddr) -> Self {
        let identity =
            ClientIdentity { origin_host: "pgw.gyro.test".into(), origin_realm: "gyro.test".into() };
        let client = Client::connect(addr, identity, STEP).await.unwrap_or_else(|e| panic!("CER/CEA: {e}"));
        Self { client }
    }

    async fn call(&mut self, ccr: &Ccr) -> (Bytes, Bytes) {
        let (hop_by_hop, end_to_end) = self.client.next_ids();
        let req = ccr.encode("pgw.gyro.test", hop_by_hop, end_to_end);
        let ans = self.client.request(&req).await.unwrap_or_else(|e| panic!("an answer: {e}"));
        (req, ans)
    }

    /// CCR-I, CCR-U with 5 MiB, CCR-T with 3 MiB; returns the CCR-T and its answer.
    async fn session(&mut self, session: &str, subscriber: &str) -> (Bytes, Bytes) {
        let (_, a) = self.call(&Ccr::data(INITIAL, session, 0, subscriber, 0)).await;
        assert_eq!(result_code(&a), 2001, "CCR-I of {session}");
        let (_, a) = self.call(&Ccr::data(UPDATE, session, 1, subscriber, 5 * MIB)).await;
        assert_eq!(result_code(&a), 2001, "CCR-U of {session}");
        let (req, a) = self.call(&Ccr::data(TERMINATE, session, 2, subscriber, 3 * MIB)).await;
        assert_eq!(result_code(&a), 2001, "CCR-T of {session}");
        (req, a)
    }

    async fn available(&mut self, session: &str, subscriber: &str) -> i64 {
        let (_, a) = self.call(&Ccr::event(session, subscriber, CHECK_BALANCE)).await;
        assert_eq!(result_code(&a), 2001);
        money(&a, 2021, VendorId::TGPP).expect("Remaining-Balance")
    }
}

/// Waits (bounded) until `n` invoices exist, each with its invoice e-mail and the e-mail that
/// ends its settlement (a confirmation or a payment-failed notice).
fn wait_for_invoices(data: &Path, n: usize, gyro: &Gyro) -> BTreeMap<String, serde_json::Value> {
    let started = Instant::now();
    loop {
        let found = invoices(data);
        let done = found.len() >= n
            && found.keys().all(|k| {
                mail(data, k, "invoice").is_some()
                    && (mail(data, k, "payment-confirmation").is_some()
                        || mail(data, k, "payment-failed").is_some())
            });
        if done {
            return found;
        }
        assert!(
            started.elapsed() < SETTLE_MAX,
            "{} of {n} invoices after {SETTLE_MAX:?}:\n{}",
            found.len(),
            gyro.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. End to end

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_diameter_are_invoiced_paid_and_mailed() {
    let setup = Setup::new();
    let mut gyro = start_gyro(&setup, 0);
    let mut peer = Peer::open(gyro.addr).await;
    let mut debited = HashMap::new();
    for (session, sub) in [("s-pre", PREPAID), ("s-card", CARD), ("s-declined", DECLINED)] {
        let (req, ans) = peer.session(session, sub).await;
        debited.insert(sub, cost(&ans));
        if sub == CARD {
            // A retransmitted CCR-T: the original answer, no second settlement.
            let ans2 = peer.client.request(&retransmission(&req)).await.unwrap();
            assert_eq!(result_code(&ans2), 2001);
            assert_eq!(cost(&ans2), cost(&ans));
        }
    }
    let (_, sms) = peer.call(&Ccr::event("e-1", PREPAID, DIRECT_DEBITING)).await;
    assert_eq!(result_code(&sms), 2001);
    assert_eq!(cost(&sms), 5);
    assert_eq!(debited[PREPAID], 8, "8 MiB at 0.01 a MiB");

    let found = wait_for_invoices(&setup.data, 4, &gyro);
    std::thread::sleep(Duration::from_millis(300));
    let found_again = invoices(&setup.data);
    assert_eq!(found_again.len(), 4, "four settlements, no more: {:?}", found_again.keys());
    assert_gapless(&found);
    let books = successes(&setup.data);
    let mut by_buyer: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for v in found.values() {
        by_buyer.entry(v["buyer"]["id"].as_str().unwrap().to_owned()).or_default().push(v);
    }
    // Prepaid: the session and the SMS, each paid from the wallet at once.
    let mut pre: Vec<i64> = by_buyer["c-pre"].iter().map(|v| collected(v)).collect();
    pre.sort_unstable();
    assert_eq!(pre, vec![5, debited[PREPAID]]);
    for v in &by_buyer["c-pre"] {
        assert_eq!(v["totals"]["payable_amount"], "0.00", "a wallet invoice is paid: {v}");
    }
    // The card: invoice total = Σ debits = the amount charged, once.
    let card = by_buyer["c-card"][0];
    assert_eq!(collected(card), debited[CARD]);
    assert_eq!(cents(card["totals"]["paid_amount"].as_str().unwrap()), debited[CARD]);
    let key = card["settlement_key"].as_str().unwrap();
    assert_eq!(books.get(key), Some(&(1, debited[CARD])), "one charge of the invoice total: {books:?}");
    // The declined card: open invoice, payment-failed e-mail, no charge, the account barred.
    let declined = by_buyer["c-declined"][0];
    assert_eq!(cents(declined["totals"]["payable_amount"].as_str().unwrap()), debited[DECLINED]);
    assert!(!books.contains_key(declined["settlement_key"].as_str().unwrap()));
    let n = declined["number"].as_str().unwrap();
    assert!(mail(&setup.data, n, "payment-failed").is_some());
    assert!(mail(&setup.data, n, "payment-confirmation").is_none());
    let (_, barred) = peer.call(&Ccr::data(INITIAL, "s-declined-2", 0, DECLINED, 0)).await;
    assert_eq!(result_code(&barred), 4010, "a decline bars the account");
    // The paid card's credit line is whole again.
    assert_eq!(peer.available("e-card", CARD).await, 10_000);

    // E-mails: stable Message-IDs, the invoice's XML and JSON attached, the confirmation
    // threaded under the invoice.
    let n = card["number"].as_str().unwrap();
    let invoice_mail = mail(&setup.data, n, "invoice").unwrap();
    assert!(invoice_mail.contains(&format!("Message-ID: <invoice.{n}@")), "{invoice_mail}");
    assert!(invoice_mail.contains(&format!("filename=\"invoice-{n}.xml\"")), "{invoice_mail}");
    assert!(invoice_mail.contains(&format!("filename=\"invoice-{n}.json\"")), "{invoice_mail}");
    assert!(invoice_mail.contains("card@example.org"), "{invoice_mail}");
    let confirmation = mail(&setup.data, n, "payment-confirmation").unwrap();
    assert!(confirmation.contains(&format!("Message-ID: <payment-confirmation.{n}@")));
    assert!(confirmation.contains(&format!("In-Reply-To: <invoice.{n}@")));
    let xml = std::fs::read_to_string(setup.data.join("invoices").join(format!("{n}.xml"))).unwrap();
    assert!(xml.contains(&format!("<cbc:ID>{n}</cbc:ID>")), "{xml}");
    for v in found.values() {
        let n = v["number"].as_str().unwrap();
        assert!(mail(&setup.data, n, "invoice").is_some());
    }
    let started = Instant::now();
    while gyro.log_text().matches("invoice settled").count() < 4 {
        assert!(started.elapsed() < SETTLE_MAX, "{}", gyro.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gyro.log_text().matches("invoice settled").count(), 4, "{}", gyro.log_text());

    // A restart settles nothing again.
    peer.client.close().await.unwrap();
    gyro.terminate();
    let gyro = start_gyro(&setup, 1);
    assert!(gyro.log_text().contains("pending=0"), "{}", gyro.log_text());
    assert_eq!(invoices(&setup.data).len(), 4);
}

// ---------------------------------------------------------------------------------------------
// 2. In process: a crash at every step

const T0: u64 = 1_800_000_000;

fn now() -> Now {
    Now { mono_ms: 1_000, unix_secs: T0 }
}

struct Node {
    engine: Arc<Engine>,
    journal: Arc<ChargingJournal>,
    cfg: EngineConfig,
    catalog: Catalog,
    settlement: SettlementConfig,
}

/// Keeps the answer the journal sink leaves behind.
struct Keep<'a>(Sink<'a>, Option<Bytes>);

impl RecordSink for Keep<'_> {
    fn append(&mut self, record: &[u8], answer: &[u8]) -> bool {
        self.0.append(record, answer);
        self.1 = Some(Bytes::copy_from_slice(answer));
        true
    }
}

impl Node {
    fn start(data: &Path) -> Self {
        Self::start_with(data, CATALOG, SettlementConfig::default())
    }

    fn start_with(data: &Path, text: &str, settlement: SettlementConfig) -> Self {
        let catalog = Catalog::from_toml("catalog.toml", text).unwrap();
        let mut cfg = EngineConfig::new(&local());
        cfg.settle = true;
        // A restart in this process can find the journal's `LOCK` still held for a moment: the
        // flock belongs to the open file description, and a child that another test of this
        // binary is spawning (`gyro serve`, aiosmtpd) shares it between its fork and its exec
        // (the fd is close-on-exec). Seen twice under full `cargo test` load; the lock is the
        // kernel's, so wait it out briefly rather than fail (never in production: gyro serve
        // does not fork).
        let mut tries = 0;
        let started = loop {
            match durable::start(text, cfg.clone(), Some(JournalConfig::new(data)), now()) {
                Err(e) if tries < 100 && format!("{e:#}").contains("in use") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.unwrap_or_else(|e| panic!("the data directory recovers: {e:#}")),
            }
        };
        let (journal, _) = started.journal.expect("a journal");
        Self { engine: started.engine, journal, cfg: started.engine_cfg, catalog, settlement }
    }

    fn handle(&self, req: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        let mut keep = Keep(Sink::new(&self.journal, None), None);
        if self.engine.handle_with(now(), &msg(req), &mut out, &mut keep) {
            return keep.1.unwrap();
        }
        out.freeze()
    }

    fn session(&self, session: &str, subscriber: &str) -> Bytes {
        let mut e2e = 0;
        let mut call = |ccr: Ccr| {
            e2e += 1;
            let a = self.handle(&ccr.encode("pgw", e2e, e2e));
            assert_eq!(result_code(&a), 2001, "{ccr:?}");
            a
        };
        call(Ccr::data(INITIAL, session, 0, subscriber, 0));
        call(Ccr::data(UPDATE, session, 1, subscriber, 5 * MIB));
        let t = Ccr::data(TERMINATE, session, 2, subscriber, 3 * MIB).encode("pgw", 99, 99);
        let a = self.handle(&t);
        assert_eq!(result_code(&a), 2001);
        t
    }

    fn worker<P: PaymentAdapter + 'static>(
        &self,
        data: &Path,
        gateway: P,
    ) -> Worker<Arc<ChargingJournal>, P> {
        let out = Output::in_data_dir(data).unwrap();
        let cfg = self.settlement.clone();
        Worker::new(
            Arc::clone(self.engine.outbox()),
            Arc::clone(self.engine.ledger()),
            Arc::clone(&self.journal),
            Arc::new(gateway),
            self.catalog.clone(),
            cfg,
            out,
            Arc::new(|| T0 + 5),
        )
    }

    fn close(self) {
        drop(self.engine);
        let journal = Arc::try_unwrap(self.journal).ok().expect("nothing else holds the journal");
        journal.close().expect("the journal closes cleanly");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    Never,
    /// The charge call hangs before the gateway charged.
    BeforeCharge,
    /// The gateway charged (its books have it), the answer never comes back.
    AfterCharge,
}

/// The sandbox with its books in the data directory, crashing as told.
struct Gateway {
    sandbox: Sandbox,
    crash: Crash,
}

impl Gateway {
    fn new(data: &Path, crash: Crash) -> Self {
        Self { sandbox: Sandbox::with_books(&data.join(SANDBOX_BOOKS_FILE)).unwrap(), crash }
    }
}

impl PaymentAdapter for Gateway {
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl std::future::Future<Output = Result<ChargeOutcome, PaymentError>> + Send {
        let result = match self.crash {
            Crash::BeforeCharge => None,
            Crash::AfterCharge | Crash::Never => Some(self.sandbox.charge_now(request)),
        };
        let hang = self.crash != Crash::Never;
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
            result.expect("charged")
        }
    }

    fn lookup(
        &self,
        key: &IdempotencyKey,
    ) -> impl std::future::Future<Output = Result<Option<ChargeOutcome>, PaymentError>> + Send {
        std::future::ready(Ok(self.sandbox.lookup_now(key)))
    }
}

/// Advances the worker up to `steps` times (or until a step hangs: the "crash").
async fn run_steps<P: PaymentAdapter + 'static>(
    worker: &Worker<Arc<ChargingJournal>, P>,
    steps: usize,
) -> Vec<Advanced> {
    run_steps_within(worker, steps, STEP_MAX).await
}

/// How long a step may take before a test calls it hung: generous, because a step syncs the
/// journal and several files, and on a loaded 2-core machine that has taken over 300 ms.
const STEP_MAX: Duration = Duration::from_secs(10);

/// A step taking longer than `within` ends the run (a gateway told to hang does).
async fn run_steps_within<P: PaymentAdapter + 'static>(
    worker: &Worker<Arc<ChargingJournal>, P>,
    steps: usize,
    within: Duration,
) -> Vec<Advanced> {
    let mut done = Vec::new();
    for _ in 0..steps {
        let Some(key) = worker.next_ready(u64::MAX) else { break };
        match tokio::time::timeout(within, worker.advance(key)).await {
            Ok(step) => done.push(step.expect("a step")),
            Err(_) => break,
        }
    }
    done
}

async fn crash_case(steps: usize, crash: Crash, snapshot: bool) {
    let what = format!("crash after {steps} steps ({crash:?}, snapshot {snapshot})");
    let dir = tempfile::Builder::new().prefix("gyro-settle-crash-").tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data);
    let t = node.session("s-card", CARD);
    // The retransmitted CCR-T creates no second settlement.
    assert_eq!(result_code(&node.handle(&retransmission(&t))), 2001);
    node.session("s-pre", PREPAID);
    assert_eq!(node.engine.outbox().len(), 2, "{what}");
    let card_key = node.engine.outbox().pending()[0].entry.key;

    let worker = node.worker(&data, Gateway::new(&data, crash));
    // A gateway told to hang never answers: wait for it only briefly (where the run stops does
    // not matter for what is checked after the restart).
    let within = if crash == Crash::Never { STEP_MAX } else { Duration::from_millis(300) };
    run_steps_within(&worker, steps, within).await;
    drop(worker);
    let pending = node.engine.outbox().pending();
    if snapshot {
        let c = durable::checkpoint(&node.journal, &node.cfg, 2, now()).unwrap();
        assert!(c.is_some(), "{what}: a snapshot");
    }
    node.close();

    // Restart: the outbox is what it was (from the journal, or the snapshot).
    let node = Node::start(&data);
    let recovered = node.engine.outbox().pending();
    assert_eq!(recovered, pending, "{what}");
    // The CCR-T retransmitted after the restart: answered again, settled no second time.
    assert_eq!(result_code(&node.handle(&retransmission(&t))), 2001, "{what}");
    assert_eq!(node.engine.outbox().pending(), recovered, "{what}");
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never));
    let done = run_steps(&worker, 20).await;
    println!("{what}: resumed with {done:?}");
    assert!(node.engine.outbox().is_empty(), "{what}: everything settled ({done:?})");
    drop(worker);

    let found = invoices(&data);
    assert_eq!(found.len(), 2, "{what}: {:?}", found.keys());
    assert_gapless(&found);
    let books = successes(&data);
    assert_eq!(books.len(), 1, "{what}: {books:?}");
    assert_eq!(books.get(&card_key.to_string()).map(|b| b.0), Some(1), "{what}: one charge");
    for number in found.keys() {
        assert!(mail(&data, number, "invoice").is_some(), "{what}");
        assert!(mail(&data, number, "payment-confirmation").is_some(), "{what}");
    }
    // The credit line is whole again, credited once.
    let view = node.engine.ledger().view(AccountId(1)).unwrap();
    assert_eq!(view.balance.0, 0, "{what}");
    assert_eq!(node.engine.outbox().last_number(&found.keys().next().unwrap()[..8]), 2, "{what}");
    node.close();
    // Once more from the journal: nothing pending, the same balance.
    let node = Node::start(&data);
    assert!(node.engine.outbox().is_empty(), "{what}");
    assert_eq!(node.engine.ledger().view(AccountId(1)).unwrap().balance.0, 0, "{what}");
    node.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_step_resumes_with_one_number_and_one_charge() {
    for steps in 0..=5 {
        crash_case(steps, Crash::Never, false).await;
    }
    // Steps: 1 numbers the card's invoice, 2 charges it.
    crash_case(2, Crash::BeforeCharge, false).await;
    crash_case(2, Crash::AfterCharge, false).await;
    crash_case(1, Crash::Never, true).await;
    crash_case(2, Crash::AfterCharge, true).await;
    crash_case(4, Crash::Never, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_settled_when_it_is_forgotten() {
    let dir = tempfile::Builder::new().prefix("gyro-settle-expiry-").tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data);
    let a = node.handle(&Ccr::data(INITIAL, "s-gone", 0, CARD, 0).encode("pgw", 1, 1));
    assert_eq!(result_code(&a), 2001);
    let a = node.handle(&Ccr::data(UPDATE, "s-gone", 1, CARD, 5 * MIB).encode("pgw", 2, 2));
    assert_eq!(result_code(&a), 2001);
    assert!(node.engine.outbox().is_empty(), "open sessions are not settled");
    // Silent for a month: expired (holds released) and, past the retention, forgotten.
    let later = Now { mono_ms: 1_000 + 30 * 86_400_000, unix_secs: T0 + 30 * 86_400 };
    let stats = node.engine.sweep_with(later, &mut Sink::new(&node.journal, None));
    assert_eq!((stats.sessions_expired, stats.sessions_removed), (1, 1));
    let pending = node.engine.outbox().pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].entry.debited().0, 5, "5 MiB");
    node.close();
    let node = Node::start(&data);
    assert_eq!(node.engine.outbox().pending(), pending, "recovered from the sweep's record");
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never));
    run_steps(&worker, 10).await;
    drop(worker);
    let found = invoices(&data);
    assert_eq!(found.values().map(collected).collect::<Vec<_>>(), vec![5]);
    assert_eq!(successes(&data).values().copied().collect::<Vec<_>>(), vec![(1, 5)]);
    node.close();
}

/// The card account pays with `card`, the declined-card account with `other`.
fn catalog_with(card: &str, other: &str) -> String {
    CATALOG.replace("4242424242424242", card).replace("4000000000000002", other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_lost_replies_looked_up_and_exhausted_attempts_dead_lettered() {
    use gyro::settlement::payment::test_instruments as t;
    use gyro::settlement::RetryPolicy;
    // Transient twice then success; a lost reply (charged, no answer) found by the lookup.
    let dir = tempfile::Builder::new().prefix("gyro-settle-retry-").tempdir().unwrap();
    let data = dir.path().join("data");
    let retry = RetryPolicy { base_ms: 1, cap_ms: 5, attempts_max: 8 };
    let cfg = SettlementConfig { retry, ..SettlementConfig::default() };
    let node = Node::start_with(&data, &catalog_with(t::CARD_TRANSIENT, t::CARD_LOST_REPLY), cfg);
    node.session("s-transient", CARD);
    node.session("s-lost", DECLINED);
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never));
    let steps = run_steps(&worker, 20).await;
    let retries = steps.iter().filter(|s| matches!(s, Advanced::RetryAfter(_))).count();
    assert_eq!(retries, 3, "two transient failures and one lost reply: {steps:?}");
    assert_eq!(worker.stats().charge_attempts, 4, "{steps:?}");
    assert!(node.engine.outbox().is_empty(), "{steps:?}");
    drop(worker);
    let books = successes(&data);
    assert_eq!(books.len(), 2, "{books:?}");
    assert!(books.values().all(|&(n, amount)| n == 1 && amount == 8), "one charge each: {books:?}");
    assert!(invoices(&data).values().all(|v| v["totals"]["payable_amount"] == "0.00"));
    node.close();

    // Attempts exhausted: a dead letter, the invoice open, the account not barred.
    let dir = tempfile::Builder::new().prefix("gyro-settle-dead-").tempdir().unwrap();
    let data = dir.path().join("data");
    let retry = RetryPolicy { base_ms: 1, cap_ms: 5, attempts_max: 2 };
    let cfg = SettlementConfig { retry, ..SettlementConfig::default() };
    let node = Node::start_with(&data, &catalog_with(t::CARD_TRANSIENT, t::CARD_DECLINED), cfg);
    node.session("s-dead", CARD);
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never));
    let steps = run_steps(&worker, 20).await;
    assert!(steps
        .iter()
        .any(|s| matches!(s, Advanced::Paid(gyro::settlement::outbox::Outcome::DeadLetter { .. }))));
    assert_eq!(node.engine.outbox().stats().dead_letters, 1);
    drop(worker);
    let found = invoices(&data);
    let (number, v) = found.iter().next().unwrap();
    assert_eq!(v["totals"]["payable_amount"], "0.08", "{v}");
    assert!(mail(&data, number, "invoice").is_some());
    assert!(
        mail(&data, number, "payment-confirmation").is_none()
            && mail(&data, number, "payment-failed").is_none()
    );
    assert!(successes(&data).is_empty());
    // The settlement index (the admin API's payments and dead letters) says so.
    let index = std::fs::read_to_string(data.join("invoices").join("index.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(index.lines().last().unwrap()).unwrap();
    assert_eq!(
        (line["number"].as_str(), line["status"].as_str()),
        (Some(number.as_str()), Some("dead_letter")),
        "{line}"
    );
    assert_eq!(line["payment_id"], serde_json::Value::Null);
    assert_eq!(line["total"], "0.08");
    let a = node.handle(&Ccr::data(INITIAL, "s-after", 0, CARD, 0).encode("pgw", 7, 7));
    assert_eq!(result_code(&a), 2001, "a dead letter does not bar the account");
    node.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_key_is_stable_and_printable() {
    let k = SettlementKey([1, 2]);
    assert_eq!(k.to_string(), "stl_00000000000000010000000000000002");
}

// ---------------------------------------------------------------------------------------------
// 2b. E-mail through an SMTP relay: transient failures wait, permanent ones do not block

/// A plain SMTP relay on loopback, just enough for lettre: every message accepted (its bytes
/// kept in `got`), unless RCPT is answered with `rcpt` (a 5yz refuses the recipient for good).
async fn fake_relay(
    listener: tokio::net::TcpListener,
    rcpt: &'static str,
    got: Arc<std::sync::Mutex<Vec<String>>>,
) {
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(relay_session(socket, rcpt, Arc::clone(&got)));
    }
}

async fn relay_session(
    socket: tokio::net::TcpStream,
    rcpt: &'static str,
    got: Arc<std::sync::Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (read, mut write) = socket.into_split();
    let mut read = tokio::io::BufReader::new(read);
    write.write_all(b"220 fake.relay ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" | "HELO" | "MAIL" | "RSET" | "NOOP" => "250 OK\r\n",
            "RCPT" => rcpt,
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            "DATA" => {
                write.write_all(b"354 go on\r\n").await?;
                let mut message = String::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    message.push_str(&line);
                }
                got.lock().unwrap().push(message);
                "250 2.0.0 queued\r\n"
            }
            _ => "502 5.5.2 not implemented\r\n",
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

/// Plain SMTP to `127.0.0.1:port`, as the seller of the default configuration.
fn relay_mailer(port: u16) -> Mailer {
    let smtp = SmtpConfig {
        host: "127.0.0.1".into(),
        port: Some(port),
        security: SmtpSecurity::None,
        timeout_ms: 5_000,
        ..SmtpConfig::default()
    };
    let seller = SettlementConfig::default().seller.email;
    Mailer::Smtp(Box::new(SmtpMailer::new(&smtp, &seller, |_| None).expect("a valid relay")))
}

/// A loopback port nothing listens on: connecting is refused (a transient failure).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_out_of_reach_delays_done_and_the_e_mails_go_when_it_answers() {
    let dir = tempfile::Builder::new().prefix("gyro-settle-relay-").tempdir().unwrap();
    let data = dir.path().join("data");
    let retry = gyro::settlement::RetryPolicy { base_ms: 1, cap_ms: 5, attempts_max: 8 };
    let node = Node::start_with(&data, CATALOG, SettlementConfig { retry, ..SettlementConfig::default() });
    node.session("s-card", CARD);
    let key = node.engine.outbox().pending()[0].entry.key;
    let port = closed_port();
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never)).with_mailer(relay_mailer(port));

    // Number, charge, deliver: the invoice files are written, the e-mail cannot go, so the
    // settlement is not done and is tried again later; trying again changes nothing.
    let numbered = worker.advance(key).await.unwrap();
    assert!(matches!(numbered, Advanced::Numbered(_)), "{numbered:?}");
    let paid = worker.advance(key).await.unwrap();
    assert!(matches!(paid, Advanced::Paid(_)), "{paid:?}");
    for _ in 0..2 {
        let step = worker.advance(key).await.unwrap();
        assert!(matches!(step, Advanced::RetryAfter(_)), "{step:?}");
        assert_eq!(node.engine.outbox().len(), 1, "not done while its e-mails wait");
    }
    assert_eq!(worker.stats().deliveries_deferred, 2);
    assert_eq!(worker.stats().emails_written, 0);
    let found = invoices(&data);
    assert_eq!(found.len(), 1, "the invoice files are written before the e-mails");
    assert_eq!(successes(&data).get(&key.to_string()).map(|s| s.0), Some(1), "charged once");

    // The relay answers on that port now: the next try delivers both e-mails and finishes.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let relay = tokio::spawn(fake_relay(listener, "250 OK\r\n", Arc::clone(&got)));
    assert_eq!(worker.advance(key).await.unwrap(), Advanced::Done);
    assert!(node.engine.outbox().is_empty());
    let number = found.keys().next().unwrap();
    let messages = got.lock().unwrap().clone();
    assert_eq!(messages.len(), 2, "the invoice and the confirmation, once each");
    assert!(messages[0].contains(&format!("Message-ID: <invoice.{number}@")), "{}", messages[0]);
    assert!(messages[1].contains(&format!("Message-ID: <payment-confirmation.{number}@")));
    assert!(mail(&data, number, "invoice").is_none(), "no .eml files with a relay");
    let stats = worker.stats();
    assert_eq!((stats.emails_written, stats.settled, stats.charge_attempts), (2, 1, 1), "{stats:?}");
    relay.abort();
    drop(worker);
    node.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_refused_for_good_does_not_hold_the_settlement() {
    let dir = tempfile::Builder::new().prefix("gyro-settle-refused-").tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data);
    node.session("s-pre", PREPAID);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let relay = tokio::spawn(fake_relay(listener, "550 5.1.1 no such mailbox\r\n", Arc::clone(&got)));
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never)).with_mailer(relay_mailer(port));
    let steps = run_steps(&worker, 5).await;
    assert_eq!(steps.last(), Some(&Advanced::Done), "{steps:?}");
    assert!(node.engine.outbox().is_empty());
    let stats = worker.stats();
    assert_eq!((stats.emails_refused, stats.emails_written, stats.settled), (2, 0, 1), "{stats:?}");
    assert!(got.lock().unwrap().is_empty());
    assert_eq!(invoices(&data).len(), 1, "the invoice stands");
    relay.abort();
    drop(worker);
    node.close();
}

// ---------------------------------------------------------------------------------------------
// 2c. The configured adapter: Stripe through the worker; start-up refuses a missing secret

/// A Stripe-compatible server, just what a charge needs: PaymentIntents created under an
/// `Idempotency-Key` (a repeated key gets the saved answer and charges nothing; the first POST
/// fails with a 500 when `fail_first`), and the search by metadata.
#[derive(Default)]
struct FakeStripe {
    fail_first: bool,
    posts: usize,
    /// The form of each POST.
    forms: Vec<HashMap<String, String>>,
    /// (the key, the intent's JSON) of each PaymentIntent that charged.
    intents: Vec<(String, serde_json::Value)>,
}

async fn fake_stripe(stripe: Arc<std::sync::Mutex<FakeStripe>>) -> SocketAddr {
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    type Shared = Arc<std::sync::Mutex<FakeStripe>>;
    async fn create(
        State(stripe): State<Shared>,
        headers: HeaderMap,
        axum::Form(form): axum::Form<HashMap<String, String>>,
    ) -> (StatusCode, axum::Json<serde_json::Value>) {
        let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let authorised =
            headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer sk_test_gyro");
        let mut s = stripe.lock().unwrap();
        s.posts += 1;
        s.forms.push(form.clone());
        if !authorised || key.is_empty() {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": {"type": "invalid_request_error"}})),
            );
        }
        if s.fail_first && s.posts == 1 {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({"error": {"type": "api_error"}})),
            );
        }
        if let Some((_, intent)) = s.intents.iter().find(|(k, _)| *k == key) {
            return (StatusCode::OK, axum::Json(intent.clone()));
        }
        let intent = serde_json::json!({
            "id": format!("pi_{}", s.intents.len() + 1), "object": "payment_intent", "status": "succeeded",
            "amount": form.get("amount").and_then(|a| a.parse::<i64>().ok()), "currency": form.get("currency"),
            "metadata": {"idempotency_key": key},
        });
        s.intents.push((key, intent.clone()));
        (StatusCode::OK, axum::Json(intent))
    }
    async fn search(
        State(stripe): State<Shared>,
        Query(query): Query<HashMap<String, String>>,
    ) -> axum::Json<serde_json::Value> {
        let q = query.get("query").cloned().unwrap_or_default();
        let s = stripe.lock().unwrap();
        let data: Vec<_> =
            s.intents.iter().filter(|(k, _)| q.contains(&format!("'{k}'"))).map(|(_, i)| i.clone()).collect();
        axum::Json(serde_json::json!({"object": "search_result", "data": data, "has_more": false}))
    }
    let app = axum::Router::new()
        .route("/v1/payment_intents", axum::routing::post(create))
        .route("/v1/payment_intents/search", axum::routing::get(search))
        .with_state(stripe);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn unix_now() -> i64 {
    T0 as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_stripe_adapter_a_settlement_is_charged_once_through_a_failure() {
    use gyro::settlement::payment::ConfiguredAdapter;
    let stripe = Arc::new(std::sync::Mutex::new(FakeStripe { fail_first: true, ..FakeStripe::default() }));
    let addr = fake_stripe(Arc::clone(&stripe)).await;
    let dir = tempfile::Builder::new().prefix("gyro-settle-stripe-").tempdir().unwrap();
    let data = dir.path().join("data");
    let text = format!(
        "[settlement.payment]\nadapter = \"stripe\"\n[settlement.stripe]\nbase_url = \"http://{addr}/\"\n\
         timeout_ms = 10000\n[settlement.retry]\nbase_ms = 1\ncap_ms = 5\n"
    );
    let cfg = gyro::config::Config::parse("gyro.toml", &text).expect("a valid configuration").settlement;
    let secret = |name: &str| (name == "GYRO_STRIPE_SECRET_KEY").then(|| "sk_test_gyro".to_owned());
    let adapter = ConfiguredAdapter::build(&cfg, secret, unix_now).expect("the stripe adapter");
    let node = Node::start_with(&data, &catalog_saved_at_stripe(), cfg);
    let t = node.session("s-card", CARD);
    // The CCR-T again: its original answer, with what the session cost.
    let debited = cost(&node.handle(&retransmission(&t)));
    let key = node.engine.outbox().pending()[0].entry.key;
    let worker = node.worker(&data, adapter);
    let steps = run_steps(&worker, 10).await;
    assert!(node.engine.outbox().is_empty(), "{steps:?}");
    assert_eq!(steps.iter().filter(|s| matches!(s, Advanced::RetryAfter(_))).count(), 1, "{steps:?}");
    let paid = steps.iter().find_map(|s| match s {
        Advanced::Paid(gyro::settlement::outbox::Outcome::Paid { payment_id, .. }) => {
            Some(payment_id.clone())
        }
        _ => None,
    });
    assert_eq!(paid.as_deref(), Some("pi_1"), "{steps:?}");
    let s = stripe.lock().unwrap();
    assert_eq!(s.posts, 2, "a 500, then the retry under the same key");
    assert_eq!(s.intents.len(), 1, "charged once");
    assert_eq!(s.intents[0].0, key.to_string());
    assert_eq!(s.intents[0].1["amount"], debited);
    for form in &s.forms {
        assert_eq!(form.get("customer").map(String::as_str), Some("cus_card"), "{form:?}");
        assert_eq!(form.get("payment_method").map(String::as_str), Some("pm_card"), "{form:?}");
        assert!(form.values().all(|v| !v.contains("4242424242424242")), "{form:?}");
    }
    let found = invoices(&data);
    let invoice = found.values().next().unwrap();
    assert_eq!(cents(invoice["totals"]["paid_amount"].as_str().unwrap()), debited);
    drop(s);
    drop(worker);
    node.close();
}

/// The test catalog with the card account's ids at Stripe.
fn catalog_saved_at_stripe() -> String {
    let card = "card = \"4242424242424242\"";
    CATALOG
        .replace(card, &format!("{card}\ngateway_customer = \"cus_card\"\npayment_method_id = \"pm_card\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_stripe_adapter_an_account_without_gateway_references_is_dead_lettered_unsent() {
    use gyro::settlement::payment::ConfiguredAdapter;
    let stripe = Arc::new(std::sync::Mutex::new(FakeStripe::default()));
    let addr = fake_stripe(Arc::clone(&stripe)).await;
    let dir = tempfile::Builder::new().prefix("gyro-settle-stripe-unsent-").tempdir().unwrap();
    let data = dir.path().join("data");
    let text = format!(
        "[settlement.payment]\nadapter = \"stripe\"\n[settlement.stripe]\nbase_url = \"http://{addr}/\"\n\
         timeout_ms = 10000\n[settlement.retry]\nbase_ms = 1\ncap_ms = 5\nattempts_max = 2\n"
    );
    let cfg = gyro::config::Config::parse("gyro.toml", &text).expect("a valid configuration").settlement;
    let secret = |name: &str| (name == "GYRO_STRIPE_SECRET_KEY").then(|| "sk_test_gyro".to_owned());
    let adapter = ConfiguredAdapter::build(&cfg, secret, unix_now).expect("the stripe adapter");
    let node = Node::start_with(&data, CATALOG, cfg);
    node.session("s-card", CARD);
    let worker = node.worker(&data, adapter);
    let steps = run_steps(&worker, 10).await;
    assert!(node.engine.outbox().is_empty(), "{steps:?}");
    assert!(
        steps
            .iter()
            .any(|s| matches!(s, Advanced::Paid(gyro::settlement::outbox::Outcome::DeadLetter { .. }))),
        "{steps:?}"
    );
    assert_eq!(worker.stats().charge_attempts, 1, "a refusal for good is not retried: {steps:?}");
    assert_eq!(stripe.lock().unwrap().posts, 0, "nothing Stripe would reject was sent");
    drop(worker);
    let found = invoices(&data);
    let invoice = found.values().next().unwrap();
    assert_eq!(invoice["totals"]["payable_amount"], "0.08", "the invoice stays open: {invoice}");
    let a = node.handle(&Ccr::data(INITIAL, "s-after", 0, CARD, 0).encode("pgw", 7, 7));
    assert_eq!(result_code(&a), 2001, "a dead letter does not bar the account");
    node.close();
}

/// `gyro serve` with `extra` added to the test configuration: exits before listening, and its
/// output is returned.
fn start_fails(extra: &str) -> String {
    let setup = Setup::new();
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(extra);
    std::fs::write(&setup.config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gyro"))
        .arg("serve")
        .arg("--config")
        .arg(&setup.config)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&setup.data)
        .env("NO_COLOR", "1")
        .env_remove("GYRO_STRIPE_SECRET_KEY")
        .env_remove("GYRO_PG_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("gyro runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "gyro must not start:\n{text}");
    assert!(!text.contains("gyro listening for Diameter"), "{text}");
    text
}

#[test]
fn start_up_stops_on_a_missing_secret_or_an_unreachable_billing_database_naming_the_key() {
    let text = start_fails("\n[settlement.payment]\nadapter = \"stripe\"\n");
    assert!(text.contains("settlement.stripe.secret_key_file"), "{text}");
    assert!(text.contains("GYRO_STRIPE_SECRET_KEY"), "{text}");
    let port = closed_port();
    let text = start_fails(&format!(
        "\n[settlement.postgres]\nurl = \"host=127.0.0.1 port={port} dbname=none\"\nconnect_timeout_ms = 2000\n"
    ));
    assert!(text.contains("settlement.postgres"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// 3. SIGKILL at random moments

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// CCR-Ts sent and acknowledged, over all rounds.
#[derive(Default, Debug)]
struct Sent {
    terminations: usize,
    acknowledged: usize,
}

/// Sessions (on the card and prepaid, in turn) on one connection until the server is killed.
async fn sessions_until_killed(addr: SocketAddr, name: String, sent: Arc<std::sync::Mutex<Sent>>) {
    let identity =
        ClientIdentity { origin_host: format!("{name}.gyro.test"), origin_realm: "gyro.test".into() };
    let Ok(mut client) = Client::connect(addr, identity, STEP).await else { return };
    for i in 0..200 {
        let sub = if i % 2 == 0 { CARD } else { PREPAID };
        let session = format!("{name}-{i}");
        for (kind, number, used) in [(INITIAL, 0, 0), (UPDATE, 1, 5 * MIB), (TERMINATE, 2, 3 * MIB)] {
            let (hop_by_hop, end_to_end) = client.next_ids();
            let req = Ccr::data(kind, &session, number, sub, used).encode(&name, hop_by_hop, end_to_end);
            if kind == TERMINATE {
                sent.lock().unwrap().terminations += 1;
            }
            match client.request(&req).await {
                Ok(a) if result_code(&a) == 2001 => {}
                _ => return,
            }
            if kind == TERMINATE {
                sent.lock().unwrap().acknowledged += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_every_session_is_settled_once() {
    let rounds: usize =
        std::env::var("GYRO_SETTLE_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let seed =
        std::env::var("GYRO_SETTLE_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    println!("GYRO_SETTLE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let setup = Setup::new();
    let sent = Arc::new(std::sync::Mutex::new(Sent::default()));
    for round in 0..rounds {
        let mut gyro = start_gyro(&setup, round);
        // Three connections run sessions while the worker settles them; SIGKILL lands anywhere.
        let clients: Vec<_> = (0..3)
            .map(|c| {
                tokio::spawn(sessions_until_killed(gyro.addr, format!("r{round}c{c}"), Arc::clone(&sent)))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + rng.next() % 400)).await;
        gyro.kill();
        for c in clients {
            tokio::time::timeout(STEP * 2, c).await.expect("clients see the kill").unwrap();
        }
    }
    let gyro = start_gyro(&setup, rounds);
    let pending: Vec<String> = (1..=rounds)
        .map(|r| {
            let log =
                std::fs::read_to_string(setup.dir.path().join(format!("gyro-{r}.log"))).unwrap_or_default();
            log.lines()
                .find(|l| l.contains("settlement worker ready"))
                .and_then(|l| l.split("pending=").nth(1))
                .and_then(|p| p.split_whitespace().next())
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    println!("pending at each restart: {pending:?}; {sent:?}");
    assert!(0 < sent.acknowledged, "seed {seed}: sessions ended before the kills");
    // Every acknowledged CCR-T is settled; one in doubt at a kill may be too.
    wait_for_invoices(&setup.data, sent.acknowledged, &gyro);
    std::thread::sleep(Duration::from_millis(300));
    let found = invoices(&setup.data);
    assert!(
        sent.acknowledged <= found.len() && found.len() <= sent.terminations,
        "seed {seed}: {} invoices for {sent:?}",
        found.len()
    );
    assert_gapless(&found);
    let books = successes(&setup.data);
    let cards = found.values().filter(|v| v["buyer"]["id"] == "c-card").count();
    assert_eq!(books.len(), cards, "seed {seed}: one charge per card invoice: {books:?}");
    assert!(books.values().all(|&(n, amount)| n == 1 && amount == 8), "seed {seed}: {books:?}");
    for (number, v) in &found {
        assert_eq!(collected(v), 8, "seed {seed}: {number}");
        assert!(mail(&setup.data, number, "invoice").is_some(), "seed {seed}: {number}");
        assert!(mail(&setup.data, number, "payment-confirmation").is_some(), "seed {seed}: {number}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The production pieces: an SMTP relay (aiosmtpd) and billing records (PostgreSQL)

#[path = "common/smtp_sink.rs"]
mod smtp_sink;
use smtp_sink::SmtpSink;

/// An invoice's billing rows as the test reads them back (one payment row joined).
#[derive(Debug, PartialEq, Eq)]
struct BillingRow {
    customer: String,
    number: String,
    status: String,
    total: i64,
    lines: i64,
    usage: i64,
    attempt: i32,
    outcome: String,
    amount: i64,
}

fn wait_for_log(gyro: &Gyro, what: &str, n: usize) {
    let started = Instant::now();
    while gyro.log_text().matches(what).count() < n {
        assert!(started.elapsed() < SETTLE_MAX, "{n} × {what:?} within {SETTLE_MAX:?}:\n{}", gyro.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Needs python3 with aiosmtpd and PostgreSQL on 127.0.0.1:5432 (database `test`, trust
/// authentication; `GYRO_TEST_PG_URL` overrides): run by `.ci/run`, which installs and starts
/// them; without them it fails, never skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with aiosmtpd and PostgreSQL on 127.0.0.1:5432; .ci/run runs it"]
async fn with_smtp_and_postgres_configured_serve_mails_through_the_relay_and_records_billing_once() {
    let url =
        std::env::var("GYRO_TEST_PG_URL").unwrap_or_else(|_| "host=127.0.0.1 port=5432 dbname=test".into());
    let connected =
        tokio::time::timeout(STEP * 4, tokio_postgres::connect(&url, tokio_postgres::NoTls)).await;
    let (db, connection) = connected
        .expect("PostgreSQL answers within 20 s")
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} must be running for this test: {e}"));
    tokio::spawn(connection);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let schema = format!("gyro_settle_{}_{nanos}", std::process::id());

    let setup = Setup::new();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("a self-signed certificate");
    let (cert, key, password) = (
        setup.dir.path().join("cert.pem"),
        setup.dir.path().join("key.pem"),
        setup.dir.path().join("smtp.pw"),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    std::fs::write(&password, "s3cret\n").unwrap();
    let sink = SmtpSink::start(&cert, &key, "gyro", "s3cret");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "\n[settlement.smtp]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"gyro\"\npassword_file = \"{}\"\n\
         ca_file = \"{}\"\ntimeout_ms = 20000\n\n[settlement.postgres]\nurl = \"{url}\"\nschema = \"{schema}\"\n",
        sink.port,
        password.display(),
        cert.display()
    ));
    std::fs::write(&setup.config, text).unwrap();

    let mut gyro = start_gyro(&setup, 0);
    let mut peer = Peer::open(gyro.addr).await;
    let mut debited = HashMap::new();
    for (session, sub, customer) in
        [("s-pre", PREPAID, "c-pre"), ("s-card", CARD, "c-card"), ("s-declined", DECLINED, "c-declined")]
    {
        let (_, ans) = peer.session(session, sub).await;
        debited.insert(customer, cost(&ans));
    }
    wait_for_log(&gyro, "invoice settled", 3);
    let files = invoices(&setup.data);
    assert_eq!(files.len(), 3, "{:?}", files.keys());
    let number_of = |customer: &str| {
        files.values().find(|v| v["buyer"]["id"] == customer).unwrap()["number"].as_str().unwrap().to_owned()
    };

    // The e-mails reached the relay over STARTTLS, each once; none became a file.
    let started = Instant::now();
    while sink.received().len() < 6 {
        assert!(started.elapsed() < SETTLE_MAX, "6 e-mails at the relay: {:?}", sink.received());
        std::thread::sleep(Duration::from_millis(20));
    }
    let received = sink.received();
    let mut ids: Vec<&str> = received.iter().map(|m| m["message_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut expected = Vec::new();
    for (customer, notice) in [
        ("c-pre", "payment-confirmation"),
        ("c-card", "payment-confirmation"),
        ("c-declined", "payment-failed"),
    ] {
        let n = number_of(customer);
        expected.push(format!("<invoice.{n}@gyro.example>"));
        expected.push(format!("<{notice}.{n}@gyro.example>"));
    }
    expected.sort_unstable();
    assert_eq!(ids, expected, "each e-mail once");
    for m in &received {
        assert_eq!((m["tls"].as_bool(), m["auth"].as_bool()), (Some(true), Some(true)), "{m}");
        assert_eq!(m["mail_from"], "billing@gyro.example", "{m}");
        assert_eq!(m["defects"], serde_json::json!([]), "{m}");
    }
    let mailed = std::fs::read_dir(setup.data.join("mail")).map_or(0, |d| d.count());
    assert_eq!(mailed, 0, "no .eml files with a relay");

    // The billing rows: one invoice each with the outcome's status, its line and usage, and
    // one payment row each (the wallet, the card's charge, the decline).
    db.batch_execute(&format!("SET search_path TO \"{schema}\"")).await.unwrap();
    let rows = db
        .query(
            "SELECT i.customer_id, i.number, i.status, i.tax_inclusive_minor + i.rounding_minor,
                    (SELECT count(*) FROM invoice_lines l WHERE l.invoice_number = i.number),
                    (SELECT count(*) FROM usage_records u WHERE u.invoice_number = i.number),
                    p.attempt, p.outcome, p.amount_minor
             FROM invoices i LEFT JOIN payments p ON p.invoice_number = i.number
             ORDER BY i.customer_id, p.attempt",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<BillingRow> = rows
        .iter()
        .map(|r| BillingRow {
            customer: r.get(0),
            number: r.get(1),
            status: r.get(2),
            total: r.get(3),
            lines: r.get(4),
            usage: r.get(5),
            attempt: r.get(6),
            outcome: r.get(7),
            amount: r.get(8),
        })
        .collect();
    let row = |customer: &str, status: &str, outcome: &str| BillingRow {
        customer: customer.to_owned(),
        number: number_of(customer),
        status: status.to_owned(),
        total: debited[customer],
        lines: 1,
        usage: 1,
        attempt: 1,
        outcome: outcome.to_owned(),
        amount: debited[customer],
    };
    assert_eq!(
        got,
        vec![
            row("c-card", "paid", "succeeded"),
            row("c-declined", "payment_failed", "declined"),
            row("c-pre", "paid", "wallet"),
        ]
    );
    let key = files[&number_of("c-card")]["settlement_key"].as_str().unwrap().to_owned();
    assert_eq!(successes(&setup.data).get(&key), Some(&(1, debited["c-card"])), "one charge");

    // A restart settles nothing again: no new e-mail, no new row.
    peer.client.close().await.unwrap();
    gyro.terminate();
    let mut gyro = start_gyro(&setup, 1);
    assert!(gyro.log_text().contains("pending=0"), "{}", gyro.log_text());
    wait_for_log(&gyro, "billing records on", 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.received().len(), 6);
    let counted: i64 = db
        .query_one("SELECT (SELECT count(*) FROM invoices) + (SELECT count(*) FROM payments)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 6);
    gyro.terminate();
    db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
}

/// Needs PostgreSQL on 127.0.0.1:5432, as above; run by `.ci/run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL on 127.0.0.1:5432; .ci/run runs it"]
async fn with_postgres_a_lost_connection_is_reconnected_before_the_next_rows() {
    use gyro::settlement::billing::{PgBilling, PostgresConfig};
    let url =
        std::env::var("GYRO_TEST_PG_URL").unwrap_or_else(|_| "host=127.0.0.1 port=5432 dbname=test".into());
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} must be running for this test: {e}"));
    tokio::spawn(connection);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let schema = format!("gyro_reconnect_{}_{nanos}", std::process::id());
    let pg = PostgresConfig { url: Some(url.clone()), schema: schema.clone(), ..PostgresConfig::default() };
    let billing = PgBilling::connect(&pg, |_| None).await.expect("the billing database");
    let pid: i32 = billing.client().query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);

    let dir = tempfile::Builder::new().prefix("gyro-settle-pg-").tempdir().unwrap();
    let data = dir.path().join("data");
    let retry = gyro::settlement::RetryPolicy { base_ms: 1, cap_ms: 5, attempts_max: 8 };
    let cfg = SettlementConfig { retry, postgres: pg, ..SettlementConfig::default() };
    let node = Node::start_with(&data, CATALOG, cfg);
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never)).with_billing(billing);
    node.session("s-1", PREPAID);
    let steps = run_steps(&worker, 5).await;
    assert_eq!(steps.last(), Some(&Advanced::Done), "{steps:?}");

    // The server ends the worker's connection (a restart, a cut): the next settlement's rows
    // are written over a new connection, before its `Done`.
    admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.session("s-2", CARD);
    let steps = run_steps(&worker, 10).await;
    assert_eq!(steps.last(), Some(&Advanced::Done), "{steps:?}");
    assert!(node.engine.outbox().is_empty());
    admin.batch_execute(&format!("SET search_path TO \"{schema}\"")).await.unwrap();
    let rows = admin
        .query("SELECT i.status, p.outcome FROM invoices i JOIN payments p ON p.invoice_number = i.number ORDER BY i.number", &[])
        .await
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [("paid".to_owned(), "wallet".to_owned()), ("paid".to_owned(), "succeeded".to_owned())]);
    drop(worker);
    node.close();
    admin.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
}

/// A rough rate: `GYRO_SETTLE_RATE_SESSIONS` (default 200) sessions, half on the card, settled
/// by the worker's `run` in process. Ignored by default (it measures the disk's fsync more than gyro);
/// run with `cargo test --release --test settlement -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn settlement_rate_in_process() {
    let n: usize =
        std::env::var("GYRO_SETTLE_RATE_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::Builder::new().prefix("gyro-settle-rate-").tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data);
    for i in 0..n {
        node.session(&format!("rate-{i}"), if i % 2 == 0 { CARD } else { PREPAID });
    }
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    while !node.engine.outbox().is_empty() {
        assert!(started.elapsed() < SETTLE_MAX, "settled in time");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let stats = task.await.unwrap();
    println!("{n} settlements in {secs:.2} s: {:.0} a second ({stats:?})", n as f64 / secs);
    node.close();
}

/// `[settlement] aggregate = "day"`: sessions are folded as they come into one pending
/// settlement per account and day, which waits until the day has ended (plus the delay); then
/// each is one invoice with the sessions' lines summed, one charge for the card account; the
/// groups survive a restart between folding and settling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_sessions_is_one_invoice_per_account_and_survives_a_restart() {
    use gyro::settlement::Aggregate;
    let dir = tempfile::Builder::new().prefix("gyro-settle-day-").tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg =
        SettlementConfig { aggregate: Aggregate::Day, aggregate_delay_s: 900, ..SettlementConfig::default() };
    let node = Node::start_with(&data, CATALOG, cfg.clone());
    for (i, subscriber) in [CARD, PREPAID, CARD, PREPAID].into_iter().enumerate() {
        node.session(&format!("s-day-{i}"), subscriber);
    }
    let mut singles = node.engine.outbox().pending();
    assert_eq!(singles.len(), 4);
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never));
    assert_eq!(worker.next_ready(u64::MAX), None, "singles wait to be folded");
    assert_eq!(worker.fold_singles(), 2, "folded at once, one group per account");
    assert_eq!(node.engine.outbox().len(), 2);
    // A later session of the day joins its account's group.
    node.session("s-day-4", CARD);
    singles.extend(node.engine.outbox().pending().into_iter().filter(|p| p.sessions == 0));
    assert_eq!(worker.fold_singles(), 1);
    let groups = node.engine.outbox().pending();
    let mut sizes: Vec<u32> = groups.iter().map(|p| p.sessions).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![2, 3]);
    let end = (T0 / 86_400 + 1) * 86_400;
    for g in &groups {
        let members: i64 =
            singles.iter().filter(|p| p.entry.account == g.entry.account).map(|p| p.entry.debited().0).sum();
        assert_eq!(g.entry.debited().0, members, "the group sums its members");
        assert_eq!(g.entry.closed_unix_s, end, "dated at the period's end");
    }
    // Not settled before the day has ended and the delay passed.
    assert_eq!(worker.next_ready((end + 899) * 1000), None);
    assert!(worker.next_ready((end + 900) * 1000).is_some());
    drop(worker);
    node.close();

    // Restart: the groups come back from the journal, the members do not.
    let node = Node::start_with(&data, CATALOG, cfg);
    assert_eq!(node.engine.outbox().pending(), groups);
    let worker = node.worker(&data, Gateway::new(&data, Crash::Never));
    assert_eq!(worker.fold_singles(), 0, "nothing new to fold");
    run_steps(&worker, 20).await;
    assert!(node.engine.outbox().is_empty());
    drop(worker);
    let found = invoices(&data);
    assert_eq!(found.len(), 2, "{:?}", found.keys());
    assert_gapless(&found);
    let mut totals: Vec<i64> = found.values().map(collected).collect();
    totals.sort_unstable();
    let mut expected: Vec<i64> = groups.iter().map(|g| g.entry.debited().0).collect();
    expected.sort_unstable();
    assert_eq!(totals, expected, "Σ invoice totals = Σ session debits per account");
    let books = successes(&data);
    assert_eq!(books.len(), 1, "one charge, for the card account's day: {books:?}");
    let card = groups.iter().find(|g| g.sessions == 3).unwrap();
    assert_eq!(books.values().next().unwrap(), &(1, card.entry.debited().0));
    node.close();
}
