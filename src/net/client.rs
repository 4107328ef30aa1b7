//! A Diameter client peer on tokio: one TCP connection to one server.
//!
//! Owns: the client side of RFC 6733 §5 on one connection: CER/CEA when connecting, answering
//! the server's DWR (and DPR) while waiting, matching answers to requests by Hop-by-Hop id, and
//! DPR/DPA when closing. Every wait is bounded by the timeout given to [`Client::connect`].
//! Must not touch: the credit-control engine, the ledger, or anything server-side; it builds
//! no application requests itself (callers encode them with `diameter::Encoder` and ids from
//! [`Client::next_ids`]).
//!
//! Used by `gyro ccr`, and by `gyro load` for the capabilities exchange: the load generator
//! then takes the connection apart ([`Client::into_parts`]) to read and write from two tasks,
//! answering DWR with [`answer_server_request`] and disconnecting with [`write_dpr`]. The
//! steady state is allocation-light: requests are written straight from the caller's slice,
//! answers are split off the read buffer without copying, and the only buffer we encode into
//! (for DWA/DPA) is reused.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::diameter::answer::{begin_answer, error_answer, LocalIdentity};
use crate::diameter::encode::{spec, Encoder};
use crate::diameter::{
    frame, ApplicationId, AvpCode, CommandCode, CommandFlags, FrameError, Header, MessageRef, ResultCode,
    VendorId,
};
use crate::limits::{DPA_TIMEOUT_MS, HEADER_SIZE_BYTES};

/// Product-Name in our CER (RFC 6733 §5.3.1).
pub const PRODUCT_NAME: &str = "gyro-ccr";

/// Bytes asked of the kernel per read. Answers are a few hundred bytes; a larger one simply
/// takes several reads.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// RFC 6733 §5.4.3: Disconnect-Cause DO_NOT_WANT_TO_TALK_TO_YOU, "the peer has determined that
/// it does not see a need for the transport connection to exist".
const DISCONNECT_CAUSE_DO_NOT_WANT_TO_TALK_TO_YOU: u32 = 2;

/// Who the client is on the Diameter network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub origin_host: String,
    pub origin_realm: String,
}

/// The server, as its CEA described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    pub origin_host: String,
    pub origin_realm: String,
    pub product_name: String,
}

/// Which wait ran out of time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    Connect,
    CapabilitiesExchange,
    Answer,
    Disconnect,
    Write,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "TCP connection",
            Self::CapabilitiesExchange => "CEA",
            Self::Answer => "answer",
            Self::Disconnect => "DPA",
            Self::Write => "write",
        })
    }
}

/// How the connection ended when a call finds it closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Closure {
    /// The server closed the TCP connection.
    PeerClosed,
    /// The server sent DPR (RFC 6733 §5.4); we answered DPA.
    PeerDisconnected,
    /// An earlier write failed or timed out, or `close` ran; the stream is not usable.
    Broken,
}

impl std::fmt::Display for Closure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PeerClosed => "the server closed the connection",
            Self::PeerDisconnected => "the server disconnected with DPR",
            Self::Broken => "the connection is no longer usable",
        })
    }
}

/// What was wrong with a message the server sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum BadAnswer {
    /// The byte stream could not be framed; nothing after it can be trusted.
    #[error("corrupt stream: {0}")]
    Frame(#[from] FrameError),
    /// The answer to CER was another command.
    #[error("expected CEA, got command {command}")]
    NotCea { command: CommandCode },
    /// An answer without Result-Code where one is required (CEA, DPA).
    #[error("command {command} answer carries no Result-Code")]
    MissingResultCode { command: CommandCode },
}

/// Why a client call failed. `Connect` and `Io` are the network's fault; `Timeout` and `Closed`
/// may be either side's; `BadAnswer` and `CerRefused` are the server's.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no {step} within {timeout_ms} ms")]
    Timeout { step: Step, timeout_ms: u64 },
    #[error("{0}")]
    Closed(Closure),
    #[error("I/O error on the Diameter connection")]
    Io(#[source] std::io::Error),
    #[error("bad message from the server: {0}")]
    BadAnswer(#[from] BadAnswer),
    #[error("capabilities exchange refused: Result-Code {} {}", .result.0, .result.name())]
    CerRefused { result: ResultCode },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Open,
    Closed(Closure),
}

/// An open connection taken apart by [`Client::into_parts`].
#[derive(Debug)]
pub struct ClientParts {
    pub stream: TcpStream,
    /// Bytes read after the CEA: the start of the next message from the server, if any.
    pub read_buf: BytesMut,
    pub local: LocalIdentity,
    pub server: ServerIdentity,
    /// The next ids to use; both only grow (RFC 6733 §3: unique on this connection).
    pub next_hop_by_hop: u32,
    pub next_end_to_end: u32,
}

/// One open client connection (after a successful CER/CEA).
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Encodes what the client originates itself (CER, DWA, DPR); reused.
    wbuf: BytesMut,
    local: LocalIdentity,
    server: ServerIdentity,
    timeout: Duration,
    next_hop_by_hop: u32,
    next_end_to_end: u32,
    state: State,
}

impl Client {
    /// Connects to `addr` and performs the capabilities exchange (RFC 6733 §5.3), offering
    /// Diameter Credit-Control (application 4) both plainly and as a 3GPP vendor-specific
    /// application. Succeeds only on CEA 2001. Each step is bounded by `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        identity: ClientIdentity,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let connecting = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
        let stream = match connecting {
            Err(_) => return Err(ClientError::Timeout { step: Step::Connect, timeout_ms: millis(timeout) }),
            Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        // Requests are small and latency-bound; Nagle would only delay them.
        stream.set_nodelay(true).map_err(ClientError::Io)?;
        let host_ip = stream.local_addr().map_err(ClientError::Io)?.ip();
        let unix_secs = unix_now_secs();
        let seed = random_u64();
        let mut client = Self {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            wbuf: BytesMut::with_capacity(512),
            local: local_identity(identity, host_ip, unix_secs as u32),
            server: ServerIdentity {
                origin_host: String::new(),
                origin_realm: String::new(),
                product_name: String::new(),
            },
            timeout,
            next_hop_by_hop: seed as u32,
            // RFC 6733 §3: End-to-End ids "MUST remain locally unique for a period of at least
            // 4 minutes, even across reboots"; implementations "MAY set the high order 12 bits
            // to contain the low order 12 bits of current time, and the low order 20 bits to a
            // random value".
            next_end_to_end: ((unix_secs as u32 & 0xfff) << 20) | ((seed >> 32) as u32 & 0x000f_ffff),
            state: State::Open,
        };
        client.exchange_capabilities().await?;
        Ok(client)
    }

    /// The server's identity from its CEA.
    pub fn server(&self) -> &ServerIdentity {
        &self.server
    }

    /// The identity we announced in CER (Origin-Host, Origin-Realm, Host-IP-Address, ...).
    pub fn local(&self) -> &LocalIdentity {
        &self.local
    }

    /// Takes the open connection apart, for callers that read and write from tasks of their
    /// own (the load generator). From then on they answer the server's requests themselves
    /// ([`answer_server_request`]) and disconnect with [`write_dpr`].
    pub fn into_parts(self) -> ClientParts {
        ClientParts {
            stream: self.stream,
            read_buf: self.rbuf,
            local: self.local,
            server: self.server,
            next_hop_by_hop: self.next_hop_by_hop,
            next_end_to_end: self.next_end_to_end,
        }
    }

    /// Allocates the (Hop-by-Hop, End-to-End) ids for the next request. Both only grow (with
    /// wrap-around), so they are unique on this connection for 2^32 requests.
    pub fn next_ids(&mut self) -> (u32, u32) {
        let ids = (self.next_hop_by_hop, self.next_end_to_end);
        self.next_hop_by_hop = self.next_hop_by_hop.wrapping_add(1);
        self.next_end_to_end = self.next_end_to_end.wrapping_add(1);
        ids
    }

    /// Sends one encoded request and returns its answer, matched by Hop-by-Hop id. Server DWRs
    /// arriving meanwhile are answered; answers to other (earlier, timed-out) requests are
    /// dropped. The whole call is bounded by the client's timeout.
    ///
    /// # Panics
    /// If `req` is not an encoded request (shorter than a header or without the R flag): that
    /// is a bug in the caller, not something the network can cause.
    pub async fn request(&mut self, req: &[u8]) -> Result<Bytes, ClientError> {
        let hop_by_hop = request_hop_by_hop(req);
        let deadline = Deadline::after(self.timeout, Step::Answer);
        self.write(req, deadline).await?;
        loop {
            let answer = self.answer_until(deadline).await?;
            if answer_hop_by_hop(&answer) == hop_by_hop {
                return Ok(answer);
            }
            tracing::debug!(hop_by_hop = answer_hop_by_hop(&answer), "answer to no pending request dropped");
        }
    }

    /// Sends one encoded request without waiting (for pipelining: pair with [`Self::recv`]).
    pub async fn send(&mut self, req: &[u8]) -> Result<(), ClientError> {
        let _ = request_hop_by_hop(req);
        self.write(req, Deadline::after(self.timeout, Step::Write)).await
    }

    /// The next answer from the server, whichever request it answers (match it by its
    /// Hop-by-Hop id), bounded by the client's timeout. Server requests are handled meanwhile.
    pub async fn recv(&mut self) -> Result<Bytes, ClientError> {
        self.answer_until(Deadline::after(self.timeout, Step::Answer)).await
    }

    /// Disconnects politely (RFC 6733 §5.4): DPR, then wait (bounded) for DPA, then close the
    /// socket. If the server already went away this only closes the socket.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.state != State::Open {
            let _ = self.stream.shutdown().await;
            return Ok(());
        }
        let (hop_by_hop, end_to_end) = self.next_ids();
        self.wbuf.clear();
        write_dpr(&mut self.wbuf, &self.local, hop_by_hop, end_to_end);
        let timeout = self.timeout.min(Duration::from_millis(DPA_TIMEOUT_MS));
        let deadline = Deadline::after(timeout, Step::Disconnect);
        self.write_wbuf(deadline).await?;
        let result = loop {
            match self.answer_until(deadline).await {
                Ok(a) if answer_hop_by_hop(&a) == hop_by_hop => break Ok(()),
                Ok(_) => continue,
                // The server closing right after (or instead of) DPA is a clean end too.
                Err(ClientError::Closed(_)) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.state = State::Closed(Closure::Broken);
        let _ = self.stream.shutdown().await;
        result
    }

    /// CER, then CEA 2001 or an error naming the Result-Code.
    async fn exchange_capabilities(&mut self) -> Result<(), ClientError> {
        let (hop_by_hop, end_to_end) = self.next_ids();
        self.wbuf.clear();
        write_cer(&mut self.wbuf, &self.local, hop_by_hop, end_to_end);
        let deadline = Deadline::after(self.timeout, Step::CapabilitiesExchange);
        self.write_wbuf(deadline).await?;
        let cea = loop {
            let answer = self.answer_until(deadline).await?;
            if answer_hop_by_hop(&answer) == hop_by_hop {
                break answer;
            }
        };
        let Some(msg) = MessageRef::parse(&cea) else { unreachable!("answer_until returns framed messages") };
        if msg.header.command != CommandCode::CAPABILITIES_EXCHANGE {
            return Err(BadAnswer::NotCea { command: msg.header.command }.into());
        }
        let result = msg
            .u32(AvpCode::RESULT_CODE)
            .ok_or(BadAnswer::MissingResultCode { command: msg.header.command })?;
        if result != ResultCode::SUCCESS.0 {
            self.state = State::Closed(Closure::Broken);
            return Err(ClientError::CerRefused { result: ResultCode(result) });
        }
        let text = |code| msg.str(code).unwrap_or_default().to_owned();
        self.server = ServerIdentity {
            origin_host: text(AvpCode::ORIGIN_HOST),
            origin_realm: text(AvpCode::ORIGIN_REALM),
            product_name: text(AvpCode::PRODUCT_NAME),
        };
        tracing::debug!(server = %self.server.origin_host, product = %self.server.product_name, "CEA 2001");
        Ok(())
    }

    /// Writes bytes before `deadline`. A failed or timed-out write leaves a partial message on
    /// the stream, so the connection is marked broken.
    async fn write(&mut self, bytes: &[u8], deadline: Deadline) -> Result<(), ClientError> {
        if let State::Closed(closure) = self.state {
            return Err(ClientError::Closed(closure));
        }
        match tokio::time::timeout_at(deadline.at, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.state = State::Closed(Closure::Broken);
                Err(ClientError::Io(e))
            }
            Err(_) => {
                self.state = State::Closed(Closure::Broken);
                Err(ClientError::Timeout { step: Step::Write, timeout_ms: millis(deadline.timeout) })
            }
        }
    }

    /// Writes what was encoded into `wbuf`, keeping its allocation for the next message.
    async fn write_wbuf(&mut self, deadline: Deadline) -> Result<(), ClientError> {
        let buf = std::mem::take(&mut self.wbuf);
        let written = self.write(&buf, deadline).await;
        self.wbuf = buf;
        self.wbuf.clear();
        written
    }

    /// Reads until a whole answer is buffered, answering server requests on the way.
    async fn answer_until(&mut self, deadline: Deadline) -> Result<Bytes, ClientError> {
        loop {
            while let Some(message) = self.next_frame()? {
                let Some(msg) = MessageRef::parse(&message) else {
                    unreachable!("frame() said the slice is exactly one message")
                };
                if !msg.header.flags.is_request() {
                    return Ok(message);
                }
                self.answer_server_request(&msg, deadline).await?;
            }
            if let State::Closed(closure) = self.state {
                return Err(ClientError::Closed(closure));
            }
            self.rbuf.reserve(READ_CHUNK_BYTES);
            // `read_buf` is cancel-safe: when the timeout wins, nothing read is lost.
            match tokio::time::timeout_at(deadline.at, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(deadline.expired()),
                Ok(Ok(0)) => self.state = State::Closed(Closure::PeerClosed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.state = State::Closed(Closure::Broken);
                    return Err(ClientError::Io(e));
                }
            }
        }
    }

    /// Splits one whole message off the read buffer, if there is one.
    fn next_frame(&mut self) -> Result<Option<Bytes>, ClientError> {
        match frame(&self.rbuf) {
            Ok(None) => Ok(None),
            Ok(Some(len)) => Ok(Some(self.rbuf.split_to(len).freeze())),
            Err(e) => {
                self.state = State::Closed(Closure::Broken);
                Err(BadAnswer::Frame(e).into())
            }
        }
    }

    /// A request from the server while we wait: DWR gets DWA (RFC 3539 §3.4.1), DPR gets DPA
    /// and ends the connection (RFC 6733 §5.4), anything else gets 3001 (RFC 6733 §7.1.3:
    /// "the receiver did not recognize or support" the command).
    async fn answer_server_request(
        &mut self,
        msg: &MessageRef<'_>,
        deadline: Deadline,
    ) -> Result<(), ClientError> {
        self.wbuf.clear();
        let command = msg.header.command;
        answer_server_request(&mut self.wbuf, &self.local, msg);
        self.write_wbuf(deadline).await?;
        if command == CommandCode::DISCONNECT_PEER {
            tracing::debug!(cause = msg.u32(AvpCode::DISCONNECT_CAUSE), "server sent DPR");
            self.state = State::Closed(Closure::PeerDisconnected);
        }
        Ok(())
    }
}

/// When the current wait ends, and what to call it if it does.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    step: Step,
    timeout: Duration,
}

impl Deadline {
    fn after(timeout: Duration, step: Step) -> Self {
        Self { at: Instant::now() + timeout, step, timeout }
    }

    fn expired(&self) -> ClientError {
        ClientError::Timeout { step: self.step, timeout_ms: millis(self.timeout) }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Answers a request the server sent to us: DWR gets DWA (RFC 3539 §3.4.1), DPR gets DPA
/// (RFC 6733 §5.4; the caller then ends the connection), anything else gets 3001 (RFC 6733
/// §7.1.3: "the receiver did not recognize or support" the command). Appends to `buf`.
pub fn answer_server_request(buf: &mut BytesMut, local: &LocalIdentity, msg: &MessageRef<'_>) {
    let command = msg.header.command;
    match command {
        CommandCode::DEVICE_WATCHDOG | CommandCode::DISCONNECT_PEER => {
            let mut e = begin_answer(buf, msg, ResultCode::SUCCESS);
            e.u32(spec::RESULT_CODE, ResultCode::SUCCESS.0);
            e.str(spec::ORIGIN_HOST, &local.origin_host);
            e.str(spec::ORIGIN_REALM, &local.origin_realm);
            if command == CommandCode::DEVICE_WATCHDOG {
                e.u32(spec::ORIGIN_STATE_ID, local.origin_state_id);
            }
            e.finish();
        }
        _ => {
            tracing::debug!(command = command.0, "unsupported request from the server; 3001");
            let text = Some("gyro-ccr does not handle this command");
            error_answer(buf, local, msg, ResultCode::COMMAND_UNSUPPORTED, text, None);
        }
    }
}

/// RFC 6733 §5.4.1 DPR with Disconnect-Cause DO_NOT_WANT_TO_TALK_TO_YOU: we are done, not
/// rebooting or busy. Appends to `buf`.
pub fn write_dpr(buf: &mut BytesMut, local: &LocalIdentity, hop_by_hop: u32, end_to_end: u32) {
    let flags = CommandFlags(CommandFlags::REQUEST);
    let command = CommandCode::DISCONNECT_PEER;
    let mut e = Encoder::new(buf, flags, command, ApplicationId::COMMON, hop_by_hop, end_to_end);
    e.str(spec::ORIGIN_HOST, &local.origin_host);
    e.str(spec::ORIGIN_REALM, &local.origin_realm);
    e.u32(spec::DISCONNECT_CAUSE, DISCONNECT_CAUSE_DO_NOT_WANT_TO_TALK_TO_YOU);
    e.finish();
}

/// RFC 6733 §5.3.1 CER, in the ABNF order: Origin-Host, Origin-Realm, Host-IP-Address,
/// Vendor-Id, Product-Name, Origin-State-Id, Supported-Vendor-Id, Auth-Application-Id,
/// Vendor-Specific-Application-Id, Firmware-Revision.
fn write_cer(buf: &mut BytesMut, local: &LocalIdentity, hop_by_hop: u32, end_to_end: u32) {
    let flags = CommandFlags(CommandFlags::REQUEST);
    let command = CommandCode::CAPABILITIES_EXCHANGE;
    let mut e = Encoder::new(buf, flags, command, ApplicationId::COMMON, hop_by_hop, end_to_end);
    e.str(spec::ORIGIN_HOST, &local.origin_host);
    e.str(spec::ORIGIN_REALM, &local.origin_realm);
    for ip in &local.host_ip_addresses {
        e.ip(spec::HOST_IP_ADDRESS, *ip);
    }
    e.u32(spec::VENDOR_ID, local.vendor_id);
    e.str(spec::PRODUCT_NAME, &local.product_name);
    e.u32(spec::ORIGIN_STATE_ID, local.origin_state_id);
    // We send 3GPP AVPs (Reporting-Reason), so we say we support vendor 10415 (RFC 6733 §5.3.6).
    e.u32(spec::SUPPORTED_VENDOR_ID, VendorId::TGPP.0);
    e.u32(spec::AUTH_APPLICATION_ID, ApplicationId::CREDIT_CONTROL.0);
    // 3GPP nodes (TS 32.299 §6.4.1 Gy/Ro) advertise application 4 inside
    // Vendor-Specific-Application-Id; some servers only look there.
    let g = e.begin_group(spec::VENDOR_SPECIFIC_APPLICATION_ID);
    e.u32(spec::VENDOR_ID, VendorId::TGPP.0);
    e.u32(spec::AUTH_APPLICATION_ID, ApplicationId::CREDIT_CONTROL.0);
    e.end_group(g);
    e.u32(spec::FIRMWARE_REVISION, local.firmware_revision);
    e.finish();
}

fn local_identity(identity: ClientIdentity, host_ip: IpAddr, origin_state_id: u32) -> LocalIdentity {
    LocalIdentity {
        origin_host: identity.origin_host,
        origin_realm: identity.origin_realm,
        host_ip_addresses: vec![host_ip],
        vendor_id: 0,
        product_name: PRODUCT_NAME.to_owned(),
        firmware_revision: firmware_revision(),
        // RFC 6733 §8.16: a new value whenever the client starts with lost state; every run of
        // the tool is a fresh start.
        origin_state_id,
    }
}

/// The Hop-by-Hop id of an encoded request. Panics on something that is not a request.
fn request_hop_by_hop(req: &[u8]) -> u32 {
    let header = req.get(..HEADER_SIZE_BYTES).and_then(Header::parse);
    let Some(header) = header.filter(|h| h.flags.is_request()) else {
        panic!("Client::request needs an encoded Diameter request");
    };
    header.hop_by_hop
}

/// The Hop-by-Hop id of a framed answer (framing guarantees the 20 header bytes).
fn answer_hop_by_hop(answer: &[u8]) -> u32 {
    u32::from_be_bytes([answer[12], answer[13], answer[14], answer[15]])
}

/// Seconds since 1970; the edge of the program, where reading the wall clock is allowed.
pub fn unix_now_secs() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap_or_default().as_secs()
}

/// 64 unpredictable bits without a dependency: std's `RandomState` is seeded from the OS per
/// process and perturbed per instance.
pub fn random_u64() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    RandomState::new().hash_one((nanos.as_nanos(), std::process::id()))
}

/// RFC 6733 §5.3.4 Firmware-Revision: the crate version as MMmmpp (0.1.0 → 100).
fn firmware_revision() -> u32 {
    let v = |s: &str| s.parse::<u32>().unwrap_or(0);
    v(env!("CARGO_PKG_VERSION_MAJOR")) * 10_000
        + v(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + v(env!("CARGO_PKG_VERSION_PATCH"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diameter::{validate_request, Dictionary};

    #[test]
    fn cer_is_valid_and_offers_credit_control() {
        let ip = "127.0.0.1".parse().unwrap();
        let identity =
            ClientIdentity { origin_host: "ccr.gyro.test".into(), origin_realm: "gyro.test".into() };
        let local = local_identity(identity, ip, 7);
        let mut buf = BytesMut::new();
        write_cer(&mut buf, &local, 1, 2);
        let msg = MessageRef::parse(&buf).unwrap();
        let dict = Dictionary::embedded().unwrap();
        assert!(validate_request(&dict, &msg, &[ApplicationId::COMMON]).is_ok());
        assert_eq!(msg.u32(AvpCode::AUTH_APPLICATION_ID), Some(4));
        assert_eq!(msg.str(AvpCode::PRODUCT_NAME), Some(PRODUCT_NAME));
        assert_eq!(msg.u32(AvpCode::ORIGIN_STATE_ID), Some(7));
        let vsai = msg.find(AvpCode::VENDOR_SPECIFIC_APPLICATION_ID).unwrap();
        let members: Vec<_> = vsai.members().map(|m| m.unwrap().data).collect();
        assert_eq!(members, [&10415u32.to_be_bytes()[..], &4u32.to_be_bytes()[..]]);
    }

    #[test]
    #[should_panic(expected = "encoded Diameter request")]
    fn answers_are_not_requests() {
        let mut buf = BytesMut::new();
        Encoder::new(&mut buf, CommandFlags(0), CommandCode::CREDIT_CONTROL, ApplicationId(4), 1, 2).finish();
        request_hop_by_hop(&buf);
    }
}
