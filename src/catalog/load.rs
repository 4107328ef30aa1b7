//! TOML text → `Catalog`: syntax of each value here (decimals, currencies, times, days,
//! subscription ids, final-unit actions), then `Catalog::validate` for everything else.

use std::path::Path;

use rust_decimal::Decimal;

use super::raw::{
    Amount, RawAccount, RawBand, RawBundle, RawCatalog, RawCustomer, RawFinalUnitAction, RawFunding, RawPlan,
    RawService, RawStatus, RawUnit,
};
use super::{
    AccountSpec, AccountStatus, BundleSpec, Catalog, CatalogError, Customer, FinalUnitAction, Funding,
    Overrides, Plan, Problem, Service, ServiceOverride, SubscriptionId,
};
use crate::limits::GATEWAY_REF_MAX_BYTES;
use crate::rating::{Band, Currency, Rate, UnitKind};
use crate::settlement::payment::{GatewayCustomer, GatewayRefs, PaymentMethod, PaymentMethodId};

/// The demo catalog `gyro serve` starts with (see the comments in the file).
const DEMO_TOML: &str = include_str!("demo.toml");

impl Catalog {
    /// Reads and validates a catalog file.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&origin, &text),
            Err(source) => Err(CatalogError::Read { path: origin, source }),
        }
    }

    /// Parses and validates catalog TOML; `origin` (usually the file name) starts every error.
    pub fn from_toml(origin: &str, text: &str) -> Result<Self, CatalogError> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| CatalogError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |(entry, problem)| CatalogError::Invalid { origin: origin.to_owned(), entry, problem };
        let catalog = convert(raw).map_err(invalid)?;
        catalog.validate(origin)?;
        Ok(catalog)
    }

    /// The embedded demo catalog (`src/catalog/demo.toml`): two plans, five subscribers.
    pub fn demo() -> Self {
        // The demo file is part of the binary and a unit test loads it, so it cannot fail here.
        Self::from_toml("demo.toml", DEMO_TOML).expect("the embedded demo catalog is valid")
    }

    /// The demo catalog's text, for `gyro` to print or write out as a starting point.
    pub fn demo_toml() -> &'static str {
        DEMO_TOML
    }
}

/// A problem and the entry it is in ("plans[1] \"mobile-basic\" services[2] \"voice\"").
type Located = (String, Problem);

fn convert(raw: RawCatalog) -> Result<Catalog, Located> {
    let plans = raw.plans.into_iter().enumerate().map(|(i, p)| plan(i, p)).collect::<Result<_, _>>()?;
    let customers =
        raw.customers.into_iter().enumerate().map(|(i, c)| customer(i, c)).collect::<Result<_, _>>()?;
    let accounts =
        raw.accounts.into_iter().enumerate().map(|(i, a)| account(i, a)).collect::<Result<_, _>>()?;
    Ok(Catalog { plans, customers, accounts })
}

fn plan(index: usize, raw: RawPlan) -> Result<Plan, Located> {
    let entry = format!("plans[{index}] \"{}\"", raw.id);
    let at = |problem| (entry.clone(), problem);
    let currency =
        Currency::from_code(&raw.currency).ok_or_else(|| at(Problem::UnknownCurrency(raw.currency)))?;
    let vat_rate = raw.vat_rate.map_or(Ok(Decimal::ZERO), |v| decimal("vat_rate", &v)).map_err(at)?;
    let services =
        raw.services.into_iter().enumerate().map(|(j, s)| service(&entry, j, s)).collect::<Result<_, _>>()?;
    let bundles = raw.bundles.into_iter().map(bundle).collect();
    Ok(Plan {
        name: raw.name.unwrap_or_else(|| raw.id.clone()),
        id: raw.id,
        currency,
        utc_offset_minutes: raw.utc_offset_minutes,
        vat_rate,
        services,
        bundles,
    })
}

fn service(plan: &str, index: usize, raw: RawService) -> Result<Service, Located> {
    let entry = format!("{plan} services[{index}] \"{}\"", raw.name);
    let at = |problem| (entry.clone(), problem);
    let optional = |field, value: &Option<Amount>| value.as_ref().map(|v| decimal(field, v)).transpose();
    let final_unit_action = final_unit_action(&raw).map_err(at)?;
    let bands = raw
        .bands
        .iter()
        .enumerate()
        .map(|(k, b)| band(b).map_err(|problem| (format!("{entry} bands[{k}]"), problem)))
        .collect::<Result<_, _>>()?;
    let rate = Rate {
        unit: match raw.unit {
            RawUnit::Time => UnitKind::Time,
            RawUnit::Octets => UnitKind::Octets,
            RawUnit::Events => UnitKind::Events,
        },
        price: decimal("price", &raw.price).map_err(at)?,
        per: raw.per,
        increment: raw.increment,
        first_increment: raw.first_increment.unwrap_or(raw.increment),
        connect_fee: optional("connect_fee", &raw.connect_fee).map_err(at)?.unwrap_or(Decimal::ZERO),
        min_charge: optional("min_charge", &raw.min_charge).map_err(at)?,
        max_charge: optional("max_charge", &raw.max_charge).map_err(at)?,
        bands,
    };
    Ok(Service {
        name: raw.name,
        contexts: raw.contexts,
        rating_groups: raw.rating_groups,
        service_ids: raw.service_ids,
        rate,
        quota: raw.quota,
        validity_time_s: raw.validity_time,
        final_unit_action,
        restriction_filter_rules: raw.restriction_filter_rules,
        threshold_percent: raw.threshold_percent,
        quota_holding_time_s: raw.quota_holding_time,
    })
}

fn final_unit_action(raw: &RawService) -> Result<FinalUnitAction, Problem> {
    let action = raw.final_unit_action;
    let (name, needs) = match action {
        RawFinalUnitAction::Terminate => ("terminate", None),
        RawFinalUnitAction::Redirect => ("redirect", Some(("redirect_address", &raw.redirect_address))),
        RawFinalUnitAction::Restrict => ("restrict", Some(("filter_id", &raw.filter_id))),
    };
    // A detail for another action is almost always a forgotten `final_unit_action` line.
    for (field, value) in [("redirect_address", &raw.redirect_address), ("filter_id", &raw.filter_id)] {
        let wanted = needs.is_some_and(|(f, _)| f == field);
        if value.is_some() && !wanted {
            return Err(Problem::UnusedFinalUnitDetail { field, action: name });
        }
    }
    let detail = match needs {
        None => return Ok(FinalUnitAction::Terminate),
        Some((field, value)) => match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => v.to_owned(),
            _ => return Err(Problem::MissingFinalUnitDetail { field, action: name }),
        },
    };
    Ok(match action {
        RawFinalUnitAction::Redirect => FinalUnitAction::Redirect { address: detail },
        _ => FinalUnitAction::Restrict { filter_id: detail },
    })
}

fn band(raw: &RawBand) -> Result<Band, Problem> {
    let days = match &raw.days {
        None => 0x7f,
        Some(names) if names.is_empty() => return Err(Problem::Empty { field: "days" }),
        Some(names) => names.iter().try_fold(0u8, |mask, name| weekday_bit(name).map(|bit| mask | bit))?,
    };
    Ok(Band {
        days,
        from_minute: minute_of_day("from", &raw.from)?,
        to_minute: minute_of_day("to", &raw.to)?,
        price: decimal("price", &raw.price)?,
    })
}

fn weekday_bit(name: &str) -> Result<u8, Problem> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let index =
        DAYS.iter().position(|d| d.eq_ignore_ascii_case(name)).ok_or(Problem::BadDay(name.to_owned()))?;
    Ok(1 << index)
}

/// "HH:MM" from "00:00" to "24:00" → minutes after midnight.
fn minute_of_day(field: &'static str, text: &str) -> Result<u16, Problem> {
    let bad = || Problem::BadTime { field, text: text.to_owned() };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if 59 < m || 24 < h || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn bundle(raw: RawBundle) -> BundleSpec {
    BundleSpec { name: raw.name, service: raw.service, units: raw.units, valid_days: raw.valid_days }
}

pub(super) fn customer(index: usize, raw: RawCustomer) -> Result<Customer, Located> {
    let entry = format!("customers[{index}] \"{}\"", raw.id);
    let overrides = raw.overrides;
    let discount_percent = overrides
        .discount_percent
        .map(|d| decimal("discount_percent", &d))
        .transpose()
        .map_err(|problem| (format!("{entry} overrides"), problem))?;
    let services = overrides
        .services
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            let at = |problem| (format!("{entry} overrides.services[{k}] \"{}\"", s.name), problem);
            let optional =
                |field, value: &Option<Amount>| value.as_ref().map(|v| decimal(field, v)).transpose();
            Ok(ServiceOverride {
                price: optional("price", &s.price).map_err(at)?,
                connect_fee: optional("connect_fee", &s.connect_fee).map_err(at)?,
                quota: s.quota,
                name: s.name,
            })
        })
        .collect::<Result<_, Located>>()?;
    Ok(Customer {
        id: raw.id,
        name: raw.name,
        email: raw.email,
        address: raw.address,
        plan: raw.plan,
        overrides: Overrides {
            discount_percent,
            services,
            bundles: overrides.bundles.into_iter().map(bundle).collect(),
        },
    })
}

pub(super) fn account(index: usize, raw: RawAccount) -> Result<AccountSpec, Located> {
    let at = |problem| (format!("accounts[{index}]"), problem);
    let subscription_ids = raw
        .subscription_ids
        .iter()
        .map(|text| {
            SubscriptionId::parse(text)
                .map_err(|reason| at(Problem::BadSubscriptionId { text: text.clone(), reason }))
        })
        .collect::<Result<_, _>>()?;
    let amount =
        |field, value: &Option<Amount>| value.as_ref().map_or(Ok(Decimal::ZERO), |v| decimal(field, v));
    let payment = payment_method(&raw).map_err(at)?;
    let gateway = gateway_refs(&raw, payment.is_some()).map_err(at)?;
    Ok(AccountSpec {
        customer: raw.customer,
        subscription_ids,
        funding: match raw.funding {
            RawFunding::Prepaid => Funding::Prepaid,
            RawFunding::OnFile => Funding::OnFile,
        },
        balance: amount("balance", &raw.balance).map_err(at)?,
        credit_limit: amount("credit_limit", &raw.credit_limit).map_err(at)?,
        status: match raw.status {
            RawStatus::Active => AccountStatus::Active,
            RawStatus::Barred => AccountStatus::Barred,
        },
        payment,
        gateway,
        closed: raw.closed,
    })
}

/// An on_file account's `gateway_customer` and `payment_method_id`, each optional: the sandbox
/// needs neither, and the stripe adapter refuses a charge without them (per charge, not here,
/// because which adapter runs is the configuration's business, not the catalog's).
fn gateway_refs(raw: &RawAccount, has_method: bool) -> Result<GatewayRefs, Problem> {
    let check = |field: &'static str, value: &Option<String>| -> Result<Option<String>, Problem> {
        let Some(value) = value else { return Ok(None) };
        if value.is_empty() {
            return Err(Problem::Empty { field });
        }
        // Graphic ASCII only: the ids go into a form body and JSON as they are, and a space, a
        // control character or a non-ASCII look-alike is a copy-and-paste mistake, not an id.
        if GATEWAY_REF_MAX_BYTES < value.len() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Problem::BadGatewayRef { field });
        }
        if !has_method {
            return Err(Problem::GatewayRefWithoutMethod { field });
        }
        Ok(Some(value.clone()))
    };
    Ok(GatewayRefs {
        customer: check("gateway_customer", &raw.gateway_customer)?.map(GatewayCustomer),
        payment_method: check("payment_method_id", &raw.payment_method_id)?.map(PaymentMethodId),
    })
}

/// An on_file account's `card`, or `iban` with `mandate`, checked (Luhn, ISO 13616).
fn payment_method(raw: &RawAccount) -> Result<Option<PaymentMethod>, Problem> {
    use crate::settlement::payment::{Card, Iban, SepaDebit};
    let method = match (&raw.card, &raw.iban, &raw.mandate) {
        (None, None, None) => return Ok(None),
        (Some(_), Some(_), _) => return Err(Problem::TwoPaymentMethods),
        (Some(card), None, None) => PaymentMethod::Card(
            Card::from_number(card).map_err(|reason| Problem::BadPaymentMethod { field: "card", reason })?,
        ),
        (Some(_), None, Some(_)) => return Err(Problem::Requires { field: "iban", with: "mandate" }),
        (None, Some(_), None) => return Err(Problem::Requires { field: "mandate", with: "iban" }),
        (None, None, Some(_)) => return Err(Problem::Requires { field: "iban", with: "mandate" }),
        (None, Some(iban), Some(mandate)) => {
            if mandate.trim().is_empty() {
                return Err(Problem::Empty { field: "mandate" });
            }
            let iban =
                Iban::parse(iban).map_err(|reason| Problem::BadPaymentMethod { field: "iban", reason })?;
            PaymentMethod::SepaDebit(SepaDebit { mandate: mandate.trim().to_owned(), iban })
        }
    };
    if matches!(raw.funding, RawFunding::Prepaid) {
        let field = if raw.card.is_some() { "card" } else { "iban" };
        return Err(Problem::PaymentMethodOnPrepaid { field });
    }
    Ok(Some(method))
}

/// Plain decimal notation only: an optional minus, digits, and optionally a point and digits.
/// (rust_decimal alone would also take "1e3" and silently round a 30th decimal away.)
fn decimal(field: &'static str, amount: &Amount) -> Result<Decimal, Problem> {
    let text = amount.0.as_str();
    let bad = || Problem::NotDecimal { field, text: text.to_owned() };
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    Decimal::from_str_exact(text).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_plain_notation() {
        let parse = |s: &str| decimal("price", &Amount(s.to_owned()));
        assert_eq!(parse("0.01").unwrap().to_string(), "0.01");
        assert_eq!(parse("-1").unwrap().to_string(), "-1");
        assert_eq!(parse("5").unwrap().to_string(), "5");
        for bad in
            ["", "1e3", ".5", "5.", "1_000", " 1", "+1", "1.2.3", "0.00000000000000000000000000001", "abc"]
        {
            assert!(
                matches!(parse(bad), Err(Problem::NotDecimal { field: "price", .. })),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn times_and_days() {
        assert_eq!(minute_of_day("from", "00:00"), Ok(0));
        assert_eq!(minute_of_day("from", "08:30"), Ok(510));
        assert_eq!(minute_of_day("to", "24:00"), Ok(1440));
        for bad in ["24:01", "25:00", "8:30", "08:60", "0830", "08:3a", ""] {
            assert!(minute_of_day("to", bad).is_err(), "{bad}");
        }
        assert_eq!(weekday_bit("mon"), Ok(1));
        assert_eq!(weekday_bit("Sun"), Ok(1 << 6));
        assert_eq!(weekday_bit("sunday"), Err(Problem::BadDay("sunday".into())));
    }
}
