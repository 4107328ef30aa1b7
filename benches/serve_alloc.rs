//! Heap allocations per CCR-U through the whole server path, in steady state: socket read,
//! framing, peer state machine, dictionary validation, the engine, the journal (append, group
//! commit, the writer thread, the durability wake-up) and the held answer's write. The server
//! runs in this process under a counting allocator; the load comes from `gyro load` in its own
//! process, so its allocations are not counted. (`benches/engine.rs` counts the engine alone.)
//!
//! Run: `cargo bench --bench serve_alloc` (10 s measured after 3 s of warm-up, fsync per batch as
//! `gyro serve` by default). `cargo test --benches` runs it once briefly as a smoke test.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gyro::cc::EngineConfig;
use gyro::diameter::{ApplicationId, Dictionary, LocalIdentity};
use gyro::journal::JournalConfig;
use gyro::net::charging::Charging;
use gyro::net::{Server, ServerLimits, Shared};
use gyro::peer::PeerConfig;
use gyro::tools::load::provision::{provision, ProvisionArgs};
use tokio_util::sync::CancellationToken;

#[path = "support/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const SUBSCRIBERS: u64 = 1_000;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (warmup_s, measured_s) = if full { (3.0, 10.0) } else { (1.0, 1.0) };
    let dir = tempfile::tempdir().unwrap();
    let catalog_path = dir.path().join("catalog.toml");
    provision(&ProvisionArgs {
        subscribers: SUBSCRIBERS,
        out: catalog_path.clone(),
        first_msisdn: gyro::tools::load::FIRST_MSISDN_DEFAULT,
        balance: "1000000.00".into(),
    })
    .unwrap();
    let text = std::fs::read_to_string(&catalog_path).unwrap();
    let local = LocalIdentity {
        origin_host: "gyro.localdomain".into(),
        origin_realm: "localdomain".into(),
        host_ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        vendor_id: 0,
        product_name: "gyro".into(),
        firmware_revision: 0,
        origin_state_id: 1,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();
    let epoch = tokio::time::Instant::now();
    let journal_cfg = JournalConfig::new(dir.path().join("data"));
    let started =
        gyro::durable::start(&text, EngineConfig::new(&local), Some(journal_cfg), Charging::now_from(epoch))
            .unwrap();
    let (journal, _) = started.journal.unwrap();
    let charging = Arc::new(Charging::with_journal(started.engine, epoch, Arc::clone(&journal)));
    let peer = Arc::new(PeerConfig {
        local,
        dictionary: Arc::new(Dictionary::embedded().unwrap()),
        applications: vec![ApplicationId::CREDIT_CONTROL],
        allowed_peers: None,
        watchdog_interval_ms: 30_000,
    });
    let shared = Arc::new(Shared::new(peer, vec![charging], ServerLimits::default()));
    let server = rt.block_on(Server::bind("127.0.0.1:0".parse().unwrap(), shared)).unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = rt.spawn(server.run(shutdown.clone()));

    let mut load = Command::new(env!("CARGO_BIN_EXE_gyro"))
        .args(["load", "--server", &addr.to_string(), "--scenario", "data", "--only-updates"])
        .args(["--subscribers", &SUBSCRIBERS.to_string(), "--connections", "4", "--in-flight", "16"])
        .args(["--workers", "1", "--warmup", &warmup_s.to_string(), "--duration", &measured_s.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gyro load starts");
    // The count starts inside the generator's warm-up (sessions opened, buffers grown) and
    // stops inside its measured window, so only CCR-U are in it.
    std::thread::sleep(Duration::from_secs_f64(warmup_s + 0.5));
    let (allocations_before, records_before) = (counting::allocations(), journal.stats().records);
    std::thread::sleep(Duration::from_secs_f64(measured_s - 0.5));
    let (allocations_after, records_after) = (counting::allocations(), journal.stats().records);
    assert!(load.wait().unwrap().success(), "gyro load failed");
    shutdown.cancel();
    rt.block_on(task).unwrap();

    let requests = records_after - records_before;
    let allocations = allocations_after - allocations_before;
    assert!(requests > 0, "no CCR-U was handled in the window");
    println!(
        "serve_alloc: {requests} CCR-U through the server (journal on, fsync per batch), {allocations} heap \
         allocations: {:.4} per CCR-U",
        allocations as f64 / requests as f64
    );
}
