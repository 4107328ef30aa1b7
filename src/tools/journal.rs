//! `gyro journal verify` and `gyro journal inspect`: an operator's view of a journal directory.
//!
//! Owns: printing what [`crate::journal::scan`] and the snapshot checks find. Like `cli`, this is
//! an edge of the program: it reads files and prints.
//! Must not touch: the files. Both commands only read, so they are safe on the directory of a
//! running gyro, and on a damaged one before anything is restored or cut. Start-up applies the
//! same checks (`Journal::open`) and is the only place that repairs a torn tail. On a running
//! gyro the end of the last segment is being written: a problem reported there may be the writer
//! at work (see the journal's module doc, "Recovery"); stop gyro, or run the command again.
//!
//! Payloads are opaque here as in the journal; [`Describe`] is the hook through which the code
//! that defines them can print them decoded, with [`Preview`] (escaped text or hex) as the
//! default.

use std::io::{self, Write};
use std::path::Path;

use crate::journal::{self, snapshot, JournalError, Lsn, Scan};

/// One line about a record payload for `gyro journal inspect`, or `None` to skip the record
/// (a filter).
pub trait Describe {
    fn describe(&self, payload: &[u8]) -> Option<String>;
}

/// The first bytes of a payload: quoted and escaped when it is mostly printable text, else hex.
pub struct Preview;

/// Payload bytes shown by [`Preview`].
const PREVIEW_BYTES: usize = 48;

impl Describe for Preview {
    fn describe(&self, payload: &[u8]) -> Option<String> {
        Some(preview(payload))
    }
}

fn preview(payload: &[u8]) -> String {
    let shown = &payload[..payload.len().min(PREVIEW_BYTES)];
    let printable =
        shown.iter().filter(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\n' | b'\r')).count();
    let mut s = if 4 * printable >= 3 * shown.len() {
        format!("\"{}\"", shown.escape_ascii())
    } else {
        shown.iter().map(|b| format!("{b:02x}")).collect()
    };
    if shown.len() < payload.len() {
        s.push('…');
    }
    s
}

/// How a verified journal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// Only a torn tail, which start-up cuts off.
    TornTail,
    /// Corruption, an invalid snapshot, or a snapshot ahead of the journal.
    Damaged {
        problems: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

/// Checks every segment, record and snapshot in `dir` and prints what it finds.
pub fn verify(dir: &Path, out: &mut dyn Write) -> Result<Verdict, ToolError> {
    writeln!(out, "journal {}", dir.display())?;
    let mut problems = 0;
    let mut newest_valid = None;
    for file in snapshot::list(dir)? {
        let name = file_name(&file.path);
        match snapshot::check(&file) {
            Ok(body) => {
                writeln!(out, "  snapshot {name}: LSN {}, {body} body bytes, valid", file.lsn)?;
                newest_valid = Some(file.lsn);
            }
            Err(p) => {
                writeln!(out, "  snapshot {name}: INVALID: {p} (start-up skips it)")?;
                problems += 1;
            }
        }
    }
    // The records are checked as start-up would check them after loading the newest snapshot.
    let start_after = newest_valid.unwrap_or(Lsn::ZERO);
    let found = journal::scan(dir, start_after, |_| Ok(()))?;
    print_segments(&found, out)?;
    if let Ok(m) = std::fs::metadata(dir.join(journal::SPARE_NAME)) {
        writeln!(
            out,
            "  spare {}: {} bytes of zeros, the next segment prepared ahead of time (not part of the journal)",
            journal::SPARE_NAME,
            m.len()
        )?;
    }
    // The scan stops at the first problem; the segments after it show how far the damage may
    // reach (a later segment with a valid header still has its records).
    for (_, path) in journal::list_segments(dir)?.iter().skip(found.segments.len()) {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        writeln!(out, "  segment {}: {bytes} bytes, not checked (after the problem)", file_name(path))?;
    }
    let last = Lsn(found.next_lsn.0 - 1);
    match found.first_lsn() {
        Some(first) => writeln!(
            out,
            "total: {} segments, {} records, {} bytes, LSN {first}..={last}",
            found.segments.len(),
            found.records,
            found.bytes
        )?,
        None => writeln!(out, "total: {} segments, no records, {} bytes", found.segments.len(), found.bytes)?,
    }
    if found.corruption.is_none() && last < start_after {
        writeln!(
            out,
            "PROBLEM: the newest valid snapshot (LSN {start_after}) is ahead of the journal (LSN {last})"
        )?;
        problems += 1;
    }
    if let Some(c) = &found.corruption {
        writeln!(out, "PROBLEM: {c}; gyro will not start on this journal")?;
        problems += 1;
    }
    print_tail(&found, out)?;
    let verdict = match (problems, &found.tail) {
        (0, None) => Verdict::Clean,
        (0, Some(_)) => Verdict::TornTail,
        (problems, _) => Verdict::Damaged { problems },
    };
    if problems == 0 {
        writeln!(out, "OK")?;
    }
    Ok(verdict)
}

/// Prints the records from LSN `from`, at most `limit` of them, then any problem found.
pub fn inspect(
    dir: &Path,
    from: Lsn,
    limit: Option<u64>,
    describe: &dyn Describe,
    out: &mut dyn Write,
) -> Result<Verdict, ToolError> {
    // Inspect shows what is there, whatever snapshots there are: the first segment sets the start.
    let start_after = journal::list_segments(dir)?.first().map_or(Lsn::ZERO, |(first, _)| Lsn(first.0 - 1));
    writeln!(out, "{:>10}  {:<28}  {:>10}  {:>7}  payload", "lsn", "segment", "offset", "bytes")?;
    let mut printed = 0u64;
    let mut failed = None;
    let found = journal::scan(dir, start_after, |r| {
        if r.lsn < from || limit.is_some_and(|l| printed >= l) || failed.is_some() {
            return Ok(());
        }
        let Some(text) = describe.describe(r.payload) else { return Ok(()) };
        let line = writeln!(
            out,
            "{:>10}  {:<28}  {:>10}  {:>7}  {}",
            r.lsn,
            file_name(r.segment),
            r.offset,
            r.payload.len(),
            text
        );
        printed += 1;
        failed = line.err();
        Ok(())
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    if let Some(c) = &found.corruption {
        writeln!(out, "PROBLEM: {c}")?;
        return Ok(Verdict::Damaged { problems: 1 });
    }
    print_tail(&found, out)?;
    Ok(if found.tail.is_some() { Verdict::TornTail } else { Verdict::Clean })
}

fn print_segments(found: &Scan, out: &mut dyn Write) -> io::Result<()> {
    for s in &found.segments {
        let name = file_name(&s.path);
        let lsns = match s.records {
            0 => "no records".to_owned(),
            1 => format!("LSN {} (1 record)", s.first_lsn),
            n => format!("LSN {}..={} ({n} records)", s.first_lsn, s.first_lsn.0 + n - 1),
        };
        // The records' extent is what matters; a preallocated file is larger, with only zeros
        // after the data.
        let preallocated = if s.file_bytes > s.data_bytes {
            format!(" (a file of {} bytes, zeros after the data)", s.file_bytes)
        } else {
            String::new()
        };
        if s.valid_bytes == s.data_bytes {
            writeln!(out, "  segment {name}: {lsns}, {} bytes{preallocated}", s.valid_bytes)?;
        } else {
            writeln!(
                out,
                "  segment {name}: {lsns}, {} of {} bytes good{preallocated}",
                s.valid_bytes, s.data_bytes
            )?;
        }
    }
    Ok(())
}

fn print_tail(found: &Scan, out: &mut dyn Write) -> io::Result<()> {
    if let Some(t) = &found.tail {
        writeln!(
            out,
            "torn tail (would be truncated at start-up): {} at byte offset {}, {} bytes: {}",
            file_name(&t.segment),
            t.offset,
            t.bytes,
            t.problem
        )?;
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_text_as_text_and_binary_as_hex() {
        assert_eq!(preview(b"top-up 10.00 EUR"), "\"top-up 10.00 EUR\"");
        assert_eq!(preview(b"a\nb"), "\"a\\nb\"");
        assert_eq!(preview(&[0, 1, 0xfe]), "0001fe");
        assert_eq!(preview(&[b'x'; 60]), format!("\"{}\"…", "x".repeat(48)));
        assert_eq!(preview(b""), "\"\"");
    }
}
