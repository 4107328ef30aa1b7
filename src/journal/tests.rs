//! Failures the disk will not produce on demand, injected on the writer thread. The behaviour
//! seen from outside (recovery, group commit, snapshots) is tested in `tests/journal.rs`.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use super::*;

type Done = Result<Lsn, JournalError>;
type Replayed = Vec<(Lsn, Vec<u8>)>;

/// Every wait in these tests is bounded, so a bug shows up as a failure, not a hang.
const STEP: Duration = Duration::from_secs(10);

fn open(dir: &Path, segment_bytes: u64) -> (Journal<Sender<Done>>, Replayed) {
    let mut cfg = JournalConfig::new(dir);
    cfg.segment_bytes = segment_bytes;
    let mut seen = Vec::new();
    let (journal, _) = Journal::open(cfg, |lsn, p| {
        seen.push((lsn, p.to_vec()));
        Ok::<_, JournalError>(())
    })
    .unwrap();
    (journal, seen)
}

fn append(journal: &Journal<Sender<Done>>, payload: &[u8]) -> (Lsn, Receiver<Done>) {
    let (tx, rx) = channel();
    (journal.append(payload, tx), rx)
}

#[test]
fn a_failed_write_fails_its_batch_and_every_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path(), 1 << 20);
    let (lsn, rx) = append(&journal, b"kept");
    assert_eq!(rx.recv_timeout(STEP).unwrap().unwrap(), lsn);
    journal.inject_fault(Some(IoOp::Write));
    let (_, rx) = append(&journal, b"lost");
    let e = rx.recv_timeout(STEP).unwrap().unwrap_err();
    assert!(matches!(e, JournalError::Failed { op: IoOp::Write, .. }), "{e}");
    let (_, rx) = append(&journal, b"after");
    assert!(matches!(rx.recv_timeout(STEP).unwrap(), Err(JournalError::Failed { op: IoOp::Write, .. })));
    assert!(journal.stats().failed);
    assert!(journal.wait_durable(lsn).is_ok());
    assert!(matches!(journal.close(), Err(JournalError::Failed { op: IoOp::Write, .. })));
    let (journal, seen) = open(dir.path(), 1 << 20);
    assert_eq!(seen, vec![(Lsn(1), b"kept".to_vec())]);
    let (lsn, rx) = append(&journal, b"next");
    assert_eq!((lsn, rx.recv_timeout(STEP).unwrap().unwrap()), (Lsn(2), Lsn(2)));
}

#[test]
fn a_failed_fsync_is_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path(), 1 << 20);
    journal.inject_fault(Some(IoOp::Sync));
    let (lsn, rx) = append(&journal, b"written, not synced");
    assert!(matches!(rx.recv_timeout(STEP).unwrap(), Err(JournalError::Failed { op: IoOp::Sync, .. })));
    assert!(matches!(journal.wait_durable(lsn), Err(JournalError::Failed { .. })));
    // The disk is fine again, but the journal stays failed: a retried fsync could report
    // success for pages the kernel already dropped.
    journal.inject_fault(None);
    let (_, rx) = append(&journal, b"refused");
    assert!(matches!(rx.recv_timeout(STEP).unwrap(), Err(JournalError::Failed { op: IoOp::Sync, .. })));
    drop(journal);
    // The record reached the file before the failed fsync, so it may come back at start-up
    // although it was never acknowledged: "acknowledged ⇒ durable", not the converse.
    let (_, seen) = open(dir.path(), 1 << 20);
    assert_eq!(seen, vec![(Lsn(1), b"written, not synced".to_vec())]);
}

#[test]
fn a_failed_roll_over_fails_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path(), 64);
    let (_, rx) = append(&journal, &[1u8; 20]);
    rx.recv_timeout(STEP).unwrap().unwrap();
    journal.inject_fault(Some(IoOp::Create));
    let (_, rx) = append(&journal, &[2u8; 20]);
    assert!(matches!(rx.recv_timeout(STEP).unwrap(), Err(JournalError::Failed { op: IoOp::Create, .. })));
}

#[test]
fn wait_durable_returns_once_the_record_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path(), 1 << 20);
    let mut last = Lsn::ZERO;
    let mut receivers = Vec::new();
    for i in 0..100u32 {
        let (lsn, rx) = append(&journal, &i.to_le_bytes());
        last = lsn;
        receivers.push(rx);
    }
    journal.wait_durable(last).unwrap();
    assert!(last <= journal.stats().durable_lsn);
    for rx in receivers {
        rx.recv_timeout(STEP).unwrap().unwrap();
    }
}

#[test]
#[should_panic(expected = "not appended yet")]
fn wait_durable_for_a_future_record_is_a_bug() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path(), 1 << 20);
    let _ = journal.wait_durable(Lsn(5));
}

/// The journal knows nothing of what it stores: no module of the business and no async runtime
/// may appear in its imports (the rule of ARCHITECTURE.md's code map, checked on the source).
#[test]
fn the_journal_imports_nothing_of_the_business() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/journal");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for forbidden in
            ["crate::ledger", "crate::cc", "crate::diameter", "crate::net", "crate::peer", "tokio::"]
        {
            assert!(!text.contains(forbidden), "{} uses {forbidden}", path.display());
        }
    }
}

/// Writes a segment by hand: `batches` of payloads, each batch marked as the writer marks it.
fn handmade_segment(dir: &Path, batches: &[&[Vec<u8>]]) -> (PathBuf, Vec<usize>) {
    let mut bytes = format::encode_segment_header(Lsn(1)).to_vec();
    let mut offsets = Vec::new();
    let mut lsn = Lsn(1);
    for batch in batches {
        let start = bytes.len();
        for p in batch.iter() {
            offsets.push(bytes.len());
            format::encode_record(&mut bytes, lsn, p, format::payload_crc(p), false);
            lsn = lsn.next();
        }
        format::mark_batch_start(&mut bytes[start..], Lsn(lsn.0 - batch.len() as u64));
    }
    let path = dir.join(format::segment_name(Lsn(1)));
    std::fs::write(&path, &bytes).unwrap();
    (path, offsets)
}

/// Pads a segment with zeros to `bytes`, as if it had been preallocated.
fn preallocated(path: &Path, bytes: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(bytes).unwrap();
}

#[test]
fn a_batch_whose_later_pages_reached_the_disk_is_still_a_torn_tail() {
    // In both layouts: the file ends with the torn batch, or zeros follow it (preallocated).
    for padded in [None, Some(1u64 << 16)] {
        let dir = tempfile::tempdir().unwrap();
        let acknowledged = vec![b"acknowledged".to_vec()];
        let torn: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1000]).collect();
        let (path, offsets) = handmade_segment(dir.path(), &[&acknowledged, &torn]);
        // A power failure while the second batch was written back: its second 4 KiB page never
        // reached the disk (reads as zeros), the pages after it did.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1] + 4096..offsets[1] + 8192].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        if let Some(size) = padded {
            preallocated(&path, size);
        }
        let (journal, seen) = open(dir.path(), 1 << 20);
        let first_lost = offsets.iter().position(|&o| o + 1016 > offsets[1] + 4096).unwrap();
        assert_eq!(seen.len(), first_lost, "{padded:?}: records before the hole are kept");
        assert_eq!(seen[0], (Lsn(1), b"acknowledged".to_vec()));
        // The torn records after the hole are zeroed, not left behind the new end.
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after[..offsets[first_lost]], bytes[..offsets[first_lost]], "{padded:?}");
        assert!(after[offsets[first_lost]..].iter().all(|&b| b == 0), "{padded:?}");
        let (lsn, rx) = append(&journal, b"after");
        assert_eq!(lsn, Lsn(first_lost as u64 + 1));
        rx.recv_timeout(STEP).unwrap().unwrap();
        drop(journal);
        // Exactly the records kept and the one appended: nothing of the torn batch comes back.
        let (_, seen) = open(dir.path(), 1 << 20);
        assert_eq!(seen.len(), first_lost + 1, "{padded:?}");
        assert_eq!(seen.last().unwrap(), &(lsn, b"after".to_vec()));
    }
}

#[test]
fn damage_followed_by_a_later_batch_is_corruption() {
    for padded in [None, Some(1u64 << 16)] {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 100]).collect();
        let second = vec![b"later batch".to_vec()];
        let (path, offsets) = handmade_segment(dir.path(), &[&first, &second]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1] + 20] ^= 4;
        std::fs::write(&path, &bytes).unwrap();
        if let Some(size) = padded {
            preallocated(&path, size);
        }
        let before = std::fs::read(&path).unwrap();
        let mut cfg = JournalConfig::new(dir.path());
        cfg.segment_bytes = 1 << 20;
        let e = Journal::<Sender<Done>>::open(cfg, |_, _| Ok::<_, JournalError>(())).err().unwrap();
        let JournalError::Corrupt(c) = e else { panic!("{e}") };
        assert_eq!(
            (c.offset, c.expected, c.valid_after),
            (offsets[1] as u64, Lsn(2), Some((offsets[3] as u64, Lsn(4)))),
            "{padded:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "{padded:?}: a refused start-up changes nothing");
    }
}

/// Waits (bounded) until the journal's spare thread has a spare ready.
fn spare_ready(journal: &Journal<Sender<Done>>) {
    let spares = journal.spares().expect("preallocation is on");
    let deadline = Instant::now() + STEP;
    while !spares.ready() {
        assert!(Instant::now() < deadline, "no spare segment within {STEP:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn segment_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

#[test]
fn roll_over_takes_the_spare_or_grows_a_segment_when_none_is_ready() {
    const SEGMENT: u64 = 4096;
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path(), SEGMENT);
    // The first segment of a new journal is preallocated at once.
    assert_eq!(segment_files(dir.path()).iter().map(|s| s.1).collect::<Vec<_>>(), [SEGMENT]);
    let mut written = Vec::new();
    fn write(journal: &Journal<Sender<Done>>, written: &mut Replayed, n: u8) {
        for _ in 0..n {
            let payload = vec![written.len() as u8 + 1; 1500];
            let (lsn, rx) = append(journal, &payload);
            assert_eq!(rx.recv_timeout(STEP).unwrap().unwrap(), lsn);
            written.push((lsn, payload));
        }
    }
    // Two 1516-byte records per segment: the third starts the second segment, from the spare,
    // which is full-size before any record is in it.
    spare_ready(&journal);
    journal.spares().unwrap().hold(true);
    write(&journal, &mut written, 3);
    let files = segment_files(dir.path());
    assert_eq!(files.iter().map(|s| s.1).collect::<Vec<_>>(), [SEGMENT, SEGMENT]);
    assert_eq!((journal.stats().segments_created, journal.stats().segments_from_spare), (1, 1));
    // No spare is ready now (none may start): the third segment grows as it is written.
    write(&journal, &mut written, 2);
    let files = segment_files(dir.path());
    let data = (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1500) as u64;
    assert_eq!(files.iter().map(|s| s.1).collect::<Vec<_>>(), [SEGMENT, SEGMENT, data]);
    assert_eq!((journal.stats().segments_created, journal.stats().segments_from_spare), (2, 1));
    // Once a spare is ready again, the next segment is preallocated again.
    journal.spares().unwrap().hold(false);
    spare_ready(&journal);
    write(&journal, &mut written, 2);
    let files = segment_files(dir.path());
    assert_eq!(files.iter().map(|s| s.1).collect::<Vec<_>>(), [SEGMENT, SEGMENT, 2 * data - 24, SEGMENT]);
    assert_eq!((journal.stats().segments_created, journal.stats().segments_from_spare), (3, 2));
    journal.close().unwrap();
    // Both layouts side by side recover into the same records.
    let (journal, seen) = open(dir.path(), SEGMENT);
    assert_eq!(seen, written);
    write(&journal, &mut written, 1);
    drop(journal);
    assert_eq!(open(dir.path(), SEGMENT).1, written);
}

/// Every connection task appends: the journal must be Send + Sync for any waiter (the generic
/// body is checked for all of them at compile time).
#[test]
fn the_journal_is_send_and_sync_for_any_waiter() {
    fn shared<T: Send + Sync>() {}
    fn any_waiter<W: Waiter>() {
        shared::<Journal<W>>();
    }
    any_waiter::<Sender<Done>>();
}
