//! The invoice model: seller, buyer, lines, VAT breakdown and totals, exact to the minor unit.
//!
//! Business terms are EN 16931-1:2017's (BT-n, business groups BG-n); the rules quoted are its
//! BR-* rules. [`Invoice::build`] is the only way to make an invoice, and [`Invoice::check`]
//! re-verifies the calculation rules on the result (BR-CO-10..16, BR-S-08/09, BR-Z/E/AE-08/09),
//! so a bug in the arithmetic is caught before anything is rendered.
//!
//! # Money and rounding (one rule per step)
//! Amounts are integers of the currency's minor unit (`MoneyMinor`); `Decimal` appears only
//! in a VAT multiplication and in rendering. EN 16931 allows at most two decimals on amounts
//! (BR-DEC-*), so currencies with three (KWD, BHD, …) are refused (`CurrencyTooPrecise`).
//!
//! 1. **Line amounts** arrive as rated and debited: `rating` has already rounded each session
//!    and rating group's charge once, up, to the minor unit. They are never rounded again.
//! 2. **VAT per category** (BG-23): `tax = round_half_away_from_zero(taxable × rate)` to the
//!    minor unit (BR-S-09: BT-117 = BT-116 × BT-119; XPath's `round` agrees for amounts ≥ 0).
//! 3. **Price basis** decides what the debited amount is:
//!    - [`PriceBasis::Gross`] (the default: consumer prices include VAT, so Σ session debits is
//!      what the customer pays): per category, the taxable amount is the largest `N` with
//!      `N + tax(N) ≤ G`, where `G` is the category's debited total. `N + tax(N)` grows by one
//!      or two minor units per step when the rate is below 100 %, so it misses `G` by at most
//!      one minor unit; that unit becomes part of the rounding amount BT-114 (so BT-114 is at
//!      most one minor unit per category), and the amount collected (BT-112 + BT-114) is
//!      exactly Σ `G`. `N` is shared out over the category's lines in
//!      proportion to their debited amounts (largest remainder; ties to the earlier line), so
//!      line nets add up to it exactly (BR-S-08).
//!    - [`PriceBasis::Net`] (business pricing): the debited amount is the line net; VAT is
//!      added per category; BT-114 = 0.
//! 4. **Totals** are sums, never recomputed products: BT-106 = Σ BT-131 (BR-CO-10), BT-109 =
//!    BT-106 (no document-level allowances or charges; BR-CO-13), BT-110 = Σ BT-117 (BR-CO-14),
//!    BT-112 = BT-109 + BT-110 (BR-CO-15), BT-115 = BT-112 − BT-113 + BT-114 (BR-CO-16).
//!
//! So for either basis, [`Totals::collected`] (= BT-112 + BT-114) is what is charged or taken
//! from the wallet, and a paid invoice has BT-113 = collected and BT-115 = 0.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;

use crate::catalog::Customer;
use crate::limits::INVOICE_LINES_MAX;
use crate::rating::{Currency, MoneyMinor, UnitKind};

/// Largest minor-unit exponent an EN 16931 invoice can carry (BR-DEC-*: two decimals).
pub const INVOICE_CURRENCY_EXPONENT_MAX: u8 = 2;

/// The seller (BG-4) as configured in `[settlement.seller]`. The defaults describe a demo
/// operator, so the embedded run produces complete invoices with no configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SellerConfig {
    /// BT-27 Seller name.
    pub name: String,
    /// BT-35 Seller address line 1.
    pub street: String,
    /// BT-37 Seller city.
    pub city: String,
    /// BT-38 Seller post code.
    pub postal_code: String,
    /// BT-40 Seller country code (ISO 3166-1 alpha-2).
    pub country_code: String,
    /// BT-31 Seller VAT identifier, with its country prefix (BR-CO-09).
    pub vat_id: String,
    /// BT-30 Seller legal registration identifier (company register number), if any.
    pub legal_registration_id: Option<String>,
    /// BT-34 Seller electronic address (Peppol requires one; we use the e-mail scheme `EM`),
    /// also the From address of settlement e-mails; its domain names Message-IDs.
    pub email: String,
    /// Days from the issue date to the due date (BT-9) of an invoice not yet paid.
    pub payment_terms_days: u32,
}

impl Default for SellerConfig {
    fn default() -> Self {
        Self {
            name: "Gyro Demo Telecom GmbH".into(),
            street: "Demo Allee 1".into(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country_code: "DE".into(),
            vat_id: "DE123456789".into(),
            legal_registration_id: Some("HRB 000000 B".into()),
            email: "billing@gyro.example".into(),
            payment_terms_days: 14,
        }
    }
}

impl SellerConfig {
    /// The domain of the seller's e-mail address (Message-IDs are made under it).
    pub fn email_domain(&self) -> &str {
        self.email.rsplit_once('@').map_or("gyro.invalid", |(_, domain)| domain)
    }
}

/// Whether debited amounts include VAT. See the module doc, rounding step 3.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceBasis {
    /// Catalog prices include VAT (consumer pricing): the invoice's total is the debit.
    #[default]
    Gross,
    /// Catalog prices exclude VAT: VAT is added on top of the debit.
    Net,
}

/// EN 16931 VAT category codes (BT-118, BT-151; UNTDID 5305 subset).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum VatCategory {
    /// `S`: standard rate (rate > 0; BR-S-05).
    Standard,
    /// `Z`: zero-rated goods (rate 0; no exemption reason, BR-Z-10).
    ZeroRated,
    /// `E`: exempt from tax (rate 0; needs an exemption reason, BR-E-10).
    Exempt,
    /// `AE`: VAT reverse charge (rate 0; reason required, BR-AE-10; the buyer's VAT id too,
    /// BR-AE-02, which the catalog does not hold yet, so building refuses it).
    ReverseCharge,
}

impl VatCategory {
    /// The UNTDID 5305 code written to BT-118 / BT-151.
    pub fn code(self) -> &'static str {
        match self {
            Self::Standard => "S",
            Self::ZeroRated => "Z",
            Self::Exempt => "E",
            Self::ReverseCharge => "AE",
        }
    }
}

/// The VAT of a line: category, rate as a fraction (0.19 = 19 %) and, for exempt categories,
/// the exemption reason (BT-120).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Vat {
    pub category: VatCategory,
    pub rate: Decimal,
    pub exemption_reason: Option<String>,
}

impl Vat {
    /// A plan's VAT from its `vat_rate`: standard rate when above zero, else zero-rated. (The
    /// catalog has no category field yet; exempt and reverse-charge plans need one.)
    pub fn from_plan_rate(rate: Decimal) -> Self {
        let category = if Decimal::ZERO < rate { VatCategory::Standard } else { VatCategory::ZeroRated };
        Self { category, rate, exemption_reason: None }
    }

    /// The rate as a percentage with no trailing zeros (BT-119, BT-152: "19", "7.7").
    pub fn percent(&self) -> Decimal {
        (self.rate * Decimal::ONE_HUNDRED).normalize()
    }

    fn check(&self) -> Result<(), InvoiceError> {
        let zero_rate = self.rate.is_zero();
        let ok_rate = match self.category {
            VatCategory::Standard => Decimal::ZERO < self.rate && self.rate < Decimal::ONE,
            _ => zero_rate,
        };
        if !ok_rate {
            return Err(InvoiceError::VatRate { category: self.category.code() });
        }
        let needs_reason = matches!(self.category, VatCategory::Exempt | VatCategory::ReverseCharge);
        if needs_reason != self.exemption_reason.is_some() {
            return Err(InvoiceError::ExemptionReason { category: self.category.code() });
        }
        if self.category == VatCategory::ReverseCharge {
            return Err(InvoiceError::BuyerVatIdMissing);
        }
        Ok(())
    }

    /// The key a VAT breakdown groups by: category and rate (BR-CO-18: one BG-23 per
    /// combination).
    fn key(&self) -> (VatCategory, Decimal) {
        (self.category, self.rate.normalize())
    }
}

/// UN/ECE Recommendation 20 unit codes for invoiced quantities (BT-130), chosen so every
/// quantity is exact: seconds stay seconds, octets become decimal megabytes (10⁶ octets,
/// at most six decimals), events are counted as "one".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnitCode {
    /// `SEC`: second (time).
    Second,
    /// `4L`: megabyte, 10⁶ bytes.
    Megabyte,
    /// `C62`: one (a count of events, e.g. messages).
    One,
}

impl UnitCode {
    pub fn code(self) -> &'static str {
        match self {
            Self::Second => "SEC",
            Self::Megabyte => "4L",
            Self::One => "C62",
        }
    }

    /// The unit for a rated unit kind, and the quantity in it (exact).
    pub fn quantity(unit: UnitKind, units: u64) -> (Self, Decimal) {
        match unit {
            UnitKind::Time => (Self::Second, Decimal::from(units)),
            UnitKind::Octets => (Self::Megabyte, Decimal::new(units as i64, 6).normalize()),
            UnitKind::Events => (Self::One, Decimal::from(units)),
        }
    }

    /// A short label for people ("s", "MB", "").
    pub fn label(self) -> &'static str {
        match self {
            Self::Second => "s",
            Self::Megabyte => "MB",
            Self::One => "×",
        }
    }
}

/// One rated service of a settled session: what the invoice line is made from.
#[derive(Clone, Debug)]
pub struct UsageLine {
    /// The item name (BT-153), e.g. the service's name.
    pub description: String,
    pub rating_group: Option<u32>,
    pub unit: UnitKind,
    /// Billed units in the rate's unit (seconds, octets, events).
    pub units: u64,
    /// What was debited for it (rounding step 1).
    pub amount: MoneyMinor,
    pub vat: Vat,
}

/// How the invoice is (to be) paid (BG-16).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PaymentMeans {
    /// Payment card (BT-81 = 48), shown as brand and last four digits (BG-18: BT-87 must not
    /// hold the whole number).
    Card { brand: String, last4: String },
    /// SEPA direct debit (BT-81 = 59): mandate reference (BT-89) and the debited IBAN (BT-91),
    /// masked.
    SepaDebit { mandate: String, iban_masked: String },
    /// The customer's prepaid wallet (BT-81 = ZZZ, mutually defined).
    Wallet,
}

impl PaymentMeans {
    /// UNCL 4461 payment means code (BT-81).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Card { .. } => "48",
            Self::SepaDebit { .. } => "59",
            Self::Wallet => "ZZZ",
        }
    }

    /// For people: "VISA •••• 4242", "SEPA direct debit DE89 •••• 3000", "prepaid balance".
    pub fn describe(&self) -> String {
        match self {
            Self::Card { brand, last4 } => format!("{brand} card ending in {last4}"),
            Self::SepaDebit { iban_masked, .. } => format!("SEPA direct debit from {iban_masked}"),
            Self::Wallet => "prepaid balance".into(),
        }
    }
}

/// A calendar date (UTC), for BT-2 and BT-9.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// The UTC date of a Unix time (Howard Hinnant's `civil_from_days`).
    pub fn from_unix_s(unix_s: i64) -> Self {
        let z = unix_s.div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }

    /// Midnight UTC of this date as Unix seconds (Howard Hinnant's `days_from_civil`).
    pub fn to_unix_s(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        (era * 146_097 + doe - 719_468) * 86_400
    }
}

/// ISO 8601 `YYYY-MM-DD`, as UBL's `cbc:IssueDate` wants it.
impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A postal address (BG-5, BG-8).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PostalAddress {
    pub street: String,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 (BT-40, BT-55).
    pub country_code: String,
}

impl PostalAddress {
    /// Reads the catalog's one-line form `street, [post code] city, CC` (the demo's
    /// "Example Street 1, 10115 Berlin, DE"). The last part must be a two-letter country code:
    /// BT-55 is mandatory and there is no safe default. Parts between the first and the last
    /// form the city line; its first word is the post code when it holds a digit.
    pub fn parse_one_line(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        let (&country, rest) = parts.split_last()?;
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let (&street, middle) = rest.split_first()?;
        let city_line = middle.join(", ");
        let (postal_code, city) = match city_line.split_once(' ') {
            Some((first, city)) if first.bytes().any(|b| b.is_ascii_digit()) => {
                (first.to_owned(), city.to_owned())
            }
            _ => (String::new(), city_line),
        };
        Some(Self {
            street: street.to_owned(),
            city,
            postal_code,
            country_code: country.to_ascii_uppercase(),
        })
    }
}

/// The buyer (BG-7) as the invoice shows it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Buyer {
    /// BT-46 Buyer identifier, and BT-10 Buyer reference: the catalog's customer id.
    pub id: String,
    /// BT-44 Buyer name.
    pub name: String,
    /// BT-49 Buyer electronic address (scheme `EM`) and where the e-mail goes.
    pub email: String,
    pub address: PostalAddress,
}

impl Buyer {
    pub fn from_customer(customer: &Customer) -> Result<Self, InvoiceError> {
        let address =
            PostalAddress::parse_one_line(&customer.address).ok_or(InvoiceError::BuyerCountryMissing)?;
        Ok(Self {
            id: customer.id.clone(),
            name: customer.name.clone(),
            email: customer.email.clone(),
            address,
        })
    }
}

/// One invoice line (BG-25).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InvoiceLine {
    /// BT-126 Invoice line identifier: 1, 2, … in order.
    pub id: u32,
    /// BT-153 Item name.
    pub name: String,
    pub rating_group: Option<u32>,
    /// BT-129 Invoiced quantity, BT-130 its unit.
    pub quantity: Decimal,
    pub unit: UnitCode,
    /// BT-131 Invoice line net amount.
    pub net: MoneyMinor,
    /// What was debited for the line (= `net` on the net basis).
    pub debited: MoneyMinor,
    /// BT-146 Item net price, for BT-149 Item price base quantity = the invoiced quantity, so
    /// quantity × price / base quantity is exactly the line net (Peppol R120) whatever the
    /// rate's increments, connect fee or minimum charge did. Equal to `net`.
    pub price: MoneyMinor,
    /// BT-151 / BT-152 (and BT-120 for exempt categories).
    pub vat: Vat,
}

/// One VAT breakdown (BG-23).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VatBreakdown {
    pub vat: Vat,
    /// BT-116 VAT category taxable amount.
    pub taxable: MoneyMinor,
    /// BT-117 VAT category tax amount.
    pub tax: MoneyMinor,
}

/// Document totals (BG-22).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Totals {
    /// BT-106 Sum of invoice line net amounts.
    pub line_extension: MoneyMinor,
    /// BT-109 Invoice total amount without VAT.
    pub tax_exclusive: MoneyMinor,
    /// BT-110 Invoice total VAT amount.
    pub tax: MoneyMinor,
    /// BT-112 Invoice total amount with VAT.
    pub tax_inclusive: MoneyMinor,
    /// BT-113 Paid amount.
    pub paid: MoneyMinor,
    /// BT-114 Rounding amount.
    pub rounding: MoneyMinor,
    /// BT-115 Amount due for payment.
    pub payable: MoneyMinor,
}

impl Totals {
    /// What the customer pays for the invoice: BT-112 + BT-114.
    pub fn collected(&self) -> MoneyMinor {
        MoneyMinor(self.tax_inclusive.0 + self.rounding.0)
    }
}

/// Everything an invoice is built from. The number comes from [`super::numbering`], the lines
/// from the settled session's rating groups, the VAT from the plan.
#[derive(Clone, Debug)]
pub struct InvoiceDraft {
    /// BT-1, already allocated.
    pub number: String,
    /// The numbering series the number belongs to.
    pub series: String,
    /// When the session was settled; BT-2 is its UTC date.
    pub issued_at_unix_s: i64,
    /// BT-5.
    pub currency: Currency,
    pub seller: SellerConfig,
    pub buyer: Buyer,
    pub basis: PriceBasis,
    pub lines: Vec<UsageLine>,
    pub payment: PaymentMeans,
    /// The settled session (or event) this invoice is for: the idempotency key of its charge.
    pub settlement_key: String,
}

/// A complete invoice. Built only by [`Invoice::build`]; invariants checked by
/// [`Invoice::check`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Invoice {
    pub number: String,
    pub series: String,
    pub issued_at_unix_s: i64,
    /// BT-2.
    pub issue_date: Date,
    /// BT-9.
    pub due_date: Date,
    pub currency: Currency,
    pub seller: SellerConfig,
    pub buyer: Buyer,
    pub basis: PriceBasis,
    pub lines: Vec<InvoiceLine>,
    /// BG-23, ordered by category then rate.
    pub vat_breakdown: Vec<VatBreakdown>,
    pub totals: Totals,
    pub payment: PaymentMeans,
    pub settlement_key: String,
}

/// Why an invoice cannot be built. Every variant is a configuration or catalog problem (or a
/// bug), never a payment-upstream one.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum InvoiceError {
    #[error("an invoice needs at least one line with an amount (BR-16)")]
    NoLines,
    #[error("more than {INVOICE_LINES_MAX} lines")]
    TooManyLines,
    #[error("the currency has more than {INVOICE_CURRENCY_EXPONENT_MAX} decimals (EN 16931 BR-DEC)")]
    CurrencyTooPrecise,
    #[error("a negative line amount (credit notes are not supported)")]
    NegativeAmount,
    #[error("a line has an amount but no billed units")]
    ChargeWithoutUsage,
    #[error("VAT category {category}: the rate does not fit the category (S: 0 < rate < 1; others: 0)")]
    VatRate { category: &'static str },
    #[error("VAT category {category}: an exemption reason is required for E and AE and forbidden otherwise")]
    ExemptionReason { category: &'static str },
    #[error("VAT reverse charge needs the buyer's VAT identifier (BR-AE-02), which customers do not have")]
    BuyerVatIdMissing,
    #[error("the customer's address does not end in a two-letter country code (BT-55 is mandatory)")]
    BuyerCountryMissing,
    #[error("the seller's VAT id must start with a two-letter country prefix (BR-CO-09)")]
    SellerVatId,
    #[error("the seller's country code must be two letters (BT-40)")]
    SellerCountry,
    #[error("amounts overflow")]
    Overflow,
    #[error("an EN 16931 calculation rule does not hold: {rule}")]
    Rule { rule: &'static str },
}

impl Invoice {
    /// Builds the invoice: line quantities, nets, the VAT breakdown and the totals, by the
    /// module's rounding rules. The result is not yet paid (BT-113 = 0); see [`Self::mark_paid`].
    pub fn build(draft: InvoiceDraft) -> Result<Self, InvoiceError> {
        check_parties(&draft)?;
        if INVOICE_CURRENCY_EXPONENT_MAX < draft.currency.exponent {
            return Err(InvoiceError::CurrencyTooPrecise);
        }
        if INVOICE_LINES_MAX < draft.lines.len() {
            return Err(InvoiceError::TooManyLines);
        }
        let usage: Vec<&UsageLine> = draft.lines.iter().filter(|l| l.amount.0 != 0 || l.units != 0).collect();
        if usage.is_empty() {
            return Err(InvoiceError::NoLines);
        }
        for line in &usage {
            line.vat.check()?;
            if line.amount.0 < 0 {
                return Err(InvoiceError::NegativeAmount);
            }
            if line.units == 0 {
                return Err(InvoiceError::ChargeWithoutUsage);
            }
        }
        let (lines, vat_breakdown, rounding) = price_lines(&usage, draft.basis, draft.currency)?;
        let line_extension = sum(lines.iter().map(|l| l.net))?;
        let tax = sum(vat_breakdown.iter().map(|b| b.tax))?;
        let tax_inclusive = sum([line_extension, tax])?;
        let payable = sum([tax_inclusive, rounding])?;
        let totals = Totals {
            line_extension,
            tax_exclusive: line_extension,
            tax,
            tax_inclusive,
            paid: MoneyMinor(0),
            rounding,
            payable,
        };
        let issue_date = Date::from_unix_s(draft.issued_at_unix_s);
        let due_days = i64::from(draft.seller.payment_terms_days);
        let due_date = Date::from_unix_s(draft.issued_at_unix_s.saturating_add(due_days * 86_400));
        let invoice = Self {
            number: draft.number,
            series: draft.series,
            issued_at_unix_s: draft.issued_at_unix_s,
            issue_date,
            due_date,
            currency: draft.currency,
            seller: draft.seller,
            buyer: draft.buyer,
            basis: draft.basis,
            lines,
            vat_breakdown,
            totals,
            payment: draft.payment,
            settlement_key: draft.settlement_key,
        };
        invoice.check()?;
        Ok(invoice)
    }

    /// The invoice once the collected amount has been paid: BT-113 = BT-112 + BT-114 and
    /// BT-115 = 0, with the means it was paid by. The due date becomes the issue date.
    pub fn mark_paid(mut self, means: PaymentMeans) -> Self {
        self.totals.paid = self.totals.collected();
        self.totals.payable = MoneyMinor(0);
        self.payment = means;
        self.due_date = self.issue_date;
        self
    }

    pub fn is_paid(&self) -> bool {
        self.totals.payable.0 == 0 && self.totals.paid.0 != 0
    }

    /// Re-checks EN 16931's calculation rules on this invoice. `build` calls it; tests call it
    /// on everything they make.
    pub fn check(&self) -> Result<(), InvoiceError> {
        let t = &self.totals;
        let rule = |ok: bool, rule: &'static str| if ok { Ok(()) } else { Err(InvoiceError::Rule { rule }) };
        let lines: i64 = self.lines.iter().map(|l| l.net.0).sum();
        rule(t.line_extension.0 == lines, "BR-CO-10 BT-106 = Σ BT-131")?;
        rule(t.tax_exclusive == t.line_extension, "BR-CO-13 BT-109 = BT-106")?;
        rule(
            t.tax.0 == self.vat_breakdown.iter().map(|b| b.tax.0).sum::<i64>(),
            "BR-CO-14 BT-110 = Σ BT-117",
        )?;
        rule(t.tax_inclusive.0 == t.tax_exclusive.0 + t.tax.0, "BR-CO-15 BT-112 = BT-109 + BT-110")?;
        rule(
            t.payable.0 == t.tax_inclusive.0 - t.paid.0 + t.rounding.0,
            "BR-CO-16 BT-115 = BT-112 − BT-113 + BT-114",
        )?;
        let categories = self.vat_breakdown.len() as i64;
        rule(0 <= t.rounding.0 && t.rounding.0 <= categories, "BT-114 ≤ one minor unit per VAT category")?;
        rule(self.basis == PriceBasis::Gross || t.rounding.0 == 0, "BT-114 = 0 on the net basis")?;
        for b in &self.vat_breakdown {
            let taxable: i64 =
                self.lines.iter().filter(|l| l.vat.key() == b.vat.key()).map(|l| l.net.0).sum();
            rule(b.taxable.0 == taxable, "BR-S/Z/E-08 BT-116 = Σ BT-131 of the category")?;
            rule(b.tax == vat_of(b.taxable, &b.vat, self.currency)?, "BR-S-09 BT-117 = BT-116 × BT-119")?;
        }
        for l in &self.lines {
            rule(
                self.vat_breakdown.iter().any(|b| b.vat.key() == l.vat.key()),
                "BR-CO-18 a BG-23 per category",
            )?;
            rule(l.price == l.net, "R120 quantity × price / base quantity = BT-131")?;
            rule(0 <= l.net.0 && l.net.0 <= l.debited.0, "0 ≤ BT-131 ≤ the line's debit")?;
        }
        Ok(())
    }

    /// Amounts as decimals for rendering: 1234 → 12.34 in EUR (scale = the currency's exponent,
    /// so "12.30", never "12.3").
    pub fn amount(&self, minor: MoneyMinor) -> Decimal {
        Decimal::new(minor.0, u32::from(self.currency.exponent))
    }
}

fn check_parties(draft: &InvoiceDraft) -> Result<(), InvoiceError> {
    let two_letters = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase());
    if !two_letters(&draft.seller.country_code) {
        return Err(InvoiceError::SellerCountry);
    }
    let prefix = draft.seller.vat_id.get(..2).unwrap_or("");
    if !two_letters(prefix) || draft.seller.vat_id.len() < 3 {
        return Err(InvoiceError::SellerVatId);
    }
    Ok(())
}

fn sum(amounts: impl IntoIterator<Item = MoneyMinor>) -> Result<MoneyMinor, InvoiceError> {
    amounts
        .into_iter()
        .try_fold(MoneyMinor(0), |acc, a| acc.0.checked_add(a.0).map(MoneyMinor))
        .ok_or(InvoiceError::Overflow)
}

/// BT-117 for a taxable amount: `round_half_away_from_zero(taxable × rate)` in minor units.
fn vat_of(taxable: MoneyMinor, vat: &Vat, currency: Currency) -> Result<MoneyMinor, InvoiceError> {
    let exponent = u32::from(currency.exponent);
    let tax = Decimal::new(taxable.0, exponent)
        .checked_mul(vat.rate)
        .ok_or(InvoiceError::Overflow)?
        .round_dp_with_strategy(exponent, RoundingStrategy::MidpointAwayFromZero);
    let scaled = tax.checked_mul(Decimal::from(10i64.pow(exponent))).ok_or(InvoiceError::Overflow)?;
    i64::try_from(scaled).map(MoneyMinor).map_err(|_| InvoiceError::Overflow)
}

type Priced = (Vec<InvoiceLine>, Vec<VatBreakdown>, MoneyMinor);

/// Lines, breakdown and the rounding amount, per the module's rules 2 and 3.
fn price_lines(usage: &[&UsageLine], basis: PriceBasis, currency: Currency) -> Result<Priced, InvoiceError> {
    let mut keys: Vec<(VatCategory, Decimal)> = usage.iter().map(|l| l.vat.key()).collect();
    keys.sort();
    keys.dedup();
    let mut nets = vec![MoneyMinor(0); usage.len()];
    let mut breakdown = Vec::with_capacity(keys.len());
    let mut rounding = 0i64;
    for key in keys {
        let members: Vec<usize> = (0..usage.len()).filter(|&i| usage[i].vat.key() == key).collect();
        let vat = usage[members[0]].vat.clone();
        let debited = sum(members.iter().map(|&i| usage[i].amount))?;
        let taxable = match basis {
            PriceBasis::Net => debited,
            PriceBasis::Gross => taxable_within(debited, &vat, currency)?,
        };
        let tax = vat_of(taxable, &vat, currency)?;
        if basis == PriceBasis::Gross {
            rounding += debited.0 - taxable.0 - tax.0;
        }
        let shares = share_out(taxable, &members.iter().map(|&i| usage[i].amount).collect::<Vec<_>>());
        for (&i, share) in members.iter().zip(shares) {
            nets[i] = share;
        }
        breakdown.push(VatBreakdown { vat, taxable, tax });
    }
    let lines = usage
        .iter()
        .zip(nets)
        .enumerate()
        .map(|(i, (u, net))| {
            let (unit, quantity) = UnitCode::quantity(u.unit, u.units);
            InvoiceLine {
                id: i as u32 + 1,
                name: u.description.clone(),
                rating_group: u.rating_group,
                quantity,
                unit,
                net,
                debited: u.amount,
                price: net,
                vat: u.vat.clone(),
            }
        })
        .collect();
    Ok((lines, breakdown, MoneyMinor(rounding)))
}

/// The largest taxable amount `N ≤ gross` with `N + tax(N) ≤ gross` (rule 3, gross basis).
/// `N + tax(N)` is non-decreasing in `N`, so a guess from `gross / (1 + rate)` is corrected by
/// a few steps at most.
fn taxable_within(gross: MoneyMinor, vat: &Vat, currency: Currency) -> Result<MoneyMinor, InvoiceError> {
    let total = |n: i64| -> Result<i64, InvoiceError> { Ok(n + vat_of(MoneyMinor(n), vat, currency)?.0) };
    let guess = (Decimal::from(gross.0) / (Decimal::ONE + vat.rate)).floor();
    let mut n = i64::try_from(guess).map_err(|_| InvoiceError::Overflow)?.clamp(0, gross.0);
    while 0 < n && gross.0 < total(n)? {
        n -= 1;
    }
    while n < gross.0 && total(n + 1)? <= gross.0 {
        n += 1;
    }
    Ok(MoneyMinor(n))
}

/// Shares `total` out over `weights` in proportion, exactly (largest remainder; ties go to the
/// earlier entry). `total ≤ Σ weights`, so no share exceeds its weight.
fn share_out(total: MoneyMinor, weights: &[MoneyMinor]) -> Vec<MoneyMinor> {
    let weight_sum: i128 = weights.iter().map(|w| i128::from(w.0)).sum();
    if weight_sum == 0 {
        // Only zero-amount lines: nothing to share.
        return vec![MoneyMinor(0); weights.len()];
    }
    let exact: Vec<(i128, i128)> = weights
        .iter()
        .map(|w| {
            let product = i128::from(total.0) * i128::from(w.0);
            (product / weight_sum, product % weight_sum)
        })
        .collect();
    let mut left = i128::from(total.0) - exact.iter().map(|(q, _)| q).sum::<i128>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    let mut shares: Vec<i64> = exact.iter().map(|(q, _)| *q as i64).collect();
    for i in order {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares.into_iter().map(MoneyMinor).collect()
}

#[cfg(test)]
pub(crate) mod tests;
