//! The journal as its users see it: appends from many threads acknowledged only once on disk,
//! replay after a restart, segment roll-over, crash damage at the tail (cut, then appends go
//! on) and corruption before it (refused, naming file and offset), snapshots and pruning.
//!
//! Segments are preallocated (zero-filled to `segment_bytes`); the tests that cut a segment short
//! also exercise the growing layout, in which the file ends with the records (what a journal
//! written without preallocation looks like).
//!
//! Every wait is bounded by `STEP`, so a bug fails a test instead of hanging it; nothing asserts
//! on elapsed time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use gyro::journal::{
    scan, snapshot, Fsync, Journal, JournalConfig, JournalError, Lsn, Problem, RecoveryReport, Waiter,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

type Done = Result<Lsn, JournalError>;
/// What a replay handed out, in order.
type Replayed = Vec<(Lsn, Vec<u8>)>;

const STEP: Duration = Duration::from_secs(10);

/// Segments of 64 KiB rather than the default 64 MiB: every open zero-fills one (the first
/// segment, or the spare), and some tests rewrite a whole segment hundreds of times.
const SEGMENT_BYTES: u64 = 64 << 10;

fn config(dir: &Path) -> JournalConfig {
    JournalConfig { segment_bytes: SEGMENT_BYTES, ..JournalConfig::new(dir) }
}

fn small_segments(dir: &Path, segment_bytes: u64) -> JournalConfig {
    JournalConfig { segment_bytes, ..JournalConfig::new(dir) }
}

/// Opens the journal and collects what it replays.
fn open(cfg: JournalConfig) -> Result<(Journal<Sender<Done>>, Replayed, RecoveryReport), JournalError> {
    let mut seen = Vec::new();
    let (journal, report) = Journal::open(cfg, |lsn, p| {
        seen.push((lsn, p.to_vec()));
        Ok::<_, JournalError>(())
    })?;
    Ok((journal, seen, report))
}

fn replay(cfg: JournalConfig) -> Result<(Replayed, RecoveryReport), JournalError> {
    let (journal, seen, report) = open(cfg)?;
    journal.close().unwrap();
    Ok((seen, report))
}

/// A payload whose length and content depend on `i`, so a record from the wrong place shows.
fn payload(i: u64) -> Vec<u8> {
    let len = 1 + (i * 7 % 40) as usize;
    (0..len).map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8)).collect()
}

/// Appends records 1..=n one by one, each acknowledged before the next, and closes.
fn write(cfg: JournalConfig, n: u64) -> Vec<Vec<u8>> {
    let (journal, _, _) = open(cfg).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=n).map(payload).collect();
    for p in &payloads {
        let (tx, rx) = channel();
        let lsn = journal.append(p, tx);
        assert_eq!(rx.recv_timeout(STEP).unwrap().unwrap(), lsn);
    }
    journal.close().unwrap();
    payloads
}

fn expected(payloads: &[Vec<u8>], upto: usize) -> Vec<(Lsn, Vec<u8>)> {
    payloads[..upto].iter().enumerate().map(|(i, p)| (Lsn(i as u64 + 1), p.clone())).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    v.sort();
    v
}

/// Where each record is: (LSN, segment, offset, record bytes).
fn layout(dir: &Path) -> Vec<(Lsn, PathBuf, u64, u64)> {
    let mut out = Vec::new();
    let found = scan(dir, Lsn::ZERO, |r| {
        out.push((r.lsn, r.segment.to_owned(), r.offset, (RECORD_HEADER_BYTES + r.payload.len()) as u64));
        Ok(())
    })
    .unwrap();
    assert!(found.corruption.is_none() && found.tail.is_none());
    out
}

/// Where the records of the last segment end (its good data), from a scan.
fn records_end(dir: &Path) -> u64 {
    scan(dir, Lsn::ZERO, |_| Ok(())).unwrap().segments.last().unwrap().valid_bytes
}

/// The two ways a segment looks after a crash in the middle of a write: the file ends with the
/// torn bytes (growing layout), or zeros follow them up to the preallocated size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Growing,
    Preallocated,
}

/// Writes `bytes` as the segment at `path`, in `layout`.
fn write_segment(path: &Path, bytes: &[u8], layout: Layout) {
    std::fs::write(path, bytes).unwrap();
    if layout == Layout::Preallocated {
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(SEGMENT_BYTES).unwrap();
    }
}

/// Bytes `from..to` of `bytes` without the zeros they end with: how much of a cut record a
/// torn tail reports (zeros are where the written data ends).
fn non_zero_extent(bytes: &[u8], from: u64, to: u64) -> u64 {
    bytes[from as usize..to as usize].iter().rposition(|&b| b != 0).map_or(0, |p| p as u64 + 1)
}

fn flip_bit(path: &Path, offset: u64, bit: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

fn corruption(e: JournalError) -> Box<gyro::journal::Corruption> {
    match e {
        JournalError::Corrupt(c) => c,
        other => panic!("expected corruption, got {other}"),
    }
}

/// A tiny deterministic generator (xorshift64*), so random cut points are reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn appends_from_many_threads_come_back_in_lsn_order() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, seen, report) = open(config(dir.path())).unwrap();
    assert!(seen.is_empty());
    assert_eq!(report.next_lsn, Lsn(1));
    let journal = std::sync::Arc::new(journal);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let journal = std::sync::Arc::clone(&journal);
            std::thread::spawn(move || {
                let (tx, rx) = channel();
                let mut mine = BTreeMap::new();
                for i in 0..250u64 {
                    let p = payload(t * 1000 + i);
                    mine.insert(journal.append(&p, tx.clone()), p);
                }
                for _ in 0..250 {
                    let lsn = rx.recv_timeout(STEP).unwrap().unwrap();
                    assert!(mine.contains_key(&lsn), "acknowledged {lsn}, which is not ours");
                }
                mine
            })
        })
        .collect();
    let mut all = BTreeMap::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    let stats = journal.stats();
    assert_eq!((stats.records, stats.durable_lsn), (1000, Lsn(1000)));
    assert!(1 <= stats.batches && stats.batches <= 1000);
    std::sync::Arc::into_inner(journal).unwrap().close().unwrap();

    let (seen, report) = replay(config(dir.path())).unwrap();
    assert_eq!(seen, all.into_iter().collect::<Vec<_>>());
    assert_eq!((report.records_replayed, report.next_lsn, report.tail), (1000, Lsn(1001), None));
}

/// The byte a record's payload is made of in `waiters_run_only_once_their_record_is_in_the_file`:
/// never zero, which is what a preallocated file holds.
fn filler(lsn: Lsn) -> u8 {
    (lsn.0 % 255) as u8 + 1
}

/// Reads the segment when its record is acknowledged: the record must already be in the file
/// (the file's size says nothing, a preallocated segment is full-size from the start).
struct OnDisk {
    segment: PathBuf,
    record_bytes: u64,
    tx: Sender<(Lsn, bool)>,
}

impl Waiter for OnDisk {
    fn durable(self, result: Result<Lsn, JournalError>) {
        let lsn = result.unwrap();
        let bytes = std::fs::read(&self.segment).unwrap();
        let payload_end = (SEGMENT_HEADER_BYTES as u64 + lsn.0 * self.record_bytes) as usize;
        let payload_start = payload_end - (self.record_bytes as usize - RECORD_HEADER_BYTES);
        let in_file =
            bytes.get(payload_start..payload_end).is_some_and(|p| p.iter().all(|&b| b == filler(lsn)));
        self.tx.send((lsn, in_file)).unwrap();
    }
}

#[test]
fn waiters_run_only_once_their_record_is_in_the_file() {
    for fsync in [Fsync::Batch, Fsync::Off] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig { fsync, ..config(dir.path()) };
        let (journal, _) = Journal::open(cfg, |_, _| Ok::<_, JournalError>(())).unwrap();
        let segment = segments(dir.path()).pop().unwrap();
        let (tx, rx) = channel();
        for lsn in (1..=300).map(Lsn) {
            let waiter = OnDisk {
                segment: segment.clone(),
                record_bytes: (RECORD_HEADER_BYTES + 32) as u64,
                tx: tx.clone(),
            };
            assert_eq!(journal.append(&[filler(lsn); 32], waiter), lsn);
        }
        for expected in 1..=300 {
            let (lsn, in_file) = rx.recv_timeout(STEP).unwrap();
            assert_eq!(lsn, Lsn(expected), "waiters run in LSN order");
            assert!(in_file, "{fsync:?}: LSN {lsn} acknowledged before it was in the file");
        }
        let stats = journal.close().unwrap();
        assert_eq!(stats.syncs == 0, fsync == Fsync::Off);
    }
}

#[test]
fn segments_roll_over_and_groups_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(small_segments(dir.path(), 512)).unwrap();
    let (tx, rx) = channel();
    let mut groups = Vec::new();
    for g in 0..60u64 {
        let parts: Vec<Vec<u8>> = (0..3).map(|k| payload(g * 3 + k)).collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let last = journal.append_many(&refs, tx.clone());
        assert_eq!(last, Lsn(g * 3 + 3));
        groups.push(parts);
    }
    for _ in 0..60 {
        rx.recv_timeout(STEP).unwrap().unwrap();
    }
    journal.close().unwrap();

    let files = segments(dir.path());
    assert!(files.len() > 5, "{} segments", files.len());
    let records = layout(dir.path());
    for file in &files {
        assert!(std::fs::metadata(file).unwrap().len() <= 512, "{}", file.display());
        let first = records.iter().find(|r| &r.1 == file).unwrap().0;
        // The name gives the first LSN, and a segment starts with the first record of a group.
        assert_eq!(file.file_name().unwrap().to_str().unwrap(), format!("{:020}.journal", first.0));
        assert_eq!(first.0 % 3, 1, "{} starts inside a group", file.display());
    }
    let (seen, report) = replay(small_segments(dir.path(), 512)).unwrap();
    let all: Vec<Vec<u8>> = groups.into_iter().flatten().collect();
    assert_eq!(seen, expected(&all, all.len()));
    assert_eq!(report.segments, files.len());
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(small_segments(dir.path(), 128)).unwrap();
    let (tx, rx) = channel();
    for len in [10usize, 1000, 10, 5000] {
        journal.append(&vec![7u8; len], tx.clone());
    }
    for _ in 0..4 {
        rx.recv_timeout(STEP).unwrap().unwrap();
    }
    journal.close().unwrap();
    assert_eq!(segments(dir.path()).len(), 4);
    let (seen, _) = replay(small_segments(dir.path(), 128)).unwrap();
    assert_eq!(seen.iter().map(|(_, p)| p.len()).collect::<Vec<_>>(), vec![10, 1000, 10, 5000]);
}

#[test]
fn a_cut_anywhere_in_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = write(config(dir.path()), 10);
    let segment = segments(dir.path()).pop().unwrap();
    let original = std::fs::read(&segment).unwrap();
    let (_, _, last_offset, last_bytes) = layout(dir.path()).pop().unwrap();
    for layout in [Layout::Growing, Layout::Preallocated] {
        for cut in last_offset..last_offset + last_bytes {
            write_segment(&segment, &original[..cut as usize], layout);
            let (journal, seen, report) = open(config(dir.path())).unwrap();
            assert_eq!(seen, expected(&payloads, 9), "{layout:?}, cut at {cut}");
            let torn = non_zero_extent(&original, last_offset, cut);
            assert_eq!(report.tail_truncated_bytes(), torn, "{layout:?}, cut at {cut}");
            assert_eq!(report.next_lsn, Lsn(10));
            // Appends go on right after the last good record.
            let (tx, rx) = channel();
            assert_eq!(journal.append(b"after the cut", tx), Lsn(10));
            rx.recv_timeout(STEP).unwrap().unwrap();
            journal.close().unwrap();
            // The record appended is shorter than the torn one: none of the torn bytes is left
            // after it (they were zeroed), or this would be a torn tail again.
            let (seen, report) = replay(config(dir.path())).unwrap();
            assert_eq!(seen.len(), 10);
            assert_eq!(seen[9], (Lsn(10), b"after the cut".to_vec()));
            assert_eq!(report.tail, None, "{layout:?}, cut at {cut}");
        }
    }
}

#[test]
fn random_cuts_keep_every_record_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = write(config(dir.path()), 40);
    let segment = segments(dir.path()).pop().unwrap();
    let original = std::fs::read(&segment).unwrap();
    let records = layout(dir.path());
    let end = records_end(dir.path());
    assert_eq!(original.len() as u64, SEGMENT_BYTES, "the segment is preallocated");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..60 {
        let layout = if i % 2 == 0 { Layout::Growing } else { Layout::Preallocated };
        let cut = SEGMENT_HEADER_BYTES as u64 + rng.below(end - SEGMENT_HEADER_BYTES as u64);
        write_segment(&segment, &original[..cut as usize], layout);
        let file_bytes = std::fs::metadata(&segment).unwrap().len();
        let whole = records.iter().filter(|r| r.2 + r.3 <= cut).count();
        let (seen, report) = replay(config(dir.path())).unwrap();
        assert_eq!(seen, expected(&payloads, whole), "{layout:?}, cut at {cut}");
        assert_eq!(report.next_lsn, Lsn(whole as u64 + 1));
        // The records kept are untouched, the torn bytes after them zeroed, the size unchanged.
        let kept = records.get(whole).map_or(cut, |r| r.2) as usize;
        let after = std::fs::read(&segment).unwrap();
        assert_eq!(after.len() as u64, file_bytes);
        assert_eq!(after[..kept], original[..kept], "{layout:?}, cut at {cut}");
        assert!(after[kept..].iter().all(|&b| b == 0), "{layout:?}, cut at {cut}");
    }
}

#[test]
fn a_bit_flip_in_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = write(config(dir.path()), 10);
    let segment = segments(dir.path()).pop().unwrap();
    let original = std::fs::read(&segment).unwrap();
    let (_, _, last_offset, last_bytes) = layout(dir.path()).pop().unwrap();
    for byte in last_offset..last_offset + last_bytes {
        for bit in 0..8 {
            std::fs::write(&segment, &original).unwrap();
            flip_bit(&segment, byte, bit);
            let (seen, report) = replay(config(dir.path())).unwrap();
            assert_eq!(seen, expected(&payloads, 9), "byte {byte} bit {bit}");
            let tail = report.tail.unwrap();
            assert_eq!((tail.offset, tail.bytes), (last_offset, last_bytes));
        }
    }
}

#[test]
fn a_bit_flip_before_valid_records_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    write(config(dir.path()), 10);
    let segment = segments(dir.path()).pop().unwrap();
    let original = std::fs::read(&segment).unwrap();
    assert_eq!(original.len() as u64, SEGMENT_BYTES, "zeros follow the records");
    let records = layout(dir.path());
    let (_, _, third, third_bytes) = records[2].clone();
    // Each record was its own write batch, so record 4 proves record 3 had been acknowledged.
    // The damage is in the payload, the checksum, and the length word (pointing anywhere).
    for (byte, bit) in [(third + third_bytes - 1, 0), (third + 5, 3), (third, 6), (third + 3, 7)] {
        std::fs::write(&segment, &original).unwrap();
        flip_bit(&segment, byte, bit);
        let c = corruption(open(config(dir.path())).err().unwrap());
        assert_eq!((c.segment.clone(), c.offset, c.expected), (segment.clone(), third, Lsn(3)));
        assert_eq!(c.valid_after, Some((records[3].2, Lsn(4))));
        let text = JournalError::Corrupt(c).to_string();
        let name = segment.file_name().unwrap().to_str().unwrap();
        assert!(text.contains(name) && text.contains(&format!("byte offset {third}")), "{text}");
        assert!(text.contains("expected LSN 3") && text.contains("gyro journal verify"), "{text}");
    }
    // Nothing was changed by the refused start-ups.
    flip_bit(&segment, third + 3, 7);
    assert_eq!(std::fs::read(&segment).unwrap(), original);
}

#[test]
fn damage_in_an_earlier_segment_stops_start_up_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    write(small_segments(dir.path(), 256), 40);
    let files = segments(dir.path());
    let records = layout(dir.path());
    let last_of_first = records.iter().rfind(|r| r.1 == files[0]).unwrap().clone();
    flip_bit(&files[0], last_of_first.2 + last_of_first.3 - 1, 0);
    let c = corruption(open(small_segments(dir.path(), 256)).err().unwrap());
    assert_eq!(
        (c.segment.clone(), c.offset, c.expected),
        (files[0].clone(), last_of_first.2, last_of_first.0)
    );
    assert_eq!(c.problem, Problem::RecordChecksum);
}

#[test]
fn a_missing_segment_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    write(small_segments(dir.path(), 256), 40);
    let files = segments(dir.path());
    assert!(files.len() >= 4);
    let second_first = layout(dir.path()).iter().find(|r| r.1 == files[1]).unwrap().0;
    std::fs::remove_file(&files[1]).unwrap();
    let c = corruption(open(small_segments(dir.path(), 256)).err().unwrap());
    assert_eq!((c.segment.clone(), c.offset, c.expected), (files[2].clone(), 0, second_first));
    assert!(matches!(c.problem, Problem::SegmentGap { .. }));
    // Without the first segment (and no snapshot), LSN 1 is missing.
    std::fs::remove_file(&files[0]).unwrap();
    let c = corruption(open(small_segments(dir.path(), 256)).err().unwrap());
    assert_eq!((c.segment.clone(), c.expected), (files[2].clone(), Lsn(1)));
}

#[test]
fn a_damaged_segment_header_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    write(config(dir.path()), 5);
    let segment = segments(dir.path()).pop().unwrap();
    flip_bit(&segment, 14, 2);
    let c = corruption(open(config(dir.path())).err().unwrap());
    assert_eq!((c.offset, c.problem), (0, Problem::HeaderChecksum));
}

#[test]
fn an_unfinished_new_segment_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = write(small_segments(dir.path(), 256), 20);
    // A crash while the next segment was being created: its header is incomplete.
    let next = dir.path().join("00000000000000000021.journal");
    std::fs::write(&next, &b"GYROJ"[..]).unwrap();
    let (journal, seen, report) = open(small_segments(dir.path(), 256)).unwrap();
    assert_eq!(seen, expected(&payloads, 20));
    assert_eq!(report.tail.as_ref().map(|t| (t.offset, t.bytes)), Some((0, 5)));
    let (tx, rx) = channel();
    assert_eq!(journal.append(b"x", tx), Lsn(21));
    rx.recv_timeout(STEP).unwrap().unwrap();
    journal.close().unwrap();
    assert_eq!(replay(small_segments(dir.path(), 256)).unwrap().0.len(), 21);
}

#[test]
fn a_group_cut_by_a_crash_is_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = write(config(dir.path()), 5);
    let (journal, _, _) = open(config(dir.path())).unwrap();
    let (tx, rx) = channel();
    assert_eq!(journal.append_many(&[b"debit", b"invoice", b"outbox"], tx), Lsn(8));
    rx.recv_timeout(STEP).unwrap().unwrap();
    journal.close().unwrap();
    let segment = segments(dir.path()).pop().unwrap();
    let records = layout(dir.path());
    let (_, _, group_start, _) = records[5].clone();
    let (_, _, third, _) = records[7].clone();
    // Cut inside the group's last record, and right before it: the first two are whole and
    // valid, but the group is not, so none of it is replayed.
    for cut in [third + 3, third] {
        let original = std::fs::read(&segment).unwrap();
        std::fs::write(&segment, &original[..cut as usize]).unwrap();
        let (seen, report) = replay(config(dir.path())).unwrap();
        assert_eq!(seen, expected(&payloads, 5), "cut at {cut}");
        assert_eq!(report.tail.unwrap().offset, group_start);
        assert_eq!(report.next_lsn, Lsn(6));
        std::fs::write(&segment, &original).unwrap();
    }
}

#[test]
fn snapshots_round_trip_fall_back_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || small_segments(dir.path(), 256);
    write(cfg(), 100);
    let segments_before = segments(dir.path()).len();
    assert_eq!(snapshot::newest_valid(dir.path()).unwrap(), None);
    snapshot::write(dir.path(), Lsn(40), |w| w.write_all(b"state at 40")).unwrap();
    let newest = snapshot::write(dir.path(), Lsn(80), |w| w.write_all(b"state at 80")).unwrap();
    let s = snapshot::newest_valid(dir.path()).unwrap().unwrap();
    assert_eq!((s.lsn, s.body.as_slice()), (Lsn(80), &b"state at 80"[..]));

    // A damaged newest snapshot: the one before is used, and its records are replayed.
    flip_bit(&newest, 22, 1);
    let s = snapshot::newest_valid(dir.path()).unwrap().unwrap();
    assert_eq!((s.lsn, s.body.as_slice()), (Lsn(40), &b"state at 40"[..]));
    let (seen, report) = replay(JournalConfig { start_after: s.lsn, ..cfg() }).unwrap();
    assert_eq!(seen.first().map(|r| r.0), Some(Lsn(41)));
    assert_eq!((report.records_replayed, report.records_skipped), (60, 40));

    // Keeping one snapshot keeps the valid one at 40, and the segments back to it.
    let pruned = snapshot::prune(dir.path(), 1).unwrap();
    assert_eq!((pruned.oldest_kept, pruned.snapshots_removed), (Some(Lsn(40)), 0));
    assert!(pruned.segments_removed > 0);
    assert_eq!(segments(dir.path()).len(), segments_before - pruned.segments_removed);
    let (seen, _) = replay(JournalConfig { start_after: Lsn(40), ..cfg() }).unwrap();
    assert_eq!(seen.len(), 60);
    // Without the snapshot the pruned records are missing, and start-up says so.
    let c = corruption(open(cfg()).err().unwrap());
    assert_eq!(c.expected, Lsn(1));

    // A new snapshot at 100: keeping one deletes the older snapshots (the damaged one too) and
    // every segment but the newest.
    snapshot::write(dir.path(), Lsn(100), |w| w.write_all(b"state at 100")).unwrap();
    let pruned = snapshot::prune(dir.path(), 1).unwrap();
    assert_eq!((pruned.oldest_kept, pruned.snapshots_removed), (Some(Lsn(100)), 2));
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(snapshot::list(dir.path()).unwrap().len(), 1);
    let (journal, seen, report) = open(JournalConfig { start_after: Lsn(100), ..cfg() }).unwrap();
    assert!(seen.is_empty());
    assert_eq!(report.next_lsn, Lsn(101));
    let (tx, rx) = channel();
    assert_eq!(journal.append(b"101", tx), Lsn(101));
    rx.recv_timeout(STEP).unwrap().unwrap();
    assert_eq!(journal.prune(1).unwrap().segments_removed, 0);
    journal.close().unwrap();
}

#[test]
fn a_snapshot_ahead_of_the_journal_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    write(config(dir.path()), 5);
    let e = open(JournalConfig { start_after: Lsn(9), ..config(dir.path()) }).err().unwrap();
    assert!(matches!(e, JournalError::SnapshotAhead { snapshot: Lsn(9), last: Lsn(5), .. }), "{e}");
}

#[test]
fn a_failed_snapshot_body_leaves_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let e = snapshot::write(dir.path(), Lsn(3), |w| {
        w.write_all(b"half")?;
        Err(std::io::Error::other("the ledger could not be read"))
    })
    .unwrap_err();
    assert!(e.to_string().contains("the ledger could not be read"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn fsync_off_acknowledges_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { fsync: Fsync::Off, ..config(dir.path()) };
    let payloads = write(cfg.clone(), 50);
    let (seen, _) = replay(cfg).unwrap();
    assert_eq!(seen, expected(&payloads, 50));
}

#[test]
fn the_buffer_bound_holds_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { buffer_bytes_max: 4096, fsync: Fsync::Off, ..config(dir.path()) };
    let (journal, _, _) = open(cfg).unwrap();
    let journal = std::sync::Arc::new(journal);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let journal = std::sync::Arc::clone(&journal);
            std::thread::spawn(move || {
                let (tx, rx) = channel();
                for i in 0..500u32 {
                    journal.append(&[i as u8; 200], tx.clone());
                }
                (0..500).for_each(|_| {
                    rx.recv_timeout(STEP).unwrap().unwrap();
                })
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let stats = journal.stats();
    assert_eq!(stats.records, 2000);
    assert!(stats.buffered_bytes_high_water <= 4096, "{stats:?}");
}

#[test]
fn close_makes_everything_appended_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(config(dir.path())).unwrap();
    let (tx, rx): (Sender<Done>, Receiver<Done>) = channel();
    for i in 0..1000u64 {
        journal.append(&payload(i), tx.clone());
    }
    drop(tx);
    let stats = journal.close().unwrap();
    assert_eq!((stats.records, stats.durable_lsn), (1000, Lsn(1000)));
    let acknowledged: Vec<Lsn> = rx.iter().map(Result::unwrap).collect();
    assert_eq!(acknowledged, (1..=1000).map(Lsn).collect::<Vec<_>>());
}

#[test]
fn a_replay_error_stops_start_up_with_its_lsn() {
    let dir = tempfile::tempdir().unwrap();
    write(config(dir.path()), 5);
    let e = Journal::<Sender<Done>>::open(config(dir.path()), |lsn, _| {
        if lsn == Lsn(3) {
            return Err("unknown record kind");
        }
        Ok(())
    })
    .err()
    .unwrap();
    assert_eq!(e.to_string(), "replaying the record with LSN 3: unknown record kind");
}

#[test]
#[should_panic(expected = "JOURNAL_RECORD_MAX_BYTES")]
fn an_oversized_record_is_a_bug() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(config(dir.path())).unwrap();
    let (tx, _rx) = channel();
    journal.append(&vec![0u8; gyro::limits::JOURNAL_RECORD_MAX_BYTES + 1], tx);
}

#[test]
fn segments_are_preallocated_and_their_records_recover() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = write(config(dir.path()), 10);
    let files = segments(dir.path());
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), SEGMENT_BYTES);
    let found = scan(dir.path(), Lsn::ZERO, |_| Ok(())).unwrap();
    let s = &found.segments[0];
    let data = SEGMENT_HEADER_BYTES as u64
        + payloads.iter().map(|p| (RECORD_HEADER_BYTES + p.len()) as u64).sum::<u64>();
    // The zeros after the records are the segment's normal end, not a torn tail.
    assert_eq!((s.valid_bytes, s.data_bytes, s.file_bytes), (data, data, SEGMENT_BYTES));
    assert_eq!((found.tail, found.corruption, found.bytes), (None, None, data));
    // Reopened, the journal writes at the end of the records, not at the end of the file.
    let (journal, seen, report) = open(config(dir.path())).unwrap();
    assert_eq!(seen, expected(&payloads, 10));
    assert_eq!((report.bytes, report.tail), (data, None));
    let (tx, rx) = channel();
    assert_eq!(journal.append(b"eleventh", tx), Lsn(11));
    rx.recv_timeout(STEP).unwrap().unwrap();
    journal.close().unwrap();
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), SEGMENT_BYTES);
    assert_eq!(records_end(dir.path()), data + (RECORD_HEADER_BYTES + 8) as u64);
    let (seen, _) = replay(config(dir.path())).unwrap();
    assert_eq!(seen.len(), 11);
    assert_eq!(seen[10], (Lsn(11), b"eleventh".to_vec()));
}

#[test]
fn a_torn_batch_in_a_preallocated_segment_is_zeroed_and_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = write(config(dir.path()), 5);
    // One write batch of four records (a group is written whole in one batch).
    let group: Vec<Vec<u8>> = (6..=9).map(|i| vec![i as u8; 40]).collect();
    let (journal, _, _) = open(config(dir.path())).unwrap();
    let (tx, rx) = channel();
    let refs: Vec<&[u8]> = group.iter().map(Vec::as_slice).collect();
    assert_eq!(journal.append_many(&refs, tx), Lsn(9));
    rx.recv_timeout(STEP).unwrap().unwrap();
    journal.close().unwrap();
    let segment = segments(dir.path()).pop().unwrap();
    let records = layout(dir.path());
    let sixth = records[5].2;
    let complete = std::fs::read(&segment).unwrap();

    // A crash while that batch was written: its first record never reached the disk (zeros),
    // the rest did, and zeros follow as ever in a preallocated segment.
    let mut torn = complete.clone();
    torn[sixth as usize..records[6].2 as usize].fill(0);
    std::fs::write(&segment, &torn).unwrap();
    let (journal, seen, report) = open(config(dir.path())).unwrap();
    assert_eq!(seen, expected(&payloads, 5));
    let tail = report.tail.clone().unwrap();
    assert_eq!((tail.offset, tail.bytes), (sixth, records[8].2 + records[8].3 - sixth));
    // A record of the same size as the lost sixth: if the torn records were still behind it,
    // the seventh would sit exactly where LSN 7 is expected, and come back.
    let (tx, rx) = channel();
    assert_eq!(journal.append(&[66u8; 40], tx.clone()), Lsn(6));
    rx.recv_timeout(STEP).unwrap().unwrap();
    drop(journal);
    let (seen, report) = replay(config(dir.path())).unwrap();
    assert_eq!(seen.len(), 6, "nothing of the torn batch comes back");
    assert_eq!((seen[5].clone(), report.tail), ((Lsn(6), vec![66u8; 40]), None));

    // Garbage after the last record (a record cut short by the crash, then zeros): cut, and
    // the writer goes on at the last good record; a shorter record after it, then recovery
    // again, gives exactly the records written.
    let end = records_end(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[end as usize..end as usize + 30].copy_from_slice(&complete[records[6].2 as usize..][..30]);
    bytes[end as usize + 3] ^= 0x5a;
    std::fs::write(&segment, &bytes).unwrap();
    let (journal, seen, report) = open(config(dir.path())).unwrap();
    assert_eq!(seen.len(), 6);
    assert_eq!(report.tail.map(|t| (t.offset, t.bytes)), Some((end, 30)));
    let (tx, rx) = channel();
    assert_eq!(journal.append(b"7", tx), Lsn(7));
    rx.recv_timeout(STEP).unwrap().unwrap();
    drop(journal);
    let (seen, report) = replay(config(dir.path())).unwrap();
    let mut want = expected(&payloads, 5);
    want.push((Lsn(6), vec![66u8; 40]));
    want.push((Lsn(7), b"7".to_vec()));
    assert_eq!((seen, report.tail), (want, None));
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), SEGMENT_BYTES);
}

#[test]
fn a_journal_in_the_growing_layout_still_recovers() {
    // Written without preallocation: every file ends with its records.
    let dir = tempfile::tempdir().unwrap();
    let growing = JournalConfig { preallocate: false, ..small_segments(dir.path(), 256) };
    let payloads = write(growing.clone(), 30);
    let files = segments(dir.path());
    assert!(files.len() >= 3, "{} segments", files.len());
    let found = scan(dir.path(), Lsn::ZERO, |_| Ok(())).unwrap();
    for s in &found.segments {
        assert_eq!((s.valid_bytes, s.data_bytes), (s.file_bytes, s.file_bytes), "{}", s.path.display());
    }
    assert!(std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(gyro::journal::LOCK_FILE))
        .all(|p| p.extension().unwrap() == "journal"));
    // Read, and written on, with preallocation: the last segment grows, the new ones do not.
    let preallocated = small_segments(dir.path(), 256);
    let (journal, seen, report) = open(preallocated.clone()).unwrap();
    assert_eq!((seen, report.tail), (expected(&payloads, 30), None));
    let (tx, rx) = channel();
    let mut more = payloads.clone();
    for i in 31..=60 {
        more.push(payload(i));
        journal.append(&payload(i), tx.clone());
    }
    for _ in 31..=60 {
        rx.recv_timeout(STEP).unwrap().unwrap();
    }
    journal.close().unwrap();
    let (seen, _) = replay(preallocated.clone()).unwrap();
    assert_eq!(seen, expected(&more, 60));
    // New segments are preallocated when the spare thread kept up with the roll-overs (which
    // `journal::tests` checks deterministically), else they grow; both within the segment size.
    let new = &segments(dir.path())[files.len()..];
    assert!(!new.is_empty());
    assert!(new.iter().all(|f| std::fs::metadata(f).unwrap().len() <= 256));

    // The other way round: preallocated segments cut to their records' length, as a journal
    // written before preallocation looks, recover the same.
    let found = scan(dir.path(), Lsn::ZERO, |_| Ok(())).unwrap();
    for s in &found.segments {
        std::fs::OpenOptions::new().write(true).open(&s.path).unwrap().set_len(s.valid_bytes).unwrap();
    }
    let (seen, report) = replay(preallocated).unwrap();
    assert_eq!((seen, report.tail), (expected(&more, 60), None));
}

#[test]
fn a_spare_is_never_taken_for_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = write(config(dir.path()), 5);
    let spare = dir.path().join("next.spare");
    let tmp = dir.path().join("next.spare.tmp");
    // Whatever is in them (a spare from a roll-over cut short holds a segment header for an LSN
    // it never got), listing and recovery do not read them.
    let mut header_only = std::fs::read(&segments(dir.path())[0]).unwrap()[..SEGMENT_HEADER_BYTES].to_vec();
    header_only.resize(1000, 0);
    std::fs::write(&spare, &header_only).unwrap();
    std::fs::write(&tmp, b"half a spare").unwrap();
    assert_eq!(gyro::journal::list_segments(dir.path()).unwrap().len(), 1);
    let found = scan(dir.path(), Lsn::ZERO, |_| Ok(())).unwrap();
    assert_eq!((found.segments.len(), found.records, found.tail, found.corruption), (1, 5, None, None));
    // Start-up deletes the unfinished one and the one of the wrong size (and makes a new one).
    let (journal, seen, _) = open(config(dir.path())).unwrap();
    assert_eq!(seen, expected(&payloads, 5));
    assert!(!tmp.exists() || std::fs::read(&tmp).unwrap() != b"half a spare");
    let (tx, rx) = channel();
    journal.append(b"6", tx);
    rx.recv_timeout(STEP).unwrap().unwrap();
    journal.close().unwrap();
    if let Ok(bytes) = std::fs::read(&spare) {
        assert_eq!(bytes.len() as u64, SEGMENT_BYTES);
        assert!(bytes.iter().all(|&b| b == 0), "a new spare is all zeros");
    }
    // Prune keeps it out of its count too: with every record in a snapshot, the only segment
    // stays (the newest is never deleted) and the spare is not touched.
    std::fs::write(&spare, &header_only).unwrap();
    snapshot::write(dir.path(), Lsn(6), |w| w.write_all(b"state")).unwrap();
    assert_eq!(snapshot::prune(dir.path(), 1).unwrap().segments_removed, 0);
    assert!(spare.exists());
    assert_eq!(
        replay(JournalConfig { start_after: Lsn(6), ..config(dir.path()) }).unwrap().1.next_lsn,
        Lsn(7)
    );
}

#[test]
fn a_second_process_cannot_open_a_journal_in_use_and_can_once_it_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _, _) = open(config(dir.path())).unwrap();
    // flock conflicts between two opens of the file even within one process, so this is what a
    // second `gyro serve` on the same data directory sees.
    let err = open(config(dir.path())).err().expect("the second open must be refused");
    assert!(matches!(err, JournalError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("in use by another gyro process"), "{err}");
    drop(first);
    let (again, _, _) = open(config(dir.path())).expect("the lock goes with the journal");
    drop(again);
}
