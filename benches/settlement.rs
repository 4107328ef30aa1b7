//! Settlement throughput (issue 6, Benchmarks): settled sessions per second with the sandbox
//! adapter, against the W3 mix's session termination rate it must keep up with.
//!
//! `cargo bench --bench settlement` terminates 20 000 sessions (CCR-I, CCR-T with 3 MiB; half on
//! prepaid accounts, half on on_file accounts with the sandbox's succeeding card) through the
//! engine into the outbox, with the journal as `gyro serve` runs it (fsync per batch) in a
//! directory under `$TMPDIR` (a disk, not tmpfs, for the number to mean anything). Then it
//! starts the settlement worker and times it until the outbox is empty. It prints settlements/s
//! and where the time goes: journal records and syncs per session (the worker waits for each
//! step record to be durable, except `Done`), the documents per session (each invoice file
//! and `.eml` is a temporary file renamed, unsynced, made durable by the worker's group
//! `syncfs` before `Done`; the sandbox syncs its books lines in groups), CPU time against wall
//! time, and a probe of one synced atomic write's latency on the same disk, for comparison. `cargo test --benches` runs 200 sessions. `GYRO_SETTLE_BENCH_SESSIONS` overrides
//! the count, `GYRO_SETTLE_BENCH_DIR` the parent directory (`/dev/shm` shows the rate without
//! the disk's fsync latency). `GYRO_SETTLE_BENCH_AGGREGATE=day` settles per account and day
//! instead (`[settlement] aggregate`): the worker's clock is two days on, so every session's
//! day has ended, and the rate is sessions settled per second through 1 000 day invoices.
//!
//! The rate to keep up with: W3 is CCR-I/U/T 1:8:1, so terminations/s = W3 answers/s ÷ 10; the
//! latest measured W3 rate is 140 200 answers/s (README, Performance).

#[path = "support/journaled.rs"]
mod journaled;
use journaled::{ccr, env, local, Journaling};

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gyro::catalog::Catalog;
use gyro::cc::{EngineConfig, Now};
use gyro::diameter::MessageRef;
use gyro::durable::{start, Sink};
use gyro::journal::JournalConfig;
use gyro::limits::SETTLEMENTS_IN_FLIGHT_MAX;
use gyro::settlement::payment::{test_instruments, SANDBOX_BOOKS_FILE};
use gyro::settlement::worker::{Clock, Output, Worker};
use gyro::settlement::{Aggregate, Sandbox, SettlementConfig};
use tokio_util::sync::CancellationToken;

/// README §Performance, W3 (CCR-I/U/T 1:8:1), the latest measured rate.
const W3_ANSWERS_PER_S: f64 = 140_200.0;
const W3_REQUESTS_PER_SESSION: f64 = 10.0;
const ACCOUNTS: usize = 1_000;
const NOW: Now = Now { mono_ms: 1_000, unix_secs: 1_800_000_000 };
const SETTLE_MAX: Duration = Duration::from_secs(3_600);

/// Even accounts prepaid, odd ones on_file with the sandbox's succeeding card.
fn catalog_text() -> String {
    let mut s = String::from(
        "[[plans]]\nid = \"p\"\nname = \"P\"\ncurrency = \"EUR\"\nvat_rate = \"0.19\"\n  [[plans.services]]\n  \
         name = \"data\"\n  contexts = [32251]\n  unit = \"octets\"\n  price = \"0.01\"\n  per = 1048576\n  \
         quota = 10485760\n\
         [[customers]]\nid = \"c-pre\"\nname = \"Pre Paid\"\nemail = \"pre@example.org\"\n\
         address = \"Main Street 1, 10115 Berlin, DE\"\nplan = \"p\"\n\
         [[customers]]\nid = \"c-card\"\nname = \"Card Holder\"\nemail = \"card@example.org\"\n\
         address = \"Main Street 2, 10115 Berlin, DE\"\nplan = \"p\"\n",
    );
    for i in 0..ACCOUNTS {
        let funding = if i % 2 == 0 {
            "customer = \"c-pre\"\nfunding = \"prepaid\"\nbalance = \"1000000.00\"".to_owned()
        } else {
            format!(
                "customer = \"c-card\"\nfunding = \"on_file\"\ncredit_limit = \"1000000.00\"\ncard = \"{}\"",
                test_instruments::CARD_SUCCEEDS
            )
        };
        s.push_str(&format!("[[accounts]]\n{funding}\nsubscription_ids = [\"e164:4917{i:08}\"]\n"));
    }
    s
}

/// This process's user and system CPU time in seconds, from `/proc/self/stat` (Linux; clock
/// ticks of 10 ms, the USER_HZ of every mainstream kernel). `None` elsewhere.
fn cpu_s() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3) here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / 100.0, stime / 100.0))
}

/// The latency of one synced atomic write as the worker makes it (temporary file, write, fsync,
/// rename, directory fsync) of `bytes` bytes in `dir`, one after the other, `n` times.
fn probe_atomic_write(dir: &Path, bytes: usize, n: usize) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let body = vec![b'x'; bytes];
    let t = Instant::now();
    for i in 0..n {
        let tmp = dir.join(format!(".probe-{i}.tmp"));
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&body).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::rename(&tmp, dir.join(format!("probe-{i}"))).unwrap();
        std::fs::File::open(dir).unwrap().sync_all().unwrap();
    }
    t.elapsed() / n as u32
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sessions = env("GYRO_SETTLE_BENCH_SESSIONS", if full { 20_000 } else { 200 });
    let parent = std::env::var_os("GYRO_SETTLE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::Builder::new().prefix("gyro-settle-bench-").tempdir_in(parent).unwrap();
    let data = dir.path().join("data");
    let text = catalog_text();
    let catalog = Catalog::from_toml("bench", &text).unwrap();
    let mut cfg = EngineConfig::new(&local());
    cfg.settle = true;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let started = start(&text, cfg, Some(JournalConfig::new(&data)), NOW).unwrap();
    let (journal, _) = started.journal.as_ref().unwrap();
    let engine = &started.engine;

    // 1. Terminate the sessions: the outbox fills (no worker yet).
    let t = Instant::now();
    let mut sink = Sink::new(journal, None);
    let (mut req, mut out) = (BytesMut::new(), BytesMut::new());
    for s in 0..sessions {
        let msisdn = format!("4917{:08}", s % ACCOUNTS);
        let session = format!("pgw;bench;{s}");
        for (kind, number) in [(1, 0), (3, 1)] {
            ccr(&mut req, &session, &msisdn, kind, number, if kind == 3 { 3 * 1_048_576 } else { 0 });
            out.clear();
            engine.handle_with(NOW, &MessageRef::parse(&req).unwrap(), &mut out, &mut Journaling(&mut sink));
        }
    }
    journal.wait_durable(sink.lsn.unwrap()).unwrap();
    let terminate_s = t.elapsed().as_secs_f64();
    assert_eq!(engine.outbox().len(), sessions, "one settlement per session");

    // 2. The worker settles them all.
    let sandbox = Sandbox::with_books(&data.join(SANDBOX_BOOKS_FILE)).unwrap();
    let aggregate = std::env::var("GYRO_SETTLE_BENCH_AGGREGATE").is_ok_and(|v| v == "day");
    let clock: Clock = if aggregate {
        Arc::new(|| NOW.unix_secs + 2 * 86_400)
    } else {
        Arc::new(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
        })
    };
    let settlement = SettlementConfig {
        aggregate: if aggregate { Aggregate::Day } else { Aggregate::Session },
        ..SettlementConfig::default()
    };
    let sandbox = Arc::new(sandbox);
    let output = Output::in_data_dir(&data).unwrap();
    let docs = Arc::clone(&output.docs);
    let worker = Worker::new(
        Arc::clone(engine.outbox()),
        Arc::clone(engine.ledger()),
        Arc::clone(journal),
        Arc::clone(&sandbox),
        catalog.clone(),
        settlement,
        output,
        clock,
    );
    let before = journal.stats();
    let cpu_before = cpu_s();
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    let task = runtime.spawn(worker.run(shutdown.clone()));
    runtime.block_on(async {
        while !engine.outbox().is_empty() {
            assert!(t.elapsed() < SETTLE_MAX, "{} still pending", engine.outbox().len());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let settle_s = t.elapsed().as_secs_f64();
    let cpu = cpu_s().zip(cpu_before).map(|(a, b)| (a.0 - b.0, a.1 - b.1));
    shutdown.cancel();
    let stats = runtime.block_on(task).unwrap();
    let after = journal.stats();
    let invoices = stats.settled as usize;
    if aggregate {
        assert_eq!(invoices, sessions.min(ACCOUNTS), "one invoice per account and day");
    } else {
        assert_eq!(invoices, sessions);
    }
    assert_eq!(stats.failed, 0);

    // 3. Report.
    let n = sessions as f64;
    let rate = n / settle_s;
    let needed = W3_ANSWERS_PER_S / W3_REQUESTS_PER_SESSION;
    let syncs = after.syncs - before.syncs;
    let records = after.records - before.records;
    // Per settlement: the invoice's JSON and XML and each e-mail are one file each (temporary
    // name, renamed, unsynced), made durable by the worker's group `syncfs`; the sandbox's
    // books lines are synced in groups too.
    let documents = stats.invoices_written * 2 + stats.emails_written;
    let (doc_syncs, books_syncs) = (docs.syncs(), sandbox.books_syncs());
    let probe = probe_atomic_write(&dir.path().join("probe"), 4_096, if full { 200 } else { 20 });
    println!(
        "settlement: {sessions} sessions (half prepaid, half on_file card) terminated in {terminate_s:.2} s; \
         settled in {settle_s:.2} s: {rate:.0} sessions/s as {invoices} invoices ({}; {SETTLEMENTS_IN_FLIGHT_MAX} in flight) in {}",
        if aggregate { "per account and day" } else { "per session" },
        data.display()
    );
    println!(
        "  needed: W3 at {W3_ANSWERS_PER_S:.0} answers/s ÷ {W3_REQUESTS_PER_SESSION:.0} = {needed:.0} terminations/s; \
         settlement keeps up: {} ({:.1} % of the rate)",
        if needed <= rate { "yes" } else { "no" },
        100.0 * rate / needed
    );
    println!(
        "  journal: {:.2} step records and {:.2} fdatasyncs per session ({syncs} syncs, {:.2} ms each on \
         average, {:.0} % of the wall time in fdatasync), {:.1} records per batch",
        records as f64 / n,
        syncs as f64 / n,
        (after.sync_ns_sum - before.sync_ns_sum) as f64 / syncs.max(1) as f64 / 1e6,
        100.0 * (after.sync_ns_sum - before.sync_ns_sum) as f64 / 1e9 / settle_s,
        records as f64 / (after.batches - before.batches).max(1) as f64,
    );
    println!(
        "  files: {:.2} documents (invoice JSON + XML, e-mails) per session, made durable by {doc_syncs} \
         syncfs ({:.1} settlements each); {books_syncs} books syncs for {} charges; one synced atomic \
         4 KiB write alone takes {:.2} ms on this disk",
        documents as f64 / n,
        n / doc_syncs.max(1) as f64,
        stats.charge_attempts,
        probe.as_secs_f64() * 1e3,
    );
    if let Some((user, system)) = cpu {
        println!(
            "  CPU: {:.2} s ({user:.2} s user, {system:.2} s system) over {settle_s:.2} s of wall time \
             ({:.0} % of one core; {:.0} µs per session, {:.0} µs of it in the kernel)",
            user + system,
            100.0 * (user + system) / settle_s,
            (user + system) / n * 1e6,
            system / n * 1e6,
        );
    }
    println!("  worker: {stats:?}");
    drop(started);
}
