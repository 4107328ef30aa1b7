//! Changing the catalog in force while gyro runs (live reload, issue 7), and the catalog a
//! running server holds.
//!
//! The journal and the ledger refer to the catalog by position: account N is the catalog's
//! `accounts[N]`, a session's rating group keeps the index of its service in the package. So a
//! new catalog may change prices, quotas, names, addresses, customers' plans and overrides and
//! payment details, and may add plans, customers and accounts (at the end), but it must keep
//! every account in force where it is, with the same customer and subscription ids, and keep
//! each package's currency and its services' order (new services go after the old ones).
//! Balances, statuses and credit limits in the file are opening values: once an account runs,
//! the ledger owns them and the admin API changes them (top-ups, adjustments, bar/unbar).
//! `check_change` says which entry breaks which rule, and the old catalog stays in force.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{Catalog, CatalogError, Problem, SharedPackage};

/// A catalog installed in a running server: the catalog, its packages and indexes, and its
/// version (the digest of its text).
#[derive(Debug)]
pub struct Installed {
    pub catalog: Catalog,
    /// By customer id.
    pub packages: HashMap<String, SharedPackage>,
    /// Index into `catalog.customers` by id.
    pub customers: HashMap<String, usize>,
    /// Index into `catalog.plans` by id.
    pub plans: HashMap<String, usize>,
    /// Where it came from (a file name, "embedded demo", "admin API").
    pub name: String,
    /// `durable::catalog_digest` of its text: the version shown in metrics and the data
    /// directory's file name for it.
    pub digest: String,
}

impl Installed {
    pub fn new(catalog: Catalog, name: impl Into<String>, digest: impl Into<String>) -> Self {
        let packages = catalog.packages();
        let customers = catalog.customers.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        let plans = catalog.plans.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
        Self { catalog, packages, customers, plans, name: name.into(), digest: digest.into() }
    }

    /// `new`, but a customer whose package did not change keeps `previous`'s `Arc` of it: the
    /// engine then sees which accounts a change reprices by pointer, and interns no new copy
    /// of an unchanged package at every change.
    pub fn succeeding(
        previous: &Self,
        catalog: Catalog,
        name: impl Into<String>,
        digest: impl Into<String>,
    ) -> Self {
        let mut next = Self::new(catalog, name, digest);
        for (customer, package) in &mut next.packages {
            if let Some(before) = previous.packages.get(customer) {
                if **before == **package {
                    *package = Arc::clone(before);
                }
            }
        }
        next
    }

    pub fn customer(&self, id: &str) -> Option<&super::Customer> {
        self.customers.get(id).and_then(|&i| self.catalog.customers.get(i))
    }

    pub fn plan(&self, id: &str) -> Option<&super::Plan> {
        self.plans.get(id).and_then(|&i| self.catalog.plans.get(i))
    }
}

/// The catalog in force, shared by everyone who reads it (settlement worker, admin API,
/// metrics) and replaced whole by a reload. Readers clone the `Arc` and keep a consistent
/// version for as long as they need it; nothing on the per-request path reads it (the engine
/// has its own per-account package table).
#[derive(Debug)]
pub struct Live(RwLock<Arc<Installed>>);

impl Live {
    pub fn new(installed: Installed) -> Self {
        Self(RwLock::new(Arc::new(installed)))
    }

    pub fn from_arc(installed: Arc<Installed>) -> Self {
        Self(RwLock::new(installed))
    }

    pub fn current(&self) -> Arc<Installed> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn replace(&self, installed: Arc<Installed>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = installed;
    }
}

/// Whether `new` may replace `old` in a running server (see the module's text). `new` has been
/// validated on its own already (`Catalog::from_toml`). `origin` names the new catalog in the
/// error, as `from_toml` does.
pub fn check_change(
    origin: &str,
    old: &Catalog,
    old_packages: &HashMap<String, SharedPackage>,
    new: &Catalog,
    new_packages: &HashMap<String, SharedPackage>,
) -> Result<(), CatalogError> {
    let invalid =
        |entry: String, problem: Problem| CatalogError::Invalid { origin: origin.to_owned(), entry, problem };
    if new.accounts.len() < old.accounts.len() {
        return Err(invalid(
            format!("accounts[{}]", new.accounts.len()),
            Problem::AccountRemoved { in_force: old.accounts.len(), now: new.accounts.len() },
        ));
    }
    for (i, (was, now)) in old.accounts.iter().zip(&new.accounts).enumerate() {
        let at = |problem| invalid(format!("accounts[{i}]"), problem);
        if was.customer != now.customer {
            return Err(at(Problem::AccountChanged { field: "customer", was: was.customer.clone() }));
        }
        if was.subscription_ids != now.subscription_ids {
            let was = was.subscription_ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            return Err(at(Problem::AccountChanged { field: "subscription_ids", was }));
        }
        if was.funding != now.funding {
            return Err(at(Problem::AccountChanged { field: "funding", was: format!("{:?}", was.funding) }));
        }
        for (field, a, b) in
            [("balance", was.balance, now.balance), ("credit_limit", was.credit_limit, now.credit_limit)]
        {
            if a != b {
                return Err(at(Problem::OpeningValueChanged { field, was: a.to_string() }));
            }
        }
        if was.closed && !now.closed {
            return Err(at(Problem::Reopened));
        }
        if was.status != now.status {
            return Err(at(Problem::OpeningValueChanged {
                field: "status",
                was: format!("{:?}", was.status),
            }));
        }
    }
    // Packages of customers with accounts in force: same currency, services in the same places.
    let mut seen = rustc_hash::FxHashSet::default();
    for (i, account) in old.accounts.iter().enumerate() {
        if !seen.insert(account.customer.as_str()) {
            continue;
        }
        let (Some(was), Some(now)) =
            (old_packages.get(&account.customer), new_packages.get(&account.customer))
        else {
            continue; // validation of `new` already refused an account without a package
        };
        let entry = || {
            let c = new.customers.iter().position(|c| c.id == account.customer).unwrap_or(usize::MAX);
            format!(
                "customers[{c}] \"{}\" (plan \"{}\", used by accounts[{i}])",
                account.customer, now.plan_id
            )
        };
        if was.currency.code != now.currency.code {
            return Err(invalid(
                entry(),
                Problem::CurrencyChanged {
                    was: was.currency.code.to_owned(),
                    now: now.currency.code.to_owned(),
                },
            ));
        }
        for (s, service) in was.services.iter().enumerate() {
            match now.services.get(s) {
                Some(n) if n.name == service.name => {}
                other => {
                    return Err(invalid(
                        entry(),
                        Problem::ServiceMoved {
                            index: s,
                            was: service.name.clone(),
                            now: other.map(|n| n.name.clone()),
                        },
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Accounts whose package changed from `old` to `new` (prices, quotas, services, plan): the
/// ones whose open sessions are told to re-authorise (RAR). Compared by pointer, else by
/// content, once per customer.
pub fn accounts_repriced(old: &Installed, new: &Installed) -> Vec<u32> {
    // Fx: one lookup per account in force (see `validate`).
    let mut by_customer: rustc_hash::FxHashMap<&str, bool> = rustc_hash::FxHashMap::default();
    let mut out = Vec::new();
    for (i, account) in old.catalog.accounts.iter().enumerate() {
        let changed = *by_customer.entry(account.customer.as_str()).or_insert_with(|| {
            match (old.packages.get(&account.customer), new.packages.get(&account.customer)) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b) && a != b,
                _ => true,
            }
        });
        if changed {
            out.push(u32::try_from(i).expect("fewer than 2^32 accounts"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A price change reprices the accounts of that plan only; an unchanged package keeps its
    /// `Arc`, so the engine switches nothing for the others.
    #[test]
    fn only_the_accounts_of_a_changed_package_are_repriced() {
        let text = Catalog::demo_toml();
        let old = Installed::new(Catalog::from_toml("a", text).unwrap(), "a", "1");
        let cheaper: String = text
            .lines()
            .map(|l| {
                if l.contains("0.50 EUR lasts 5 MiB") {
                    "  price = \"0.05\"".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let new = Installed::succeeding(&old, Catalog::from_toml("b", &cheaper).unwrap(), "b", "2");
        assert_eq!(accounts_repriced(&old, &new), vec![4], "Erin, on mobile-flex");
        assert!(Arc::ptr_eq(&old.packages["c-carol"], &new.packages["c-carol"]));
        assert!(!Arc::ptr_eq(&old.packages["c-erin"], &new.packages["c-erin"]));
        let same = Installed::succeeding(&new, Catalog::from_toml("c", &cheaper).unwrap(), "c", "3");
        assert!(accounts_repriced(&new, &same).is_empty());
    }
}
