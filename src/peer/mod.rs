//! The Diameter peer state machine, sans-IO (RFC 6733 §5; watchdog per RFC 3539 §3.4).
//!
//! Owns: CER/CEA, DWR/DWA, DPR/DPA, the gate that refuses requests before the capabilities
//! exchange and the watchdog. Time is passed
//! in as milliseconds on a monotonic clock; answers are written into the caller's buffer.
//! Must not touch: sockets, tokio, the credit-control engine or the ledger.

use std::sync::Arc;

use bytes::BytesMut;

use crate::diameter::answer::{begin_answer, echo_proxy_info, error_answer, LocalIdentity};
use crate::diameter::codes::{ApplicationId, AvpCode, CommandCode, ResultCode, VendorId};
use crate::diameter::encode::{spec, Encoder};
use crate::diameter::header::CommandFlags;
use crate::diameter::validate::{validate_answer, validate_request};
use crate::diameter::{Dictionary, MessageRef};
use crate::limits::{CER_TIMEOUT_MS, DPA_TIMEOUT_MS, WATCHDOG_JITTER_MS};

/// What a peer is configured with; shared by every connection.
#[derive(Debug)]
pub struct PeerConfig {
    pub local: LocalIdentity,
    pub dictionary: Arc<Dictionary>,
    /// Applications we advertise in CEA (never 0, RFC 6733 §2.4).
    pub applications: Vec<ApplicationId>,
    /// When set, only these Origin-Hosts may connect (RFC 6733 §5.3: otherwise 3010).
    pub allowed_peers: Option<Vec<String>>,
    /// RFC 3539 Tw.
    pub watchdog_interval_ms: u64,
}

/// RFC 6733 §5.6 states, as seen by a responder (we accept connections; we never dial).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// Connected; the CER has not arrived yet.
    WaitCer {
        deadline_ms: u64,
    },
    Open,
    /// We sent DPR and wait for DPA (or for the peer to close).
    Closing {
        deadline_ms: u64,
    },
    Closed,
}

/// RFC 3539 §3.4.1 watchdog states for an open connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Watchdog {
    Okay { pending: bool },
    Suspect,
}

/// What the caller must do after `handle`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Nothing more than writing what was put into the output buffer (maybe nothing).
    Continue,
    /// A valid application request from an open peer: route it to its application.
    Dispatch,
    /// Flush the output buffer, then close the connection.
    Close,
}

/// The remote node, learnt from its CER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub origin_host: String,
    pub origin_realm: String,
    pub origin_state_id: Option<u32>,
    pub product_name: String,
    /// Applications both sides support.
    pub common: Vec<ApplicationId>,
}

/// One connection's peer state.
#[derive(Debug)]
pub struct Peer {
    cfg: Arc<PeerConfig>,
    state: State,
    remote: Option<Remote>,
    watchdog: Watchdog,
    watchdog_deadline_ms: u64,
    next_hop_by_hop: u32,
    next_end_to_end: u32,
    jitter_seed: u64,
    /// Applications requests may use on this connection: 0 plus the negotiated ones.
    usable: Vec<ApplicationId>,
    /// Over TLS with the identity check on: the DNS names of the client certificate, one of
    /// which must be the Origin-Host of the CER.
    certificate_names: Option<Vec<String>>,
}

impl Peer {
    /// A freshly accepted connection. `seed` varies the watchdog jitter and the first ids
    /// (RFC 6733 §3 asks for End-to-End ids unique across restarts).
    pub fn new(cfg: Arc<PeerConfig>, now_ms: u64, seed: u64) -> Self {
        Self {
            cfg,
            state: State::WaitCer { deadline_ms: now_ms + CER_TIMEOUT_MS },
            remote: None,
            watchdog: Watchdog::Okay { pending: false },
            watchdog_deadline_ms: u64::MAX,
            next_hop_by_hop: seed as u32,
            next_end_to_end: (seed >> 32) as u32,
            jitter_seed: seed | 1,
            usable: vec![ApplicationId::COMMON],
            certificate_names: None,
        }
    }

    /// Binds this connection to a verified client certificate: the CER's Origin-Host must be
    /// one of `names` (compared case-insensitively, as DNS names are), else CEA 3010 and close.
    /// The transport verified the certificate; this layer only compares names, so it stays
    /// sans-IO.
    pub fn bind_certificate(&mut self, names: Vec<String>) {
        self.certificate_names = Some(names);
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    pub fn config(&self) -> &PeerConfig {
        &self.cfg
    }

    /// Replaces the settings (a reload): the next message is validated with the new dictionary
    /// and answered with the new identity. What the CER settled stays: the peer is not asked
    /// again whether it is allowed (RFC 6733 §5.3 checks that at the capabilities exchange
    /// only), and the applications negotiated then remain those usable on this connection.
    pub fn set_config(&mut self, cfg: Arc<PeerConfig>) {
        self.cfg = cfg;
    }

    /// Handles one framed message. Answers go into `out`.
    pub fn handle(&mut self, now_ms: u64, msg: &MessageRef<'_>, out: &mut BytesMut) -> Action {
        self.handle_admitting(now_ms, msg, out, &mut |_| true)
    }

    /// `handle`, with `admit` asked about a CER's Origin-Host once every other check passed:
    /// false refuses it (the caller counts connections per peer; this layer has no view of
    /// the others). True means the peer is open on this connection, so the caller's count
    /// must be released when the connection ends.
    pub fn handle_admitting(
        &mut self,
        now_ms: u64,
        msg: &MessageRef<'_>,
        out: &mut BytesMut,
        admit: &mut dyn FnMut(&str) -> bool,
    ) -> Action {
        if self.state == State::Closed {
            return Action::Close;
        }
        // RFC 3539 §3.4.1: any message received counts as traffic and revives the watchdog.
        self.traffic(now_ms);
        if msg.header.flags.is_request() {
            self.handle_request(now_ms, msg, out, admit)
        } else {
            self.handle_answer(msg)
        }
    }

    fn handle_request(
        &mut self,
        now_ms: u64,
        msg: &MessageRef<'_>,
        out: &mut BytesMut,
        admit: &mut dyn FnMut(&str) -> bool,
    ) -> Action {
        let dict = Arc::clone(&self.cfg.dictionary);
        let cmd = msg.header.command;
        if let State::WaitCer { .. } = self.state {
            if cmd != CommandCode::CAPABILITIES_EXCHANGE {
                // RFC 6733 §5.6: before the capabilities exchange no other message is allowed;
                // the sender is not a known peer yet (§7.1.3 3010), so we answer and close.
                error_answer(
                    out,
                    &self.cfg.local,
                    msg,
                    ResultCode::UNKNOWN_PEER,
                    Some("CER must come first"),
                    None,
                );
                self.state = State::Closed;
                return Action::Close;
            }
            return self.handle_cer(now_ms, msg, out, admit);
        }
        let usable = std::mem::take(&mut self.usable);
        let validated = validate_request(&dict, msg, &usable);
        self.usable = usable;
        if let Err(invalid) = validated {
            let text = invalid.message(&dict);
            tracing::debug!(command = cmd.0, result = invalid.result_code().0, error = %text, "invalid request");
            error_answer(
                out,
                &self.cfg.local,
                msg,
                invalid.result_code(),
                Some(&text),
                Some(&invalid.failed_avp),
            );
            return Action::Continue;
        }
        match cmd {
            CommandCode::CAPABILITIES_EXCHANGE => {
                // RFC 6733 §5.6: a CER on an open connection is not part of the state machine.
                error_answer(
                    out,
                    &self.cfg.local,
                    msg,
                    ResultCode::UNABLE_TO_COMPLY,
                    Some("capabilities already exchanged on this connection"),
                    None,
                );
                Action::Continue
            }
            CommandCode::DEVICE_WATCHDOG => {
                tracing::debug!(peer = self.remote_host(), "DWR received");
                self.write_simple_answer(out, msg);
                Action::Continue
            }
            CommandCode::DISCONNECT_PEER => {
                // RFC 6733 §5.4: answer DPA; the transport is then closed.
                self.write_simple_answer(out, msg);
                tracing::info!(
                    peer = self.remote_host(),
                    cause = msg.u32(AvpCode::DISCONNECT_CAUSE),
                    "peer disconnecting (DPR)"
                );
                self.state = State::Closed;
                Action::Close
            }
            _ => Action::Dispatch,
        }
    }

    fn handle_answer(&mut self, msg: &MessageRef<'_>) -> Action {
        let dict = Arc::clone(&self.cfg.dictionary);
        if let Err(invalid) = validate_answer(&dict, msg, &self.usable) {
            tracing::warn!(command = msg.header.command.0, error = %invalid.message(&dict), "invalid answer ignored");
            return Action::Continue;
        }
        match (msg.header.command, self.state) {
            (CommandCode::DEVICE_WATCHDOG, _) => {
                tracing::debug!(
                    peer = self.remote_host(),
                    result = msg.u32(AvpCode::RESULT_CODE),
                    "DWA received"
                );
                Action::Continue
            }
            (CommandCode::DISCONNECT_PEER, State::Closing { .. }) => {
                self.state = State::Closed;
                Action::Close
            }
            _ => Action::Continue,
        }
    }

    /// RFC 6733 §5.3: capabilities exchange, as the responder.
    fn handle_cer(
        &mut self,
        now_ms: u64,
        msg: &MessageRef<'_>,
        out: &mut BytesMut,
        admit: &mut dyn FnMut(&str) -> bool,
    ) -> Action {
        let dict = Arc::clone(&self.cfg.dictionary);
        if let Err(invalid) = validate_request(&dict, msg, &[ApplicationId::COMMON]) {
            let text = invalid.message(&dict);
            self.write_cea(out, msg, invalid.result_code(), Some(&text), Some(&invalid.failed_avp));
            self.state = State::Closed;
            return Action::Close;
        }
        let origin_host = msg.str(AvpCode::ORIGIN_HOST).unwrap_or_default().to_owned();
        if let Some(allowed) = &self.cfg.allowed_peers {
            if !allowed.iter().any(|h| h.eq_ignore_ascii_case(&origin_host)) {
                tracing::warn!(peer = %origin_host, "CER from a peer not in the allowlist");
                self.write_cea(out, msg, ResultCode::UNKNOWN_PEER, Some("peer not in the allowlist"), None);
                self.state = State::Closed;
                return Action::Close;
            }
        }
        if let Some(names) = &self.certificate_names {
            // RFC 6733 §13: TLS authenticates the peer by its certificate; §5.3 and §6.3 make
            // the Origin-Host the peer's identity. A CER naming a host the certificate is not
            // for is a peer we do not know (§7.1.3 3010, as for the allowlist above); answering
            // it 2001 would let any holder of a certificate from the CA speak as any host.
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&origin_host)) {
                tracing::warn!(peer = %origin_host, certificate = ?names, "CER Origin-Host is not a name of the peer certificate");
                let text = "Origin-Host does not match the peer certificate";
                self.write_cea(out, msg, ResultCode::UNKNOWN_PEER, Some(text), None);
                self.state = State::Closed;
                return Action::Close;
            }
        }
        let offered = offered_applications(msg);
        let relay = offered.contains(&ApplicationId::RELAY);
        let common: Vec<ApplicationId> =
            self.cfg.applications.iter().copied().filter(|a| relay || offered.contains(a)).collect();
        if common.is_empty() {
            // RFC 6733 §5.3: "If the local policy ... no common application ... SHOULD return
            // DIAMETER_NO_COMMON_APPLICATION" and the connection is closed.
            tracing::warn!(peer = %origin_host, ?offered, "CER with no common application");
            self.write_cea(out, msg, ResultCode::NO_COMMON_APPLICATION, Some("no common application"), None);
            self.state = State::Closed;
            return Action::Close;
        }
        // Last, so a peer admitted here is open: the caller's count then holds exactly the
        // open connections. RFC 6733 has no code for "too many connections from you": 3004 is a
        // protocol error for a busy server (§7.1.3), which this is not (the peer's other links
        // are served); 4003 belongs to the election (§5.6.4), which gyro never runs. 5012
        // DIAMETER_UNABLE_TO_COMPLY (§7.1.5, "rejected for unspecified reasons") says no without
        // inviting a retry, with the reason in Error-Message (ARCHITECTURE.md, limits).
        if !admit(&origin_host) {
            tracing::warn!(peer = %origin_host, "CER beyond the connections allowed per peer");
            let text = "too many connections from this peer";
            self.write_cea(out, msg, ResultCode::UNABLE_TO_COMPLY, Some(text), None);
            self.state = State::Closed;
            return Action::Close;
        }
        self.write_cea(out, msg, ResultCode::SUCCESS, None, None);
        let remote = Remote {
            origin_realm: msg.str(AvpCode::ORIGIN_REALM).unwrap_or_default().to_owned(),
            origin_state_id: msg.u32(AvpCode::ORIGIN_STATE_ID),
            product_name: msg.str(AvpCode::PRODUCT_NAME).unwrap_or_default().to_owned(),
            origin_host,
            common: common.clone(),
        };
        tracing::info!(peer = %remote.origin_host, realm = %remote.origin_realm, product = %remote.product_name, ?common, "peer open");
        self.usable = std::iter::once(ApplicationId::COMMON).chain(common).collect();
        self.remote = Some(remote);
        self.state = State::Open;
        self.watchdog = Watchdog::Okay { pending: false };
        self.arm_watchdog(now_ms);
        Action::Continue
    }

    fn write_cea(
        &self,
        out: &mut BytesMut,
        req: &MessageRef<'_>,
        result: ResultCode,
        text: Option<&str>,
        failed: Option<&[u8]>,
    ) {
        let l = &self.cfg.local;
        let mut e = begin_answer(out, req, result);
        e.u32(spec::RESULT_CODE, result.0);
        e.str(spec::ORIGIN_HOST, &l.origin_host);
        e.str(spec::ORIGIN_REALM, &l.origin_realm);
        for ip in &l.host_ip_addresses {
            e.ip(spec::HOST_IP_ADDRESS, *ip);
        }
        e.u32(spec::VENDOR_ID, l.vendor_id);
        e.str(spec::PRODUCT_NAME, &l.product_name);
        e.u32(spec::ORIGIN_STATE_ID, l.origin_state_id);
        if let Some(t) = text {
            e.str(spec::ERROR_MESSAGE, t);
        }
        if let Some(f) = failed.filter(|f| !f.is_empty()) {
            let g = e.begin_group(spec::FAILED_AVP);
            e.raw(f);
            e.end_group(g);
        }
        e.u32(spec::SUPPORTED_VENDOR_ID, VendorId::TGPP.0);
        for app in &self.cfg.applications {
            e.u32(spec::AUTH_APPLICATION_ID, app.0);
        }
        // 3GPP peers look for the application inside Vendor-Specific-Application-Id too.
        for app in &self.cfg.applications {
            let g = e.begin_group(spec::VENDOR_SPECIFIC_APPLICATION_ID);
            e.u32(spec::VENDOR_ID, VendorId::TGPP.0);
            e.u32(spec::AUTH_APPLICATION_ID, app.0);
            e.end_group(g);
        }
        e.u32(spec::FIRMWARE_REVISION, l.firmware_revision);
        // No Inband-Security-Id: RFC 6733 §6.10 says its use in CER and CEA is NOT RECOMMENDED
        // (security is known by configuration: TLS at connect on its own port, §2.1), and gyro
        // never upgrades a plain connection in-band as RFC 3588 did.
        e.finish();
    }

    /// DWA and DPA: Result-Code, Origin-Host, Origin-Realm (+ Origin-State-Id for DWA).
    fn write_simple_answer(&self, out: &mut BytesMut, req: &MessageRef<'_>) {
        let l = &self.cfg.local;
        let mut e = begin_answer(out, req, ResultCode::SUCCESS);
        e.u32(spec::RESULT_CODE, ResultCode::SUCCESS.0);
        e.str(spec::ORIGIN_HOST, &l.origin_host);
        e.str(spec::ORIGIN_REALM, &l.origin_realm);
        if req.header.command == CommandCode::DEVICE_WATCHDOG {
            e.u32(spec::ORIGIN_STATE_ID, l.origin_state_id);
        }
        echo_proxy_info(&mut e, req);
        e.finish();
    }

    fn write_request<'b>(&mut self, out: &'b mut BytesMut, command: CommandCode) -> Encoder<'b> {
        let hbh = self.next_hop_by_hop;
        let e2e = self.next_end_to_end;
        self.next_hop_by_hop = hbh.wrapping_add(1);
        self.next_end_to_end = e2e.wrapping_add(1);
        let mut e =
            Encoder::new(out, CommandFlags(CommandFlags::REQUEST), command, ApplicationId::COMMON, hbh, e2e);
        e.str(spec::ORIGIN_HOST, &self.cfg.local.origin_host);
        e.str(spec::ORIGIN_REALM, &self.cfg.local.origin_realm);
        e
    }

    /// Starts a graceful disconnect (RFC 6733 §5.4): DPR with Disconnect-Cause REBOOTING.
    pub fn disconnect(&mut self, now_ms: u64, out: &mut BytesMut) -> Action {
        match self.state {
            State::Open => {
                let mut e = self.write_request(out, CommandCode::DISCONNECT_PEER);
                e.u32(spec::DISCONNECT_CAUSE, 0);
                e.finish();
                self.state = State::Closing { deadline_ms: now_ms + DPA_TIMEOUT_MS };
                Action::Continue
            }
            State::Closing { .. } => Action::Continue,
            State::WaitCer { .. } | State::Closed => {
                self.state = State::Closed;
                Action::Close
            }
        }
    }

    /// The next time `poll` has something to do.
    pub fn next_deadline_ms(&self) -> u64 {
        match self.state {
            State::WaitCer { deadline_ms } | State::Closing { deadline_ms } => deadline_ms,
            State::Open => self.watchdog_deadline_ms,
            State::Closed => u64::MAX,
        }
    }

    /// Runs timers: CER timeout, DPA timeout and the RFC 3539 watchdog.
    pub fn poll(&mut self, now_ms: u64, out: &mut BytesMut) -> Action {
        match self.state {
            State::WaitCer { deadline_ms } | State::Closing { deadline_ms } if deadline_ms <= now_ms => {
                self.state = State::Closed;
                Action::Close
            }
            State::Open if self.watchdog_deadline_ms <= now_ms => self.watchdog_expired(now_ms, out),
            State::Closed => Action::Close,
            _ => Action::Continue,
        }
    }

    /// RFC 3539 §3.4.1, timer expiry: OKAY (idle) → send DWR; OKAY with a DWR pending →
    /// SUSPECT; SUSPECT → close the connection.
    fn watchdog_expired(&mut self, now_ms: u64, out: &mut BytesMut) -> Action {
        match self.watchdog {
            Watchdog::Okay { pending: false } => {
                let state_id = self.cfg.local.origin_state_id;
                let mut e = self.write_request(out, CommandCode::DEVICE_WATCHDOG);
                e.u32(spec::ORIGIN_STATE_ID, state_id);
                e.finish();
                tracing::debug!(peer = self.remote_host(), "watchdog: peer idle, DWR sent");
                self.watchdog = Watchdog::Okay { pending: true };
                self.arm_watchdog(now_ms);
                Action::Continue
            }
            Watchdog::Okay { pending: true } => {
                tracing::warn!(peer = self.remote_host(), "watchdog: no answer to DWR, peer suspect");
                self.watchdog = Watchdog::Suspect;
                self.arm_watchdog(now_ms);
                Action::Continue
            }
            Watchdog::Suspect => {
                tracing::warn!(peer = self.remote_host(), "watchdog: peer silent, closing");
                self.state = State::Closed;
                Action::Close
            }
        }
    }

    /// A message the connection consumed itself (the answer to a request it sent for the
    /// server, RAR/ASR) still counts as traffic for the watchdog (RFC 3539 §3.4.1).
    pub fn note_traffic(&mut self, now_ms: u64) {
        self.traffic(now_ms);
    }

    /// A fresh Hop-by-Hop id for a request the connection sends on the server's behalf, from
    /// the same counter as DWR and DPR, so no two requests in flight on the link share one
    /// (RFC 6733 §3).
    pub fn next_hop_by_hop(&mut self) -> u32 {
        let hbh = self.next_hop_by_hop;
        self.next_hop_by_hop = hbh.wrapping_add(1);
        hbh
    }

    fn traffic(&mut self, now_ms: u64) {
        if self.state == State::Open {
            // RFC 3539 §3.4.1: receipt of any message resets the timer and clears SUSPECT.
            self.watchdog = Watchdog::Okay { pending: false };
            self.arm_watchdog(now_ms);
        }
    }

    /// RFC 3539 §3.4.1: Tw with ±2 s jitter, so peers do not fall in step.
    fn arm_watchdog(&mut self, now_ms: u64) {
        self.jitter_seed ^= self.jitter_seed << 13;
        self.jitter_seed ^= self.jitter_seed >> 7;
        self.jitter_seed ^= self.jitter_seed << 17;
        let jitter = self.jitter_seed % (2 * WATCHDOG_JITTER_MS + 1);
        let tw = self.cfg.watchdog_interval_ms + jitter - WATCHDOG_JITTER_MS;
        self.watchdog_deadline_ms = now_ms + tw;
    }

    fn remote_host(&self) -> &str {
        self.remote.as_ref().map_or("?", |r| r.origin_host.as_str())
    }
}

/// Auth- and Acct-Application-Ids offered in a CER, including those inside
/// Vendor-Specific-Application-Id (RFC 6733 §5.3.1, §6.11).
fn offered_applications(msg: &MessageRef<'_>) -> Vec<ApplicationId> {
    let mut out = Vec::new();
    let is_app = |c: AvpCode| c == AvpCode::AUTH_APPLICATION_ID || c == AvpCode::ACCT_APPLICATION_ID;
    for a in msg.avps().map_while(Result::ok).filter(|a| a.vendor.0 == 0) {
        if is_app(a.code) {
            if let Ok(b) = <[u8; 4]>::try_from(a.data) {
                out.push(ApplicationId(u32::from_be_bytes(b)));
            }
        } else if a.code == AvpCode::VENDOR_SPECIFIC_APPLICATION_ID {
            for m in a.members().map_while(Result::ok).filter(|m| m.vendor.0 == 0 && is_app(m.code)) {
                if let Ok(b) = <[u8; 4]>::try_from(m.data) {
                    out.push(ApplicationId(u32::from_be_bytes(b)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The state machine driven with simulated time and no runtime.

    use bytes::Bytes;

    use super::*;
    use crate::diameter::{frame, Encoder};

    fn config(watchdog_interval_ms: u64) -> Arc<PeerConfig> {
        Arc::new(PeerConfig {
            local: LocalIdentity {
                origin_host: "gyro.test".into(),
                origin_realm: "test".into(),
                host_ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                vendor_id: 0,
                product_name: "gyro".into(),
                firmware_revision: 1,
                origin_state_id: 9,
            },
            dictionary: Arc::new(Dictionary::embedded().unwrap()),
            applications: vec![ApplicationId::CREDIT_CONTROL],
            allowed_peers: None,
            watchdog_interval_ms,
        })
    }

    fn request(command: CommandCode, body: impl FnOnce(&mut Encoder<'_>)) -> Bytes {
        let mut b = BytesMut::new();
        let mut e =
            Encoder::new(&mut b, CommandFlags(CommandFlags::REQUEST), command, ApplicationId::COMMON, 1, 2);
        e.str(spec::ORIGIN_HOST, "pgw.test").str(spec::ORIGIN_REALM, "test");
        body(&mut e);
        e.finish();
        b.freeze()
    }

    fn cer() -> Bytes {
        request(CommandCode::CAPABILITIES_EXCHANGE, |e| {
            e.ip(spec::HOST_IP_ADDRESS, "127.0.0.1".parse().unwrap());
            e.u32(spec::VENDOR_ID, 0).str(spec::PRODUCT_NAME, "t");
            let g = e.begin_group(spec::VENDOR_SPECIFIC_APPLICATION_ID);
            e.u32(spec::VENDOR_ID, 10415).u32(spec::AUTH_APPLICATION_ID, 4);
            e.end_group(g);
        })
    }

    /// Splits the output buffer into messages.
    fn messages(out: &mut BytesMut) -> Vec<Bytes> {
        let mut v = Vec::new();
        while let Ok(Some(n)) = frame(out) {
            v.push(out.split_to(n).freeze());
        }
        assert!(out.is_empty());
        v
    }

    fn open(tw: u64) -> Peer {
        let mut p = Peer::new(config(tw), 0, 0x1234_5678_9abc_def0);
        let mut out = BytesMut::new();
        let c = cer();
        assert_eq!(p.handle(0, &MessageRef::parse(&c).unwrap(), &mut out), Action::Continue);
        let cea = messages(&mut out);
        assert_eq!(MessageRef::parse(&cea[0]).unwrap().u32(AvpCode::RESULT_CODE), Some(2001));
        assert_eq!(p.state(), State::Open);
        assert_eq!(p.remote().unwrap().common, vec![ApplicationId::CREDIT_CONTROL]);
        p
    }

    #[test]
    fn application_inside_vendor_specific_application_id_counts() {
        open(30_000);
    }

    #[test]
    fn a_certificate_binds_the_origin_host() {
        let result = |names: &[&str]| {
            let mut p = Peer::new(config(30_000), 0, 1);
            p.bind_certificate(names.iter().map(|n| (*n).to_owned()).collect());
            let mut out = BytesMut::new();
            let action = p.handle(0, &MessageRef::parse(&cer()).unwrap(), &mut out);
            let cea = messages(&mut out);
            let m = MessageRef::parse(&cea[0]).unwrap();
            assert_eq!(m.find(AvpCode::INBAND_SECURITY_ID), None, "RFC 6733 §6.10: not sent");
            (action, m.u32(AvpCode::RESULT_CODE), p.state())
        };
        // DNS names compare case-insensitively; any of the certificate's names will do.
        assert_eq!(result(&["other.test", "PGW.Test"]), (Action::Continue, Some(2001), State::Open));
        assert_eq!(result(&["other.test"]), (Action::Close, Some(3010), State::Closed));
        assert_eq!(result(&[]), (Action::Close, Some(3010), State::Closed));
    }

    #[test]
    fn cer_timeout_closes() {
        let mut p = Peer::new(config(30_000), 0, 1);
        let mut out = BytesMut::new();
        assert_eq!(p.poll(CER_TIMEOUT_MS - 1, &mut out), Action::Continue);
        assert_eq!(p.poll(CER_TIMEOUT_MS, &mut out), Action::Close);
    }

    #[test]
    fn watchdog_sends_dwr_then_suspects_then_closes() {
        let tw = 30_000;
        let mut p = open(tw);
        let mut out = BytesMut::new();
        let first = p.next_deadline_ms();
        assert!((tw - WATCHDOG_JITTER_MS..=tw + WATCHDOG_JITTER_MS).contains(&first), "{first}");
        assert_eq!(p.poll(first - 1, &mut out), Action::Continue);
        assert!(out.is_empty());
        // Idle for Tw: a DWR goes out.
        assert_eq!(p.poll(first, &mut out), Action::Continue);
        let dwr = messages(&mut out);
        let m = MessageRef::parse(&dwr[0]).unwrap();
        assert!(m.header.flags.is_request());
        assert_eq!(m.header.command, CommandCode::DEVICE_WATCHDOG);
        // No DWA for another Tw: suspect, nothing sent; another Tw: closed.
        let second = p.next_deadline_ms();
        assert_eq!(p.poll(second, &mut out), Action::Continue);
        assert!(out.is_empty());
        let third = p.next_deadline_ms();
        assert_eq!(p.poll(third, &mut out), Action::Close);
    }

    #[test]
    fn any_traffic_revives_the_watchdog() {
        let mut p = open(30_000);
        let mut out = BytesMut::new();
        let t = p.next_deadline_ms();
        p.poll(t, &mut out);
        let dwr = messages(&mut out).pop().unwrap();
        // The DWA comes back: the watchdog is okay again and re-armed from now.
        let mut b = BytesMut::new();
        let req = MessageRef::parse(&dwr).unwrap();
        let mut e = begin_answer(&mut b, &req, ResultCode::SUCCESS);
        e.u32(spec::RESULT_CODE, 2001).str(spec::ORIGIN_HOST, "pgw.test").str(spec::ORIGIN_REALM, "test");
        e.finish();
        assert_eq!(p.handle(t + 10, &MessageRef::parse(&b).unwrap(), &mut out), Action::Continue);
        assert!(p.next_deadline_ms() >= t + 10 + 30_000 - WATCHDOG_JITTER_MS);
        assert_eq!(p.poll(t + 20, &mut out), Action::Continue);
        assert!(out.is_empty());
    }

    #[test]
    fn disconnect_sends_dpr_and_closes_on_dpa_or_timeout() {
        let mut p = open(30_000);
        let mut out = BytesMut::new();
        assert_eq!(p.disconnect(100, &mut out), Action::Continue);
        let dpr = messages(&mut out).pop().unwrap();
        let req = MessageRef::parse(&dpr).unwrap();
        assert_eq!(req.header.command, CommandCode::DISCONNECT_PEER);
        assert_eq!(req.u32(AvpCode::DISCONNECT_CAUSE), Some(0));
        let mut b = BytesMut::new();
        let mut e = begin_answer(&mut b, &req, ResultCode::SUCCESS);
        e.u32(spec::RESULT_CODE, 2001).str(spec::ORIGIN_HOST, "pgw.test").str(spec::ORIGIN_REALM, "test");
        e.finish();
        assert_eq!(p.handle(200, &MessageRef::parse(&b).unwrap(), &mut out), Action::Close);

        let mut p = open(30_000);
        p.disconnect(100, &mut out);
        out.clear();
        assert_eq!(p.poll(100 + DPA_TIMEOUT_MS, &mut out), Action::Close);
    }

    #[test]
    fn second_cer_on_open_connection_gets_5012() {
        let mut p = open(30_000);
        let mut out = BytesMut::new();
        let c = cer();
        assert_eq!(p.handle(5, &MessageRef::parse(&c).unwrap(), &mut out), Action::Continue);
        let a = messages(&mut out).pop().unwrap();
        assert_eq!(MessageRef::parse(&a).unwrap().u32(AvpCode::RESULT_CODE), Some(5012));
        assert_eq!(p.state(), State::Open);
    }

    #[test]
    fn a_cer_refused_by_admission_gets_5012_and_close() {
        let mut p = Peer::new(config(30_000), 0, 1);
        let mut out = BytesMut::new();
        let mut asked = Vec::new();
        let mut admit = |host: &str| {
            asked.push(host.to_owned());
            false
        };
        let action = p.handle_admitting(0, &MessageRef::parse(&cer()).unwrap(), &mut out, &mut admit);
        assert_eq!(action, Action::Close);
        assert_eq!(asked, ["pgw.test"]);
        let a = messages(&mut out).pop().unwrap();
        assert_eq!(MessageRef::parse(&a).unwrap().u32(AvpCode::RESULT_CODE), Some(5012));
        assert_eq!((p.state(), p.remote()), (State::Closed, None));
        // A CER refused for another reason never asks (nothing would be released later).
        let mut p = Peer::new(config(30_000), 0, 1);
        let c = request(CommandCode::CAPABILITIES_EXCHANGE, |_| {});
        let mut never = |_: &str| -> bool { panic!("asked about an invalid CER") };
        assert_eq!(
            p.handle_admitting(0, &MessageRef::parse(&c).unwrap(), &mut out, &mut never),
            Action::Close
        );
    }

    #[test]
    fn new_settings_apply_to_the_next_message_of_an_open_peer() {
        let mut p = open(30_000);
        let mut out = BytesMut::new();
        let dwr = request(CommandCode::DEVICE_WATCHDOG, |_| {});
        p.handle(1, &MessageRef::parse(&dwr).unwrap(), &mut out);
        let a = messages(&mut out).pop().unwrap();
        assert_eq!(MessageRef::parse(&a).unwrap().str(AvpCode::ORIGIN_HOST), Some("gyro.test"));
        // A reload with another identity and an allowlist without this peer: still open, and
        // answering as the new identity.
        let old = config(30_000);
        let mut local = old.local.clone();
        local.origin_host = "gyro2.test".into();
        p.set_config(Arc::new(PeerConfig {
            local,
            dictionary: Arc::clone(&old.dictionary),
            applications: old.applications.clone(),
            allowed_peers: Some(vec!["someone.else".into()]),
            watchdog_interval_ms: 30_000,
        }));
        assert_eq!(p.handle(2, &MessageRef::parse(&dwr).unwrap(), &mut out), Action::Continue);
        let a = messages(&mut out).pop().unwrap();
        let m = MessageRef::parse(&a).unwrap();
        assert_eq!(
            (m.u32(AvpCode::RESULT_CODE), m.str(AvpCode::ORIGIN_HOST)),
            (Some(2001), Some("gyro2.test"))
        );
        assert_eq!(p.state(), State::Open);
    }

    #[test]
    fn malformed_cer_gets_error_cea_and_close() {
        let mut p = Peer::new(config(30_000), 0, 1);
        let mut out = BytesMut::new();
        // No Host-IP-Address, Vendor-Id or Product-Name.
        let c = request(CommandCode::CAPABILITIES_EXCHANGE, |_| {});
        assert_eq!(p.handle(0, &MessageRef::parse(&c).unwrap(), &mut out), Action::Close);
        let a = messages(&mut out).pop().unwrap();
        let m = MessageRef::parse(&a).unwrap();
        assert_eq!(m.u32(AvpCode::RESULT_CODE), Some(5005));
        assert!(m.find(AvpCode::FAILED_AVP).is_some());
        assert!(m.find(AvpCode::HOST_IP_ADDRESS).is_some(), "an error CEA still carries our identity");
    }
}
