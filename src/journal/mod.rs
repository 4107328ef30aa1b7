//! The write-ahead journal: opaque records, made durable in batches (group commit), recovered in
//! order at start-up, with snapshots so the journal can be pruned.
//!
//! The rule it serves: *no answer that reflects a ledger change leaves the process before its
//! journal record is durable*. A caller appends the record of a change, keeps the answer, and
//! sends it when the record's [`Waiter`] is told the record is on disk.
//!
//! # What it owns, and what it must not touch
//! The journal owns the files in its directory (segments, the spare, snapshots), one writer
//! thread and one thread that prepares spares. It
//! knows nothing of Diameter, sessions or money: payloads are byte strings it frames, checks and
//! hands back, and snapshot bodies are written and read as they are. It must not import `ledger`,
//! `cc`, `diameter` or tokio; whoever defines the payloads builds on it, not the other way round.
//! It keeps the journal behind this small interface (append, a waiter, replay) so that moving it
//! to a replicated log later stays local (see the guide's Storage section).
//!
//! # Files
//! `DIR/{first_lsn:020}.journal` are the segments, in LSN order; `DIR/snapshot-{lsn:020}.snap`
//! the snapshots; `DIR/next.spare` the next segment, prepared ahead of time (see "Group
//! commit"). All integers are little-endian.
//!
//! ```text
//! segment header (24 bytes): magic "GYROJNL\0" | version u32 (1) | first LSN u64 | CRC32C u32
//!                            (CRC over the 20 bytes before it)
//! record (16 + n bytes):     length u32 | CRC32C u32 | LSN u64 | payload (n bytes)
//!     length: bits 0–29 = n (≤ JOURNAL_RECORD_MAX_BYTES);
//!             bit 30 = first record of a write batch (set by the writer thread);
//!             bit 31 = the group goes on in the next record (all of an `append_many` but the last)
//!     CRC32C (Castagnoli) over payload ‖ length word ‖ LSN
//! ```
//!
//! LSNs (log sequence numbers) are consecutive from 1 across segments; a segment's name and
//! header both give the LSN of its first record. The payload comes first in the checksum so an
//! appender can checksum its payload before it takes the journal's lock. A new segment starts
//! when the current one would grow past `segment_bytes` (a single group larger than that gets a
//! segment of its own); a group never spans two segments. Snapshots are described in
//! [`snapshot`].
//!
//! Segments are *preallocated*: a segment file is `segment_bytes` long from the start, all zeros
//! (written and synced) after its header, and records are written over the zeros. A batch's
//! `fdatasync` then has only data to flush: appending to a growing file also makes it commit the
//! file's new size and block allocation (on ext4 here, 4 KiB + `fdatasync` took ~165 µs appended
//! to a growing file against ~112 µs over zeros written and synced before), and that latency
//! bounds the throughput of group commit. This is how PostgreSQL treats its WAL segments, created
//! full-size and zero-filled ahead of need (`wal_init_zero`). Real zeros, not `fallocate`: the
//! blocks `fallocate` reserves are marked unwritten, and the first write into each converts it,
//! a metadata change for the `fdatasync` after it to commit, the very cost avoided.
//!
//! So the records of a segment end where its trailing zeros begin, not at the end of the file:
//! every record header holds a non-zero byte (its LSN, ≥ 1), and a segment ends with its last
//! record followed by zeros, or by nothing. The second form, the *growing layout*, is what a
//! journal from before preallocation holds, what a roll-over makes when no spare is ready, and
//! what `preallocate = false` makes (for copy-on-write file systems such as btrfs or ZFS, where
//! writing zeros first buys nothing: PostgreSQL's `wal_init_zero = off`). Both are read alike,
//! in any mix, so the format version stays 1. A gyro from before preallocation reads only the
//! growing layout (it would take the zeros after the records of an earlier segment for damage):
//! going back to one is not supported.
//!
//! # Group commit
//! `append` frames the record into a shared buffer under a mutex (a memcpy and a push of the
//! waiter: no allocation once the buffers have grown to their working size) and returns the
//! record's LSN at once. A dedicated writer thread swaps that buffer with its empty twin, writes
//! the batch with one `write_all` at the end of the segment's records (a positioned write, not
//! `O_APPEND`: a preallocated file is longer than its records), makes it durable with one
//! `fdatasync` (`File::sync_data`), and then runs the waiters of the batch in LSN order. While it writes and syncs, new appends fill
//! the other buffer, so batches grow with the load by themselves, without a timer (as in
//! PostgreSQL with `commit_delay = 0`, its default: one WAL flush covers every commit inserted
//! before it). Appended bytes waiting for the writer are bounded (`JOURNAL_BUFFER_MAX_BYTES`):
//! past that, `append` blocks until the writer takes the buffer.
//!
//! A failed write or fsync is final: the batch's waiters and every later one get an error, and
//! nothing is acknowledged again until a restart recovers from what is on disk. An fsync is not
//! retried, because after a failed fsync Linux may already have dropped the dirty pages and a
//! retry can report success for data that never reached the disk (PostgreSQL's "fsyncgate",
//! 2018, after which PostgreSQL panics on fsync failure). With [`Fsync::Off`] (benchmarks only) a
//! batch is acknowledged once written to the kernel; it survives a crash of gyro but not of the
//! machine. New segments, and the directory entry naming them, are synced in either mode.
//!
//! Zero-filling a segment takes tens to hundreds of milliseconds, which the writer must not
//! spend between two batches: a second thread (`spare`) fills `next.spare.tmp`, syncs it and
//! renames it `next.spare` as soon as a segment is started, so the next one is ready long before
//! it is needed. (Not the writer in its idle moments: under load, when the next segment comes
//! soonest, it has none.) At a roll-over the writer syncs the old segment, writes the new
//! segment's header into the spare, syncs it, renames it to the segment's name and syncs the
//! directory: the segment is durable, named and with its header before any record goes into it,
//! and a crash before the rename leaves a spare, never a segment without a header. When no spare
//! is ready (a disk slower than the load, a spare that cannot be used), the new segment is
//! created in the growing layout, as every segment was before: its batches pay for the growth,
//! nothing fails, and the next roll-over takes the spare made meanwhile. A new journal's first
//! segment is zero-filled at open, before the writer starts. At start-up a complete `next.spare`
//! is kept for the next roll-over; an unfinished `next.spare.tmp`, or a spare of another size,
//! is deleted. Neither name ends in `.journal`: nothing takes them for segments.
//!
//! # Recovery (in [`Journal::open`])
//! Every segment and record is checked (header, LSN continuity across segments, length, CRC,
//! LSN order) and the records after `start_after` (the LSN of the snapshot the caller loaded)
//! are handed to the replay function in LSN order, a group only once all of it has been read.
//! Zeros after the last record are a segment's normal end, in the last segment or any other;
//! the records are read up to the last non-zero byte. Then:
//! - a *torn tail* (the last segment ends in a record that is cut short or fails its checksum
//!   with no later write batch after it, or in an unfinished group; in a preallocated segment,
//!   bad bytes followed by zeros) is never-acknowledged data from a crash during a write: it is
//!   cut off with a warning naming the segment and the offset, and appends continue after the
//!   last good record. Cutting it off means writing zeros over the torn bytes and syncing them,
//!   in either layout. Not `set_len`, which would give back a preallocated segment's blocks; and
//!   the torn bytes must not stay behind the new end, where a later, shorter batch written over
//!   their start could leave one of their records exactly where the next LSN is expected, with
//!   that LSN, to be replayed although it was never acknowledged;
//! - anything else is *corruption*, and `open` fails with an error naming the segment file, the
//!   byte offset and the LSN expected: a bad record followed by a valid record that starts a later
//!   batch (found by trying every later offset), a bad record in a segment that is not the last,
//!   a bad segment header, or a missing segment (an LSN gap). Those records may have been
//!   acknowledged, and gyro does not start on a journal with acknowledged records missing.
//!
//! Why "a later batch" and not "any valid record": the writer writes a batch only after the
//! previous batch's fsync returned, so only the last batch can be torn; but within it, a power
//! failure can leave later pages on disk without earlier ones (neither the page cache nor the
//! disk keeps the order of pages within one write). Valid records of that same batch after a bad
//! one are therefore no proof of damage to acknowledged data; a record marked as the start of a
//! later batch is. With `fsync = "off"` several batches can be torn at once, and a power failure
//! may then stop start-up as corruption.
//!
//! The segments are read with plain reads while the writer may be writing (a checkpoint, `gyro
//! journal verify` on a running gyro): the records up to the durable LSN are whole in what such a
//! read returns, but past them it may see a page before a batch landed in it and the next page
//! after the following batch did, which it reports as a torn tail or as damage at the end of the
//! last segment. Only start-up acts on what it finds, and no writer runs then.
//!
//! A record that reached the disk but whose waiter never ran (the crash came between the write
//! and the acknowledgement) is replayed like any other: the rule is "acknowledged ⇒ durable",
//! not the converse, so payload owners must treat a retried request whose change they already
//! replayed as a duplicate. If `open` fails, whatever the replay function built must be
//! discarded.

mod format;
mod scan;
pub mod snapshot;
mod spare;
#[cfg(test)]
mod tests;
mod writer;

use std::error::Error;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use smallvec::SmallVec;

use crate::limits::{JOURNAL_BUFFER_MAX_BYTES, JOURNAL_RECORD_MAX_BYTES, JOURNAL_SEGMENT_BYTES_DEFAULT};

pub use format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
pub use scan::{list_segments, scan, Corruption, RecordRef, Scan, SegmentSummary, TornTail};
pub use spare::SPARE_NAME;

use spare::Spares;
use writer::{Segment, Shared, Writer};

/// Log sequence number: a record's position in the journal, consecutive from 1. `Lsn(0)` stands
/// for "before the first record" (no snapshot, nothing written yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Self = Self(0);

    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// When an appended record counts as durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After one `fdatasync` for the whole batch it was written in.
    #[default]
    Batch,
    /// Once written to the kernel, without fsync: for benchmarks only. A record acknowledged
    /// this way survives a crash of the process but not a power failure or a kernel crash.
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Segments and snapshots; created if missing.
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// A new segment starts when the current one would grow past this.
    pub segment_bytes: u64,
    /// Segments are created full-size and zero-filled, the next one ahead of time on a thread of
    /// its own, so a batch's `fdatasync` has no file growth to commit (see "Files"). Off, they
    /// grow as they are written: for file systems where writing zeros first buys nothing
    /// (copy-on-write ones such as btrfs or ZFS, as PostgreSQL's `wal_init_zero = off`).
    pub preallocate: bool,
    /// Appended bytes waiting for the writer before `append` blocks. One group always fits an
    /// empty buffer, whatever its size.
    pub buffer_bytes_max: usize,
    /// The LSN of the snapshot the caller loaded: replay starts after it (`Lsn::ZERO`: replay
    /// everything). The records up to it are still checked.
    pub start_after: Lsn,
}

impl JournalConfig {
    /// Batch fsync, 64 MiB preallocated segments, the default buffer bound, replay from the start.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: Fsync::Batch,
            segment_bytes: JOURNAL_SEGMENT_BYTES_DEFAULT,
            preallocate: true,
            buffer_bytes_max: JOURNAL_BUFFER_MAX_BYTES,
            start_after: Lsn::ZERO,
        }
    }
}

/// Told once whether the record (or group) it was appended with is durable. It runs on the
/// journal's writer thread, in LSN order, so it must be quick and must not block on the journal
/// (send on a channel, complete a oneshot, wake a task). A panic in it is logged and ignored.
pub trait Waiter: Send + 'static {
    /// `Ok` carries the record's LSN (the group's last for `append_many`).
    fn durable(self, result: Result<Lsn, JournalError>);
}

impl Waiter for std::sync::mpsc::Sender<Result<Lsn, JournalError>> {
    fn durable(self, result: Result<Lsn, JournalError>) {
        // The receiver may have gone away (its request was abandoned); the record is durable
        // all the same, and nobody is left to tell.
        let _ = self.send(result);
    }
}

/// The file operation that failed, for errors and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    CreateDirectory,
    ListDirectory,
    SyncDirectory,
    Open,
    Create,
    Read,
    Write,
    Sync,
    Truncate,
    Rename,
    Remove,
    StartWriterThread,
    Lock,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CreateDirectory => "create the directory",
            Self::ListDirectory => "list the directory",
            Self::SyncDirectory => "sync the directory",
            Self::Open => "open",
            Self::Create => "create",
            Self::Read => "read",
            Self::Write => "write",
            Self::Sync => "sync",
            Self::Truncate => "truncate",
            Self::Rename => "rename",
            Self::Remove => "remove",
            Self::StartWriterThread => "start the writer thread",
            Self::Lock => "lock",
        })
    }
}

/// What is wrong at one place in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the segment header is cut short ({bytes} of 24 bytes)")]
    HeaderCut { bytes: u64 },
    #[error("the segment header does not start with the journal magic `GYROJNL\\0`")]
    HeaderMagic,
    #[error("the segment header fails its checksum")]
    HeaderChecksum,
    #[error("the segment has format version {found}; this gyro reads version 1")]
    HeaderVersion { found: u32 },
    #[error("the segment header says the first LSN is {in_header}, unlike the file name")]
    HeaderName { in_header: Lsn },
    #[error("the segment starts at LSN {first}: the records before it are missing")]
    SegmentGap { first: Lsn },
    #[error("the segment starts at LSN {first}, overlapping the records before it")]
    SegmentOverlap { first: Lsn },
    #[error("a record is cut short ({bytes} bytes left in the file)")]
    RecordCut { bytes: u64 },
    #[error("a record claims {payload_bytes} payload bytes, more than any record may have")]
    RecordTooLong { payload_bytes: u64 },
    #[error("a record fails its checksum")]
    RecordChecksum,
    #[error("a record carries LSN {found}")]
    RecordLsn { found: Lsn },
    #[error("a group of records appended together is cut off by the end of the segment")]
    GroupCut,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{}: cannot {op}: {source}", path.display())]
    Io { op: IoOp, path: PathBuf, source: io::Error },
    #[error(
        "{0}. Restore the data directory from a backup, or run `gyro journal verify {dir}` to see \
         the extent; gyro will not start on a journal with acknowledged records missing",
        dir = .0.segment.parent().unwrap_or(Path::new(".")).display()
    )]
    Corrupt(Box<Corruption>),
    #[error(
        "{}: the snapshot covers LSN {snapshot} but the journal ends at LSN {last}: records the \
         snapshot reflects are missing from the journal",
        dir.display()
    )]
    SnapshotAhead { dir: PathBuf, snapshot: Lsn, last: Lsn },
    #[error(
        "{}: the journal is in use by another gyro process (it holds the lock on {LOCK_FILE}); \
         two writers would interleave their records",
        dir.display()
    )]
    InUse { dir: PathBuf },
    #[error("replaying the record with LSN {lsn}: {source}")]
    Replay { lsn: Lsn, source: Box<dyn Error + Send + Sync> },
    #[error(
        "the journal could not {op} ({kind}) and accepts no more records; restart to recover \
         from the last durable record"
    )]
    Failed { op: IoOp, kind: io::ErrorKind },
}

impl JournalError {
    /// For `map_err`: an I/O error of `op` on `path`.
    pub(crate) fn io(op: IoOp, path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io { op, path: path.to_owned(), source }
    }
}

/// What [`Journal::open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Records handed to the replay function (those after `start_after`).
    pub records_replayed: u64,
    /// Records checked but not replayed (at or before `start_after`).
    pub records_skipped: u64,
    /// Bytes of the segments kept up to the end of their records, headers included (not the
    /// zeros after the records of a preallocated segment).
    pub bytes: u64,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// The torn tail cut off, if there was one.
    pub tail: Option<TornTail>,
    pub duration: Duration,
}

impl RecoveryReport {
    pub fn tail_truncated_bytes(&self) -> u64 {
        self.tail.as_ref().map_or(0, |t| t.bytes)
    }
}

/// Counters since [`Journal::open`], for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub records: u64,
    /// Record bytes written (headers included, segment headers not).
    pub bytes: u64,
    pub batches: u64,
    pub last_batch_records: u64,
    pub last_batch_bytes: u64,
    /// Batch fsyncs (`fdatasync`) and their latency.
    pub syncs: u64,
    pub sync_ns_sum: u64,
    pub sync_ns_max: u64,
    /// New segments (roll-overs), and those of them that were a preallocated spare (the others
    /// grew as they were written: no spare was ready, or preallocation is off).
    pub segments_created: u64,
    pub segments_from_spare: u64,
    /// The most bytes ever waiting for the writer (bounded by `buffer_bytes_max`, or one group).
    pub buffered_bytes_high_water: u64,
    /// Every record up to this one is durable.
    pub durable_lsn: Lsn,
    pub failed: bool,
    /// Batches by record count: `[i]` counts batches of at most `BATCH_RECORDS_BUCKETS[i]`
    /// records and more than the bound before (the last slot: more than every bound).
    pub batch_records_hist: [u64; BATCH_RECORDS_BUCKETS.len() + 1],
    /// Syncs by latency, likewise against `SYNC_SECONDS_BUCKETS`.
    pub sync_seconds_hist: [u64; SYNC_SECONDS_BUCKETS.len() + 1],
}

/// Upper bounds of the batch-size histogram (records per batch).
pub const BATCH_RECORDS_BUCKETS: [f64; 12] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
/// Upper bounds of the fsync-latency histogram, in seconds (50 µs to 1 s: a healthy NVMe
/// `fdatasync` takes tens of µs, a cloud disk ms, a sick one hundreds).
pub const SYNC_SECONDS_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The slot of `value` in a histogram with upper `bounds` (the last slot: above them all).
pub fn bucket_of(bounds: &[f64], value: f64) -> usize {
    bounds.iter().position(|&b| value <= b).unwrap_or(bounds.len())
}

impl JournalStats {
    pub fn mean_batch_records(&self) -> f64 {
        if self.batches == 0 {
            return 0.0;
        }
        self.records as f64 / self.batches as f64
    }

    pub fn mean_sync(&self) -> Duration {
        Duration::from_nanos(self.sync_ns_sum.checked_div(self.syncs).unwrap_or(0))
    }
}

/// The journal: `Send + Sync`, shared as `Arc<Journal<W>>` by everything that appends.
pub struct Journal<W: Waiter> {
    shared: Arc<Shared<W>>,
    writer: Option<JoinHandle<()>>,
    dir: PathBuf,
    /// Holds an exclusive `flock` on `LOCK` for as long as the journal is open (the kernel
    /// drops it when the process dies, even by SIGKILL, so a crash never leaves it stale).
    _lock: File,
    #[cfg(test)]
    spares: Option<Arc<spare::Shared>>,
}

/// The file in the journal directory whose lock says a process owns the journal.
pub const LOCK_FILE: &str = "LOCK";

impl<W: Waiter> Journal<W> {
    /// Opens the journal in `cfg.dir` (creating it), recovers it (see the module doc), hands
    /// every record after `cfg.start_after` to `replay` in LSN order, and starts the writer.
    ///
    /// # Panics
    /// If `cfg.segment_bytes` cannot hold a segment header and a record header, or
    /// `cfg.buffer_bytes_max` is 0: configuration is validated before it gets here.
    pub fn open<E>(
        cfg: JournalConfig,
        mut replay: impl FnMut(Lsn, &[u8]) -> Result<(), E>,
    ) -> Result<(Self, RecoveryReport), JournalError>
    where
        E: Into<Box<dyn Error + Send + Sync>>,
    {
        assert!(
            cfg.segment_bytes >= (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64,
            "journal segment_bytes {} is too small",
            cfg.segment_bytes
        );
        assert!(cfg.buffer_bytes_max > 0, "journal buffer_bytes_max must not be 0");
        let started = Instant::now();
        if cfg.fsync == Fsync::Off {
            tracing::warn!(
                dir = %cfg.dir.display(),
                "journal fsync is OFF: acknowledged records can be lost on a power failure or a \
                 kernel crash; use this for benchmarks only"
            );
        }
        create_dir(&cfg.dir)?;
        // Before reading anything: a second `gyro serve` on the same directory would truncate
        // the first one's tail as torn and then append under the same LSNs.
        let lock = lock_dir(&cfg.dir)?;
        let (mut replayed, mut skipped) = (0u64, 0u64);
        let found = scan(&cfg.dir, cfg.start_after, |r| {
            if r.lsn <= cfg.start_after {
                skipped += 1;
                return Ok(());
            }
            replay(r.lsn, r.payload).map_err(|e| JournalError::Replay { lsn: r.lsn, source: e.into() })?;
            replayed += 1;
            Ok(())
        })?;
        if let Some(c) = found.corruption {
            return Err(JournalError::Corrupt(Box::new(c)));
        }
        let last = Lsn(found.next_lsn.0 - 1);
        if cfg.start_after > last {
            return Err(JournalError::SnapshotAhead { dir: cfg.dir, snapshot: cfg.start_after, last });
        }
        let mut spares = if cfg.preallocate {
            Some(Spares::new(&cfg.dir, cfg.segment_bytes))
        } else {
            spare::remove_leftovers(&cfg.dir);
            None
        };
        let segment = resume(&cfg.dir, &found, spares.as_ref())?;
        if let Some(s) = &mut spares {
            s.start();
        }
        #[cfg(test)]
        let spares_shared = spares.as_ref().map(Spares::shared);
        let report = RecoveryReport {
            segments: found.segments.len().max(1),
            records_replayed: replayed,
            records_skipped: skipped,
            bytes: found.bytes,
            next_lsn: found.next_lsn,
            tail: found.tail,
            duration: started.elapsed(),
        };
        tracing::info!(
            dir = %cfg.dir.display(),
            segments = report.segments,
            replayed,
            next_lsn = %report.next_lsn,
            tail_truncated_bytes = report.tail_truncated_bytes(),
            duration_ms = report.duration.as_millis() as u64,
            "journal recovered"
        );
        let shared = Arc::new(Shared::new(found.next_lsn, cfg.buffer_bytes_max));
        let writer = Writer::new(Arc::clone(&shared), segment, spares, &cfg, found.next_lsn);
        let handle =
            std::thread::Builder::new().name("gyro-journal".to_owned()).spawn(move || writer.run()).map_err(
                |source| JournalError::Io { op: IoOp::StartWriterThread, path: cfg.dir.clone(), source },
            )?;
        let journal = Self {
            shared,
            writer: Some(handle),
            dir: cfg.dir,
            _lock: lock,
            #[cfg(test)]
            spares: spares_shared,
        };
        Ok((journal, report))
    }

    /// Appends one record and returns its LSN at once; `waiter` is told when it is durable.
    /// Blocks while the buffer of appended bytes is full. After the journal has failed, the
    /// waiter gets the error (on the writer thread) and the LSN returned means nothing.
    ///
    /// # Panics
    /// If the payload is longer than `JOURNAL_RECORD_MAX_BYTES`: payloads are built by our own
    /// code, and one that large is a bug, not a condition to handle at run time.
    pub fn append(&self, payload: &[u8], waiter: W) -> Lsn {
        self.append_many(std::slice::from_ref(&payload), waiter)
    }

    /// Appends records that become durable together, and are replayed all or not at all: a
    /// crash in the middle of writing them leaves an unfinished group, which recovery cuts off.
    /// Returns the LSN of the last; the first is that minus `payloads.len() - 1`.
    ///
    /// # Panics
    /// If `payloads` is empty, a payload is longer than `JOURNAL_RECORD_MAX_BYTES`, or the
    /// group is larger than `JOURNAL_BUFFER_MAX_BYTES`.
    pub fn append_many(&self, payloads: &[&[u8]], waiter: W) -> Lsn {
        assert!(!payloads.is_empty(), "journal append_many needs at least one payload");
        // Checksums are computed before taking the lock; inline for the usual small groups.
        let mut crcs: SmallVec<[u32; 8]> = SmallVec::with_capacity(payloads.len());
        let mut total = 0usize;
        for p in payloads {
            assert!(
                p.len() <= JOURNAL_RECORD_MAX_BYTES,
                "journal record of {} bytes is over JOURNAL_RECORD_MAX_BYTES ({JOURNAL_RECORD_MAX_BYTES})",
                p.len()
            );
            crcs.push(format::payload_crc(p));
            total += format::record_bytes(p.len());
        }
        assert!(
            total <= JOURNAL_BUFFER_MAX_BYTES,
            "journal group of {total} bytes is over JOURNAL_BUFFER_MAX_BYTES ({JOURNAL_BUFFER_MAX_BYTES})"
        );
        self.shared.append(payloads, &crcs, total, waiter)
    }

    /// Tells `waiter` once every record appended before this call is durable, without
    /// appending anything: for an answer that changes nothing itself but must not overtake a
    /// record it depends on (a retransmission answered again while the original's record is
    /// still in flight).
    pub fn after_pending(&self, waiter: W) -> Lsn {
        self.shared.append(&[], &[], 0, waiter)
    }

    /// Blocks until every record up to `lsn` is durable (for a snapshot taken at `lsn`: a
    /// snapshot ahead of the journal would stop the next start-up).
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), JournalError> {
        self.shared.wait_durable(lsn)
    }

    pub fn stats(&self) -> JournalStats {
        self.shared.stats()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes what the retained snapshots make unnecessary; see [`snapshot::prune`].
    pub fn prune(&self, keep_snapshots: usize) -> Result<snapshot::Pruned, JournalError> {
        snapshot::prune(&self.dir, keep_snapshots)
    }

    /// Makes everything appended so far durable, runs its waiters and stops the writer thread
    /// (graceful shutdown; dropping the journal does the same). The final statistics, or the
    /// error that put the journal into its failed state.
    pub fn close(mut self) -> Result<JournalStats, JournalError> {
        self.stop();
        let stats = self.shared.stats();
        match self.shared.failure() {
            Some(f) => Err(JournalError::Failed { op: f.op, kind: f.kind }),
            None => Ok(stats),
        }
    }

    fn stop(&mut self) {
        let Some(handle) = self.writer.take() else { return };
        self.shared.close();
        if handle.join().is_err() {
            tracing::error!(dir = %self.dir.display(), "the journal writer thread panicked");
        }
    }
}

impl<W: Waiter> Drop for Journal<W> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
impl<W: Waiter> Journal<W> {
    /// Makes every later attempt at `op` on the writer thread fail (`None`: none).
    pub(crate) fn inject_fault(&self, op: Option<IoOp>) {
        self.shared.inject_fault(op);
    }

    /// The spare thread's state (`None`: preallocation is off).
    pub(crate) fn spares(&self) -> Option<&spare::Shared> {
        self.spares.as_deref()
    }
}

/// Takes the directory's exclusive lock without waiting, or says who has it.
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(JournalError::io(IoOp::Open, &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::InUse { dir: dir.to_owned() }),
        Err(std::fs::TryLockError::Error(source)) => Err(JournalError::Io { op: IoOp::Lock, path, source }),
    }
}

/// Creates the directory if missing; a new directory's own entry is made durable too.
fn create_dir(dir: &Path) -> Result<(), JournalError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
        op: IoOp::CreateDirectory,
        path: dir.to_owned(),
        source,
    })?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// fsync of a directory, which makes the names created or removed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| JournalError::Io {
        op: IoOp::SyncDirectory,
        path: dir.to_owned(),
        source,
    })
}

/// The segment appends go to after recovery: the last one with its torn tail cut off, or a new
/// first segment (preallocated, filled now if no spare is left from an earlier run, when
/// `spares` is given).
fn resume(dir: &Path, found: &Scan, spares: Option<&Spares>) -> Result<Segment, JournalError> {
    let Some(last) = found.segments.last() else {
        if let Some(spares) = spares {
            if let Some(segment) = Segment::from_spare(dir, spares, found.next_lsn, true)? {
                return Ok(segment);
            }
        }
        return Segment::create(dir, found.next_lsn);
    };
    if let Some(tail) = &found.tail {
        tracing::warn!(
            segment = %tail.segment.display(),
            offset = tail.offset,
            bytes = tail.bytes,
            problem = %tail.problem,
            "journal: cutting off a torn tail (records a crash left unfinished; never acknowledged)"
        );
        writer::cut_tail(tail, last.first_lsn)?;
    }
    Segment::resume(last)
}
