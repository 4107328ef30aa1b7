//! Rating benchmarks: `charge` and `affordable` for the demo catalog's data rate (per MiB in KiB
//! increments, with a weekend band) and voice rate (60/1 with a connect fee), and `band_at` /
//! `next_band_change`. These run once per MSCC in every CCR.
//!
//! Run: `cargo bench --bench rating`. `cargo test --benches` runs each once as a smoke test.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gyro::catalog::Catalog;
use gyro::rating::{affordable, band_at, charge, next_band_change, CumulativeUsage, MoneyMinor, Rate};

/// Saturday 2024-01-06 12:00 UTC, inside the demo's weekend band.
const SATURDAY_NOON: u64 = 1_704_542_400;

fn demo_rate(context: u32) -> (Rate, gyro::rating::Currency) {
    let packages = Catalog::demo().packages();
    let package = &packages["c-carol"];
    let service = package.find(context, Some(10), None).expect("the demo prices this context");
    (service.rate.clone(), package.currency)
}

fn rating(c: &mut Criterion) {
    let mut g = c.benchmark_group("rating");
    for (name, context, usage) in [
        // 37 MiB and change, split between weekday and weekend.
        ("data", 32251, CumulativeUsage([30 << 20, (7 << 20) + 12_345, 0, 0, 0])),
        // A 3 min 7 s call.
        ("voice", 32260, CumulativeUsage([187, 0, 0, 0, 0])),
    ] {
        let (rate, currency) = demo_rate(context);
        g.bench_function(format!("charge/{name}"), |b| {
            b.iter(|| charge(black_box(&rate), black_box(&usage), currency))
        });
        g.bench_function(format!("affordable/{name}"), |b| {
            b.iter(|| {
                affordable(black_box(&rate), black_box(&usage), 0, black_box(MoneyMinor(4_321)), currency)
            })
        });
    }
    let (rate, _) = demo_rate(32251);
    g.bench_function("band_at", |b| b.iter(|| band_at(black_box(&rate), black_box(SATURDAY_NOON), 60)));
    g.bench_function("next_band_change", |b| {
        b.iter(|| next_band_change(black_box(&rate), black_box(SATURDAY_NOON), 60))
    });
    g.finish();
}

criterion_group!(benches, rating);
criterion_main!(benches);
