//! Live reload (issue 7): SIGHUP and `POST /v1/reload` re-read the configuration file, the
//! dictionaries and the catalog, and put them in force without dropping a connection or a
//! session.
//!
//! All or nothing: the configuration is parsed and validated, the dictionaries compiled, the
//! catalog parsed, validated and checked against the one in force (`catalog::check_change`)
//! before anything changes; any error leaves everything as it was and is returned (the admin
//! endpoint answers it, SIGHUP logs it) and counted. Then, in order: the catalog is installed
//! (journaled, see `durable::catalogs`), the peer settings (dictionaries, `allowed_peers`)
//! swapped for every connection, the log filter replaced.
//!
//! What reloads: `charging.catalog` (the file, re-read even when the key is unchanged),
//! `diameter.dictionary_dir` (re-read likewise), `diameter.allowed_peers`, `log.level`. Every
//! other key keeps its running value until a restart; a reload that finds one changed says so
//! (`restart_required`, and a warning) rather than pretending it took effect.
//!
//! Must not touch: the engine's internals (catalog changes go through `durable::Catalogs`),
//! sockets (the peer settings go through `net::Shared`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::catalog::Catalog;
use crate::cc::Now;
use crate::config::Config;
use crate::diameter::Dictionary;
use crate::durable::{Catalogs, InstallError, Installation};
use crate::net::Shared;

/// Replaces the log filter (`log.level`); built by whoever installed the subscriber.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Counters and versions for metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Unix seconds of the last reload that succeeded (0: none yet).
    pub last_success_unix_s: AtomicU64,
    /// The dictionaries and configuration in force, as digests (for `gyro_config_info`).
    pub versions: Mutex<Versions>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub config: String,
    pub dictionaries: String,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file: names the key (or the line) that is wrong.
    #[error("configuration: {0}")]
    Config(String),
    #[error("dictionaries: {0}")]
    Dictionaries(String),
    #[error("catalog: {0}")]
    Catalog(#[from] InstallError),
    /// Another reload is running; the caller may try again.
    #[error("a reload is already running")]
    Busy,
}

impl ReloadError {
    /// The field an HTTP error names.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Dictionaries(_) => "diameter.dictionary_dir",
            Self::Catalog(_) => "charging.catalog",
            Self::Busy => "reload",
        }
    }
}

/// What a reload did.
#[derive(Clone, Debug)]
pub struct ReloadReport {
    pub catalog: Installation,
    pub dictionaries_changed: bool,
    pub allowed_peers_changed: bool,
    pub log_level_changed: bool,
    /// Keys that differ from the running configuration but only take effect at a restart.
    pub restart_required: Vec<&'static str>,
    pub versions: Versions,
}

/// Re-reads and applies; one per server.
pub struct Reloader {
    /// `--config`; `None`: embedded defaults, which a reload re-applies (with the overrides).
    config_path: Option<PathBuf>,
    /// The command line's overrides (`--listen`, `--data-dir`, …), applied to every re-read.
    overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
    running: Mutex<Config>,
    catalogs: Arc<Catalogs>,
    net: OnceLock<Arc<Shared>>,
    log: Option<LogReload>,
    epoch: tokio::time::Instant,
    stats: Arc<ReloadStats>,
    one_at_a_time: Mutex<()>,
}

/// A digest of the text of every dictionary in force (the embedded ones and
/// `diameter.dictionary_dir`'s), in the order they load: the dictionaries' version.
pub fn dictionaries_digest(dir: Option<&std::path::Path>) -> Result<String, String> {
    let mut h = SipHasher13::new_with_key(&[0; 16]);
    let mut add = |name: &str, text: &str| {
        std::hash::Hasher::write(&mut h, name.as_bytes());
        std::hash::Hasher::write(&mut h, &[0]);
        std::hash::Hasher::write(&mut h, text.as_bytes());
        std::hash::Hasher::write(&mut h, &[0]);
    };
    for (name, text) in crate::diameter::dictionary::EMBEDDED {
        add(name, text);
    }
    if let Some(dir) = dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            add(&f.display().to_string(), &text);
        }
    }
    Ok(format!("{:032x}", h.finish128().as_u128()))
}

/// A digest of the configuration in force (after the command line's overrides).
pub fn config_digest(cfg: &Config) -> String {
    crate::durable::catalog_digest(&format!("{cfg:?}"))
}

impl Reloader {
    pub fn new(
        config_path: Option<PathBuf>,
        overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
        running: Config,
        catalogs: Arc<Catalogs>,
        log: Option<LogReload>,
        epoch: tokio::time::Instant,
    ) -> Self {
        let stats = Arc::new(ReloadStats::default());
        let dictionaries =
            dictionaries_digest(running.diameter.dictionary_dir.as_deref()).unwrap_or_default();
        *stats.versions.lock().unwrap_or_else(|e| e.into_inner()) =
            Versions { config: config_digest(&running), dictionaries };
        Self {
            config_path,
            overrides,
            running: Mutex::new(running),
            catalogs,
            net: OnceLock::new(),
            log,
            epoch,
            stats,
            one_at_a_time: Mutex::new(()),
        }
    }

    /// The Diameter server whose peer settings a reload swaps (set once it is bound).
    pub fn set_net(&self, net: Arc<Shared>) {
        let _ = self.net.set(net);
    }

    pub fn stats(&self) -> &Arc<ReloadStats> {
        &self.stats
    }

    pub fn catalogs(&self) -> &Arc<Catalogs> {
        &self.catalogs
    }

    /// Re-reads everything and applies it (see the module's text). Blocking: file reads, the
    /// catalog's syncs and its journal record; call it from a blocking thread. `why` is logged
    /// ("SIGHUP", "admin API").
    pub fn reload(&self, why: &str) -> Result<ReloadReport, ReloadError> {
        let Ok(_one) = self.one_at_a_time.try_lock() else { return Err(ReloadError::Busy) };
        let outcome = self.reload_inner();
        match &outcome {
            Ok(r) => {
                self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                self.stats.last_success_unix_s.store(now.as_secs(), Ordering::Relaxed);
                tracing::info!(
                    why,
                    catalog = %r.catalog.digest,
                    catalog_changed = !r.catalog.unchanged,
                    accounts_added = r.catalog.accounts_added,
                    accounts_repriced = r.catalog.repriced.len(),
                    dictionaries_changed = r.dictionaries_changed,
                    allowed_peers_changed = r.allowed_peers_changed,
                    log_level_changed = r.log_level_changed,
                    "reloaded"
                );
                if !r.restart_required.is_empty() {
                    tracing::warn!(
                        why,
                        keys = ?r.restart_required,
                        "reload: these settings changed in the file but take effect only at a restart"
                    );
                }
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(why, error = %e, "reload refused: everything stays as it was");
            }
        }
        outcome
    }

    fn reload_inner(&self) -> Result<ReloadReport, ReloadError> {
        // 1. Read and check everything; nothing changes yet.
        let mut cfg = match &self.config_path {
            Some(p) => Config::load(p).map_err(|e| ReloadError::Config(e.to_string()))?,
            None => Config::default(),
        };
        (self.overrides)(&mut cfg);
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let dir = cfg.diameter.dictionary_dir.as_deref();
        let dictionary = match dir {
            Some(d) => Dictionary::embedded_and_dir(d),
            None => Dictionary::embedded(),
        }
        .map_err(|e| ReloadError::Dictionaries(e.to_string()))?;
        let dictionaries = dictionaries_digest(dir).map_err(ReloadError::Dictionaries)?;
        let (name, text) = match &cfg.charging.catalog {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|e| {
                    ReloadError::Catalog(InstallError::Refused(crate::catalog::CatalogError::Read {
                        path: p.display().to_string(),
                        source: e,
                    }))
                })?,
            ),
            None => ("embedded demo".to_owned(), Catalog::demo_toml().to_owned()),
        };
        let restart_required = restart_required(&running, &cfg);

        // 2. Apply: the catalog first (it is the one step that can still refuse: its own
        // checks run under the catalog lock against the version in force).
        let now = crate::net::charging::Charging::now_from(self.epoch);
        let catalog = self.install_catalog(&name, &text, now)?;
        let old_versions = self.stats.versions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let dictionaries_changed = old_versions.dictionaries != dictionaries;
        let allowed_peers_changed = running.diameter.allowed_peers != cfg.diameter.allowed_peers;
        if let Some(net) = self.net.get() {
            if dictionaries_changed || allowed_peers_changed {
                let old = net.peer_config();
                net.set_peer_config(Arc::new(crate::peer::PeerConfig {
                    local: old.local.clone(),
                    dictionary: Arc::new(dictionary),
                    applications: old.applications.clone(),
                    allowed_peers: cfg.diameter.allowed_peers.clone(),
                    watchdog_interval_ms: old.watchdog_interval_ms,
                }));
            }
        }
        let mut restart_required = restart_required;
        let mut log_level_changed = false;
        if running.log.level != cfg.log.level {
            match &self.log {
                Some(set) => match set(&cfg.log.level) {
                    Ok(()) => log_level_changed = true,
                    // Validated by Config::load, so this is the subscriber refusing.
                    Err(e) => tracing::warn!(error = %e, "reload: the log filter could not be replaced"),
                },
                // RUST_LOG set the filter at start and wins over the file (as at start).
                None => restart_required.push("log.level (RUST_LOG is set)"),
            }
        }
        // What is in force now: the live keys from the file, the rest as it runs.
        let mut in_force = running;
        in_force.charging.catalog = cfg.charging.catalog.clone();
        in_force.diameter.dictionary_dir = cfg.diameter.dictionary_dir.clone();
        in_force.diameter.allowed_peers = cfg.diameter.allowed_peers.clone();
        in_force.log.level = cfg.log.level.clone();
        let versions = Versions { config: config_digest(&in_force), dictionaries };
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = in_force;
        *self.stats.versions.lock().unwrap_or_else(|e| e.into_inner()) = versions.clone();
        Ok(ReloadReport {
            catalog,
            dictionaries_changed,
            allowed_peers_changed,
            log_level_changed,
            restart_required,
            versions,
        })
    }

    fn install_catalog(&self, name: &str, text: &str, now: Now) -> Result<Installation, ReloadError> {
        Ok(self.catalogs.install_file(name, text, now)?)
    }
}

/// Keys (sections, or single keys where a section has live ones) that differ between `running`
/// and `new` and are not reloaded.
fn restart_required(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (mut a, mut b) = (running.diameter.clone(), new.diameter.clone());
    a.allowed_peers = None;
    b.allowed_peers = None;
    a.dictionary_dir = None;
    b.dictionary_dir = None;
    if a != b {
        out.push("diameter");
    }
    let (mut a, mut b) = (running.charging.clone(), new.charging.clone());
    a.catalog = None;
    b.catalog = None;
    if a != b {
        out.push("charging");
    }
    if running.journal != new.journal {
        out.push("journal");
    }
    if running.log.format != new.log.format {
        out.push("log.format");
    }
    if running.settlement != new.settlement {
        out.push("settlement");
    }
    if running.http != new.http {
        out.push("http");
    }
    out
}
