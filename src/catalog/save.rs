//! `Catalog` → TOML text, in the format `load` reads: the same raw structs, serialized. A value
//! at its default is left out (as a person would write the file), money and rates are written as
//! their decimal strings (never through a float), and the output depends only on the catalog, so
//! the same catalog always gives the same bytes (and the same `durable::catalog_digest`).

use rust_decimal::Decimal;

use super::raw::{
    Amount, RawAccount, RawBand, RawBundle, RawCatalog, RawCustomer, RawFinalUnitAction, RawFunding,
    RawOverrides, RawPlan, RawService, RawServiceOverride, RawStatus, RawUnit,
};
use super::{
    AccountSpec, AccountStatus, BundleSpec, Catalog, Customer, FinalUnitAction, Funding, Plan, Service,
};
use crate::rating::{Band, UnitKind};
use crate::settlement::payment::PaymentMethod;

/// Every day of the week: what a band without `days` means.
const ALL_DAYS: u8 = 0x7f;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Catalog {
    /// The catalog as TOML that `Catalog::from_toml` reads back to an equal catalog (decimals
    /// with their scale: `"50.00"` stays `"50.00"`). Stable: the same catalog gives the same
    /// bytes. Card numbers and IBANs are written in full, as the catalog holds them.
    ///
    /// Exact for every catalog `from_toml` returns. A catalog built or changed in code must also
    /// pass `validate` and hold its values in the form loading gives them: payment methods from
    /// `Card::from_number` / `Iban::parse`, subscription ids from `SubscriptionId::parse`, and
    /// redirect addresses, filter ids and mandates without surrounding spaces (loading trims them).
    pub fn to_toml(&self) -> String {
        let raw = self.to_raw();
        // Every value is a string, an integer, an array or a table of those: nothing a TOML
        // serializer can refuse.
        toml::to_string(&raw).expect("a catalog always serializes to TOML")
    }
}

impl Catalog {
    /// The catalog as the file's structs (for `to_toml` and the admin API's edits).
    pub(super) fn to_raw(&self) -> RawCatalog {
        RawCatalog {
            plans: self.plans.iter().map(plan).collect(),
            customers: self.customers.iter().map(customer).collect(),
            accounts: self.accounts.iter().map(account).collect(),
        }
    }
}

fn amount(value: Decimal) -> Amount {
    Amount(value.to_string())
}

/// `None` for a zero written as `"0"`, which is what an absent key reads as; a zero with a
/// scale (`"0.00"`) is written, so it reads back with that scale.
fn unless_zero(value: Decimal) -> Option<Amount> {
    let text = value.to_string();
    (text != "0").then_some(Amount(text))
}

fn plan(plan: &Plan) -> RawPlan {
    RawPlan {
        id: plan.id.clone(),
        name: (plan.name != plan.id).then(|| plan.name.clone()),
        currency: plan.currency.code.to_owned(),
        utc_offset_minutes: plan.utc_offset_minutes,
        vat_rate: unless_zero(plan.vat_rate),
        services: plan.services.iter().map(service).collect(),
        bundles: plan.bundles.iter().map(bundle).collect(),
    }
}

fn service(service: &Service) -> RawService {
    let rate = &service.rate;
    let (final_unit_action, redirect_address, filter_id) = match &service.final_unit_action {
        FinalUnitAction::Terminate => (RawFinalUnitAction::Terminate, None, None),
        FinalUnitAction::Redirect { address } => (RawFinalUnitAction::Redirect, Some(address.clone()), None),
        FinalUnitAction::Restrict { filter_id } => {
            (RawFinalUnitAction::Restrict, None, Some(filter_id.clone()))
        }
    };
    RawService {
        name: service.name.clone(),
        contexts: service.contexts.clone(),
        rating_groups: service.rating_groups.clone(),
        service_ids: service.service_ids.clone(),
        unit: match rate.unit {
            UnitKind::Time => RawUnit::Time,
            UnitKind::Octets => RawUnit::Octets,
            UnitKind::Events => RawUnit::Events,
        },
        price: amount(rate.price),
        per: rate.per,
        increment: rate.increment,
        first_increment: (rate.first_increment != rate.increment).then_some(rate.first_increment),
        connect_fee: unless_zero(rate.connect_fee),
        min_charge: rate.min_charge.map(amount),
        max_charge: rate.max_charge.map(amount),
        quota: service.quota,
        validity_time: service.validity_time_s,
        final_unit_action,
        redirect_address,
        filter_id,
        restriction_filter_rules: service.restriction_filter_rules.clone(),
        threshold_percent: service.threshold_percent,
        quota_holding_time: service.quota_holding_time_s,
        bands: rate.bands.iter().map(band).collect(),
    }
}

fn band(band: &Band) -> RawBand {
    let days = (band.days != ALL_DAYS).then(|| {
        DAYS.iter()
            .enumerate()
            .filter(|(i, _)| band.days & (1 << i) != 0)
            .map(|(_, d)| (*d).to_owned())
            .collect()
    });
    RawBand {
        days,
        from: time_of_day(band.from_minute),
        to: time_of_day(band.to_minute),
        price: amount(band.price),
    }
}

/// Minutes after midnight → "HH:MM" (1440 → "24:00").
fn time_of_day(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn bundle(bundle: &BundleSpec) -> RawBundle {
    RawBundle {
        name: bundle.name.clone(),
        service: bundle.service.clone(),
        units: bundle.units,
        valid_days: bundle.valid_days,
    }
}

pub(super) fn customer(customer: &Customer) -> RawCustomer {
    let overrides = &customer.overrides;
    RawCustomer {
        id: customer.id.clone(),
        name: customer.name.clone(),
        email: customer.email.clone(),
        address: customer.address.clone(),
        plan: customer.plan.clone(),
        overrides: RawOverrides {
            discount_percent: overrides.discount_percent.map(amount),
            services: overrides
                .services
                .iter()
                .map(|o| RawServiceOverride {
                    name: o.name.clone(),
                    price: o.price.map(amount),
                    connect_fee: o.connect_fee.map(amount),
                    quota: o.quota,
                })
                .collect(),
            bundles: overrides.bundles.iter().map(bundle).collect(),
        },
    }
}

pub(super) fn account(account: &AccountSpec) -> RawAccount {
    let (card, iban, mandate) = match &account.payment {
        None => (None, None, None),
        Some(PaymentMethod::Card(card)) => (Some(card.token.clone()), None, None),
        Some(PaymentMethod::SepaDebit(sepa)) => {
            (None, Some(sepa.iban.as_str().to_owned()), Some(sepa.mandate.clone()))
        }
    };
    RawAccount {
        customer: account.customer.clone(),
        subscription_ids: account.subscription_ids.iter().map(ToString::to_string).collect(),
        funding: match account.funding {
            Funding::Prepaid => RawFunding::Prepaid,
            Funding::OnFile => RawFunding::OnFile,
        },
        balance: unless_zero(account.balance),
        credit_limit: unless_zero(account.credit_limit),
        status: match account.status {
            AccountStatus::Active => RawStatus::Active,
            AccountStatus::Barred => RawStatus::Barred,
        },
        closed: account.closed,
        card,
        iban,
        mandate,
        gateway_customer: account.gateway.customer.as_ref().map(|c| c.0.clone()),
        payment_method_id: account.gateway.payment_method.as_ref().map(|p| p.0.clone()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;
    use crate::catalog::SubscriptionId;

    /// `from_toml(to_toml(c)) == c`, by `PartialEq` and by `Debug` (which also sees a decimal's
    /// scale: `Decimal` compares `50.00 == 50`), and writing the result again gives the same
    /// bytes. Returns the text.
    pub(in crate::catalog) fn assert_round_trips(what: &str, catalog: &Catalog) -> String {
        let text = catalog.to_toml();
        let again = Catalog::from_toml(what, &text).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
        assert_eq!(&again, catalog, "{what}: read back\n{text}");
        assert_eq!(format!("{again:?}"), format!("{catalog:?}"), "{what}: read back (Debug)\n{text}");
        assert_eq!(again.to_toml(), text, "{what}: written again");
        assert_eq!(catalog.to_toml(), text, "{what}: written twice");
        text
    }

    /// Loads `text` and checks that its catalog round-trips.
    fn round_trips(what: &str, text: &str) -> String {
        let catalog = Catalog::from_toml(what, text).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_round_trips(what, &catalog)
    }

    #[test]
    fn the_demo_catalog_round_trips() {
        assert_round_trips("demo", &Catalog::demo());
        let text = round_trips("demo.toml", Catalog::demo_toml());
        assert!(text.contains("card = \"4242424242424242\""), "the card number in full:\n{text}");
        assert!(text.contains("status = \"barred\""), "{text}");
    }

    /// The catalogs in tests/scenarios/*.txt (`catalog {` … `}`) and the `r#"…"#` catalog
    /// constants of tests/*.rs and benches/*.rs. Those that are templates (`{plan}`) or meant to
    /// be refused do not load and are skipped; the count keeps the scan honest.
    #[test]
    fn the_repositorys_catalogs_round_trip() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts = Vec::new();
        for dir in ["tests/scenarios", "tests", "benches", "examples", "deploy"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
            let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            paths.sort();
            for path in paths {
                let name = path.display().to_string();
                let Ok(file) = std::fs::read_to_string(&path) else { continue };
                if name.ends_with(".txt") {
                    let mut lines = file.lines();
                    while let Some(line) = lines.next() {
                        if line.trim_start().starts_with("catalog {") {
                            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "}").collect();
                            texts.push((name.clone(), block.join("\n")));
                        }
                    }
                } else if name.ends_with(".rs") {
                    for piece in file.split("r#\"").skip(1) {
                        let literal = piece.split("\"#").next().unwrap_or("");
                        if literal.contains("[[plans]]") {
                            texts.push((name.clone(), literal.to_owned()));
                        }
                    }
                } else if name.ends_with(".toml") && file.contains("[[plans]]") {
                    texts.push((name.clone(), file));
                }
            }
        }
        let mut loaded = 0;
        for (name, text) in &texts {
            if Catalog::from_toml(name, text).is_ok() {
                round_trips(name, text);
                loaded += 1;
            }
        }
        // 12 scenarios, 6 test constants and 2 bench constants when this was written.
        assert!(20 <= loaded, "only {loaded} of {} catalogs found load", texts.len());
    }

    #[test]
    fn a_provisioned_load_catalog_round_trips() {
        use crate::tools::load::provision::{provision, ProvisionArgs};
        let dir = tempfile::tempdir().unwrap();
        let args = ProvisionArgs {
            subscribers: 20,
            out: dir.path().join("catalog.toml"),
            first_msisdn: crate::tools::load::FIRST_MSISDN_DEFAULT,
            balance: "1000000.00".into(),
        };
        provision(&args).unwrap();
        let catalog = Catalog::load(&args.out).unwrap();
        assert_eq!(catalog.accounts.len(), 20);
        assert_round_trips("provisioned", &catalog);
    }

    /// Every key the format has, each away from its default.
    const EVERYTHING: &str = r#"
[[plans]]
id = "full"
name = "Full Plan"
currency = "EUR"
utc_offset_minutes = -300
vat_rate = "0.190"

  [[plans.services]]
  name = "data"
  contexts = [32251, 32260]
  rating_groups = [10, 20]
  service_ids = [7]
  unit = "octets"
  price = "0.010000"
  per = 1048576
  increment = 1024
  first_increment = 4096
  connect_fee = "0.05"
  min_charge = "0.10"
  max_charge = "9.99"
  quota = 10485760
  validity_time = 600
  final_unit_action = "restrict"
  filter_id = "topup-only"
  restriction_filter_rules = ["permit out ip from any to 192.0.2.10", "deny in ip from any to any"]
  threshold_percent = 20
  quota_holding_time = 120

    [[plans.services.bands]]
    days = ["mon", "wed", "sun"]
    from = "00:00"
    to = "06:30"
    price = "0.005"

    [[plans.services.bands]]
    from = "22:00"
    to = "24:00"
    price = "0"

  [[plans.services]]
  name = "web"
  unit = "octets"
  price = "1"
  quota = 1
  final_unit_action = "redirect"
  redirect_address = "http://topup.example.org/?a=1&b=\"x\""

  [[plans.services]]
  name = "voice"
  unit = "time"
  price = "0.05"
  per = 60
  connect_fee = "0.00"
  quota = 300

  [[plans.bundles]]
  name = "data-1gb"
  service = "data"
  units = 1073741824
  valid_days = 30

[[plans]]
id = "yen"
currency = "JPY"
vat_rate = "0"

  [[plans.services]]
  name = "sms"
  unit = "events"
  price = "3"
  quota = 1

[[customers]]
id = "c-1"
name = "Ünïcode Ñame \"quoted\""
email = "one@example.org"
address = "Line 1\nLine 2, 10115 Berlin, DE"
plan = "full"

  [customers.overrides]
  discount_percent = "12.5"

  [[customers.overrides.services]]
  name = "data"
  price = "0.008"
  connect_fee = "0"
  quota = 2048

  [[customers.overrides.services]]
  name = "voice"
  quota = 60

  [[customers.overrides.bundles]]
  name = "bonus"
  service = "voice"
  units = 600
  valid_days = 7

[[customers]]
id = "c-2"
name = "Two"
plan = "full"

  [customers.overrides]
  discount_percent = "0"

[[customers]]
id = "c-3"
name = "Three"
plan = "yen"

[[accounts]]
customer = "c-1"
subscription_ids = ["e164:491700000001", "imsi:262010000000001", "sip:one@ims.example.org", "sips:one@ims.example.org", "nai:one@example.org", "private:x#1"]
funding = "on_file"
balance = "-12.34"
credit_limit = "100.00"
card = "5555 5555 5555 4444"
gateway_customer = "cus_A1"
payment_method_id = "pm_1Qx"

[[accounts]]
customer = "c-2"
subscription_ids = ["e164:491700000002"]
funding = "on_file"
credit_limit = "50"
status = "barred"
iban = "de89 3704 0044 0532 0130 00"
mandate = "  M-2024-001 "
payment_method_id = "pm_sepa"

[[accounts]]
customer = "c-2"
subscription_ids = ["e164:491700000003"]
funding = "on_file"
iban = "GB82WEST12345698765432"
mandate = "M-2"

[[accounts]]
customer = "c-3"
subscription_ids = ["e164:8190000001"]
funding = "prepaid"
balance = "1000"
status = "active"
"#;

    #[test]
    fn every_field_round_trips() {
        let text = round_trips("everything.toml", EVERYTHING);
        let c = Catalog::from_toml("everything.toml", EVERYTHING).unwrap();
        // Everything arrived and is written back, in its own form.
        assert_eq!(c.plans[0].services[0].rate.bands[0].days, 0b100_0101);
        assert_eq!(c.plans[0].services[0].rate.bands[1].days, ALL_DAYS);
        assert!(matches!(c.accounts[1].payment, Some(PaymentMethod::SepaDebit(_))));
        assert!(c.accounts[0].gateway.customer.is_some() && c.accounts[1].gateway.customer.is_none());
        for written in [
            "vat_rate = \"0.190\"",
            "price = \"0.010000\"",
            "connect_fee = \"0.00\"",
            "utc_offset_minutes = -300",
            "days = [\"mon\", \"wed\", \"sun\"]",
            "to = \"24:00\"",
            "first_increment = 4096",
            "validity_time = 600",
            "final_unit_action = \"redirect\"",
            "final_unit_action = \"restrict\"",
            "threshold_percent = 20",
            "quota_holding_time = 120",
            "discount_percent = \"12.5\"",
            "discount_percent = \"0\"",
            "balance = \"-12.34\"",
            "credit_limit = \"100.00\"",
            "card = \"5555555555554444\"",
            "iban = \"DE89370400440532013000\"",
            "mandate = \"M-2024-001\"",
            "gateway_customer = \"cus_A1\"",
            "payment_method_id = \"pm_sepa\"",
            "status = \"barred\"",
            "\"sips:one@ims.example.org\"",
            "\"private:x#1\"",
        ] {
            assert!(text.contains(written), "{written}:\n{text}");
        }
        // Defaults are left out, as a person would write the file.
        for default in ["name = \"yen\"", "status = \"active\"", "vat_rate = \"0\"\n", "per = 1\n"] {
            assert!(!text.contains(default), "{default}:\n{text}");
        }
        // No floats anywhere: every amount is a string.
        assert!(!text.contains("= 0."), "{text}");
    }

    #[test]
    fn an_empty_catalog_round_trips() {
        let empty = Catalog { plans: vec![], customers: vec![], accounts: vec![] };
        assert_eq!(assert_round_trips("empty", &empty), "");
    }

    #[test]
    fn a_catalog_changed_in_code_round_trips() {
        // What the admin API will do: add an account, then write the catalog as a new version.
        let mut c = Catalog::demo();
        let mut account = c.accounts[0].clone();
        account.subscription_ids = vec![SubscriptionId::parse("e164:491700000099").unwrap()];
        account.balance = Decimal::from_str("12.30").unwrap();
        c.accounts.push(account);
        c.validate("changed").unwrap();
        let text = assert_round_trips("changed", &c);
        assert!(text.ends_with("balance = \"12.30\"\n"), "{text}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Prices with any scale, any day mask, band times, balances and discounts.
        #[test]
        fn generated_catalogs_round_trip(
            price in (0i64..1_000_000_000, 0u32..=9),
            band_price in (0i64..1_000_000, 0u32..=9),
            days in 1u8..=0x7f,
            from in 0u16..1440,
            length in 1u16..=1440,
            offset in -720i32..=840,
            vat in (0i64..=100, 0u32..=2),
            discount in proptest::option::of((0i64..=10_000, 0u32..=2)),
            balance in (-100_000i64..1_000_000, 0u32..=2),
            barred in any::<bool>(),
            threshold in proptest::option::of(1u8..=99),
        ) {
            let mut c = Catalog::demo();
            let plan = &mut c.plans[0];
            plan.utc_offset_minutes = offset;
            plan.vat_rate = Decimal::new(vat.0, vat.1).min(Decimal::ONE);
            let data = &mut plan.services[0];
            data.rate.price = Decimal::new(price.0, price.1);
            data.threshold_percent = threshold;
            data.rate.bands[0] = Band {
                days,
                from_minute: from,
                to_minute: (from + length).min(1440),
                price: Decimal::new(band_price.0, band_price.1),
            };
            c.customers[1].overrides.discount_percent =
                discount.map(|(m, s)| Decimal::new(m, s).min(Decimal::ONE_HUNDRED));
            // Bob is on_file with a credit limit of 100.00.
            let bob = &mut c.accounts[1];
            bob.balance = Decimal::new(balance.0, balance.1).max(-bob.credit_limit);
            bob.status = if barred { AccountStatus::Barred } else { AccountStatus::Active };
            prop_assume!(c.validate("generated").is_ok());
            assert_round_trips("generated", &c);
        }
    }
}
