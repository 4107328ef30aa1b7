//! One account: its balance, its bundles and the reservations held on them. Everything here runs
//! under the account's shard lock. The record itself is 40 bytes; what most accounts do not
//! have lives beside it in the shard (its holds in the shard's slab, its bundles and credit
//! limit in the shard's extras), and [`AccountRef`] / [`AccountMut`] put the pieces together.
//! Each mutating method either refuses and changes nothing, or changes the account and returns
//! an [`Effect`]: the movements the shard adds to its ledger-wide sums. The shard checks the
//! account's invariants after every effect.

use std::sync::Arc;

use crate::catalog::{AccountStatus, Funding};
use crate::rating::{Currency, MoneyMinor};

use super::holds::{HoldSlab, List, Reservation, BUNDLE_NONE, NONE};
use super::keys::Outcome;
use super::{
    AccountId, AccountView, BundleIndex, BundleView, Committed, HoldView, NewAccount, Reject, ReservationKey,
    AMOUNT_MAX_MINOR, BALANCE_MAX_MINOR, BUNDLES_PER_ACCOUNT_MAX, CURRENCIES_MAX,
    RESERVATIONS_PER_ACCOUNT_MAX,
};

/// The record kept for every account: 40 bytes (checked below), where a record holding its
/// holds in a `Vec`, its bundles in a `Box<[Bundle]>`, its customer id in a `Box<str>` and its
/// credit limit took 88 bytes plus allocations. Money is i64 minor units; the currency is an
/// index into the ledger's interned currencies.
///
/// Why not pack the three one-byte fields into one: they fit in the padding as they are
/// (37 bytes of fields round up to 40 with the i64 alignment), so packing would save nothing.
pub(super) struct Account {
    pub(super) balance: i64,
    /// Σ money of the holds.
    pub(super) reserved: i64,
    /// The customer id: a span of the ledger's customer text (`customers.rs`). A span rather
    /// than a number in a table of distinct ids, which would cost more per distinct id than
    /// most ids are long.
    pub(super) customer: u64,
    /// The newest of this account's holds in the shard's [`HoldSlab`], linked through
    /// `Reservation::next` (unordered otherwise: a few per account, found by a linear walk);
    /// `NONE` when there are none.
    holds: u32,
    /// This account's [`Extras`] in the shard's table, or `NONE`: no bundles, credit limit 0.
    pub(super) extras: u32,
    /// How many holds the list has: kept so that the limit check and `open_reservations` do not
    /// walk the list, and checked against it after every mutation.
    holds_len: u16,
    pub(super) currency: u8,
    funding: Funding,
    status: AccountStatus,
}

/// What few accounts have: bundles, and a credit limit (on-file accounts only).
pub(super) struct Extras {
    bundles: Box<[Bundle]>,
    /// 0 for prepaid accounts.
    credit_limit: i64,
}

const _: () = assert!(size_of::<Account>() <= 40);
const _: () = assert!(size_of::<Bundle>() <= 40);
const _: () = assert!(RESERVATIONS_PER_ACCOUNT_MAX <= u16::MAX as usize);
const _: () = assert!(CURRENCIES_MAX <= u8::MAX as usize);

pub(super) struct Bundle {
    /// Interned: accounts of one plan share the name.
    service: Arc<str>,
    /// Units not yet consumed, held ones included.
    remaining: u64,
    /// Σ units of the reservations on this bundle; ≤ `remaining`.
    reserved: u64,
    expires_at_ms: u64,
}

/// An account with what it has beside its record, for reading.
#[derive(Clone, Copy)]
pub(super) struct AccountRef<'a> {
    pub(super) account: &'a Account,
    extras: Option<&'a Extras>,
    holds: &'a HoldSlab,
}

/// An account with what it has beside its record, for changing.
pub(super) struct AccountMut<'a> {
    pub(super) account: &'a mut Account,
    extras: Option<&'a mut Extras>,
    holds: &'a mut HoldSlab,
}

/// What a mutation moved, for the shard's sums and checks. `balance` is the balance delta and
/// must equal `funded − debited` (a paired check: the account computes it from before and
/// after, the operation from its amounts).
#[derive(Clone, Copy, Debug)]
pub(super) struct Effect {
    pub(super) balance: i64,
    pub(super) funded: i64,
    pub(super) debited: i64,
    /// Change of held money.
    pub(super) reserved: i64,
    /// Change of open reservations.
    pub(super) open: i64,
    /// The operation was allowed to leave balance + credit_limit − reserved below 0.
    pub(super) overdraft: bool,
    /// The deadline of a reservation this operation opened, or u64::MAX.
    pub(super) deadline_ms: u64,
}

impl Effect {
    pub(super) const NONE: Self = Self {
        balance: 0,
        funded: 0,
        debited: 0,
        reserved: 0,
        open: 0,
        overdraft: false,
        deadline_ms: u64::MAX,
    };
}

/// What must not change when an operation is refused.
#[derive(PartialEq, Eq, Debug)]
pub(super) struct Fingerprint(i64, i64, u32, u16, AccountStatus);

impl Bundle {
    pub(super) fn new(service: Arc<str>, units: u64, expires_at_ms: u64) -> Self {
        Self { service, remaining: units, reserved: 0, expires_at_ms }
    }

    /// Units that may still be reserved or consumed: none once the bundle has expired.
    fn free(&self, now_ms: u64) -> u64 {
        if now_ms < self.expires_at_ms {
            // Saturating: during recovery a bundle may briefly hold more than it has.
            self.remaining.saturating_sub(self.reserved)
        } else {
            0
        }
    }
}

impl Account {
    /// The record and, when the account has bundles or a credit limit, its extras (the shard
    /// stores them and sets `extras`).
    pub(super) fn new(
        new: &NewAccount,
        currency: u8,
        customer: u64,
        bundles: Box<[Bundle]>,
    ) -> (Self, Option<Extras>) {
        let account = Self {
            balance: new.balance.0,
            reserved: 0,
            customer,
            holds: NONE,
            extras: NONE,
            holds_len: 0,
            currency,
            funding: new.funding,
            status: new.status,
        };
        let extras = (!bundles.is_empty() || new.credit_limit.0 != 0)
            .then_some(Extras { bundles, credit_limit: new.credit_limit.0 });
        (account, extras)
    }

    pub(super) fn holds_len(&self) -> usize {
        usize::from(self.holds_len)
    }
}

impl<'a> AccountRef<'a> {
    pub(super) fn new(account: &'a Account, extras: Option<&'a Extras>, holds: &'a HoldSlab) -> Self {
        assert_eq!(extras.is_some(), account.extras != NONE, "an account's extras are where it says");
        Self { account, extras, holds }
    }

    fn bundles(self) -> &'a [Bundle] {
        match self.extras {
            Some(extras) => &extras.bundles,
            None => &[],
        }
    }

    fn credit_limit(self) -> i64 {
        self.extras.map_or(0, |extras| extras.credit_limit)
    }

    /// The account's holds, newest first.
    /// The account's holds, for snapshots.
    pub(super) fn hold_views(self) -> Vec<HoldView> {
        self.holds()
            .map(|r| HoldView {
                key: r.key(),
                money: MoneyMinor(r.money()),
                units: (r.bundle() != BUNDLE_NONE).then_some((BundleIndex(u16::from(r.bundle())), r.units)),
                expires_at_ms: r.expires_at_ms,
            })
            .collect()
    }

    fn holds(self) -> impl Iterator<Item = &'a Reservation> {
        self.list().map(|(_, hold)| hold)
    }

    /// The account's holds with their slots, at most its hold count of them (the list is never
    /// longer: `violation` checks it; the count passes `RESERVATIONS_PER_ACCOUNT_MAX` only while
    /// recovering).
    fn list(self) -> List<'a> {
        self.holds.list(self.account.holds, self.account.holds_len())
    }

    /// balance + credit_limit − reserved; negative only after an overdraft.
    pub(super) fn available(self) -> i64 {
        self.account.balance + self.credit_limit() - self.account.reserved
    }

    pub(super) fn fingerprint(self) -> Fingerprint {
        let account = self.account;
        Fingerprint(account.balance, account.reserved, account.holds, account.holds_len, account.status)
    }

    /// The view, without the customer id (the ledger adds it from its interned customers).
    pub(super) fn view(self, id: AccountId, currency: Currency) -> AccountView {
        let bundles = self.bundles().iter().enumerate().map(|(i, bundle)| BundleView {
            index: BundleIndex(i as u16),
            service: bundle.service.to_string(),
            remaining: bundle.remaining,
            reserved: bundle.reserved,
            expires_at_ms: bundle.expires_at_ms,
        });
        let account = self.account;
        AccountView {
            id,
            customer: String::new(),
            currency,
            funding: account.funding,
            status: account.status,
            balance: MoneyMinor(account.balance),
            credit_limit: MoneyMinor(self.credit_limit()),
            reserved: MoneyMinor(account.reserved),
            available: MoneyMinor(self.available().max(0)),
            bundles: bundles.collect(),
            reservations: account.holds_len(),
        }
    }

    pub(super) fn find_bundle(self, service: &str, now_ms: u64) -> Option<(BundleIndex, u64)> {
        let mut bundles = self.bundles().iter().enumerate();
        let (i, bundle) = bundles.find(|(_, b)| *b.service == *service && b.free(now_ms) > 0)?;
        Some((BundleIndex(i as u16), bundle.free(now_ms)))
    }

    /// The earliest deadline of the open reservations, or u64::MAX.
    pub(super) fn deadline_min_ms(self) -> u64 {
        self.holds().map(|r| r.expires_at_ms).min().unwrap_or(u64::MAX)
    }

    /// The slot of the hold with this key and the slot before it in the list (`NONE` if it is
    /// the first).
    fn position(self, key: ReservationKey) -> Option<(u32, u32)> {
        let mut before = NONE;
        for (at, hold) in self.list() {
            if hold.is(key) {
                return Some((before, at));
            }
            before = at;
        }
        None
    }

    /// Why the account is inconsistent, if it is. Runs after every mutation, so it is linear in
    /// the (bounded) reservations and bundles, never quadratic.
    pub(super) fn violation(self) -> Option<&'static str> {
        self.violation_in(false, true)
    }

    /// `violation`; `recovering` leaves out the two limits that recovery may cross for a while,
    /// because it applies different sessions' records in journal order rather than in the order
    /// the ledger applied them: the reservation count and a bundle's held units against what it
    /// has left. `Ledger::end_recovery` checks everything again once all records are in.
    ///
    /// Without `full`, only the O(1) and per-bundle checks run, not the walk of the hold list
    /// (see `shard::FULL_CHECK_EVERY`).
    pub(super) fn violation_in(self, recovering: bool, full: bool) -> Option<&'static str> {
        let account = self.account;
        if RESERVATIONS_PER_ACCOUNT_MAX < account.holds_len() && !recovering {
            return Some("more reservations than the limit");
        }
        if !(-BALANCE_MAX_MINOR..=BALANCE_MAX_MINOR).contains(&account.balance) {
            return Some("balance beyond the limit");
        }
        if !(0..=AMOUNT_MAX_MINOR).contains(&self.credit_limit()) {
            return Some("credit limit out of range");
        }
        let bundles = self.bundles();
        if !full {
            if !(0..=AMOUNT_MAX_MINOR * RESERVATIONS_PER_ACCOUNT_MAX as i64).contains(&account.reserved) {
                return Some("reserved money out of range");
            }
            if !recovering && bundles.iter().any(|bundle| bundle.remaining < bundle.reserved) {
                return Some("a bundle holds more units than it has");
            }
            return None;
        }
        // Walked here with every link checked (the other walks trust what this one checked).
        let (mut money, mut count, mut at) = (0i64, 0usize, account.holds);
        while at != NONE {
            if count == account.holds_len() {
                return Some("the hold list is longer than its count (or has a cycle)");
            }
            let Some(held) = self.holds.get(at) else { return Some("a hold link points outside the slab") };
            count += 1;
            at = held.next;
            if !(0..=AMOUNT_MAX_MINOR).contains(&held.money()) {
                return Some("a hold's money is out of range");
            }
            money += held.money();
            let on_bundle = usize::from(held.bundle()) < bundles.len();
            let no_bundle = held.bundle() == BUNDLE_NONE && held.units == 0;
            if !(on_bundle || no_bundle) {
                return Some("a hold refers to no bundle");
            }
        }
        if count != account.holds_len() {
            return Some("the hold list is shorter than its count");
        }
        if money != account.reserved {
            return Some("reserved money differs from the sum of the holds");
        }
        if !self.bundle_holds_add_up() {
            return Some("a bundle's reserved units differ from the sum of its holds");
        }
        if !recovering && bundles.iter().any(|bundle| bundle.remaining < bundle.reserved) {
            return Some("a bundle holds more units than it has");
        }
        None
    }

    /// Each bundle's `reserved` equals the units of the holds on it.
    fn bundle_holds_add_up(self) -> bool {
        let bundles = self.bundles();
        let holds_on = |i: usize| self.holds().filter(move |r| usize::from(r.bundle()) == i);
        if bundles.len() * self.account.holds_len() <= 64 {
            // The usual few bundles and holds: a nested loop beats filling a table.
            let sum = |i| holds_on(i).map(|r| r.units).sum::<u64>();
            return bundles.iter().enumerate().all(|(i, bundle)| bundle.reserved == sum(i));
        }
        let mut units = [0u64; BUNDLES_PER_ACCOUNT_MAX];
        for held in self.holds() {
            if let Some(sum) = units.get_mut(usize::from(held.bundle())) {
                *sum += held.units;
            }
        }
        bundles.iter().zip(units.iter()).all(|(bundle, held)| bundle.reserved == *held)
    }

    fn balance_plus(self, delta: i64) -> Result<i64, Reject> {
        let balance = self.account.balance + delta;
        if (-BALANCE_MAX_MINOR..=BALANCE_MAX_MINOR).contains(&balance) {
            Ok(balance)
        } else {
            Err(Reject::AmountInvalid)
        }
    }
}

impl<'a> AccountMut<'a> {
    pub(super) fn new(
        account: &'a mut Account,
        extras: Option<&'a mut Extras>,
        holds: &'a mut HoldSlab,
    ) -> Self {
        assert_eq!(extras.is_some(), account.extras != NONE, "an account's extras are where it says");
        Self { account, extras, holds }
    }

    pub(super) fn as_ref(&self) -> AccountRef<'_> {
        AccountRef { account: self.account, extras: self.extras.as_deref(), holds: self.holds }
    }

    fn bundles_mut(&mut self) -> &mut [Bundle] {
        match self.extras.as_deref_mut() {
            Some(extras) => &mut extras.bundles,
            None => &mut [],
        }
    }

    pub(super) fn set_status(&mut self, status: AccountStatus) -> Result<((), Effect), Reject> {
        self.account.status = status;
        Ok(((), Effect::NONE))
    }

    /// Sets the balance a snapshot recorded, booking the difference as funding (up) or as a
    /// debit (down, overdraft allowed), so conservation holds exactly.
    pub(super) fn restore_balance(&mut self, balance: i64) -> Result<((), Effect), Reject> {
        let delta = balance - self.account.balance;
        self.as_ref().balance_plus(delta)?;
        self.account.balance = balance;
        let (funded, debited) = if delta >= 0 { (delta, 0) } else { (0, -delta) };
        let overdraft = self.as_ref().available() < 0;
        Ok(((), Effect { balance: delta, funded, debited, overdraft, ..Effect::NONE }))
    }

    /// Sets a bundle's remaining units as a snapshot recorded them: at most what it has now
    /// (units are only ever consumed) and at least what is held on it.
    pub(super) fn restore_bundle(
        &mut self,
        index: BundleIndex,
        remaining: u64,
    ) -> Result<((), Effect), Reject> {
        let bundle = self.bundles_mut().get_mut(usize::from(index.0)).ok_or(Reject::BundleNotFound)?;
        if remaining > bundle.remaining || remaining < bundle.reserved {
            return Err(Reject::InsufficientUnits);
        }
        bundle.remaining = remaining;
        Ok(((), Effect::NONE))
    }

    /// A top-up or refund.
    pub(super) fn credit(&mut self, amount: i64) -> Result<(Outcome, Effect), Reject> {
        let balance = self.as_ref().balance_plus(amount)?;
        self.account.balance = balance;
        let effect = Effect { balance: amount, funded: amount, ..Effect::NONE };
        Ok((Outcome { balance, overdraft: false }, effect))
    }

    pub(super) fn debit(&mut self, amount: i64, allow_overdraft: bool) -> Result<(Outcome, Effect), Reject> {
        self.debit_as(amount, allow_overdraft, true)
    }

    /// `debit`; unchecked (restoring a debit that was made) it neither refuses a barred account
    /// nor insufficient funds, and flags an overdraft when it leaves the funds below zero.
    pub(super) fn debit_as(
        &mut self,
        amount: i64,
        allow_overdraft: bool,
        checked: bool,
    ) -> Result<(Outcome, Effect), Reject> {
        let allow_overdraft = allow_overdraft || !checked;
        if checked && self.account.status == AccountStatus::Barred {
            return Err(Reject::AccountBarred);
        }
        if !allow_overdraft && 0 < amount && self.as_ref().available() < amount {
            return Err(Reject::InsufficientFunds);
        }
        let balance = self.as_ref().balance_plus(-amount)?;
        self.account.balance = balance;
        let overdrawn = 0 < amount && self.as_ref().available() < 0;
        assert!(!overdrawn || allow_overdraft);
        let effect = Effect { balance: -amount, debited: amount, overdraft: overdrawn, ..Effect::NONE };
        Ok((Outcome { balance, overdraft: overdrawn }, effect))
    }

    pub(super) fn reserve(
        &mut self,
        now_ms: u64,
        key: ReservationKey,
        money: i64,
        units: Option<(BundleIndex, u64)>,
        expires_at_ms: u64,
        checked: bool,
    ) -> Result<((), Effect), Reject> {
        let read = self.as_ref();
        if checked && read.account.status == AccountStatus::Barred {
            return Err(Reject::AccountBarred);
        }
        if read.position(key).is_some() {
            return Err(Reject::ReservationExists);
        }
        let bundles = read.bundles();
        let (bundle, mut units) = match units {
            None => (BUNDLE_NONE, 0),
            // Below BUNDLES_PER_ACCOUNT_MAX < BUNDLE_NONE, so it fits a u8.
            Some((BundleIndex(i), units)) if usize::from(i) < bundles.len() => (i as u8, units),
            Some(_) => return Err(Reject::BundleNotFound),
        };
        // A zero hold is always allowed, even on an overdrawn account (free bundle units).
        if checked && 0 < money && read.available() < money {
            return Err(Reject::InsufficientFunds);
        }
        if bundle != BUNDLE_NONE {
            let bundle = &bundles[usize::from(bundle)];
            if checked && bundle.free(now_ms) < units {
                return Err(Reject::InsufficientUnits);
            }
            // Restoring: the units that were held, as far as the bundle has them at all.
            units = units.min(bundle.remaining);
        }
        // Restoring may pass the limit for a while (see `violation_in`), never the counter's width.
        let limit = if checked { RESERVATIONS_PER_ACCOUNT_MAX } else { usize::from(u16::MAX) };
        if read.account.holds_len() >= limit {
            return Err(Reject::LimitReached);
        }

        let mut held = Reservation::new(key, money, bundle, units, expires_at_ms);
        held.next = self.account.holds;
        self.account.holds = self.holds.insert(held);
        self.account.holds_len += 1;
        self.account.reserved += money;
        if bundle != BUNDLE_NONE {
            self.bundles_mut()[usize::from(bundle)].reserved += units;
        }
        // Restored holds may exceed the funds in the order recovery meets them (see
        // `Ledger::restore_reservation`).
        let overdraft = !checked && self.as_ref().available() < 0;
        Ok(((), Effect { reserved: money, open: 1, deadline_ms: expires_at_ms, overdraft, ..Effect::NONE }))
    }

    /// Closes a hold with its usage. `exact` (restoring a commit): `units_used` are the units
    /// the commit consumed when it was made, taken from the bundle whatever else is held on it
    /// at this point of the journal.
    pub(super) fn commit(
        &mut self,
        now_ms: u64,
        key: ReservationKey,
        money_used: i64,
        units_used: u64,
        exact: bool,
    ) -> Result<(Committed, Effect), Reject> {
        let (before, at) = self.as_ref().position(key).ok_or(Reject::ReservationNotFound)?;
        let balance = self.as_ref().balance_plus(-money_used)?;

        // Units: first the held ones, then the bundle's free units (counted while our hold is
        // still on the bundle, so it is not counted twice); the rest is unpaid.
        let held = self.unlink(before, at);
        let from_hold = units_used.min(held.units);
        let beyond_hold = units_used - from_hold;
        let from_free = match self.bundles_mut().get_mut(usize::from(held.bundle())) {
            Some(bundle) => {
                let free = if exact {
                    bundle.remaining - from_hold.min(bundle.remaining)
                } else {
                    bundle.free(now_ms)
                };
                let from_free = beyond_hold.min(free);
                bundle.remaining = bundle.remaining.saturating_sub(from_hold + from_free);
                from_free
            }
            None => 0,
        };
        self.unhold(&held);
        self.account.balance = balance;
        let overdraft = held.money() < money_used && self.as_ref().available() < 0;
        let committed = Committed {
            debited: MoneyMinor(money_used),
            released: MoneyMinor((held.money() - money_used).max(0)),
            units_used: from_hold + from_free,
            units_released: held.units - from_hold,
            units_unpaid: beyond_hold - from_free,
            overdraft,
        };
        assert_eq!(committed.units_used + committed.units_unpaid, units_used);
        assert_eq!(committed.units_used + committed.units_released, held.units + from_free);

        let effect = Effect {
            balance: -money_used,
            debited: money_used,
            reserved: -held.money(),
            open: -1,
            overdraft: committed.overdraft,
            ..Effect::NONE
        };
        Ok((committed, effect))
    }

    pub(super) fn release(&mut self, key: ReservationKey) -> Result<(Committed, Effect), Reject> {
        let (before, at) = self.as_ref().position(key).ok_or(Reject::ReservationNotFound)?;
        let held = self.unlink(before, at);
        self.unhold(&held);
        let committed = Committed {
            released: MoneyMinor(held.money()),
            units_released: held.units,
            ..Committed::default()
        };
        Ok((committed, Effect { reserved: -held.money(), open: -1, ..Effect::NONE }))
    }

    /// Releases the reservations due at `now_ms` into `expired`; returns the movements and the
    /// earliest deadline left.
    pub(super) fn expire(
        &mut self,
        now_ms: u64,
        id: AccountId,
        expired: &mut Vec<(AccountId, ReservationKey, MoneyMinor, u64)>,
    ) -> (Effect, u64) {
        let mut effect = Effect::NONE;
        let mut deadline_min_ms = u64::MAX;
        let (mut before, mut at) = (NONE, self.account.holds);
        // Each step keeps or removes one hold of a list `violation` checked to be at most
        // `holds_len` long.
        for _ in 0..self.account.holds_len() {
            let hold = self.holds.slot(at);
            let next = hold.next;
            if now_ms < hold.expires_at_ms {
                deadline_min_ms = deadline_min_ms.min(hold.expires_at_ms);
                (before, at) = (at, next);
                continue;
            }
            let held = self.unlink(before, at);
            self.unhold(&held);
            effect.reserved -= held.money();
            effect.open -= 1;
            expired.push((id, held.key(), MoneyMinor(held.money()), held.units));
            at = next;
        }
        assert_eq!(at, NONE, "the sweep walked the whole list");
        (effect, deadline_min_ms)
    }

    /// Takes the hold at `at` (after `before`, or first if `before` is `NONE`) out of the
    /// account's list and frees its slot; returns it.
    fn unlink(&mut self, before: u32, at: u32) -> Reservation {
        let next = self.holds.slot(at).next;
        if before == NONE {
            self.account.holds = next;
        } else {
            self.holds.slot_mut(before).next = next;
        }
        self.account.holds_len -= 1;
        self.holds.remove(at)
    }

    /// Takes a removed reservation's holds off the account and its bundle.
    fn unhold(&mut self, held: &Reservation) {
        self.account.reserved -= held.money();
        if let Some(bundle) = self.bundles_mut().get_mut(usize::from(held.bundle())) {
            bundle.reserved -= held.units;
        }
    }
}
