//! The ledger: accounts, balances, bundles and two-phase reservations, lock-sharded.
//!
//! Money is integer minor units (`MoneyMinor`) of the account's currency. A grant of quota is a
//! *pending* reservation (money and/or bundle units held), later *committed* with the usage
//! (the used part debited, the rest released) or *released*, or *expired* past its deadline.
//! Every reservation ends exactly once. Invariants, asserted after every mutation:
//! - per account: reserved money = Σ its open reservations' money; per bundle likewise;
//! - balance + credit_limit − reserved ≥ 0, except through `commit` of usage above the hold
//!   (late usage is charged, never dropped: the account may go into overdraft, flagged);
//! - conservation: Σ balances + Σ debited = Σ funded (initial balances, top-ups, refunds).
//!
//! # What it owns, and what it must not touch
//! The ledger owns account state and nothing else: no I/O, no clock (every `now_ms` is passed
//! in), no Diameter. It is shared as `Arc<Ledger>`; every method takes `&self`, is synchronous
//! and short, and holds a lock for one operation only, so callers on async tasks may call it
//! inline (never across an `.await`, which the synchronous API makes impossible anyway).
//!
//! # Layout and locking
//! Account ids are dense: account `n` lives in shard `n % SHARDS`, at slot `n / SHARDS`, in
//! chunks of [`ACCOUNTS_PER_CHUNK`] that never move once allocated. Each shard is a
//! `std::sync::Mutex` (held for microseconds, so a blocking mutex is right here, as mini-redis
//! `db.rs` argues) over the accounts, their holds and extras, plus that shard's share of the
//! ledger-wide sums. A reservation lives in its account's shard, so one lock covers the
//! account, its bundles and its holds. We use our own shards rather than
//! `DashMap<u32, Account>`: indexing is arithmetic instead of hashing, each shard carries its
//! own sums and expiry deadline, and it is faster: the bench (`benches/ledger.rs`, group
//! `storage`) finds and updates a record among 100 k in about 18 ns, against about 40 ns for
//! `DashMap` with its default hasher (measured with the former 88-byte record).
//!
//! # Memory per account
//! The product's target is at most 80 bytes per account, its subscriber index entry included,
//! at 1M accounts (`benches/ledger_memory.rs` measures it with a counting allocator). A record
//! that kept its holds in a `Vec`, its bundles in a `Box<[Bundle]>`, its customer id in a
//! `Box<str>` and its credit limit came to 88 bytes plus allocations, and the MSISDN in a
//! `DashMap<Box<str>, AccountId>` to about 60 more. So the record every account has is 40
//! bytes (`account.rs`): balance, held money, and small references to what lives beside it,
//! where only the accounts that have something pay for it:
//! - its open reservations: 40-byte slots in a per-shard slab (`holds.rs`), linked into one
//!   list per account from the record, with a 2-byte count beside the head; freed slots are
//!   reused first, so reserve and commit allocate nothing once the shard has had as many holds
//!   open at once. The expiry sweep walks the lists of one chunk of accounts per lock
//!   acquisition, as before;
//! - its bundles and credit limit (most prepaid accounts have neither): an entry in a
//!   per-shard table of extras, none meaning no bundles and a credit limit of 0;
//! - its customer id: an 8-byte span of the ledger's customer text (`customers.rs`), where
//!   accounts of one customer created together share one copy; a table of every distinct id
//!   would cost more per id than most ids are long;
//!
//! and its currency slot, funding and status, one byte each, in what would be padding. The
//! subscriber index (`index.rs`) keeps E.164 and IMSI ids that are digit strings as numbers,
//! in a sharded hash table of 12-byte entries: about 27 bytes per entry at 1M. The slab, the
//! extras and the customer text are stored in chunks or pages that never move either.
//!
//! Lock order: the creation lock before an account shard (`create`); an idempotency-key shard
//! before an account shard (`top_up`, `refund`, `debit`). The subscriber index (a read-write
//! lock per numeric shard, and `DashMap`s) and the customer table (a read-write lock) are
//! locked alone or under the creation lock: `view` reads the customer table after releasing
//! its shard. No path holds two account shards or two key shards.
//!
//! # Assertions
//! The invariants are checked with `assert!` (not `debug_assert!`) after every mutation: the
//! amounts moved exactly by the operation's effect, ranges, available funds, bundles (O(1) and
//! O(bundles)), and the shard sums. The walk of the account's whole hold list (every link, the
//! sum of held money and units) runs after one mutation in `FULL_CHECK_EVERY` (16) per shard in
//! release builds and after every one in debug builds and tests: linear in the account's holds,
//! each a likely cache miss, it took a fifth of the server's CPU with ten sessions per account
//! (perf, 100 000 sessions on 10 000 accounts). Measured with callgrind (with the former
//! layout), all checks were about 265 of the 555 instructions of a reserve + commit pair on an
//! account with one hold. A failed assertion
//! is a bug: it panics while holding the shard lock, which poisons that shard, so every later
//! operation on its accounts panics too (the connection answers 5012) rather than running on
//! state known to be wrong.

mod account;
mod customers;
mod holds;
mod index;
mod keys;
mod shard;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use crate::catalog::{AccountStatus, Funding, SubscriptionKind};
use crate::rating::{Currency, MoneyMinor};

use account::{Account, AccountMut, Bundle};
use customers::Customers;
use index::SubscriberIndex;
use keys::{KeyedKind, KeyedOp, Keys, Outcome};
use shard::ShardSlot;

/// Shards of the account table; a power of two so the shard is a mask of the id.
pub const SHARDS: usize = 64;

/// Accounts per storage chunk. Chunks are allocated whole and never move, so adding an account
/// never copies the others while a shard lock is held; the expiry sweep also takes the lock
/// once per chunk, which bounds how long it holds it.
pub const ACCOUNTS_PER_CHUNK: usize = 128;

/// Most accounts one ledger holds (ids are u32).
pub const ACCOUNTS_MAX: u32 = 1 << 26;

/// Most open reservations on one account (a few per session: one per rating group).
pub const RESERVATIONS_PER_ACCOUNT_MAX: usize = 256;

/// Most bundles on one account.
pub const BUNDLES_PER_ACCOUNT_MAX: usize = 64;

/// Most subscription ids that lead to one account.
pub const SUBSCRIPTIONS_PER_ACCOUNT_MAX: usize = 8;

/// Distinct currencies in one ledger; also bounds the per-currency metric series.
pub const CURRENCIES_MAX: usize = 16;

/// Distinct bundle service names in one ledger (they are interned and shared by accounts).
pub const SERVICE_NAMES_MAX: usize = 1024;

/// Longest subscription id data (SIP URIs and NAIs are the long ones), customer id and service
/// name we store.
pub const SUBSCRIPTION_DATA_MAX_BYTES: usize = 256;
pub const CUSTOMER_ID_MAX_BYTES: usize = 256;
pub const SERVICE_NAME_MAX_BYTES: usize = 64;

/// Largest single amount (top-up, refund, debit, hold or usage): 10^15 minor units, ten
/// trillion euros in cents. Anything larger is refused as `AmountInvalid`, which is what keeps
/// every sum below from overflowing.
pub const AMOUNT_MAX_MINOR: i64 = 1_000_000_000_000_000;

/// Largest balance (or debt) an account may reach.
pub const BALANCE_MAX_MINOR: i64 = 100 * AMOUNT_MAX_MINOR;

/// Furthest in the future a reservation's deadline may be (Validity-Time plus grace).
pub const RESERVATION_TTL_MS_MAX: u64 = 24 * 3600 * 1000;

/// Idempotency keys of top-ups, refunds and debits remembered, across the ledger. At least as
/// many as the transport duplicate cache, so a retransmission that cache has forgotten is still
/// recognised here.
pub const IDEMPOTENCY_KEYS_MAX: usize = 262_144;

/// Shards of the idempotency-key table; a power of two.
pub const KEY_SHARDS: usize = 64;

const _: () = assert!(SHARDS.is_power_of_two());
const _: () = assert!(KEY_SHARDS.is_power_of_two());
const _: () = assert!(IDEMPOTENCY_KEYS_MAX.is_multiple_of(KEY_SHARDS));
const _: () = assert!(IDEMPOTENCY_KEYS_MAX >= crate::limits::DUPLICATE_ENTRIES_MAX);
const _: () = assert!((ACCOUNTS_MAX as usize).is_multiple_of(SHARDS * ACCOUNTS_PER_CHUNK));
// Bundle indexes are u16 in the API (and a u8 inside a hold, checked in `holds`).
const _: () = assert!(BUNDLES_PER_ACCOUNT_MAX < u16::MAX as usize);
const _: () = assert!(CURRENCIES_MAX <= u8::MAX as usize);
const _: () = assert!(RESERVATIONS_PER_ACCOUNT_MAX <= u16::MAX as usize);
// balance + credit_limit − reserved, and a balance moved by one amount, never overflow i64.
const _: () = assert!(
    (BALANCE_MAX_MINOR as i128) * 2 + (RESERVATIONS_PER_ACCOUNT_MAX as i128 + 1) * (AMOUNT_MAX_MINOR as i128)
        < i64::MAX as i128
);

/// Dense account number, assigned at creation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct AccountId(pub u32);

/// Identifies a reservation: one per (session, rating group). `session` is a 64-bit hash of
/// the Session-Id computed by `cc`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ReservationKey {
    pub session: u64,
    pub rating_group: u32,
}

/// Index of a bundle inside its account.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BundleIndex(pub u16);

/// What to create an account with.
///
/// Prepaid accounts start with `balance ≥ 0` and `credit_limit = 0`; on-file accounts start
/// with `balance = 0` and a `credit_limit ≥ 0` they may use. Anything else is `FundingInvalid`.
#[derive(Clone, Debug)]
pub struct NewAccount {
    pub customer: String,
    pub subscriptions: Vec<(SubscriptionKind, String)>,
    pub currency: Currency,
    pub funding: Funding,
    pub status: AccountStatus,
    pub balance: MoneyMinor,
    pub credit_limit: MoneyMinor,
    pub bundles: Vec<NewBundle>,
}

#[derive(Clone, Debug)]
pub struct NewBundle {
    /// The plan service name the units are for.
    pub service: String,
    pub units: u64,
    /// Milliseconds on the same clock as every `now_ms` passed in; u64::MAX = never. The bundle
    /// is usable while `now_ms < expires_at_ms`.
    pub expires_at_ms: u64,
}

/// Why an operation was refused (a status, not an error: these are business outcomes).
/// Listed in precedence order: when several apply, the first one listed is returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reject {
    /// An amount is negative, above [`AMOUNT_MAX_MINOR`], or would take the balance beyond
    /// [`BALANCE_MAX_MINOR`].
    AmountInvalid,
    /// The idempotency key was already used for a different operation (another account, amount
    /// or kind). A retransmission of the same operation is not refused: it gets the original
    /// result.
    KeyReused,
    AccountNotFound,
    AccountBarred,
    /// Never produced by the ledger itself (amounts carry no currency); kept for `cc`.
    CurrencyMismatch,
    ReservationExists,
    ReservationNotFound,
    BundleNotFound,
    InsufficientFunds,
    InsufficientUnits,
    LimitReached,
}

/// What `commit` (and `release`, `debit`) did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Committed {
    pub debited: MoneyMinor,
    pub released: MoneyMinor,
    /// Bundle units consumed (from the hold, then from the bundle's free units).
    pub units_used: u64,
    pub units_released: u64,
    /// Units reported used that the bundle could not cover (beyond the hold and its free
    /// units, or a reservation without a bundle): the caller prices them in money.
    pub units_unpaid: u64,
    /// The debit went beyond what was held and beyond the available funds: afterwards
    /// balance + credit_limit − reserved < 0.
    pub overdraft: bool,
}

/// A snapshot of an account for answers and tools.
#[derive(Clone, Debug)]
pub struct AccountView {
    pub id: AccountId,
    pub customer: String,
    pub currency: Currency,
    pub funding: Funding,
    pub status: AccountStatus,
    pub balance: MoneyMinor,
    pub credit_limit: MoneyMinor,
    pub reserved: MoneyMinor,
    /// balance + credit_limit − reserved, never below 0.
    pub available: MoneyMinor,
    pub bundles: Vec<BundleView>,
    pub reservations: usize,
}

/// An open reservation as a snapshot keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldView {
    pub key: ReservationKey,
    pub money: MoneyMinor,
    pub units: Option<(BundleIndex, u64)>,
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct BundleView {
    pub index: BundleIndex,
    pub service: String,
    pub remaining: u64,
    pub reserved: u64,
    pub expires_at_ms: u64,
}

/// Why `create` refused an account: the caller (catalog or admin API) supplied something the
/// ledger cannot hold. Nothing is changed when it fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a subscription id is already used by an account, or listed twice")]
    SubscriptionTaken,
    #[error("more subscription ids than SUBSCRIPTIONS_PER_ACCOUNT_MAX")]
    SubscriptionsTooMany,
    #[error("more bundles than BUNDLES_PER_ACCOUNT_MAX")]
    BundlesTooMany,
    #[error("an empty or over-long subscription id, service name or customer id")]
    TextInvalid,
    #[error("prepaid needs balance >= 0 and no credit limit; on_file needs balance 0 and credit limit >= 0")]
    FundingInvalid,
    #[error("a balance or credit limit above AMOUNT_MAX_MINOR")]
    AmountInvalid,
    #[error("a currency with the numeric code of a known one but a different code or exponent")]
    CurrencyConflict,
    #[error("more currencies than CURRENCIES_MAX")]
    CurrenciesTooMany,
    #[error("more bundle service names than SERVICE_NAMES_MAX")]
    ServiceNamesTooMany,
    #[error("more accounts than ACCOUNTS_MAX")]
    AccountsTooMany,
}

/// Ledger-wide figures for metrics; every set is bounded.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct LedgerStats {
    pub accounts: u32,
    pub open_reservations: u64,
    /// One entry per currency the ledger has seen (at most [`CURRENCIES_MAX`]), by numeric
    /// code ascending, zeros included so metric series do not come and go.
    pub reserved_money_by_currency: Vec<(Currency, MoneyMinor)>,
    /// Money debited since the ledger was built (the journal's replay at start included), per
    /// currency, in the same order: a counter for metrics.
    pub debited_money_by_currency: Vec<(Currency, i128)>,
}

/// The account store. `Send + Sync`; share it as `Arc<Ledger>`.
pub struct Ledger {
    shards: Box<[ShardSlot]>,
    keys: Keys,
    /// Subscription id → account; written under `creator` only.
    index: SubscriberIndex,
    /// The text of customer ids; accounts store a span of it. Written under `creator` only, read
    /// by `view` (with no shard lock held).
    customers: RwLock<Customers>,
    /// Interned currencies; accounts store the slot number. Filled under `creator`.
    currencies: [OnceLock<Currency>; CURRENCIES_MAX],
    /// Serialises `create`, so ids are dense and subscription ids are checked and inserted
    /// atomically. Creation is rare (catalog load, admin API); nothing hot takes this lock.
    creator: Mutex<Creator>,
    /// Accounts created; an id below this exists.
    accounts: AtomicU32,
    /// Between `begin_recovery` and `end_recovery`: the order-dependent limits are not checked
    /// after each operation (see `AccountRef::violation_in`).
    recovering: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Creator {
    next_id: u32,
    currencies: usize,
    services: std::collections::HashSet<Arc<str>>,
}

const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Ledger>();
};

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("accounts", &self.accounts.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| ShardSlot::new()).collect(),
            keys: Keys::new(),
            index: SubscriberIndex::new(),
            customers: RwLock::new(Customers::new()),
            currencies: [const { OnceLock::new() }; CURRENCIES_MAX],
            creator: Mutex::new(Creator::default()),
            accounts: AtomicU32::new(0),
            recovering: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn recovering(&self) -> bool {
        self.recovering.load(Ordering::Relaxed)
    }

    /// Runs one operation on account `id` under its shard lock, with the checks after it.
    fn run<T>(
        &self,
        id: AccountId,
        operation: impl FnOnce(&mut AccountMut<'_>) -> Result<(T, account::Effect), Reject>,
    ) -> Result<T, Reject> {
        self.slot(id).run(slot_of(id), self.recovering(), operation)
    }

    /// Recovery is about to apply journal records (see `end_recovery`).
    pub fn begin_recovery(&self) {
        self.recovering.store(true, Ordering::Relaxed);
    }

    /// Recovery has applied every record: from now on every limit is checked after every
    /// operation again, and this checks them all once, with conservation. `false` means the
    /// recovered state is not one the ledger could have been in: a bug, or records missing.
    pub fn end_recovery(&self) -> bool {
        self.recovering.store(false, Ordering::Relaxed);
        self.check_conservation()
    }

    /// Adds an account; its initial balance counts as funding.
    pub fn create(&self, new: NewAccount) -> Result<AccountId, CreateError> {
        validate_new(&new)?;
        let mut creator = lock(&self.creator);
        for (i, (kind, data)) in new.subscriptions.iter().enumerate() {
            let listed_twice = new.subscriptions[..i].iter().any(|(k, d)| k == kind && d == data);
            if listed_twice || self.index.contains(*kind, data) {
                return Err(CreateError::SubscriptionTaken);
            }
        }
        if creator.next_id >= ACCOUNTS_MAX {
            return Err(CreateError::AccountsTooMany);
        }
        let new_services = new
            .bundles
            .iter()
            .enumerate()
            .filter(|(i, bundle)| {
                let earlier = new.bundles[..*i].iter().any(|other| other.service == bundle.service);
                !earlier && !creator.services.contains(bundle.service.as_str())
            })
            .count();
        if SERVICE_NAMES_MAX < creator.services.len() + new_services {
            return Err(CreateError::ServiceNamesTooMany);
        }
        // The last step that can fail; it changes nothing when it does.
        let currency = self.intern_currency(&mut creator, new.currency)?;
        let bundles = intern_bundles(&mut creator, &new.bundles);

        // Nothing can fail from here on: the account, its sums and its index entries go in.
        let id = AccountId(creator.next_id);
        creator.next_id += 1;
        let customer = self.customers.write().expect("customer table lock poisoned").intern(&new.customer);
        let (account, extras) = Account::new(&new, currency, customer, bundles);
        self.slot(id).insert(slot_of(id), account, extras);
        for (kind, data) in &new.subscriptions {
            self.index.insert(*kind, data, id);
        }
        let published = self.accounts.fetch_add(1, Ordering::AcqRel);
        assert_eq!(published, id.0, "ids are dense: account n is the n-th created");
        Ok(id)
    }

    /// The account a subscription id belongs to. Does not allocate.
    pub fn lookup(&self, kind: SubscriptionKind, data: &str) -> Option<AccountId> {
        self.index.get(kind, data)
    }

    pub fn view(&self, id: AccountId) -> Option<AccountView> {
        let (mut view, customer) = {
            let shard = self.slot(id).lock();
            let account = shard.account(slot_of(id))?;
            (account.view(id, self.currency(account.account.currency)), account.account.customer)
        };
        // Read with the shard lock released: no path holds a shard and the customer table.
        let customers = self.customers.read().expect("customer table lock poisoned");
        view.customer = customers.get(customer).to_string();
        Some(view)
    }

    /// The account's open reservations (for snapshots; not the hot path).
    pub fn holds(&self, id: AccountId) -> Option<Vec<HoldView>> {
        Some(self.slot(id).lock().account(slot_of(id))?.hold_views())
    }

    /// Sets the balance a snapshot recorded, booking the difference from the current one as
    /// funding or as a debit: conservation stays exact, though how the history split between
    /// top-ups and debits before the snapshot is not kept.
    pub fn restore_balance(&self, id: AccountId, balance: MoneyMinor) -> Result<(), Reject> {
        self.run(id, |account| account.restore_balance(balance.0))
    }

    /// Sets a bundle's remaining units from a snapshot (never more than now, never below what is
    /// held on it: call it before restoring holds).
    pub fn restore_bundle(&self, id: AccountId, index: BundleIndex, remaining: u64) -> Result<(), Reject> {
        self.run(id, |account| account.restore_bundle(index, remaining))
    }

    pub fn set_status(&self, id: AccountId, status: AccountStatus) -> Result<(), Reject> {
        self.run(id, |account| account.set_status(status))
    }

    /// balance + credit_limit − reserved, never below 0.
    /// Open reservations on the account (for fair-share grant sizing), without the copying
    /// that `view` does.
    pub fn open_reservations(&self, id: AccountId) -> Result<usize, Reject> {
        let shard = self.slot(id).lock();
        let account = shard.account(slot_of(id)).ok_or(Reject::AccountNotFound)?;
        Ok(account.account.holds_len())
    }

    pub fn available(&self, id: AccountId) -> Result<MoneyMinor, Reject> {
        let shard = self.slot(id).lock();
        let account = shard.account(slot_of(id)).ok_or(Reject::AccountNotFound)?;
        Ok(MoneyMinor(account.available().max(0)))
    }

    /// The first bundle for `service` that has not expired at `now_ms` and has free units
    /// (remaining − reserved), with those free units.
    pub fn find_bundle(&self, id: AccountId, service: &str, now_ms: u64) -> Option<(BundleIndex, u64)> {
        self.slot(id).lock().account(slot_of(id))?.find_bundle(service, now_ms)
    }

    /// Credits `amount` to the balance, once per `key`: the same key again changes nothing and
    /// returns the original new balance. Allowed on barred accounts (paying unbars nothing by
    /// itself; `set_status` does). Returns the new balance.
    pub fn top_up(&self, id: AccountId, key: u64, amount: MoneyMinor) -> Result<MoneyMinor, Reject> {
        let op = KeyedOp { account: id.0, kind: KeyedKind::TopUp, amount: amount.0 };
        self.keyed(key, op, |account| account.credit(amount.0)).map(|outcome| MoneyMinor(outcome.balance))
    }

    /// Like `top_up`: credits the balance and counts as funding (money given back for a charge).
    pub fn refund(&self, id: AccountId, key: u64, amount: MoneyMinor) -> Result<MoneyMinor, Reject> {
        let op = KeyedOp { account: id.0, kind: KeyedKind::Refund, amount: amount.0 };
        self.keyed(key, op, |account| account.credit(amount.0)).map(|outcome| MoneyMinor(outcome.balance))
    }

    /// A one-shot event charge, once per `key` (like `top_up`). Without `allow_overdraft` an
    /// amount above the available funds is refused (`InsufficientFunds`: an event charged before
    /// it is delivered); with it the amount is charged anyway and `overdraft` says whether it
    /// went beyond the funds (usage that already happened: late usage is never dropped).
    /// Refused, in this order: `AmountInvalid`, `KeyReused`, `AccountNotFound`, `AccountBarred`,
    /// `InsufficientFunds`.
    pub fn debit(
        &self,
        now_ms: u64,
        id: AccountId,
        key: u64,
        amount: MoneyMinor,
        allow_overdraft: bool,
    ) -> Result<Committed, Reject> {
        // A money-only debit needs no clock; `now_ms` keeps every charging call the same shape
        // (and the journal record will carry it).
        let _ = now_ms;
        let op = KeyedOp { account: id.0, kind: KeyedKind::Debit { allow_overdraft }, amount: amount.0 };
        let outcome = self.keyed(key, op, |account| account.debit(amount.0, allow_overdraft))?;
        Ok(Committed { debited: amount, overdraft: outcome.overdraft, ..Committed::default() })
    }

    /// Holds `money` and/or `units` of a bundle until `commit`, `release` or `expire`.
    ///
    /// Refused, in this order: `AmountInvalid`, `AccountNotFound`, `AccountBarred`,
    /// `ReservationExists` (an open reservation has this key: commit or release it first),
    /// `BundleNotFound`, `InsufficientFunds` (money above the available funds; a zero hold is
    /// always allowed), `InsufficientUnits` (above the bundle's free units, none once expired),
    /// `LimitReached` ([`RESERVATIONS_PER_ACCOUNT_MAX`]).
    ///
    /// # Panics
    /// If `expires_at_ms` is more than [`RESERVATION_TTL_MS_MAX`] after `now_ms`: deadlines come
    /// from our configuration, never from a peer.
    pub fn reserve(
        &self,
        now_ms: u64,
        id: AccountId,
        key: ReservationKey,
        money: MoneyMinor,
        units: Option<(BundleIndex, u64)>,
        expires_at_ms: u64,
    ) -> Result<(), Reject> {
        assert!(
            expires_at_ms <= now_ms.saturating_add(RESERVATION_TTL_MS_MAX),
            "reservation deadline beyond RESERVATION_TTL_MS_MAX"
        );
        self.hold(now_ms, id, key, money, units, expires_at_ms, true)
    }

    /// A reservation recovered from the journal: like `reserve`, but without the checks that
    /// decided whether it could be made (status, funds, free bundle units), because it was made.
    /// Recovery meets the holds of different sessions on one account in journal order, which may
    /// differ from the order they were made in, so a hold may briefly exceed the funds (flagged
    /// as an overdraft, as late usage is) until the commits and releases that followed it are
    /// applied; bundle units are capped at what the bundle has left. Refused: `AmountInvalid`,
    /// `AccountNotFound`, `ReservationExists`, `BundleNotFound`, `LimitReached`.
    pub fn restore_reservation(
        &self,
        now_ms: u64,
        id: AccountId,
        key: ReservationKey,
        money: MoneyMinor,
        units: Option<(BundleIndex, u64)>,
        expires_at_ms: u64,
    ) -> Result<(), Reject> {
        let expires_at_ms = expires_at_ms.min(now_ms.saturating_add(RESERVATION_TTL_MS_MAX));
        self.hold(now_ms, id, key, money, units, expires_at_ms, false)
    }

    /// `reserve` (`checked`) and `restore_reservation`.
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &self,
        now_ms: u64,
        id: AccountId,
        key: ReservationKey,
        money: MoneyMinor,
        units: Option<(BundleIndex, u64)>,
        expires_at_ms: u64,
        checked: bool,
    ) -> Result<(), Reject> {
        check_amount(money.0)?;
        self.slot(id).run(slot_of(id), self.recovering(), |account| {
            account.reserve(now_ms, key, money.0, units, expires_at_ms, checked)
        })
    }

    /// Closes a reservation with its usage: debits `money_used` (even above the hold: late
    /// usage is charged, never dropped, and `overdraft` says when that went beyond the funds),
    /// consumes `units_used` from the held units and then from the bundle's free units (the rest
    /// comes back as `units_unpaid`), and releases what was held but not used. Allowed on barred
    /// accounts. Refused: `AmountInvalid`, `AccountNotFound`, `ReservationNotFound`.
    pub fn commit(
        &self,
        now_ms: u64,
        id: AccountId,
        key: ReservationKey,
        money_used: MoneyMinor,
        units_used: u64,
    ) -> Result<Committed, Reject> {
        self.close_hold(now_ms, id, key, money_used, units_used, false)
    }

    /// A commit recovered from the journal: `units_used` are the units it consumed when it was
    /// made, taken from the bundle whatever other holds are on it at that point of the journal
    /// (the release that freed them may come later in it).
    pub fn restore_commit(
        &self,
        now_ms: u64,
        id: AccountId,
        key: ReservationKey,
        money_used: MoneyMinor,
        units_used: u64,
    ) -> Result<Committed, Reject> {
        self.close_hold(now_ms, id, key, money_used, units_used, true)
    }

    /// `commit` and (`exact`) `restore_commit`.
    fn close_hold(
        &self,
        now_ms: u64,
        id: AccountId,
        key: ReservationKey,
        money_used: MoneyMinor,
        units_used: u64,
        exact: bool,
    ) -> Result<Committed, Reject> {
        check_amount(money_used.0)?;
        self.run(id, |account| account.commit(now_ms, key, money_used.0, units_used, exact))
    }

    /// A debit recovered from the journal: applied whatever the funds and status at this point
    /// of the journal (it was made), and remembered under its key as the operation it was, so a
    /// retransmission after the restart finds the same operation (`allow_overdraft` as made).
    pub fn restore_debit(
        &self,
        id: AccountId,
        key: u64,
        amount: MoneyMinor,
        allow_overdraft: bool,
    ) -> Result<Committed, Reject> {
        let op = KeyedOp { account: id.0, kind: KeyedKind::Debit { allow_overdraft }, amount: amount.0 };
        let outcome = self.keyed(key, op, |account| account.debit_as(amount.0, allow_overdraft, false))?;
        Ok(Committed { debited: amount, overdraft: outcome.overdraft, ..Committed::default() })
    }

    /// Voids a reservation: everything held goes back. Refused: `AccountNotFound`,
    /// `ReservationNotFound`.
    pub fn release(&self, id: AccountId, key: ReservationKey) -> Result<Committed, Reject> {
        self.run(id, |account| account.release(key))
    }

    /// Releases every reservation whose deadline is at or before `now_ms`, returning each one
    /// with the money and units it held. Shards (and chunks of 128 accounts within them) whose
    /// earliest deadline is later are skipped without scanning.
    pub fn expire(&self, now_ms: u64) -> Vec<(AccountId, ReservationKey, MoneyMinor, u64)> {
        let mut expired = Vec::new();
        for (shard, slot) in self.shards.iter().enumerate() {
            slot.expire(now_ms, shard, &mut expired);
        }
        expired
    }

    /// Σ balances + Σ debited = Σ funded, exactly, and every shard's sums agree with its
    /// accounts (reserved money per currency, open reservations). Locks each shard in turn; each
    /// shard balances on its own (every operation touches one account), so the answer is exact
    /// under concurrent use. For tests and tools, not the hot path.
    pub fn check_conservation(&self) -> bool {
        let mut balances = 0i128;
        let mut funded = 0i128;
        let mut debited = 0i128;
        for slot in self.shards.iter() {
            let shard = slot.lock();
            let Some(totals) = shard.audit() else { return false };
            balances += totals.balances;
            funded += totals.funded;
            debited += totals.debited;
        }
        balances + debited == funded
    }

    pub fn stats(&self) -> LedgerStats {
        let mut open_reservations = 0u64;
        let mut reserved = [0i64; CURRENCIES_MAX];
        let mut debited = [0i128; CURRENCIES_MAX];
        for slot in self.shards.iter() {
            let shard = slot.lock();
            open_reservations += shard.sums.open_reservations;
            for (sum, add) in reserved.iter_mut().zip(shard.sums.reserved_by_currency) {
                *sum += add;
            }
            for (sum, add) in debited.iter_mut().zip(shard.sums.debited_by_currency) {
                *sum += add;
            }
        }
        let mut debited_money_by_currency: Vec<(Currency, i128)> = self
            .currencies
            .iter()
            .zip(debited)
            .filter_map(|(currency, sum)| Some((*currency.get()?, sum)))
            .collect();
        debited_money_by_currency.sort_by_key(|(currency, _)| currency.numeric);
        let mut reserved_money_by_currency: Vec<(Currency, MoneyMinor)> = self
            .currencies
            .iter()
            .zip(reserved)
            .filter_map(|(currency, sum)| Some((*currency.get()?, MoneyMinor(sum))))
            .collect();
        reserved_money_by_currency.sort_by_key(|(currency, _)| currency.numeric);
        LedgerStats {
            accounts: self.accounts.load(Ordering::Acquire),
            open_reservations,
            reserved_money_by_currency,
            debited_money_by_currency,
        }
    }

    /// Runs an idempotent operation: under the key's shard lock, a known key returns its
    /// original outcome (or `KeyReused` if it was a different operation); a new key runs `apply`
    /// on the account and remembers the outcome if it succeeded. Refusals are not remembered,
    /// so a retried operation is judged again on the state it then finds (TigerBeetle does the
    /// same with failed transfers).
    fn keyed(
        &self,
        key: u64,
        op: KeyedOp,
        apply: impl FnOnce(&mut AccountMut<'_>) -> Result<(Outcome, account::Effect), Reject>,
    ) -> Result<Outcome, Reject> {
        check_amount(op.amount)?;
        let mut keys = self.keys.lock(key);
        if let Some(known) = keys.find(key) {
            return if known.op == op { Ok(known.outcome) } else { Err(Reject::KeyReused) };
        }
        let id = AccountId(op.account);
        let outcome = self.run(id, apply)?;
        keys.remember(key, op, outcome);
        Ok(outcome)
    }

    fn intern_currency(&self, creator: &mut Creator, currency: Currency) -> Result<u8, CreateError> {
        for (i, known) in self.currencies[..creator.currencies].iter().enumerate() {
            let known = known.get().expect("slots below the count are set");
            if *known == currency {
                return Ok(i as u8);
            }
            if known.numeric == currency.numeric {
                return Err(CreateError::CurrencyConflict);
            }
        }
        if creator.currencies == CURRENCIES_MAX {
            return Err(CreateError::CurrenciesTooMany);
        }
        let i = creator.currencies;
        assert!(self.currencies[i].set(currency).is_ok(), "slots at or above the count are empty");
        creator.currencies += 1;
        Ok(i as u8)
    }

    fn currency(&self, index: u8) -> Currency {
        *self.currencies[usize::from(index)].get().expect("accounts refer to interned currencies")
    }

    fn slot(&self, id: AccountId) -> &ShardSlot {
        &self.shards[id.0 as usize % SHARDS]
    }
}

fn slot_of(id: AccountId) -> usize {
    id.0 as usize / SHARDS
}

fn check_amount(amount: i64) -> Result<(), Reject> {
    if (0..=AMOUNT_MAX_MINOR).contains(&amount) {
        Ok(())
    } else {
        Err(Reject::AmountInvalid)
    }
}

fn validate_new(new: &NewAccount) -> Result<(), CreateError> {
    if SUBSCRIPTIONS_PER_ACCOUNT_MAX < new.subscriptions.len() {
        return Err(CreateError::SubscriptionsTooMany);
    }
    if BUNDLES_PER_ACCOUNT_MAX < new.bundles.len() {
        return Err(CreateError::BundlesTooMany);
    }
    let text_ok = |text: &str, max: usize| !text.is_empty() && text.len() <= max;
    let texts_ok = new.customer.len() <= CUSTOMER_ID_MAX_BYTES
        && new.subscriptions.iter().all(|(_, data)| text_ok(data, SUBSCRIPTION_DATA_MAX_BYTES))
        && new.bundles.iter().all(|bundle| text_ok(&bundle.service, SERVICE_NAME_MAX_BYTES));
    if !texts_ok {
        return Err(CreateError::TextInvalid);
    }
    let (balance, credit_limit) = (new.balance.0, new.credit_limit.0);
    if AMOUNT_MAX_MINOR < balance || AMOUNT_MAX_MINOR < credit_limit {
        return Err(CreateError::AmountInvalid);
    }
    let funding_ok = match new.funding {
        Funding::Prepaid => 0 <= balance && credit_limit == 0,
        Funding::OnFile => balance == 0 && 0 <= credit_limit,
    };
    if !funding_ok {
        return Err(CreateError::FundingInvalid);
    }
    Ok(())
}

/// Service names are shared by all accounts with a bundle for that service (most accounts of a
/// plan), so each costs one pointer per bundle rather than one allocation.
fn intern_bundles(creator: &mut Creator, bundles: &[NewBundle]) -> Box<[Bundle]> {
    let interned = bundles.iter().map(|bundle| {
        let service = match creator.services.get(bundle.service.as_str()) {
            Some(service) => Arc::clone(service),
            None => {
                let service: Arc<str> = bundle.service.as_str().into();
                creator.services.insert(Arc::clone(&service));
                service
            }
        };
        Bundle::new(service, bundle.units, bundle.expires_at_ms)
    });
    let interned: Box<[Bundle]> = interned.collect();
    assert!(creator.services.len() <= SERVICE_NAMES_MAX, "checked before interning");
    interned
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means an invariant assertion failed while it was held: the state behind
    // it is known to be wrong, so every later user panics too (fail closed).
    mutex.lock().expect("ledger lock poisoned by an earlier invariant failure")
}
