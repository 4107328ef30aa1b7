use std::str::FromStr;
use std::sync::Arc;

use rust_decimal::Decimal;

use super::*;
use crate::rating::{affordable, charge, CumulativeUsage, MoneyMinor, RateField};

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// A small valid catalog; tests break one thing in it at a time.
const BASE: &str = r#"
[[plans]]
id = "p-zero"
currency = "EUR"

  [[plans.services]]
  name = "data"
  unit = "octets"
  price = "0.02"
  per = 1048576
  quota = 1048576

[[plans]]
id = "mobile-basic"
currency = "EUR"

  [[plans.services]]
  name = "data"
  contexts = [32251]
  rating_groups = [10, 20]
  unit = "octets"
  price = "0.01"
  per = 1048576
  increment = 1024
  quota = 10485760

    [[plans.services.bands]]
    days = ["sat", "sun"]
    from = "00:00"
    to = "24:00"
    price = "0.005"

  [[plans.services]]
  name = "sms"
  contexts = [32274]
  unit = "events"
  price = "0.09"
  quota = 1

  [[plans.services]]
  name = "voice"
  contexts = [32260]
  unit = "time"
  price = "0.05"
  per = 60
  first_increment = 60
  connect_fee = "0.10"
  quota = 300

  [[plans.services]]
  name = "data-any"
  contexts = [32251]
  unit = "octets"
  price = "0.03"
  per = 1048576
  quota = 1048576

  [[plans.bundles]]
  name = "data-1gb"
  service = "data"
  units = 1073741824
  valid_days = 30

[[customers]]
id = "c-1"
name = "One"
plan = "mobile-basic"

[[customers]]
id = "c-2"
name = "Two"
email = "two@example.org"
plan = "mobile-basic"

  [customers.overrides]
  discount_percent = "10"

  [[customers.overrides.services]]
  name = "voice"
  price = "0.03"

  [[customers.overrides.bundles]]
  name = "bonus-sms"
  service = "sms"
  units = 50
  valid_days = 30

[[accounts]]
customer = "c-1"
subscription_ids = ["e164:491700000001", "imsi:262010000000001"]
funding = "prepaid"
balance = "50.00"

[[accounts]]
customer = "c-2"
subscription_ids = ["e164:491700000002"]
funding = "on_file"
credit_limit = "100"

[[accounts]]
customer = "c-1"
subscription_ids = ["sip:one@ims.example.org"]
funding = "prepaid"
"#;

fn base() -> Catalog {
    Catalog::from_toml("catalog.toml", BASE).unwrap()
}

/// The error message after replacing the first `old` in `BASE` with `new`.
fn error_after(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "BASE has no {old:?}");
    let text = BASE.replacen(old, new, 1);
    Catalog::from_toml("catalog.toml", &text).expect_err("the change must be refused").to_string()
}

fn problem_after(old: &str, new: &str) -> Problem {
    let text = BASE.replacen(old, new, 1);
    match Catalog::from_toml("catalog.toml", &text) {
        Err(CatalogError::Invalid { problem, .. }) => problem,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn base_catalog_loads() {
    let c = base();
    assert_eq!(c.plans.len(), 2);
    assert_eq!(c.plans[1].name, "mobile-basic", "the name defaults to the id");
    assert_eq!(c.plans[1].services[0].rate.bands[0].days, 0b110_0000);
    assert_eq!(c.plans[1].services[2].rate.first_increment, 60);
    assert_eq!(c.plans[1].services[2].rate.increment, 1, "default");
    assert_eq!(c.plans[1].services[0].validity_time_s, 3600, "default");
    assert_eq!(c.plans[1].services[0].final_unit_action, FinalUnitAction::Terminate, "default");
    assert_eq!(c.accounts[1].balance, Decimal::ZERO, "default");
    assert_eq!(c.accounts[1].status, AccountStatus::Active, "default");
    assert_eq!(c.accounts[2].subscription_ids[0].kind, SubscriptionKind::SipUri);
}

#[test]
fn negative_price_names_plan_and_service() {
    assert_eq!(
        error_after("price = \"0.05\"", "price = \"-1\""),
        r#"catalog.toml: plans[1] "mobile-basic" services[2] "voice": price "-1" must be ≥ 0"#
    );
    assert_eq!(
        problem_after("price = \"0.05\"", "price = \"-1\""),
        Problem::Rate(RateError::Negative { field: RateField::Price, value: d("-1") })
    );
}

#[test]
fn unknown_references() {
    assert_eq!(
        error_after(
            "customer = \"c-1\"\nsubscription_ids = [\"sip",
            "customer = \"c-9\"\nsubscription_ids = [\"sip"
        ),
        r#"catalog.toml: accounts[2]: unknown customer "c-9""#
    );
    assert_eq!(
        error_after("name = \"One\"\nplan = \"mobile-basic\"", "name = \"One\"\nplan = \"mobile-pro\""),
        r#"catalog.toml: customers[0] "c-1": unknown plan "mobile-pro""#
    );
    assert_eq!(
        error_after("service = \"data\"", "service = \"video\""),
        r#"catalog.toml: plans[1] "mobile-basic" bundles[0] "data-1gb": unknown service "video" (plan "mobile-basic" has no such service)"#
    );
    assert_eq!(
        error_after("name = \"voice\"\n  price = \"0.03\"", "name = \"video\"\n  price = \"0.03\""),
        r#"catalog.toml: customers[1] "c-2" overrides.services[0] "video": unknown service "video" (plan "mobile-basic" has no such service)"#
    );
    assert_eq!(
        error_after("service = \"sms\"", "service = \"mms\""),
        r#"catalog.toml: customers[1] "c-2" overrides.bundles[0] "bonus-sms": unknown service "mms" (plan "mobile-basic" has no such service)"#
    );
}

#[test]
fn duplicates() {
    assert_eq!(
        error_after("id = \"p-zero\"", "id = \"mobile-basic\""),
        r#"catalog.toml: plans[1] "mobile-basic": duplicate plan id "mobile-basic" (first at plans[0])"#
    );
    assert_eq!(
        error_after("id = \"c-2\"", "id = \"c-1\""),
        r#"catalog.toml: customers[1] "c-1": duplicate customer id "c-1" (first at customers[0])"#
    );
    assert_eq!(
        error_after("name = \"sms\"", "name = \"data\""),
        r#"catalog.toml: plans[1] "mobile-basic" services[1] "data": duplicate service name "data" (first at services[0])"#
    );
    assert_eq!(
        error_after("name = \"bonus-sms\"", "name = \"data-1gb\""),
        r#"catalog.toml: customers[1] "c-2" overrides.bundles[0] "data-1gb": duplicate bundle name "data-1gb" (first at plan "mobile-basic" bundles[0])"#
    );
    assert_eq!(
        error_after("[\"e164:491700000002\"]", "[\"e164:491700000002\", \"e164:491700000002\"]"),
        r#"catalog.toml: accounts[1]: duplicate subscription id "e164:491700000002" (first at accounts[1])"#
    );
}

#[test]
fn a_subscription_id_in_two_accounts() {
    assert_eq!(
        error_after("[\"sip:one@ims.example.org\"]", "[\"imsi:262010000000001\"]"),
        r#"catalog.toml: accounts[2]: subscription id "imsi:262010000000001" is already on accounts[0]"#
    );
}

#[test]
fn bands() {
    let band = "days = [\"sat\", \"sun\"]\n    from = \"00:00\"\n    to = \"24:00\"\n    price = \"0.005\"";
    let second = |text: &str| format!("{band}\n    [[plans.services.bands]]\n    {text}");
    assert_eq!(
        error_after(
            band,
            &second("days = [\"sun\"]\n    from = \"23:00\"\n    to = \"23:30\"\n    price = \"0\"")
        ),
        r#"catalog.toml: plans[1] "mobile-basic" services[0] "data": bands[1] overlaps bands[0] (same day and time)"#
    );
    // The same hours on other days do not overlap.
    let text = BASE.replacen(
        band,
        &second("days = [\"mon\"]\n    from = \"00:00\"\n    to = \"24:00\"\n    price = \"0\""),
        1,
    );
    Catalog::from_toml("catalog.toml", &text).unwrap();
    assert_eq!(
        error_after("from = \"00:00\"\n    to = \"24:00\"", "from = \"10:00\"\n    to = \"09:00\""),
        r#"catalog.toml: plans[1] "mobile-basic" services[0] "data": bands[0]: from 10:00 must be before to 09:00 (at most 24:00)"#
    );
    assert_eq!(
        error_after("from = \"00:00\"\n    to = \"24:00\"", "from = \"10:00\"\n    to = \"10:00\""),
        r#"catalog.toml: plans[1] "mobile-basic" services[0] "data": bands[0]: from 10:00 must be before to 10:00 (at most 24:00)"#
    );
    assert_eq!(
        error_after("to = \"24:00\"", "to = \"24:30\""),
        r#"catalog.toml: plans[1] "mobile-basic" services[0] "data" bands[0]: to "24:30" is not a time HH:MM from 00:00 to 24:00"#
    );
    assert_eq!(
        error_after("[\"sat\", \"sun\"]", "[\"sat\", \"sunday\"]"),
        r#"catalog.toml: plans[1] "mobile-basic" services[0] "data" bands[0]: "sunday" is not a day (mon, tue, wed, thu, fri, sat, sun)"#
    );
    assert_eq!(
        error_after("[\"sat\", \"sun\"]", "[]"),
        r#"catalog.toml: plans[1] "mobile-basic" services[0] "data" bands[0]: days must not be empty"#
    );
    let five = format!("{band}{}", format!("\n    [[plans.services.bands]]\n    {band}").repeat(4));
    assert!(error_after(band, &five).ends_with("5 bands; at most 4 are allowed"));
}

#[test]
fn increments() {
    assert_eq!(
        error_after("first_increment = 60", "first_increment = 0"),
        r#"catalog.toml: plans[1] "mobile-basic" services[2] "voice": first_increment 0 must be ≥ increment 1"#
    );
    assert_eq!(
        error_after("per = 60\n  first_increment = 60", "per = 60\n  increment = 60\n  first_increment = 30"),
        r#"catalog.toml: plans[1] "mobile-basic" services[2] "voice": first_increment 30 must be ≥ increment 60"#
    );
    assert_eq!(
        error_after("increment = 1024", "increment = 0"),
        r#"catalog.toml: plans[1] "mobile-basic" services[0] "data": increment must be ≥ 1"#
    );
    assert_eq!(
        error_after("per = 60", "per = 0"),
        r#"catalog.toml: plans[1] "mobile-basic" services[2] "voice": per must be ≥ 1"#
    );
    assert_eq!(
        error_after("quota = 300", "quota = 0"),
        r#"catalog.toml: plans[1] "mobile-basic" services[2] "voice": quota must be ≥ 1"#
    );
}

#[test]
fn money_values() {
    assert_eq!(
        error_after("currency = \"EUR\"", "currency = \"EURO\""),
        r#"catalog.toml: plans[0] "p-zero": unknown currency "EURO" (an ISO 4217 code such as "EUR")"#
    );
    assert_eq!(
        error_after("price = \"0.09\"", "price = \"9 cents\""),
        r#"catalog.toml: plans[1] "mobile-basic" services[1] "sms": price "9 cents" is not a decimal number (write e.g. "0.01")"#
    );
    assert_eq!(
        error_after("price = \"0.09\"", "price = \"0.0000000001\""),
        r#"catalog.toml: plans[1] "mobile-basic" services[1] "sms": price "0.0000000001" has more than 9 decimal places"#
    );
    assert_eq!(
        error_after("price = \"0.09\"", "price = \"0.09\"\n  min_charge = \"1\"\n  max_charge = \"0.5\""),
        r#"catalog.toml: plans[1] "mobile-basic" services[1] "sms": min_charge "1" is above max_charge "0.5""#
    );
    // Integers are fine; floats are refused by the parser, with the line.
    let text = BASE.replacen("price = \"0.09\"", "price = 1", 1);
    assert_eq!(Catalog::from_toml("catalog.toml", &text).unwrap().plans[1].services[1].rate.price, d("1"));
    let e = error_after("price = \"0.09\"", "price = 0.09");
    assert!(e.starts_with("catalog.toml: TOML parse error at line"), "{e}");
    assert!(e.contains("0.09 is a float; write money and rates as decimal strings"), "{e}");
    assert_eq!(
        error_after("balance = \"50.00\"", "balance = \"50.001\""),
        r#"catalog.toml: accounts[0]: balance "50.001" has more decimal places than EUR has (2)"#
    );
    assert_eq!(
        error_after("balance = \"50.00\"", "balance = \"50.00\"\ncredit_limit = \"10\""),
        r#"catalog.toml: accounts[0]: credit_limit "10" applies to on_file accounts only (this one is prepaid)"#
    );
    assert_eq!(
        error_after("credit_limit = \"100\"", "credit_limit = \"100\"\nbalance = \"-100.01\""),
        r#"catalog.toml: accounts[1]: balance "-100.01" is below -credit_limit (credit_limit "100")"#
    );
    assert_eq!(
        error_after("credit_limit = \"100\"", "credit_limit = \"-1\""),
        r#"catalog.toml: accounts[1]: credit_limit "-1" must be ≥ 0"#
    );
    assert_eq!(
        error_after("discount_percent = \"10\"", "discount_percent = \"110\""),
        r#"catalog.toml: customers[1] "c-2" overrides: discount_percent "110" must be from 0 to 100"#
    );
    assert_eq!(
        error_after("name = \"voice\"\n  price = \"0.03\"", "name = \"voice\"\n  price = \"-0.03\""),
        r#"catalog.toml: customers[1] "c-2" overrides.services[0] "voice": price "-0.03" must be ≥ 0"#
    );
    assert_eq!(
        error_after("currency = \"EUR\"", "currency = \"EUR\"\nvat_rate = \"19\""),
        r#"catalog.toml: plans[0] "p-zero": vat_rate "19" must be a fraction from 0 to 1 ("0.19" for 19 %)"#
    );
}

#[test]
fn final_unit_actions() {
    let quota = "quota = 1048576\n\n[[plans]]";
    assert_eq!(
        error_after(quota, "quota = 1048576\n  final_unit_action = \"redirect\"\n\n[[plans]]"),
        r#"catalog.toml: plans[0] "p-zero" services[0] "data": redirect_address is required when final_unit_action is "redirect""#
    );
    assert_eq!(
        error_after(quota, "quota = 1048576\n  final_unit_action = \"restrict\"\n\n[[plans]]"),
        r#"catalog.toml: plans[0] "p-zero" services[0] "data": filter_id is required when final_unit_action is "restrict""#
    );
    assert_eq!(
        error_after(quota, "quota = 1048576\n  redirect_address = \"http://x/\"\n\n[[plans]]"),
        r#"catalog.toml: plans[0] "p-zero" services[0] "data": redirect_address is only used with final_unit_action "redirect", not "terminate""#
    );
    let text = BASE.replacen(
        quota,
        "quota = 1048576\n  final_unit_action = \"restrict\"\n  filter_id = \"topup-only\"\n\n[[plans]]",
        1,
    );
    let c = Catalog::from_toml("catalog.toml", &text).unwrap();
    assert_eq!(
        c.plans[0].services[0].final_unit_action,
        FinalUnitAction::Restrict { filter_id: "topup-only".into() }
    );
    let e = error_after(quota, "quota = 1048576\n  final_unit_action = \"suspend\"\n\n[[plans]]");
    assert!(e.contains("unknown variant `suspend`"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    for (old, new, key) in [
        ("[[plans]]\nid = \"p-zero\"", "colour = 1\n[[plans]]\nid = \"p-zero\"", "colour"),
        ("currency = \"EUR\"", "currency = \"EUR\"\ncurency = \"EUR\"", "curency"),
        ("quota = 300", "quota = 300\n  qouta = 1", "qouta"),
        ("price = \"0.005\"", "price = \"0.005\"\n    day = \"sat\"", "day"),
        ("discount_percent = \"10\"", "discount = \"10\"", "discount"),
        ("funding = \"on_file\"", "funding = \"on_file\"\nlimit = \"5\"", "limit"),
        ("valid_days = 30\n\n[[customers]]", "valid_days = 30\n  expires = 1\n\n[[customers]]", "expires"),
    ] {
        let e = error_after(old, new);
        assert!(e.starts_with("catalog.toml: TOML parse error at line"), "{e}");
        assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
    }
}

#[test]
fn subscription_ids() {
    assert_eq!(
        error_after("\"e164:491700000002\"", "\"e164:+491700000002\""),
        r#"catalog.toml: accounts[1]: subscription id "e164:+491700000002": an E.164 number is 1 to 15 digits, without '+'"#
    );
    assert!(error_after("\"e164:491700000002\"", "\"msisdn:491700000002\"")
        .ends_with("the kind must be e164, imsi, sip, nai or private"));
    assert!(error_after("\"e164:491700000002\"", "\"491700000002\"")
        .ends_with("expected kind:value, e.g. e164:491700000001"));
    assert_eq!(
        error_after("[\"sip:one@ims.example.org\"]", "[]"),
        "catalog.toml: accounts[2]: subscription_ids must not be empty"
    );
    for text in
        ["e164:491700000001", "imsi:262010000000001", "sip:alice@ims.example.org", "nai:a@b.c", "private:x 1"]
    {
        match SubscriptionId::parse(text) {
            Ok(id) => assert_eq!(id.to_string(), text),
            Err(e) => assert_eq!((text, e), ("private:x 1", SubscriptionIdError::Whitespace)),
        }
    }
    let sip = SubscriptionId::parse("sip:alice@ims.example.org").unwrap();
    assert_eq!(sip.data, "sip:alice@ims.example.org", "Subscription-Id-Data carries the whole URI");
    assert_eq!(SubscriptionId::parse("imsi:12345"), Err(SubscriptionIdError::Imsi));
    assert_eq!(SubscriptionId::parse("sip:"), Err(SubscriptionIdError::Empty));
    assert_eq!(SubscriptionId::parse("e164:1234567890123456"), Err(SubscriptionIdError::E164));
}

#[test]
fn customers() {
    assert_eq!(
        error_after("email = \"two@example.org\"", "email = \"Two Example\""),
        r#"catalog.toml: customers[1] "c-2": email "Two Example" does not look like an address"#
    );
    assert_eq!(
        error_after("name = \"One\"", "name = \"\""),
        r#"catalog.toml: customers[0] "c-1": name must not be empty"#
    );
    assert_eq!(
        error_after("id = \"c-1\"", "id = \"\""),
        r#"catalog.toml: customers[0] "": id must not be empty"#
    );
}

#[test]
fn read_and_parse_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, BASE).unwrap();
    assert_eq!(Catalog::load(&path).unwrap().customers.len(), 2);
    let missing = dir.path().join("nope.toml");
    let e = Catalog::load(&missing).unwrap_err();
    assert!(matches!(e, CatalogError::Read { .. }));
    assert!(e.to_string().starts_with(&format!("{}: cannot read:", missing.display())));
    assert!(matches!(Catalog::from_toml("x", "[[plans]\n"), Err(CatalogError::Parse { .. })));
    // An empty catalog is valid (nothing to sell, nobody to sell to).
    Catalog::from_toml("x", "").unwrap();
}

#[test]
fn validate_checks_catalogs_built_in_code() {
    let mut c = base();
    c.validate("code").unwrap();
    c.accounts[0].customer = "nobody".into();
    assert_eq!(
        c.validate("code").unwrap_err().to_string(),
        r#"code: accounts[0]: unknown customer "nobody""#
    );
    let mut c = base();
    c.plans[1].services[0].final_unit_action = FinalUnitAction::Redirect { address: " ".into() };
    assert!(matches!(
        c.validate("code"),
        Err(CatalogError::Invalid {
            problem: Problem::MissingFinalUnitDetail { field: "redirect_address", .. },
            ..
        })
    ));
}

#[test]
fn packages_are_shared_without_overrides() {
    let mut c = base();
    c.customers.push(Customer {
        id: "c-3".into(),
        name: "Three".into(),
        email: String::new(),
        address: String::new(),
        plan: "mobile-basic".into(),
        overrides: Overrides { discount_percent: Some(Decimal::ZERO), ..Overrides::default() },
    });
    c.validate("code").unwrap();
    let packages = c.packages();
    assert_eq!(packages.len(), 3);
    assert!(Arc::ptr_eq(&packages["c-1"], &packages["c-3"]), "no overrides (a 0 % discount is none): shared");
    assert!(!Arc::ptr_eq(&packages["c-1"], &packages["c-2"]));
    assert_eq!(packages["c-1"].plan_id, "mobile-basic");
    assert_eq!(packages["c-1"].bundles.len(), 1);
    let bundles: Vec<_> = packages["c-2"].bundles.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(bundles, ["data-1gb", "bonus-sms"], "plan and override bundles both apply");
}

#[test]
fn discount_math() {
    let packages = base().packages();
    let two = &packages["c-2"];
    let voice = &two.service("voice").unwrap().rate;
    // Override first (0.03), then 10 % off: 0.027; the connect fee 0.10 → 0.09.
    assert_eq!(voice.price, d("0.027"));
    assert_eq!(voice.connect_fee, d("0.09"));
    let data = &two.service("data").unwrap().rate;
    assert_eq!(data.price, d("0.009"));
    assert_eq!(data.bands[0].price, d("0.0045"));
    // The plan itself is untouched.
    assert_eq!(packages["c-1"].service("voice").unwrap().rate.price, d("0.05"));
    // 90 s of voice: 0.09 + 0.027 × 90/60 = 0.1305 → 0.14.
    let usage = CumulativeUsage::default().plus(0, 90);
    assert_eq!(charge(voice, &usage, two.currency), MoneyMinor(14));
    // Rounding toward +∞ at 6 places.
    assert_eq!(discounted(d("0.05"), d("10")), d("0.045"));
    assert_eq!(discounted(d("0.000015"), d("10")), d("0.000014"));
    assert_eq!(discounted(d("1"), d("33.3333333")), d("0.666667"));
    assert_eq!(discounted(d("0.10"), d("100")), d("0"));
    assert_eq!(discounted(d("2.00"), d("0")), d("2"));
    assert_eq!(discounted(d("2.00"), d("150")), d("0"), "clamped to 100 %");
    let with_limits = Rate { min_charge: Some(d("0.25")), max_charge: Some(d("1.005")), ..voice.clone() };
    let mut c = base();
    c.plans[1].services[2].rate = with_limits;
    let voice = c.packages()["c-2"].service("voice").unwrap().rate.clone();
    assert_eq!((voice.min_charge, voice.max_charge), (Some(d("0.225")), Some(d("0.9045"))));
}

#[test]
fn find_picks_the_first_matching_service() {
    let packages = base().packages();
    let p = &packages["c-1"];
    let name = |context, rg, sid| p.find(context, rg, sid).map(|s| s.name.as_str());
    assert_eq!(name(32251, Some(10), None), Some("data"));
    assert_eq!(name(32251, Some(20), Some(7)), Some("data"), "service_ids empty = any");
    assert_eq!(name(32251, Some(30), None), Some("data-any"), "rating group not listed: next service");
    assert_eq!(name(32251, None, None), Some("data-any"), "no Rating-Group: only services that take any");
    assert_eq!(name(32274, None, None), Some("sms"));
    assert_eq!(name(32260, Some(1), None), Some("voice"));
    assert_eq!(name(32276, None, None), None, "no service for VCS in this plan");
    let zero = &Catalog { customers: Vec::new(), accounts: Vec::new(), ..base() }.plans[0].package();
    assert_eq!(zero.find(1, None, None).map(|s| s.name.as_str()), Some("data"), "empty lists match anything");
}

#[test]
fn demo_catalog_loads_and_has_the_promised_subscribers() {
    let c = Catalog::demo();
    assert_eq!(c.plans.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["mobile-basic", "mobile-flex"]);
    let account = |id: &str| {
        let id = SubscriptionId::parse(id).unwrap();
        c.accounts.iter().find(|a| a.subscription_ids.contains(&id)).unwrap()
    };
    let alice = account("e164:491700000001");
    assert_eq!(alice.customer, "c-alice");
    assert!(std::ptr::eq(alice, account("imsi:262010000000001")));
    assert!(std::ptr::eq(alice, account("sip:alice@ims.example.org")));
    assert_eq!((alice.funding, alice.balance), (Funding::Prepaid, d("50.00")));
    let bob = account("e164:491700000002");
    assert_eq!((bob.funding, bob.credit_limit), (Funding::OnFile, d("100.00")));
    let carol = account("e164:491700000003");
    assert_eq!(
        (carol.funding, carol.balance, carol.status),
        (Funding::Prepaid, Decimal::ZERO, AccountStatus::Active)
    );
    assert_eq!(account("e164:491700000004").status, AccountStatus::Barred);
    let erin = account("e164:491700000005");
    assert_eq!(erin.balance, d("0.50"));

    let packages = c.packages();
    assert!(Arc::ptr_eq(&packages["c-carol"], &packages["c-dave"]));
    assert_eq!(packages["c-alice"].bundles[0].units, 1 << 30);
    assert_eq!(packages["c-bob"].service("voice").unwrap().rate.price, d("0.045"));

    let basic = &packages["c-carol"];
    assert_eq!(basic.currency, Currency::EUR);
    let data = basic.find(32251, Some(10), None).unwrap();
    assert_eq!((data.name.as_str(), data.quota, data.validity_time_s), ("data", 10 << 20, 3600));
    assert_eq!(data.rate.bands[0].price, d("0.005"));
    let voice = basic.find(32275, None, None).unwrap();
    assert_eq!((voice.rate.first_increment, voice.rate.connect_fee, voice.quota), (60, d("0.10"), 300));
    assert_eq!(basic.find(32274, None, None).unwrap().rate.price, d("0.09"));

    // Erin's 0.50 EUR buys 5 MiB of flex data, less than one 10 MiB quota: a final grant that
    // redirects to the top-up page.
    let flex = packages["c-erin"].find(32251, None, None).unwrap();
    let erin_money = MoneyMinor::from_decimal_up(erin.balance, packages["c-erin"].currency);
    let units =
        affordable(&flex.rate, &CumulativeUsage::default(), 0, erin_money, packages["c-erin"].currency);
    assert_eq!(units, 5 << 20);
    assert!(units < flex.quota);
    assert_eq!(
        flex.final_unit_action,
        FinalUnitAction::Redirect { address: "http://topup.example.org/".into() }
    );
}

#[test]
fn payment_methods_are_checked_and_name_the_field() {
    use crate::settlement::payment::PaymentMethod;
    let on_file = "credit_limit = \"100\"";
    let ok = BASE.replacen(on_file, "credit_limit = \"100\"\ncard = \"4242 4242 4242 4242\"", 1);
    let c = Catalog::from_toml("catalog.toml", &ok).unwrap();
    let card = c.accounts.iter().find_map(|a| a.payment.clone()).expect("the card");
    assert!(matches!(&card, PaymentMethod::Card(k) if k.last4 == "4242"), "{card:?}");
    let sepa = BASE.replacen(
        on_file,
        "credit_limit = \"100\"\niban = \"DE89 3704 0044 0532 0130 00\"\nmandate = \"M-1\"",
        1,
    );
    assert!(Catalog::from_toml("catalog.toml", &sepa).unwrap().accounts.iter().any(|a| a.payment.is_some()));
    let e = error_after(on_file, "credit_limit = \"100\"\ncard = \"4242424242424241\"");
    assert!(e.contains("accounts[1]: card: a card number"), "{e}");
    let e =
        error_after(on_file, "credit_limit = \"100\"\niban = \"DE00370400440532013000\"\nmandate = \"M\"");
    assert!(e.contains("accounts[1]: iban: an IBAN"), "{e}");
    let e = error_after(on_file, "credit_limit = \"100\"\niban = \"DE89370400440532013000\"");
    assert!(e.contains("accounts[1]: mandate is required with iban"), "{e}");
    let e = error_after(
        on_file,
        "credit_limit = \"100\"\ncard = \"4242424242424242\"\niban = \"DE89370400440532013000\"",
    );
    assert!(e.contains("accounts[1]: card and iban are two payment methods"), "{e}");
    let e = error_after("balance = \"50.00\"", "balance = \"50.00\"\ncard = \"4242424242424242\"");
    assert!(e.contains("accounts[0]: card is a payment method, for on_file accounts only"), "{e}");
}

#[test]
fn gateway_references_are_checked_and_name_the_field() {
    use crate::settlement::payment::{GatewayCustomer, GatewayRefs, PaymentMethodId};
    let on_file = "credit_limit = \"100\"";
    let card = "credit_limit = \"100\"\ncard = \"4242424242424242\"";
    let with = |keys: &str| format!("{card}\n{keys}");
    let ok =
        BASE.replacen(on_file, &with("gateway_customer = \"cus_A1\"\npayment_method_id = \"pm_1Qx\""), 1);
    let c = Catalog::from_toml("catalog.toml", &ok).unwrap();
    assert_eq!(
        c.accounts[1].gateway,
        GatewayRefs {
            customer: Some(GatewayCustomer("cus_A1".into())),
            payment_method: Some(PaymentMethodId("pm_1Qx".into())),
        }
    );
    // Each is optional (the sandbox needs neither), and absent means absent.
    let one = BASE.replacen(on_file, &with("payment_method_id = \"pm_1\""), 1);
    let c = Catalog::from_toml("catalog.toml", &one).unwrap();
    assert_eq!(c.accounts[1].gateway.customer, None);
    assert_eq!(Catalog::from_toml("catalog.toml", BASE).unwrap().accounts[1].gateway, GatewayRefs::default());
    // With an iban and mandate too.
    let sepa = "credit_limit = \"100\"\niban = \"DE89370400440532013000\"\nmandate = \"M-1\"\n\
                gateway_customer = \"cus_A1\"\npayment_method_id = \"pm_sepa\"";
    assert!(Catalog::from_toml("catalog.toml", &BASE.replacen(on_file, sepa, 1)).is_ok());

    let long = format!("cus_{}", "x".repeat(crate::limits::GATEWAY_REF_MAX_BYTES - 3));
    for field in ["gateway_customer", "payment_method_id"] {
        let e = error_after(on_file, &with(&format!("{field} = \"\"")));
        assert_eq!(e, format!("catalog.toml: accounts[1]: {field} must not be empty"));
        for bad in ["cus 1", "pm_\\t1", "pm_ü", "pm_\\u00a0", long.as_str()] {
            let e = error_after(on_file, &with(&format!("{field} = \"{bad}\"")));
            assert!(
                e.starts_with(&format!("catalog.toml: accounts[1]: {field} must be printable ASCII")),
                "{bad}: {e}"
            );
        }
        // Only with a saved method: not on an on_file account without one, not on a prepaid one.
        let e = error_after(on_file, &format!("{on_file}\n{field} = \"x_1\""));
        assert!(
            e.starts_with(&format!("catalog.toml: accounts[1]: {field} identifies a saved payment method")),
            "{e}"
        );
        let e = error_after("balance = \"50.00\"", &format!("balance = \"50.00\"\n{field} = \"x_1\""));
        assert!(e.contains(&format!("accounts[0]: {field} identifies")) && e.contains("on_file"), "{e}");
    }
    let longest = BASE.replacen(on_file, &with(&format!("gateway_customer = \"{}\"", &long[1..])), 1);
    assert!(Catalog::from_toml("catalog.toml", &longest).is_ok(), "{} bytes is the limit", long.len() - 1);
}

#[test]
fn an_existing_catalogs_digest_is_its_texts_and_unchanged() {
    // The data directory records `durable::catalog_digest` of the catalog's *text* (SipHash of
    // the bytes), not of the parsed catalog, so new optional account keys change no existing
    // catalog's digest. This pins BASE's digest as `main` computed it before
    // `gateway_customer`/`payment_method_id` existed.
    assert!(!BASE.contains("gateway_customer") && !BASE.contains("payment_method_id"));
    assert_eq!(crate::durable::catalog_digest(BASE), "b17ec69cd01df271a5f7526175002bb2");
}

#[test]
fn the_base_catalog_and_its_payment_variants_round_trip() {
    save::tests::assert_round_trips("base", &base());
    let on_file = "credit_limit = \"100\"";
    for keys in [
        "card = \"4242 4242 4242 4242\"\ngateway_customer = \"cus_A1\"\npayment_method_id = \"pm_1Qx\"",
        "iban = \"DE89 3704 0044 0532 0130 00\"\nmandate = \"M-1\"\ngateway_customer = \"cus_A1\"",
    ] {
        let text = BASE.replacen(on_file, &format!("{on_file}\n{keys}"), 1);
        let c = Catalog::from_toml("catalog.toml", &text).unwrap();
        assert!(c.accounts[1].payment.is_some());
        save::tests::assert_round_trips(keys, &c);
    }
}
