//! Group sync of the settlement documents (invoice files, `.eml` files) written under the data
//! directory: documents are written without a sync of their own, and before a settlement's
//! `Done` record the worker asks for one `syncfs(2)` of the data directory's filesystem, shared
//! by every settlement that asked meanwhile — a group commit, as the journal's.
//!
//! Why this is enough: a document is a pure function of journaled state, rewritten with the
//! same bytes when a settlement is repeated after a crash; it only has to be durable before
//! the `Done` record that stops the repeating. And why it pays: a synced write per document
//! (temporary file, fsync, rename, directory fsync: 8 syncs per settlement) cost a quarter of
//! the settlement's CPU and kept 16 settlements in flight waiting on the disk one file at a
//! time (ARCHITECTURE.md, "Settlement").
//!
//! The cost: `syncfs` flushes whatever else is dirty on that filesystem too, so the data
//! directory belongs on a filesystem of its own (`deploy/`'s volume), as the journal's fsync
//! latency wants anyway.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// See the module doc. `Arc`-shared by the worker's settlements in flight.
#[derive(Debug)]
pub struct DocSync {
    dir: File,
    /// Async callers queue here so that one of them syncs for all.
    turn: tokio::sync::Mutex<()>,
    /// Syncs started so far; sync `n` covers every write finished before it started.
    started: AtomicU64,
    /// The last sync that completed.
    completed: AtomicU64,
    syncs: AtomicU64,
}

impl DocSync {
    /// Syncs the filesystem that holds `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            dir: File::open(dir)?,
            turn: tokio::sync::Mutex::new(()),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        })
    }

    /// Returns once everything written before this call is durable: by a sync that started
    /// after the call (another caller's, if one did meanwhile), else by one of its own.
    pub async fn sync(self: &Arc<Self>) -> io::Result<()> {
        let before = self.started.load(Ordering::Acquire);
        let _turn = self.turn.lock().await;
        // Syncs run one at a time (the turn), so `completed` only grows; a sync numbered after
        // `before` started after this call.
        if self.completed.load(Ordering::Acquire) > before {
            return Ok(());
        }
        let n = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.sync_now()).await.map_err(io::Error::other)??;
        self.completed.store(n, Ordering::Release);
        Ok(())
    }

    /// Syncs made so far (for the benchmark's accounting).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn sync_now(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `syncfs` takes a file descriptor, which `self.dir` keeps open for the call.
        let rc = unsafe { libc::syncfs(self.dir.as_raw_fd()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_syncs_and_each_gets_one_that_started_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(DocSync::open(dir.path()).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let sync = Arc::clone(&sync);
            let path = dir.path().join(format!("doc-{i}"));
            tasks.spawn(async move {
                std::fs::write(&path, b"x").unwrap();
                let before = sync.started.load(Ordering::Acquire);
                sync.sync().await.unwrap();
                // The sync that covered this caller started after its write.
                assert!(sync.completed.load(Ordering::Acquire) > before);
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        let syncs = sync.syncs();
        assert!((1..=64).contains(&syncs), "{syncs} syncs for 64 callers");
    }
}
