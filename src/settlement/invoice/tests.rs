use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;
use crate::catalog::Overrides;

/// 2026-03-14 12:00:00 UTC.
pub(crate) const ISSUED_AT: i64 = 1_773_489_600;

pub(crate) fn customer() -> Customer {
    Customer {
        id: "c-bob".into(),
        name: "Bob <Example> & Co".into(),
        email: "bob@example.org".into(),
        address: "Example Street 2, 10115 Berlin, DE".into(),
        plan: "mobile-basic".into(),
        overrides: Overrides::default(),
    }
}

fn vat19() -> Vat {
    Vat::from_plan_rate(Decimal::new(19, 2))
}

pub(crate) fn line(description: &str, unit: UnitKind, units: u64, cents: i64, vat: Vat) -> UsageLine {
    UsageLine {
        description: description.into(),
        rating_group: Some(10),
        unit,
        units,
        amount: MoneyMinor(cents),
        vat,
    }
}

pub(crate) fn draft(lines: Vec<UsageLine>, basis: PriceBasis) -> InvoiceDraft {
    InvoiceDraft {
        number: "GYR-2026-000001".into(),
        series: "GYR-2026".into(),
        issued_at_unix_s: ISSUED_AT,
        currency: Currency::EUR,
        seller: SellerConfig::default(),
        buyer: Buyer::from_customer(&customer()).expect("the fixture's address has a country"),
        basis,
        lines,
        payment: PaymentMeans::Card { brand: "VISA".into(), last4: "4242".into() },
        settlement_key: "session-1".into(),
    }
}

/// A voice call, data and an SMS at 19 %, the demo plan's services.
pub(crate) fn sample() -> Invoice {
    Invoice::build(draft(
        vec![
            line("voice", UnitKind::Time, 185, 26, vat19()),
            line("data", UnitKind::Octets, 52_428_800, 50, vat19()),
            line("sms", UnitKind::Events, 2, 18, vat19()),
        ],
        PriceBasis::Gross,
    ))
    .expect("the sample invoice builds")
}

#[test]
fn a_gross_invoice_totals_exactly_what_was_debited() {
    let inv = sample();
    let t = inv.totals;
    // 0.94 EUR debited at 19 % VAT included: net 0.79 + VAT 0.15 = 0.94 (0.79 × 0.19 = 0.1501).
    assert_eq!(t.collected(), MoneyMinor(94));
    assert_eq!(
        (t.line_extension, t.tax, t.tax_inclusive, t.rounding),
        (MoneyMinor(79), MoneyMinor(15), MoneyMinor(94), MoneyMinor(0))
    );
    assert_eq!((t.paid, t.payable), (MoneyMinor(0), MoneyMinor(94)));
    assert_eq!(inv.lines.iter().map(|l| l.net.0).collect::<Vec<_>>(), vec![22, 42, 15]);
    assert_eq!(inv.issue_date.to_string(), "2026-03-14");
    assert_eq!(inv.due_date.to_string(), "2026-03-28");
    assert_eq!((inv.lines[0].unit.code(), inv.lines[0].quantity), ("SEC", Decimal::from(185)));
    assert_eq!((inv.lines[1].unit.code(), inv.lines[1].quantity.to_string().as_str()), ("4L", "52.4288"));
    assert_eq!((inv.lines[2].unit.code(), inv.lines[2].quantity), ("C62", Decimal::from(2)));
}

#[test]
fn a_paid_invoice_shows_paid_equal_to_the_total_and_nothing_payable() {
    let inv = sample().mark_paid(PaymentMeans::Wallet);
    assert!(inv.is_paid());
    assert_eq!(inv.totals.paid, inv.totals.tax_inclusive);
    assert_eq!(inv.totals.payable, MoneyMinor(0));
    assert_eq!(inv.due_date, inv.issue_date);
    assert_eq!(inv.check(), Ok(()));
}

#[test]
fn an_unreachable_gross_total_gets_a_one_cent_rounding_amount() {
    // 3 cents at 19 %: N = 2 gives 2 + 0 = 2, N = 3 gives 3 + 1 = 4; nothing gives 3.
    let inv = Invoice::build(draft(vec![line("sms", UnitKind::Events, 1, 3, vat19())], PriceBasis::Gross))
        .expect("builds");
    assert_eq!(
        (inv.totals.tax_inclusive, inv.totals.rounding, inv.totals.payable),
        (MoneyMinor(2), MoneyMinor(1), MoneyMinor(3))
    );
    let paid = inv.mark_paid(PaymentMeans::Wallet);
    assert_eq!((paid.totals.paid, paid.totals.payable), (MoneyMinor(3), MoneyMinor(0)));
    assert_eq!(paid.check(), Ok(()));
}

#[test]
fn a_net_invoice_adds_vat_per_category_rounded_half_away_from_zero() {
    let zero = Vat {
        category: VatCategory::Exempt,
        rate: Decimal::ZERO,
        exemption_reason: Some("Art. 135 VAT Directive".into()),
    };
    let inv = Invoice::build(draft(
        vec![
            line("voice", UnitKind::Time, 60, 250, vat19()),
            line("data", UnitKind::Octets, 1_000_000, 250, vat19()),
            line("service fee", UnitKind::Events, 1, 100, zero),
        ],
        PriceBasis::Net,
    ))
    .expect("builds");
    // 5.00 × 0.19 = 0.95; the exempt line has no VAT; breakdown S before E.
    assert_eq!(inv.vat_breakdown.len(), 2);
    assert_eq!(
        (inv.vat_breakdown[0].vat.category, inv.vat_breakdown[0].taxable, inv.vat_breakdown[0].tax),
        (VatCategory::Standard, MoneyMinor(500), MoneyMinor(95))
    );
    assert_eq!(
        (inv.vat_breakdown[1].vat.category, inv.vat_breakdown[1].tax),
        (VatCategory::Exempt, MoneyMinor(0))
    );
    assert_eq!((inv.totals.line_extension, inv.totals.tax_inclusive), (MoneyMinor(600), MoneyMinor(695)));
    // Half away from zero: 0.05 × 0.10 = 0.005 → 0.01.
    let ten = Vat::from_plan_rate(Decimal::new(10, 2));
    let half = Invoice::build(draft(vec![line("sms", UnitKind::Events, 1, 5, ten)], PriceBasis::Net))
        .expect("builds");
    assert_eq!(half.totals.tax, MoneyMinor(1));
}

#[test]
fn bad_drafts_are_refused_with_the_reason() {
    let err = |lines: Vec<UsageLine>| Invoice::build(draft(lines, PriceBasis::Gross)).unwrap_err();
    assert_eq!(err(vec![]), InvoiceError::NoLines);
    assert_eq!(err(vec![line("x", UnitKind::Events, 0, 0, vat19())]), InvoiceError::NoLines);
    assert_eq!(err(vec![line("x", UnitKind::Events, 0, 5, vat19())]), InvoiceError::ChargeWithoutUsage);
    assert_eq!(err(vec![line("x", UnitKind::Events, 1, -5, vat19())]), InvoiceError::NegativeAmount);
    let exempt_without_reason =
        Vat { category: VatCategory::Exempt, rate: Decimal::ZERO, exemption_reason: None };
    assert_eq!(
        err(vec![line("x", UnitKind::Events, 1, 5, exempt_without_reason)]),
        InvoiceError::ExemptionReason { category: "E" }
    );
    let standard_zero = Vat { category: VatCategory::Standard, rate: Decimal::ZERO, exemption_reason: None };
    assert_eq!(
        err(vec![line("x", UnitKind::Events, 1, 5, standard_zero)]),
        InvoiceError::VatRate { category: "S" }
    );
    let reverse = Vat {
        category: VatCategory::ReverseCharge,
        rate: Decimal::ZERO,
        exemption_reason: Some("Reverse charge".into()),
    };
    assert_eq!(err(vec![line("x", UnitKind::Events, 1, 5, reverse)]), InvoiceError::BuyerVatIdMissing);
    let mut kwd = draft(vec![line("x", UnitKind::Events, 1, 5, vat19())], PriceBasis::Gross);
    kwd.currency = Currency::KWD;
    assert_eq!(Invoice::build(kwd).unwrap_err(), InvoiceError::CurrencyTooPrecise);
    let mut bad_seller = draft(vec![line("x", UnitKind::Events, 1, 5, vat19())], PriceBasis::Gross);
    bad_seller.seller.vat_id = "123".into();
    assert_eq!(Invoice::build(bad_seller).unwrap_err(), InvoiceError::SellerVatId);
    let mut no_country = customer();
    no_country.address = "Example Street 2, Berlin".into();
    assert_eq!(Buyer::from_customer(&no_country).unwrap_err(), InvoiceError::BuyerCountryMissing);
}

#[test]
fn one_line_addresses_are_read_as_street_post_code_city_country() {
    let a = PostalAddress::parse_one_line("Example Street 1, 10115 Berlin, de").expect("parses");
    assert_eq!(
        (a.street.as_str(), a.postal_code.as_str(), a.city.as_str(), a.country_code.as_str()),
        ("Example Street 1", "10115", "Berlin", "DE")
    );
    let b = PostalAddress::parse_one_line("1 High St, Flat 2, London SW1A 1AA, GB").expect("parses");
    assert_eq!((b.postal_code.as_str(), b.city.as_str()), ("", "Flat 2, London SW1A 1AA"));
    assert_eq!(PostalAddress::parse_one_line("DE"), None);
    assert_eq!(PostalAddress::parse_one_line("Somewhere, Germany"), None);
}

#[test]
fn dates_are_utc_calendar_days() {
    assert_eq!(Date::from_unix_s(0).to_string(), "1970-01-01");
    assert_eq!(Date::from_unix_s(951_782_400).to_string(), "2000-02-29");
    assert_eq!(Date::from_unix_s(1_767_225_599).to_string(), "2025-12-31");
    assert_eq!(Date::from_unix_s(1_767_225_600).to_string(), "2026-01-01");
    assert_eq!(Date::from_unix_s(-1).to_string(), "1969-12-31");
}

fn arb_vat() -> impl Strategy<Value = Vat> {
    prop_oneof![
        4 => prop::sample::select(vec![19i64, 7, 20, 21, 25, 10, 5, 1, 99]).prop_map(|p| Vat::from_plan_rate(Decimal::new(p, 2))),
        1 => Just(Vat::from_plan_rate(Decimal::ZERO)),
        1 => Just(Vat { category: VatCategory::Exempt, rate: Decimal::ZERO, exemption_reason: Some("exempt".into()) }),
        1 => Just(Vat::from_plan_rate(Decimal::new(77, 3))),
    ]
}

fn arb_line() -> impl Strategy<Value = UsageLine> {
    (
        arb_vat(),
        0i64..5_000_000,
        1u64..10_000_000_000,
        prop::sample::select(vec![UnitKind::Time, UnitKind::Octets, UnitKind::Events]),
    )
        .prop_map(|(vat, cents, units, unit)| line("service", unit, units, cents, vat))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// BR-CO-10, -13, -14, -15, -16, BR-S-08/09 (`check`), and: the amount collected is the sum
    /// of the debits on the gross basis, the net lines on the net basis; a paid invoice has
    /// nothing payable.
    #[test]
    fn totals_obey_the_en16931_rules_and_add_up_to_the_debits(
        lines in prop::collection::vec(arb_line(), 1..8),
        gross in any::<bool>(),
    ) {
        let basis = if gross { PriceBasis::Gross } else { PriceBasis::Net };
        let debited: i64 = lines.iter().map(|l| l.amount.0).sum();
        let inv = Invoice::build(draft(lines, basis)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(inv.check(), Ok(()));
        match basis {
            PriceBasis::Gross => prop_assert_eq!(inv.totals.collected().0, debited),
            PriceBasis::Net => prop_assert_eq!(inv.totals.line_extension.0, debited),
        }
        prop_assert!(inv.totals.tax_inclusive.0 <= inv.totals.collected().0);
        let paid = inv.mark_paid(PaymentMeans::Wallet);
        prop_assert_eq!(paid.check(), Ok(()));
        prop_assert_eq!(paid.totals.payable.0, 0);
    }

    /// Sharing a category's taxable amount over its lines is exact and never gives a line more
    /// than it was debited.
    #[test]
    fn shares_are_exact_and_bounded(weights in prop::collection::vec(0i64..1_000_000, 1..10), cut in 0.0f64..=1.0) {
        let sum: i64 = weights.iter().sum();
        let total = (sum as f64 * cut).floor() as i64;
        let shares = share_out(MoneyMinor(total), &weights.iter().copied().map(MoneyMinor).collect::<Vec<_>>());
        prop_assert_eq!(shares.iter().map(|s| s.0).sum::<i64>(), total);
        for (s, w) in shares.iter().zip(&weights) {
            prop_assert!(0 <= s.0 && s.0 <= *w);
        }
    }
}
