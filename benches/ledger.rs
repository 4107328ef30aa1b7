//! Ledger benchmarks: reserve + commit on one hot account and spread over 100 k accounts, from
//! one thread and from two; the storage choice (our Mutex shards against `DashMap<u32, _>`);
//! the expiry sweep. Before the benches, a memory report: bytes per account measured with a
//! counting allocator at 100 k accounts, and allocations on the reserve + commit path.
//!
//! Run: `cargo bench --bench ledger`. `cargo test --benches` runs each once as a smoke test.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use dashmap::DashMap;
use gyro::catalog::{AccountStatus, Funding, SubscriptionKind};
use gyro::ledger::{AccountId, Ledger, NewAccount, NewBundle, ReservationKey, ACCOUNTS_PER_CHUNK, SHARDS};
use gyro::rating::{Currency, MoneyMinor};

#[path = "support/counting.rs"]
mod counting;
use counting::{ALLOCATIONS, LIVE};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const EUR: Currency = Currency { code: "EUR", numeric: 978, exponent: 2 };
const ACCOUNTS: u32 = 100_000;
const NOW: u64 = 1_000_000;
const TTL_MS: u64 = 30_000;

fn account(n: u32, realistic: bool) -> NewAccount {
    let (customer, subscriptions, bundles) = if realistic {
        let msisdn = format!("49170{n:08}");
        let bundle = NewBundle { service: "data".into(), units: 10 << 30, expires_at_ms: u64::MAX };
        (format!("customer-{n:07}"), vec![(SubscriptionKind::E164, msisdn)], vec![bundle])
    } else {
        (String::new(), Vec::new(), Vec::new())
    };
    NewAccount {
        customer,
        subscriptions,
        currency: EUR,
        funding: Funding::Prepaid,
        status: AccountStatus::Active,
        balance: MoneyMinor(1 << 40),
        credit_limit: MoneyMinor(0),
        bundles,
    }
}

fn ledger(accounts: u32) -> Ledger {
    let ledger = Ledger::new();
    for n in 0..accounts {
        ledger.create(account(n, false)).unwrap();
    }
    ledger
}

/// Live heap bytes per account at 100 k accounts (the account table's own size included, since
/// it is on the heap), for bare accounts and for ones with a customer id, an MSISDN and a
/// bundle; and the allocations made by 10 k reserve + commit pairs after warm-up.
fn memory_report() {
    for (shape, realistic) in
        [("bare (no subscription, customer or bundle)", false), ("customer + MSISDN + 1 bundle", true)]
    {
        let before = LIVE.load(Ordering::Relaxed);
        let ledger = Ledger::new();
        let empty = LIVE.load(Ordering::Relaxed);
        let input: Vec<NewAccount> = (0..ACCOUNTS).map(|n| account(n, realistic)).collect();
        let (input_bytes, allocations) = (LIVE.load(Ordering::Relaxed), ALLOCATIONS.load(Ordering::Relaxed));
        for new in input {
            ledger.create(new).unwrap();
        }
        // The inputs are freed by now (the strings are copied into the ledger, not moved).
        let after = LIVE.load(Ordering::Relaxed);
        let per_account = (after - empty) as f64 / f64::from(ACCOUNTS);
        let allocations = (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / f64::from(ACCOUNTS);
        println!(
            "ledger memory, {shape}: {per_account:.1} bytes/account at {ACCOUNTS} accounts \
             ({allocations:.2} allocations/account while creating; empty ledger {} bytes; \
             requested sizes, without the allocator's own overhead)",
            empty - before
        );
        assert!(after < input_bytes);
        drop(ledger);
    }

    let ledger = ledger(SHARDS as u32);
    let cycle = |n: u64| {
        let id = AccountId((n % SHARDS as u64) as u32);
        let key = ReservationKey { session: n, rating_group: 1 };
        ledger.reserve(NOW, id, key, MoneyMinor(100), None, NOW + TTL_MS).unwrap();
        ledger.commit(NOW, id, key, MoneyMinor(60), 0).unwrap();
    };
    (0..1_000).for_each(cycle);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    (1_000..11_000).for_each(cycle);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("ledger allocations in 10000 reserve + commit pairs after warm-up: {allocations}");
    assert_eq!(allocations, 0);

    let ledger = Ledger::new();
    for n in 0..1_000 {
        ledger.create(account(n, true)).unwrap();
    }
    let msisdns: Vec<String> = (0..1_000).map(|n| format!("49170{n:08}")).collect();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for msisdn in &msisdns {
        let id = ledger.lookup(SubscriptionKind::E164, msisdn).unwrap();
        black_box(ledger.find_bundle(id, "data", NOW));
        black_box(ledger.available(id).unwrap());
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("ledger allocations in 1000 lookup + find_bundle + available: {allocations}");
    assert_eq!(allocations, 0);
}

fn reserve_commit(ledger: &Ledger, id: AccountId, session: u64) {
    let key = ReservationKey { session, rating_group: 10 };
    ledger.reserve(NOW, id, key, MoneyMinor(100), None, NOW + TTL_MS).unwrap();
    black_box(ledger.commit(NOW, id, key, MoneyMinor(60), 0).unwrap());
}

/// Spreads consecutive operations over the accounts in an order the prefetcher cannot guess.
fn spread(n: u64) -> AccountId {
    AccountId((n.wrapping_mul(2_654_435_761) % u64::from(ACCOUNTS)) as u32)
}

/// `threads` threads each do `iters` reserve + commit pairs; `account` picks the account.
fn parallel(ledger: &Ledger, threads: u64, iters: u64, account: fn(u64) -> AccountId) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                let base = thread << 48;
                for n in 0..iters {
                    reserve_commit(ledger, account(base + n), base + n);
                }
            });
        }
    });
    start.elapsed()
}

fn reserve_commit_benches(c: &mut Criterion) {
    let ledger = ledger(ACCOUNTS);
    let mut g = c.benchmark_group("reserve_commit");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    g.bench_function("one_account/1_thread", |b| {
        b.iter(|| {
            n += 1;
            reserve_commit(&ledger, AccountId(0), n)
        })
    });
    g.bench_function("many_accounts/1_thread", |b| {
        b.iter(|| {
            n += 1;
            reserve_commit(&ledger, spread(n), n)
        })
    });
    // One element = one pair on each of the two threads.
    g.throughput(Throughput::Elements(2));
    g.bench_function("one_account/2_threads", |b| {
        b.iter_custom(|iters| parallel(&ledger, 2, iters, |_| AccountId(0)))
    });
    g.bench_function("many_accounts/2_threads", |b| {
        b.iter_custom(|iters| parallel(&ledger, 2, iters, spread))
    });
    g.finish();
    assert!(ledger.check_conservation());
}

/// The storage choice alone: find a record by dense u32 id and update it, in `DashMap<u32, _>`
/// (default hasher, RwLock shards) against the ledger's layout (id → shard by mask, slot by
/// shift, std Mutex per shard). The record is the size of an `Account`.
fn storage_benches(c: &mut Criterion) {
    type Record = [i64; 5];
    let dashmap: DashMap<u32, Record> = DashMap::new();
    let shards: Box<[Mutex<Vec<Record>>]> = (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect();
    for id in 0..ACCOUNTS {
        dashmap.insert(id, [0; 5]);
        shards[id as usize % SHARDS].lock().unwrap().push([0; 5]);
    }
    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    g.bench_function("dashmap/update", |b| {
        b.iter(|| {
            n += 1;
            let mut record = dashmap.get_mut(&spread(n).0).unwrap();
            record[0] += 1;
            record[1] -= 1;
        })
    });
    g.bench_function("mutex_shards/update", |b| {
        b.iter(|| {
            n += 1;
            let id = spread(n).0 as usize;
            let mut shard = shards[id % SHARDS].lock().unwrap();
            let record = &mut shard[id / SHARDS];
            record[0] += 1;
            record[1] -= 1;
        })
    });
    g.finish();
}

fn expire_benches(c: &mut Criterion) {
    let ledger = ledger(ACCOUNTS);
    let mut g = c.benchmark_group("expire");
    g.bench_function("100k_accounts/nothing_due", |b| b.iter(|| black_box(ledger.expire(NOW)).len()));
    // A reservation committed on one account per shard leaves each shard's minimum stale: the
    // sweep then scans one chunk (128 accounts) per shard and skips the rest. With one per
    // chunk, it scans every account: the worst case.
    let chunk = (SHARDS * ACCOUNTS_PER_CHUNK) as u32;
    let one_per_shard: Vec<AccountId> = (0..SHARDS as u32).map(AccountId).collect();
    let one_per_chunk: Vec<AccountId> =
        (0..ACCOUNTS).step_by(chunk as usize).flat_map(|c| (c..c + SHARDS as u32).map(AccountId)).collect();
    for (name, stale) in [("one_stale_chunk_per_shard", one_per_shard), ("every_chunk_stale", one_per_chunk)]
    {
        g.bench_function(format!("100k_accounts/{name}"), |b| {
            b.iter_batched(
                || {
                    let key = ReservationKey { session: 1, rating_group: 1 };
                    for &id in &stale {
                        ledger.reserve(NOW, id, key, MoneyMinor(1), None, NOW + 1).unwrap();
                        ledger.commit(NOW, id, key, MoneyMinor(1), 0).unwrap();
                    }
                },
                |()| black_box(ledger.expire(NOW + 1)).len(),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn main() {
    memory_report();
    let mut c = Criterion::default().measurement_time(Duration::from_secs(3)).configure_from_args();
    reserve_commit_benches(&mut c);
    storage_benches(&mut c);
    expire_benches(&mut c);
    c.final_summary();
}
