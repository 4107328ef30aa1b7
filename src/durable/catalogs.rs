//! Catalog versions in the data directory (live reload, issue 7).
//!
//! The journal and the ledger refer to the catalog by position (account N, service index), so a
//! catalog change is an event in the journal like any other: the new catalog's text is stored
//! as `DIR/catalogs/<digest>.toml` (durable before anything names it), and a record of its own
//! (`cc::TAG_CATALOG`: digest, when) is appended before the engine switches to it. Recovery and
//! the checkpointer rebuild the same sequence: the directory's first catalog (or the versions a
//! snapshot names), then every change where the journal has it. So a catalog edited between two
//! starts is no longer refused: it is installed like a reload, if `catalog::check_change`
//! accepts it, and otherwise the catalog in force stays and the refusal is logged.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{catalog_digest, io, ChargingJournal, Completion, DataDirError, Identity, Waiting};
use crate::catalog::{accounts_repriced, check_change, Catalog, CatalogError, Installed, Live};
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

    /// One journal record: a catalog change is installed from its file, anything else goes to
    /// the engine.
    pub(super) fn replay(&mut self, engine: &Engine, now: Now, payload: &[u8]) -> anyhow::Result<()> {
        match crate::cc::read_catalog_entry(payload) {
            Some((digest, at_unix_ms, [])) => {
                let name = self.store.path(&digest).display().to_string();
                let v = self.version(&digest, &name)?;
                engine
                    .install_catalog(&v, now, at_unix_ms)
                    .map_err(|e| anyhow::anyhow!("catalog {digest}: {e}"))?;
                self.last = v;
                Ok(())
            }
            _ => Ok(engine.recover(now, payload)?),
        }
    }
}

/// An engine with the catalog versions in force at `snapshot` (the directory's first catalog
/// when there is none, or when the snapshot predates catalog versions) and the snapshot loaded.
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
    let mut chain = snapshot.map(|s| crate::cc::snapshot_catalogs(&s.body)).unwrap_or_default();
    if chain.is_empty() {
        chain.push((id.catalog_digest.clone(), id.created_unix_ms));
    }
    let name_of = |digest: &str| {
        if digest == configured_digest {
            name.to_owned()
        } else {
            store.path(digest).display().to_string()
        }
    };
    let (base, since) = chain[0].clone();
    let base_text = store.get(&base)?;
    let base_catalog = Catalog::from_toml(&name_of(&base), &base_text)?;
    let base_version = Arc::new(Installed::new(base_catalog, name_of(&base), base.clone()));
    let engine = Engine::new(engine_cfg, Arc::new(crate::ledger::Ledger::new()));
    engine
        .load_catalog_since(&base_version.catalog, now, since)
        .map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
    engine.set_catalog_base(&base, since);
    let mut replayer = Replayer {
        store: store.clone(),
        parsed: HashMap::from([(base.clone(), Arc::clone(&base_version))]),
        last: base_version,
    };
    for (digest, at) in &chain[1..] {
        let v = replayer.version(digest, &name_of(digest))?;
        engine.install_catalog(&v, now, *at).map_err(|e| anyhow::anyhow!("catalog {digest}: {e}"))?;
        replayer.last = v;
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
    /// Accounts whose prices changed (their open sessions get a RAR).
    pub repriced: Vec<u32>,
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
            return Ok(Installation {
                digest: current.digest.clone(),
                previous: current.digest.clone(),
                unchanged: true,
                accounts_added: 0,
                repriced: Vec::new(),
            });
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
            return Ok(Installation {
                previous: digest.clone(),
                digest,
                unchanged: true,
                accounts_added: 0,
                repriced: Vec::new(),
            });
        }
        // The same content in other words (comments, order of keys, `GET /v1/catalog`'s text):
        // no new version. Debug too, as `Decimal`'s == ignores the scale ("1.0" == "1.00").
        if catalog == current.catalog && format!("{catalog:?}") == format!("{:?}", current.catalog) {
            return Ok(Installation {
                digest: current.digest.clone(),
                previous: current.digest.clone(),
                unchanged: true,
                accounts_added: 0,
                repriced: Vec::new(),
            });
        }
        let installed = Installed::new(catalog, name, digest.clone());
        check_change(name, &current.catalog, &current.packages, &installed.catalog, &installed.packages)?;
        if let Some(store) = &self.store {
            store.put(text)?;
        }
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(now.unix_secs * 1000, |d| d.as_millis() as u64);
        // The record goes first: whatever the engine does on the new catalog (a CCR on a new
        // account) is appended after it, so recovery meets the change before what depends on it.
        let durable = self.journal.as_ref().map(|j| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            j.append(&crate::cc::catalog_entry(&digest, at_unix_ms), Completion(Waiting::Task(tx)));
            rx
        });
        let added = self.engine.install_catalog(&installed, now, at_unix_ms);
        let accounts_added = match added {
            Ok(n) => n,
            // check_change and validation passed, so the ledger refusing an account is a bug;
            // the record is in the journal and the next start will say the same.
            Err(e) => panic!("catalog {digest} passed its checks but the engine refused it: {e}"),
        };
        let installed = Arc::new(installed);
        let repriced = accounts_repriced(&current, &installed);
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
            repriced,
        })
    }
}
