//! Property tests for rating: cumulative charging is exact, monotone, and `affordable` is its
//! exact inverse.
//!
//! `GYRO_FUZZ_CASES` raises the number of cases (CI's long run); the default keeps `cargo test`
//! quick.

use gyro::rating::{
    affordable, charge, Band, CumulativeUsage, Currency, MoneyMinor, Pricer, Rate, UnitKind,
    AFFORDABLE_UNLIMITED, BANDS_PER_RATE_MAX,
};
use proptest::prelude::*;
use rust_decimal::Decimal;

fn cases() -> u32 {
    std::env::var("GYRO_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), ..ProptestConfig::default() }
}

/// Up to 5.000 with 0–4 decimals; a few zeros.
fn amount() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        1 => Just(Decimal::ZERO),
        8 => (0i64..=500, 0u32..=4).prop_map(|(m, scale)| Decimal::new(m, scale)),
    ]
}

/// Small rates, so a brute-force scan can find the affordable maximum.
fn small_rate() -> impl Strategy<Value = Rate> {
    let limits = (proptest::option::of(0i64..=60), proptest::option::of(0i64..=400));
    let bands = proptest::collection::vec(amount(), 0..=2);
    (amount(), 1u64..=120, 1u64..=10, 0u64..=3, 0u64..=7, amount(), limits, bands).prop_map(
        |(price, per, increment, blocks, extra, connect_fee, (min, max), band_prices)| {
            let min_charge = min.map(|m| Decimal::new(m, 2));
            let max_charge = max.map(|m| Decimal::new(m, 2)).map(|m| min_charge.map_or(m, |min| m.max(min)));
            let bands = band_prices
                .into_iter()
                .enumerate()
                .map(|(i, price)| Band { days: 1 << i, from_minute: 0, to_minute: 1440, price })
                .collect();
            let rate = Rate {
                unit: UnitKind::Time,
                price,
                per,
                increment,
                first_increment: increment * (1 + blocks) + extra.min(increment - 1),
                connect_fee,
                min_charge,
                max_charge,
                bands,
            };
            rate.check().expect("the generator makes valid rates");
            rate
        },
    )
}

fn currency() -> impl Strategy<Value = Currency> {
    prop_oneof![Just(Currency::EUR), Just(Currency::JPY), Just(Currency::KWD)]
}

fn small_usage() -> impl Strategy<Value = CumulativeUsage> {
    prop_oneof![
        1 => Just(CumulativeUsage::default()),
        4 => proptest::array::uniform3(prop_oneof![Just(0u64), 0u64..=300]).prop_map(|u| {
            let mut usage = CumulativeUsage::default();
            usage.0[..3].copy_from_slice(&u);
            usage
        }),
    ]
}

/// Mostly zeros and a few seconds.
fn sparse_usage() -> impl Strategy<Value = CumulativeUsage> {
    let units = prop_oneof![3 => Just(0u64), 2 => 1u64..=40, 1 => 0u64..=300];
    proptest::array::uniform3(units).prop_map(|u| {
        let mut usage = CumulativeUsage::default();
        usage.0[..3].copy_from_slice(&u);
        usage
    })
}

/// Usage only in bands the rate has.
fn fit(rate: &Rate, mut usage: CumulativeUsage) -> CumulativeUsage {
    for units in &mut usage.0[rate.bands.len() + 1..] {
        *units = 0;
    }
    usage
}

/// Updates as (band selector, units), the band taken modulo the rate's bands.
fn updates() -> impl Strategy<Value = Vec<(usize, u64)>> {
    proptest::collection::vec((0usize..=BANDS_PER_RATE_MAX, prop_oneof![Just(0u64), 0u64..=200]), 1..=12)
}

proptest! {
    #![proptest_config(config())]

    /// (a) Usage reported in k cumulative updates, in any order, costs what it costs at once.
    #[test]
    fn k_updates_cost_the_same_as_one(
        rate in small_rate(), currency in currency(), updates in updates(), rotate in 0usize..12,
    ) {
        let bands = rate.bands.len() + 1;
        let mut cumulative = CumulativeUsage::default();
        let mut at_once = CumulativeUsage::default();
        for &(band, units) in &updates {
            cumulative = cumulative.plus(band % bands, units);
        }
        let sums = updates.iter().fold([0u64; BANDS_PER_RATE_MAX + 1], |mut sums, &(band, units)| {
            sums[band % bands] += units;
            sums
        });
        at_once.0 = sums;
        let mut rotated = updates.clone();
        rotated.rotate_left(rotate % updates.len());
        let reordered = rotated.iter().fold(CumulativeUsage::default(), |u, &(b, n)| u.plus(b % bands, n));
        prop_assert_eq!(charge(&rate, &cumulative, currency), charge(&rate, &at_once, currency));
        prop_assert_eq!(charge(&rate, &reordered, currency), charge(&rate, &at_once, currency));
    }

    /// (c) `affordable` is exactly the brute-force maximum.
    #[test]
    fn affordable_matches_brute_force(
        rate in small_rate(), currency in currency(), usage in small_usage(),
        band in 0usize..=2, available in -5i64..=400,
    ) {
        let usage = fit(&rate, usage);
        let band = band % (rate.bands.len() + 1);
        let got = affordable(&rate, &usage, band, MoneyMinor(available), currency);
        if available < 0 {
            prop_assert_eq!(got, 0);
            return Ok(());
        }
        let before = charge(&rate, &usage, currency).0;
        let ok = |x: u64| charge(&rate, &usage.plus(band, x), currency).0 - before <= available;
        const SCAN: u64 = 4000;
        match (0..=SCAN).find(|&x| !ok(x)) {
            Some(first_too_dear) => prop_assert_eq!(got, first_too_dear - 1),
            None => {
                prop_assert!(SCAN <= got);
                prop_assert!(ok(got));
                prop_assert!(got == AFFORDABLE_UNLIMITED || !ok(got + 1));
            }
        }
    }

    /// One `Pricer`, reused for several usages as the engine does within a request (it remembers
    /// the last charge), gives exactly what `charge` and `affordable` give on their own.
    #[test]
    fn a_reused_pricer_agrees_with_charge_and_affordable(
        rate in small_rate(), currency in currency(),
        usages in prop::collection::vec(small_usage(), 1..6),
        band in 0usize..=2, available in -5i64..=400,
    ) {
        let pricer = Pricer::new(&rate, currency);
        let band = band % (rate.bands.len() + 1);
        // Each usage twice, in both orders, so the remembered last charge is both hit and missed.
        for &usage in usages.iter().chain(usages.iter().rev()).flat_map(|u| [u, u]) {
            let usage = fit(&rate, usage);
            prop_assert_eq!(pricer.charge(&usage), charge(&rate, &usage, currency));
            prop_assert_eq!(
                pricer.affordable(&usage, band, MoneyMinor(available)),
                affordable(&rate, &usage, band, MoneyMinor(available), currency)
            );
        }
    }

    /// (c′) On large data volumes, the answer is affordable and one more unit is not.
    #[test]
    fn affordable_is_maximal_for_large_usage(
        price in (1i64..=1000, 2u32..=6).prop_map(|(m, s)| Decimal::new(m, s)),
        per in prop_oneof![Just(1u64 << 20), Just(1_000_000u64), 1u64..=1 << 30],
        increment in prop_oneof![Just(1u64), Just(1024u64), 1u64..=100_000],
        used in 0u64..=1 << 40,
        available in 0i64..=1_000_000,
        currency in currency(),
    ) {
        let rate = Rate {
            unit: UnitKind::Octets, price, per, increment, first_increment: increment,
            connect_fee: Decimal::ZERO, min_charge: None, max_charge: None, bands: Vec::new(),
        };
        let usage = CumulativeUsage::default().plus(0, used);
        let got = affordable(&rate, &usage, 0, MoneyMinor(available), currency);
        let before = charge(&rate, &usage, currency).0;
        let ok = |x: u64| charge(&rate, &usage.plus(0, x), currency).0 - before <= available;
        prop_assert!(ok(got));
        prop_assert!(got == AFFORDABLE_UNLIMITED || !ok(got + 1));
    }

    /// (d) The per-update debits add up to the charge of the total, and none is negative.
    #[test]
    fn deltas_add_up_to_the_total(rate in small_rate(), currency in currency(), updates in updates()) {
        let bands = rate.bands.len() + 1;
        let mut cumulative = CumulativeUsage::default();
        let mut previous = MoneyMinor(0);
        let mut debited = 0i64;
        for (band, units) in updates {
            cumulative = cumulative.plus(band % bands, units);
            let now = charge(&rate, &cumulative, currency);
            prop_assert!(previous <= now, "a later update must not refund");
            debited += now.0 - previous.0;
            previous = now;
        }
        prop_assert_eq!(debited, charge(&rate, &cumulative, currency).0);
    }
}

proptest! {
    // Cheap, and the failures it looks for are rare corners: eight times the budget.
    #![proptest_config(ProptestConfig { cases: cases().saturating_mul(8), ..config() })]

    /// (b) More usage, in any band, never costs less. Usage is sparse and short (often inside
    /// the first block) because that is where a first-block rule can go wrong.
    #[test]
    fn charge_is_monotone(
        rate in small_rate(), currency in currency(), usage in sparse_usage(), more in sparse_usage(),
        band in 0usize..=2, units in 1u64..=60,
    ) {
        let usage = fit(&rate, usage);
        let mut bigger = usage;
        for (units, extra) in bigger.0.iter_mut().zip(fit(&rate, more).0) {
            *units += extra;
        }
        let one_band = usage.plus(band % (rate.bands.len() + 1), units);
        let before = charge(&rate, &usage, currency);
        prop_assert!(before <= charge(&rate, &bigger, currency));
        prop_assert!(before <= charge(&rate, &one_band, currency));
    }
}
