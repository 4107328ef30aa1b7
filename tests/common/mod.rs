//! Test harness: a server on 127.0.0.1:0 and a minimal client that speaks raw Diameter.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gyro::diameter::encode::spec;
use gyro::diameter::{
    frame, ApplicationId, CommandCode, CommandFlags, Dictionary, Encoder, LocalIdentity, MessageRef,
};
use gyro::net::{Application, Server, ServerLimits, Shared};
use gyro::peer::PeerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every network step in tests is bounded by this.
pub const STEP: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    pub shared: Arc<Shared>,
}

pub struct Options {
    pub applications: Vec<Arc<dyn Application>>,
    pub allowed_peers: Option<Vec<String>>,
    pub in_flight_max: usize,
    /// Server-wide in-flight limit (new work is shed from 75 % of it).
    pub in_flight_total: usize,
    pub dictionary: Option<Dictionary>,
    /// Open connections one Origin-Host may hold.
    pub connections_per_peer: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            applications: Vec::new(),
            allowed_peers: None,
            in_flight_max: 1024,
            in_flight_total: gyro::limits::IN_FLIGHT_TOTAL_MAX,
            dictionary: None,
            connections_per_peer: gyro::limits::CONNECTIONS_PER_PEER_DEFAULT,
        }
    }
}

pub fn local() -> LocalIdentity {
    LocalIdentity {
        origin_host: "gyro.test".into(),
        origin_realm: "test".into(),
        host_ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        vendor_id: 0,
        product_name: "gyro".into(),
        firmware_revision: 1,
        origin_state_id: 42,
    }
}

/// The test server's peer settings (application 4, Tw 30 s) with a dictionary and allowlist.
pub fn peer_config(dict: Dictionary, allowed_peers: Option<Vec<String>>) -> Arc<PeerConfig> {
    Arc::new(PeerConfig {
        local: local(),
        dictionary: Arc::new(dict),
        applications: vec![ApplicationId::CREDIT_CONTROL],
        allowed_peers,
        watchdog_interval_ms: 30_000,
    })
}

pub async fn start(opts: Options) -> TestServer {
    let dict = opts.dictionary.unwrap_or_else(|| Dictionary::embedded().unwrap());
    let peer = peer_config(dict, opts.allowed_peers);
    let limits = ServerLimits {
        in_flight_per_connection: opts.in_flight_max,
        in_flight_total: opts.in_flight_total,
        connections_per_peer: opts.connections_per_peer,
        ..ServerLimits::default()
    };
    let shared = Arc::new(Shared::new(peer, opts.applications, limits));
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), Arc::clone(&shared)).await.unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    TestServer { addr, shutdown, task, shared }
}

/// A raw Diameter client over a byte stream: TCP by default, TLS in tests/tls.rs.
pub struct Client<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
    next_id: u32,
    pub origin_host: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr)).await.unwrap().unwrap();
        Self::over(stream)
    }

    /// Connects and completes CER/CEA with application 4.
    pub async fn open(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr).await;
        c.exchange_capabilities().await;
        c
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn over(stream: S) -> Self {
        Self { stream, buf: BytesMut::new(), next_id: 1000, origin_host: "pgw.test".into() }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes)).await.unwrap().unwrap();
    }

    /// Reads one whole message; None when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            if let Ok(Some(len)) = frame(&self.buf) {
                return Some(self.buf.split_to(len).freeze());
            }
            let n = tokio::time::timeout(STEP, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server answered in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Expects the server to close the connection (after any pending answers were read).
    pub async fn expect_closed(&mut self) {
        let mut tmp = [0u8; 1024];
        loop {
            match tokio::time::timeout(STEP, self.stream.read(&mut tmp)).await.expect("server closed in time")
            {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    pub fn ids(&mut self) -> (u32, u32) {
        self.next_id += 1;
        (self.next_id, self.next_id + 0x1000_0000)
    }

    /// `req` as a CCR from this client (realm `test`) with its next ids (`gyro ccr`'s encoder).
    pub fn ccr(&mut self, session_id: &str, number: u32, req: &gyro::tools::ccr::CcrRequest) -> Bytes {
        use gyro::tools::ccr::{encode_ccr, Envelope};
        let (hop_by_hop, end_to_end) = self.ids();
        let origin = gyro::net::client::ClientIdentity {
            origin_host: self.origin_host.clone(),
            origin_realm: "test".into(),
        };
        let env = Envelope {
            hop_by_hop,
            end_to_end,
            origin: &origin,
            destination_realm: "test",
            session_id,
            number,
            now_unix_secs: 0,
        };
        let mut buf = BytesMut::new();
        encode_ccr(&mut buf, &env, req);
        buf.freeze()
    }

    /// Builds a request with Origin-Host/Realm; `body` adds the rest.
    pub fn request(
        &mut self,
        command: CommandCode,
        app: ApplicationId,
        body: impl FnOnce(&mut Encoder<'_>),
    ) -> Bytes {
        let (hbh, e2e) = self.ids();
        let mut buf = BytesMut::new();
        let mut e = Encoder::new(&mut buf, CommandFlags(CommandFlags::REQUEST), command, app, hbh, e2e);
        e.str(spec::ORIGIN_HOST, &self.origin_host.clone());
        e.str(spec::ORIGIN_REALM, "test");
        body(&mut e);
        e.finish();
        buf.freeze()
    }

    pub fn cer(&mut self, apps: &[u32]) -> Bytes {
        self.request(CommandCode::CAPABILITIES_EXCHANGE, ApplicationId::COMMON, |e| {
            e.ip(spec::HOST_IP_ADDRESS, "127.0.0.1".parse().unwrap());
            e.u32(spec::VENDOR_ID, 10415);
            e.str(spec::PRODUCT_NAME, "test-pgw");
            for a in apps {
                e.u32(spec::AUTH_APPLICATION_ID, *a);
            }
        })
    }

    pub fn dwr(&mut self) -> Bytes {
        self.request(CommandCode::DEVICE_WATCHDOG, ApplicationId::COMMON, |_| {})
    }

    /// CER/CEA with application 4, expecting 2001.
    pub async fn exchange_capabilities(&mut self) {
        let cer = self.cer(&[4]);
        self.send_raw(&cer).await;
        let cea = self.recv().await.expect("CEA");
        assert_eq!(result_code(&cea), Some(2001));
    }

    pub async fn call(&mut self, req: &[u8]) -> Bytes {
        self.send_raw(req).await;
        self.recv().await.expect("an answer")
    }
}

pub fn msg(b: &Bytes) -> MessageRef<'_> {
    MessageRef::parse(b).expect("well-framed message")
}

pub fn result_code(b: &Bytes) -> Option<u32> {
    msg(b).u32(gyro::diameter::AvpCode::RESULT_CODE)
}

/// The Failed-AVP's first member, as (code, whole raw bytes).
pub fn failed_avp(b: &Bytes) -> Option<(u32, Vec<u8>)> {
    let m = msg(b);
    let f = m.find(gyro::diameter::AvpCode::FAILED_AVP)?;
    let inner = f.members().next()?.ok()?;
    Some((inner.code.0, inner.raw.to_vec()))
}
