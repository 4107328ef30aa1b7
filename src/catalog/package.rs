//! Packages: a plan with one customer's overrides applied, shared when there are none.

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::{Decimal, RoundingStrategy};

use super::{Catalog, Overrides, Package, Plan, Service, SharedPackage};

/// Decimal places a discounted amount keeps (rounded toward +∞).
pub const DISCOUNT_SCALE: u32 = 6;

impl Catalog {
    /// Every customer's package, by customer id. Customers without overrides share their
    /// plan's `Arc<Package>`; the others get their own. A customer whose plan does not exist
    /// (possible only in a catalog that was changed without `validate`) is left out.
    pub fn packages(&self) -> HashMap<String, SharedPackage> {
        let plans: HashMap<&str, SharedPackage> =
            self.plans.iter().map(|p| (p.id.as_str(), Arc::new(p.package()))).collect();
        let mut packages = HashMap::with_capacity(self.customers.len());
        for customer in &self.customers {
            let Some(plan) = plans.get(customer.plan.as_str()) else {
                continue;
            };
            let package = if customer.overrides.is_empty() {
                Arc::clone(plan)
            } else {
                Arc::new(plan.with_overrides(&customer.overrides))
            };
            packages.insert(customer.id.clone(), package);
        }
        packages
    }
}

impl Plan {
    /// The plan as a package, without overrides.
    pub fn package(&self) -> Package {
        Package {
            plan_id: self.id.clone(),
            currency: self.currency,
            utc_offset_minutes: self.utc_offset_minutes,
            services: self.services.clone(),
            bundles: self.bundles.clone(),
        }
    }
}

impl Overrides {
    /// True when the overrides change nothing (a 0 % discount counts as none).
    pub fn is_empty(&self) -> bool {
        self.discount_percent.is_none_or(|d| d.is_zero())
            && self.services.is_empty()
            && self.bundles.is_empty()
    }
}

impl Package {
    /// The first service whose lists all match: `contexts` must contain `context`,
    /// `rating_groups` the Rating-Group and `service_ids` the Service-Identifier, where an empty
    /// list matches anything. A request without a Rating-Group (or Service-Identifier) matches
    /// only services whose list for it is empty.
    pub fn find(&self, context: u32, rating_group: Option<u32>, service_id: Option<u32>) -> Option<&Service> {
        let matches =
            |list: &[u32], value: Option<u32>| list.is_empty() || value.is_some_and(|v| list.contains(&v));
        self.services.iter().find(|s| {
            matches(&s.contexts, Some(context))
                && matches(&s.rating_groups, rating_group)
                && matches(&s.service_ids, service_id)
        })
    }

    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// This package with a customer's overrides: service overrides replace the base price,
    /// connect fee and quota of the named service (band prices stay); then the discount applies
    /// to every price, band price, connect fee and min/max charge, overridden ones included;
    /// finally the override bundles join the plan's.
    fn with_overrides(&self, overrides: &Overrides) -> Self {
        let mut package = self.clone();
        for o in &overrides.services {
            let Some(service) = package.services.iter_mut().find(|s| s.name == o.name) else {
                continue;
            };
            service.rate.price = o.price.unwrap_or(service.rate.price);
            service.rate.connect_fee = o.connect_fee.unwrap_or(service.rate.connect_fee);
            service.quota = o.quota.unwrap_or(service.quota);
        }
        if let Some(percent) = overrides.discount_percent.filter(|d| !d.is_zero()) {
            for rate in package.services.iter_mut().map(|s| &mut s.rate) {
                rate.price = discounted(rate.price, percent);
                rate.connect_fee = discounted(rate.connect_fee, percent);
                rate.min_charge = rate.min_charge.map(|m| discounted(m, percent));
                rate.max_charge = rate.max_charge.map(|m| discounted(m, percent));
                for band in &mut rate.bands {
                    band.price = discounted(band.price, percent);
                }
            }
        }
        package.bundles.extend(overrides.bundles.iter().cloned());
        package
    }
}

/// `amount × (100 − percent) / 100`, rounded toward +∞ at `DISCOUNT_SCALE` places, so a
/// discount never gives more than it says: 0.05 at 10 % → 0.045; 0.000015 at 10 % → 0.000014.
/// A percent outside 0..=100 (which `Catalog::validate` rejects) is clamped into it.
pub fn discounted(amount: Decimal, percent: Decimal) -> Decimal {
    let percent = percent.clamp(Decimal::ZERO, Decimal::ONE_HUNDRED);
    let factor = (Decimal::ONE_HUNDRED - percent) / Decimal::ONE_HUNDRED;
    (amount * factor).round_dp_with_strategy(DISCOUNT_SCALE, RoundingStrategy::ToPositiveInfinity).normalize()
}
