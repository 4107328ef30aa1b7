//! Catalog changes on a running engine (issue 7: live reload and the admin API's edits), at
//! `GYRO_CATALOG_ACCOUNTS` accounts (100 000 with `cargo bench --bench catalog`, 1 000 under
//! `cargo test --benches`), through the real journal (fdatasync on) in a temporary directory:
//!
//! - an account created through `Catalogs::edit` (what `POST /v1/accounts` does after parsing):
//!   copy and validate the catalog, check the change, journal the edit, install;
//! - a customer updated the same way;
//! - a catalog file with a new price installed (`Catalogs::install`, what a reload does after
//!   reading the file): parse, validate, check, store, journal, reprice every account;
//! - `Catalog::to_toml` (`GET /v1/catalog`, and each checkpoint after edits);
//! - a start on the directory, which replays every edit since the first catalog.
//!
//! Prints min / median / max of each; wall time on a shared machine, so compare runs made
//! together.

#[path = "support/journaled.rs"]
mod journaled;
use journaled::{catalog_text, env, local};

use std::time::{Duration, Instant};

use gyro::catalog::Edit;
use gyro::cc::{EngineConfig, Now};
use gyro::durable::start;
use gyro::journal::JournalConfig;

const NOW: Now = Now { mono_ms: 1_000, unix_secs: 1_796_000_000 };

fn summary(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<40} min {:>8.2} ms  median {:>8.2} ms  max {:>8.2} ms  ({} runs)",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    );
}

fn timed(mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let accounts = env("GYRO_CATALOG_ACCOUNTS", if full { 100_000 } else { 1_000 });
    let runs = env("GYRO_CATALOG_RUNS", if full { 20 } else { 3 });
    let dir = tempfile::tempdir().unwrap();
    let text = catalog_text(accounts);
    println!("catalog: {accounts} accounts, {} bytes of TOML", text.len());
    let started =
        start(&text, EngineConfig::new(&local()), Some(JournalConfig::new(dir.path())), NOW).unwrap();
    let catalogs = &started.catalogs;

    let creates = (0..runs)
        .map(|i| {
            let body = serde_json::json!({
                "customer": "c", "subscription_ids": [format!("e164:4918{i:08}")], "funding": "prepaid"
            });
            timed(|| {
                catalogs.edit(&Edit::AddAccount { body: body.clone() }, NOW).unwrap();
            })
        })
        .collect();
    summary("edit: account created", creates);
    let updates = (0..runs)
        .map(|i| {
            let patch = serde_json::json!({ "email": format!("billing{i}@example.org") });
            timed(|| {
                catalogs.edit(&Edit::UpdateCustomer { id: "c".into(), patch: patch.clone() }, NOW).unwrap();
            })
        })
        .collect();
    summary("edit: customer updated", updates);
    let in_force = catalogs.live().current().catalog.to_toml();
    let to_toml =
        (0..runs.min(5)).map(|_| timed(|| drop(catalogs.live().current().catalog.to_toml()))).collect();
    summary("to_toml (GET /v1/catalog)", to_toml);
    let installs = (0..runs.min(5))
        .map(|i| {
            let priced = in_force.replacen("price = \"0.01\"", &format!("price = \"0.0{}\"", i + 2), 1);
            timed(|| {
                let done = catalogs.install("bench", &priced, NOW).unwrap();
                assert_eq!(done.repriced.len(), accounts + runs, "every account repriced");
            })
        })
        .collect();
    summary("file with a new price installed", installs);
    drop(started);
    let restart = timed(|| {
        start(&text, EngineConfig::new(&local()), Some(JournalConfig::new(dir.path())), NOW).unwrap();
    });
    println!(
        "start: {} edits and {} files replayed after the first catalog: {:.2} s",
        2 * runs,
        runs.min(5),
        restart.as_secs_f64()
    );
}
