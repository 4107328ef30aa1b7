use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::Reader;
use rust_decimal::Decimal;

use super::*;
use crate::rating::UnitKind;
use crate::settlement::invoice::tests::{draft, line, sample};
use crate::settlement::invoice::{Invoice, PaymentMeans, PriceBasis, Vat, VatCategory};

/// Every element of a document by path (`Invoice/cac:TaxTotal/cbc:TaxAmount`), with its texts
/// in order, and every attribute as `path/@name`. Fails on XML that is not well-formed
/// (mismatched or unclosed tags, bad escapes).
fn paths(xml: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).expect("well-formed XML") {
            Event::Start(e) => {
                stack.push(String::from_utf8(e.name().as_ref().to_vec()).expect("UTF-8 name"));
                let path = stack.join("/");
                for a in e.attributes() {
                    let a = a.expect("well-formed attribute");
                    let key = format!("{path}/@{}", String::from_utf8_lossy(a.key.as_ref()));
                    let value = a.unescape_value().expect("valid escapes").into_owned();
                    out.entry(key).or_default().push(value);
                }
                out.entry(path).or_default();
            }
            Event::Text(t) => {
                let path = stack.join("/");
                out.entry(path).or_default().push(t.unescape().expect("valid escapes").into_owned());
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Empty(_) => panic!("UBL here has no empty elements"),
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    out
}

const SELLER: &str = "Invoice/cac:AccountingSupplierParty/cac:Party";
const BUYER: &str = "Invoice/cac:AccountingCustomerParty/cac:Party";
const TOTAL: &str = "Invoice/cac:LegalMonetaryTotal";
const SUBTOTAL: &str = "Invoice/cac:TaxTotal/cac:TaxSubtotal";
const LINE: &str = "Invoice/cac:InvoiceLine";

/// EN 16931-1 business terms that are mandatory (or mandatory in Peppol BIS Billing 3.0, or
/// mandatory for the VAT categories and payment means we write), with where UBL 2.1 carries
/// them. Covered: BT-1, 2, 3, 5, 9, 10, 23, 24, 27, 28, 30, 31, 34, 35, 37, 38, 40, 44, 46,
/// 49, 50, 52, 53, 55, 81, 83, 87, 106, 109, 110, 112, 113, 115, 116, 117, 118, 119, 126,
/// 129, 130, 131, 146, 149, 151, 152, 153 (BT-89/91 for SEPA and BT-114 in their own tests).
fn mandatory_terms() -> Vec<(String, String)> {
    let mut terms: Vec<(String, String)> = [
        ("BT-1 Invoice number", "Invoice/cbc:ID".to_owned()),
        ("BT-2 Invoice issue date", "Invoice/cbc:IssueDate".into()),
        ("BT-3 Invoice type code", "Invoice/cbc:InvoiceTypeCode".into()),
        ("BT-5 Invoice currency code", "Invoice/cbc:DocumentCurrencyCode".into()),
        ("BT-9 Payment due date (BR-CO-25)", "Invoice/cbc:DueDate".into()),
        ("BT-10 Buyer reference (PEPPOL-EN16931-R003)", "Invoice/cbc:BuyerReference".into()),
        ("BT-23 Business process type", "Invoice/cbc:ProfileID".into()),
        ("BT-24 Specification identifier", "Invoice/cbc:CustomizationID".into()),
        ("BT-81 Payment means type code", "Invoice/cac:PaymentMeans/cbc:PaymentMeansCode".into()),
        ("BT-83 Remittance information", "Invoice/cac:PaymentMeans/cbc:PaymentID".into()),
        (
            "BT-87 Payment card primary account number",
            "Invoice/cac:PaymentMeans/cac:CardAccount/cbc:PrimaryAccountNumberID".into(),
        ),
        ("BT-110 Invoice total VAT amount", "Invoice/cac:TaxTotal/cbc:TaxAmount".into()),
        ("BT-116 VAT category taxable amount", format!("{SUBTOTAL}/cbc:TaxableAmount")),
        ("BT-117 VAT category tax amount", format!("{SUBTOTAL}/cbc:TaxAmount")),
        ("BT-118 VAT category code", format!("{SUBTOTAL}/cac:TaxCategory/cbc:ID")),
        ("BT-119 VAT category rate", format!("{SUBTOTAL}/cac:TaxCategory/cbc:Percent")),
        ("BT-118 VAT scheme", format!("{SUBTOTAL}/cac:TaxCategory/cac:TaxScheme/cbc:ID")),
        ("BT-126 Invoice line identifier", format!("{LINE}/cbc:ID")),
        ("BT-129 Invoiced quantity", format!("{LINE}/cbc:InvoicedQuantity")),
        ("BT-130 Invoiced quantity unit of measure code", format!("{LINE}/cbc:InvoicedQuantity/@unitCode")),
        ("BT-131 Invoice line net amount", format!("{LINE}/cbc:LineExtensionAmount")),
        ("BT-146 Item net price", format!("{LINE}/cac:Price/cbc:PriceAmount")),
        ("BT-149 Item price base quantity", format!("{LINE}/cac:Price/cbc:BaseQuantity")),
        (
            "BT-151 Invoiced item VAT category code",
            format!("{LINE}/cac:Item/cac:ClassifiedTaxCategory/cbc:ID"),
        ),
        ("BT-152 Invoiced item VAT rate", format!("{LINE}/cac:Item/cac:ClassifiedTaxCategory/cbc:Percent")),
        ("BT-153 Item name", format!("{LINE}/cac:Item/cbc:Name")),
        ("BT-106 Sum of invoice line net amount", format!("{TOTAL}/cbc:LineExtensionAmount")),
        ("BT-109 Invoice total amount without VAT", format!("{TOTAL}/cbc:TaxExclusiveAmount")),
        ("BT-112 Invoice total amount with VAT", format!("{TOTAL}/cbc:TaxInclusiveAmount")),
        ("BT-113 Paid amount", format!("{TOTAL}/cbc:PrepaidAmount")),
        ("BT-115 Amount due for payment", format!("{TOTAL}/cbc:PayableAmount")),
    ]
    .into_iter()
    .map(|(term, path)| (term.to_owned(), path))
    .collect();
    for (party, who) in [(SELLER, "Seller"), (BUYER, "Buyer")] {
        let (name, endpoint, street, city, post, country) = if who == "Seller" {
            ("BT-27", "BT-34", "BT-35", "BT-37", "BT-38", "BT-40")
        } else {
            ("BT-44", "BT-49", "BT-50", "BT-52", "BT-53", "BT-55")
        };
        let term = |bt: &str, what: &str| format!("{bt} {who} {what}");
        terms.push((term(name, "name"), format!("{party}/cac:PartyLegalEntity/cbc:RegistrationName")));
        terms.push((term(endpoint, "electronic address"), format!("{party}/cbc:EndpointID")));
        terms
            .push((term(endpoint, "electronic address scheme"), format!("{party}/cbc:EndpointID/@schemeID")));
        terms.push((term(street, "address line 1"), format!("{party}/cac:PostalAddress/cbc:StreetName")));
        terms.push((term(city, "city"), format!("{party}/cac:PostalAddress/cbc:CityName")));
        terms.push((term(post, "post code"), format!("{party}/cac:PostalAddress/cbc:PostalZone")));
        terms.push((
            term(country, "country code"),
            format!("{party}/cac:PostalAddress/cac:Country/cbc:IdentificationCode"),
        ));
    }
    for (term, path) in [
        ("BT-28 Seller trading name", format!("{SELLER}/cac:PartyName/cbc:Name")),
        (
            "BT-30 Seller legal registration identifier",
            format!("{SELLER}/cac:PartyLegalEntity/cbc:CompanyID"),
        ),
        ("BT-31 Seller VAT identifier", format!("{SELLER}/cac:PartyTaxScheme/cbc:CompanyID")),
        ("BT-31 VAT scheme", format!("{SELLER}/cac:PartyTaxScheme/cac:TaxScheme/cbc:ID")),
        ("BT-46 Buyer identifier", format!("{BUYER}/cac:PartyIdentification/cbc:ID")),
    ] {
        terms.push((term.to_owned(), path));
    }
    terms
}

#[test]
fn ubl_is_well_formed_and_carries_every_mandatory_business_term() {
    let inv = sample().mark_paid(PaymentMeans::Card { brand: "VISA".into(), last4: "4242".into() });
    let xml = ubl(&inv);
    let found = paths(&xml);
    let mut missing = Vec::new();
    for (term, path) in mandatory_terms() {
        match found.get(&path) {
            Some(values) if !values.is_empty() && values.iter().all(|v| !v.is_empty()) => {}
            _ => missing.push(format!("{term}: {path}")),
        }
    }
    assert!(missing.is_empty(), "missing business terms:\n{}", missing.join("\n"));
    let one = |path: &str| found[path].join("|");
    assert_eq!(one("Invoice/cbc:CustomizationID"), CUSTOMIZATION_ID);
    assert_eq!(one("Invoice/cbc:ID"), "GYR-2026-000001");
    assert_eq!(one("Invoice/cbc:IssueDate"), "2026-03-14");
    assert_eq!(one("Invoice/cbc:InvoiceTypeCode"), "380");
    assert_eq!(one("Invoice/cbc:DocumentCurrencyCode"), "EUR");
    assert_eq!(one(&format!("{TOTAL}/cbc:TaxInclusiveAmount")), "0.94");
    assert_eq!(one(&format!("{TOTAL}/cbc:TaxInclusiveAmount/@currencyID")), "EUR");
    assert_eq!(one(&format!("{TOTAL}/cbc:PrepaidAmount")), "0.94");
    assert_eq!(one(&format!("{TOTAL}/cbc:PayableAmount")), "0.00");
    assert_eq!(one(&format!("{SUBTOTAL}/cbc:TaxAmount")), "0.15");
    assert_eq!(one(&format!("{SUBTOTAL}/cac:TaxCategory/cbc:Percent")), "19");
    assert_eq!(one(&format!("{LINE}/cbc:InvoicedQuantity/@unitCode")), "SEC|4L|C62");
    assert_eq!(one(&format!("{LINE}/cbc:InvoicedQuantity")), "185|52.4288|2");
    assert_eq!(one(&format!("{LINE}/cbc:LineExtensionAmount")), "0.22|0.42|0.15");
    assert_eq!(one("Invoice/cac:PaymentMeans/cac:CardAccount/cbc:NetworkID"), "VISA");
    // The buyer's name has markup characters; they come back as written, and never raw.
    assert_eq!(one(&format!("{BUYER}/cac:PartyLegalEntity/cbc:RegistrationName")), "Bob <Example> & Co");
    let text = String::from_utf8(xml).expect("UTF-8");
    assert!(text.contains("Bob &lt;Example&gt; &amp; Co"));
    assert!(!text.contains("4242424242424242"));
}

#[test]
fn ubl_totals_agree_with_the_lines_as_a_reader_would_add_them() {
    let inv = sample();
    let found = paths(&ubl(&inv));
    let dec = |s: &String| s.parse::<Decimal>().expect("decimal");
    let lines: Decimal = found[&format!("{LINE}/cbc:LineExtensionAmount")].iter().map(dec).sum();
    assert_eq!(lines, dec(&found[&format!("{TOTAL}/cbc:LineExtensionAmount")][0]), "BR-CO-10");
    let taxable = dec(&found[&format!("{SUBTOTAL}/cbc:TaxableAmount")][0]);
    let tax = dec(&found[&format!("{SUBTOTAL}/cbc:TaxAmount")][0]);
    let percent = dec(&found[&format!("{SUBTOTAL}/cac:TaxCategory/cbc:Percent")][0]);
    assert_eq!(tax, (taxable * percent / Decimal::ONE_HUNDRED).round_dp(2), "BR-S-09");
    let inclusive = dec(&found[&format!("{TOTAL}/cbc:TaxInclusiveAmount")][0]);
    assert_eq!(inclusive, lines + tax, "BR-CO-15");
    // Peppol R120: quantity × price / base quantity = line net, exactly.
    let q = &found[&format!("{LINE}/cbc:InvoicedQuantity")];
    let p = &found[&format!("{LINE}/cac:Price/cbc:PriceAmount")];
    let b = &found[&format!("{LINE}/cac:Price/cbc:BaseQuantity")];
    let n = &found[&format!("{LINE}/cbc:LineExtensionAmount")];
    for i in 0..q.len() {
        assert_eq!(dec(&q[i]) * dec(&p[i]) / dec(&b[i]), dec(&n[i]), "line {}", i + 1);
    }
}

#[test]
fn sepa_exempt_and_rounded_invoices_carry_their_terms() {
    let exempt = Vat {
        category: VatCategory::Exempt,
        rate: Decimal::ZERO,
        exemption_reason: Some("Exempt <Art. 135>".into()),
    };
    let mut d = draft(
        vec![
            line("sms", UnitKind::Events, 1, 3, Vat::from_plan_rate(Decimal::new(19, 2))),
            line("donation", UnitKind::Events, 1, 100, exempt),
        ],
        PriceBasis::Gross,
    );
    d.payment =
        PaymentMeans::SepaDebit { mandate: "MANDATE-1".into(), iban_masked: "DE89**************3000".into() };
    let inv = Invoice::build(d).expect("builds");
    let found = paths(&ubl(&inv));
    let one = |path: &str| found.get(path).map(|v| v.join("|")).unwrap_or_default();
    assert_eq!(one("Invoice/cac:PaymentMeans/cbc:PaymentMeansCode"), "59");
    assert_eq!(one("Invoice/cac:PaymentMeans/cac:PaymentMandate/cbc:ID"), "MANDATE-1", "BT-89");
    assert_eq!(
        one("Invoice/cac:PaymentMeans/cac:PaymentMandate/cac:PayerFinancialAccount/cbc:ID"),
        "DE89**************3000",
        "BT-91"
    );
    assert_eq!(one(&format!("{SUBTOTAL}/cac:TaxCategory/cbc:ID")), "S|E");
    assert_eq!(
        one(&format!("{SUBTOTAL}/cac:TaxCategory/cbc:TaxExemptionReason")),
        "Exempt <Art. 135>",
        "BT-120"
    );
    assert_eq!(one(&format!("{TOTAL}/cbc:PayableRoundingAmount")), "0.01", "BT-114");
    assert_eq!(one(&format!("{TOTAL}/cbc:PayableAmount")), "1.03");
}

#[test]
fn json_has_the_totals_as_exact_decimal_strings() {
    let inv = sample().mark_paid(PaymentMeans::Wallet);
    let v = json(&inv);
    assert_eq!(v["number"], "GYR-2026-000001");
    assert_eq!(v["totals"]["tax_inclusive_amount"], "0.94");
    assert_eq!(v["totals"]["paid_amount"], "0.94");
    assert_eq!(v["totals"]["payable_amount"], "0.00");
    assert_eq!(v["lines"][1]["unit_code"], "4L");
    assert_eq!(v["vat_breakdown"][0]["percent"], "19");
    assert_eq!(v["payment_means"]["code"], "ZZZ");
    assert_eq!(v["paid"], true);
    let text = serde_json::to_string(&v).expect("serializes");
    let back: Value = serde_json::from_str(&text).expect("parses");
    assert_eq!(back, v);
}

#[test]
fn html_and_text_bodies_show_the_invoice_with_values_escaped() {
    let inv = sample().mark_paid(PaymentMeans::Card { brand: "VISA".into(), last4: "4242".into() });
    let page = html(&inv);
    assert!(page.contains("Invoice GYR-2026-000001"));
    assert!(page.contains("Bob &lt;Example&gt; &amp; Co"));
    assert!(!page.contains("Bob <Example>"));
    assert!(page.contains("0.94 EUR"));
    assert!(page.contains("Paid by VISA card ending in 4242."));
    let body = text_body(&inv);
    assert!(body.contains("Total with VAT: 0.94 EUR"));
    assert!(body.contains("Amount due: 0.00 EUR"));
    assert!(body.contains("52.4288 MB"));
}
