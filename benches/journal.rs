//! Journal group commit: records per second and the mean batch size for 8 appending threads with
//! 100-byte records, `Fsync::Batch` against `Fsync::Off`, each thread keeping 1 record (a client
//! waiting for every answer) or 64 records (a busy connection) in flight; plus heap allocations
//! per append once the buffers have grown.
//!
//! Run: `cargo bench --bench journal` (3 s per case, in a temporary directory under the target
//! directory, so on the disk the journal would use rather than a tmpfs). `cargo test --benches`
//! runs each case with a few hundred records as a smoke test.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyro::journal::{Fsync, Journal, JournalConfig, JournalError, JournalStats, Lsn, Waiter};

#[path = "support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const THREADS: usize = 8;
const RECORD_BYTES: usize = 100;

type Done = Result<Lsn, JournalError>;

/// How long a case runs: a fixed time for `cargo bench`, a few records for the smoke test.
#[derive(Clone, Copy)]
enum Budget {
    Time(Duration),
    Records(u64),
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let budget = if full { Budget::Time(Duration::from_secs(3)) } else { Budget::Records(200) };
    println!("journal: {THREADS} threads, {RECORD_BYTES}-byte records");
    for fsync in [Fsync::Batch, Fsync::Off] {
        for window in [1usize, 64] {
            run_case(fsync, window, budget);
        }
    }
    allocations(if full { 200_000 } else { 5_000 });
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn run_case(fsync: Fsync, window: usize, budget: Budget) {
    let dir = tempdir();
    let cfg = JournalConfig { fsync, ..JournalConfig::new(dir.path()) };
    let (journal, _) = Journal::<Sender<Done>>::open(cfg, |_, _| Ok::<_, JournalError>(())).unwrap();
    let journal = Arc::new(journal);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (journal, stop) = (Arc::clone(&journal), Arc::clone(&stop));
            std::thread::spawn(move || append_loop(&journal, &stop, t as u8, window, budget))
        })
        .collect();
    if let Budget::Time(d) = budget {
        std::thread::sleep(d);
        stop.store(true, Ordering::Relaxed);
    }
    let records: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let elapsed = started.elapsed();
    let stats = Arc::into_inner(journal).unwrap().close().unwrap();
    assert_eq!(stats.records, records);
    report(fsync, window, records, elapsed, &stats);
}

/// Appends until told to stop (or the record budget is spent), keeping at most `window` records
/// unacknowledged; returns how many were acknowledged.
fn append_loop(
    journal: &Journal<Sender<Done>>,
    stop: &AtomicBool,
    t: u8,
    window: usize,
    budget: Budget,
) -> u64 {
    let (tx, rx) = channel();
    let record = [t; RECORD_BYTES];
    let (mut appended, mut acknowledged) = (0u64, 0u64);
    loop {
        let more = match budget {
            Budget::Time(_) => !stop.load(Ordering::Relaxed),
            Budget::Records(n) => appended < n,
        };
        if !more {
            break;
        }
        journal.append(&record, tx.clone());
        appended += 1;
        while appended - acknowledged >= window as u64 {
            rx.recv().unwrap().unwrap();
            acknowledged += 1;
        }
    }
    while acknowledged < appended {
        rx.recv().unwrap().unwrap();
        acknowledged += 1;
    }
    acknowledged
}

fn report(fsync: Fsync, window: usize, records: u64, elapsed: Duration, s: &JournalStats) {
    let rate = records as f64 / elapsed.as_secs_f64();
    let sync = match fsync {
        Fsync::Batch => format!(
            ", fsync mean {:.0} µs max {:.0} µs",
            s.mean_sync().as_secs_f64() * 1e6,
            s.sync_ns_max as f64 / 1e3
        ),
        Fsync::Off => String::new(),
    };
    println!(
        "  fsync {:<5} in flight {window:>2}/thread: {rate:>10.0} records/s, {} batches, mean batch {:.1} records{sync}",
        format!("{fsync:?}").to_lowercase(),
        s.batches,
        s.mean_batch_records()
    );
}

/// A waiter that only counts, so the allocations measured are the journal's own.
struct Count(Arc<AtomicU64>);

impl Waiter for Count {
    fn durable(self, result: Result<Lsn, JournalError>) {
        result.unwrap();
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Heap allocations per append on every thread (appender and writer) once the buffers have
/// grown: the same load twice, measured the second time.
fn allocations(n: u64) {
    let dir = tempdir();
    let cfg = JournalConfig { fsync: Fsync::Off, ..JournalConfig::new(dir.path()) };
    let (journal, _) = Journal::<Count>::open(cfg, |_, _| Ok::<_, JournalError>(())).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let record = [7u8; RECORD_BYTES];
    let mut measured = 0;
    for round in 0..2 {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for i in 0..n {
            journal.append(&record, Count(Arc::clone(&done)));
            // A bounded number in flight, like connections waiting for their answers.
            let appended = round * n + i + 1;
            while appended - done.load(Ordering::Acquire) >= 256 {
                std::thread::yield_now();
            }
        }
        while done.load(Ordering::Acquire) < (round + 1) * n {
            std::thread::yield_now();
        }
        measured = ALLOCATIONS.load(Ordering::Relaxed) - before;
    }
    journal.close().unwrap();
    println!(
        "  allocations per append in steady state: {:.4} ({measured} in {n} appends)",
        measured as f64 / n as f64
    );
    // A few buffer growths when a batch is larger than any before it, never one per append.
    assert!(measured as u64 * 100 <= n, "{measured} allocations in {n} appends");
}
