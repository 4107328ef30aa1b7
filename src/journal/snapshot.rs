//! Snapshots: an opaque body that stands for every record up to an LSN, so start-up replays only
//! the records after it and older segments can be deleted.
//!
//! `DIR/snapshot-{lsn:020}.snap`:
//!
//! ```text
//! header (20 bytes):  magic "GYROSNP\0" | version u32 (1) | LSN u64
//! body:               whatever the caller wrote
//! trailer (12 bytes): body length u64 | CRC32C u32 over header ‖ body ‖ body length
//! ```
//!
//! A snapshot is written to `….snap.tmp`, synced, renamed into place and the directory synced,
//! so a crash leaves either the old set of snapshots or the new one, never a half-written
//! `.snap` (the same sequence SQLite and PostgreSQL use for files replaced whole). One that fails
//! its checks anyway (a disk that lies) is skipped with a warning, and the next older one is used;
//! that is why [`prune`] keeps the segments back to the oldest retained snapshot.
//!
//! The snapshot's LSN must be durable in the journal before the snapshot is written
//! ([`Journal::wait_durable`](super::Journal::wait_durable)): a snapshot ahead of the journal
//! stops the next start-up.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::scan::list_segments;
use super::{sync_dir, IoOp, JournalError, Lsn};

const MAGIC: [u8; 8] = *b"GYROSNP\0";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 20;
const TRAILER_BYTES: usize = 12;
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";

/// A snapshot that passed its checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub lsn: Lsn,
    pub path: PathBuf,
    pub body: Vec<u8>,
}

/// A snapshot file by its name, not yet checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotFile {
    pub lsn: Lsn,
    pub path: PathBuf,
}

/// Why a snapshot file cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotProblem {
    #[error("shorter than a snapshot's header and trailer ({bytes} bytes)")]
    Short { bytes: u64 },
    #[error("does not start with the snapshot magic `GYROSNP\\0`")]
    Magic,
    #[error("format version {found}; this gyro reads version 1")]
    Version { found: u32 },
    #[error("the header says LSN {in_header}, unlike the file name")]
    Lsn { in_header: Lsn },
    #[error("the trailer gives a body of {in_trailer} bytes, the file holds {actual}")]
    Length { in_trailer: u64, actual: u64 },
    #[error("fails its checksum")]
    Checksum,
    #[error("cannot be read ({0})")]
    Read(io::ErrorKind),
}

/// What [`prune`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The oldest snapshot kept, which the remaining segments reach back to.
    pub oldest_kept: Option<Lsn>,
    pub segments_removed: usize,
    pub snapshots_removed: usize,
}

/// Writes the snapshot for `lsn` atomically (see the module doc) and returns its path. `body`
/// writes the content; its error, or any I/O error, leaves no `.snap` behind.
pub fn write(
    dir: &Path,
    lsn: Lsn,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<PathBuf, JournalError> {
    let path = dir.join(name(lsn));
    let tmp = dir.join(format!("{}.tmp", name(lsn)));
    let result = write_tmp(&tmp, lsn, body);
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(JournalError::Io { op: IoOp::Write, path: tmp, source });
    }
    std::fs::rename(&tmp, &path).map_err(|source| JournalError::Io {
        op: IoOp::Rename,
        path: tmp,
        source,
    })?;
    sync_dir(dir)?;
    Ok(path)
}

/// The snapshot files in `dir` by name, oldest first.
pub fn list(dir: &Path) -> Result<Vec<SnapshotFile>, JournalError> {
    let err = |source| JournalError::Io { op: IoOp::ListDirectory, path: dir.to_owned(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        if let Some(lsn) = name.to_str().and_then(parse_name) {
            out.push(SnapshotFile { lsn, path: entry.path() });
        }
    }
    out.sort();
    Ok(out)
}

/// Checks a snapshot without keeping its body; returns the body length.
pub fn check(file: &SnapshotFile) -> Result<u64, SnapshotProblem> {
    load(file, None)
}

/// Reads and checks a snapshot.
pub fn read(file: &SnapshotFile) -> Result<Snapshot, SnapshotProblem> {
    let mut body = Vec::new();
    load(file, Some(&mut body))?;
    Ok(Snapshot { lsn: file.lsn, path: file.path.clone(), body })
}

/// The newest snapshot that passes its checks; invalid newer ones are skipped with a warning.
pub fn newest_valid(dir: &Path) -> Result<Option<Snapshot>, JournalError> {
    for file in list(dir)?.iter().rev() {
        match read(file) {
            Ok(s) => return Ok(Some(s)),
            Err(problem) => tracing::warn!(
                snapshot = %file.path.display(),
                %problem,
                "skipping an invalid snapshot; trying the one before"
            ),
        }
    }
    Ok(None)
}

/// Keeps the newest `keep` valid snapshots and deletes what they make unnecessary: older
/// snapshots, and the segments whose records all lie at or before the oldest snapshot kept. The
/// newest segment is never deleted (appends go there). Invalid snapshots newer than the oldest
/// kept are left for an operator to look at. Safe while the journal is open.
///
/// # Panics
/// If `keep` is 0: the journal cannot be pruned without a snapshot to stand for it.
pub fn prune(dir: &Path, keep: usize) -> Result<Pruned, JournalError> {
    assert!(keep > 0, "prune must keep at least one snapshot");
    let files = list(dir)?;
    let mut pruned = Pruned::default();
    let mut kept = 0;
    for file in files.iter().rev() {
        if kept == keep {
            break;
        }
        match check(file) {
            Ok(_) => {
                kept += 1;
                pruned.oldest_kept = Some(file.lsn);
            }
            Err(problem) => {
                tracing::warn!(snapshot = %file.path.display(), %problem, "not counting an invalid snapshot");
            }
        }
    }
    let Some(oldest) = pruned.oldest_kept else { return Ok(pruned) };
    for file in files.iter().filter(|f| f.lsn < oldest) {
        remove(&file.path)?;
        pruned.snapshots_removed += 1;
    }
    let segments = list_segments(dir)?;
    for pair in segments.windows(2) {
        // Every record of a segment comes before the next segment's first LSN.
        let next_first = pair[1].0;
        if oldest.0 + 1 < next_first.0 {
            break;
        }
        remove(&pair[0].1)?;
        pruned.segments_removed += 1;
    }
    if pruned.snapshots_removed + pruned.segments_removed > 0 {
        sync_dir(dir)?;
    }
    Ok(pruned)
}

fn name(lsn: Lsn) -> String {
    format!("{PREFIX}{:020}{SUFFIX}", lsn.0)
}

fn parse_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

fn remove(path: &Path) -> Result<(), JournalError> {
    std::fs::remove_file(path).map_err(|source| JournalError::Io {
        op: IoOp::Remove,
        path: path.to_owned(),
        source,
    })
}

fn write_tmp(tmp: &Path, lsn: Lsn, body: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(tmp)?;
    let mut w = Checksummed { inner: BufWriter::new(file), crc: 0, bytes: 0 };
    w.write_all(&MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&lsn.0.to_le_bytes())?;
    body(&mut w)?;
    let body_bytes = w.bytes - HEADER_BYTES as u64;
    w.write_all(&body_bytes.to_le_bytes())?;
    let crc = w.crc;
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes())?;
    let file = inner.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()
}

/// A writer that checksums and counts what goes through it.
struct Checksummed {
    inner: BufWriter<File>,
    crc: u32,
    bytes: u64,
}

impl Write for Checksummed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a snapshot file by streaming it once, keeping the body in `sink` if given.
fn load(file: &SnapshotFile, mut sink: Option<&mut Vec<u8>>) -> Result<u64, SnapshotProblem> {
    let read_err = |e: io::Error| SnapshotProblem::Read(e.kind());
    let f = File::open(&file.path).map_err(read_err)?;
    let len = f.metadata().map_err(read_err)?.len();
    if len < (HEADER_BYTES + TRAILER_BYTES) as u64 {
        return Err(SnapshotProblem::Short { bytes: len });
    }
    let mut r = BufReader::with_capacity(64 * 1024, f);
    let mut header = [0u8; HEADER_BYTES];
    r.read_exact(&mut header).map_err(read_err)?;
    if header[0..8] != MAGIC {
        return Err(SnapshotProblem::Magic);
    }
    let mut crc = crc32c::crc32c(&header);
    let body_bytes = len - (HEADER_BYTES + TRAILER_BYTES) as u64;
    if let Some(body) = sink.as_deref_mut() {
        body.reserve(body_bytes as usize);
    }
    let mut left = body_bytes;
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        r.read_exact(&mut chunk[..n]).map_err(read_err)?;
        crc = crc32c::crc32c_append(crc, &chunk[..n]);
        if let Some(body) = sink.as_deref_mut() {
            body.extend_from_slice(&chunk[..n]);
        }
        left -= n as u64;
    }
    let mut trailer = [0u8; TRAILER_BYTES];
    r.read_exact(&mut trailer).map_err(read_err)?;
    crc = crc32c::crc32c_append(crc, &trailer[0..8]);
    if crc.to_le_bytes() != trailer[8..12] {
        return Err(SnapshotProblem::Checksum);
    }
    // Fields are trusted only once the checksum holds, so a damaged field is reported as damage.
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != VERSION {
        return Err(SnapshotProblem::Version { found: version });
    }
    let in_header = Lsn(u64::from_le_bytes(header[12..20].try_into().expect("8 bytes")));
    if in_header != file.lsn {
        return Err(SnapshotProblem::Lsn { in_header });
    }
    let in_trailer = u64::from_le_bytes(trailer[0..8].try_into().expect("8 bytes"));
    if in_trailer != body_bytes {
        return Err(SnapshotProblem::Length { in_trailer, actual: body_bytes });
    }
    Ok(body_bytes)
}
