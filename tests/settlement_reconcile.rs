//! Reconciliation (issue 6, Tests): over many random sessions and events, settled by the worker,
//! the money agrees to the cent everywhere it is written down.
//!
//! `every_cent_debited_is_invoiced_and_collected`: random accounts (prepaid, and on_file with
//! the sandbox's succeeding cards, SEPA account, and the cards that fail transiently or lose the
//! first reply before they succeed) on three plans (VAT 19 %, 7 %, 0 %; per-MiB, per-minute with
//! a connect fee, per-event prices, sub-cent rates) run interleaved sessions through the
//! in-process engine: CCR-I, up to three CCR-U and a CCR-T, each with usage on a random subset
//! of three rating groups, and CCR-E direct debits between them. Then the worker settles
//! everything, and:
//!
//! - Σ debits three ways — the engine's answers (CCA-T and CCA-E Cost-Information), the
//!   ledger (balance deltas with no reservation left) and the outbox entries — are equal;
//! - every session and event that debited money has exactly one invoice (by settlement key),
//!   whose total (BT-112 + BT-114, read back from the JSON file) is its debit; Σ invoice totals
//!   = Σ debits; numbers run 1..N;
//! - Σ charged (the sandbox's books: one success per on_file invoice, of its total) + Σ paid
//!   from wallets (prepaid invoices) = Σ debits; every invoice is paid (BT-115 = 0);
//! - the on_file accounts' credit lines are whole again, the prepaid balances untouched by
//!   settlement, and the ledger conserves money.
//!
//! `GYRO_RECONCILE_SESSIONS` (default 2 000) sets the number of sessions (events add about a
//! tenth), `GYRO_RECONCILE_SEED` the seed (printed). The data directory is on `/dev/shm` when it
//! exists: this test checks sums, not durability, and tmpfs keeps its many fsyncs cheap.

#![cfg(unix)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gyro::catalog::{Catalog, Funding, SubscriptionKind};
use gyro::cc::{Engine, EngineConfig, Now, RecordSink};
use gyro::diameter::encode::spec;
use gyro::diameter::{ApplicationId, AvpSpec, CommandCode, CommandFlags, Encoder, VendorId};
use gyro::durable::{self, ChargingJournal, Sink};
use gyro::journal::JournalConfig;
use gyro::ledger::{AccountId, AccountView};
use gyro::settlement::payment::{read_books, test_instruments as t, ChargeOutcome, SANDBOX_BOOKS_FILE};
use gyro::settlement::worker::{Output, Worker};
use gyro::settlement::{RetryPolicy, Sandbox, SettlementConfig};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

#[path = "common/answers.rs"]
mod answers;
use answers::{local, msg, result_code};

const SESSIONS_DEFAULT: usize = 2_000;
const ACCOUNTS: usize = 48;
/// Sessions open at once (their CCRs interleave).
const OPEN_MAX: usize = 64;
const SETTLE_MAX: Duration = Duration::from_secs(300);
const T0: u64 = 1_800_000_000;

const INITIAL: u32 = 1;
const UPDATE: u32 = 2;
const TERMINATE: u32 = 3;
const EVENT: u32 = 4;
const DIRECT_DEBITING: u32 = 0;
const GY: u32 = 32251;
const SMS: u32 = 32274;

/// The rating groups of every plan: data, video (octets), voice (time).
const RATING_GROUPS: [u32; 3] = [10, 20, 30];
const DATA_QUOTA: u64 = 20 * 1_048_576;
const VOICE_QUOTA: u64 = 900;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cent_debited_is_invoiced_and_collected() {
    let sessions = env("GYRO_RECONCILE_SESSIONS", SESSIONS_DEFAULT);
    let seed = std::env::var("GYRO_RECONCILE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("GYRO_RECONCILE_SEED={seed} GYRO_RECONCILE_SESSIONS={sessions}");
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let text = catalog_text();
    let node = Node::start(&data, &text);

    // 1. Traffic, with no worker yet: what the engine debited, by its answers and its ledger.
    let opening = node.views();
    let started = Instant::now();
    let traffic = Traffic::run(&node, sessions, &mut Rng(seed));
    println!("traffic: {traffic:?} in {:.1} s", started.elapsed().as_secs_f64());
    let before = node.views();
    let ledger_debits: i64 = opening
        .iter()
        .zip(&before)
        .map(|(o, b)| {
            assert_eq!(b.reserved.0, 0, "seed {seed}: no reservation left on {b:?}");
            o.balance.0 - b.balance.0
        })
        .sum();
    let pending = node.engine.outbox().pending();
    let outbox_debits: i64 = pending.iter().map(|p| p.entry.debited().0).sum();
    assert_eq!(traffic.answered_cost, ledger_debits, "seed {seed}: answers and ledger");
    assert_eq!(outbox_debits, ledger_debits, "seed {seed}: outbox and ledger");
    assert_eq!(pending.len(), traffic.costly, "seed {seed}: one settlement per debiting session or event");
    assert_eq!(node.engine.outbox().stats().dropped, 0);

    // 2. The worker settles all of it.
    let started = Instant::now();
    let stats = node.settle_all().await;
    let settle_s = started.elapsed().as_secs_f64();
    println!(
        "settled {} in {settle_s:.1} s ({:.0}/s): {stats:?}",
        pending.len(),
        pending.len() as f64 / settle_s
    );
    assert_eq!(stats.settled as usize, pending.len(), "seed {seed}");
    assert_eq!(stats.failed, 0, "seed {seed}");

    // 3. What was written down: invoices, the gateway's books, the ledger.
    let by_key: HashMap<String, &gyro::settlement::outbox::Pending> =
        pending.iter().map(|p| (p.entry.key.to_string(), p)).collect();
    let funding = |account: u32| before[account as usize].funding;
    let found = invoices(&data);
    assert_eq!(found.len(), pending.len(), "seed {seed}: one invoice per settlement");
    assert_gapless(&found);
    let mut keys = HashSet::new();
    let (mut invoiced, mut wallet, mut on_file) = (0i64, 0i64, HashMap::new());
    let (mut multi_line, mut rounded, mut rates) = (0, 0, HashSet::new());
    for (number, v) in &found {
        multi_line += usize::from(1 < v["lines"].as_array().unwrap().len());
        rounded += usize::from(amount(&v["totals"]["rounding_amount"]) != 0);
        rates.extend(
            v["vat_breakdown"].as_array().unwrap().iter().map(|b| b["percent"].as_str().unwrap().to_owned()),
        );
        let key = v["settlement_key"].as_str().unwrap();
        assert!(keys.insert(key.to_owned()), "seed {seed}: {key} invoiced twice");
        let p = by_key.get(key).unwrap_or_else(|| panic!("seed {seed}: {number} settles no known {key}"));
        let total = collected(v);
        assert_eq!(total, p.entry.debited().0, "seed {seed}: {number} against its debit");
        assert_eq!(amount(&v["totals"]["payable_amount"]), 0, "seed {seed}: {number} is paid");
        assert_eq!(amount(&v["totals"]["paid_amount"]), total, "seed {seed}: {number}");
        invoiced += total;
        match funding(p.entry.account) {
            Funding::Prepaid => wallet += total,
            Funding::OnFile => {
                on_file.insert(key.to_owned(), (number.clone(), total));
            }
        }
    }
    assert_eq!(invoiced, ledger_debits, "seed {seed}: Σ invoice totals = Σ debits");
    // The mix covered what makes sums drift: several lines, VAT rates, a rounding amount.
    println!("{multi_line} invoices of several lines, {rounded} with a rounding amount, VAT rates {rates:?}");
    assert!(0 < multi_line && rates.len() == 3, "seed {seed}");

    let mut charges: HashMap<String, (usize, i64)> = HashMap::new();
    for (line, _) in read_books(&data.join(SANDBOX_BOOKS_FILE)).unwrap() {
        assert!(matches!(line.outcome, ChargeOutcome::Succeeded { .. }), "seed {seed}: {line:?}");
        let c = charges.entry(line.key.0).or_default();
        c.0 += 1;
        c.1 += line.amount.0;
    }
    assert_eq!(charges.len(), on_file.len(), "seed {seed}: one charge per on_file invoice");
    for (key, (number, total)) in &on_file {
        assert_eq!(charges.get(key), Some(&(1, *total)), "seed {seed}: {number} charged once, its total");
    }
    let charged: i64 = charges.values().map(|c| c.1).sum();
    assert_eq!(charged + wallet, ledger_debits, "seed {seed}: Σ charged + Σ wallet = Σ debits");
    assert!(stats.charge_attempts as usize > on_file.len(), "seed {seed}: retries happened: {stats:?}");

    let after = node.views();
    for ((o, b), a) in opening.iter().zip(&before).zip(&after) {
        match a.funding {
            Funding::OnFile => assert_eq!(a.balance, o.balance, "seed {seed}: credit line whole: {a:?}"),
            Funding::Prepaid => assert_eq!(a.balance, b.balance, "seed {seed}: wallet untouched: {a:?}"),
        }
    }
    assert!(node.engine.ledger().check_conservation(), "seed {seed}");
    println!(
        "reconciled: {} invoices, Σ debits = Σ invoices = {} cents = {charged} charged + {wallet} from wallets",
        found.len(),
        invoiced
    );
    node.close();
}

// ---------------------------------------------------------------------------------------------
// The catalog

fn catalog_text() -> String {
    let mut s = String::new();
    for (plan, vat, data, video, minute, fee, sms) in [
        ("std", "0.19", "0.01", "0.013", "0.09", "0.05", "0.05"),
        ("reduced", "0.07", "0.007", "0.02", "0.12", "0.10", "0.03"),
        ("zero", "0", "0.015", "0.004", "0.06", "0", "0.11"),
    ] {
        s.push_str(&format!(
            "[[plans]]\nid = \"{plan}\"\nname = \"{plan}\"\ncurrency = \"EUR\"\nvat_rate = \"{vat}\"\n\n\
             [[plans.services]]\nname = \"data\"\ncontexts = [{GY}]\nrating_groups = [10]\nunit = \"octets\"\n\
             price = \"{data}\"\nper = 1048576\nquota = {DATA_QUOTA}\n\n\
             [[plans.services]]\nname = \"video\"\ncontexts = [{GY}]\nrating_groups = [20]\nunit = \"octets\"\n\
             price = \"{video}\"\nper = 1048576\nincrement = 102400\nquota = {DATA_QUOTA}\n\n\
             [[plans.services]]\nname = \"voice\"\ncontexts = [{GY}]\nrating_groups = [30]\nunit = \"time\"\n\
             price = \"{minute}\"\nper = 60\nincrement = 1\nfirst_increment = 60\nconnect_fee = \"{fee}\"\n\
             quota = {VOICE_QUOTA}\n\n\
             [[plans.services]]\nname = \"sms\"\ncontexts = [{SMS}]\nunit = \"events\"\nprice = \"{sms}\"\n\
             quota = 1\n\n"
        ));
    }
    let plans = ["std", "reduced", "zero"];
    for i in 0..ACCOUNTS {
        let plan = plans[i % plans.len()];
        s.push_str(&format!(
            "[[customers]]\nid = \"c-{i}\"\nname = \"Customer {i}\"\nemail = \"c{i}@example.org\"\n\
             address = \"Street {i}, 10115 Berlin, DE\"\nplan = \"{plan}\"\n\n\
             [[accounts]]\ncustomer = \"c-{i}\"\nsubscription_ids = [\"e164:{}\"]\n{}\n\n",
            msisdn(i),
            payment(i)
        ));
    }
    s
}

fn msisdn(account: usize) -> String {
    format!("4917200{account:05}")
}

/// Every other account prepaid; the on_file ones cycle through the sandbox's instruments that
/// end in a success.
fn payment(account: usize) -> String {
    let limit = "credit_limit = \"1000000.00\"\nfunding = \"on_file\"";
    match account % 10 {
        0 | 2 | 4 | 6 | 8 => "funding = \"prepaid\"\nbalance = \"1000000.00\"".into(),
        1 | 9 => format!("{limit}\ncard = \"{}\"", t::CARD_SUCCEEDS),
        3 => format!("{limit}\ncard = \"{}\"", t::CARD_MASTERCARD_SUCCEEDS),
        5 => format!("{limit}\niban = \"{}\"\nmandate = \"M-{account}\"", t::IBAN_SUCCEEDS),
        _ if account % 20 == 7 => format!("{limit}\ncard = \"{}\"", t::CARD_TRANSIENT),
        _ => format!("{limit}\ncard = \"{}\"", t::CARD_LOST_REPLY),
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic

#[derive(Debug, Default)]
struct Traffic {
    sessions: usize,
    events: usize,
    requests: usize,
    /// Σ Cost-Information of the CCA-Ts and CCA-Es, in cents.
    answered_cost: i64,
    /// Sessions and events that cost something (each is one settlement).
    costly: usize,
}

/// An open session: its account, rating groups and the next CC-Request-Number.
struct Open {
    id: String,
    account: usize,
    rgs: Vec<u32>,
    number: u32,
    updates_left: u32,
}

impl Traffic {
    fn run(node: &Node, sessions: usize, rng: &mut Rng) -> Self {
        let mut traffic = Self::default();
        let mut open: Vec<Open> = Vec::new();
        let mut clock = T0;
        while traffic.sessions < sessions || !open.is_empty() {
            traffic.requests += 1;
            if traffic.requests % 128 == 0 {
                clock += 1;
            }
            let now = Now { mono_ms: (clock - T0 + 1) * 1_000, unix_secs: clock };
            let start = traffic.sessions < sessions && (open.len() < OPEN_MAX / 2 || rng.below(4) == 0);
            if start && rng.below(10) == 0 {
                traffic.event(node, now, rng);
            } else if start && open.len() < OPEN_MAX {
                open.push(traffic.initial(node, now, rng));
            } else if !open.is_empty() {
                let i = rng.below(open.len() as u64) as usize;
                if open[i].updates_left == 0 {
                    let session = open.swap_remove(i);
                    traffic.terminate(node, now, session, rng);
                } else {
                    open[i].updates_left -= 1;
                    let (a, _) = node.call(now, &Ccr::of(&open[i], UPDATE, usage(&open[i].rgs, rng)));
                    assert_eq!(result_code(&a), 2001, "CCR-U of {}", open[i].id);
                    open[i].number += 1;
                }
            }
        }
        traffic
    }

    fn initial(&mut self, node: &Node, now: Now, rng: &mut Rng) -> Open {
        let account = rng.below(ACCOUNTS as u64) as usize;
        let mut rgs: Vec<u32> = RATING_GROUPS.iter().copied().filter(|_| rng.below(2) == 0).collect();
        if rgs.is_empty() {
            rgs.push(RATING_GROUPS[rng.below(3) as usize]);
        }
        let session = Open {
            id: format!("pgw.test;{};{}", self.sessions, rng.below(1 << 32)),
            account,
            rgs,
            number: 0,
            updates_left: rng.below(4) as u32,
        };
        self.sessions += 1;
        let (a, _) = node.call(now, &Ccr::of(&session, INITIAL, Vec::new()));
        assert_eq!(result_code(&a), 2001, "CCR-I of {}", session.id);
        Open { number: 1, ..session }
    }

    fn terminate(&mut self, node: &Node, now: Now, session: Open, rng: &mut Rng) {
        let (a, _) = node.call(now, &Ccr::of(&session, TERMINATE, usage(&session.rgs, rng)));
        assert_eq!(result_code(&a), 2001, "CCR-T of {}", session.id);
        self.count(cost(&a));
    }

    fn event(&mut self, node: &Node, now: Now, rng: &mut Rng) {
        self.events += 1;
        let ccr = Ccr {
            session: format!("smsc.test;{};{}", self.events, rng.below(1 << 32)),
            request_type: EVENT,
            number: 0,
            msisdn: msisdn(rng.below(ACCOUNTS as u64) as usize),
            context: SMS,
            mscc: Vec::new(),
            events: Some(1 + rng.below(5)),
        };
        let (a, _) = node.call(now, &ccr);
        assert_eq!(result_code(&a), 2001, "CCR-E {}", ccr.session);
        self.count(cost(&a));
    }

    fn count(&mut self, cost: i64) {
        self.answered_cost += cost;
        if 0 < cost {
            self.costly += 1;
        }
    }
}

/// Random usage per rating group, within the grant (often nothing on some).
fn usage(rgs: &[u32], rng: &mut Rng) -> Vec<(u32, u64)> {
    rgs.iter()
        .map(|&rg| {
            let quota = if rg == 30 { VOICE_QUOTA } else { DATA_QUOTA };
            let used = match rng.below(8) {
                0 => 0,
                1 => quota,
                _ => rng.below(quota + 1),
            };
            (rg, used)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Requests and answers

struct Ccr {
    session: String,
    request_type: u32,
    number: u32,
    msisdn: String,
    context: u32,
    /// (rating group, used units) per MSCC; CCR-I and CCR-U also request units for each.
    mscc: Vec<(u32, u64)>,
    /// CCR-E: the events requested (single-service form).
    events: Option<u64>,
}

fn avp(code: u32) -> AvpSpec {
    AvpSpec::mandatory(code)
}

impl Ccr {
    fn of(session: &Open, request_type: u32, used: Vec<(u32, u64)>) -> Self {
        let mscc = if used.is_empty() { session.rgs.iter().map(|&rg| (rg, 0)).collect() } else { used };
        Self {
            session: session.id.clone(),
            request_type,
            number: session.number,
            msisdn: msisdn(session.account),
            context: GY,
            mscc,
            events: None,
        }
    }

    fn encode(&self, hop_by_hop: u32) -> Bytes {
        let mut b = BytesMut::new();
        let flags = CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE);
        let (command, app) = (CommandCode::CREDIT_CONTROL, ApplicationId::CREDIT_CONTROL);
        let mut e = Encoder::new(&mut b, flags, command, app, hop_by_hop, hop_by_hop);
        e.str(spec::SESSION_ID, &self.session);
        e.str(spec::ORIGIN_HOST, "pgw.test");
        e.str(spec::ORIGIN_REALM, "test");
        e.str(spec::DESTINATION_REALM, "localdomain");
        e.u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(avp(461), &format!("{}@3gpp.org", self.context));
        e.u32(avp(416), self.request_type);
        e.u32(avp(415), self.number);
        let g = e.begin_group(avp(443));
        e.u32(avp(450), SubscriptionKind::E164 as u32);
        e.str(avp(444), &self.msisdn);
        e.end_group(g);
        if let Some(n) = self.events {
            e.u32(avp(436), DIRECT_DEBITING);
            let g = e.begin_group(avp(437));
            e.u64(avp(417), n);
            e.end_group(g);
        }
        if self.request_type == TERMINATE {
            e.u32(avp(295), 1);
        }
        if !self.mscc.is_empty() {
            e.u32(avp(455), 1);
        }
        for &(rg, used) in &self.mscc {
            let g = e.begin_group(avp(456));
            if self.request_type != TERMINATE {
                let r = e.begin_group(avp(437));
                e.end_group(r);
            }
            if self.request_type != INITIAL {
                let u = e.begin_group(avp(446));
                // CC-Time for voice, CC-Total-Octets for data and video.
                e.u64(avp(if rg == 30 { 420 } else { 421 }), used);
                e.end_group(u);
            }
            e.u32(avp(432), rg);
            e.end_group(g);
        }
        e.finish();
        b.freeze()
    }
}

/// Cost-Information in cents (0 when the answer has none: nothing was charged).
fn cost(a: &[u8]) -> i64 {
    let m = msg(a);
    let Some(ci) = m.avps().map_while(Result::ok).find(|m| m.code.0 == 423 && m.vendor == VendorId::IETF)
    else {
        return 0;
    };
    let uv = ci.members().map_while(Result::ok).find(|u| u.code.0 == 445).expect("Unit-Value");
    let (mut digits, mut exponent) = (0i64, 0i32);
    for x in uv.members().map_while(Result::ok) {
        match x.code.0 {
            447 => digits = i64::from_be_bytes(x.data.try_into().unwrap()),
            429 => exponent = i32::from_be_bytes(x.data.try_into().unwrap()),
            _ => {}
        }
    }
    assert_eq!(exponent, -2, "EUR amounts in cents");
    digits
}

// ---------------------------------------------------------------------------------------------
// The node: engine, journal, worker

struct Node {
    engine: Arc<Engine>,
    journal: Arc<ChargingJournal>,
    catalog: Catalog,
    data: PathBuf,
    hop_by_hop: std::sync::atomic::AtomicU32,
}

/// Keeps the answer the journal sink holds back until its record is durable.
struct Keep<'a>(Sink<'a>, Option<Bytes>);

impl RecordSink for Keep<'_> {
    fn append(&mut self, record: &[u8], answer: &[u8]) -> bool {
        self.0.append(record, answer);
        self.1 = Some(Bytes::copy_from_slice(answer));
        true
    }
}

impl Node {
    fn start(data: &Path, text: &str) -> Self {
        let catalog = Catalog::from_toml("catalog.toml", text).unwrap_or_else(|e| panic!("{e:#}"));
        let mut cfg = EngineConfig::new(&local());
        cfg.settle = true;
        let now = Now { mono_ms: 1_000, unix_secs: T0 };
        let started = durable::start(text, cfg, Some(JournalConfig::new(data)), now).unwrap();
        let (journal, _) = started.journal.expect("a journal");
        Self {
            engine: started.engine,
            journal,
            catalog,
            data: data.to_owned(),
            hop_by_hop: std::sync::atomic::AtomicU32::new(1),
        }
    }

    fn call(&self, now: Now, ccr: &Ccr) -> (Bytes, Bytes) {
        let hop_by_hop = self.hop_by_hop.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = ccr.encode(hop_by_hop);
        let mut out = BytesMut::new();
        let mut keep = Keep(Sink::new(&self.journal, None), None);
        let answer = if self.engine.handle_with(now, &msg(&req), &mut out, &mut keep) {
            keep.1.expect("the held answer")
        } else {
            out.freeze()
        };
        (answer, req)
    }

    fn views(&self) -> Vec<AccountView> {
        (0..ACCOUNTS as u32).map(|a| self.engine.ledger().view(AccountId(a)).expect("an account")).collect()
    }

    /// Runs the worker (with the sandbox keeping books in the data directory) until the outbox
    /// is empty.
    async fn settle_all(&self) -> gyro::settlement::worker::WorkerStats {
        let sandbox = Sandbox::with_books(&self.data.join(SANDBOX_BOOKS_FILE)).unwrap();
        let retry = RetryPolicy { base_ms: 1, cap_ms: 5, attempts_max: 8 };
        let cfg = SettlementConfig { retry, ..SettlementConfig::default() };
        let clock: gyro::settlement::worker::Clock = Arc::new(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        });
        let worker = Worker::new(
            Arc::clone(self.engine.outbox()),
            Arc::clone(self.engine.ledger()),
            Arc::clone(&self.journal),
            Arc::new(sandbox),
            self.catalog.clone(),
            cfg,
            Output::in_data_dir(&self.data).unwrap(),
            clock,
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        let started = Instant::now();
        while !self.engine.outbox().is_empty() {
            assert!(started.elapsed() < SETTLE_MAX, "{} still pending", self.engine.outbox().len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        task.await.expect("the worker ends")
    }

    fn close(self) {
        drop(self.engine);
        let journal = Arc::try_unwrap(self.journal).ok().expect("nothing else holds the journal");
        journal.close().expect("the journal closes cleanly");
    }
}

// ---------------------------------------------------------------------------------------------
// Files and helpers

/// On tmpfs when there is one (see the module doc).
fn scratch_dir() -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix("gyro-reconcile-");
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = b.tempdir_in(shm) {
            return d;
        }
    }
    b.tempdir().unwrap()
}

/// Invoice JSON by number.
fn invoices(data: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(data.join("invoices")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            out.insert(v["number"].as_str().unwrap().to_owned(), v);
        }
    }
    out
}

/// "12.34" (or "-0.01") → cents.
fn amount(v: &serde_json::Value) -> i64 {
    let d: Decimal = v.as_str().expect("an amount as text").parse().expect("a decimal");
    let cents = d * Decimal::ONE_HUNDRED;
    assert!(cents.fract().is_zero(), "{v}: whole cents");
    i64::try_from(cents).expect("fits")
}

/// What an invoice collected (BT-112 + BT-114), in cents.
fn collected(invoice: &serde_json::Value) -> i64 {
    let t = &invoice["totals"];
    amount(&t["tax_inclusive_amount"]) + amount(&t["rounding_amount"])
}

/// Numbers `…-000001..N`, each once.
fn assert_gapless(invoices: &BTreeMap<String, serde_json::Value>) {
    for (i, number) in invoices.keys().enumerate() {
        assert!(number.ends_with(&format!("-{:06}", i + 1)), "numbers run without a gap: {number} at {i}");
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
