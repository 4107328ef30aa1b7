//! `gyro journal verify` and `gyro journal inspect` on journals made by the library: what they
//! print, their exit codes, and that they change nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use gyro::journal::{snapshot, Journal, JournalConfig, JournalError, Lsn};

fn gyro(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gyro")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Writes `n` records ("record 1", "record 2", …) in segments of `segment_bytes`, each
/// acknowledged before the next (so each is a write batch of its own).
fn journal(dir: &Path, n: u64, segment_bytes: u64) {
    let cfg = JournalConfig { segment_bytes, ..JournalConfig::new(dir) };
    let (journal, _) =
        Journal::<Sender<Result<Lsn, JournalError>>>::open(cfg, |_, _| Ok::<_, JournalError>(())).unwrap();
    let (tx, rx) = channel();
    for i in 1..=n {
        journal.append(format!("record {i}").as_bytes(), tx.clone());
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    }
    journal.close().unwrap();
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = gyro::journal::list_segments(dir).unwrap().into_iter().map(|s| s.1).collect();
    v.sort();
    v
}

fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn verify_a_healthy_journal() {
    let dir = tempfile::tempdir().unwrap();
    journal(dir.path(), 30, 256);
    snapshot::write(dir.path(), Lsn(12), |w| w.write_all(b"ledger at 12")).unwrap();
    // A spare (the next segment, preallocated) and an unfinished one are not segments.
    std::fs::write(dir.path().join("next.spare"), vec![0u8; 256]).unwrap();
    std::fs::write(dir.path().join("next.spare.tmp"), b"garbage").unwrap();
    let (ok, text) = gyro(&["journal", "verify", dir.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("segment 00000000000000000001.journal: LSN 1..="), "{text}");
    assert!(text.contains("bytes (a file of 256 bytes, zeros after the data)"), "{text}");
    assert!(text.contains("spare next.spare: 256 bytes of zeros"), "{text}");
    assert!(!text.contains("next.spare.tmp"), "{text}");
    assert!(
        text.contains("snapshot snapshot-00000000000000000012.snap: LSN 12, 12 body bytes, valid"),
        "{text}"
    );
    assert!(text.contains("30 records") && text.contains("LSN 1..=30"), "{text}");
    assert!(text.trim_end().ends_with("OK"), "{text}");
}

#[test]
fn verify_reports_a_torn_tail_without_cutting_it() {
    let dir = tempfile::tempdir().unwrap();
    journal(dir.path(), 5, 1 << 20);
    let segment = segments(dir.path()).pop().unwrap();
    // The segment is preallocated: its records end well before the file does.
    let found = gyro::journal::scan(dir.path(), Lsn::ZERO, |_| Ok(())).unwrap();
    let end = found.segments[0].valid_bytes;
    assert!(end < std::fs::metadata(&segment).unwrap().len());
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(end - 3).unwrap();
    let before = contents(dir.path());
    let (ok, text) = gyro(&["journal", "verify", dir.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "torn tail (would be truncated at start-up): 00000000000000000001.journal at byte offset"
        ),
        "{text}"
    );
    assert!(text.contains("4 records"), "{text}");
    assert_eq!(contents(dir.path()), before, "verify changed the directory");
}

#[test]
fn verify_fails_on_corruption_naming_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    journal(dir.path(), 5, 1 << 20);
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // The payload of record 2 (records are 16 + 8 bytes, after the 24-byte header).
    let second = 24 + 24;
    bytes[second + 20] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let (ok, text) = gyro(&["journal", "verify", dir.path().to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("00000000000000000001.journal at byte offset {second}")), "{text}");
    assert!(text.contains("a record fails its checksum (expected LSN 2)"), "{text}");
    assert!(text.contains("a later batch follows (a valid record with LSN 3 at byte offset 72)"), "{text}");
    assert!(text.contains("1 problem(s)"), "{text}");
}

#[test]
fn verify_fails_on_an_invalid_snapshot_and_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    journal(dir.path(), 5, 1 << 20);
    let snap = snapshot::write(dir.path(), Lsn(5), |w| w.write_all(b"state")).unwrap();
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[21] ^= 0x40;
    std::fs::write(&snap, bytes).unwrap();
    let (ok, text) = gyro(&["journal", "verify", dir.path().to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("INVALID: fails its checksum (start-up skips it)"), "{text}");

    let missing = dir.path().join("nope");
    let (ok, text) = gyro(&["journal", "verify", missing.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("nope: cannot list the directory"), "{text}");
    assert!(!missing.exists());
}

#[test]
fn inspect_prints_records_from_an_lsn() {
    let dir = tempfile::tempdir().unwrap();
    journal(dir.path(), 20, 256);
    let d = dir.path().to_str().unwrap();
    let (ok, text) = gyro(&["journal", "inspect", "--raw", d]);
    assert!(ok, "{text}");
    assert_eq!(text.lines().count(), 21, "{text}");
    let first = text.lines().nth(1).unwrap();
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        ["1", "00000000000000000001.journal", "24", "8", "\"record", "1\""],
        "{text}"
    );
    let (ok, text) = gyro(&["journal", "inspect", "--raw", d, "--from", "15", "--limit", "3"]);
    assert!(ok, "{text}");
    let lsns: Vec<&str> = text.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(lsns, ["15", "16", "17"], "{text}");
    assert!(text.contains("\"record 17\""), "{text}");
}

#[test]
fn verify_shows_the_segments_after_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    journal(dir.path(), 30, 256);
    let files = segments(dir.path());
    assert!(files.len() >= 3);
    std::fs::remove_file(&files[1]).unwrap();
    let (ok, text) = gyro(&["journal", "verify", dir.path().to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("the records before it are missing"), "{text}");
    let last = files.last().unwrap().file_name().unwrap().to_str().unwrap();
    assert!(
        text.contains(&format!("segment {last}: ")) && text.contains("not checked (after the problem)"),
        "{text}"
    );
}
