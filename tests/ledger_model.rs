//! The ledger against a naive reference model (a HashMap of holds per account, every sum
//! recomputed on demand), under random operation sequences from a seeded xorshift.
//!
//! - `single_thread_matches_the_model_step_by_step`: every result and every account figure
//!   equals the model's after every operation.
//! - `concurrent_threads_keep_the_order_independent_facts`: 2–4 threads hammer shared accounts
//!   (and each its own), with a sweeper expiring reservations meanwhile. Afterwards the threads'
//!   logs are replayed one after another into the model: the operations on each thread's own
//!   accounts must give identical results; for the shared accounts only facts that do not depend
//!   on the interleaving are checked (balances from the logged successes, exactly-once ends of
//!   reservations, conservation, nothing left reserved).
//!
//! More seeds: `GYRO_LEDGER_MODEL_SEEDS=200 cargo test --release --test ledger_model`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use gyro::catalog::{AccountStatus, Funding, SubscriptionKind};
use gyro::ledger::{
    AccountId, BundleIndex, Committed, Ledger, NewAccount, NewBundle, Reject, ReservationKey,
    ACCOUNTS_PER_CHUNK, AMOUNT_MAX_MINOR, RESERVATIONS_PER_ACCOUNT_MAX, RESERVATION_TTL_MS_MAX, SHARDS,
};
use gyro::rating::{Currency, MoneyMinor};

const EUR: Currency = Currency { code: "EUR", numeric: 978, exponent: 2 };
const START_MS: u64 = 1_000_000;

fn seeds() -> u64 {
    std::env::var("GYRO_LEDGER_MODEL_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6)
}

// ---- random numbers ----

struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---- operations and their results ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    TopUp {
        account: u32,
        key: u64,
        amount: i64,
    },
    Refund {
        account: u32,
        key: u64,
        amount: i64,
    },
    Debit {
        now: u64,
        account: u32,
        key: u64,
        amount: i64,
        allow_overdraft: bool,
    },
    Reserve {
        now: u64,
        account: u32,
        key: ReservationKey,
        money: i64,
        units: Option<(u16, u64)>,
        expires: u64,
    },
    Commit {
        now: u64,
        account: u32,
        key: ReservationKey,
        money: i64,
        units: u64,
    },
    Release {
        account: u32,
        key: ReservationKey,
    },
    SetStatus {
        account: u32,
        barred: bool,
    },
    Expire {
        now: u64,
    },
    Available {
        account: u32,
    },
    FindBundle {
        now: u64,
        account: u32,
        service: &'static str,
    },
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum Out {
    Balance(Result<MoneyMinor, Reject>),
    Committed(Result<Committed, Reject>),
    Done(Result<(), Reject>),
    /// Sorted, so the ledger's sweep order does not matter.
    Expired(Vec<(AccountId, ReservationKey, MoneyMinor, u64)>),
    Found(Option<(BundleIndex, u64)>),
}

impl Op {
    fn account(&self) -> Option<u32> {
        match *self {
            Self::TopUp { account, .. }
            | Self::Refund { account, .. }
            | Self::Debit { account, .. }
            | Self::Reserve { account, .. }
            | Self::Commit { account, .. }
            | Self::Release { account, .. }
            | Self::SetStatus { account, .. }
            | Self::Available { account }
            | Self::FindBundle { account, .. } => Some(account),
            Self::Expire { .. } => None,
        }
    }
}

fn run(ledger: &Ledger, op: Op) -> Out {
    let m = MoneyMinor;
    match op {
        Op::TopUp { account, key, amount } => Out::Balance(ledger.top_up(AccountId(account), key, m(amount))),
        Op::Refund { account, key, amount } => {
            Out::Balance(ledger.refund(AccountId(account), key, m(amount)))
        }
        Op::Debit { now, account, key, amount, allow_overdraft } => {
            Out::Committed(ledger.debit(now, AccountId(account), key, m(amount), allow_overdraft))
        }
        Op::Reserve { now, account, key, money, units, expires } => {
            let units = units.map(|(bundle, units)| (BundleIndex(bundle), units));
            Out::Done(ledger.reserve(now, AccountId(account), key, m(money), units, expires))
        }
        Op::Commit { now, account, key, money, units } => {
            Out::Committed(ledger.commit(now, AccountId(account), key, m(money), units))
        }
        Op::Release { account, key } => Out::Committed(ledger.release(AccountId(account), key)),
        Op::SetStatus { account, barred } => {
            let status = if barred { AccountStatus::Barred } else { AccountStatus::Active };
            Out::Done(ledger.set_status(AccountId(account), status))
        }
        Op::Expire { now } => {
            let mut expired = ledger.expire(now);
            expired.sort_by_key(|(id, key, ..)| (*id, key.session, key.rating_group));
            Out::Expired(expired)
        }
        Op::Available { account } => Out::Balance(ledger.available(AccountId(account))),
        Op::FindBundle { now, account, service } => {
            Out::Found(ledger.find_bundle(AccountId(account), service, now))
        }
    }
}

// ---- the reference model ----

#[derive(Clone, Debug)]
struct ModelBundle {
    service: &'static str,
    remaining: u64,
    expires_at_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct Hold {
    money: i64,
    units: u64,
    bundle: Option<usize>,
    expires_at_ms: u64,
}

#[derive(Clone, Debug)]
struct ModelAccount {
    balance: i64,
    credit_limit: i64,
    barred: bool,
    bundles: Vec<ModelBundle>,
    holds: HashMap<(u64, u32), Hold>,
}

impl ModelAccount {
    fn reserved(&self) -> i64 {
        self.holds.values().map(|h| h.money).sum()
    }
    fn available(&self) -> i64 {
        self.balance + self.credit_limit - self.reserved()
    }
    fn held_units(&self, bundle: usize) -> u64 {
        self.holds.values().filter(|h| h.bundle == Some(bundle)).map(|h| h.units).sum()
    }
    fn free(&self, bundle: usize, now: u64) -> u64 {
        let b = &self.bundles[bundle];
        if now < b.expires_at_ms {
            b.remaining - self.held_units(bundle)
        } else {
            0
        }
    }
}

/// The idempotent operations, as the model remembers them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Keyed(u32, u8, i64, Option<bool>);

#[derive(Default)]
struct Model {
    accounts: HashMap<u32, ModelAccount>,
    keys: HashMap<u64, (Keyed, Out)>,
}

fn valid(amount: i64) -> bool {
    (0..=AMOUNT_MAX_MINOR).contains(&amount)
}

impl Model {
    fn apply(&mut self, op: Op) -> Out {
        match op {
            Op::TopUp { account, key, amount } => self.keyed(key, Keyed(account, 0, amount, None), |a| {
                a.balance += amount;
                Out::Balance(Ok(MoneyMinor(a.balance)))
            }),
            Op::Refund { account, key, amount } => self.keyed(key, Keyed(account, 1, amount, None), |a| {
                a.balance += amount;
                Out::Balance(Ok(MoneyMinor(a.balance)))
            }),
            Op::Debit { account, key, amount, allow_overdraft, .. } => {
                self.keyed(key, Keyed(account, 2, amount, Some(allow_overdraft)), |a| {
                    if a.barred {
                        return Out::Committed(Err(Reject::AccountBarred));
                    }
                    if !allow_overdraft && 0 < amount && a.available() < amount {
                        return Out::Committed(Err(Reject::InsufficientFunds));
                    }
                    a.balance -= amount;
                    let overdraft = 0 < amount && a.available() < 0;
                    Out::Committed(Ok(Committed {
                        debited: MoneyMinor(amount),
                        overdraft,
                        ..Committed::default()
                    }))
                })
            }
            Op::Reserve { now, account, key, money, units, expires } => {
                Out::Done(self.reserve(now, account, key, money, units, expires))
            }
            Op::Commit { now, account, key, money, units } => {
                Out::Committed(self.commit(now, account, key, money, units))
            }
            Op::Release { account, key } => Out::Committed(self.release(account, key)),
            Op::SetStatus { account, barred } => Out::Done(match self.accounts.get_mut(&account) {
                Some(a) => {
                    a.barred = barred;
                    Ok(())
                }
                None => Err(Reject::AccountNotFound),
            }),
            Op::Expire { now } => {
                let mut expired = Vec::new();
                for (&id, a) in self.accounts.iter_mut() {
                    let due: Vec<(u64, u32)> =
                        a.holds.iter().filter(|(_, h)| h.expires_at_ms <= now).map(|(k, _)| *k).collect();
                    for (session, rating_group) in due {
                        let hold = a.holds.remove(&(session, rating_group)).unwrap();
                        let key = ReservationKey { session, rating_group };
                        expired.push((AccountId(id), key, MoneyMinor(hold.money), hold.units));
                    }
                }
                expired.sort_by_key(|(id, key, ..)| (*id, key.session, key.rating_group));
                Out::Expired(expired)
            }
            Op::Available { account } => Out::Balance(match self.accounts.get(&account) {
                Some(a) => Ok(MoneyMinor(a.available().max(0))),
                None => Err(Reject::AccountNotFound),
            }),
            Op::FindBundle { now, account, service } => {
                Out::Found(self.accounts.get(&account).and_then(|a| {
                    (0..a.bundles.len())
                        .find(|&i| a.bundles[i].service == service && 0 < a.free(i, now))
                        .map(|i| (BundleIndex(i as u16), a.free(i, now)))
                }))
            }
        }
    }

    fn keyed(&mut self, key: u64, op: Keyed, apply: impl FnOnce(&mut ModelAccount) -> Out) -> Out {
        let refused =
            |reject| if op.1 == 2 { Out::Committed(Err(reject)) } else { Out::Balance(Err(reject)) };
        if !valid(op.2) {
            return refused(Reject::AmountInvalid);
        }
        if let Some((known, out)) = self.keys.get(&key) {
            return if *known == op { out.clone() } else { refused(Reject::KeyReused) };
        }
        let Some(account) = self.accounts.get_mut(&op.0) else { return refused(Reject::AccountNotFound) };
        let out = apply(account);
        if matches!(out, Out::Balance(Ok(_)) | Out::Committed(Ok(_))) {
            self.keys.insert(key, (op, out.clone()));
        }
        out
    }

    fn reserve(
        &mut self,
        now: u64,
        account: u32,
        key: ReservationKey,
        money: i64,
        units: Option<(u16, u64)>,
        expires: u64,
    ) -> Result<(), Reject> {
        if !valid(money) {
            return Err(Reject::AmountInvalid);
        }
        let a = self.accounts.get_mut(&account).ok_or(Reject::AccountNotFound)?;
        if a.barred {
            return Err(Reject::AccountBarred);
        }
        if a.holds.contains_key(&(key.session, key.rating_group)) {
            return Err(Reject::ReservationExists);
        }
        if let Some((bundle, _)) = units {
            if a.bundles.len() <= usize::from(bundle) {
                return Err(Reject::BundleNotFound);
            }
        }
        if 0 < money && a.available() < money {
            return Err(Reject::InsufficientFunds);
        }
        if let Some((bundle, units)) = units {
            if a.free(usize::from(bundle), now) < units {
                return Err(Reject::InsufficientUnits);
            }
        }
        if a.holds.len() == RESERVATIONS_PER_ACCOUNT_MAX {
            return Err(Reject::LimitReached);
        }
        let (bundle, units) = match units {
            Some((bundle, units)) => (Some(usize::from(bundle)), units),
            None => (None, 0),
        };
        a.holds
            .insert((key.session, key.rating_group), Hold { money, units, bundle, expires_at_ms: expires });
        Ok(())
    }

    fn commit(
        &mut self,
        now: u64,
        account: u32,
        key: ReservationKey,
        money: i64,
        units: u64,
    ) -> Result<Committed, Reject> {
        if !valid(money) {
            return Err(Reject::AmountInvalid);
        }
        let a = self.accounts.get_mut(&account).ok_or(Reject::AccountNotFound)?;
        let hold = *a.holds.get(&(key.session, key.rating_group)).ok_or(Reject::ReservationNotFound)?;
        let from_hold = units.min(hold.units);
        let from_free = match hold.bundle {
            Some(bundle) => (units - from_hold).min(a.free(bundle, now)),
            None => 0,
        };
        if let Some(bundle) = hold.bundle {
            a.bundles[bundle].remaining -= from_hold + from_free;
        }
        a.holds.remove(&(key.session, key.rating_group));
        a.balance -= money;
        Ok(Committed {
            debited: MoneyMinor(money),
            released: MoneyMinor((hold.money - money).max(0)),
            units_used: from_hold + from_free,
            units_released: hold.units - from_hold,
            units_unpaid: units - from_hold - from_free,
            overdraft: hold.money < money && a.available() < 0,
        })
    }

    fn release(&mut self, account: u32, key: ReservationKey) -> Result<Committed, Reject> {
        let a = self.accounts.get_mut(&account).ok_or(Reject::AccountNotFound)?;
        let hold = a.holds.remove(&(key.session, key.rating_group)).ok_or(Reject::ReservationNotFound)?;
        Ok(Committed { released: MoneyMinor(hold.money), units_released: hold.units, ..Committed::default() })
    }

    /// Every figure of the ledger's view of `account` equals the model's.
    fn assert_matches(&self, ledger: &Ledger, account: u32, context: &dyn std::fmt::Debug) {
        let a = &self.accounts[&account];
        let view = ledger.view(AccountId(account)).unwrap();
        let expected = (a.balance, a.reserved(), a.available().max(0), a.holds.len(), a.barred);
        let actual = (
            view.balance.0,
            view.reserved.0,
            view.available.0,
            view.reservations,
            view.status == AccountStatus::Barred,
        );
        assert_eq!(actual, expected, "account {account} after {context:?}");
        for (i, bundle) in view.bundles.iter().enumerate() {
            let expected = (a.bundles[i].remaining, a.held_units(i));
            assert_eq!(
                (bundle.remaining, bundle.reserved),
                expected,
                "account {account} bundle {i} after {context:?}"
            );
        }
    }
}

// ---- accounts ----

struct Spec {
    balance: i64,
    credit_limit: i64,
    bundles: Vec<(&'static str, u64, u64)>,
}

fn create(ledger: &Ledger, model: &mut Model, name: &str, spec: &Spec) -> u32 {
    let funding = if spec.credit_limit == 0 { Funding::Prepaid } else { Funding::OnFile };
    let bundles = spec.bundles.iter().map(|&(service, units, expires_at_ms)| NewBundle {
        service: service.into(),
        units,
        expires_at_ms,
    });
    let new = NewAccount {
        customer: name.into(),
        subscriptions: vec![(SubscriptionKind::E164, name.into())],
        currency: EUR,
        funding,
        status: AccountStatus::Active,
        balance: MoneyMinor(spec.balance),
        credit_limit: MoneyMinor(spec.credit_limit),
        bundles: bundles.collect(),
    };
    let id = ledger.create(new).unwrap().0;
    let bundles = spec.bundles.iter().map(|&(service, remaining, expires_at_ms)| ModelBundle {
        service,
        remaining,
        expires_at_ms,
    });
    let account = ModelAccount {
        balance: spec.balance,
        credit_limit: spec.credit_limit,
        barred: false,
        bundles: bundles.collect(),
        holds: HashMap::new(),
    };
    model.accounts.insert(id, account);
    id
}

fn filler(n: u32) -> NewAccount {
    NewAccount {
        customer: String::new(),
        subscriptions: vec![(SubscriptionKind::Private, n.to_string())],
        currency: EUR,
        funding: Funding::Prepaid,
        status: AccountStatus::Active,
        balance: MoneyMinor(100),
        credit_limit: MoneyMinor(0),
        bundles: Vec::new(),
    }
}

fn small_accounts() -> Vec<Spec> {
    let t = START_MS;
    vec![
        Spec {
            balance: 500,
            credit_limit: 0,
            bundles: vec![("data", 300, t + 2_000), ("data", 200, u64::MAX), ("voice", 100, t + 5_000)],
        },
        Spec { balance: 0, credit_limit: 1_000, bundles: vec![] },
        Spec { balance: 50, credit_limit: 0, bundles: vec![("voice", 60, t + 1_000)] },
        Spec { balance: 0, credit_limit: 0, bundles: vec![("data", 1_000, u64::MAX)] },
    ]
}

// ---- single thread, step by step ----

/// `ids` are the accounts in play; `missing` is an id that does not exist.
fn random_op(rng: &mut XorShift, now: u64, ids: &[u32], missing: u32) -> Op {
    let pick = |rng: &mut XorShift| ids[rng.below(ids.len() as u64) as usize];
    let account = if rng.chance(5) { missing } else { pick(rng) };
    let key = ReservationKey { session: rng.below(3), rating_group: rng.below(2) as u32 };
    let amount = |rng: &mut XorShift| if rng.chance(3) { -1 } else { rng.below(200) as i64 };
    let units = |rng: &mut XorShift| rng.chance(60).then(|| (rng.below(4) as u16, rng.below(150)));
    // Idempotency keys: mostly one fixed operation per key (so repeats are retransmissions),
    // sometimes a random one (so repeats are KeyReused).
    let (keyed_account, idempotency_key, keyed_amount) = if rng.chance(70) {
        let key = rng.below(60);
        let account = ids.get(key as usize % (ids.len() + 1)).copied().unwrap_or(missing);
        (account, key, (key * 37 % 200) as i64)
    } else {
        (account, rng.below(60), amount(rng))
    };
    match rng.below(100) {
        0..=9 => Op::TopUp { account: keyed_account, key: idempotency_key, amount: keyed_amount },
        10..=13 => Op::Refund { account: keyed_account, key: idempotency_key + 1_000, amount: keyed_amount },
        14..=21 => {
            let allow_overdraft = idempotency_key % 2 == 0;
            Op::Debit {
                now,
                account: keyed_account,
                key: idempotency_key + 2_000,
                amount: keyed_amount,
                allow_overdraft,
            }
        }
        22..=49 => {
            let expires = now + 1 + rng.below(400);
            Op::Reserve { now, account, key, money: amount(rng), units: units(rng), expires }
        }
        50..=71 => Op::Commit { now, account, key, money: amount(rng), units: rng.below(200) },
        72..=79 => Op::Release { account, key },
        80..=83 => Op::SetStatus { account, barred: rng.chance(25) },
        84..=89 => Op::Expire { now },
        90..=94 => Op::Available { account },
        _ => Op::FindBundle { now, account, service: if rng.chance(50) { "data" } else { "voice" } },
    }
}

#[test]
fn single_thread_matches_the_model_step_by_step() {
    for seed in 0..seeds() * 4 {
        let mut rng = XorShift::new(seed);
        let ledger = Ledger::new();
        let mut model = Model::default();
        // The accounts in play sit in two chunks of shard 0 and of shard 1, among untouched
        // ones, so the sweep's per-shard and per-chunk minimums are both exercised.
        let chunk = (SHARDS * ACCOUNTS_PER_CHUNK) as u32;
        let placed = [0, 1, chunk, chunk + SHARDS as u32 + 1];
        let mut specs = small_accounts().into_iter();
        let mut ids = Vec::new();
        for n in 0..=placed[3] {
            if placed.contains(&n) {
                ids.push(create(&ledger, &mut model, &format!("4917{n:08}"), &specs.next().unwrap()));
            } else {
                ledger.create(filler(n)).unwrap();
            }
        }
        assert_eq!(ids, placed);
        let missing = placed[3] + 1;
        let mut now = START_MS;
        for step in 0..3_000 {
            now += rng.below(20);
            let op = random_op(&mut rng, now, &ids, missing);
            let expected = model.apply(op);
            let actual = run(&ledger, op);
            assert_eq!(actual, expected, "seed {seed} step {step}: {op:?}");
            for &account in &ids {
                model.assert_matches(&ledger, account, &(seed, step, op));
            }
            if step % 100 == 0 {
                assert!(ledger.check_conservation(), "seed {seed} step {step}");
            }
        }
        assert_eq!(run(&ledger, Op::Expire { now: u64::MAX }), model.apply(Op::Expire { now: u64::MAX }));
        let stats = ledger.stats();
        assert_eq!(stats.open_reservations, 0);
        assert_eq!(stats.reserved_money_by_currency, vec![(EUR, MoneyMinor(0))]);
        assert!(ledger.check_conservation());
    }
}

// ---- concurrent threads ----

/// What a worker knows about a reservation it opened.
#[derive(Clone, Copy, Debug)]
struct Opened {
    account: u32,
    key: ReservationKey,
    hold: Hold,
}

struct Worker<'a> {
    ledger: &'a Ledger,
    clock: &'a AtomicU64,
    /// What every `expire` call returned, the sweeper's and the workers' own.
    expired: &'a Mutex<Vec<(AccountId, ReservationKey, MoneyMinor, u64)>>,
    thread: u64,
    rng: XorShift,
    owned: Vec<u32>,
    shared: Vec<u32>,
    log: Vec<(Op, Out)>,
    open: Vec<Opened>,
    /// Every reservation opened (and which account and bundle it held on).
    opened: Vec<Opened>,
    keyed: Vec<(Op, Out)>,
    next: u64,
}

impl Worker<'_> {
    fn fresh(&mut self) -> u64 {
        self.next += 1;
        (self.thread << 40) | self.next
    }

    fn step(&mut self) {
        // Time moves with the work, so the sweeper finds reservations due while others run.
        let now = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        let on_shared = self.rng.chance(60);
        let accounts = if on_shared { &self.shared } else { &self.owned };
        let account = accounts[self.rng.below(accounts.len() as u64) as usize];
        let amount = self.rng.below(120) as i64;
        let op = match self.rng.below(100) {
            0..=34 => {
                let key = ReservationKey { session: self.fresh(), rating_group: self.rng.below(3) as u32 };
                // Only the shared accounts' reservations are left to the sweeper.
                let expires =
                    if on_shared { now + 1 + self.rng.below(30) } else { now + RESERVATION_TTL_MS_MAX };
                let units = self.rng.chance(50).then(|| (0, self.rng.below(80)));
                Op::Reserve { now, account, key, money: amount, units, expires }
            }
            35..=64 if !self.open.is_empty() => {
                let o = self.open[self.rng.below(self.open.len() as u64) as usize];
                let money = (o.hold.money + self.rng.below(60) as i64 - 30).max(0);
                Op::Commit {
                    now,
                    account: o.account,
                    key: o.key,
                    money,
                    units: self.rng.below(o.hold.units + 40),
                }
            }
            65..=74 if !self.open.is_empty() => {
                let o = self.open[self.rng.below(self.open.len() as u64) as usize];
                Op::Release { account: o.account, key: o.key }
            }
            75..=79 if !self.keyed.is_empty() => {
                // A retransmission: the same operation under the same key.
                let (op, out) = self.keyed[self.rng.below(self.keyed.len() as u64) as usize].clone();
                assert_eq!(run(self.ledger, op), out, "a replay of {op:?} must return the original result");
                self.log.push((op, out));
                return;
            }
            80..=85 => Op::TopUp { account, key: self.fresh(), amount },
            86..=88 => Op::Refund { account, key: self.fresh(), amount },
            89..=96 => {
                let allow_overdraft = self.rng.chance(30);
                Op::Debit { now, account, key: self.fresh(), amount, allow_overdraft }
            }
            97 if !on_shared => Op::SetStatus { account, barred: self.rng.chance(30) },
            98 => {
                // Sweeps race each other as well as the operations.
                let expired = self.ledger.expire(now);
                self.expired.lock().unwrap().extend(expired);
                return;
            }
            _ => Op::Available { account },
        };
        let out = run(self.ledger, op);
        self.note(op, &out);
        self.log.push((op, out));
    }

    fn note(&mut self, op: Op, out: &Out) {
        match (op, out) {
            (Op::Reserve { account, key, money, units, expires, .. }, Out::Done(Ok(()))) => {
                let (bundle, units) = units.map_or((None, 0), |(b, u)| (Some(usize::from(b)), u));
                let opened =
                    Opened { account, key, hold: Hold { money, units, bundle, expires_at_ms: expires } };
                self.open.push(opened);
                self.opened.push(opened);
            }
            (Op::Commit { key, .. } | Op::Release { key, .. }, Out::Committed(result)) => {
                let position =
                    self.open.iter().position(|o| o.key == key).expect("only our own are committed");
                let o = self.open.swap_remove(position);
                match result {
                    Ok(_) => {}
                    // Only the sweeper may have ended it first, and only on a shared account.
                    Err(Reject::ReservationNotFound) => assert!(self.shared.contains(&o.account), "{op:?}"),
                    Err(reject) => panic!("{op:?} refused: {reject:?}"),
                }
            }
            // Refusals are not remembered by the ledger (a retry is judged afresh), so only
            // successes are retransmitted with the promise of the same answer.
            (Op::TopUp { .. } | Op::Refund { .. }, Out::Balance(Ok(_)))
            | (Op::Debit { .. }, Out::Committed(Ok(_))) => self.keyed.push((op, out.clone())),
            _ => {}
        }
    }
}

#[test]
fn concurrent_threads_keep_the_order_independent_facts() {
    for threads in 2..=4u64 {
        for seed in 0..seeds() {
            concurrent_run(threads, seed);
        }
    }
}

fn concurrent_run(threads: u64, seed: u64) {
    let ledger = Ledger::new();
    let mut model = Model::default();
    let shared_spec = || Spec { balance: 5_000, credit_limit: 0, bundles: vec![("data", 10_000, u64::MAX)] };
    let shared: Vec<u32> =
        (0..3).map(|n| create(&ledger, &mut model, &format!("shared-{n}"), &shared_spec())).collect();
    let owned: Vec<Vec<u32>> = (0..threads)
        .map(|t| {
            let specs = small_accounts();
            let ids = specs
                .iter()
                .enumerate()
                .map(|(n, spec)| create(&ledger, &mut model, &format!("own-{t}-{n}"), spec));
            ids.collect()
        })
        .collect();
    let initial = model.accounts.clone();
    let clock = AtomicU64::new(START_MS);
    let done = AtomicBool::new(false);
    let expired_all = Mutex::new(Vec::new());

    let workers: Vec<Worker<'_>> = std::thread::scope(|scope| {
        let sweeper = scope.spawn(|| {
            while !done.load(Ordering::Acquire) {
                let expired = ledger.expire(clock.load(Ordering::Acquire));
                expired_all.lock().unwrap().extend(expired);
                std::thread::yield_now();
            }
        });
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mut worker = Worker {
                    ledger: &ledger,
                    clock: &clock,
                    expired: &expired_all,
                    thread: t + 1,
                    rng: XorShift::new(seed * 1_000 + t),
                    owned: owned[t as usize].clone(),
                    shared: shared.clone(),
                    log: Vec::new(),
                    open: Vec::new(),
                    opened: Vec::new(),
                    keyed: Vec::new(),
                    next: 0,
                };
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        worker.step();
                    }
                    worker
                })
            })
            .collect();
        let workers = handles.into_iter().map(|h| h.join().unwrap()).collect();
        done.store(true, Ordering::Release);
        sweeper.join().unwrap();
        workers
    });
    let context = format!("{threads} threads, seed {seed}");

    // Every reservation on a shared account is due by now: a sweep must find them all (one
    // whose deadline the shard minimum lost would survive it).
    let last_deadline = clock.load(Ordering::Acquire) + 31;
    expired_all.lock().unwrap().extend(ledger.expire(last_deadline));
    let mut workers = workers;
    for worker in &mut workers {
        for o in std::mem::take(&mut worker.open) {
            let op = Op::Release { account: o.account, key: o.key };
            let out = run(&ledger, op);
            match &out {
                Out::Committed(Ok(_)) if worker.owned.contains(&o.account) => {}
                Out::Committed(Err(Reject::ReservationNotFound)) if shared.contains(&o.account) => {}
                other => panic!("{context}: closing {o:?} gave {other:?}"),
            }
            worker.log.push((op, out));
        }
    }

    // 1. The workers' own accounts: replaying each log in turn into the model gives the same
    //    results, step by step, and the same final accounts.
    for worker in &workers {
        for (step, (op, out)) in worker.log.iter().enumerate() {
            if op.account().is_some_and(|a| worker.owned.contains(&a)) {
                assert_eq!(&model.apply(*op), out, "{context}: thread {} step {step}: {op:?}", worker.thread);
            }
        }
        for &account in &worker.owned {
            model.assert_matches(&ledger, account, &context);
        }
    }

    // 2. Every reservation ended exactly once: committed or released by its owner, or expired.
    let mut ended: HashMap<(u32, u64, u32), usize> = HashMap::new();
    for worker in &workers {
        for (op, out) in &worker.log {
            if let (Op::Commit { account, key, .. } | Op::Release { account, key }, Out::Committed(Ok(_))) =
                (op, out)
            {
                *ended.entry((*account, key.session, key.rating_group)).or_default() += 1;
            }
        }
    }
    let expired_all = std::mem::take(&mut *expired_all.lock().unwrap());
    for (id, key, ..) in &expired_all {
        *ended.entry((id.0, key.session, key.rating_group)).or_default() += 1;
    }
    let opened: BTreeSet<(u32, u64, u32)> = workers
        .iter()
        .flat_map(|w| w.opened.iter().map(|o| (o.account, o.key.session, o.key.rating_group)))
        .collect();
    assert_eq!(
        opened.len(),
        workers.iter().map(|w| w.opened.len()).sum::<usize>(),
        "{context}: keys are fresh"
    );
    for key in &opened {
        assert_eq!(ended.get(key), Some(&1), "{context}: reservation {key:?} must end exactly once");
    }
    assert_eq!(ended.len(), opened.len(), "{context}: nothing ended that was not opened");

    // 3. The shared accounts: balances and bundles from the logged successes (each key once),
    //    and every commit's result consistent with what it held.
    let mut balance: HashMap<u32, i64> = shared.iter().map(|&a| (a, initial[&a].balance)).collect();
    let mut units_used: HashMap<u32, u64> = HashMap::new();
    for worker in &workers {
        let holds: HashMap<u64, Opened> = worker.opened.iter().map(|o| (o.key.session, *o)).collect();
        let mut counted = BTreeSet::new();
        for (op, out) in &worker.log {
            let Some(account) = op.account().filter(|a| shared.contains(a)) else { continue };
            match (*op, out) {
                // Retransmissions (the same key again) moved nothing: count each key once.
                (Op::TopUp { key, amount, .. } | Op::Refund { key, amount, .. }, Out::Balance(Ok(_)))
                    if counted.insert(key) =>
                {
                    *balance.get_mut(&account).unwrap() += amount;
                }
                (Op::Debit { key, amount, .. }, Out::Committed(Ok(c))) => {
                    assert_eq!(c.debited.0, amount);
                    if counted.insert(key) {
                        *balance.get_mut(&account).unwrap() -= amount;
                    }
                }
                (Op::Commit { key, money, units, .. }, Out::Committed(Ok(c))) => {
                    let hold = holds[&key.session].hold;
                    assert_eq!(c.debited.0, money, "{context}");
                    assert_eq!(c.released.0, (hold.money - money).max(0), "{context}");
                    assert_eq!(c.units_used + c.units_unpaid, units, "{context}");
                    assert_eq!(c.units_released, hold.units - units.min(hold.units), "{context}");
                    assert!(units.min(hold.units) <= c.units_used, "{context}: held units are always usable");
                    *balance.get_mut(&account).unwrap() -= money;
                    *units_used.entry(account).or_default() += c.units_used;
                }
                _ => {}
            }
        }
    }
    for &account in &shared {
        let view = ledger.view(AccountId(account)).unwrap();
        assert_eq!(view.balance.0, balance[&account], "{context}: shared account {account} balance");
        let bundle = &view.bundles[0];
        let used = units_used.get(&account).copied().unwrap_or(0);
        assert_eq!((bundle.remaining, bundle.reserved), (10_000 - used, 0), "{context}: shared bundle");
        assert_eq!((view.reserved.0, view.reservations), (0, 0), "{context}");
    }

    // 4. Ledger-wide: conserved, nothing open, nothing held.
    assert!(ledger.check_conservation(), "{context}");
    let stats = ledger.stats();
    assert_eq!(stats.open_reservations, 0, "{context}");
    assert_eq!(stats.reserved_money_by_currency, vec![(EUR, MoneyMinor(0))], "{context}");
}
