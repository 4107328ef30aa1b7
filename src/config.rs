//! Configuration: a TOML file (or the embedded defaults) turned into validated options.
//!
//! Unknown keys are errors (serde `deny_unknown_fields`), and every value check names the key,
//! so an operator's typo is caught at start-up or by `gyro config check`, not in production.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::diameter::ApplicationId;
use crate::journal::{Fsync, JournalConfig};
use crate::limits::{
    CONNECTIONS_MAX, DIAMETER_IDENTITY_MAX_BYTES, IN_FLIGHT_PER_CONNECTION_MAX, JOURNAL_SEGMENT_MIB_MAX,
    JOURNAL_SNAPSHOTS_KEPT_MAX, MESSAGE_SIZE_MAX_BYTES, WATCHDOG_INTERVAL_MS_MIN,
};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub diameter: DiameterConfig,
    pub charging: ChargingConfig,
    pub journal: JournalSettings,
    pub log: LogConfig,
    /// `[settlement]`: seller, invoice numbering, payment retries, price basis (issue 6; used
    /// by the settlement worker, which runs with a data directory).
    pub settlement: crate::settlement::SettlementConfig,
    /// `[http]`: the operations listener (`/metrics`, `/healthz`, `/readyz`, the admin API).
    pub http: HttpConfig,
}

/// The `[http]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener. Loopback by default: metrics and the admin API are for
    /// the host's Prometheus and operators, not for the network the peers are on.
    pub listen: SocketAddr,
    /// A file holding the admin API's bearer token (or `GYRO_ADMIN_TOKEN`); without either the
    /// admin endpoints answer 503 and only `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464), admin_token_file: None }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChargingConfig {
    /// The catalog of plans, customers and accounts; absent = the embedded demo catalog.
    pub catalog: Option<PathBuf>,
    /// Added to Validity-Time before a silent session's reservations are released (Tcc).
    pub tcc_grace_ms: u64,
    /// How long closed and expired sessions are remembered (late usage, retransmissions).
    pub closed_retention_ms: u64,
}

impl Default for ChargingConfig {
    fn default() -> Self {
        Self { catalog: None, tcc_grace_ms: 30_000, closed_retention_ms: 600_000 }
    }
}

/// The `[journal]` section: where ledger changes are made durable.
///
/// `dir` has no default on purpose. A relative default such as `./gyro-data` would depend on the
/// working directory, which differs between a shell, systemd (`WorkingDirectory=`) and a
/// container, so the same zero-config command could quietly start on another, empty ledger.
/// Without `dir` gyro keeps the ledger in memory only, and says so at start-up.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSettings {
    /// Directory of journal segments and snapshots; absent = no journal (in memory only).
    pub dir: Option<PathBuf>,
    /// `batch`: an answer waits for the fsync of its record's batch. `off`: benchmarks only.
    pub fsync: Fsync,
    /// Size of a segment file before the next one starts.
    pub segment_mib: u64,
    /// Segments created full-size and zero-filled ahead of time, so an fsync does not also
    /// commit the file's growth; `false` for copy-on-write file systems (btrfs, ZFS).
    pub preallocate: bool,
    /// How often the ledger is snapshotted, so start-up replays little and old segments go.
    pub snapshot_interval_s: u64,
    /// Snapshots kept; segments are kept back to the oldest of them.
    pub snapshots_kept: usize,
}

impl Default for JournalSettings {
    fn default() -> Self {
        Self {
            dir: None,
            fsync: Fsync::Batch,
            segment_mib: 64,
            preallocate: true,
            snapshot_interval_s: 300,
            snapshots_kept: 2,
        }
    }
}

impl JournalSettings {
    /// The journal's options, when a directory is configured.
    pub fn journal_config(&self) -> Option<JournalConfig> {
        let dir = self.dir.as_ref()?;
        Some(JournalConfig {
            fsync: self.fsync,
            segment_bytes: self.segment_mib * 1024 * 1024,
            preallocate: self.preallocate,
            ..JournalConfig::new(dir)
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiameterConfig {
    /// TCP address of the Diameter listener (RFC 6733 §2.1: port 3868).
    pub listen: SocketAddr,
    pub origin_host: String,
    pub origin_realm: String,
    /// Host-IP-Address values for CEA; empty means the listen address (or 127.0.0.1 when the
    /// listener is bound to an unspecified address).
    pub host_ip_addresses: Vec<IpAddr>,
    pub product_name: String,
    /// Applications advertised in CEA.
    pub applications: Vec<u32>,
    /// When present, only these Origin-Hosts may connect; others get 3010 in CEA.
    pub allowed_peers: Option<Vec<String>>,
    /// RFC 3539 Tw, at least 6000 ms.
    pub watchdog_interval_ms: u64,
    /// Requests in flight per connection before 3004 TOO_BUSY.
    pub in_flight_per_connection: usize,
    /// Requests in flight across connections before 3004 TOO_BUSY; new sessions and events are
    /// refused from 75 % of it on, so open sessions keep being served.
    pub in_flight_max: usize,
    /// Concurrent connections; more are closed at once.
    pub connections_max: usize,
    /// Open connections one peer (Origin-Host, case-insensitive) may hold; a CER beyond it gets
    /// CEA 5012 and close. At most `connections_max`; absent = 16, or `connections_max` when
    /// that is smaller (so a small `connections_max` alone stays a valid file).
    pub connections_per_peer_max: Option<usize>,
    /// Largest message accepted; a larger one is a corrupt stream (5015, close).
    pub message_size_max_bytes: usize,
    /// Extra dictionary files (`*.xml`) loaded after the embedded ones.
    pub dictionary_dir: Option<PathBuf>,
    /// Whether `listen` serves plain TCP. `false` with `[diameter.tls]` set = TLS only.
    pub plain: bool,
    /// `[diameter.tls]`: Diameter over TLS at connect (RFC 6733 §13), on its own listener.
    pub tls: DiameterTlsConfig,
}

/// The `[diameter.tls]` table. TLS is on when `cert_file` and `key_file` are set; the files are
/// read at start-up by `net::tls`, which names the key and the file when one is unusable.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiameterTlsConfig {
    /// Address of the TLS listener; default: the IP of `diameter.listen`, port 5658
    /// (RFC 6733 §2.1: a node that starts TLS before any message exchange runs on 5658).
    pub listen: Option<SocketAddr>,
    /// The server's certificate chain (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to; when set, every TLS client
    /// must present one (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// Whether the client certificate's DNS names (subjectAltName, or the CN when there is no
    /// DNS subjectAltName) must include the Origin-Host of its CER (else CEA 3010). Default:
    /// on when `client_ca_file` is set.
    pub require_peer_identity: Option<bool>,
}

/// The well-known port of Diameter over TLS/TCP (RFC 6733 §2.1, §11.2).
pub const DIAMETER_TLS_PORT: u16 = 5658;

impl DiameterTlsConfig {
    /// Whether a TLS listener is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Whether the certificate is bound to the Origin-Host.
    pub fn peer_identity_required(&self) -> bool {
        self.require_peer_identity.unwrap_or(self.client_ca_file.is_some())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter directive such as `info` or `gyro=debug,info`.
    pub level: String,
    /// `human` (one readable line per event) or `json` (one JSON object per line, for log
    /// collectors).
    pub format: LogFormat,
}

/// How log lines are written (`[log] format`, `--log-format`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            // serde's own message would name only the variants; the TOML error shows the line,
            // but an operator reading a log should not have to guess which key it was.
            _ => Err(format!("log.format `{s}` is not \"human\" or \"json\"")),
        }
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl DiameterConfig {
    /// `connections_per_peer_max`, or its default within `connections_max`.
    pub fn connections_per_peer(&self) -> usize {
        self.connections_per_peer_max
            .unwrap_or_else(|| crate::limits::CONNECTIONS_PER_PEER_DEFAULT.min(self.connections_max))
    }

    /// Where the TLS listener binds: `tls.listen`, or port 5658 on the IP of `listen`.
    pub fn tls_listen(&self) -> SocketAddr {
        self.tls.listen.unwrap_or_else(|| SocketAddr::new(self.listen.ip(), DIAMETER_TLS_PORT))
    }
}

impl Default for DiameterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3868),
            origin_host: "gyro.localdomain".to_owned(),
            origin_realm: "localdomain".to_owned(),
            host_ip_addresses: Vec::new(),
            product_name: "gyro".to_owned(),
            applications: vec![ApplicationId::CREDIT_CONTROL.0],
            allowed_peers: None,
            watchdog_interval_ms: crate::limits::WATCHDOG_INTERVAL_MS_DEFAULT,
            in_flight_per_connection: IN_FLIGHT_PER_CONNECTION_MAX,
            in_flight_max: crate::limits::IN_FLIGHT_TOTAL_MAX,
            connections_max: CONNECTIONS_MAX,
            connections_per_peer_max: None,
            message_size_max_bytes: MESSAGE_SIZE_MAX_BYTES,
            dictionary_dir: None,
            plain: true,
            tls: DiameterTlsConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".to_owned(), format: LogFormat::Human }
    }
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: key `{key}`: {problem}")]
    Value { path: String, key: &'static str, problem: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        Self::parse(&p, &text)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key, problem: String| ConfigError::Value { path: origin.to_owned(), key, problem };
        let d = &self.diameter;
        check_identity(&d.origin_host).map_err(|p| err("diameter.origin_host", p))?;
        check_identity(&d.origin_realm).map_err(|p| err("diameter.origin_realm", p))?;
        if d.product_name.is_empty() {
            return Err(err("diameter.product_name", "must not be empty".into()));
        }
        if d.applications.is_empty() {
            return Err(err(
                "diameter.applications",
                "must list at least one application (4 = credit control)".into(),
            ));
        }
        if d.applications.contains(&0) {
            return Err(err(
                "diameter.applications",
                "application 0 is never advertised (RFC 6733 §2.4)".into(),
            ));
        }
        if d.watchdog_interval_ms < WATCHDOG_INTERVAL_MS_MIN {
            return Err(err(
                "diameter.watchdog_interval_ms",
                format!(
                    "{} is below the RFC 3539 minimum of {WATCHDOG_INTERVAL_MS_MIN}",
                    d.watchdog_interval_ms
                ),
            ));
        }
        if !(1..=crate::limits::IN_FLIGHT_TOTAL_MAX).contains(&d.in_flight_max) {
            return Err(err(
                "diameter.in_flight_max",
                format!("{} is outside 1..={}", d.in_flight_max, crate::limits::IN_FLIGHT_TOTAL_MAX),
            ));
        }
        if !(1..=IN_FLIGHT_PER_CONNECTION_MAX).contains(&d.in_flight_per_connection) {
            return Err(err(
                "diameter.in_flight_per_connection",
                format!("{} is outside 1..={IN_FLIGHT_PER_CONNECTION_MAX}", d.in_flight_per_connection),
            ));
        }
        if !(1..=CONNECTIONS_MAX).contains(&d.connections_max) {
            return Err(err(
                "diameter.connections_max",
                format!("{} is outside 1..={CONNECTIONS_MAX}", d.connections_max),
            ));
        }
        if let Some(n) = d.connections_per_peer_max {
            if !(1..=d.connections_max).contains(&n) {
                return Err(err(
                    "diameter.connections_per_peer_max",
                    format!("{n} is outside 1..={} (diameter.connections_max)", d.connections_max),
                ));
            }
        }
        // The smallest useful limit holds a CER with a few addresses and applications.
        if !(1024..=MESSAGE_SIZE_MAX_BYTES).contains(&d.message_size_max_bytes)
            || !d.message_size_max_bytes.is_multiple_of(4)
        {
            return Err(err(
                "diameter.message_size_max_bytes",
                format!(
                    "{} is not a multiple of 4 in 1024..={MESSAGE_SIZE_MAX_BYTES}",
                    d.message_size_max_bytes
                ),
            ));
        }
        if let Some(peers) = &d.allowed_peers {
            for p in peers {
                check_identity(p).map_err(|e| err("diameter.allowed_peers", format!("`{p}`: {e}")))?;
            }
        }
        self.validate_tls(&err)?;
        if !(1_000..=crate::limits::TCC_GRACE_MS_MAX).contains(&self.charging.tcc_grace_ms) {
            return Err(err(
                "charging.tcc_grace_ms",
                format!(
                    "{} is outside 1000..={}",
                    self.charging.tcc_grace_ms,
                    crate::limits::TCC_GRACE_MS_MAX
                ),
            ));
        }
        if self.charging.closed_retention_ms > 86_400_000 {
            return Err(err("charging.closed_retention_ms", "more than a day".into()));
        }
        self.validate_journal(&err)?;
        let st = &self.settlement;
        st.numbering.validate().map_err(|e| {
            let key = match e {
                crate::settlement::numbering::SeriesConfigError::Prefix => "settlement.numbering.prefix",
                crate::settlement::numbering::SeriesConfigError::Digits => "settlement.numbering.digits",
            };
            err(key, e.to_string())
        })?;
        st.retry.validate().map_err(|e| {
            let key = match e {
                crate::settlement::payment::RetryPolicyError::Attempts => "settlement.retry.attempts_max",
                crate::settlement::payment::RetryPolicyError::Base => "settlement.retry.base_ms",
            };
            err(key, e.to_string())
        })?;
        crate::settlement::payment::configured::validate(st).map_err(|e| err(e.key(), e.to_string()))?;
        st.smtp.validate().map_err(|e| err(e.key(), e.to_string()))?;
        st.postgres.validate().map_err(|e| err(e.key(), e.to_string()))?;
        if self.log.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(err(
                "log.level",
                format!("`{}` is not a valid filter (try info, debug, gyro=debug)", self.log.level),
            ));
        }
        Ok(())
    }

    /// The shape of `[diameter.tls]`; the files themselves are read when the listener starts.
    fn validate_tls(&self, err: &impl Fn(&'static str, String) -> ConfigError) -> Result<(), ConfigError> {
        let d = &self.diameter;
        let t = &d.tls;
        let empty = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        for (key, path) in [
            ("diameter.tls.cert_file", &t.cert_file),
            ("diameter.tls.key_file", &t.key_file),
            ("diameter.tls.client_ca_file", &t.client_ca_file),
        ] {
            if empty(path) {
                return Err(err(key, "must not be empty (leave it out instead)".into()));
            }
        }
        match (&t.cert_file, &t.key_file) {
            (Some(_), None) => {
                return Err(err(
                    "diameter.tls.key_file",
                    "missing: cert_file is set, so TLS needs its key".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "diameter.tls.cert_file",
                    "missing: key_file is set, so TLS needs a certificate".into(),
                ))
            }
            _ => {}
        }
        if !t.enabled() {
            let stray = if t.listen.is_some() {
                Some("diameter.tls.listen")
            } else if t.client_ca_file.is_some() {
                Some("diameter.tls.client_ca_file")
            } else {
                t.require_peer_identity.map(|_| "diameter.tls.require_peer_identity")
            };
            if let Some(key) = stray {
                return Err(err(key, "has no effect without diameter.tls.cert_file and key_file".into()));
            }
            if !d.plain {
                return Err(err(
                    "diameter.plain",
                    "false leaves no listener: set [diameter.tls] cert_file and key_file for TLS".into(),
                ));
            }
            return Ok(());
        }
        if t.require_peer_identity == Some(true) && t.client_ca_file.is_none() {
            return Err(err(
                "diameter.tls.require_peer_identity",
                "needs diameter.tls.client_ca_file: without client certificates there is no identity to check"
                    .into(),
            ));
        }
        let tls = d.tls_listen();
        if d.plain && tls.port() != 0 && tls == d.listen {
            return Err(err("diameter.tls.listen", format!("{tls} is diameter.listen too (plain TCP)")));
        }
        Ok(())
    }

    fn validate_journal(
        &self,
        err: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let j = &self.journal;
        if j.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(err(
                "journal.dir",
                "must not be empty (leave it out to run without a journal)".into(),
            ));
        }
        if !(1..=JOURNAL_SEGMENT_MIB_MAX).contains(&j.segment_mib) {
            return Err(err(
                "journal.segment_mib",
                format!("{} is outside 1..={JOURNAL_SEGMENT_MIB_MAX}", j.segment_mib),
            ));
        }
        // Under 10 s the snapshots would cost more than the replay they save; over a day the
        // journal grows for a day's traffic and start-up replays all of it.
        if !(10..=86_400).contains(&j.snapshot_interval_s) {
            return Err(err(
                "journal.snapshot_interval_s",
                format!("{} is outside 10..=86400", j.snapshot_interval_s),
            ));
        }
        if !(1..=JOURNAL_SNAPSHOTS_KEPT_MAX).contains(&j.snapshots_kept) {
            return Err(err(
                "journal.snapshots_kept",
                format!("{} is outside 1..={JOURNAL_SNAPSHOTS_KEPT_MAX}", j.snapshots_kept),
            ));
        }
        Ok(())
    }

    /// Host-IP-Address values to advertise.
    pub fn server_limits(&self) -> crate::net::ServerLimits {
        crate::net::ServerLimits {
            in_flight_per_connection: self.diameter.in_flight_per_connection,
            in_flight_total: self.diameter.in_flight_max,
            connections: self.diameter.connections_max,
            connections_per_peer: self.diameter.connections_per_peer(),
            message_size_bytes: self.diameter.message_size_max_bytes,
        }
    }

    pub fn host_ip_addresses(&self) -> Vec<IpAddr> {
        let d = &self.diameter;
        if !d.host_ip_addresses.is_empty() {
            return d.host_ip_addresses.clone();
        }
        let ip = d.listen.ip();
        vec![if ip.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { ip }]
    }
}

fn check_identity(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > DIAMETER_IDENTITY_MAX_BYTES {
        return Err(format!("longer than {DIAMETER_IDENTITY_MAX_BYTES} bytes"));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_') {
        return Err(format!("`{s}` is not a DiameterIdentity (letters, digits, '.', '-')"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate("defaults").unwrap();
        let c = Config::parse("empty", "").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("g.toml", "[diameter]\norigin_hots = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("origin_hots"), "{e}");
        assert!(e.starts_with("g.toml"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("g.toml", "[diameter]\nwatchdog_interval_ms = 10\n").unwrap_err().to_string();
        assert!(e.contains("diameter.watchdog_interval_ms"), "{e}");
        let e = Config::parse("g.toml", "[diameter]\norigin_host = \"a b\"\n").unwrap_err().to_string();
        assert!(e.contains("diameter.origin_host"), "{e}");
        let e = Config::parse("g.toml", "[diameter]\nlisten = \"nope\"\n").unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn connections_per_peer_max_is_within_connections_max() {
        let c = Config::default();
        assert_eq!(c.server_limits().connections_per_peer, crate::limits::CONNECTIONS_PER_PEER_DEFAULT);
        // A small connections_max alone is valid: the default follows it down.
        let c = Config::parse("g.toml", "[diameter]\nconnections_max = 4\n").unwrap();
        assert_eq!(c.server_limits().connections_per_peer, 4);
        let c = Config::parse("g.toml", "[diameter]\nconnections_per_peer_max = 2\n").unwrap();
        assert_eq!(c.server_limits().connections_per_peer, 2);
        for bad in ["connections_per_peer_max = 0", "connections_max = 4\nconnections_per_peer_max = 5"] {
            let e = Config::parse("g.toml", &format!("[diameter]\n{bad}\n")).unwrap_err().to_string();
            assert!(e.contains("diameter.connections_per_peer_max"), "{bad}: {e}");
        }
    }

    #[test]
    fn log_format_is_read_and_a_bad_one_is_named() {
        assert_eq!(Config::default().log.format, LogFormat::Human);
        let c = Config::parse("g.toml", "[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let e = Config::parse("g.toml", "[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(e.contains("log.format") && e.contains("xml"), "{e}");
        assert!(e.starts_with("g.toml"), "{e}");
    }

    #[test]
    fn settlement_section_is_read_and_checked() {
        let c = Config::parse("g.toml", "[settlement.numbering]\nprefix = \"OP\"\n").unwrap();
        assert_eq!(c.settlement.numbering.prefix, "OP");
        let e =
            Config::parse("g.toml", "[settlement.numbering]\nprefix = \"a b\"\n").unwrap_err().to_string();
        assert!(e.contains("settlement.numbering.prefix"), "{e}");
        let e = Config::parse("g.toml", "[settlement.retry]\nattempts_max = 0\n").unwrap_err().to_string();
        assert!(e.contains("settlement.retry.attempts_max"), "{e}");
        let e = Config::parse("g.toml", "[settlement]\nprice_basis = \"both\"\n").unwrap_err().to_string();
        assert!(e.contains("price_basis"), "{e}");
    }

    #[test]
    fn tls_section() {
        let c = Config::default();
        assert!(!c.diameter.tls.enabled() && c.diameter.plain);
        let text = "[diameter]\nlisten = \"10.0.0.1:3868\"\n[diameter.tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        let c = Config::parse("g.toml", text).unwrap();
        assert!(c.diameter.tls.enabled());
        assert_eq!(c.diameter.tls_listen(), "10.0.0.1:5658".parse().unwrap());
        assert!(!c.diameter.tls.peer_identity_required());
        let c = Config::parse("g.toml", &format!("{text}client_ca_file = \"/ca.pem\"\n")).unwrap();
        assert!(c.diameter.tls.peer_identity_required(), "on by default with client certificates");
        let off = format!("{text}client_ca_file = \"/ca.pem\"\nrequire_peer_identity = false\n");
        assert!(!Config::parse("g.toml", &off).unwrap().diameter.tls.peer_identity_required());
        let only = text.replace("[diameter.tls]", "plain = false\n[diameter.tls]");
        assert!(!Config::parse("g.toml", &only).unwrap().diameter.plain);
    }

    #[test]
    fn bad_tls_values_are_named() {
        let files = "cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        let bad = [
            ("[diameter.tls]\ncert_file = \"/c.pem\"\n", "diameter.tls.key_file"),
            ("[diameter.tls]\nkey_file = \"/k.pem\"\n", "diameter.tls.cert_file"),
            ("[diameter.tls]\ncert_file = \"\"\nkey_file = \"/k.pem\"\n", "diameter.tls.cert_file"),
            ("[diameter.tls]\nclient_ca_file = \"/ca.pem\"\n", "diameter.tls.client_ca_file"),
            ("[diameter.tls]\nlisten = \"127.0.0.1:5658\"\n", "diameter.tls.listen"),
            (
                &format!("[diameter.tls]\n{files}require_peer_identity = true\n"),
                "diameter.tls.require_peer_identity",
            ),
            (&format!("[diameter.tls]\n{files}listen = \"127.0.0.1:3868\"\n"), "diameter.tls.listen"),
            (&format!("[diameter.tls]\n{files}ca_file = \"/ca.pem\"\n"), "ca_file"),
            ("[diameter]\nplain = false\n", "diameter.plain"),
        ];
        for (text, key) in bad {
            let e = Config::parse("g.toml", text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn journal_section() {
        let c = Config::default();
        assert_eq!(c.journal.dir, None);
        assert_eq!(c.journal.journal_config(), None);
        let text = "[journal]\ndir = \"/var/lib/gyro\"\nfsync = \"off\"\nsegment_mib = 8\n";
        let c = Config::parse("g.toml", text).unwrap();
        let j = c.journal.journal_config().unwrap();
        assert_eq!((j.dir.to_str(), j.fsync, j.segment_bytes), (Some("/var/lib/gyro"), Fsync::Off, 8 << 20));
        assert_eq!((c.journal.snapshot_interval_s, c.journal.snapshots_kept), (300, 2));
        assert!(j.preallocate);
        let c = Config::parse("g.toml", "[journal]\ndir = \"/d\"\npreallocate = false\n").unwrap();
        assert!(!c.journal.journal_config().unwrap().preallocate);
    }

    #[test]
    fn bad_journal_values_are_named() {
        let bad = [
            ("fsync = \"always\"", "fsync"),
            ("segment_mib = 0", "journal.segment_mib"),
            ("segment_mib = 4096", "journal.segment_mib"),
            ("snapshot_interval_s = 1", "journal.snapshot_interval_s"),
            ("snapshots_kept = 0", "journal.snapshots_kept"),
            ("dir = \"\"", "journal.dir"),
            ("fsynk = \"off\"", "fsynk"),
        ];
        for (line, key) in bad {
            let e = Config::parse("g.toml", &format!("[journal]\n{line}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
        let e = Config::parse("g.toml", "[journal]\nfsync = \"always\"\n").unwrap_err().to_string();
        assert!(e.contains("batch") && e.contains("off"), "{e}");
    }
}
