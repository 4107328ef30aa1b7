//! Ledger memory per account, per subscriber index entry and per open hold, measured with a
//! counting allocator (live requested bytes, without the allocator's own overhead).
//!
//! - accounts with one E.164 subscription each (`4917nnnnnnnn`), one shared customer id,
//!   prepaid, no bundles: bytes per account, subscriber index entry included;
//! - the same accounts without a subscription: the difference is the index's cost per entry;
//! - one open reservation on each account: bytes per hold;
//! - accounts each with their own customer id (`c{i}`): bytes per account.
//!
//! `cargo bench --bench ledger_memory` uses N = 1,000,000; `cargo test --benches` N = 10,000.

use std::sync::atomic::Ordering;

use gyro::catalog::{AccountStatus, Funding, SubscriptionKind};
use gyro::ledger::{AccountId, Ledger, NewAccount, ReservationKey};
use gyro::rating::{Currency, MoneyMinor};

#[path = "support/counting.rs"]
mod counting;
use counting::LIVE;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const NOW: u64 = 1_000_000;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn account(customer: String, msisdn: Option<String>) -> NewAccount {
    NewAccount {
        customer,
        subscriptions: msisdn.map(|m| (SubscriptionKind::E164, m)).into_iter().collect(),
        currency: Currency::EUR,
        funding: Funding::Prepaid,
        status: AccountStatus::Active,
        balance: MoneyMinor(10_000),
        credit_limit: MoneyMinor(0),
        bundles: vec![],
    }
}

/// Creates `n` accounts in a fresh ledger; returns it and the live bytes it grew by. The inputs
/// are built and freed inside the loop, so only what the ledger keeps is counted.
fn fill(n: u32, customer: impl Fn(u32) -> String, msisdn: bool) -> (Ledger, isize) {
    let ledger = Ledger::new();
    let base = live();
    for i in 0..n {
        let msisdn = msisdn.then(|| format!("4917{i:08}"));
        ledger.create(account(customer(i), msisdn)).unwrap();
    }
    let grown = live() - base;
    (ledger, grown)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u32 = if full { 1_000_000 } else { 10_000 };
    let per = |bytes: isize| bytes as f64 / f64::from(n);

    let (ledger, shared) = fill(n, |_| "c".to_string(), true);
    for i in (0..n).step_by(997) {
        assert_eq!(ledger.lookup(SubscriptionKind::E164, &format!("4917{i:08}")), Some(AccountId(i)));
    }

    let base = live();
    for i in 0..n {
        let key = ReservationKey { session: u64::from(i) + 1, rating_group: 10 };
        ledger.reserve(NOW, AccountId(i), key, MoneyMinor(100), None, NOW + 30_000).unwrap();
    }
    let holds = live() - base;
    assert_eq!(ledger.stats().open_reservations, u64::from(n));
    assert!(ledger.check_conservation());
    drop(ledger);

    let (ledger, bare) = fill(n, |_| "c".to_string(), false);
    drop(ledger);
    let (ledger, unique) = fill(n, |i| format!("c{i}"), true);
    drop(ledger);

    println!("ledger memory at {n} accounts (live requested bytes, allocator overhead not counted):");
    println!("  shared customer id, one E.164 each: {:.1} bytes/account (index entry included)", per(shared));
    println!("  shared customer id, no subscription: {:.1} bytes/account", per(bare));
    println!("  subscriber index: {:.1} bytes/E.164 entry (the difference)", per(shared - bare));
    println!("  unique customer ids, one E.164 each: {:.1} bytes/account", per(unique));
    println!("  one open reservation on each account: {:.1} bytes/hold", per(holds));
}
