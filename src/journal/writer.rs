//! Group commit: the shared append buffer, the writer thread, and the segment file it writes.
//!
//! Locks: `pending` (appenders and the writer's swap; held for a memcpy) and `progress`
//! (statistics, the durable LSN, the failure). The writer never holds both, and never holds
//! either while it writes, syncs or runs waiters.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::format::{self, RecordHeader, SEGMENT_HEADER_BYTES};
use super::scan::{SegmentSummary, TornTail};
use super::spare::Spares;
use super::{sync_dir, Fsync, IoOp, JournalConfig, JournalError, JournalStats, Lsn, Waiter};

// Nothing panics while holding these locks (framing is checked before, waiters run outside), so
// poisoning would mean a bug we must not write past.
const POISONED: &str = "journal lock poisoned by a panic";

/// Why the journal stopped accepting records; every later waiter gets it as an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) op: IoOp,
    pub(crate) kind: io::ErrorKind,
}

impl Failure {
    fn error(self) -> JournalError {
        JournalError::Failed { op: self.op, kind: self.kind }
    }

    fn of(op: IoOp) -> impl FnOnce(io::Error) -> Self {
        move |e| Self { op, kind: e.kind() }
    }

    fn from_journal(e: JournalError) -> Self {
        match e {
            JournalError::Io { op, source, .. } => Self { op, kind: source.kind() },
            _ => Self { op: IoOp::Create, kind: io::ErrorKind::Other },
        }
    }
}

pub(crate) struct Shared<W> {
    pending: Mutex<Pending<W>>,
    /// The writer waits here for records (only while `writer_idle`, so appends do not make a
    /// futex call each).
    wake_writer: Condvar,
    /// Appenders wait here while the buffer is full (counted in `appenders_blocked`).
    wake_appenders: Condvar,
    progress: Mutex<Progress>,
    /// `wait_durable` callers wait here (counted in `Progress::lsn_waiters`).
    durable_changed: Condvar,
    buffer_bytes_max: usize,
    #[cfg(test)]
    fault: Mutex<Option<IoOp>>,
}

/// The batch being filled.
struct Pending<W> {
    bytes: Vec<u8>,
    /// Each waiter with the LSN it will be told: its record's, or its group's last.
    waiters: Vec<(Lsn, W)>,
    next_lsn: Lsn,
    failure: Option<Failure>,
    closing: bool,
    writer_idle: bool,
    appenders_blocked: usize,
    high_water: usize,
}

struct Progress {
    stats: JournalStats,
    failure: Option<Failure>,
    lsn_waiters: usize,
}

impl<W: Waiter> Shared<W> {
    pub(crate) fn new(next_lsn: Lsn, buffer_bytes_max: usize) -> Self {
        Self {
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                waiters: Vec::new(),
                next_lsn,
                failure: None,
                closing: false,
                writer_idle: false,
                appenders_blocked: 0,
                high_water: 0,
            }),
            wake_writer: Condvar::new(),
            wake_appenders: Condvar::new(),
            progress: Mutex::new(Progress {
                stats: JournalStats { durable_lsn: Lsn(next_lsn.0 - 1), ..JournalStats::default() },
                failure: None,
                lsn_waiters: 0,
            }),
            durable_changed: Condvar::new(),
            buffer_bytes_max,
            #[cfg(test)]
            fault: Mutex::new(None),
        }
    }

    /// Frames the group into the pending batch (waiting for room first) and queues its waiter.
    pub(crate) fn append(&self, payloads: &[&[u8]], crcs: &[u32], total: usize, waiter: W) -> Lsn {
        let mut p = self.pending.lock().expect(POISONED);
        // An empty buffer takes any group, so a group larger than the bound cannot wait forever.
        while p.failure.is_none() && !p.bytes.is_empty() && p.bytes.len() + total > self.buffer_bytes_max {
            p.appenders_blocked += 1;
            p = self.wake_appenders.wait(p).expect(POISONED);
            p.appenders_blocked -= 1;
        }
        let first = p.next_lsn;
        // No payloads (a barrier): the waiter is told with the last LSN appended before it.
        let last = Lsn(first.0 + payloads.len() as u64 - 1);
        if p.failure.is_none() {
            for (i, (payload, crc)) in payloads.iter().zip(crcs).enumerate() {
                let lsn = Lsn(first.0 + i as u64);
                format::encode_record(&mut p.bytes, lsn, payload, *crc, i + 1 < payloads.len());
            }
            p.next_lsn = last.next();
            p.high_water = p.high_water.max(p.bytes.len());
        }
        p.waiters.push((last, waiter));
        if p.writer_idle {
            p.writer_idle = false;
            self.wake_writer.notify_one();
        }
        last
    }

    pub(crate) fn wait_durable(&self, lsn: Lsn) -> Result<(), JournalError> {
        let appended = Lsn(self.pending.lock().expect(POISONED).next_lsn.0 - 1);
        assert!(lsn <= appended, "wait_durable({lsn}) for a record not appended yet (last is {appended})");
        let mut p = self.progress.lock().expect(POISONED);
        loop {
            if lsn <= p.stats.durable_lsn {
                return Ok(());
            }
            if let Some(f) = p.failure {
                return Err(f.error());
            }
            p.lsn_waiters += 1;
            p = self.durable_changed.wait(p).expect(POISONED);
            p.lsn_waiters -= 1;
        }
    }

    pub(crate) fn stats(&self) -> JournalStats {
        self.progress.lock().expect(POISONED).stats.clone()
    }

    pub(crate) fn failure(&self) -> Option<Failure> {
        self.progress.lock().expect(POISONED).failure
    }

    /// Asks the writer to finish what is pending and stop.
    pub(crate) fn close(&self) {
        let mut p = self.pending.lock().expect(POISONED);
        p.closing = true;
        self.wake_writer.notify_one();
    }

    /// The next batch for the writer, swapped with its empty buffers; `None` once closed and
    /// drained.
    fn take_batch(&self, bytes: &mut Vec<u8>, waiters: &mut Vec<(Lsn, W)>) -> Option<Taken> {
        let mut p = self.pending.lock().expect(POISONED);
        while p.waiters.is_empty() {
            if p.closing {
                return None;
            }
            p.writer_idle = true;
            p = self.wake_writer.wait(p).expect(POISONED);
        }
        p.writer_idle = false;
        std::mem::swap(&mut p.bytes, bytes);
        std::mem::swap(&mut p.waiters, waiters);
        if p.appenders_blocked > 0 {
            self.wake_appenders.notify_all();
        }
        Some(Taken { failure: p.failure, high_water: p.high_water })
    }

    fn fail(&self, failure: Failure) {
        let mut p = self.pending.lock().expect(POISONED);
        p.failure.get_or_insert(failure);
        if p.appenders_blocked > 0 {
            self.wake_appenders.notify_all();
        }
        drop(p);
        let mut g = self.progress.lock().expect(POISONED);
        g.failure.get_or_insert(failure);
        g.stats.failed = true;
        if g.lsn_waiters > 0 {
            self.durable_changed.notify_all();
        }
    }

    fn record(&self, done: &Written, high_water: usize) {
        let mut g: MutexGuard<'_, Progress> = self.progress.lock().expect(POISONED);
        let s = &mut g.stats;
        s.records += done.records;
        s.bytes += done.bytes;
        s.batches += 1;
        s.last_batch_records = done.records;
        s.batch_records_hist[super::bucket_of(&super::BATCH_RECORDS_BUCKETS, done.records as f64)] += 1;
        s.last_batch_bytes = done.bytes;
        s.segments_created += done.segments_created;
        s.segments_from_spare += done.segments_from_spare;
        s.buffered_bytes_high_water = high_water as u64;
        if let Some(ns) = done.sync_ns {
            s.syncs += 1;
            s.sync_ns_sum += ns;
            s.sync_ns_max = s.sync_ns_max.max(ns);
            s.sync_seconds_hist[super::bucket_of(&super::SYNC_SECONDS_BUCKETS, ns as f64 / 1e9)] += 1;
        }
        s.durable_lsn = done.last_lsn;
        if g.lsn_waiters > 0 {
            self.durable_changed.notify_all();
        }
    }

    #[cfg(test)]
    pub(crate) fn inject_fault(&self, op: Option<IoOp>) {
        *self.fault.lock().expect(POISONED) = op;
    }
}

struct Taken {
    failure: Option<Failure>,
    high_water: usize,
}

/// What one batch put on disk.
struct Written {
    records: u64,
    bytes: u64,
    last_lsn: Lsn,
    sync_ns: Option<u64>,
    segments_created: u64,
    segments_from_spare: u64,
}

/// The writer thread's state: the open segment and where the next record goes.
pub(crate) struct Writer<W> {
    shared: Arc<Shared<W>>,
    segment: Segment,
    /// The preallocated next segment (`None`: segments grow as they are written). Dropped, and
    /// its thread stopped, when the writer stops.
    spares: Option<Spares>,
    dir: PathBuf,
    fsync: Fsync,
    segment_bytes: u64,
    next_lsn: Lsn,
}

impl<W: Waiter> Writer<W> {
    pub(crate) fn new(
        shared: Arc<Shared<W>>,
        segment: Segment,
        spares: Option<Spares>,
        cfg: &JournalConfig,
        next_lsn: Lsn,
    ) -> Self {
        Self {
            shared,
            segment,
            spares,
            dir: cfg.dir.clone(),
            fsync: cfg.fsync,
            segment_bytes: cfg.segment_bytes,
            next_lsn,
        }
    }

    pub(crate) fn run(mut self) {
        // The second pair of buffers: swapped with the pending ones, never freed, so a steady
        // load does not allocate.
        let mut bytes = Vec::new();
        let mut waiters = Vec::new();
        while let Some(taken) = self.shared.take_batch(&mut bytes, &mut waiters) {
            let outcome = match taken.failure {
                Some(f) => Err(f),
                // Only barriers (`Journal::after_pending`): everything appended before them was
                // in an earlier batch, durable by now.
                None if bytes.is_empty() => Ok(None),
                None => self.write_batch(&mut bytes).map(Some),
            };
            match &outcome {
                Ok(None) => {}
                Ok(Some(done)) => self.shared.record(done, taken.high_water),
                Err(f) if taken.failure.is_none() => {
                    tracing::error!(
                        segment = %self.segment.path.display(),
                        op = %f.op,
                        error = ?f.kind,
                        "journal write failed: no record is acknowledged from now on; restart to recover"
                    );
                    self.shared.fail(*f);
                }
                Err(_) => {}
            }
            for (lsn, waiter) in waiters.drain(..) {
                let result = outcome.as_ref().map(|_| lsn).map_err(|f| f.error());
                if catch_unwind(AssertUnwindSafe(|| waiter.durable(result))).is_err() {
                    tracing::error!(lsn = %lsn, "a journal waiter panicked");
                }
            }
            bytes.clear();
        }
        if self.fsync == Fsync::Off && self.shared.failure().is_none() {
            // A graceful shutdown flushes even when batches were not synced.
            if let Err(error) = self.segment.file.sync_data() {
                tracing::error!(segment = %self.segment.path.display(), %error, "journal sync at close failed");
            }
        }
    }

    /// Writes a batch, in as many segments as it needs, and syncs it.
    fn write_batch(&mut self, batch: &mut [u8]) -> Result<Written, Failure> {
        let first_lsn = self.next_lsn;
        format::mark_batch_start(batch, first_lsn);
        let (mut segments_created, mut segments_from_spare) = (0, 0);
        let mut pos = 0;
        while pos < batch.len() {
            let end = self.fitting(batch, pos);
            if end == pos {
                let first = RecordHeader::at(batch, pos).expect("a batch holds whole records").lsn;
                if self.roll_over(first)? {
                    segments_from_spare += 1;
                }
                segments_created += 1;
                continue;
            }
            self.injected(IoOp::Write)?;
            // At the end of the records (the file's cursor, see `Segment`).
            self.segment.file.write_all(&batch[pos..end]).map_err(Failure::of(IoOp::Write))?;
            self.segment.len += (end - pos) as u64;
            self.segment.has_records = true;
            pos = end;
        }
        let sync_ns = match self.fsync {
            Fsync::Batch => {
                let started = Instant::now();
                self.injected(IoOp::Sync)?;
                self.segment.file.sync_data().map_err(Failure::of(IoOp::Sync))?;
                Some(started.elapsed().as_nanos() as u64)
            }
            Fsync::Off => None,
        };
        Ok(Written {
            records: self.next_lsn.0 - first_lsn.0,
            bytes: batch.len() as u64,
            last_lsn: Lsn(self.next_lsn.0 - 1),
            sync_ns,
            segments_created,
            segments_from_spare,
        })
    }

    /// End of the whole groups from `pos` that fit in the current segment: at least one group
    /// when the segment holds no record yet, so an oversized group gets a segment to itself.
    fn fitting(&mut self, batch: &[u8], pos: usize) -> usize {
        let room = self.segment_bytes.saturating_sub(self.segment.len);
        let (mut end, mut off, mut lsn) = (pos, pos, self.next_lsn);
        while let Some(h) = RecordHeader::at(batch, off) {
            // Pair assertion with the appenders' framing: a batch holds consecutive LSNs.
            assert_eq!(h.lsn, lsn, "journal batch out of LSN order");
            off += h.size();
            lsn = lsn.next();
            if h.continues {
                continue;
            }
            let first_group = end == pos && !self.segment.has_records;
            if (off - pos) as u64 > room && !first_group {
                break;
            }
            end = off;
            self.next_lsn = lsn;
        }
        assert!(end > pos || self.segment.has_records, "journal batch ends inside a group");
        end
    }

    /// Starts a new segment for the record with LSN `first`, from the spare when one is ready
    /// (true), else growing as it is written. The old segment is synced first, in either fsync
    /// mode: recovery reads damage in any but the last segment as corruption, so a segment must
    /// be complete on disk before a newer one exists.
    fn roll_over(&mut self, first: Lsn) -> Result<bool, Failure> {
        self.injected(IoOp::Sync)?;
        self.segment.file.sync_data().map_err(Failure::of(IoOp::Sync))?;
        self.injected(IoOp::Create)?;
        let spare = match &self.spares {
            Some(spares) => {
                Segment::from_spare(&self.dir, spares, first, false).map_err(Failure::from_journal)?
            }
            None => None,
        };
        let from_spare = spare.is_some();
        self.segment = match spare {
            Some(segment) => segment,
            // No spare ready (the disk is slower than the load, or preallocation is off): this
            // segment costs what every segment cost before preallocation, and nothing fails.
            None => Segment::create(&self.dir, first).map_err(Failure::from_journal)?,
        };
        Ok(from_spare)
    }

    #[cfg(test)]
    fn injected(&self, op: IoOp) -> Result<(), Failure> {
        match *self.shared.fault.lock().expect(POISONED) {
            Some(f) if f == op => Err(Failure { op, kind: io::ErrorKind::Other }),
            _ => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn injected(&self, _op: IoOp) -> Result<(), Failure> {
        Ok(())
    }
}

/// The segment file being written: records go at `len`, the end of the records, which is not the
/// end of the file when the segment is preallocated.
///
/// The file is not opened with `O_APPEND`: the write position is the file's cursor, put at the
/// end of the records when the segment is opened and moved by each `write_all` exactly as `len`
/// is (after a failed write neither matters: the journal accepts nothing more).
pub(crate) struct Segment {
    file: File,
    path: PathBuf,
    len: u64,
    has_records: bool,
}

impl Segment {
    /// Creates the segment whose first record will be `first` in the growing layout (the file
    /// ends where the records end), durable with its name before any record goes into it.
    pub(crate) fn create(dir: &Path, first: Lsn) -> Result<Self, JournalError> {
        let path = dir.join(format::segment_name(first));
        let err = |op| JournalError::io(op, &path);
        let mut file =
            OpenOptions::new().write(true).create_new(true).open(&path).map_err(err(IoOp::Create))?;
        file.write_all(&format::encode_segment_header(first)).map_err(err(IoOp::Write))?;
        file.sync_all().map_err(err(IoOp::Sync))?;
        sync_dir(dir)?;
        Ok(Self { file, path, len: SEGMENT_HEADER_BYTES as u64, has_records: false })
    }

    /// Turns the ready spare, if there is one, into the segment whose first record will be
    /// `first`: its header is written and synced, then the spare is renamed to the segment's name
    /// and the directory synced, so the segment is durable with its name, and complete, before
    /// any record goes into it (a crash before the rename leaves a spare, never a segment without
    /// a header). With `fill_now` (start-up, before the spare thread runs) a spare is filled on
    /// the spot if none is ready. `Ok(None)`: no spare ready, or it could not be used (a warning
    /// says why); the caller creates a growing segment instead.
    pub(crate) fn from_spare(
        dir: &Path,
        spares: &Spares,
        first: Lsn,
        fill_now: bool,
    ) -> Result<Option<Self>, JournalError> {
        let spare = if fill_now { spares.take_or_fill() } else { spares.take() };
        let Some(spare) = spare else { return Ok(None) };
        let path = dir.join(format::segment_name(first));
        let renamed = (|| {
            let mut file = OpenOptions::new().write(true).open(&spare)?;
            file.write_all(&format::encode_segment_header(first))?;
            // Overwrites a block written and synced before: no metadata for fdatasync to commit.
            file.sync_data()?;
            std::fs::rename(&spare, &path)?;
            Ok::<_, io::Error>(file)
        })();
        spares.release();
        let file = match renamed {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(
                    spare = %spare.display(),
                    %error,
                    "journal: cannot use the preallocated spare; the new segment grows as it is written"
                );
                return Ok(None);
            }
        };
        sync_dir(dir)?;
        // The cursor is after the header: the records go there.
        Ok(Some(Self { file, path, len: SEGMENT_HEADER_BYTES as u64, has_records: false }))
    }

    /// Reopens the last segment to write after the last good record.
    pub(crate) fn resume(s: &SegmentSummary) -> Result<Self, JournalError> {
        let err = |op| JournalError::io(op, &s.path);
        let mut file = OpenOptions::new().write(true).open(&s.path).map_err(err(IoOp::Open))?;
        let file_len = file.metadata().map_err(err(IoOp::Read))?.len();
        // Pair assertion with recovery: the records end inside the file, and only zeros follow
        // them (a torn tail has been zeroed).
        assert!(file_len >= s.valid_bytes, "{}: length after recovery", s.path.display());
        file.seek(SeekFrom::Start(s.valid_bytes)).map_err(err(IoOp::Open))?;
        Ok(Self { file, path: s.path.clone(), len: s.valid_bytes, has_records: s.records > 0 })
    }
}

/// Repairs a torn tail of the last segment: writes zeros over the torn bytes (rewriting the
/// header when that was unfinished) and syncs them.
///
/// Zeroing rather than truncating, because a preallocated segment must keep its blocks (that is
/// the point of preallocating it) and its end is where the zeros begin. The torn bytes must not
/// stay behind the new end either: a later, shorter batch written over their start would leave
/// the rest of them after it, where a record of the torn batch could sit exactly where the next
/// record is expected, with the LSN it expects, and be replayed although it was never
/// acknowledged.
pub(crate) fn cut_tail(tail: &TornTail, first: Lsn) -> Result<(), JournalError> {
    let err = |op| JournalError::io(op, &tail.segment);
    let mut file = OpenOptions::new().write(true).open(&tail.segment).map_err(err(IoOp::Open))?;
    let (start, end) = (tail.offset, tail.offset + tail.bytes);
    if start < SEGMENT_HEADER_BYTES as u64 {
        // An unfinished header (only zeros after it): a new one, for the LSN the name gives.
        file.write_all(&format::encode_segment_header(first)).map_err(err(IoOp::Write))?;
    }
    let from = start.max(SEGMENT_HEADER_BYTES as u64);
    if from < end {
        file.seek(SeekFrom::Start(from)).map_err(err(IoOp::Write))?;
        io::copy(&mut io::repeat(0).take(end - from), &mut file).map_err(err(IoOp::Write))?;
    }
    file.sync_all().map_err(err(IoOp::Sync))
}
