//! Cross-entry rules of a catalog: unique ids, references that resolve, ranges, rates that
//! `rating` can charge exactly. Each error names the entry it is in.

use std::collections::hash_map::Entry;

// Fx, not SipHash: the catalog is the operator's own file, not input an attacker picks, and
// validation hashes every subscription id of every account at each catalog change (SipHash
// was a third of an admin edit's time at 100 000 accounts).
use rustc_hash::FxHashMap as HashMap;

use rust_decimal::Decimal;

use super::{
    AccountSpec, BundleSpec, Catalog, CatalogError, Customer, FinalUnitAction, Funding, Plan, Problem,
    Service, SubscriptionId,
};
use crate::rating::{Currency, MoneyMinor};

/// Largest balance or credit limit, in whole currency units. It keeps every amount far inside
/// `MoneyMinor` (10¹² units are 10¹⁵ minor units at three decimals; i64 holds 9.2 × 10¹⁸).
pub const BALANCE_MAX: u64 = 1_000_000_000_000;

/// UTC−12:00 and UTC+14:00 are the extremes in use.
const UTC_OFFSET_MINUTES_MIN: i32 = -12 * 60;
const UTC_OFFSET_MINUTES_MAX: i32 = 14 * 60;

type Located = (String, Problem);

impl Catalog {
    /// Checks what the file syntax cannot: unique ids, references, ranges, and rates that
    /// `rating` accepts (`Rate::check`). `from_toml` runs it; run it again after changing a
    /// catalog in code. `origin` starts every error message.
    pub fn validate(&self, origin: &str) -> Result<(), CatalogError> {
        let invalid = |(entry, problem)| CatalogError::Invalid { origin: origin.to_owned(), entry, problem };
        let plans = check_plans(&self.plans).map_err(invalid)?;
        let customers = check_customers(&self.customers, &self.plans, &plans).map_err(invalid)?;
        check_accounts(&self.accounts, &self.customers, &customers, &self.plans, &plans).map_err(invalid)
    }
}

/// The index of the first entry with each id, or the duplicate's problem.
fn index_unique<'a>(
    index: &mut HashMap<&'a str, usize>,
    what: &'static str,
    id: &'a str,
    position: usize,
    first_at: impl Fn(usize) -> String,
) -> Result<(), Problem> {
    if id.trim().is_empty() {
        // "plan id" → "id", "bundle name" → "name".
        return Err(Problem::Empty { field: what.rsplit(' ').next().unwrap_or(what) });
    }
    match index.entry(id) {
        Entry::Occupied(first) => {
            Err(Problem::Duplicate { what, id: id.to_owned(), first: first_at(*first.get()) })
        }
        Entry::Vacant(slot) => {
            slot.insert(position);
            Ok(())
        }
    }
}

fn check_plans(plans: &[Plan]) -> Result<HashMap<&str, usize>, Located> {
    let mut index = HashMap::default();
    for (i, plan) in plans.iter().enumerate() {
        let entry = format!("plans[{i}] \"{}\"", plan.id);
        let at = |problem| (entry.clone(), problem);
        index_unique(&mut index, "plan id", &plan.id, i, |f| format!("plans[{f}]")).map_err(at)?;
        let offset = plan.utc_offset_minutes;
        if !(UTC_OFFSET_MINUTES_MIN..=UTC_OFFSET_MINUTES_MAX).contains(&offset) {
            return Err(at(Problem::OutOfRange {
                field: "utc_offset_minutes",
                value: offset.to_string(),
                expected: "between -720 (UTC-12) and 840 (UTC+14)",
            }));
        }
        if plan.vat_rate < Decimal::ZERO || Decimal::ONE < plan.vat_rate {
            return Err(at(Problem::OutOfRange {
                field: "vat_rate",
                value: plan.vat_rate.to_string(),
                expected: "a fraction from 0 to 1 (\"0.19\" for 19 %)",
            }));
        }
        if plan.services.is_empty() {
            return Err(at(Problem::Empty { field: "services" }));
        }
        let mut names = HashMap::default();
        for (j, service) in plan.services.iter().enumerate() {
            let entry = format!("{entry} services[{j}] \"{}\"", service.name);
            let at = |problem| (entry.clone(), problem);
            index_unique(&mut names, "service name", &service.name, j, |f| format!("services[{f}]"))
                .map_err(at)?;
            check_service(service).map_err(at)?;
        }
        let mut bundles = HashMap::default();
        for (k, bundle) in plan.bundles.iter().enumerate() {
            let entry = format!("{entry} bundles[{k}] \"{}\"", bundle.name);
            let first_at = |f| format!("bundles[{f}]");
            check_bundle(bundle, plan, &mut bundles, k, first_at).map_err(|problem| (entry, problem))?;
        }
    }
    Ok(index)
}

fn check_service(service: &Service) -> Result<(), Problem> {
    service.rate.check()?;
    if service.quota == 0 {
        return Err(Problem::Zero { field: "quota" });
    }
    if service.validity_time_s == 0 {
        return Err(Problem::Zero { field: "validity_time" });
    }
    let restrict = matches!(service.final_unit_action, FinalUnitAction::Restrict { .. });
    for rule in &service.restriction_filter_rules {
        // RFC 6733 §4.3.1 IPFilterRule: "action dir proto from src to dst [options]".
        let ok = rule.starts_with("permit ") || rule.starts_with("deny ");
        if !restrict || !ok || rule.len() > 256 {
            return Err(Problem::OutOfRange {
                field: "restriction_filter_rules",
                value: rule.clone(),
                expected: "an IPFilterRule (\"permit …\" or \"deny …\", ≤ 256 bytes) with final_unit_action = \"restrict\"",
            });
        }
    }
    if let Some(p) = service.threshold_percent.filter(|p| !(1..=99).contains(p)) {
        return Err(Problem::OutOfRange {
            field: "threshold_percent",
            value: p.to_string(),
            expected: "1..=99",
        });
    }
    if service.quota_holding_time_s == Some(0) {
        return Err(Problem::Zero { field: "quota_holding_time" });
    }
    if u64::from(service.validity_time_s) > crate::limits::VALIDITY_TIME_S_MAX {
        return Err(Problem::OutOfRange {
            field: "validity_time",
            value: service.validity_time_s.to_string(),
            expected: "at most 43200 (12 hours)",
        });
    }
    match &service.final_unit_action {
        FinalUnitAction::Terminate => Ok(()),
        FinalUnitAction::Redirect { address } if address.trim().is_empty() => {
            Err(Problem::MissingFinalUnitDetail { field: "redirect_address", action: "redirect" })
        }
        FinalUnitAction::Restrict { filter_id } if filter_id.trim().is_empty() => {
            Err(Problem::MissingFinalUnitDetail { field: "filter_id", action: "restrict" })
        }
        FinalUnitAction::Redirect { .. } | FinalUnitAction::Restrict { .. } => Ok(()),
    }
}

fn check_bundle<'a>(
    bundle: &'a BundleSpec,
    plan: &Plan,
    names: &mut HashMap<&'a str, usize>,
    position: usize,
    first_at: impl Fn(usize) -> String,
) -> Result<(), Problem> {
    index_unique(names, "bundle name", &bundle.name, position, first_at)?;
    if !plan.services.iter().any(|s| s.name == bundle.service) {
        return Err(Problem::UnknownService { service: bundle.service.clone(), plan: plan.id.clone() });
    }
    if bundle.units == 0 {
        return Err(Problem::Zero { field: "units" });
    }
    if bundle.valid_days == 0 {
        return Err(Problem::Zero { field: "valid_days" });
    }
    Ok(())
}

fn check_customers<'a>(
    customers: &'a [Customer],
    plans: &[Plan],
    plan_index: &HashMap<&str, usize>,
) -> Result<HashMap<&'a str, usize>, Located> {
    let mut index = HashMap::default();
    for (i, customer) in customers.iter().enumerate() {
        let entry = format!("customers[{i}] \"{}\"", customer.id);
        let at = |problem| (entry.clone(), problem);
        index_unique(&mut index, "customer id", &customer.id, i, |f| format!("customers[{f}]"))
            .map_err(at)?;
        if customer.name.trim().is_empty() {
            return Err(at(Problem::Empty { field: "name" }));
        }
        if !customer.email.is_empty() && !looks_like_email(&customer.email) {
            return Err(at(Problem::BadEmail(customer.email.clone())));
        }
        let Some(&p) = plan_index.get(customer.plan.as_str()) else {
            return Err(at(Problem::UnknownPlan(customer.plan.clone())));
        };
        check_overrides(&entry, customer, &plans[p])?;
    }
    Ok(index)
}

/// Something@something.something: enough to catch a name typed into the e-mail field.
fn looks_like_email(email: &str) -> bool {
    email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
    }) && !email.chars().any(char::is_whitespace)
}

fn check_overrides(entry: &str, customer: &Customer, plan: &Plan) -> Result<(), Located> {
    let overrides = &customer.overrides;
    if let Some(percent) = overrides.discount_percent {
        if percent < Decimal::ZERO || Decimal::ONE_HUNDRED < percent {
            let problem = Problem::OutOfRange {
                field: "discount_percent",
                value: percent.to_string(),
                expected: "from 0 to 100",
            };
            return Err((format!("{entry} overrides"), problem));
        }
    }
    let mut names = HashMap::default();
    for (k, o) in overrides.services.iter().enumerate() {
        let at = |problem| (format!("{entry} overrides.services[{k}] \"{}\"", o.name), problem);
        index_unique(&mut names, "service name", &o.name, k, |f| format!("overrides.services[{f}]"))
            .map_err(at)?;
        let Some(service) = plan.services.iter().find(|s| s.name == o.name) else {
            return Err(at(Problem::UnknownService { service: o.name.clone(), plan: plan.id.clone() }));
        };
        if o.quota == Some(0) {
            return Err(at(Problem::Zero { field: "quota" }));
        }
        let mut rate = service.rate.clone();
        rate.price = o.price.unwrap_or(rate.price);
        rate.connect_fee = o.connect_fee.unwrap_or(rate.connect_fee);
        rate.check().map_err(|e| at(Problem::Rate(e)))?;
    }
    // Plan and override bundles both apply, so their names share one namespace.
    let mut bundles: HashMap<&str, usize> = HashMap::default();
    let plan_bundles = plan.bundles.len();
    for (k, b) in plan.bundles.iter().enumerate() {
        bundles.insert(&b.name, k);
    }
    for (k, bundle) in overrides.bundles.iter().enumerate() {
        let first_at = |f| {
            if f < plan_bundles {
                format!("plan \"{}\" bundles[{f}]", plan.id)
            } else {
                format!("overrides.bundles[{}]", f - plan_bundles)
            }
        };
        check_bundle(bundle, plan, &mut bundles, plan_bundles + k, first_at)
            .map_err(|problem| (format!("{entry} overrides.bundles[{k}] \"{}\"", bundle.name), problem))?;
    }
    Ok(())
}

fn check_accounts(
    accounts: &[AccountSpec],
    customers: &[Customer],
    customer_index: &HashMap<&str, usize>,
    plans: &[Plan],
    plan_index: &HashMap<&str, usize>,
) -> Result<(), Located> {
    let mut subscriptions: HashMap<&SubscriptionId, usize> = HashMap::default();
    for (i, account) in accounts.iter().enumerate() {
        let at = |problem| (format!("accounts[{i}]"), problem);
        let Some(&c) = customer_index.get(account.customer.as_str()) else {
            return Err(at(Problem::UnknownCustomer(account.customer.clone())));
        };
        // Customers were checked first, so their plan exists.
        let currency = plans[plan_index[customers[c].plan.as_str()]].currency;
        if account.subscription_ids.is_empty() {
            return Err(at(Problem::Empty { field: "subscription_ids" }));
        }
        for id in &account.subscription_ids {
            if let Some(first) = subscriptions.insert(id, i) {
                let id = id.to_string();
                return Err(at(if first == i {
                    Problem::Duplicate { what: "subscription id", id, first: format!("accounts[{i}]") }
                } else {
                    Problem::SubscriptionInTwoAccounts { id, first: format!("accounts[{first}]") }
                }));
            }
        }
        check_money("balance", account.balance, currency).map_err(at)?;
        check_money("credit_limit", account.credit_limit, currency).map_err(at)?;
        if account.credit_limit < Decimal::ZERO {
            return Err(at(Problem::OutOfRange {
                field: "credit_limit",
                value: account.credit_limit.to_string(),
                expected: "≥ 0",
            }));
        }
        if account.funding == Funding::Prepaid && !account.credit_limit.is_zero() {
            return Err(at(Problem::CreditLimitOnPrepaid { value: account.credit_limit }));
        }
        if account.balance < -account.credit_limit {
            return Err(at(Problem::BelowCreditLimit {
                balance: account.balance,
                credit_limit: account.credit_limit,
            }));
        }
    }
    Ok(())
}

fn check_money(field: &'static str, value: Decimal, currency: Currency) -> Result<(), Problem> {
    if !MoneyMinor::fits(value, currency) {
        return Err(Problem::TooPreciseForCurrency {
            field,
            value,
            currency: currency.code,
            exponent: currency.exponent,
        });
    }
    if Decimal::from(BALANCE_MAX) < value.abs() {
        return Err(Problem::OutOfRange {
            field,
            value: value.to_string(),
            expected: "at most 10^12 in size",
        });
    }
    Ok(())
}
