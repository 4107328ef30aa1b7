//! Memory per account and per open session (one rating group), measured with a counting
//! allocator: live heap bytes after creating N accounts, then after opening one session on
//! each. `cargo bench --bench memory` uses N = 1,000,000; `cargo test --benches` a small N.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use gyro::catalog::{AccountStatus, Catalog, Funding, SubscriptionKind};
use gyro::cc::{Engine, EngineConfig, Now};
use gyro::diameter::encode::spec;
use gyro::diameter::{ApplicationId, AvpSpec, CommandCode, CommandFlags, Encoder, LocalIdentity, MessageRef};
use gyro::ledger::{Ledger, NewAccount};
use gyro::rating::{Currency, MoneyMinor};

#[path = "support/counting.rs"]
mod counting;
use counting::LIVE;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const CATALOG: &str = r#"
[[plans]]
id = "p"
name = "P"
currency = "EUR"
  [[plans.services]]
  name = "data"
  contexts = [32251]
  unit = "octets"
  price = "0.01"
  per = 1048576
  quota = 10485760
[[customers]]
id = "c"
name = "C"
plan = "p"
"#;

fn ccr_i(session: &str, msisdn: &str, out: &mut BytesMut) {
    out.clear();
    let mut e = Encoder::new(
        out,
        CommandFlags(CommandFlags::REQUEST),
        CommandCode::CREDIT_CONTROL,
        ApplicationId::CREDIT_CONTROL,
        1,
        1,
    );
    e.str(spec::SESSION_ID, session);
    e.str(spec::ORIGIN_HOST, "pgw").str(spec::ORIGIN_REALM, "test");
    e.str(spec::DESTINATION_REALM, "x").u32(spec::AUTH_APPLICATION_ID, 4);
    e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
    e.u32(AvpSpec::mandatory(416), 1).u32(AvpSpec::mandatory(415), 0);
    let g = e.begin_group(AvpSpec::mandatory(443));
    e.u32(AvpSpec::mandatory(450), 0).str(AvpSpec::mandatory(444), msisdn);
    e.end_group(g);
    let m = e.begin_group(AvpSpec::mandatory(456));
    let r = e.begin_group(AvpSpec::mandatory(437));
    e.end_group(r);
    e.u32(AvpSpec::mandatory(432), 10);
    e.end_group(m);
    e.finish();
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = if full { 1_000_000 } else { 10_000 };
    let local = LocalIdentity {
        origin_host: "gyro".into(),
        origin_realm: "test".into(),
        host_ip_addresses: vec![],
        vendor_id: 0,
        product_name: "gyro".into(),
        firmware_revision: 0,
        origin_state_id: 0,
    };
    let catalog = Catalog::from_toml("memory", CATALOG).unwrap();
    let package = catalog.packages().remove("c").unwrap();
    let engine = Engine::new(EngineConfig::new(&local), Arc::new(Ledger::new()));
    let msisdns: Vec<String> = (0..n).map(|i| format!("4917{i:08}")).collect();
    let base = LIVE.load(Ordering::Relaxed);
    for m in &msisdns {
        let id = engine
            .ledger()
            .create(NewAccount {
                customer: "c".into(),
                subscriptions: vec![(SubscriptionKind::E164, m.clone())],
                currency: Currency::EUR,
                funding: Funding::Prepaid,
                status: AccountStatus::Active,
                balance: MoneyMinor(10_000),
                credit_limit: MoneyMinor(0),
                bundles: vec![],
            })
            .unwrap();
        engine.set_package(id, Arc::clone(&package));
    }
    let accounts = LIVE.load(Ordering::Relaxed) - base;
    let now = Now { mono_ms: 1, unix_secs: 1_795_600_000 };
    let mut req = BytesMut::new();
    let mut out = BytesMut::with_capacity(4096);
    let before = LIVE.load(Ordering::Relaxed);
    for (i, m) in msisdns.iter().enumerate() {
        let session = format!("pgw1.example.net;1795600000;{i}");
        ccr_i(&session, m, &mut req);
        out.clear();
        engine.handle(now, &MessageRef::parse(&req).unwrap(), &mut out);
    }
    let sessions = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(engine.open_sessions(), n);
    println!(
        "memory: {n} accounts: {:.1} bytes per account (ledger + subscriber index + package map); \
         {n} open sessions with one rating group: {:.1} bytes per session (incl. its reservation)",
        accounts as f64 / n as f64,
        sessions as f64 / n as f64
    );
}
