//! One read-only pass over the segments: the checks of recovery, shared by [`Journal::open`]
//! (which then repairs a torn tail) and the `gyro journal verify|inspect` tools (which only
//! report).
//!
//! [`Journal::open`]: super::Journal::open

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::format::{self, SEGMENT_HEADER_BYTES};
use super::{IoOp, JournalError, Lsn, Problem};

/// A record as recovery hands it out, borrowed from the segment being read.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub lsn: Lsn,
    pub segment: &'a Path,
    /// Byte offset of the record header in the segment file.
    pub offset: u64,
    pub payload: &'a [u8],
}

/// What one pass over the segments found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The segments read, in order, up to the one with the first problem.
    pub segments: Vec<SegmentSummary>,
    /// Records handed to the visitor.
    pub records: u64,
    /// Bytes of the segments that are good (headers included; a torn tail excluded).
    pub bytes: u64,
    /// The LSN the next record gets: one past the last good record.
    pub next_lsn: Lsn,
    /// A torn tail in the last segment, which recovery cuts off.
    pub tail: Option<TornTail>,
    /// Corruption, which stops recovery.
    pub corruption: Option<Corruption>,
}

impl Scan {
    pub fn first_lsn(&self) -> Option<Lsn> {
        (self.records > 0).then(|| Lsn(self.next_lsn.0 - self.records))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    pub records: u64,
    /// Bytes up to the end of the last good record (or the header, once a torn tail is cut):
    /// where the next record goes.
    pub valid_bytes: u64,
    /// Bytes up to the last non-zero byte, and at least `valid_bytes`: more than `valid_bytes`
    /// when something other than zeros follows the good records (a torn tail, or damage).
    pub data_bytes: u64,
    /// The size of the file: `segment_bytes` (or more) for a preallocated segment, whose bytes
    /// after the records are zeros; `data_bytes` for one in the growing layout.
    pub file_bytes: u64,
}

/// The unfinished end of the last segment: a record cut short or failing its checksum with no
/// valid record after it, or an unfinished group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Where the good data ends (0: the segment header itself is unfinished).
    pub offset: u64,
    /// The torn bytes from `offset` to the last non-zero byte; only zeros follow them (the rest
    /// of a preallocated segment), or the end of the file.
    pub bytes: u64,
    pub problem: Problem,
}

/// Damage that may have destroyed acknowledged records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    pub segment: PathBuf,
    pub offset: u64,
    /// The LSN that should have been there.
    pub expected: Lsn,
    pub problem: Problem,
    /// The valid record found after the damage that starts a later write batch, which proves the
    /// damaged one had been synced and acknowledged: its byte offset and LSN.
    pub valid_after: Option<(u64, Lsn)>,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "journal segment {} at byte offset {}: {} (expected LSN {})",
            self.segment.display(),
            self.offset,
            self.problem,
            self.expected
        )?;
        if let Some((offset, lsn)) = self.valid_after {
            write!(f, ", and a later batch follows (a valid record with LSN {lsn} at byte offset {offset})")?;
        }
        Ok(())
    }
}

/// Reads every segment in `dir` in order, checking headers, continuity, lengths, checksums and
/// LSNs, and calls `visit` for each record of each complete group. Stops at the first problem,
/// which it reports as a torn tail or as corruption in the result; `Err` is for I/O errors and
/// whatever `visit` returns. `start_after` is the LSN of the snapshot in use: the first segment
/// may start anywhere up to one past it. Never writes.
pub fn scan(
    dir: &Path,
    start_after: Lsn,
    mut visit: impl FnMut(RecordRef<'_>) -> Result<(), JournalError>,
) -> Result<Scan, JournalError> {
    let segments = list_segments(dir)?;
    let mut scan = Scan {
        segments: Vec::with_capacity(segments.len()),
        records: 0,
        bytes: 0,
        next_lsn: start_after.next(),
        tail: None,
        corruption: None,
    };
    let mut bytes = Vec::new();
    let mut pending = Vec::new();
    let count = segments.len();
    for (i, (first, path)) in segments.into_iter().enumerate() {
        bytes.clear();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|source| JournalError::Io {
            op: IoOp::Read,
            path: path.clone(),
            source,
        })?;
        // The zeros after the data are the unused end of a preallocated segment: the records end
        // where they begin.
        let end = format::data_end(&bytes, 0);
        let mut segment = SegmentReader {
            summary: SegmentSummary {
                path,
                first_lsn: first,
                records: 0,
                valid_bytes: 0,
                data_bytes: end as u64,
                file_bytes: bytes.len() as u64,
            },
            bytes: &bytes,
            end,
            last: i + 1 == count,
            pending: &mut pending,
        };
        segment.read(&mut scan, i == 0, &mut visit)?;
        segment.summary.data_bytes = segment.summary.data_bytes.max(segment.summary.valid_bytes);
        scan.bytes += segment.summary.valid_bytes;
        scan.segments.push(segment.summary);
        if scan.tail.is_some() || scan.corruption.is_some() {
            break;
        }
    }
    Ok(scan)
}

/// The segment files in `dir` with the first LSN their names give, in LSN order. Other files
/// are not the journal's business, except misnamed `.journal` files, which get a warning.
pub fn list_segments(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, JournalError> {
    let err = |source| JournalError::Io { op: IoOp::ListDirectory, path: dir.to_owned(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match format::parse_segment_name(name) {
            Some(lsn) if lsn.0 > 0 => out.push((lsn, entry.path())),
            _ if name.ends_with(".journal") => {
                tracing::warn!(file = %entry.path().display(), "ignoring a misnamed journal segment");
            }
            _ => {}
        }
    }
    out.sort();
    Ok(out)
}

/// One record of an unfinished group: where it is, so it can be handed out once the group is
/// complete.
struct Held {
    lsn: Lsn,
    offset: usize,
    payload_len: usize,
}

struct SegmentReader<'a> {
    summary: SegmentSummary,
    bytes: &'a [u8],
    /// [`format::data_end`] of `bytes`: only zeros after it.
    end: usize,
    last: bool,
    pending: &'a mut Vec<Held>,
}

impl SegmentReader<'_> {
    fn read(
        &mut self,
        scan: &mut Scan,
        first_segment: bool,
        visit: &mut impl FnMut(RecordRef<'_>) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        let first = self.summary.first_lsn;
        let expected = scan.next_lsn;
        // The first segment may begin anywhere up to just after the snapshot; later ones must
        // continue exactly where the previous one ended.
        if first > expected {
            self.corrupt(scan, 0, expected, Problem::SegmentGap { first }, None);
            return Ok(());
        }
        if first < expected && !first_segment {
            self.corrupt(scan, 0, expected, Problem::SegmentOverlap { first }, None);
            return Ok(());
        }
        scan.next_lsn = first;
        match format::decode_segment_header(self.bytes) {
            // A crash while a new segment was being created; it holds no record yet (nothing but
            // zeros after the unfinished header, if the file is preallocated).
            Err(problem) if self.last && self.end <= SEGMENT_HEADER_BYTES => {
                self.summary.valid_bytes = SEGMENT_HEADER_BYTES as u64;
                scan.tail = Some(self.torn(0, problem));
                return Ok(());
            }
            Err(problem) => {
                self.corrupt(scan, 0, first, problem, None);
                return Ok(());
            }
            Ok(in_header) if in_header != first => {
                self.corrupt(scan, 0, first, Problem::HeaderName { in_header }, None);
                return Ok(());
            }
            Ok(_) => {}
        }
        self.records(scan, visit)
    }

    fn records(
        &mut self,
        scan: &mut Scan,
        visit: &mut impl FnMut(RecordRef<'_>) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        self.pending.clear();
        let mut off = SEGMENT_HEADER_BYTES;
        // Start of the group being read: where a torn tail would begin.
        let mut group_start = off;
        let mut expected = scan.next_lsn;
        // Every record header holds a non-zero byte (its LSN), so the records end before `end`:
        // zeros there are the normal end of the segment, not a record that fails its checks.
        while off < self.end {
            let record = match format::read_record(self.bytes, off, expected) {
                Ok(r) => r,
                Err(problem) => {
                    self.bad_record(scan, off, group_start, expected, problem);
                    return Ok(());
                }
            };
            self.pending.push(Held { lsn: expected, offset: off, payload_len: record.payload.len() });
            expected = expected.next();
            off += record.header.size();
            if !record.header.continues {
                self.release(scan, visit)?;
                group_start = off;
            }
        }
        self.summary.valid_bytes = group_start as u64;
        if !self.pending.is_empty() {
            // A group never spans segments: the writer keeps it whole.
            if self.last {
                scan.tail = Some(self.torn(group_start, Problem::GroupCut));
            } else {
                let group_first = scan.next_lsn;
                self.corrupt(scan, group_start, group_first, Problem::GroupCut, None);
            }
        }
        Ok(())
    }

    /// Hands out the records of the group just completed.
    fn release(
        &mut self,
        scan: &mut Scan,
        visit: &mut impl FnMut(RecordRef<'_>) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        for held in self.pending.drain(..) {
            let start = held.offset + format::RECORD_HEADER_BYTES;
            visit(RecordRef {
                lsn: held.lsn,
                segment: &self.summary.path,
                offset: held.offset as u64,
                payload: &self.bytes[start..start + held.payload_len],
            })?;
            self.summary.records += 1;
            scan.records += 1;
            scan.next_lsn = held.lsn.next();
        }
        Ok(())
    }

    /// A record that fails a check: a torn tail if it is in the last segment and no later write
    /// batch follows it, corruption otherwise.
    fn bad_record(
        &mut self,
        scan: &mut Scan,
        off: usize,
        group_start: usize,
        expected: Lsn,
        problem: Problem,
    ) {
        self.summary.valid_bytes = group_start as u64;
        let valid_after = format::valid_batch_after(self.bytes, self.end, off, expected, scan.next_lsn);
        if self.last && valid_after.is_none() {
            scan.tail = Some(self.torn(group_start, problem));
        } else {
            let after = valid_after.map(|(o, lsn)| (o as u64, lsn));
            self.corrupt(scan, off, expected, problem, after);
        }
    }

    fn torn(&self, offset: usize, problem: Problem) -> TornTail {
        TornTail {
            segment: self.summary.path.clone(),
            offset: offset as u64,
            bytes: self.end.saturating_sub(offset) as u64,
            problem,
        }
    }

    fn corrupt(
        &self,
        scan: &mut Scan,
        offset: usize,
        expected: Lsn,
        problem: Problem,
        valid_after: Option<(u64, Lsn)>,
    ) {
        scan.corruption = Some(Corruption {
            segment: self.summary.path.clone(),
            offset: offset as u64,
            expected,
            problem,
            valid_after,
        });
    }
}
