//! The engine made durable: what ties `cc` (redo records) to `journal` (group commit) and to
//! `net` (deferred answers).
//!
//! - At start-up: the data directory's identity file (the Session-Id hash key, and a digest of
//!   the catalog the journal was begun with), then the catalog in force (`catalogs`: the
//!   snapshot's or the first), the snapshot, then every journal record replayed (catalog
//!   changes by `catalogs`, the rest through [`Engine::recover`]).
//! - While serving: [`Sink`] appends each request's record with a [`Completion`] holding the
//!   connection's `DurableWake`; the answer stays with the connection, which holds it until the
//!   journal's writer thread, once the batch holding the record is fsync'ed, tells the waker
//!   the record's LSN. No answer that reflects a change leaves before its record is durable
//!   (ARCHITECTURE.md, invariant 1).
//!
//! Must not touch: sockets (it only wakes connections through `DurableWake`), the journal's
//! file format, the engine's internals (records are opaque here).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use siphasher::sip128::{Hasher128, SipHasher13};

use anyhow::Context;

use crate::catalog::Catalog;
use crate::cc::{Engine, EngineConfig, Now, RecordSink};
use crate::journal::{snapshot, Journal, JournalConfig, JournalError, Lsn, RecoveryReport, Waiter};
use crate::ledger::Ledger;
use crate::net::DurableWake;

mod catalogs;

pub use catalogs::{catalog_in_force, CatalogStore, Catalogs, InstallError, Installation, CATALOGS_DIR};

/// The journal as the server uses it.
pub type ChargingJournal = Journal<Completion>;

const IDENTITY_FILE: &str = "identity";
const IDENTITY_MAGIC: &str = "gyro data directory v1";

/// What to do once a record is durable: tell the connection whose answer waits for it, if any,
/// or the settlement worker awaiting its step.
#[derive(Debug)]
pub struct Completion(Waiting);

#[derive(Debug)]
enum Waiting {
    Connection(Option<Arc<DurableWake>>),
    Task(tokio::sync::oneshot::Sender<Result<Lsn, String>>),
}

impl Waiter for Completion {
    fn durable(self, result: Result<Lsn, JournalError>) {
        let wake = match self.0 {
            Waiting::Connection(Some(wake)) => wake,
            Waiting::Connection(None) => return,
            Waiting::Task(tx) => {
                // The task may be gone (shut down): nothing to tell.
                let _ = tx.send(result.map_err(|e| e.to_string()));
                return;
            }
        };
        match result {
            Ok(lsn) => wake.durable(lsn.0),
            // Never acknowledge what is not on disk: the peer times out and retries elsewhere.
            Err(e) => {
                tracing::error!(error = %e, "journal failed: an answer is withheld");
                wake.failed();
            }
        }
    }
}

/// Hands the engine's records to the journal. The answer stays in the engine's output: the
/// caller holds it until the journal has made `lsn` durable (`wake` is told when).
pub struct Sink<'a> {
    pub journal: &'a ChargingJournal,
    pub wake: Option<&'a Arc<DurableWake>>,
    /// The LSN of the last record (or barrier) appended through this sink: the answer must not
    /// leave before it is durable.
    pub lsn: Option<Lsn>,
}

impl<'a> Sink<'a> {
    pub fn new(journal: &'a ChargingJournal, wake: Option<&'a Arc<DurableWake>>) -> Self {
        Self { journal, wake, lsn: None }
    }
}

impl RecordSink for Sink<'_> {
    /// Appends `record` and leaves `answer` where it is (returns false): the connection holds it
    /// until `lsn` is durable, so nothing is copied and nothing crosses threads per answer.
    fn append(&mut self, record: &[u8], _answer: &[u8]) -> bool {
        let completion = Completion(Waiting::Connection(self.wake.cloned()));
        self.lsn = Some(if record.is_empty() {
            self.journal.after_pending(completion)
        } else {
            self.journal.append(record, completion)
        });
        false
    }
}

/// The settlement worker's steps go to the same journal as the engine's records, and the worker
/// awaits each one's durability before acting on it.
impl crate::settlement::worker::StepLog for Arc<ChargingJournal> {
    fn append_step(
        &self,
        record: &[u8],
    ) -> impl std::future::Future<Output = Result<(), crate::settlement::worker::StepLogError>> + Send + 'static
    {
        use crate::settlement::worker::StepLogError;
        let (tx, rx) = tokio::sync::oneshot::channel();
        Journal::append(self, record, Completion(Waiting::Task(tx)));
        async move {
            match rx.await {
                Ok(Ok(_lsn)) => Ok(()),
                Ok(Err(e)) => Err(StepLogError(e)),
                Err(_) => Err(StepLogError("the journal stopped".into())),
            }
        }
    }
}

/// The data directory's identity: the key Session-Ids are hashed with (sessions and ledger
/// keys in the journal depend on it) and the digest of the catalog the journal began with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub session_hash_key: [u8; 16],
    pub catalog_digest: String,
    /// When the directory began: the catalog's accounts exist since then (bundle validity
    /// counts from it, not from each start).
    pub created_unix_ms: u64,
}

/// A digest of the catalog text, to notice a catalog changed under an existing journal.
pub fn catalog_digest(text: &str) -> String {
    let mut h = SipHasher13::new_with_key(&[0; 16]);
    std::hash::Hasher::write(&mut h, text.as_bytes());
    format!("{:032x}", h.finish128().as_u128())
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a gyro identity file ({what}); is this the right data directory?")]
    Identity { path: PathBuf, what: &'static str },
    #[error(
        "the catalog changed since the journal in {dir} began (digest {was}, now {now}), and the \
         catalog it began with is not stored in {dir}/catalogs (a directory begun before catalog \
         versions were kept): accounts and balances are that catalog's plus the journal's \
         changes. Start once with the catalog the journal began with (it is stored then, and \
         later catalogs are installed as changes), or start on an empty data directory"
    )]
    CatalogChanged { dir: PathBuf, was: String, now: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_owned(), source }
}

/// Reads the identity of `dir`, or creates it (durably) for a new data directory, begun with
/// the catalog `catalog_digest`.
pub fn identity(
    dir: &Path,
    catalog_digest: &str,
    fresh_key: [u8; 16],
    now_unix_ms: u64,
) -> Result<Identity, DataDirError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            // Its catalog is the directory's first; later ones are in `catalogs/` and the
            // journal (see `catalogs`).
            parse_identity(&path, &text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity {
                session_hash_key: fresh_key,
                catalog_digest: catalog_digest.to_owned(),
                created_unix_ms: now_unix_ms,
            };
            let key: String = id.session_hash_key.iter().map(|b| format!("{b:02x}")).collect();
            let text = format!(
                "{IDENTITY_MAGIC}\nsession_hash_key = {key}\ncatalog = {}\ncreated_unix_ms = {}\n",
                id.catalog_digest, id.created_unix_ms
            );
            // Written whole to a temporary name, synced, renamed, and the directory synced: a
            // crash leaves either no identity or this one.
            let tmp = dir.join("identity.tmp");
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(text.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
            Ok(id)
        }
        Err(e) => Err(DataDirError::Io { path, source: e }),
    }
}

fn parse_identity(path: &Path, text: &str) -> Result<Identity, DataDirError> {
    let bad = |what| DataDirError::Identity { path: path.to_owned(), what };
    let mut lines = text.lines();
    if lines.next() != Some(IDENTITY_MAGIC) {
        return Err(bad("first line"));
    }
    let (mut key, mut catalog, mut created) = (None, None, None);
    for line in lines {
        match line.split_once(" = ") {
            Some(("session_hash_key", v)) if v.len() == 32 => {
                let mut k = [0u8; 16];
                for (i, b) in k.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&v[2 * i..2 * i + 2], 16).map_err(|_| bad("session_hash_key"))?;
                }
                key = Some(k);
            }
            Some(("catalog", v)) => catalog = Some(v.to_owned()),
            Some(("created_unix_ms", v)) => created = Some(v.parse().map_err(|_| bad("created_unix_ms"))?),
            _ => return Err(bad("an unknown line")),
        }
    }
    Ok(Identity {
        session_hash_key: key.ok_or_else(|| bad("session_hash_key"))?,
        catalog_digest: catalog.ok_or_else(|| bad("catalog"))?,
        created_unix_ms: created.ok_or_else(|| bad("created_unix_ms"))?,
    })
}

/// Prints redo records for `gyro journal inspect`, filtered by account or session.
pub struct RecordDescriber(pub crate::cc::RecordFilter);

impl crate::tools::journal::Describe for RecordDescriber {
    fn describe(&self, payload: &[u8]) -> Option<String> {
        crate::cc::describe_record(payload, &self.0)
    }
}

/// Reads the identity of an existing data directory (for tools; never creates one).
pub fn read_identity(dir: &Path) -> Result<Identity, DataDirError> {
    let path = dir.join(IDENTITY_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    parse_identity(&path, &text)
}

/// A charging engine ready to serve: the catalog loaded and, with a journal, every change
/// since recovered from it.
pub struct Started {
    pub engine: Arc<Engine>,
    pub accounts: usize,
    pub journal: Option<(Arc<ChargingJournal>, RecoveryReport)>,
    /// The configuration the engine runs with (its Session-Id key from the data directory), for
    /// the checkpointer's engines.
    pub engine_cfg: EngineConfig,
    /// The catalog in force and the way to change it.
    pub catalogs: Arc<Catalogs>,
    /// Why the configured catalog file was not installed at start (the data directory's
    /// catalog in force stays), if it was refused.
    pub catalog_refused: Option<InstallError>,
}

/// `start_named` for a catalog called "catalog" in messages.
pub fn start(
    catalog_text: &str,
    engine_cfg: EngineConfig,
    journal: Option<JournalConfig>,
    now: Now,
) -> anyhow::Result<Started> {
    start_named("catalog", catalog_text, engine_cfg, journal, now)
}

/// Builds the engine the way `gyro serve` does. Without a journal: the catalog `catalog_text`
/// (`name` says where it is from), in memory. With one: the data directory's identity, the
/// catalog in force (the directory's first, or a snapshot's), the snapshot, every
/// journal record since; then, if the configured catalog is not the one in force, it is
/// installed as a change, or refused with `catalog_refused` (an invalid file too) and the one in
/// force stays. A new data directory (or none) needs a valid catalog. `now` is the engine clock
/// reading for the monotonic origin the server will use.
pub fn start_named(
    name: &str,
    catalog_text: &str,
    mut engine_cfg: EngineConfig,
    journal: Option<JournalConfig>,
    now: Now,
) -> anyhow::Result<Started> {
    let digest = catalog_digest(catalog_text);
    let parsed = Catalog::from_toml(name, catalog_text);
    let begun = journal.as_ref().is_some_and(|j| j.dir.join(IDENTITY_FILE).exists());
    let Some(j) = journal else {
        let catalog = parsed?;
        let engine = Arc::new(Engine::new(engine_cfg.clone(), Arc::new(Ledger::new())));
        let accounts = engine
            .load_catalog_since(&catalog, now, now.unix_secs * 1000)
            .map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
        engine.set_catalog_base(&digest, now.unix_secs * 1000);
        let live = Arc::new(crate::catalog::Live::new(crate::catalog::Installed::new(catalog, name, digest)));
        let catalogs = Arc::new(Catalogs::new(Arc::clone(&engine), None, None, live));
        return Ok(Started { engine, accounts, journal: None, engine_cfg, catalogs, catalog_refused: None });
    };
    if !begun {
        // A new directory begins with this catalog: it must be valid.
        parsed?;
    }
    let id = identity(&j.dir, &digest, engine_cfg.session_hash_key, now.unix_secs * 1000)?;
    engine_cfg.session_hash_key = id.session_hash_key;
    let dir = j.dir.clone();
    let (journal, report, engine, last) =
        recover_named(j, &id, (name, catalog_text), engine_cfg.clone(), now)
            .with_context(|| format!("cannot recover the journal in {}", dir.display()))?;
    let engine = Arc::new(engine);
    let store = CatalogStore::open(&dir)?;
    let live = Arc::new(crate::catalog::Live::from_arc(last));
    let catalogs =
        Arc::new(Catalogs::new(Arc::clone(&engine), Some(Arc::clone(&journal)), Some(store), live));
    let mut catalog_refused = None;
    if catalogs.live().current().digest != digest {
        match catalogs.install_file(name, catalog_text, now) {
            Ok(done) if done.unchanged => tracing::info!(
                catalog = name,
                in_force = %done.digest,
                "the catalog file is the one last installed; the catalog in force (changed through \
                 the admin API since) stays"
            ),
            Ok(done) => tracing::info!(
                catalog = name,
                digest = %done.digest,
                previous = %done.previous,
                accounts_added = done.accounts_added,
                "the catalog file differs from the catalog in force: installed"
            ),
            Err(e) => {
                tracing::error!(
                    catalog = name,
                    in_force = %catalogs.live().current().digest,
                    error = %e,
                    "the catalog file was refused; the catalog in force stays"
                );
                catalog_refused = Some(e);
            }
        }
    }
    let accounts = engine.ledger().stats().accounts as usize;
    Ok(Started { engine, accounts, journal: Some((journal, report)), engine_cfg, catalogs, catalog_refused })
}

/// Rebuilds the engine from the data directory (catalog versions, newest valid snapshot,
/// journal records after it) and opens the journal. Returns the catalog version in force.
fn recover_named(
    mut cfg: JournalConfig,
    id: &Identity,
    configured: (&str, &str),
    engine_cfg: EngineConfig,
    now: Now,
) -> anyhow::Result<(Arc<ChargingJournal>, RecoveryReport, Engine, Arc<crate::catalog::Installed>)> {
    let snap = snapshot::newest_valid(&cfg.dir)?;
    let (engine, mut replayer) =
        catalogs::engine_at(&cfg.dir, id, configured, engine_cfg, snap.as_ref(), now)?;
    if let Some(snap) = &snap {
        tracing::info!(snapshot = %snap.path.display(), lsn = %snap.lsn, "snapshot loaded");
        cfg.start_after = snap.lsn;
    }
    let dir = cfg.dir.clone();
    let (journal, report) = Journal::open(cfg, |_lsn, payload| replayer.replay(&engine, now, payload))?;
    anyhow::ensure!(
        engine.ledger().end_recovery(),
        "the ledger recovered from {} is inconsistent (conservation or an account's limits); this is \
         a bug or records are missing: keep the directory for analysis and report it",
        dir.display()
    );
    Ok((Arc::new(journal), report, engine, replayer.last))
}

/// Stops the checkpointer thread when dropped.
pub struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `checkpoint` every `interval` on a thread of its own (it is CPU work, not async).
pub fn spawn_checkpointer(
    journal: Arc<ChargingJournal>,
    engine_cfg: EngineConfig,
    interval: std::time::Duration,
    keep: usize,
) -> std::io::Result<Checkpointer> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let epoch = std::time::Instant::now();
    let thread = std::thread::Builder::new().name("gyro-checkpoint".into()).spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
            let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let now = Now { mono_ms: epoch.elapsed().as_millis() as u64, unix_secs: unix.as_secs() };
            let started = std::time::Instant::now();
            match checkpoint(&journal, &engine_cfg, keep, now) {
                Ok(Some(c)) => tracing::info!(
                    lsn = %c.lsn,
                    records = c.records,
                    bytes = c.bytes,
                    pruned_segments = c.pruned_segments,
                    pruned_catalogs = c.pruned_catalogs,
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot taken"
                ),
                Ok(None) => {}
                // The journal keeps everything a snapshot would have let go; start-up replays more.
                Err(e) => tracing::error!(error = format!("{e:#}"), "snapshot failed"),
            }
        }
    })?;
    Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
}

/// What a checkpoint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub lsn: Lsn,
    pub records: u64,
    pub bytes: u64,
    pub pruned_segments: usize,
    /// Stored catalogs no snapshot or journal record needs any more, deleted.
    pub pruned_catalogs: usize,
}

/// Takes a snapshot without touching the serving engine: a fresh engine is built from the
/// catalog versions, the newest snapshot and the journal records up to the last durable LSN
/// (the same path as recovery), written out as a snapshot at that LSN, and the segments and
/// snapshots it makes redundant are deleted. Serving never pauses for it; it costs one core for
/// as long as the replay takes, and the memory of a second copy of the state while it runs.
///
/// This departs from the guide's "snapshot the live state" on purpose: redo records are
/// operations that commute (see `cc::redo`), not images, so a snapshot must be the state at one
/// LSN exactly, and the live state is that only if traffic stops. Replaying to a chosen LSN
/// gives that state for free and reuses the recovery code, which the crash tests exercise.
pub fn checkpoint(
    journal: &ChargingJournal,
    engine_cfg: &EngineConfig,
    keep: usize,
    now: Now,
) -> anyhow::Result<Option<Checkpoint>> {
    let dir = journal.dir();
    let upto = journal.stats().durable_lsn;
    let base = snapshot::newest_valid(dir)?;
    let base_lsn = base.as_ref().map_or(Lsn::ZERO, |b| b.lsn);
    if upto <= base_lsn {
        return Ok(None);
    }
    let id = read_identity(dir)?;
    // The directory's first catalog is stored (start-up made sure), so no configured one is
    // needed: an empty text never matches a digest.
    let (engine, mut replayer) =
        catalogs::engine_at(dir, &id, ("", ""), engine_cfg.clone(), base.as_ref(), now)?;
    let mut records = 0u64;
    crate::journal::scan(dir, base_lsn, |r| {
        if r.lsn > base_lsn && r.lsn <= upto {
            replayer
                .replay(&engine, now, r.payload)
                .map_err(|e| JournalError::Replay { lsn: r.lsn, source: e.into() })?;
            records += 1;
        }
        Ok(())
    })?;
    anyhow::ensure!(engine.ledger().end_recovery(), "checkpoint: the replayed ledger is inconsistent");
    anyhow::ensure!(
        records == upto.0 - base_lsn.0,
        "checkpoint: read {records} records after LSN {base_lsn}, expected {} up to {upto}",
        upto.0 - base_lsn.0
    );
    catalogs::store_for_snapshot(dir, &engine, &replayer.last)?;
    let path = snapshot::write(dir, upto, |w| engine.write_snapshot(now, w))?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let pruned = journal.prune(keep)?;
    let pruned_catalogs = catalogs::prune(dir, &id.catalog_digest)?;
    Ok(Some(Checkpoint {
        lsn: upto,
        records,
        bytes,
        pruned_segments: pruned.segments_removed,
        pruned_catalogs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_keeps_its_first_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let a = identity(dir.path(), "aa", [1; 16], 5_000).unwrap();
        assert_eq!((a.session_hash_key, a.created_unix_ms), ([1; 16], 5_000));
        // A second start keeps the first key and creation time.
        let b = identity(dir.path(), "aa", [2; 16], 9_000).unwrap();
        assert_eq!(b, a);
        // Another catalog later is a change (installed by `start`), not another directory.
        assert_eq!(identity(dir.path(), "bb", [2; 16], 9_000).unwrap(), a);
        std::fs::write(dir.path().join(IDENTITY_FILE), "something else\n").unwrap();
        let e = identity(dir.path(), "aa", [2; 16], 9_000).unwrap_err().to_string();
        assert!(e.contains("not a gyro identity file"), "{e}");
    }

    /// Stored catalogs that no snapshot or journal record names are deleted once old; the
    /// directory's first, a file a record installs and a file just stored are kept.
    #[test]
    fn unreferenced_catalogs_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let now = Now { mono_ms: 0, unix_secs: 1_800_000_000 };
        let demo = Catalog::demo_toml();
        let local = crate::diameter::answer::LocalIdentity {
            origin_host: "gyro.test".into(),
            origin_realm: "test".into(),
            host_ip_addresses: Vec::new(),
            vendor_id: 0,
            product_name: "gyro".into(),
            firmware_revision: 0,
            origin_state_id: 1,
        };
        let cfg = EngineConfig::new(&local);
        let started = start(demo, cfg, Some(JournalConfig::new(dir.path())), now).unwrap();
        let v2 = format!("{demo}\n[[customers]]\nid = \"c-x\"\nname = \"X\"\nplan = \"mobile-basic\"\n");
        let installed = started.catalogs.install("v2", &v2, now).unwrap();
        let store = CatalogStore::open(dir.path()).unwrap();
        let unused = store.put(&format!("{demo}\n# never installed\n")).unwrap();
        let fresh = store.put(&format!("{demo}\n# stored just now\n")).unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for digest in [&installed.digest, &unused, &catalog_digest(demo)] {
            std::fs::File::options()
                .write(true)
                .open(store.path(digest))
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        assert_eq!(catalogs::prune(dir.path(), &catalog_digest(demo)).unwrap(), 1);
        assert!(!store.path(&unused).exists());
        for kept in [&installed.digest, &fresh, &catalog_digest(demo)] {
            assert!(store.path(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn catalog_digests_differ_by_content() {
        assert_eq!(catalog_digest("a"), catalog_digest("a"));
        assert_ne!(catalog_digest("a"), catalog_digest("b"));
        assert_eq!(catalog_digest("a").len(), 32);
    }
}
