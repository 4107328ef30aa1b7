//! Catalog versions in the data directory (live reload, issue 7).
//!
//! The journal and the ledger refer to the catalog by position (account N, service index), so a
//! catalog change is an event in the journal like any other, appended before the engine
//! switches to it: a catalog file's text is stored as `DIR/catalogs/<digest>.toml` (durable
//! before anything names it) and its record (`TAG_CATALOG`: digest, when) appended; an admin
//! edit is journaled as the edit itself (`TAG_CATALOG_EDIT`). Recovery and the checkpointer
//! rebuild the same sequence: the catalog the newest snapshot names (`TAG_CATALOG_STATE`) or the
//! directory's first, then every change where the journal has it. So a catalog edited between
//! two starts is no longer refused: it is installed like a reload, if `catalog::check_change`
//! accepts it, and otherwise the catalog in force stays and the refusal is logged. Checkpoints
//! store the catalog in force for their snapshot and prune files nothing names.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{catalog_digest, io, ChargingJournal, Completion, DataDirError, Identity, Waiting};
use crate::catalog::{
    accounts_repriced, check_change, Catalog, CatalogError, Edit, EditError, Installed, Live,
};
use crate::cc::{Engine, Now};

/// Where catalog versions are kept, under the data directory.
pub const CATALOGS_DIR: &str = "catalogs";
/// In `CATALOGS_DIR`: the digest of the catalog file last installed (see `CatalogStore::source`).
const SOURCE_FILE: &str = "source";

/// The content-addressed catalog files of a data directory.
#[derive(Clone, Debug)]
pub struct CatalogStore {
    dir: PathBuf,
}

impl CatalogStore {
    pub fn open(data_dir: &Path) -> Result<Self, DataDirError> {
        let dir = data_dir.join(CATALOGS_DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self { dir })
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.toml"))
    }

    /// Stores `text` under its digest, durably (temporary file, fsync, rename, directory
    /// fsync), unless it is there already. Returns the digest.
    pub fn put(&self, text: &str) -> Result<String, DataDirError> {
        let digest = catalog_digest(text);
        let path = self.path(&digest);
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return Ok(digest);
        }
        let tmp = self.dir.join(format!("{digest}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        Ok(digest)
    }

    /// The digest of the catalog file last installed (or found in force), if recorded: a
    /// reload or start that reads the same file again leaves the catalog in force alone, so
    /// changes made through the admin API are not fought by an unchanged file.
    pub fn source(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(SOURCE_FILE)).ok().map(|s| s.trim().to_owned())
    }

    pub fn set_source(&self, digest: &str) -> Result<(), DataDirError> {
        let (tmp, path) = (self.dir.join("source.tmp"), self.dir.join(SOURCE_FILE));
        std::fs::write(&tmp, format!("{digest}\n")).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The text stored under `digest`; an error names the file (and says when it does not hold
    /// what its name says).
    pub fn get(&self, digest: &str) -> Result<String, DataDirError> {
        let path = self.path(digest);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        if catalog_digest(&text) != digest {
            return Err(DataDirError::Identity { path, what: "a catalog whose digest is not its name" });
        }
        Ok(text)
    }
}

/// Rebuilds the catalog versions while an engine is recovered: parses each version once and
/// installs it where the journal (or snapshot) has it.
pub(super) struct Replayer {
    store: CatalogStore,
    parsed: HashMap<String, Arc<Installed>>,
    /// The version in force after what was replayed so far.
    pub(super) last: Arc<Installed>,
}

impl Replayer {
    fn version(&mut self, digest: &str, name: &str) -> anyhow::Result<Arc<Installed>> {
        if let Some(v) = self.parsed.get(digest) {
            return Ok(Arc::clone(v));
        }
        let text = self.store.get(digest)?;
        let path = self.store.path(digest);
        let catalog = Catalog::from_toml(&path.display().to_string(), &text)?;
        let v = Arc::new(Installed::new(catalog, name, digest));
        self.parsed.insert(digest.to_owned(), Arc::clone(&v));
        Ok(v)
    }

    /// One journal record: a catalog file is installed from its file, an admin edit made
    /// again on the catalog in force, anything else goes to the engine.
    pub(super) fn replay(&mut self, engine: &Engine, now: Now, payload: &[u8]) -> anyhow::Result<()> {
        if let Some((digest, at_unix_ms)) = crate::cc::read_catalog_entry(payload) {
            let name = self.store.path(&digest).display().to_string();
            let parsed = self.version(&digest, &name)?;
            let v = Arc::new(Installed::succeeding(&self.last, parsed.catalog.clone(), name, digest.clone()));
            engine
                .install_catalog(&v, now, at_unix_ms)
                .map_err(|e| anyhow::anyhow!("catalog {digest}: {e}"))?;
            self.last = v;
            return Ok(());
        }
        if let Some((at_unix_ms, json)) = crate::cc::read_catalog_edit_entry(payload) {
            let edit: Edit = serde_json::from_slice(json)?;
            let v = Arc::new(
                edited(&self.last, &edit).map_err(|e| anyhow::anyhow!("a journaled catalog edit: {e}"))?,
            );
            engine
                .install_catalog(&v, now, at_unix_ms)
                .map_err(|e| anyhow::anyhow!("catalog {}: {e}", v.digest))?;
            self.last = v;
            return Ok(());
        }
        Ok(engine.recover(now, payload)?)
    }
}

/// The catalog `edit` makes of `current`, with its version: a digest chained over the
/// previous version and the edit, so replay gives the same. Validated; not checked against
/// `current` (the caller does, live).
fn edited(current: &Installed, edit: &Edit) -> Result<Installed, EditError> {
    let catalog = current.catalog.apply(ADMIN_API, edit)?;
    let json = serde_json::to_string(edit).expect("an edit serializes");
    let version = catalog_digest(&format!("{}\n{json}", current.digest));
    Ok(Installed::succeeding(current, catalog, ADMIN_API, version))
}

/// Stands in for the catalog until `engine_at` has loaded one.
fn placeholder() -> Installed {
    Installed::new(Catalog { plans: Vec::new(), customers: Vec::new(), accounts: Vec::new() }, "", "")
}

/// Wall-clock Unix ms (to the millisecond, unlike `Now`'s seconds).
fn unix_ms(now: Now) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(now.unix_secs * 1000, |d| d.as_millis() as u64)
}

/// What admin edits are called in errors and as a catalog's name.
const ADMIN_API: &str = "admin API";

/// An engine with the catalog in force at `snapshot` (the directory's first catalog when there
/// is none, or when the snapshot predates catalog versions) and the snapshot loaded.
/// The journal after the snapshot is the caller's to replay through the returned `Replayer`.
/// `configured` (name, text) is the catalog file gyro was started with: it names the versions
/// it matches, and stands in for the directory's first catalog in directories begun before
/// catalog versions were stored.
pub(super) fn engine_at(
    dir: &Path,
    id: &Identity,
    configured: (&str, &str),
    engine_cfg: crate::cc::EngineConfig,
    snapshot: Option<&crate::journal::snapshot::Snapshot>,
    now: Now,
) -> anyhow::Result<(Engine, Replayer)> {
    let store = CatalogStore::open(dir)?;
    let (name, text) = configured;
    let configured_digest = catalog_digest(text);
    if id.catalog_digest == configured_digest {
        store.put(text)?;
        if store.source().is_none() {
            store.set_source(&configured_digest)?;
        }
    } else if !store.path(&id.catalog_digest).exists() {
        return Err(DataDirError::CatalogChanged {
            dir: dir.to_owned(),
            was: id.catalog_digest.clone(),
            now: configured_digest,
        }
        .into());
    }
    let name_of = |digest: &str| {
        if digest == configured_digest {
            name.to_owned()
        } else {
            store.path(digest).display().to_string()
        }
    };
    let engine = Engine::new(engine_cfg, Arc::new(crate::ledger::Ledger::new()));
    let state = snapshot.and_then(|s| crate::cc::CatalogState::of_snapshot(&s.body));
    let mut replayer =
        Replayer { store: store.clone(), parsed: HashMap::new(), last: Arc::new(placeholder()) };
    match state {
        // The catalog in force at the snapshot, its accounts in their ranges.
        Some(state) => {
            let file = replayer.version(&state.file, &name_of(&state.file))?;
            engine
                .load_catalog_state(&file.catalog, &state, now)
                .map_err(|e| anyhow::anyhow!("catalog {}: {e}", state.file))?;
            let name = if state.version == state.file { file.name.clone() } else { ADMIN_API.to_owned() };
            replayer.last = Arc::new(Installed::new(file.catalog.clone(), name, state.version.clone()));
        }
        // No snapshot, or one from before catalog versions: the directory's first catalog.
        None => {
            let base = replayer.version(&id.catalog_digest, &name_of(&id.catalog_digest))?;
            engine
                .load_catalog_since(&base.catalog, now, id.created_unix_ms)
                .map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
            engine.set_catalog_base(&id.catalog_digest, id.created_unix_ms);
            replayer.last = base;
        }
    }
    engine.ledger().begin_recovery();
    if let Some(s) = snapshot {
        engine
            .load_snapshot(now, &s.body)
            .map_err(anyhow::Error::from)
            .map_err(|e| e.context(format!("snapshot {} cannot be loaded", s.path.display())))?;
    }
    Ok((engine, replayer))
}

/// Why a catalog change was not made; the catalog in force stays.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The new catalog is invalid, or may not replace the one in force: names the entry.
    #[error(transparent)]
    Refused(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] DataDirError),
    /// An admin edit that cannot be made (names the key or entry).
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The journal did not make the change durable (it has stopped).
    #[error("the journal did not take the catalog change: {0}")]
    Journal(String),
}

/// What a catalog change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installation {
    pub digest: String,
    pub previous: String,
    /// The text was the catalog in force already: nothing was done.
    pub unchanged: bool,
    pub accounts_added: usize,
    /// Accounts in the catalog now in force (an account just added is the last of them).
    pub accounts: usize,
    /// Accounts whose prices changed (their open sessions get a RAR).
    pub repriced: Vec<u32>,
}

impl Installation {
    /// Nothing done: `current` stays in force.
    fn unchanged(current: &Installed) -> Self {
        Self {
            digest: current.digest.clone(),
            previous: current.digest.clone(),
            unchanged: true,
            accounts_added: 0,
            accounts: current.catalog.accounts.len(),
            repriced: Vec::new(),
        }
    }
}

/// Makes catalog changes on a running engine: one at a time, journaled before the engine
/// switches, then published to `live`.
pub struct Catalogs {
    engine: Arc<Engine>,
    journal: Option<Arc<ChargingJournal>>,
    store: Option<CatalogStore>,
    live: Arc<Live>,
    lock: Mutex<()>,
    /// The digest of the catalog file last installed (in memory without a data directory).
    source: Mutex<Option<String>>,
}

impl Catalogs {
    pub fn new(
        engine: Arc<Engine>,
        journal: Option<Arc<ChargingJournal>>,
        store: Option<CatalogStore>,
        live: Arc<Live>,
    ) -> Self {
        let source =
            store.as_ref().and_then(CatalogStore::source).or_else(|| Some(live.current().digest.clone()));
        Self { engine, journal, store, live, lock: Mutex::new(()), source: Mutex::new(source) }
    }

    /// Installs the catalog *file* `text` (start-up, reload): as `install`, unless it is the
    /// file last installed, in which case the catalog in force stays as it is (it may have
    /// been changed through the admin API since; an unchanged file does not undo that).
    pub fn install_file(&self, name: &str, text: &str, now: Now) -> Result<Installation, InstallError> {
        let digest = catalog_digest(text);
        let current = self.live.current();
        if self.source.lock().unwrap_or_else(|e| e.into_inner()).as_deref() == Some(digest.as_str()) {
            return Ok(Installation::unchanged(&current));
        }
        let done = self.install(name, text, now)?;
        if let Some(store) = &self.store {
            store.set_source(&digest)?;
        }
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(digest);
        Ok(done)
    }

    /// The catalog in force.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Installs the catalog `text` (`name` says where it came from) if it is valid and
    /// `check_change` accepts it; blocks on file syncs and the journal (call it from a blocking
    /// thread). The change is durable when this returns `Ok`.
    pub fn install(&self, name: &str, text: &str, now: Now) -> Result<Installation, InstallError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let catalog = Catalog::from_toml(name, text)?;
        let digest = catalog_digest(text);
        let current = self.live.current();
        if digest == current.digest {
            return Ok(Installation::unchanged(&current));
        }
        // The same content in other words (comments, order of keys, `GET /v1/catalog`'s text):
        // no new version. Debug too, as `Decimal`'s == ignores the scale ("1.0" == "1.00").
        if catalog == current.catalog && format!("{catalog:?}") == format!("{:?}", current.catalog) {
            return Ok(Installation::unchanged(&current));
        }
        let installed = Installed::succeeding(&current, catalog, name, digest.clone());
        check_change(name, &current.catalog, &current.packages, &installed.catalog, &installed.packages)?;
        if let Some(store) = &self.store {
            store.put(text)?;
        }
        let at_unix_ms = unix_ms(now);
        self.commit(&current, installed, crate::cc::catalog_entry(&digest, at_unix_ms), now, at_unix_ms)
    }

    /// Makes an admin edit of the catalog in force (`catalog::Edit`): validated as a file,
    /// checked against the catalog in force, journaled as the edit itself (no file), installed.
    /// Blocking, as `install`.
    pub fn edit(&self, edit: &Edit, now: Now) -> Result<Installation, InstallError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.live.current();
        let installed = edited(&current, edit)?;
        check_change(
            ADMIN_API,
            &current.catalog,
            &current.packages,
            &installed.catalog,
            &installed.packages,
        )?;
        let at_unix_ms = unix_ms(now);
        let json = serde_json::to_vec(edit).expect("an edit serializes");
        self.commit(&current, installed, crate::cc::catalog_edit_entry(at_unix_ms, &json), now, at_unix_ms)
    }

    /// Appends `record`, switches the engine to `installed`, publishes it, and waits until the
    /// record is durable. Called with the lock held and every check passed.
    fn commit(
        &self,
        current: &Installed,
        installed: Installed,
        record: Vec<u8>,
        now: Now,
        at_unix_ms: u64,
    ) -> Result<Installation, InstallError> {
        // The record goes first: whatever the engine does on the new catalog (a CCR on a new
        // account) is appended after it, so recovery meets the change before what depends on it.
        let durable = self.journal.as_ref().map(|j| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            j.append(&record, Completion(Waiting::Task(tx)));
            rx
        });
        let accounts_added = match self.engine.install_catalog(&installed, now, at_unix_ms) {
            Ok(n) => n,
            // Validation and check_change passed, so the ledger refusing an account is a bug;
            // the record is in the journal and the next start will say the same.
            Err(e) => panic!("catalog {} passed its checks but the engine refused it: {e}", installed.digest),
        };
        let installed = Arc::new(installed);
        let accounts = installed.catalog.accounts.len();
        let repriced = accounts_repriced(current, &installed);
        let digest = installed.digest.clone();
        self.live.replace(installed);
        if let Some(rx) = durable {
            match rx.blocking_recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(InstallError::Journal(e)),
                Err(_) => return Err(InstallError::Journal("the journal stopped".into())),
            }
        }
        Ok(Installation {
            digest,
            previous: current.digest.clone(),
            unchanged: false,
            accounts_added,
            accounts,
            repriced,
        })
    }
}

/// How long a stored catalog file is kept even when nothing names it yet: an install stores
/// its file before it appends its record, and a checkpoint must not delete it in between.
const UNREFERENCED_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Names the file holding `engine`'s catalog in force (`current`) for its snapshot: the file
/// of that version if it is one, else `current` written out (`Catalog::to_toml`) and stored.
pub(super) fn store_for_snapshot(dir: &Path, engine: &Engine, current: &Installed) -> anyhow::Result<()> {
    let store = CatalogStore::open(dir)?;
    let file = if store.get(&current.digest).is_ok() {
        current.digest.clone()
    } else {
        store.put(&current.catalog.to_toml())?
    };
    engine.set_catalog_file(&file);
    Ok(())
}

/// Deletes the stored catalogs nothing needs any more: kept are the directory's first, the
/// one each remaining snapshot names, those the remaining journal records install, and any
/// stored in the last `UNREFERENCED_GRACE`. Returns how many were deleted.
pub(super) fn prune(dir: &Path, first: &str) -> anyhow::Result<usize> {
    let store = CatalogStore::open(dir)?;
    let mut keep = std::collections::HashSet::from([first.to_owned()]);
    for file in crate::journal::snapshot::list(dir)? {
        if let Ok(s) = crate::journal::snapshot::read(&file) {
            if let Some(state) = crate::cc::CatalogState::of_snapshot(&s.body) {
                keep.insert(state.file);
            }
        }
    }
    // Candidates: stored catalogs no snapshot names, older than the grace.
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir(&store.dir).map_err(io(&store.dir))? {
        let path = entry.map_err(io(&store.dir))?.path();
        let Some(digest) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".toml"))
        else {
            continue;
        };
        let old = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > UNREFERENCED_GRACE));
        if old && !keep.contains(digest) {
            candidates.push((digest.to_owned(), path));
        }
    }
    if candidates.is_empty() {
        // The usual case (no reload since the last checkpoint): no journal scan.
        return Ok(0);
    }
    crate::journal::scan(dir, crate::journal::Lsn::ZERO, |r| {
        if let Some((digest, _)) = crate::cc::read_catalog_entry(r.payload) {
            keep.insert(digest);
        }
        Ok(())
    })?;
    let mut deleted = 0;
    for (digest, path) in candidates {
        if !keep.contains(&digest) {
            std::fs::remove_file(&path).map_err(io(&path))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The catalog in force in the data directory `dir`, rebuilt without an engine (for tools:
/// `gyro journal inspect --subscriber`): the catalog the newest snapshot names (or the
/// directory's first), then every catalog file and admin edit the journal has after it.
/// Reads only.
pub fn catalog_in_force(dir: &Path) -> anyhow::Result<Installed> {
    let id = super::read_identity(dir)?;
    let store = CatalogStore { dir: dir.join(CATALOGS_DIR) };
    let load = |digest: &str| -> anyhow::Result<Installed> {
        let path = store.path(digest).display().to_string();
        Ok(Installed::new(Catalog::from_toml(&path, &store.get(digest)?)?, path, digest))
    };
    let snap = crate::journal::snapshot::newest_valid(dir)?;
    let state = snap.as_ref().and_then(|s| crate::cc::CatalogState::of_snapshot(&s.body));
    let mut current = match &state {
        Some(state) => {
            let file = load(&state.file)?;
            Installed::new(file.catalog, file.name, state.version.clone())
        }
        None => load(&id.catalog_digest)?,
    };
    let after = snap.map_or(crate::journal::Lsn::ZERO, |s| s.lsn);
    let mut failed = None;
    crate::journal::scan(dir, after, |r| {
        if failed.is_some() {
            return Ok(());
        }
        let next = if let Some((digest, _)) = crate::cc::read_catalog_entry(r.payload) {
            load(&digest).map(Some)
        } else if let Some((_, json)) = crate::cc::read_catalog_edit_entry(r.payload) {
            serde_json::from_slice::<Edit>(json)
                .map_err(anyhow::Error::from)
                .and_then(|e| edited(&current, &e).map_err(anyhow::Error::from))
                .map(Some)
        } else {
            Ok(None)
        };
        match next {
            Ok(Some(c)) => current = c,
            Ok(None) => {}
            Err(e) => failed = Some(e.context(format!("the catalog change at LSN {}", r.lsn))),
        }
        Ok(())
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(current),
    }
}
