//! One shard of the account table: its accounts, in chunks that never move, the holds and extras
//! of those accounts, and its share of the ledger-wide sums. Every mutation of an account goes through [`ShardSlot::run`] (or the expiry
//! sweep), which checks the account's invariants and the paired movement checks afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::rating::MoneyMinor;

use super::account::{Account, AccountMut, AccountRef, Effect, Extras};
use super::holds::{HoldSlab, NONE};
use super::store::Chunked;
use super::{lock, AccountId, Reject, ReservationKey, ACCOUNTS_PER_CHUNK, CURRENCIES_MAX, SHARDS};

/// Extras per chunk of the extras table (3 KiB).
const EXTRAS_PER_CHUNK: usize = 128;

/// A shard lock and the earliest reservation deadline behind it, on their own cache lines so
/// that threads working on neighbouring shards do not slow each other down.
#[repr(align(128))]
pub(super) struct ShardSlot {
    state: Mutex<Shard>,
    /// At or before the earliest deadline of the shard's open reservations (it may be earlier:
    /// commits do not raise it; the sweep recomputes it). `expire` skips the shard when `now_ms`
    /// is before it, without taking the lock.
    deadline_min_ms: AtomicU64,
}

pub(super) struct Shard {
    chunks: Vec<Chunk>,
    /// The open reservations of this shard's accounts, each account's linked from its record.
    holds: HoldSlab,
    /// Bundles and credit limits of the accounts that have them, by `Account::extras`.
    extras: Chunked<Extras, EXTRAS_PER_CHUNK>,
    pub(super) sums: Sums,
    /// Mutations so far, to choose which get the full consistency walk (`FULL_CHECK_EVERY`).
    mutations: u32,
}

/// One mutation in this many per shard walks the account's whole hold list after it (every one
/// in debug builds and tests). The walk is linear in the account's holds, each a likely cache
/// miss in the slab: with ten sessions on one account it was a fifth of the server's CPU
/// (perf, W4 with 100 000 sessions on 10 000 accounts), and a shared corporate wallet may carry
/// hundreds. The O(1) checks (amounts moved exactly by the effect, ranges, available funds) run
/// after every mutation; a broken list is still caught, within a few operations of the bug.
const FULL_CHECK_EVERY: u32 = 16;

impl Shard {
    /// Whether the mutation about to be checked gets the full walk.
    fn full_check(&mut self) -> bool {
        self.mutations = self.mutations.wrapping_add(1);
        cfg!(debug_assertions) || self.mutations.is_multiple_of(FULL_CHECK_EVERY)
    }
}

struct Chunk {
    /// Allocated with capacity `ACCOUNTS_PER_CHUNK` and never grown beyond it.
    accounts: Vec<Account>,
    /// Like `ShardSlot::deadline_min_ms`, for this chunk: the sweep skips chunks with nothing due.
    deadline_min_ms: u64,
}

/// The shard's share of the ledger-wide figures, kept in step with its accounts by
/// [`Sums::apply`] and recomputed from them by [`Shard::audit`].
#[derive(Default)]
pub(super) struct Sums {
    pub(super) open_reservations: u64,
    pub(super) reserved_by_currency: [i64; CURRENCIES_MAX],
    /// Money debited since start (replay included), per currency slot: a metrics counter.
    pub(super) debited_by_currency: [i128; CURRENCIES_MAX],
    balances: i128,
    funded: i128,
    debited: i128,
}

pub(super) struct Totals {
    pub(super) balances: i128,
    pub(super) funded: i128,
    pub(super) debited: i128,
}

/// An account's figures before a mutation, for the paired checks after it.
struct Before {
    balance: i64,
    reserved: i64,
    available: i64,
}

impl ShardSlot {
    pub(super) fn new() -> Self {
        let shard = Shard {
            chunks: Vec::new(),
            holds: HoldSlab::new(),
            extras: Chunked::new(),
            sums: Sums::default(),
            mutations: 0,
        };
        Self { state: Mutex::new(shard), deadline_min_ms: AtomicU64::new(u64::MAX) }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Shard> {
        lock(&self.state)
    }

    /// Appends a new account at `slot`, which must be the next free one, with its extras if it
    /// has any.
    pub(super) fn insert(&self, slot: usize, mut account: Account, extras: Option<Extras>) {
        assert!(account.holds_len() == 0 && account.extras == NONE);
        let mut guard = self.lock();
        let Shard { chunks, holds, extras: table, sums, .. } = &mut *guard;
        if let Some(extras) = extras {
            // At most 2^20 accounts per shard.
            account.extras = u32::try_from(table.push(extras)).expect("extras indexes fit u32");
        }
        let check = AccountRef::new(&account, extras_of(table, &account), holds);
        assert!(check.violation().is_none(), "a new account is consistent");
        if chunks.last().is_none_or(|chunk| chunk.accounts.len() == ACCOUNTS_PER_CHUNK) {
            chunks
                .push(Chunk { accounts: Vec::with_capacity(ACCOUNTS_PER_CHUNK), deadline_min_ms: u64::MAX });
        }
        let chunk_index = chunks.len() - 1;
        let chunk = &mut chunks[chunk_index];
        assert_eq!(
            chunk_index * ACCOUNTS_PER_CHUNK + chunk.accounts.len(),
            slot,
            "slots are filled in order"
        );
        let (balance, currency) = (account.balance, account.currency);
        chunk.accounts.push(account);
        assert!(chunk.accounts.len() <= ACCOUNTS_PER_CHUNK);
        sums.apply(currency, Effect { balance, funded: balance, ..Effect::NONE });
    }

    /// Runs one operation on the account at `slot` under the shard lock, then checks it: a
    /// refusal changed nothing; a change left the account consistent and moved its balance,
    /// holds and available funds exactly as the operation's effect says.
    pub(super) fn run<T>(
        &self,
        slot: usize,
        recovering: bool,
        operation: impl FnOnce(&mut AccountMut<'_>) -> Result<(T, Effect), Reject>,
    ) -> Result<T, Reject> {
        let mut guard = self.lock();
        let full = guard.full_check();
        let Shard { chunks, holds, extras, sums, .. } = &mut *guard;
        let chunk = chunks.get_mut(slot / ACCOUNTS_PER_CHUNK).ok_or(Reject::AccountNotFound)?;
        let record = chunk.accounts.get_mut(slot % ACCOUNTS_PER_CHUNK).ok_or(Reject::AccountNotFound)?;
        let extras = extras_of_mut(extras, record.extras);
        let mut account = AccountMut::new(record, extras, holds);
        let fingerprint = account.as_ref().fingerprint();
        let before = Before::of(account.as_ref());
        let (value, effect) = match operation(&mut account) {
            Ok(done) => done,
            Err(reject) => {
                let after = account.as_ref().fingerprint();
                assert_eq!(after, fingerprint, "a refused operation changed the account");
                return Err(reject);
            }
        };
        before.check(account.as_ref(), &effect, recovering, full);
        chunk.deadline_min_ms = chunk.deadline_min_ms.min(effect.deadline_ms);
        sums.apply(account.account.currency, effect);
        // Published under the lock, so a sweep that reset the shard's minimum either sees this
        // reservation in the chunk or sees this lowered minimum.
        if effect.deadline_ms < self.deadline_min_ms.load(Ordering::Acquire) {
            self.deadline_min_ms.fetch_min(effect.deadline_ms, Ordering::AcqRel);
        }
        Ok(value)
    }

    /// Releases the shard's reservations due at `now_ms`, one chunk per lock acquisition.
    pub(super) fn expire(
        &self,
        now_ms: u64,
        shard_index: usize,
        expired: &mut Vec<(AccountId, ReservationKey, MoneyMinor, u64)>,
    ) {
        if now_ms < self.deadline_min_ms.load(Ordering::Acquire) {
            return;
        }
        // Every chunk is visited after this reset and publishes its own minimum again, and a
        // reservation opened meanwhile publishes its deadline itself, so nothing is lost.
        self.deadline_min_ms.store(u64::MAX, Ordering::Release);
        for chunk_index in 0.. {
            let mut guard = self.lock();
            let Shard { chunks, holds, extras, sums, .. } = &mut *guard;
            let Some(chunk) = chunks.get_mut(chunk_index) else { break };
            if now_ms < chunk.deadline_min_ms {
                self.deadline_min_ms.fetch_min(chunk.deadline_min_ms, Ordering::AcqRel);
                continue;
            }
            let mut deadline_min_ms = u64::MAX;
            for (offset, record) in chunk.accounts.iter_mut().enumerate() {
                if record.holds_len() == 0 {
                    continue;
                }
                let slot = chunk_index * ACCOUNTS_PER_CHUNK + offset;
                let id = AccountId((slot * SHARDS + shard_index) as u32);
                let extras = extras_of_mut(extras, record.extras);
                let mut account = AccountMut::new(record, extras, holds);
                let before = Before::of(account.as_ref());
                let (effect, account_min_ms) = account.expire(now_ms, id, expired);
                // Expiry is rare next to reserve and commit: always the full walk.
                before.check(account.as_ref(), &effect, false, true);
                sums.apply(account.account.currency, effect);
                deadline_min_ms = deadline_min_ms.min(account_min_ms);
            }
            chunk.deadline_min_ms = deadline_min_ms;
            self.deadline_min_ms.fetch_min(deadline_min_ms, Ordering::AcqRel);
        }
    }
}

impl Shard {
    pub(super) fn account(&self, slot: usize) -> Option<AccountRef<'_>> {
        let account = self.chunks.get(slot / ACCOUNTS_PER_CHUNK)?.accounts.get(slot % ACCOUNTS_PER_CHUNK)?;
        Some(AccountRef::new(account, extras_of(&self.extras, account), &self.holds))
    }

    /// Recomputes the shard's sums from its accounts and compares: the pair of the incremental
    /// bookkeeping in `Sums::apply`. None if anything disagrees, an account is inconsistent, or
    /// the hold slab has slots that are neither some account's nor free (or both).
    pub(super) fn audit(&self) -> Option<Totals> {
        let mut balances = 0i128;
        let mut open_reservations = 0u64;
        let mut reserved_by_currency = [0i64; CURRENCIES_MAX];
        for chunk in &self.chunks {
            for record in &chunk.accounts {
                if record.extras != NONE && self.extras.get(record.extras as usize).is_none() {
                    return None;
                }
                let account = AccountRef::new(record, extras_of(&self.extras, record), &self.holds);
                if account.violation().is_some() || account.deadline_min_ms() < chunk.deadline_min_ms {
                    return None;
                }
                balances += i128::from(record.balance);
                open_reservations += record.holds_len() as u64;
                reserved_by_currency[usize::from(record.currency)] += record.reserved;
            }
        }
        let (slots, free) = self.holds.usage()?;
        let sums = &self.sums;
        let agree = slots as u64 == open_reservations + free as u64
            && balances == sums.balances
            && open_reservations == sums.open_reservations
            && reserved_by_currency == sums.reserved_by_currency
            && sums.balances + sums.debited == sums.funded;
        agree.then_some(Totals { balances, funded: sums.funded, debited: sums.debited })
    }
}

impl Sums {
    fn apply(&mut self, currency: u8, effect: Effect) {
        assert!(0 <= effect.funded && 0 <= effect.debited);
        assert_eq!(
            effect.balance,
            effect.funded - effect.debited,
            "movements differ from the balance change"
        );
        self.balances += i128::from(effect.balance);
        self.funded += i128::from(effect.funded);
        self.debited += i128::from(effect.debited);
        self.debited_by_currency[usize::from(currency)] += i128::from(effect.debited);
        let reserved = &mut self.reserved_by_currency[usize::from(currency)];
        *reserved += effect.reserved;
        assert!(0 <= *reserved, "held money below 0");
        self.open_reservations =
            self.open_reservations.checked_add_signed(effect.open).expect("open reservations below 0");
    }
}

/// The extras of `account`, if it has any.
fn extras_of<'a>(table: &'a Chunked<Extras, EXTRAS_PER_CHUNK>, account: &Account) -> Option<&'a Extras> {
    (account.extras != NONE).then(|| table.get(account.extras as usize).expect("extras indexes are valid"))
}

fn extras_of_mut(table: &mut Chunked<Extras, EXTRAS_PER_CHUNK>, index: u32) -> Option<&mut Extras> {
    (index != NONE).then(|| table.get_mut(index as usize).expect("extras indexes are valid"))
}

impl Before {
    fn of(account: AccountRef<'_>) -> Self {
        let record = account.account;
        Self { balance: record.balance, reserved: record.reserved, available: account.available() }
    }

    /// The paired checks after a mutation: the account agrees with itself (holds sum up), and
    /// its balance, held money and available funds moved exactly by the effect's amounts.
    fn check(&self, account: AccountRef<'_>, effect: &Effect, recovering: bool, full: bool) {
        if let Some(what) = account.violation_in(recovering, full) {
            panic!("ledger invariant violated: {what}");
        }
        let record = account.account;
        assert_eq!(record.balance - self.balance, effect.balance, "balance moved by other than the effect");
        assert_eq!(record.reserved - self.reserved, effect.reserved, "holds moved by other than the effect");
        let available = account.available();
        assert_eq!(available - self.available, effect.balance - effect.reserved);
        assert!(
            0 <= available || self.available <= available || effect.overdraft || recovering,
            "available funds went below 0 without an overdraft"
        );
    }
}
