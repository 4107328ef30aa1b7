//! What a batch's `fdatasync` costs in a segment that grows as it is written against one that
//! was preallocated (zero-filled and synced ahead of time), on the directory TMPDIR names (the
//! system's temporary directory otherwise): run it on the file system the journal will use.
//!
//! 1. Files alone: 4 KiB written at the end + `fdatasync`, in a file that grows against one whose
//!    blocks were written with zeros and synced first (what the journal's spare thread does).
//! 2. The journal: one thread appends 4 KiB records and waits for each (so every batch is one
//!    write + one fdatasync), `preallocate` on against off, with 8 MiB segments so that the run
//!    crosses roll-overs and the spare thread fills spares while the writer syncs.
//!
//! The two layouts alternate, round after round, so that a drift of the (shared, virtual) disk
//! hits both alike. Run: `cargo bench --bench segment_sync`; `cargo test --benches` runs a few
//! batches of each as a smoke test.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use gyro::journal::{Journal, JournalConfig, JournalError, Lsn};

const BATCH_BYTES: usize = 4096;

type Done = Result<Lsn, JournalError>;

struct Sizes {
    rounds: usize,
    /// Batches per layout and round, files alone.
    file_batches: usize,
    /// Records per configuration and round, through the journal.
    journal_records: usize,
    segment_bytes: u64,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes { rounds: 3, file_batches: 3000, journal_records: 6000, segment_bytes: 8 << 20 }
    } else {
        Sizes { rounds: 1, file_batches: 20, journal_records: 40, segment_bytes: 64 << 10 }
    };
    let dir = tempfile::tempdir().unwrap();
    println!(
        "segment_sync: {BATCH_BYTES}-byte batches, write + fdatasync, in {}",
        dir.path().parent().unwrap_or(dir.path()).display()
    );
    let (mut growing, mut preallocated) = (Vec::new(), Vec::new());
    for _ in 0..sizes.rounds {
        growing.extend(file_batches(dir.path(), false, sizes.file_batches));
        preallocated.extend(file_batches(dir.path(), true, sizes.file_batches));
    }
    report("file, growing      ", &mut growing);
    report("file, preallocated ", &mut preallocated);
    let (mut growing, mut preallocated) = (Vec::new(), Vec::new());
    let (mut growing_stats, mut preallocated_stats) = ((0, 0), (0, 0));
    for _ in 0..sizes.rounds {
        let (l, s) = journal_batches(dir.path(), false, &sizes);
        growing.extend(l);
        growing_stats = (growing_stats.0 + s.0, growing_stats.1 + s.1);
        let (l, s) = journal_batches(dir.path(), true, &sizes);
        preallocated.extend(l);
        preallocated_stats = (preallocated_stats.0 + s.0, preallocated_stats.1 + s.1);
    }
    report("journal, growing     ", &mut growing);
    println!("    {} segments created, {} from a spare", growing_stats.0, growing_stats.1);
    report("journal, preallocated", &mut preallocated);
    println!("    {} segments created, {} from a spare", preallocated_stats.0, preallocated_stats.1);
}

/// Latencies of `n` batches written at the end of the data of a new file and synced.
fn file_batches(dir: &Path, preallocate: bool, n: usize) -> Vec<Duration> {
    let path = dir.join(if preallocate { "preallocated" } else { "growing" });
    let file: File = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    if preallocate {
        let zeros = vec![0u8; 1 << 20];
        let mut f = &file;
        let mut left = (n * BATCH_BYTES) as u64;
        while left > 0 {
            let k = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..k]).unwrap();
            left -= k as u64;
        }
        file.sync_all().unwrap();
    }
    let batch = [0x5au8; BATCH_BYTES];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        file.write_all_at(&batch, (i * BATCH_BYTES) as u64).unwrap();
        file.sync_data().unwrap();
        out.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path).unwrap();
    out
}

/// Latencies of appends of one `BATCH_BYTES` record each, every one waited for, and the
/// (segments created, of them from a spare).
fn journal_batches(dir: &Path, preallocate: bool, sizes: &Sizes) -> (Vec<Duration>, (u64, u64)) {
    let jdir = tempfile::tempdir_in(dir).unwrap();
    let cfg =
        JournalConfig { preallocate, segment_bytes: sizes.segment_bytes, ..JournalConfig::new(jdir.path()) };
    let (journal, _) = Journal::<Sender<Done>>::open(cfg, |_, _| Ok::<_, JournalError>(())).unwrap();
    let record = [0xa5u8; BATCH_BYTES - 16];
    let (tx, rx) = channel();
    let mut out = Vec::with_capacity(sizes.journal_records);
    for _ in 0..sizes.journal_records {
        let started = Instant::now();
        let lsn = journal.append(&record, tx.clone());
        assert_eq!(rx.recv().unwrap().unwrap(), lsn);
        out.push(started.elapsed());
    }
    let stats = journal.close().unwrap();
    assert_eq!(stats.batches, sizes.journal_records as u64);
    (out, (stats.segments_created, stats.segments_from_spare))
}

fn report(what: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| us(latencies[((latencies.len() - 1) as f64 * q) as usize]);
    let mean = latencies.iter().map(|d| us(*d)).sum::<f64>() / latencies.len() as f64;
    println!(
        "  {what}: {} batches, mean {mean:>6.0} µs, p50 {:>6.0} µs, p99 {:>6.0} µs, max {:>7.0} µs",
        latencies.len(),
        at(0.5),
        at(0.99),
        us(*latencies.last().unwrap())
    );
}
