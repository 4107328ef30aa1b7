//! The spare: the next segment, zero-filled ahead of time on a thread of its own, so that a
//! roll-over finds a full-size file whose blocks are already written and synced (see "Files" and
//! "Group commit" in the module doc of [`crate::journal`]).
//!
//! `DIR/next.spare` holds `segment_bytes` zero bytes, written and synced. It is filled as
//! `next.spare.tmp` and renamed when complete, so a `next.spare` found at start-up is whole and is
//! used, while a `.tmp` is deleted. Neither name ends in `.journal`: listing, recovery, prune, the
//! tools and snapshots never take a spare for a segment. The spare is made ready before anything
//! else may rename it: the writer takes it (`Ready` → `Taken`), and only after the writer is done
//! with it may the preparer start the next one, so the preparer's rename can never put a new
//! spare under the name the writer is about to rename into a segment.
//!
//! Why a thread of its own rather than the writer between batches: the writer is idle only when
//! there is little load, and under load, when the next segment is needed soonest, it never is; a
//! thread that fills the spare while the writer waits for its fsyncs costs the writer nothing but
//! a share of the disk.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The spare, ready to become the next segment.
pub const SPARE_NAME: &str = "next.spare";

/// The spare while it is being filled.
const SPARE_TMP_NAME: &str = "next.spare.tmp";

/// Bytes per `write` while zero-filling.
const CHUNK_BYTES: usize = 1 << 20;

/// The spare is synced every this many bytes while it is filled, so that its dirty pages go to
/// the disk in steps rather than in one burst at the end, which the writer's next `fdatasync`
/// would have to queue behind.
const SYNC_EVERY_BYTES: u64 = 8 << 20;

// Nothing panics while holding the lock; poisoning would mean a bug.
const POISONED: &str = "journal spare lock poisoned by a panic";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No spare, and none asked for.
    Idle,
    /// Asked for; the preparer has not started on it.
    Wanted,
    /// The preparer is filling `next.spare.tmp`.
    Preparing,
    /// `next.spare` is complete.
    Ready,
    /// The writer is turning `next.spare` into a segment; nothing else may touch the name.
    Taken,
}

struct State {
    phase: Phase,
    /// The preparer must not start a spare (tests: a roll-over with no spare ready).
    #[cfg(test)]
    held: bool,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Set once, when the journal closes; read between chunks by the preparer.
    closing: AtomicBool,
    dir: PathBuf,
    bytes: u64,
}

/// The spare and the thread that prepares it; stopping it (drop) abandons a spare half filled.
pub(crate) struct Spares {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Spares {
    /// Takes stock of what an earlier run left in `dir`: a complete spare of `bytes` is kept as
    /// ready, anything else (an unfinished `.tmp`, a spare of another size) is deleted. No thread
    /// runs until [`Spares::start`].
    pub(crate) fn new(dir: &Path, bytes: u64) -> Self {
        remove(&dir.join(SPARE_TMP_NAME));
        let spare = dir.join(SPARE_NAME);
        let phase = match fs::metadata(&spare) {
            Ok(m) if m.is_file() && m.len() == bytes => Phase::Ready,
            Ok(_) => {
                remove(&spare);
                Phase::Idle
            }
            Err(_) => Phase::Idle,
        };
        let state = State {
            phase,
            #[cfg(test)]
            held: false,
        };
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                changed: Condvar::new(),
                closing: AtomicBool::new(false),
                dir: dir.to_owned(),
                bytes,
            }),
            thread: None,
        }
    }

    /// Starts the preparer, which makes a spare at once if none is ready. Without the thread
    /// (it could not be started) every later segment grows as it is written.
    pub(crate) fn start(&mut self) {
        self.shared.want();
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new().name("gyro-journal-spare".to_owned()).spawn(move || shared.run()) {
            Ok(handle) => self.thread = Some(handle),
            Err(error) => tracing::warn!(
                dir = %self.shared.dir.display(),
                %error,
                "journal: cannot start the thread that preallocates segments; new segments will grow as \
                 they are written"
            ),
        }
    }

    /// The ready spare's path, which the caller must hand back with [`Spares::release`] once it
    /// has renamed it (or failed to); `None` when no spare is ready (one is then asked for).
    pub(crate) fn take(&self) -> Option<PathBuf> {
        let mut s = self.shared.state.lock().expect(POISONED);
        match s.phase {
            Phase::Ready => {
                s.phase = Phase::Taken;
                Some(self.shared.dir.join(SPARE_NAME))
            }
            Phase::Idle => {
                s.phase = Phase::Wanted;
                self.shared.changed.notify_all();
                None
            }
            Phase::Wanted | Phase::Preparing | Phase::Taken => None,
        }
    }

    /// Like [`Spares::take`], but fills a spare on the calling thread when none is ready: for
    /// the first segment of a new journal, before the preparer runs (start-up can wait the tens
    /// of milliseconds it takes; the first segment then need not grow).
    pub(crate) fn take_or_fill(&self) -> Option<PathBuf> {
        assert!(self.thread.is_none(), "take_or_fill races the preparer thread");
        let mut s = self.shared.state.lock().expect(POISONED);
        if s.phase != Phase::Ready {
            s.phase = match fill(&self.shared.dir, self.shared.bytes, &self.shared.closing) {
                Ok(true) => Phase::Ready,
                Ok(false) => Phase::Idle,
                Err(error) => {
                    warn_fill_failed(&self.shared.dir, &error);
                    Phase::Idle
                }
            };
        }
        drop(s);
        self.take()
    }

    /// Hands back a spare from [`Spares::take`], now renamed (or not usable): the next one may be
    /// prepared.
    pub(crate) fn release(&self) {
        let mut s = self.shared.state.lock().expect(POISONED);
        assert_eq!(s.phase, Phase::Taken, "journal spare released without being taken");
        s.phase = Phase::Wanted;
        self.shared.changed.notify_all();
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        let Some(handle) = self.thread.take() else { return };
        self.shared.closing.store(true, Ordering::Relaxed);
        // Under the lock, so the preparer cannot miss the wake-up between its check and its wait.
        drop(self.shared.state.lock().expect(POISONED));
        self.shared.changed.notify_all();
        if handle.join().is_err() {
            tracing::error!(dir = %self.shared.dir.display(), "the journal spare thread panicked");
        }
    }
}

impl Shared {
    fn want(&self) {
        let mut s = self.state.lock().expect(POISONED);
        if s.phase == Phase::Idle {
            s.phase = Phase::Wanted;
            self.changed.notify_all();
        }
    }

    fn run(&self) {
        loop {
            let mut s = self.state.lock().expect(POISONED);
            while !self.closing.load(Ordering::Relaxed) && !self.may_start(&s) {
                s = self.changed.wait(s).expect(POISONED);
            }
            if self.closing.load(Ordering::Relaxed) {
                return;
            }
            s.phase = Phase::Preparing;
            drop(s);
            let outcome = fill(&self.dir, self.bytes, &self.closing);
            let mut s = self.state.lock().expect(POISONED);
            s.phase = match outcome {
                Ok(true) => {
                    tracing::debug!(dir = %self.dir.display(), bytes = self.bytes, "journal: spare segment ready");
                    Phase::Ready
                }
                Ok(false) => Phase::Idle,
                Err(error) => {
                    // Not fatal: the next segment grows as it is written, and the next roll-over
                    // asks again.
                    warn_fill_failed(&self.dir, &error);
                    Phase::Idle
                }
            };
        }
    }

    fn may_start(&self, s: &State) -> bool {
        #[cfg(test)]
        if s.held {
            return false;
        }
        s.phase == Phase::Wanted
    }

    /// Tests: while held, no spare is started (one being filled is finished).
    #[cfg(test)]
    pub(crate) fn hold(&self, held: bool) {
        self.state.lock().expect(POISONED).held = held;
        self.changed.notify_all();
    }

    /// Tests: whether a spare is ready.
    #[cfg(test)]
    pub(crate) fn ready(&self) -> bool {
        self.state.lock().expect(POISONED).phase == Phase::Ready
    }
}

/// Deletes what an earlier run with preallocation left, for a journal that runs without it.
pub(crate) fn remove_leftovers(dir: &Path) {
    remove(&dir.join(SPARE_TMP_NAME));
    remove(&dir.join(SPARE_NAME));
}

/// Writes `bytes` zeros to `next.spare.tmp`, syncs it and renames it to `next.spare`. `Ok(false)`
/// when `stop` was set before it was done; whatever did not become `next.spare` is deleted.
///
/// Real zeros, not `fallocate`: a range allocated by `fallocate` is marked unwritten, and the
/// first write into each extent converts it, a metadata change that the `fdatasync` after that
/// write must commit, which is the cost this file exists to avoid.
fn fill(dir: &Path, bytes: u64, stop: &AtomicBool) -> io::Result<bool> {
    let tmp = dir.join(SPARE_TMP_NAME);
    let outcome = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let zeros = vec![0u8; CHUNK_BYTES.min(bytes as usize).max(1)];
        let (mut written, mut synced) = (0u64, 0u64);
        while written < bytes {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let n = (bytes - written).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            written += n as u64;
            if written - synced >= SYNC_EVERY_BYTES {
                file.sync_data()?;
                synced = written;
            }
        }
        file.sync_all()?;
        // The directory is not synced: if the new name is lost in a crash, the next start finds
        // the `.tmp` (or nothing) and makes another spare.
        fs::rename(&tmp, dir.join(SPARE_NAME))?;
        Ok(true)
    })();
    if !matches!(outcome, Ok(true)) {
        remove(&tmp);
    }
    outcome
}

fn warn_fill_failed(dir: &Path, error: &io::Error) {
    tracing::warn!(
        dir = %dir.display(),
        %error,
        "journal: cannot preallocate the next segment; it will grow as it is written (slower fsyncs)"
    );
}

fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "journal: cannot delete a leftover spare")
        }
    }
}
