//! One account: its balance, its bundles and the reservations held on them. Everything here runs
//! under the account's shard lock. Each mutating method either refuses and changes nothing, or
//! changes the account and returns an [`Effect`]: the movements the shard adds to its
//! ledger-wide sums. The shard checks the account's invariants after every effect.

use std::sync::Arc;

use crate::catalog::{AccountStatus, Funding};
use crate::rating::{Currency, MoneyMinor};

use super::keys::Outcome;
use super::{
    AccountId, AccountView, BundleIndex, BundleView, Committed, NewAccount, Reject, ReservationKey,
    AMOUNT_MAX_MINOR, BALANCE_MAX_MINOR, BUNDLES_PER_ACCOUNT_MAX, RESERVATIONS_PER_ACCOUNT_MAX,
};

/// A reservation's `bundle` when it holds no units.
const BUNDLE_NONE: u16 = u16::MAX;

/// Field order is for size: 88 bytes, checked below. Money is i64 minor units; the currency is
/// an index into the ledger's interned currencies.
pub(super) struct Account {
    pub(super) balance: i64,
    /// Σ money of `reservations`.
    pub(super) reserved: i64,
    /// 0 for prepaid accounts.
    pub(super) credit_limit: i64,
    /// Open holds, unordered (a few per account; found by a linear scan). The capacity is kept
    /// when they close, so the reserve/commit path does not allocate once an account has had a
    /// session; it starts at one hold (40 bytes) and grows as more are held at once.
    pub(super) reservations: Vec<Reservation>,
    pub(super) bundles: Box<[Bundle]>,
    pub(super) customer: Box<str>,
    pub(super) currency: u8,
    pub(super) funding: Funding,
    pub(super) status: AccountStatus,
}

const _: () = assert!(size_of::<Account>() <= 88);
const _: () = assert!(size_of::<Reservation>() <= 40);
const _: () = assert!(size_of::<Bundle>() <= 40);

pub(super) struct Bundle {
    /// Interned: accounts of one plan share the name.
    service: Arc<str>,
    /// Units not yet consumed, held ones included.
    remaining: u64,
    /// Σ units of the reservations on this bundle; ≤ `remaining`.
    reserved: u64,
    expires_at_ms: u64,
}

/// The key is stored split so the struct packs into 40 bytes.
pub(super) struct Reservation {
    session: u64,
    money: i64,
    units: u64,
    pub(super) expires_at_ms: u64,
    rating_group: u32,
    /// An index into `bundles`, or `BUNDLE_NONE`.
    bundle: u16,
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
pub(super) struct Fingerprint(i64, i64, usize, AccountStatus);

impl Bundle {
    pub(super) fn new(service: Arc<str>, units: u64, expires_at_ms: u64) -> Self {
        Self { service, remaining: units, reserved: 0, expires_at_ms }
    }

    /// Units that may still be reserved or consumed: none once the bundle has expired.
    fn free(&self, now_ms: u64) -> u64 {
        if now_ms < self.expires_at_ms {
            self.remaining - self.reserved
        } else {
            0
        }
    }
}

impl Reservation {
    fn key(&self) -> ReservationKey {
        ReservationKey { session: self.session, rating_group: self.rating_group }
    }
}

impl Account {
    pub(super) fn new(new: &NewAccount, currency: u8, bundles: Box<[Bundle]>) -> Self {
        Self {
            balance: new.balance.0,
            reserved: 0,
            credit_limit: new.credit_limit.0,
            reservations: Vec::new(),
            bundles,
            customer: new.customer.as_str().into(),
            currency,
            funding: new.funding,
            status: new.status,
        }
    }

    /// balance + credit_limit − reserved; negative only after an overdraft.
    pub(super) fn available(&self) -> i64 {
        self.balance + self.credit_limit - self.reserved
    }

    pub(super) fn fingerprint(&self) -> Fingerprint {
        Fingerprint(self.balance, self.reserved, self.reservations.len(), self.status)
    }

    pub(super) fn view(&self, id: AccountId, currency: Currency) -> AccountView {
        let bundles = self.bundles.iter().enumerate().map(|(i, bundle)| BundleView {
            index: BundleIndex(i as u16),
            service: bundle.service.to_string(),
            remaining: bundle.remaining,
            reserved: bundle.reserved,
            expires_at_ms: bundle.expires_at_ms,
        });
        AccountView {
            id,
            customer: self.customer.to_string(),
            currency,
            funding: self.funding,
            status: self.status,
            balance: MoneyMinor(self.balance),
            credit_limit: MoneyMinor(self.credit_limit),
            reserved: MoneyMinor(self.reserved),
            available: MoneyMinor(self.available().max(0)),
            bundles: bundles.collect(),
            reservations: self.reservations.len(),
        }
    }

    pub(super) fn find_bundle(&self, service: &str, now_ms: u64) -> Option<(BundleIndex, u64)> {
        let mut bundles = self.bundles.iter().enumerate();
        let (i, bundle) = bundles.find(|(_, b)| *b.service == *service && b.free(now_ms) > 0)?;
        Some((BundleIndex(i as u16), bundle.free(now_ms)))
    }

    /// The earliest deadline of the open reservations, or u64::MAX.
    pub(super) fn deadline_min_ms(&self) -> u64 {
        self.reservations.iter().map(|r| r.expires_at_ms).min().unwrap_or(u64::MAX)
    }

    pub(super) fn set_status(&mut self, status: AccountStatus) -> Result<((), Effect), Reject> {
        self.status = status;
        Ok(((), Effect::NONE))
    }

    /// A top-up or refund.
    pub(super) fn credit(&mut self, amount: i64) -> Result<(Outcome, Effect), Reject> {
        let balance = self.balance_plus(amount)?;
        self.balance = balance;
        let effect = Effect { balance: amount, funded: amount, ..Effect::NONE };
        Ok((Outcome { balance, overdraft: false }, effect))
    }

    pub(super) fn debit(&mut self, amount: i64, allow_overdraft: bool) -> Result<(Outcome, Effect), Reject> {
        if self.status == AccountStatus::Barred {
            return Err(Reject::AccountBarred);
        }
        if !allow_overdraft && 0 < amount && self.available() < amount {
            return Err(Reject::InsufficientFunds);
        }
        let balance = self.balance_plus(-amount)?;
        self.balance = balance;
        let overdrawn = 0 < amount && self.available() < 0;
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
        if checked && self.status == AccountStatus::Barred {
            return Err(Reject::AccountBarred);
        }
        if self.position(key).is_some() {
            return Err(Reject::ReservationExists);
        }
        let (bundle, mut units) = match units {
            None => (BUNDLE_NONE, 0),
            Some((BundleIndex(i), units)) if usize::from(i) < self.bundles.len() => (i, units),
            Some(_) => return Err(Reject::BundleNotFound),
        };
        // A zero hold is always allowed, even on an overdrawn account (free bundle units).
        if checked && 0 < money && self.available() < money {
            return Err(Reject::InsufficientFunds);
        }
        if bundle != BUNDLE_NONE {
            let bundle = &self.bundles[usize::from(bundle)];
            if checked && bundle.free(now_ms) < units {
                return Err(Reject::InsufficientUnits);
            }
            // Restoring: never more than the bundle has left (held ≤ remaining stays true); the
            // commit that follows consumes from what is held, then what is free, the same way.
            units = units.min(bundle.remaining - bundle.reserved);
        }
        if self.reservations.len() == RESERVATIONS_PER_ACCOUNT_MAX {
            return Err(Reject::LimitReached);
        }
        assert!(self.reservations.len() < RESERVATIONS_PER_ACCOUNT_MAX);

        if self.reservations.capacity() == 0 {
            // Most accounts hold one grant at a time; Vec's default first growth (4) would keep
            // 160 bytes per account that has ever had a session.
            self.reservations.reserve_exact(1);
        }
        self.reservations.push(Reservation {
            session: key.session,
            money,
            units,
            expires_at_ms,
            rating_group: key.rating_group,
            bundle,
        });
        self.reserved += money;
        if bundle != BUNDLE_NONE {
            self.bundles[usize::from(bundle)].reserved += units;
        }
        // Restored holds may exceed the funds in the order recovery meets them (see
        // `Ledger::restore_reservation`).
        let overdraft = !checked && self.available() < 0;
        Ok(((), Effect { reserved: money, open: 1, deadline_ms: expires_at_ms, overdraft, ..Effect::NONE }))
    }

    pub(super) fn commit(
        &mut self,
        now_ms: u64,
        key: ReservationKey,
        money_used: i64,
        units_used: u64,
    ) -> Result<(Committed, Effect), Reject> {
        let position = self.position(key).ok_or(Reject::ReservationNotFound)?;
        let balance = self.balance_plus(-money_used)?;

        // Units: first the held ones, then the bundle's free units (counted while our hold is
        // still on the bundle, so it is not counted twice); the rest is unpaid.
        let held = self.reservations.swap_remove(position);
        let from_hold = units_used.min(held.units);
        let beyond_hold = units_used - from_hold;
        let from_free = match self.bundles.get_mut(usize::from(held.bundle)) {
            Some(bundle) => {
                let from_free = beyond_hold.min(bundle.free(now_ms));
                bundle.remaining -= from_hold + from_free;
                from_free
            }
            None => 0,
        };
        self.unhold(&held);
        self.balance = balance;
        let overdraft = held.money < money_used && self.available() < 0;
        let committed = Committed {
            debited: MoneyMinor(money_used),
            released: MoneyMinor((held.money - money_used).max(0)),
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
            reserved: -held.money,
            open: -1,
            overdraft: committed.overdraft,
            ..Effect::NONE
        };
        Ok((committed, effect))
    }

    pub(super) fn release(&mut self, key: ReservationKey) -> Result<(Committed, Effect), Reject> {
        let position = self.position(key).ok_or(Reject::ReservationNotFound)?;
        let held = self.reservations.swap_remove(position);
        self.unhold(&held);
        let committed = Committed {
            released: MoneyMinor(held.money),
            units_released: held.units,
            ..Committed::default()
        };
        Ok((committed, Effect { reserved: -held.money, open: -1, ..Effect::NONE }))
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
        let mut i = 0;
        while i < self.reservations.len() {
            let deadline_ms = self.reservations[i].expires_at_ms;
            if now_ms < deadline_ms {
                deadline_min_ms = deadline_min_ms.min(deadline_ms);
                i += 1;
                continue;
            }
            let held = self.reservations.swap_remove(i);
            self.unhold(&held);
            effect.reserved -= held.money;
            effect.open -= 1;
            expired.push((id, held.key(), MoneyMinor(held.money), held.units));
        }
        (effect, deadline_min_ms)
    }

    /// Why the account is inconsistent, if it is. Runs after every mutation, so it is linear in
    /// the (bounded) reservations and bundles, never quadratic.
    pub(super) fn violation(&self) -> Option<&'static str> {
        if RESERVATIONS_PER_ACCOUNT_MAX < self.reservations.len() {
            return Some("more reservations than the limit");
        }
        if !(-BALANCE_MAX_MINOR..=BALANCE_MAX_MINOR).contains(&self.balance) {
            return Some("balance beyond the limit");
        }
        let mut money = 0i64;
        for held in &self.reservations {
            if !(0..=AMOUNT_MAX_MINOR).contains(&held.money) {
                return Some("a hold's money is out of range");
            }
            money += held.money;
            let on_bundle = usize::from(held.bundle) < self.bundles.len();
            let no_bundle = held.bundle == BUNDLE_NONE && held.units == 0;
            if !(on_bundle || no_bundle) {
                return Some("a hold refers to no bundle");
            }
        }
        if money != self.reserved {
            return Some("reserved money differs from the sum of the holds");
        }
        if !self.bundle_holds_add_up() {
            return Some("a bundle's reserved units differ from the sum of its holds");
        }
        if self.bundles.iter().any(|bundle| bundle.remaining < bundle.reserved) {
            return Some("a bundle holds more units than it has");
        }
        None
    }

    /// Each bundle's `reserved` equals the units of the holds on it.
    fn bundle_holds_add_up(&self) -> bool {
        let holds_on = |i: usize| self.reservations.iter().filter(move |r| usize::from(r.bundle) == i);
        if self.bundles.len() * self.reservations.len() <= 64 {
            // The usual few bundles and holds: a nested loop beats filling a table.
            let sum = |i| holds_on(i).map(|r| r.units).sum::<u64>();
            return self.bundles.iter().enumerate().all(|(i, bundle)| bundle.reserved == sum(i));
        }
        let mut units = [0u64; BUNDLES_PER_ACCOUNT_MAX];
        for held in &self.reservations {
            if let Some(sum) = units.get_mut(usize::from(held.bundle)) {
                *sum += held.units;
            }
        }
        self.bundles.iter().zip(units.iter()).all(|(bundle, held)| bundle.reserved == *held)
    }

    fn position(&self, key: ReservationKey) -> Option<usize> {
        self.reservations.iter().position(|r| r.session == key.session && r.rating_group == key.rating_group)
    }

    /// Takes a removed reservation's holds off the account and its bundle.
    fn unhold(&mut self, held: &Reservation) {
        self.reserved -= held.money;
        if let Some(bundle) = self.bundles.get_mut(usize::from(held.bundle)) {
            bundle.reserved -= held.units;
        }
    }

    fn balance_plus(&self, delta: i64) -> Result<i64, Reject> {
        let balance = self.balance + delta;
        if (-BALANCE_MAX_MINOR..=BALANCE_MAX_MINOR).contains(&balance) {
            Ok(balance)
        } else {
            Err(Reject::AmountInvalid)
        }
    }
}
