//! Recovery time: start-up on a data directory whose journal holds many records, for many
//! accounts (the durability issue's target: 1 M accounts and 10 M records in under 10 s).
//!
//! `cargo bench --bench recovery` writes 1 M accounts' catalog and 10 M records (CCR-I, CCR-U
//! with usage and a new grant, CCR-T: the engine's own records, through the real journal with
//! fsync off, which changes how fast they are written, not what is written), then times
//! `durable::start` on the directory: catalog load, journal scan and replay. It also times a
//! checkpoint and the start-up from that snapshot. `cargo test --benches` runs a small size.
//! GYRO_RECOVERY_ACCOUNTS and GYRO_RECOVERY_RECORDS override the sizes.

#[path = "support/journaled.rs"]
mod journaled;
use journaled::{catalog_text, ccr, env, local, Journaling};

use std::time::Instant;

use bytes::BytesMut;
use gyro::cc::{EngineConfig, Now};
use gyro::diameter::MessageRef;
use gyro::durable::{checkpoint, start, Sink};
use gyro::journal::{Fsync, JournalConfig};

const NOW: Now = Now { mono_ms: 1_000, unix_secs: 1_796_000_000 };

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let accounts = env("GYRO_RECOVERY_ACCOUNTS", if full { 1_000_000 } else { 1_000 });
    let records = env("GYRO_RECOVERY_RECORDS", if full { 10_000_000 } else { 10_000 });
    let dir = tempfile::tempdir().unwrap();
    let text = catalog_text(accounts);
    let journal_cfg = || JournalConfig { fsync: Fsync::Off, ..JournalConfig::new(dir.path()) };

    // Write: sessions of 10 records each (I, 8 × U, T), round robin over the accounts.
    let t = Instant::now();
    let started = start(&text, EngineConfig::new(&local()), Some(journal_cfg()), NOW).unwrap();
    let (journal, _) = started.journal.as_ref().unwrap();
    let mut sink = Sink::new(journal, None);
    let mut req = BytesMut::new();
    let mut out = BytesMut::new();
    let msisdns: Vec<String> = (0..accounts).map(|i| format!("4917{i:08}")).collect();
    let sessions = records.div_ceil(10);
    let mut written = 0usize;
    'all: for round in 0..sessions.div_ceil(accounts) {
        for (a, msisdn) in msisdns.iter().enumerate() {
            let session = format!("pgw;{round};{a}");
            for (kind, number) in [(1, 0)].into_iter().chain((1..=8).map(|n| (2, n))).chain([(3, 9)]) {
                ccr(&mut req, &session, msisdn, kind, number, if kind == 1 { 0 } else { 1_048_576 });
                out.clear();
                started.engine.handle_with(
                    NOW,
                    &MessageRef::parse(&req).unwrap(),
                    &mut out,
                    &mut Journaling(&mut sink),
                );
                written += 1;
                if written == records {
                    break 'all;
                }
            }
        }
    }
    journal.wait_durable(sink.lsn.unwrap()).unwrap();
    let appended = journal.stats();
    let write_s = t.elapsed().as_secs_f64();
    drop(started);

    // Recover: catalog + every record.
    let t = Instant::now();
    let recovered = start(&text, EngineConfig::new(&local()), Some(journal_cfg()), NOW).unwrap();
    let recover_s = t.elapsed().as_secs_f64();
    let (journal, report) = recovered.journal.as_ref().unwrap();
    assert_eq!(report.records_replayed, appended.records);
    assert!(recovered.engine.ledger().check_conservation());

    // Checkpoint, then recover from the snapshot.
    let t = Instant::now();
    let snap = checkpoint(journal, &recovered.engine_cfg, 1, NOW).unwrap().unwrap();
    let checkpoint_s = t.elapsed().as_secs_f64();
    drop(recovered);
    let t = Instant::now();
    let from_snapshot = start(&text, EngineConfig::new(&local()), Some(journal_cfg()), NOW).unwrap();
    let from_snapshot_s = t.elapsed().as_secs_f64();
    assert_eq!(from_snapshot.journal.as_ref().unwrap().1.records_replayed, 0);

    println!(
        "recovery: {accounts} accounts, {} records ({:.0} MB journal) written in {write_s:.1} s; \
         start-up replaying all of them: {recover_s:.2} s ({:.0} k records/s incl. catalog); \
         checkpoint: {checkpoint_s:.2} s ({} MB snapshot); start-up from the snapshot: {from_snapshot_s:.2} s",
        appended.records,
        appended.bytes as f64 / 1e6,
        appended.records as f64 / recover_s / 1e3,
        snap.bytes / 1_000_000,
    );
}
