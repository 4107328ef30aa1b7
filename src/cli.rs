//! The `gyro` command line: `serve`, `echo`, `config check`, `dict check`, `ccr`, `load`,
//! `journal verify|inspect`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::cc::EngineConfig;
use crate::config::{Config, LogConfig, LogFormat};
use crate::diameter::{ApplicationId, Dictionary, LocalIdentity};
use crate::net::charging::Charging;
use crate::net::echo::Echo;
use crate::net::{Server, Shared};
use crate::peer::PeerConfig;

#[derive(Debug, Parser)]
#[command(name = "gyro", version, about = "gyro: online charging over Diameter (Gy/Ro)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Diameter server (embedded defaults when no --config is given).
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override diameter.listen, e.g. 127.0.0.1:3868.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Tokio worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Override journal.dir: keep the journal (and so every charge) in this directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override http.listen (metrics, probes, admin API), e.g. 127.0.0.1:0.
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// Override log.format: human or json.
        #[arg(long)]
        log_format: Option<LogFormat>,
    },
    /// Run the benchmark responder: the same Diameter server as `serve`, answering every CCR
    /// with one canned 2001 CCA (10 MiB granted). Not an OCS: nothing is rated or charged.
    Echo {
        /// TOML configuration file; its diameter section applies, the charging and journal
        /// sections are ignored.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override diameter.listen, e.g. 127.0.0.1:3868.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Tokio worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Override log.format: human or json.
        #[arg(long)]
        log_format: Option<LogFormat>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Dictionary tools.
    Dict {
        #[command(subcommand)]
        command: DictCommand,
    },
    /// Send Credit-Control requests to a Diameter server and print the answers.
    Ccr(Box<crate::tools::ccr::CcrArgs>),
    /// Load a Diameter server with credit-control traffic and report answers/s and latency;
    /// `gyro load provision` writes a catalog with the run's subscribers.
    Load(Box<crate::tools::load::LoadArgs>),
    /// Journal tools: check or print a journal directory without changing it.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Accounts through the admin API of a running gyro serve: list, show, create, update,
    /// close, top up, adjust, bar, unbar.
    Account {
        #[command(flatten)]
        api: crate::tools::admin::ApiArgs,
        #[command(subcommand)]
        command: crate::tools::admin::AccountCommand,
    },
    /// Invoices through the admin API: list, show (JSON or UBL).
    Invoice {
        #[command(flatten)]
        api: crate::tools::admin::ApiArgs,
        #[command(subcommand)]
        command: crate::tools::admin::InvoiceCommand,
    },
    /// Price plans through the admin API: list the loaded ones, validate a catalog file.
    Plan {
        #[command(flatten)]
        api: crate::tools::admin::ApiArgs,
        #[command(subcommand)]
        command: crate::tools::admin::PlanCommand,
    },
    /// Credit-control sessions through the admin API: list, show one by Session-Id.
    Session {
        #[command(flatten)]
        api: crate::tools::admin::ApiArgs,
        #[command(subcommand)]
        command: crate::tools::admin::SessionCommand,
    },
    /// Customers through the admin API: list, show, create, update (catalog changes).
    Customer {
        #[command(flatten)]
        api: crate::tools::admin::ApiArgs,
        #[command(subcommand)]
        command: crate::tools::admin::CustomerCommand,
    },
    /// The catalog in force through the admin API: print it as TOML, or load a file.
    Catalog {
        #[command(flatten)]
        api: crate::tools::admin::ApiArgs,
        #[command(subcommand)]
        command: crate::tools::admin::CatalogCommand,
    },
    /// Reload a running gyro serve (configuration, dictionaries, catalog), as SIGHUP does, and
    /// print what changed or why nothing did.
    Reload {
        #[command(flatten)]
        api: crate::tools::admin::ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Check every segment, record and snapshot in DIR; exit 1 on corruption or an invalid
    /// snapshot (a torn tail, which start-up cuts off, is reported but not an error).
    Verify { dir: PathBuf },
    /// Print the records in DIR: LSN, segment, offset, payload length and a payload preview.
    Inspect {
        dir: PathBuf,
        /// First LSN to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most records to print.
        #[arg(long)]
        limit: Option<u64>,
        /// Only records that touch this account (its number: the catalog's order, from 0).
        #[arg(long)]
        account: Option<u32>,
        /// Only records that touch the account of this subscriber, e.g. e164:491700000001
        /// (resolved with --catalog, else the data directory's catalog in force, else the
        /// embedded demo catalog).
        #[arg(long)]
        subscriber: Option<String>,
        /// A catalog holding the subscriber's account, to resolve --subscriber.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Only records of this Session-Id (its session and its events).
        #[arg(long)]
        session: Option<String>,
        /// Print payloads as raw previews instead of decoded records.
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print the effective settings.
    Check { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum DictCommand {
    /// Validate the embedded dictionaries plus DIR (if given) and print what they hold.
    Check { dir: Option<PathBuf> },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen, workers, data_dir, http_listen, log_format } => {
            serve(config, listen, workers, data_dir, http_listen, log_format)
        }
        Command::Echo { config, listen, workers, log_format } => echo(config, listen, workers, log_format),
        Command::Config { command: ConfigCommand::Check { file } } => {
            let cfg = Config::load(&file)?;
            load_dictionary(&cfg)?;
            if cfg.diameter.tls.enabled() {
                crate::net::tls::TlsServer::load(&cfg.diameter.tls)?;
            }
            if let Some(c) = &cfg.charging.catalog {
                Catalog::load(c)?;
            }
            println!("{}: OK", file.display());
            println!("{cfg:#?}");
            Ok(())
        }
        Command::Dict { command: DictCommand::Check { dir } } => {
            let dict = match &dir {
                Some(d) => Dictionary::embedded_and_dir(d)?,
                None => Dictionary::embedded()?,
            };
            print!("{}", dict.summary());
            println!("OK");
            Ok(())
        }
        // Exit codes are part of the command's contract (1: expectation failed, 2: usage or
        // connection), which an `anyhow` error returned to main cannot express.
        Command::Ccr(args) => std::process::exit(crate::tools::ccr::main(&args)),
        // Same reason: 1 means the run completed but a connection failed during it.
        Command::Load(args) => std::process::exit(crate::tools::load::main(&args)),
        Command::Journal { command } => journal(command),
        // Exit codes as gyro ccr's: 1 the API refused, 2 usage or connection.
        Command::Account { api, command } => std::process::exit(crate::tools::admin::account(&api, &command)),
        Command::Invoice { api, command } => std::process::exit(crate::tools::admin::invoice(&api, &command)),
        Command::Plan { api, command } => std::process::exit(crate::tools::admin::plan(&api, &command)),
        Command::Session { api, command } => std::process::exit(crate::tools::admin::session(&api, &command)),
        Command::Customer { api, command } => {
            std::process::exit(crate::tools::admin::customer(&api, &command))
        }
        Command::Catalog { api, command } => std::process::exit(crate::tools::admin::catalog(&api, &command)),
        Command::Reload { api } => std::process::exit(crate::tools::admin::reload(&api)),
    }
}

/// The filter of `gyro journal inspect`: a subscriber is resolved to its account through the
/// catalog (accounts are numbered in catalog order), a Session-Id hashed with the directory's key.
fn record_filter(
    dir: &std::path::Path,
    account: Option<u32>,
    subscriber: Option<String>,
    catalog: Option<PathBuf>,
    session: Option<String>,
) -> anyhow::Result<crate::cc::RecordFilter> {
    let mut filter = crate::cc::RecordFilter { account, session: None };
    if let Some(s) = subscriber {
        let id: crate::catalog::SubscriptionId =
            s.parse().map_err(|e| anyhow::anyhow!("--subscriber {s:?}: {e}"))?;
        let catalog = match &catalog {
            Some(p) => Catalog::load(p)?,
            // The data directory's own catalog in force (with changes made through the API);
            // the demo for a directory that is not one.
            None if dir.join(crate::durable::CATALOGS_DIR).is_dir() => {
                crate::durable::catalog_in_force(dir)?.catalog
            }
            None => Catalog::demo(),
        };
        let engine = crate::cc::Engine::new(
            EngineConfig::new(&LocalIdentity {
                origin_host: "gyro".into(),
                origin_realm: "gyro".into(),
                host_ip_addresses: vec![],
                vendor_id: 0,
                product_name: "gyro".into(),
                firmware_revision: 0,
                origin_state_id: 0,
            }),
            Arc::new(crate::ledger::Ledger::new()),
        );
        engine.load_catalog(&catalog, 0).map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
        let found = engine
            .ledger()
            .lookup(id.kind, &id.data)
            .ok_or_else(|| anyhow::anyhow!("--subscriber {s:?}: not in the catalog"))?;
        filter.account = Some(found.0);
    }
    if let Some(id) = session {
        let identity = crate::durable::read_identity(dir)?;
        let key = crate::cc::hash_session_id(&identity.session_hash_key, &id);
        filter.session = Some((id, key));
    }
    Ok(filter)
}

fn journal(command: JournalCommand) -> anyhow::Result<()> {
    use crate::tools::journal::{inspect, verify, Preview, Verdict};
    let mut out = std::io::stdout().lock();
    let (dir, verdict) = match command {
        JournalCommand::Verify { dir } => {
            let v = verify(&dir, &mut out)?;
            (dir, v)
        }
        JournalCommand::Inspect { dir, from, limit, account, subscriber, catalog, session, raw } => {
            let from = crate::journal::Lsn(from);
            if raw {
                (dir.clone(), inspect(&dir, from, limit, &Preview, &mut out)?)
            } else {
                let filter = record_filter(&dir, account, subscriber, catalog, session)?;
                let describe = crate::durable::RecordDescriber(filter);
                (dir.clone(), inspect(&dir, from, limit, &describe, &mut out)?)
            }
        }
    };
    match verdict {
        Verdict::Clean | Verdict::TornTail => Ok(()),
        Verdict::Damaged { problems } => {
            anyhow::bail!("{}: {problems} problem(s) in the journal (see above)", dir.display())
        }
    }
}

fn load_dictionary(cfg: &Config) -> anyhow::Result<Dictionary> {
    let dict = match &cfg.diameter.dictionary_dir {
        Some(d) => Dictionary::embedded_and_dir(d)?,
        None => Dictionary::embedded()?,
    };
    Ok(dict)
}

/// The log subscriber: `log.level` (or `RUST_LOG`) filters, `log.format` writes. Lines go to
/// standard output, where they always have (`fmt`'s default writer).
///
/// Returns how to replace the filter (`log.level` on reload), unless `RUST_LOG` set it: the
/// environment wins over the file, at start and at reload alike.
fn init_tracing(log: &LogConfig) -> Option<crate::reload::LogReload> {
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&log.level));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let reload = match log.format {
        LogFormat::Human => {
            let fmt = fmt.with_filter_reloading();
            let handle = fmt.reload_handle();
            fmt.try_init().ok().map(|()| log_reload(handle))
        }
        // One object per line: timestamp, level, the event's fields (message included) at the
        // top level where collectors index them, and the current span's fields (a request's
        // peer, hbh, e2e) under "span". Only the innermost span: there is no nesting to show.
        LogFormat::Json => {
            let fmt = fmt
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_filter_reloading();
            let handle = fmt.reload_handle();
            fmt.try_init().ok().map(|()| log_reload(handle))
        }
    };
    reload.filter(|_| !env_set)
}

/// Replaces the filter behind `handle` with a `log.level` directive.
fn log_reload<S>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> crate::reload::LogReload
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    Box::new(move |level: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// The configuration file (or the embedded defaults) with the command line's overrides.
fn load_config(config: Option<&PathBuf>, listen: Option<std::net::SocketAddr>) -> anyhow::Result<Config> {
    let mut cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(l) = listen {
        cfg.diameter.listen = l;
    }
    Ok(cfg)
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = workers {
        rt.worker_threads(n.max(1));
    }
    rt.build().context("cannot start the async runtime")
}

fn serve(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    workers: Option<usize>,
    data_dir: Option<PathBuf>,
    http_listen: Option<std::net::SocketAddr>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    // The command line's overrides, applied again to every configuration a reload reads.
    let overrides = move |cfg: &mut Config| {
        if let Some(l) = listen {
            cfg.diameter.listen = l;
        }
        if let Some(d) = &data_dir {
            cfg.journal.dir = Some(d.clone());
        }
        if let Some(h) = http_listen {
            cfg.http.listen = h;
        }
        cfg.log.format = log_format.unwrap_or(cfg.log.format);
    };
    let mut cfg = load_config(config.as_ref(), None)?;
    overrides(&mut cfg);
    let log = init_tracing(&cfg.log);
    let dict = Arc::new(load_dictionary(&cfg)?);
    let reload = ReloadSetup { config_path: config.clone(), overrides: Box::new(overrides), log };
    runtime(workers)?.block_on(serve_async(cfg, dict, config.is_none(), reload))
}

/// What `serve_async` needs to build the `Reloader` once the catalog is recovered.
struct ReloadSetup {
    config_path: Option<PathBuf>,
    overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
    log: Option<crate::reload::LogReload>,
}

/// Who this node is and how it treats peers, from `[diameter]` (shared by `serve` and `echo`).
fn peer_config(cfg: &Config, dict: Arc<Dictionary>) -> Arc<PeerConfig> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let local = LocalIdentity {
        origin_host: cfg.diameter.origin_host.clone(),
        origin_realm: cfg.diameter.origin_realm.clone(),
        host_ip_addresses: cfg.host_ip_addresses(),
        vendor_id: 0,
        product_name: cfg.diameter.product_name.clone(),
        firmware_revision: firmware_revision(),
        origin_state_id: now.as_secs() as u32,
    };
    Arc::new(PeerConfig {
        local,
        dictionary: dict,
        applications: cfg.diameter.applications.iter().map(|&a| ApplicationId(a)).collect(),
        allowed_peers: cfg.diameter.allowed_peers.clone(),
        watchdog_interval_ms: cfg.diameter.watchdog_interval_ms,
    })
}

/// Binds `diameter.listen` (unless `diameter.plain = false`) and logs the line scripts and tests
/// wait for ("gyro listening for Diameter", with `addr=`, the bound address: `--listen
/// 127.0.0.1:0` picks a free port); with `[diameter.tls]`, also the TLS listener ("gyro
/// listening for Diameter over TLS").
async fn bind(cfg: &Config, shared: Arc<Shared>, defaults: bool) -> anyhow::Result<Server> {
    let d = &cfg.diameter;
    // The certificate files first: a bad file must stop start-up before any port is open.
    let tls = d.tls.enabled().then(|| crate::net::tls::TlsServer::load(&d.tls)).transpose()?;
    let mut server = Server::new(shared);
    if d.plain {
        let addr = server
            .listen(d.listen)
            .await
            .with_context(|| format!("cannot listen on {} (diameter.listen)", d.listen))?;
        tracing::info!(
            %addr,
            origin_host = %d.origin_host,
            origin_realm = %d.origin_realm,
            config = if defaults { "embedded defaults" } else { "file" },
            "gyro listening for Diameter"
        );
    }
    if let Some(tls) = tls {
        let (at, identity) = (d.tls_listen(), tls.identity());
        let addr = server
            .listen_tls(at, tls)
            .await
            .with_context(|| format!("cannot listen on {at} (diameter.tls.listen)"))?;
        tracing::info!(
            %addr,
            origin_host = %d.origin_host,
            mutual_tls = d.tls.client_ca_file.is_some(),
            ?identity,
            "gyro listening for Diameter over TLS"
        );
    }
    Ok(server)
}

async fn serve_async(
    cfg: Config,
    dict: Arc<Dictionary>,
    defaults: bool,
    reload: ReloadSetup,
) -> anyhow::Result<()> {
    let peer = peer_config(&cfg, dict);
    // SIGHUP's default action ends the process: take it over before anything else, so a reload
    // sent while gyro starts waits for it instead (it is acted on once serving).
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    // The operations listener first, so probes see "alive, recovering" during a long replay.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let ready = Arc::new(crate::http::Readiness::default());
    let http_shutdown = CancellationToken::new();
    let http = http_listener(&cfg, Arc::clone(&metrics), Arc::clone(&ready)).await?;
    let http_backend = Arc::clone(&http.1.backend);
    let http_task = tokio::spawn(crate::http::serve(http.0, http.1, http_shutdown.clone()));
    let (charging_cfg, local) = (cfg.clone(), peer.local.clone());
    let Charged { charging, accounts, catalogs, checkpointer: _checkpointer, mut worker } =
        tokio::task::spawn_blocking(move || charging(&charging_cfg, &local)).await??;
    if cfg.settlement.postgres.enabled() {
        if let Some(w) = worker.take() {
            worker = Some(w.with_billing(billing(&cfg).await?));
        }
    }
    // Before the admin API's backend: it sends RAR and ASR through the server's connections.
    let apps: Vec<Arc<dyn crate::net::Application>> = vec![charging.clone()];
    let shared = Arc::new(Shared::new(peer, apps, cfg.server_limits()));
    let reloader = Arc::new(crate::reload::Reloader::new(
        reload.config_path,
        reload.overrides,
        cfg.clone(),
        Arc::clone(&catalogs),
        reload.log,
        charging.epoch(),
    ));
    reloader.set_net(Arc::clone(&shared));
    let backend = crate::http::Backend {
        engine: Arc::clone(charging.engine()),
        journal: charging.journal().cloned(),
        catalogs: Arc::clone(&catalogs),
        reload: Some(Arc::clone(&reloader)),
        epoch: charging.epoch(),
        net: Some(Arc::clone(&shared)),
    };
    let _ = http_backend.set(backend);
    ready.recovered.store(true, std::sync::atomic::Ordering::Release);
    let worker_stats = worker.as_ref().map(|w| w.stats_handle());
    metrics.update(|s| {
        s.engine = Some(Arc::clone(charging.engine()));
        s.journal = charging.journal().cloned();
        s.worker = worker_stats;
        s.catalog = Some(Arc::clone(catalogs.live()));
        s.reload = Some(Arc::clone(reloader.stats()));
    });
    let server = bind(&cfg, Arc::clone(&shared), defaults).await?;
    metrics.update(|s| s.net = Some(shared));
    ready.listening.store(true, std::sync::atomic::Ordering::Release);
    let addr = server.local_addr()?;
    let in_force = catalogs.live().current();
    tracing::info!(catalog = %in_force.name, version = %in_force.digest, accounts, "credit control ready (application 4)");
    if cfg.charging.catalog.is_none() {
        eprintln!(
            "gyro: demo catalog loaded ({accounts} accounts). Try a data session:\n  \
             gyro ccr --server {addr} --type initial --subscriber e164:491700000001 --context 32251@3gpp.org --rg 10 --requested 0"
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    tokio::spawn(hangups(hup, Arc::clone(&http_backend), shutdown.clone()));
    tokio::spawn(Arc::clone(&charging).supervise(shutdown.clone()));
    let worker = worker.map(|w| tokio::spawn(w.run(shutdown.clone())));
    server.run(shutdown).await;
    ready.listening.store(false, std::sync::atomic::Ordering::Release);
    if let Some(w) = worker {
        // Finishes the steps under way; whatever is pending resumes at the next start.
        if let Ok(stats) = w.await {
            tracing::info!(settled = stats.settled, failed = stats.failed, "settlement worker stopped");
        }
    }
    if let Some(journal) = charging.journal() {
        // Every answer sent has its record on disk already; this flushes the sweep's last records.
        let stats = journal.stats();
        tracing::info!(
            records = stats.records,
            batches = stats.batches,
            mean_batch_records = %format!("{:.1}", stats.mean_batch_records()),
            syncs = stats.syncs,
            mean_sync_us = stats.mean_sync().as_micros() as u64,
            max_sync_us = stats.sync_ns_max / 1000,
            "journal closed"
        );
    }
    http_shutdown.cancel();
    let _ = http_task.await;
    tracing::info!("gyro stopped");
    Ok(())
}

/// Binds `[http] listen` and builds the listener's state: the admin token from
/// `http.admin_token_file` or `GYRO_ADMIN_TOKEN` (none: the admin API answers 503), the
/// invoices under the data directory. Logs "gyro listening for HTTP" with the bound address.
async fn http_listener(
    cfg: &Config,
    metrics: Arc<crate::metrics::Metrics>,
    ready: Arc<crate::http::Readiness>,
) -> anyhow::Result<(tokio::net::TcpListener, crate::http::HttpState)> {
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", cfg.http.listen))?;
    let addr = listener.local_addr()?;
    let mut state = crate::http::HttpState::new(metrics, ready);
    let token = match &cfg.http.admin_token_file {
        Some(path) => Some((
            std::fs::read_to_string(path)
                .with_context(|| format!("http.admin_token_file: cannot read {}", path.display()))?,
            "http.admin_token_file",
        )),
        None => std::env::var("GYRO_ADMIN_TOKEN").ok().map(|t| (t, "GYRO_ADMIN_TOKEN")),
    };
    let admin = token.is_some();
    if let Some((token, source)) = token {
        state = state.with_admin_token(&token).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    }
    if let Some(dir) = &cfg.journal.dir {
        state = state.with_invoices(dir.join("invoices"));
    }
    if !addr.ip().is_loopback() && !admin {
        tracing::warn!(%addr, "the HTTP listener is not on loopback; /metrics is open to that network");
    }
    tracing::info!(%addr, admin_api = admin, "gyro listening for HTTP (/metrics, /healthz, /readyz, /v1)");
    Ok((listener, state))
}

fn echo(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    workers: Option<usize>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    let mut cfg = load_config(config.as_ref(), listen)?;
    cfg.log.format = log_format.unwrap_or(cfg.log.format);
    let _ = init_tracing(&cfg.log);
    let dict = Arc::new(load_dictionary(&cfg)?);
    runtime(workers)?.block_on(echo_async(cfg, dict, config.is_none()))
}

/// The benchmark responder: `serve`'s server, limits and identity with `net::echo::Echo` as
/// its only application.
async fn echo_async(cfg: Config, dict: Arc<Dictionary>, defaults: bool) -> anyhow::Result<()> {
    let peer = peer_config(&cfg, dict);
    let echo = Arc::new(Echo::new(&peer.local));
    let apps: Vec<Arc<dyn crate::net::Application>> = vec![echo];
    let shared = Arc::new(Shared::new(peer, apps, cfg.server_limits()));
    let server = bind(&cfg, shared, defaults).await?;
    tracing::warn!(
        "BENCHMARK RESPONDER, NOT AN OCS: gyro echo answers every CCR with the same canned \
         2001 CCA granting 10 MiB; nothing is rated, reserved, charged or journaled"
    );
    if cfg.charging.catalog.is_some() || cfg.journal.dir.is_some() {
        tracing::info!("charging.catalog and journal.dir are ignored by gyro echo");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    server.run(shutdown).await;
    tracing::info!("gyro echo stopped");
    Ok(())
}

/// The settlement worker `gyro serve` runs: on the data directory's journal, with the gateway
/// `[settlement.payment] adapter` names (the sandbox keeps its books in the data directory).
type ServeWorker = crate::settlement::worker::Worker<
    Arc<crate::durable::ChargingJournal>,
    crate::settlement::payment::ConfiguredAdapter,
>;

/// What `charging` built.
struct Charged {
    charging: Arc<Charging>,
    accounts: usize,
    /// The catalog in force (the data directory's, which may differ from the file if the file
    /// was refused) and the way to change it.
    catalogs: Arc<crate::durable::Catalogs>,
    checkpointer: Option<crate::durable::Checkpointer>,
    /// With a data directory only (see `settlement_worker`).
    worker: Option<ServeWorker>,
}

/// The settlement worker on `dir`: invoices in `dir/invoices`; payments through the configured
/// adapter (the sandbox with its books in `dir/sandbox-books.tsv`); e-mails to the configured
/// SMTP relay, else as files in `dir/mail`. A secret that cannot be read stops start-up with an
/// error naming its key. (Billing records are connected by `serve_async`: that is async.)
fn settlement_worker(
    cfg: &Config,
    dir: &std::path::Path,
    engine: &crate::cc::Engine,
    journal: Arc<crate::durable::ChargingJournal>,
    catalog: Arc<crate::catalog::Live>,
) -> anyhow::Result<ServeWorker> {
    use crate::settlement::payment::{AdapterKind, ConfiguredAdapter, SANDBOX_BOOKS_FILE};
    use crate::settlement::smtp::{Mailer, SmtpMailer};
    use crate::settlement::{worker, Sandbox};
    let st = &cfg.settlement;
    let payments = match st.payment.adapter {
        AdapterKind::Sandbox => {
            let books = dir.join(SANDBOX_BOOKS_FILE);
            let sandbox = Sandbox::with_books(&books).with_context(|| format!("{}", books.display()))?;
            ConfiguredAdapter::Sandbox(sandbox)
        }
        AdapterKind::Stripe | AdapterKind::Webhook => {
            ConfiguredAdapter::from_config(st).map_err(|e| anyhow::anyhow!("{}: {e}", e.key()))?
        }
    };
    let out = worker::Output::in_data_dir(dir).with_context(|| format!("{}", dir.display()))?;
    let (mailer, mail) = if st.smtp.enabled() {
        let smtp = SmtpMailer::new(&st.smtp, &st.seller.email, |name| std::env::var(name).ok())
            .map_err(|e| anyhow::anyhow!("{}: {e}", e.key()))?;
        let relay = format!("smtp://{}", smtp.relay());
        (Mailer::Smtp(Box::new(smtp)), relay)
    } else {
        (Mailer::Files(out.mail.clone()), out.mail.dir().display().to_string())
    };
    let clock: worker::Clock = Arc::new(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
    });
    tracing::info!(
        pending = engine.outbox().len(),
        invoices = %out.invoices.display(),
        %mail,
        payments = ?payments.kind(),
        billing = st.postgres.enabled(),
        "settlement worker ready"
    );
    let worker = worker::Worker::new(
        Arc::clone(engine.outbox()),
        Arc::clone(engine.ledger()),
        journal,
        Arc::new(payments),
        catalog.current().catalog.clone(),
        st.clone(),
        out,
        clock,
    );
    Ok(worker.with_catalog(catalog).with_mailer(mailer))
}

/// `[settlement.postgres]`: the billing database, connected and migrated before anything is
/// settled; a failure stops start-up.
async fn billing(cfg: &Config) -> anyhow::Result<crate::settlement::billing::PgBilling> {
    let pg = &cfg.settlement.postgres;
    let db = crate::settlement::billing::PgBilling::connect(pg, |name| std::env::var(name).ok())
        .await
        .with_context(|| {
            format!(
                "settlement.postgres: cannot use the billing database (schema {:?}) at {:?}",
                pg.schema,
                pg.url.as_deref().unwrap_or_default()
            )
        })?;
    tracing::info!(schema = %pg.schema, "billing records on: PostgreSQL connected, schema current");
    Ok(db)
}

/// Builds the ledger and the engine from the catalog (the embedded demo one by default) and,
/// with a journal, recovers every change since from it.
fn charging(cfg: &Config, local: &LocalIdentity) -> anyhow::Result<Charged> {
    // Parsed by `durable::start_named`: with a data directory, an invalid file leaves the
    // catalog in force there (refused like a reload), rather than stopping the server.
    let (name, text) = match &cfg.charging.catalog {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            (p.display().to_string(), text)
        }
        None => ("embedded demo".to_owned(), Catalog::demo_toml().to_owned()),
    };
    let mut engine_cfg = EngineConfig::new(local);
    engine_cfg.tcc_grace_ms = cfg.charging.tcc_grace_ms;
    engine_cfg.closed_retention_ms = cfg.charging.closed_retention_ms;
    // Settlement needs durable numbers and charges: on exactly when there is a journal (and so
    // a worker to consume the outbox).
    let journal_cfg = cfg.journal.journal_config();
    engine_cfg.settle = journal_cfg.is_some();
    let epoch = tokio::time::Instant::now();
    let now = Charging::now_from(epoch);
    let started = crate::durable::start_named(&name, &text, engine_cfg, journal_cfg, now)
        .with_context(|| format!("catalog {name}"))?;
    let catalogs = Arc::clone(&started.catalogs);
    let (engine, accounts) = (started.engine, started.accounts);
    let mut checkpointer = None;
    let mut worker = None;
    let charging = match started.journal {
        Some((journal, report)) => {
            let interval = std::time::Duration::from_secs(cfg.journal.snapshot_interval_s);
            checkpointer = Some(crate::durable::spawn_checkpointer(
                Arc::clone(&journal),
                started.engine_cfg.clone(),
                interval,
                cfg.journal.snapshots_kept,
            )?);
            tracing::info!(
                dir = %journal.dir().display(),
                records = report.records_replayed,
                open_sessions = engine.open_sessions(),
                duration_ms = report.duration.as_millis() as u64,
                "ledger recovered from the journal"
            );
            let dir = journal.dir().to_owned();
            let live = Arc::clone(catalogs.live());
            worker = Some(settlement_worker(cfg, &dir, &engine, Arc::clone(&journal), live)?);
            Charging::with_journal(Arc::clone(&engine), epoch, journal)
        }
        None => {
            tracing::warn!(
                "no journal (journal.dir or --data-dir): the ledger is in memory only and every \
                 charge is lost when gyro stops; sessions are not settled (no invoices, payments \
                 or e-mails without a data directory)"
            );
            Charging::new(Arc::clone(&engine))
        }
    };
    Ok(Charged { charging: Arc::new(charging), accounts, catalogs, checkpointer, worker })
}

/// SIGTERM and SIGINT start a graceful shutdown: stop accepting, DPR to peers, drain, exit 0.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// SIGHUP reloads the configuration, dictionaries and catalog (see `reload`), as
/// `POST /v1/reload` does; the outcome is logged.
async fn hangups(
    mut hup: tokio::signal::unix::Signal,
    backend: Arc<std::sync::OnceLock<crate::http::Backend>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        tracing::info!("SIGHUP: reloading");
        if let Some(b) = backend.get() {
            // Logged by the reloader, success or not.
            let _ = crate::http::reload(b, "SIGHUP").await;
        }
    }
}

/// RFC 6733 §5.3.4 Firmware-Revision: the crate version as MMmmpp (0.1.0 → 100).
fn firmware_revision() -> u32 {
    let v = |s: &str| s.parse::<u32>().unwrap_or(0);
    v(env!("CARGO_PKG_VERSION_MAJOR")) * 10_000
        + v(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + v(env!("CARGO_PKG_VERSION_PATCH"))
}
