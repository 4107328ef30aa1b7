//! One test per operation and per refusal. `check_conservation` runs after every test's
//! mutations through `Fixture::drop`.

use super::*;
use crate::catalog::{AccountStatus, Funding, SubscriptionKind};
use crate::rating::{Currency, MoneyMinor};

const EUR: Currency = Currency { code: "EUR", numeric: 978, exponent: 2 };
const USD: Currency = Currency { code: "USD", numeric: 840, exponent: 2 };
const NOW: u64 = 1_000_000;
/// `debit`'s `allow_overdraft`.
const ALLOW: bool = true;
const REFUSE: bool = false;
const LATER: u64 = NOW + 30_000;

fn key(session: u64) -> ReservationKey {
    ReservationKey { session, rating_group: 10 }
}

fn m(minor: i64) -> MoneyMinor {
    MoneyMinor(minor)
}

fn prepaid(msisdn: &str, balance: i64) -> NewAccount {
    NewAccount {
        customer: format!("customer-{msisdn}"),
        subscriptions: vec![(SubscriptionKind::E164, msisdn.to_string())],
        currency: EUR,
        funding: Funding::Prepaid,
        status: AccountStatus::Active,
        balance: m(balance),
        credit_limit: m(0),
        bundles: Vec::new(),
    }
}

fn with_bundles(mut new: NewAccount, bundles: &[(&str, u64, u64)]) -> NewAccount {
    new.bundles = bundles
        .iter()
        .map(|&(service, units, expires_at_ms)| NewBundle { service: service.into(), units, expires_at_ms })
        .collect();
    new
}

/// A ledger whose conservation is checked when the test ends.
struct Fixture(Ledger);

impl Drop for Fixture {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert!(self.0.check_conservation(), "conservation or shard sums broken");
        }
    }
}

impl std::ops::Deref for Fixture {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        &self.0
    }
}

fn ledger() -> Fixture {
    Fixture(Ledger::new())
}

fn one(balance: i64) -> (Fixture, AccountId) {
    let ledger = ledger();
    let id = ledger.create(prepaid("491700000001", balance)).unwrap();
    (ledger, id)
}

fn view(ledger: &Ledger, id: AccountId) -> AccountView {
    ledger.view(id).unwrap()
}

// ---- create, lookup, view, set_status ----

#[test]
fn create_assigns_dense_ids_and_indexes_every_subscription() {
    let ledger = ledger();
    let mut first = prepaid("491700000001", 500);
    first.subscriptions.push((SubscriptionKind::Imsi, "262011234567890".into()));
    assert_eq!(ledger.create(first), Ok(AccountId(0)));
    assert_eq!(ledger.create(prepaid("491700000002", 0)), Ok(AccountId(1)));
    assert_eq!(ledger.lookup(SubscriptionKind::E164, "491700000001"), Some(AccountId(0)));
    assert_eq!(ledger.lookup(SubscriptionKind::Imsi, "262011234567890"), Some(AccountId(0)));
    assert_eq!(ledger.lookup(SubscriptionKind::E164, "491700000002"), Some(AccountId(1)));
    // One map per kind: the same digits under another kind are another subscription.
    assert_eq!(ledger.lookup(SubscriptionKind::Imsi, "491700000001"), None);
    assert_eq!(ledger.lookup(SubscriptionKind::E164, "49170000000"), None);
    assert_eq!(ledger.stats().accounts, 2);
}

#[test]
fn create_fills_many_shards_and_chunks() {
    let ledger = ledger();
    let count = (SHARDS * ACCOUNTS_PER_CHUNK + 3) as u32;
    for n in 0..count {
        assert_eq!(ledger.create(prepaid(&format!("49{n:010}"), i64::from(n))), Ok(AccountId(n)));
    }
    for n in [0, 1, 63, 64, 8191, 8192, count - 1] {
        assert_eq!(ledger.lookup(SubscriptionKind::E164, &format!("49{n:010}")), Some(AccountId(n)));
        assert_eq!(view(&ledger, AccountId(n)).balance, m(i64::from(n)));
    }
    assert!(ledger.view(AccountId(count)).is_none());
}

#[test]
fn create_refuses_a_taken_or_repeated_subscription_and_changes_nothing() {
    let (ledger, _) = one(100);
    assert_eq!(ledger.create(prepaid("491700000001", 5)), Err(CreateError::SubscriptionTaken));
    let mut twice = prepaid("491700000009", 5);
    twice.subscriptions.push((SubscriptionKind::E164, "491700000009".into()));
    assert_eq!(ledger.create(twice), Err(CreateError::SubscriptionTaken));
    assert_eq!(ledger.lookup(SubscriptionKind::E164, "491700000009"), None);
    assert_eq!(ledger.stats().accounts, 1);
    assert_eq!(ledger.create(prepaid("491700000009", 5)), Ok(AccountId(1)));
}

#[test]
fn create_refuses_what_the_limits_and_funding_rules_forbid() {
    let ledger = ledger();
    let mut new = prepaid("1", 0);
    new.subscriptions =
        (0..=SUBSCRIPTIONS_PER_ACCOUNT_MAX).map(|n| (SubscriptionKind::Nai, n.to_string())).collect();
    assert_eq!(ledger.create(new), Err(CreateError::SubscriptionsTooMany));

    let bundles = vec![("data", 1, u64::MAX); BUNDLES_PER_ACCOUNT_MAX + 1];
    assert_eq!(ledger.create(with_bundles(prepaid("1", 0), &bundles)), Err(CreateError::BundlesTooMany));

    assert_eq!(ledger.create(prepaid("", 0)), Err(CreateError::TextInvalid));
    let long = "x".repeat(SUBSCRIPTION_DATA_MAX_BYTES + 1);
    assert_eq!(ledger.create(prepaid(&long, 0)), Err(CreateError::TextInvalid));
    let long_service = "s".repeat(SERVICE_NAME_MAX_BYTES + 1);
    let new = with_bundles(prepaid("1", 0), &[(long_service.as_str(), 1, u64::MAX)]);
    assert_eq!(ledger.create(new), Err(CreateError::TextInvalid));
    let mut new = prepaid("1", 0);
    new.customer = "c".repeat(CUSTOMER_ID_MAX_BYTES + 1);
    assert_eq!(ledger.create(new), Err(CreateError::TextInvalid));

    assert_eq!(ledger.create(prepaid("1", AMOUNT_MAX_MINOR + 1)), Err(CreateError::AmountInvalid));
    assert_eq!(ledger.create(prepaid("1", -1)), Err(CreateError::FundingInvalid));
    let mut new = prepaid("1", 0);
    new.credit_limit = m(100);
    assert_eq!(ledger.create(new), Err(CreateError::FundingInvalid));
    let mut new = prepaid("1", 10);
    new.funding = Funding::OnFile;
    assert_eq!(ledger.create(new), Err(CreateError::FundingInvalid));
    let mut new = prepaid("1", 0);
    new.funding = Funding::OnFile;
    new.credit_limit = m(-1);
    assert_eq!(ledger.create(new), Err(CreateError::FundingInvalid));

    assert_eq!(ledger.stats(), LedgerStats::default(), "refusals change nothing");
}

#[test]
fn create_interns_at_most_the_currency_limit_and_refuses_conflicts() {
    let ledger = ledger();
    let codes: Vec<&'static str> = (0..=CURRENCIES_MAX).map(|n| &*format!("C{n:02}").leak()).collect();
    for (n, code) in codes.iter().enumerate() {
        let mut new = prepaid(&n.to_string(), 0);
        new.currency = Currency { code, numeric: n as u16, exponent: 2 };
        let result = ledger.create(new);
        if n < CURRENCIES_MAX {
            assert_eq!(result, Ok(AccountId(n as u32)));
        } else {
            assert_eq!(result, Err(CreateError::CurrenciesTooMany));
        }
    }
    let mut new = prepaid("x", 0);
    new.currency = Currency { code: "ZZZ", numeric: 3, exponent: 2 };
    assert_eq!(ledger.create(new), Err(CreateError::CurrencyConflict));
    assert_eq!(ledger.stats().reserved_money_by_currency.len(), CURRENCIES_MAX);
}

#[test]
fn create_interns_service_names_up_to_the_limit() {
    let ledger = ledger();
    let names: Vec<String> = (0..SERVICE_NAMES_MAX).map(|n| format!("service-{n}")).collect();
    for (n, chunk) in names.chunks(BUNDLES_PER_ACCOUNT_MAX).enumerate() {
        let bundles: Vec<_> = chunk.iter().map(|name| (name.as_str(), 1, u64::MAX)).collect();
        assert!(ledger.create(with_bundles(prepaid(&n.to_string(), 0), &bundles)).is_ok());
    }
    // Known names are shared and still fine; one more new name is not.
    let known = with_bundles(prepaid("known", 0), &[("service-0", 5, u64::MAX)]);
    assert!(ledger.create(known).is_ok());
    let new = with_bundles(prepaid("new", 0), &[("service-0", 5, u64::MAX), ("fresh", 1, u64::MAX)]);
    assert_eq!(ledger.create(new), Err(CreateError::ServiceNamesTooMany));
    assert_eq!(ledger.lookup(SubscriptionKind::E164, "new"), None);
}

#[test]
fn view_shows_the_account() {
    let ledger = ledger();
    let mut new = with_bundles(prepaid("491700000001", 0), &[("data", 1000, LATER)]);
    new.funding = Funding::OnFile;
    new.credit_limit = m(5000);
    new.customer = "ACME".into();
    let id = ledger.create(new).unwrap();
    ledger.reserve(NOW, id, key(1), m(1200), Some((BundleIndex(0), 300)), LATER).unwrap();
    let view = view(&ledger, id);
    assert_eq!((view.id, view.customer.as_str(), view.currency), (id, "ACME", EUR));
    assert_eq!((view.funding, view.status), (Funding::OnFile, AccountStatus::Active));
    assert_eq!(
        (view.balance, view.credit_limit, view.reserved, view.available),
        (m(0), m(5000), m(1200), m(3800))
    );
    assert_eq!(view.reservations, 1);
    let bundle = &view.bundles[0];
    assert_eq!((bundle.index, bundle.service.as_str()), (BundleIndex(0), "data"));
    assert_eq!((bundle.remaining, bundle.reserved, bundle.expires_at_ms), (1000, 300, LATER));
    assert!(ledger.view(AccountId(1)).is_none());
}

#[test]
fn set_status_bars_new_holds_and_debits_but_not_usage_already_granted() {
    let (ledger, id) = one(1000);
    ledger.reserve(NOW, id, key(1), m(100), None, LATER).unwrap();
    ledger.reserve(NOW, id, key(2), m(100), None, LATER).unwrap();
    assert_eq!(ledger.set_status(id, AccountStatus::Barred), Ok(()));
    assert_eq!(view(&ledger, id).status, AccountStatus::Barred);
    assert_eq!(ledger.reserve(NOW, id, key(3), m(1), None, LATER), Err(Reject::AccountBarred));
    assert_eq!(ledger.debit(NOW, id, 7, m(1), ALLOW), Err(Reject::AccountBarred));
    assert!(ledger.commit(NOW, id, key(1), m(50), 0).is_ok());
    assert!(ledger.release(id, key(2)).is_ok());
    assert_eq!(ledger.top_up(id, 8, m(10)), Ok(m(960)));
    assert_eq!(ledger.set_status(id, AccountStatus::Active), Ok(()));
    assert_eq!(ledger.reserve(NOW, id, key(3), m(1), None, LATER), Ok(()));
    assert_eq!(ledger.set_status(AccountId(9), AccountStatus::Active), Err(Reject::AccountNotFound));
}

// ---- top_up, refund, debit: idempotent on their key ----

#[test]
fn top_up_is_idempotent_on_its_key() {
    let (ledger, id) = one(100);
    assert_eq!(ledger.top_up(id, 42, m(50)), Ok(m(150)));
    assert_eq!(ledger.top_up(id, 43, m(50)), Ok(m(200)));
    assert_eq!(ledger.top_up(id, 42, m(50)), Ok(m(150)), "the original result again");
    assert_eq!(view(&ledger, id).balance, m(200), "and nothing changed");
}

#[test]
fn a_key_used_for_another_operation_is_refused() {
    let ledger = ledger();
    let a = ledger.create(prepaid("1", 100)).unwrap();
    let b = ledger.create(prepaid("2", 100)).unwrap();
    assert_eq!(ledger.top_up(a, 42, m(50)), Ok(m(150)));
    assert_eq!(ledger.top_up(a, 42, m(51)), Err(Reject::KeyReused));
    assert_eq!(ledger.top_up(b, 42, m(50)), Err(Reject::KeyReused));
    assert_eq!(ledger.refund(a, 42, m(50)), Err(Reject::KeyReused));
    assert_eq!(ledger.debit(NOW, a, 42, m(50), REFUSE), Err(Reject::KeyReused));
    assert_eq!((view(&ledger, a).balance, view(&ledger, b).balance), (m(150), m(100)));
}

#[test]
fn refusals_are_not_remembered_under_their_key() {
    let (ledger, id) = one(100);
    assert_eq!(ledger.top_up(AccountId(5), 42, m(50)), Err(Reject::AccountNotFound));
    assert_eq!(ledger.top_up(id, 42, m(50)), Ok(m(150)));
    assert_eq!(ledger.debit(NOW, id, 43, m(500), REFUSE), Err(Reject::InsufficientFunds));
    assert_eq!(ledger.top_up(id, 44, m(1000)), Ok(m(1150)));
    assert_eq!(ledger.debit(NOW, id, 43, m(500), REFUSE).map(|c| c.debited), Ok(m(500)));
}

#[test]
fn amounts_out_of_range_are_refused() {
    let (ledger, id) = one(100);
    assert_eq!(ledger.top_up(id, 1, m(-1)), Err(Reject::AmountInvalid));
    assert_eq!(ledger.top_up(id, 1, m(AMOUNT_MAX_MINOR + 1)), Err(Reject::AmountInvalid));
    assert_eq!(ledger.refund(id, 1, m(-5)), Err(Reject::AmountInvalid));
    assert_eq!(ledger.debit(NOW, id, 1, m(-5), ALLOW), Err(Reject::AmountInvalid));
    assert_eq!(ledger.reserve(NOW, id, key(1), m(-1), None, LATER), Err(Reject::AmountInvalid));
    ledger.reserve(NOW, id, key(1), m(0), None, LATER).unwrap();
    assert_eq!(ledger.commit(NOW, id, key(1), m(-1), 0), Err(Reject::AmountInvalid));
    assert_eq!(ledger.commit(NOW, id, key(1), m(AMOUNT_MAX_MINOR + 1), 0), Err(Reject::AmountInvalid));
    // AmountInvalid comes before AccountNotFound.
    assert_eq!(ledger.top_up(AccountId(7), 1, m(-1)), Err(Reject::AmountInvalid));
    // A balance may not pass BALANCE_MAX_MINOR, one amount at a time.
    for key in 0..(BALANCE_MAX_MINOR / AMOUNT_MAX_MINOR) as u64 - 1 {
        ledger.top_up(id, 1000 + key, m(AMOUNT_MAX_MINOR)).unwrap();
    }
    assert_eq!(ledger.top_up(id, 1, m(AMOUNT_MAX_MINOR)), Err(Reject::AmountInvalid));
    assert_eq!(ledger.top_up(id, 1, m(AMOUNT_MAX_MINOR - 100)), Ok(m(BALANCE_MAX_MINOR)));
}

#[test]
fn refund_credits_and_counts_as_funding() {
    let (ledger, id) = one(100);
    assert_eq!(ledger.debit(NOW, id, 1, m(80), REFUSE).map(|c| c.debited), Ok(m(80)));
    assert_eq!(ledger.refund(id, 2, m(30)), Ok(m(50)));
    assert_eq!(ledger.refund(id, 2, m(30)), Ok(m(50)));
    assert_eq!(ledger.refund(AccountId(3), 3, m(30)), Err(Reject::AccountNotFound));
    assert_eq!(view(&ledger, id).balance, m(50));
    assert!(ledger.check_conservation());
}

#[test]
fn debit_refuses_beyond_the_funds_unless_overdraft_is_allowed() {
    let (ledger, id) = one(100);
    ledger.reserve(NOW, id, key(1), m(60), None, LATER).unwrap();
    assert_eq!(ledger.debit(NOW, id, 1, m(41), REFUSE), Err(Reject::InsufficientFunds));
    let exact = ledger.debit(NOW, id, 2, m(40), REFUSE).unwrap();
    assert_eq!((exact.debited, exact.overdraft), (m(40), false));
    let over = ledger.debit(NOW, id, 3, m(25), ALLOW).unwrap();
    assert_eq!((over.debited, over.overdraft, over.released), (m(25), true, m(0)));
    assert_eq!(ledger.debit(NOW, id, 3, m(25), ALLOW), Ok(over), "replayed, not charged again");
    assert_eq!(ledger.debit(NOW, id, 3, m(25), REFUSE), Err(Reject::KeyReused));
    assert_eq!(view(&ledger, id).balance, m(35));
    assert_eq!(ledger.available(id), Ok(m(0)), "clamped; the raw figure is -25");
    assert_eq!(ledger.debit(NOW, id, 4, m(0), REFUSE).map(|c| c.overdraft), Ok(false));
    assert_eq!(ledger.debit(NOW, AccountId(8), 5, m(1), ALLOW), Err(Reject::AccountNotFound));
}

// ---- available, find_bundle ----

#[test]
fn available_counts_the_credit_limit_and_the_holds() {
    let ledger = ledger();
    let mut on_file = prepaid("1", 0);
    on_file.funding = Funding::OnFile;
    on_file.credit_limit = m(10_000);
    let id = ledger.create(on_file).unwrap();
    assert_eq!(ledger.available(id), Ok(m(10_000)));
    ledger.reserve(NOW, id, key(1), m(2_500), None, LATER).unwrap();
    assert_eq!(ledger.available(id), Ok(m(7_500)));
    ledger.commit(NOW, id, key(1), m(2_000), 0).unwrap();
    assert_eq!((view(&ledger, id).balance, ledger.available(id)), (m(-2_000), Ok(m(8_000))));
    assert_eq!(ledger.available(AccountId(1)), Err(Reject::AccountNotFound));
}

#[test]
fn find_bundle_returns_the_first_live_bundle_with_free_units() {
    let ledger = ledger();
    let bundles = [("voice", 100, u64::MAX), ("data", 50, NOW), ("data", 10, LATER), ("data", 70, LATER)];
    let id = ledger.create(with_bundles(prepaid("1", 0), &bundles)).unwrap();
    // Bundle 1 expires at NOW: usable before, not at.
    assert_eq!(ledger.find_bundle(id, "data", NOW - 1), Some((BundleIndex(1), 50)));
    assert_eq!(ledger.find_bundle(id, "data", NOW), Some((BundleIndex(2), 10)));
    ledger.reserve(NOW, id, key(1), m(0), Some((BundleIndex(2), 10)), LATER).unwrap();
    assert_eq!(ledger.find_bundle(id, "data", NOW), Some((BundleIndex(3), 70)));
    assert_eq!(ledger.find_bundle(id, "voice", NOW), Some((BundleIndex(0), 100)));
    assert_eq!(ledger.find_bundle(id, "data", LATER), None);
    assert_eq!(ledger.find_bundle(id, "sms", NOW), None);
    assert_eq!(ledger.find_bundle(AccountId(1), "data", NOW), None);
}

// ---- reserve ----

#[test]
fn reserve_holds_money_and_units() {
    let ledger = ledger();
    let id = ledger.create(with_bundles(prepaid("1", 1000), &[("data", 500, LATER)])).unwrap();
    assert_eq!(ledger.reserve(NOW, id, key(1), m(300), Some((BundleIndex(0), 200)), LATER), Ok(()));
    let view = view(&ledger, id);
    assert_eq!((view.balance, view.reserved, view.available), (m(1000), m(300), m(700)));
    assert_eq!((view.bundles[0].remaining, view.bundles[0].reserved), (500, 200));
    let stats = ledger.stats();
    assert_eq!((stats.accounts, stats.open_reservations), (1, 1));
    assert_eq!(stats.reserved_money_by_currency, vec![(EUR, m(300))]);
}

#[test]
fn restored_holds_skip_the_funds_checks_and_cap_bundle_units() {
    let ledger = ledger();
    let id = ledger.create(with_bundles(prepaid("1", 100), &[("data", 500, LATER)])).unwrap();
    ledger.set_status(id, AccountStatus::Barred).unwrap();
    // Recovery meets a hold made before the account was barred, and one beyond the funds
    // (another session's release that made room comes later in the journal).
    assert_eq!(ledger.restore_reservation(NOW, id, key(1), m(80), None, LATER), Ok(()));
    assert_eq!(
        ledger.restore_reservation(NOW, id, key(2), m(50), Some((BundleIndex(0), 600)), LATER),
        Ok(())
    );
    let v = view(&ledger, id);
    assert_eq!((v.balance, v.reserved), (m(100), m(130)));
    assert_eq!((v.bundles[0].remaining, v.bundles[0].reserved), (500, 500), "units capped at what is left");
    // The same key twice is still refused: a record applied twice is a bug, not a hold.
    assert_eq!(
        ledger.restore_reservation(NOW, id, key(1), m(1), None, LATER),
        Err(Reject::ReservationExists)
    );
    ledger.release(id, key(1)).unwrap();
    ledger.commit(NOW, id, key(2), m(50), 500).unwrap();
    let v = view(&ledger, id);
    assert_eq!((v.balance, v.reserved, v.bundles[0].remaining), (m(50), m(0), 0));
}

#[test]
fn reserve_refuses_in_precedence_order() {
    let ledger = ledger();
    let id = ledger.create(with_bundles(prepaid("1", 100), &[("data", 50, LATER)])).unwrap();
    let data = |units| Some((BundleIndex(0), units));
    assert_eq!(ledger.reserve(NOW, AccountId(1), key(1), m(1), None, LATER), Err(Reject::AccountNotFound));
    ledger.reserve(NOW, id, key(1), m(10), data(10), LATER).unwrap();
    assert_eq!(ledger.reserve(NOW, id, key(1), m(1), None, LATER), Err(Reject::ReservationExists));
    assert_eq!(
        ledger.reserve(NOW, id, key(2), m(1), Some((BundleIndex(1), 1)), LATER),
        Err(Reject::BundleNotFound)
    );
    assert_eq!(ledger.reserve(NOW, id, key(2), m(91), data(1), LATER), Err(Reject::InsufficientFunds));
    assert_eq!(ledger.reserve(NOW, id, key(2), m(90), data(41), LATER), Err(Reject::InsufficientUnits));
    assert_eq!(ledger.reserve(LATER, id, key(2), m(0), data(1), LATER + 1), Err(Reject::InsufficientUnits));
    // Funds come before units, the exists check before both.
    assert_eq!(ledger.reserve(NOW, id, key(2), m(91), data(41), LATER), Err(Reject::InsufficientFunds));
    assert_eq!(ledger.reserve(NOW, id, key(1), m(91), data(41), LATER), Err(Reject::ReservationExists));
    ledger.set_status(id, AccountStatus::Barred).unwrap();
    assert_eq!(ledger.reserve(NOW, id, key(1), m(91), data(41), LATER), Err(Reject::AccountBarred));
    assert_eq!(ledger.view(id).unwrap().reservations, 1);
}

#[test]
fn reserve_refuses_beyond_the_reservation_limit() {
    let (ledger, id) = one(1000);
    for session in 0..RESERVATIONS_PER_ACCOUNT_MAX as u64 {
        assert_eq!(ledger.reserve(NOW, id, key(session), m(1), None, LATER), Ok(()));
    }
    let next = key(RESERVATIONS_PER_ACCOUNT_MAX as u64);
    assert_eq!(ledger.reserve(NOW, id, next, m(1), None, LATER), Err(Reject::LimitReached));
    // Funds are judged before the limit.
    assert_eq!(ledger.reserve(NOW, id, next, m(10_000), None, LATER), Err(Reject::InsufficientFunds));
    ledger.release(id, key(0)).unwrap();
    assert_eq!(ledger.reserve(NOW, id, next, m(1), None, LATER), Ok(()));
}

#[test]
fn a_zero_hold_is_allowed_on_an_overdrawn_account() {
    let ledger = ledger();
    let id = ledger.create(with_bundles(prepaid("1", 10), &[("data", 50, LATER)])).unwrap();
    ledger.debit(NOW, id, 1, m(30), ALLOW).unwrap();
    assert_eq!(ledger.reserve(NOW, id, key(1), m(1), None, LATER), Err(Reject::InsufficientFunds));
    assert_eq!(ledger.reserve(NOW, id, key(1), m(0), Some((BundleIndex(0), 20)), LATER), Ok(()));
}

#[test]
#[should_panic(expected = "RESERVATION_TTL_MS_MAX")]
fn a_deadline_beyond_the_ttl_limit_is_a_programming_error() {
    let (ledger, id) = one(10);
    let _ = ledger.reserve(NOW, id, key(1), m(1), None, NOW + RESERVATION_TTL_MS_MAX + 1);
}

// ---- commit, release ----

#[test]
fn commit_debits_the_usage_and_releases_the_rest() {
    let ledger = ledger();
    let id = ledger.create(with_bundles(prepaid("1", 1000), &[("data", 500, LATER)])).unwrap();
    ledger.reserve(NOW, id, key(1), m(300), Some((BundleIndex(0), 200)), LATER).unwrap();
    let committed = ledger.commit(NOW, id, key(1), m(120), 150).unwrap();
    let expected = Committed {
        debited: m(120),
        released: m(180),
        units_used: 150,
        units_released: 50,
        units_unpaid: 0,
        overdraft: false,
    };
    assert_eq!(committed, expected);
    let view = view(&ledger, id);
    assert_eq!((view.balance, view.reserved, view.reservations), (m(880), m(0), 0));
    assert_eq!((view.bundles[0].remaining, view.bundles[0].reserved), (350, 0));
    assert_eq!(ledger.stats().open_reservations, 0);
    assert_eq!(ledger.commit(NOW, id, key(1), m(1), 0), Err(Reject::ReservationNotFound));
    assert_eq!(ledger.commit(NOW, AccountId(1), key(1), m(1), 0), Err(Reject::AccountNotFound));
}

#[test]
fn commit_charges_usage_above_the_hold_and_flags_an_overdraft() {
    let (ledger, id) = one(100);
    ledger.reserve(NOW, id, key(1), m(60), None, LATER).unwrap();
    ledger.reserve(NOW, id, key(2), m(30), None, LATER).unwrap();
    // Above the hold but within the free 10: no overdraft.
    let within = ledger.commit(NOW, id, key(1), m(70), 0).unwrap();
    assert_eq!((within.debited, within.released, within.overdraft), (m(70), m(0), false));
    assert_eq!(ledger.available(id), Ok(m(0)));
    // Late usage is charged, never dropped, even past the funds.
    let over = ledger.commit(NOW, id, key(2), m(45), 0).unwrap();
    assert_eq!((over.debited, over.released, over.overdraft), (m(45), m(0), true));
    assert_eq!(view(&ledger, id).balance, m(-15));
}

#[test]
fn commit_within_the_hold_on_an_overdrawn_account_is_no_overdraft() {
    let (ledger, id) = one(100);
    ledger.reserve(NOW, id, key(1), m(50), None, LATER).unwrap();
    ledger.reserve(NOW, id, key(2), m(50), None, LATER).unwrap();
    assert!(ledger.commit(NOW, id, key(1), m(80), 0).unwrap().overdraft);
    // This one uses exactly what it held: the overdraft was the other commit's.
    assert!(!ledger.commit(NOW, id, key(2), m(50), 0).unwrap().overdraft);
    assert_eq!(view(&ledger, id).balance, m(-30));
}

#[test]
fn commit_takes_units_above_the_hold_from_free_units_and_returns_the_rest_as_unpaid() {
    let ledger = ledger();
    let id = ledger.create(with_bundles(prepaid("1", 100), &[("data", 100, LATER)])).unwrap();
    let data = |units| Some((BundleIndex(0), units));
    ledger.reserve(NOW, id, key(1), m(0), data(40), LATER).unwrap();
    ledger.reserve(NOW, id, key(2), m(0), data(50), LATER).unwrap();
    // 10 units are free; key 1 used 65: 40 held + 10 free + 15 unpaid.
    let committed = ledger.commit(NOW, id, key(1), m(0), 65).unwrap();
    assert_eq!((committed.units_used, committed.units_released, committed.units_unpaid), (50, 0, 15));
    let bundle = &view(&ledger, id).bundles[0];
    assert_eq!((bundle.remaining, bundle.reserved), (50, 50), "key 2's hold is intact");
    // A reservation without a bundle: all units are unpaid.
    ledger.reserve(NOW, id, key(3), m(10), None, LATER).unwrap();
    let committed = ledger.commit(NOW, id, key(3), m(10), 7).unwrap();
    assert_eq!((committed.units_used, committed.units_unpaid), (0, 7));
}

#[test]
fn commit_after_the_bundle_expired_uses_the_hold_but_no_free_units() {
    let ledger = ledger();
    let id = ledger.create(with_bundles(prepaid("1", 100), &[("data", 100, LATER)])).unwrap();
    ledger.reserve(NOW, id, key(1), m(0), Some((BundleIndex(0), 30)), LATER + 10).unwrap();
    let committed = ledger.commit(LATER, id, key(1), m(0), 40).unwrap();
    assert_eq!((committed.units_used, committed.units_unpaid), (30, 10));
    assert_eq!(view(&ledger, id).bundles[0].remaining, 70);
}

#[test]
fn release_returns_everything_held() {
    let ledger = ledger();
    let id = ledger.create(with_bundles(prepaid("1", 100), &[("data", 100, LATER)])).unwrap();
    ledger.reserve(NOW, id, key(1), m(60), Some((BundleIndex(0), 30)), LATER).unwrap();
    let released = ledger.release(id, key(1)).unwrap();
    let expected = Committed { released: m(60), units_released: 30, ..Committed::default() };
    assert_eq!(released, expected);
    let view = view(&ledger, id);
    assert_eq!(
        (view.balance, view.reserved, view.bundles[0].remaining, view.bundles[0].reserved),
        (m(100), m(0), 100, 0)
    );
    assert_eq!(ledger.release(id, key(1)), Err(Reject::ReservationNotFound));
    assert_eq!(ledger.release(AccountId(4), key(1)), Err(Reject::AccountNotFound));
}

#[test]
fn the_rating_group_is_part_of_the_reservation_key() {
    let (ledger, id) = one(100);
    let voice = ReservationKey { session: 1, rating_group: 1 };
    let data = ReservationKey { session: 1, rating_group: 2 };
    ledger.reserve(NOW, id, voice, m(10), None, LATER).unwrap();
    ledger.reserve(NOW, id, data, m(20), None, LATER).unwrap();
    assert_eq!(ledger.release(id, data).map(|c| c.released), Ok(m(20)));
    assert_eq!(ledger.release(id, voice).map(|c| c.released), Ok(m(10)));
}

// ---- expire ----

#[test]
fn expire_releases_only_what_is_due() {
    let ledger = ledger();
    let a = ledger.create(with_bundles(prepaid("1", 100), &[("data", 100, u64::MAX)])).unwrap();
    let b = ledger.create(prepaid("2", 100)).unwrap();
    ledger.reserve(NOW, a, key(1), m(10), Some((BundleIndex(0), 5)), NOW + 10).unwrap();
    ledger.reserve(NOW, a, key(2), m(20), None, NOW + 20).unwrap();
    ledger.reserve(NOW, b, key(3), m(30), None, NOW + 10).unwrap();
    assert!(ledger.expire(NOW + 9).is_empty());
    let mut expired = ledger.expire(NOW + 10);
    expired.sort_by_key(|(id, key, ..)| (*id, key.session));
    assert_eq!(expired, vec![(a, key(1), m(10), 5), (b, key(3), m(30), 0)]);
    assert_eq!(view(&ledger, a).bundles[0].reserved, 0);
    assert_eq!(ledger.commit(NOW, a, key(1), m(1), 0), Err(Reject::ReservationNotFound), "ended once");
    assert!(ledger.expire(NOW + 19).is_empty());
    assert_eq!(ledger.expire(NOW + 20), vec![(a, key(2), m(20), 0)]);
    assert_eq!(ledger.stats().open_reservations, 0);
    assert!(ledger.expire(u64::MAX).is_empty());
}

#[test]
fn expire_finds_a_reservation_after_the_shard_minimum_went_stale() {
    let (ledger, id) = one(100);
    ledger.reserve(NOW, id, key(1), m(10), None, NOW + 10).unwrap();
    ledger.commit(NOW, id, key(1), m(1), 0).unwrap();
    ledger.reserve(NOW, id, key(2), m(10), None, NOW + 50).unwrap();
    // The minimum still says NOW + 10: the sweep scans, finds nothing due, recomputes.
    assert!(ledger.expire(NOW + 20).is_empty());
    assert!(ledger.expire(NOW + 49).is_empty());
    assert_eq!(ledger.expire(NOW + 50), vec![(id, key(2), m(10), 0)]);
}

#[test]
fn expire_reaches_every_chunk_of_a_shard() {
    let ledger = ledger();
    let chunk = (SHARDS * ACCOUNTS_PER_CHUNK) as u32;
    for n in 0..=2 * chunk {
        ledger.create(prepaid(&n.to_string(), 10)).unwrap();
    }
    // Shard 0 has three chunks: 0 and 2 have something due early, chunk 1 only later.
    let due = [(0, NOW + 5), (chunk, NOW + 50), (2 * chunk, NOW + 6), (SHARDS as u32 - 1, NOW + 50)];
    for (n, (id, deadline)) in due.into_iter().enumerate() {
        ledger.reserve(NOW, AccountId(id), key(n as u64), m(1), None, deadline).unwrap();
    }
    let sweep = |now| {
        let mut ids: Vec<u32> = ledger.expire(now).iter().map(|(id, ..)| id.0).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(sweep(NOW + 4), Vec::<u32>::new());
    assert_eq!(sweep(NOW + 10), vec![0, 2 * chunk]);
    // The sweep at NOW + 10 skipped chunk 1 but must have kept its deadline for the shard.
    assert_eq!(sweep(NOW + 49), Vec::<u32>::new());
    assert_eq!(sweep(NOW + 50), vec![SHARDS as u32 - 1, chunk]);
}

// ---- stats ----

#[test]
fn stats_sum_holds_by_currency_with_zeros_kept() {
    let ledger = ledger();
    let eur = ledger.create(prepaid("1", 1000)).unwrap();
    let mut new = prepaid("2", 1000);
    new.currency = USD;
    let usd = ledger.create(new).unwrap();
    ledger.reserve(NOW, eur, key(1), m(100), None, LATER).unwrap();
    ledger.reserve(NOW, eur, key(2), m(50), None, LATER).unwrap();
    ledger.reserve(NOW, usd, key(3), m(7), None, LATER).unwrap();
    let stats = ledger.stats();
    assert_eq!((stats.accounts, stats.open_reservations), (2, 3));
    assert_eq!(stats.reserved_money_by_currency, vec![(USD, m(7)), (EUR, m(150))]);
    ledger.release(usd, key(3)).unwrap();
    assert_eq!(ledger.stats().reserved_money_by_currency, vec![(USD, m(0)), (EUR, m(150))]);
}

#[test]
fn check_conservation_sees_a_corrupted_sum() {
    let (ledger, id) = one(100);
    ledger.top_up(id, 1, m(10)).unwrap();
    assert!(ledger.check_conservation());
    ledger.shards[0].lock().sums.open_reservations += 1;
    assert!(!ledger.check_conservation());
    ledger.shards[0].lock().sums.open_reservations -= 1;
}

#[test]
fn lookup_does_not_need_an_owned_string() {
    let (ledger, id) = one(0);
    let data: &str = &String::from("491700000001");
    assert_eq!(ledger.lookup(SubscriptionKind::E164, data), Some(id));
}

#[test]
fn the_key_table_forgets_the_oldest_key_when_a_shard_is_full() {
    let mut shard = keys::KeyShard::default();
    let op = KeyedOp { account: 0, kind: KeyedKind::TopUp, amount: 1 };
    let outcome = Outcome { balance: 1, overdraft: false };
    let per_shard = (IDEMPOTENCY_KEYS_MAX / KEY_SHARDS) as u64;
    for key in 0..=per_shard {
        shard.remember(key, op, outcome);
    }
    assert!(shard.find(0).is_none());
    assert!(shard.find(1).is_some() && shard.find(per_shard).is_some());
}

#[test]
fn lookup_tells_numeric_ids_apart_by_leading_zeros_and_kind() {
    let ledger = ledger();
    let subscriptions = [
        (SubscriptionKind::E164, "491700000001"),
        (SubscriptionKind::E164, "00491700000001"),
        (SubscriptionKind::Imsi, "491700000001"),
        (SubscriptionKind::E164, "+491700000001"),
        (SubscriptionKind::Nai, "491700000001"),
        (SubscriptionKind::E164, "12345678901234567890"),
    ];
    for (n, (kind, data)) in subscriptions.into_iter().enumerate() {
        let mut new = prepaid("x", 0);
        new.subscriptions = vec![(kind, data.to_string())];
        assert_eq!(ledger.create(new), Ok(AccountId(n as u32)), "{kind:?} {data}");
    }
    for (n, (kind, data)) in subscriptions.into_iter().enumerate() {
        assert_eq!(ledger.lookup(kind, data), Some(AccountId(n as u32)), "{kind:?} {data}");
        let mut again = prepaid("y", 0);
        again.subscriptions = vec![(kind, data.to_string())];
        assert_eq!(ledger.create(again), Err(CreateError::SubscriptionTaken));
    }
    for (kind, data) in [
        (SubscriptionKind::E164, "0491700000001"),
        (SubscriptionKind::Imsi, "00491700000001"),
        (SubscriptionKind::SipUri, "491700000001"),
        (SubscriptionKind::E164, "1234567890123456789"),
    ] {
        assert_eq!(ledger.lookup(kind, data), None, "{kind:?} {data}");
    }
}

#[test]
fn holds_come_off_the_head_the_middle_and_the_tail_of_an_account_list() {
    let ledger = ledger();
    let a = ledger.create(with_bundles(prepaid("1", 1000), &[("data", 100, u64::MAX)])).unwrap();
    let b = ledger.create(prepaid("2", 1000)).unwrap();
    for session in 1..=4 {
        let units = Some((BundleIndex(0), session));
        ledger.reserve(NOW, a, key(session), m(10 * session as i64), units, LATER).unwrap();
    }
    ledger.reserve(NOW, b, key(9), m(5), None, LATER).unwrap();
    // Newest first: 4 is the head, 1 the tail.
    assert_eq!(ledger.release(a, key(2)).map(|c| c.released), Ok(m(20)));
    assert_eq!(ledger.commit(NOW, a, key(4), m(40), 4).map(|c| c.units_used), Ok(4));
    assert_eq!(ledger.release(a, key(1)).map(|c| c.units_released), Ok(1));
    let view = view(&ledger, a);
    assert_eq!((view.reservations, view.reserved, view.bundles[0].reserved), (1, m(30), 3));
    // Freed slots are reused by other accounts without mixing their lists.
    ledger.reserve(NOW, b, key(10), m(6), None, LATER).unwrap();
    ledger.reserve(NOW, b, key(11), m(7), None, LATER).unwrap();
    assert_eq!((ledger.open_reservations(a), ledger.open_reservations(b)), (Ok(1), Ok(3)));
    assert_eq!(ledger.release(a, key(10)), Err(Reject::ReservationNotFound));
    assert_eq!(ledger.release(a, key(3)).map(|c| c.released), Ok(m(30)));
    let mut expired = ledger.expire(LATER);
    expired.sort_by_key(|(_, key, ..)| key.session);
    assert_eq!(expired, vec![(b, key(9), m(5), 0), (b, key(10), m(6), 0), (b, key(11), m(7), 0)]);
    assert_eq!(ledger.stats().open_reservations, 0);
}

#[test]
fn customer_ids_come_back_whether_shared_or_not() {
    let ledger = ledger();
    let mut ids = Vec::new();
    for n in 0..300u32 {
        let mut new = prepaid(&format!("4917{n:08}"), 0);
        new.customer = if n % 3 == 0 { "shared".into() } else { format!("c{n}") };
        if n == 7 {
            new.customer = String::new();
        }
        ids.push((ledger.create(new).unwrap(), n));
    }
    for (id, n) in ids {
        let expected = match n {
            7 => String::new(),
            n if n % 3 == 0 => "shared".into(),
            n => format!("c{n}"),
        };
        assert_eq!(view(&ledger, id).customer, expected);
    }
}
