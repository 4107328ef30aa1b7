//! The whole credit-control path for one CCR-U, single-threaded: frame → dictionary
//! validation → typed CCR → rating → ledger commit + reserve → CCA encode. Also reports heap
//! allocations per CCR-U in steady state (counting allocator).
//!
//! Run: `cargo bench --bench engine`. `cargo test --benches` runs it once as a smoke test.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use gyro::catalog::Catalog;
use gyro::cc::{Engine, EngineConfig, Now};
use gyro::diameter::encode::spec;
use gyro::diameter::{
    frame, validate_request, ApplicationId, AvpSpec, CommandCode, CommandFlags, Dictionary, Encoder,
    LocalIdentity, MessageRef,
};
use gyro::ledger::Ledger;

#[path = "support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const CATALOG: &str = r#"
[[plans]]
id = "bench"
name = "Bench"
currency = "EUR"
  [[plans.services]]
  name = "data"
  contexts = [32251]
  unit = "octets"
  price = "0.000001"
  per = 1048576
  increment = 1024
  quota = 10485760
  validity_time = 3600
[[customers]]
id = "c"
name = "C"
plan = "bench"
[[accounts]]
customer = "c"
subscription_ids = ["e164:491700000001"]
funding = "prepaid"
balance = "1000000000.00"
"#;

/// A CCR with one MSCC for rating group 10; `number` is patched per iteration.
fn ccr(kind: u32, number: u32) -> (Vec<u8>, usize) {
    let mut b = BytesMut::new();
    let mut e = Encoder::new(
        &mut b,
        CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE),
        CommandCode::CREDIT_CONTROL,
        ApplicationId::CREDIT_CONTROL,
        7,
        9,
    );
    e.str(spec::SESSION_ID, "pgw1.test.example;1700000000;1");
    e.str(spec::ORIGIN_HOST, "pgw1.test.example").str(spec::ORIGIN_REALM, "test.example");
    e.str(spec::DESTINATION_REALM, "localdomain");
    e.u32(spec::AUTH_APPLICATION_ID, 4);
    e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
    e.u32(AvpSpec::mandatory(416), kind);
    e.u32(AvpSpec::mandatory(415), number);
    let g = e.begin_group(AvpSpec::mandatory(443));
    e.u32(AvpSpec::mandatory(450), 0).str(AvpSpec::mandatory(444), "491700000001");
    e.end_group(g);
    e.u32(AvpSpec::mandatory(455), 1);
    let m = e.begin_group(AvpSpec::mandatory(456));
    let r = e.begin_group(AvpSpec::mandatory(437));
    e.end_group(r);
    if kind == 2 {
        let u = e.begin_group(AvpSpec::mandatory(446));
        e.u64(AvpSpec::mandatory(421), 1024);
        e.end_group(u);
    }
    e.u32(AvpSpec::mandatory(432), 10);
    e.end_group(m);
    e.finish();
    let bytes = b.to_vec();
    // Offset of the CC-Request-Number value: the AVP header 415 with M bit, 12 bytes long.
    let pat = [0, 0, 1, 0x9f, 0x40, 0, 0, 12];
    let at = bytes.windows(8).position(|w| w == pat).unwrap() + 8;
    (bytes, at)
}

fn engine_path(c: &mut Criterion) {
    let dict = Dictionary::embedded().unwrap();
    let local = LocalIdentity {
        origin_host: "gyro.localdomain".into(),
        origin_realm: "localdomain".into(),
        host_ip_addresses: vec![],
        vendor_id: 0,
        product_name: "gyro".into(),
        firmware_revision: 0,
        origin_state_id: 0,
    };
    let engine = Engine::new(EngineConfig::new(&local), Arc::new(Ledger::new()));
    engine.load_catalog(&Catalog::from_toml("bench", CATALOG).unwrap(), 0).unwrap();
    let supported = [ApplicationId::COMMON, ApplicationId::CREDIT_CONTROL];
    let now = Now { mono_ms: 1_000, unix_secs: 1_795_600_000 };
    let mut out = BytesMut::with_capacity(64 * 1024);
    let (init, _) = ccr(1, 0);
    engine.handle(now, &MessageRef::parse(&init).unwrap(), &mut out);
    let (mut update, at) = ccr(2, 1);
    let mut number = 1u32;
    let mut step = |out: &mut BytesMut| {
        number += 1;
        update[at..at + 4].copy_from_slice(&number.to_be_bytes());
        out.clear();
        let len = frame(black_box(&update)).unwrap().unwrap();
        let msg = MessageRef::parse(&update[..len]).unwrap();
        validate_request(&dict, &msg, &supported).unwrap();
        engine.handle(now, &msg, out);
        black_box(out.len())
    };
    // GYRO_ENGINE_LOG=FILTER (e.g. info, debug): a log subscriber like `gyro serve`'s, writing
    // nowhere, to count what the engine's log lines cost at that level. Without it no
    // subscriber is installed, as in the figures before the decision lines.
    if let Ok(filter) = std::env::var("GYRO_ENGINE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::sink)
            .init();
    }
    // GYRO_ENGINE_LOOP=N: N steps and exit, for instruction counts under callgrind, which are
    // repeatable on a shared machine where times are not:
    // valgrind --tool=callgrind target/release/deps/engine-… --bench
    if let Some(n) = std::env::var("GYRO_ENGINE_LOOP").ok().and_then(|v| v.parse::<u32>().ok()) {
        for _ in 0..n {
            step(&mut out);
        }
        std::process::exit(0);
    }
    // Steady-state allocations, measured once before the timing.
    for _ in 0..100 {
        step(&mut out);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        step(&mut out);
    }
    let per = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0;
    eprintln!("engine/ccr_u: {per:.2} heap allocations per CCR-U in steady state");
    c.bench_function("engine/ccr_u", |b| b.iter(|| step(&mut out)));
}

criterion_group!(benches, engine_path);
criterion_main!(benches);
