//! Invoices as documents: JSON (for the admin API and files), UBL 2.1 XML (EN 16931 / Peppol
//! BIS Billing 3.0), and the HTML and plain-text bodies of the invoice e-mail.
//!
//! Every value written into XML or HTML goes through quick-xml's escaping (the XML writer's
//! `BytesText`/attributes, or [`escape`] for HTML); no markup is built from unescaped text.
//! UBL elements are written in the order the UBL 2.1 schema's sequences require.

use std::io;

use quick_xml::escape::escape;
use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;
use serde_json::{json, Value};

use super::invoice::{Invoice, InvoiceLine, PaymentMeans, PriceBasis, Vat, VatCategory};
use crate::rating::MoneyMinor;

/// BT-24 Specification identifier: EN 16931 compliant, Peppol BIS Billing 3.0.
pub const CUSTOMIZATION_ID: &str =
    "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0";
/// BT-23 Business process type: Peppol billing.
pub const PROFILE_ID: &str = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0";
/// BT-3: UNTDID 1001 code 380, commercial invoice.
pub const INVOICE_TYPE_CODE: &str = "380";

const NS_INVOICE: &str = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2";
const NS_CAC: &str = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2";
const NS_CBC: &str = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2";

/// The invoice as JSON: every business term with its BT number's meaning as the key, amounts as
/// decimal strings with the currency's decimals ("12.30").
pub fn json(invoice: &Invoice) -> Value {
    let amount = |m: MoneyMinor| invoice.amount(m).to_string();
    let t = &invoice.totals;
    json!({
        "number": invoice.number,
        "series": invoice.series,
        "type_code": INVOICE_TYPE_CODE,
        "issue_date": invoice.issue_date.to_string(),
        "due_date": invoice.due_date.to_string(),
        "currency": invoice.currency.code,
        "price_basis": match invoice.basis { PriceBasis::Gross => "gross", PriceBasis::Net => "net" },
        "settlement_key": invoice.settlement_key,
        "seller": {
            "name": invoice.seller.name,
            "street": invoice.seller.street,
            "city": invoice.seller.city,
            "postal_code": invoice.seller.postal_code,
            "country_code": invoice.seller.country_code,
            "vat_id": invoice.seller.vat_id,
            "legal_registration_id": invoice.seller.legal_registration_id,
            "email": invoice.seller.email,
        },
        "buyer": {
            "id": invoice.buyer.id,
            "name": invoice.buyer.name,
            "email": invoice.buyer.email,
            "street": invoice.buyer.address.street,
            "city": invoice.buyer.address.city,
            "postal_code": invoice.buyer.address.postal_code,
            "country_code": invoice.buyer.address.country_code,
        },
        "lines": invoice.lines.iter().map(|l| json!({
            "id": l.id,
            "name": l.name,
            "rating_group": l.rating_group,
            "quantity": l.quantity.to_string(),
            "unit_code": l.unit.code(),
            "net_amount": amount(l.net),
            "debited_amount": amount(l.debited),
            "price_amount": amount(l.price),
            "price_base_quantity": l.quantity.to_string(),
            "vat_category": l.vat.category.code(),
            "vat_percent": l.vat.percent().to_string(),
        })).collect::<Vec<_>>(),
        "vat_breakdown": invoice.vat_breakdown.iter().map(|b| json!({
            "category": b.vat.category.code(),
            "percent": b.vat.percent().to_string(),
            "taxable_amount": amount(b.taxable),
            "tax_amount": amount(b.tax),
            "exemption_reason": b.vat.exemption_reason,
        })).collect::<Vec<_>>(),
        "totals": {
            "line_extension_amount": amount(t.line_extension),
            "tax_exclusive_amount": amount(t.tax_exclusive),
            "tax_amount": amount(t.tax),
            "tax_inclusive_amount": amount(t.tax_inclusive),
            "paid_amount": amount(t.paid),
            "rounding_amount": amount(t.rounding),
            "payable_amount": amount(t.payable),
        },
        "payment_means": payment_json(&invoice.payment),
        "paid": invoice.is_paid(),
    })
}

fn payment_json(means: &PaymentMeans) -> Value {
    match means {
        PaymentMeans::Card { brand, last4 } => {
            json!({ "code": means.code(), "card_brand": brand, "card_last4": last4 })
        }
        PaymentMeans::SepaDebit { mandate, iban_masked } => {
            json!({ "code": means.code(), "mandate": mandate, "iban_masked": iban_masked })
        }
        PaymentMeans::Wallet => json!({ "code": means.code(), "wallet": true }),
    }
}

/// The invoice as a UBL 2.1 `Invoice` document (UTF-8, indented).
pub fn ubl(invoice: &Invoice) -> Vec<u8> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_ubl(&mut w, invoice).expect("writing XML into a Vec cannot fail");
    let mut out = w.into_inner();
    out.push(b'\n');
    out
}

type W = Writer<Vec<u8>>;

/// `<name>text</name>`, text escaped.
fn text(w: &mut W, name: &str, value: &str) -> io::Result<()> {
    w.create_element(name).write_text_content(BytesText::new(value))?;
    Ok(())
}

/// `<name attr="…">text</name>`, both escaped.
fn text_attr(w: &mut W, name: &str, attr: (&str, &str), value: &str) -> io::Result<()> {
    w.create_element(name).with_attribute(attr).write_text_content(BytesText::new(value))?;
    Ok(())
}

fn amount(w: &mut W, invoice: &Invoice, name: &str, m: MoneyMinor) -> io::Result<()> {
    text_attr(w, name, ("currencyID", invoice.currency.code), &invoice.amount(m).to_string())
}

fn write_ubl(w: &mut W, inv: &Invoice) -> io::Result<()> {
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("Invoice")
        .with_attribute(("xmlns", NS_INVOICE))
        .with_attribute(("xmlns:cac", NS_CAC))
        .with_attribute(("xmlns:cbc", NS_CBC))
        .write_inner_content(|w| {
            text(w, "cbc:CustomizationID", CUSTOMIZATION_ID)?; // BT-24
            text(w, "cbc:ProfileID", PROFILE_ID)?; // BT-23
            text(w, "cbc:ID", &inv.number)?; // BT-1
            text(w, "cbc:IssueDate", &inv.issue_date.to_string())?; // BT-2
            text(w, "cbc:DueDate", &inv.due_date.to_string())?; // BT-9 (BR-CO-25)
            text(w, "cbc:InvoiceTypeCode", INVOICE_TYPE_CODE)?; // BT-3
            text(w, "cbc:DocumentCurrencyCode", inv.currency.code)?; // BT-5
            text(w, "cbc:BuyerReference", &inv.buyer.id)?; // BT-10 (PEPPOL-EN16931-R003)
            seller(w, inv)?; // BG-4
            buyer(w, inv)?; // BG-7
            payment_means(w, inv)?; // BG-16
            tax_total(w, inv)?; // BG-23
            monetary_total(w, inv)?; // BG-22
            for line in &inv.lines {
                invoice_line(w, inv, line)?; // BG-25
            }
            Ok(())
        })?;
    Ok(())
}

fn address(w: &mut W, street: &str, city: &str, postal_code: &str, country: &str) -> io::Result<()> {
    w.create_element("cac:PostalAddress").write_inner_content(|w| {
        text(w, "cbc:StreetName", street)?; // BT-35 / BT-50
        text(w, "cbc:CityName", city)?; // BT-37 / BT-52
        if !postal_code.is_empty() {
            text(w, "cbc:PostalZone", postal_code)?; // BT-38 / BT-53
        }
        w.create_element("cac:Country")
            .write_inner_content(|w| text(w, "cbc:IdentificationCode", country))?; // BT-40 / BT-55
        Ok(())
    })?;
    Ok(())
}

fn seller(w: &mut W, inv: &Invoice) -> io::Result<()> {
    let s = &inv.seller;
    w.create_element("cac:AccountingSupplierParty").write_inner_content(|w| {
        w.create_element("cac:Party").write_inner_content(|w| {
            text_attr(w, "cbc:EndpointID", ("schemeID", "EM"), &s.email)?; // BT-34
            w.create_element("cac:PartyName").write_inner_content(|w| text(w, "cbc:Name", &s.name))?; // BT-28
            address(w, &s.street, &s.city, &s.postal_code, &s.country_code)?; // BG-5
            w.create_element("cac:PartyTaxScheme").write_inner_content(|w| {
                text(w, "cbc:CompanyID", &s.vat_id)?; // BT-31
                vat_scheme(w)
            })?;
            w.create_element("cac:PartyLegalEntity").write_inner_content(|w| {
                text(w, "cbc:RegistrationName", &s.name)?; // BT-27
                if let Some(id) = &s.legal_registration_id {
                    text(w, "cbc:CompanyID", id)?; // BT-30
                }
                Ok(())
            })?;
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(())
}

fn buyer(w: &mut W, inv: &Invoice) -> io::Result<()> {
    let b = &inv.buyer;
    w.create_element("cac:AccountingCustomerParty").write_inner_content(|w| {
        w.create_element("cac:Party").write_inner_content(|w| {
            text_attr(w, "cbc:EndpointID", ("schemeID", "EM"), &b.email)?; // BT-49
            w.create_element("cac:PartyIdentification").write_inner_content(|w| text(w, "cbc:ID", &b.id))?; // BT-46
            let a = &b.address;
            address(w, &a.street, &a.city, &a.postal_code, &a.country_code)?; // BG-8
            w.create_element("cac:PartyLegalEntity")
                .write_inner_content(|w| text(w, "cbc:RegistrationName", &b.name))?; // BT-44
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(())
}

fn vat_scheme(w: &mut W) -> io::Result<()> {
    w.create_element("cac:TaxScheme").write_inner_content(|w| text(w, "cbc:ID", "VAT"))?;
    Ok(())
}

fn payment_means(w: &mut W, inv: &Invoice) -> io::Result<()> {
    let means = &inv.payment;
    let name = match means {
        PaymentMeans::Card { .. } => "Bank card",
        PaymentMeans::SepaDebit { .. } => "SEPA direct debit",
        PaymentMeans::Wallet => "Prepaid balance",
    };
    w.create_element("cac:PaymentMeans").write_inner_content(|w| {
        text_attr(w, "cbc:PaymentMeansCode", ("name", name), means.code())?; // BT-81, BT-82
        text(w, "cbc:PaymentID", &inv.number)?; // BT-83 remittance information
        match means {
            PaymentMeans::Card { brand, last4 } => {
                w.create_element("cac:CardAccount").write_inner_content(|w| {
                    text(w, "cbc:PrimaryAccountNumberID", last4)?; // BT-87: last four only
                    text(w, "cbc:NetworkID", brand)
                })?;
            }
            PaymentMeans::SepaDebit { mandate, iban_masked } => {
                w.create_element("cac:PaymentMandate").write_inner_content(|w| {
                    text(w, "cbc:ID", mandate)?; // BT-89
                    w.create_element("cac:PayerFinancialAccount")
                        .write_inner_content(|w| text(w, "cbc:ID", iban_masked))?; // BT-91, masked
                    Ok(())
                })?;
            }
            PaymentMeans::Wallet => {}
        }
        Ok(())
    })?;
    Ok(())
}

fn tax_category(w: &mut W, element: &str, vat: &Vat) -> io::Result<()> {
    w.create_element(element).write_inner_content(|w| {
        text(w, "cbc:ID", vat.category.code())?; // BT-118 / BT-151
        text(w, "cbc:Percent", &vat.percent().to_string())?; // BT-119 / BT-152
        if element == "cac:TaxCategory" {
            if let Some(reason) = &vat.exemption_reason {
                text(w, "cbc:TaxExemptionReason", reason)?; // BT-120
            }
        }
        vat_scheme(w)
    })?;
    Ok(())
}

fn tax_total(w: &mut W, inv: &Invoice) -> io::Result<()> {
    w.create_element("cac:TaxTotal").write_inner_content(|w| {
        amount(w, inv, "cbc:TaxAmount", inv.totals.tax)?; // BT-110
        for b in &inv.vat_breakdown {
            w.create_element("cac:TaxSubtotal").write_inner_content(|w| {
                amount(w, inv, "cbc:TaxableAmount", b.taxable)?; // BT-116
                amount(w, inv, "cbc:TaxAmount", b.tax)?; // BT-117
                tax_category(w, "cac:TaxCategory", &b.vat)
            })?;
        }
        Ok(())
    })?;
    Ok(())
}

fn monetary_total(w: &mut W, inv: &Invoice) -> io::Result<()> {
    let t = &inv.totals;
    w.create_element("cac:LegalMonetaryTotal").write_inner_content(|w| {
        amount(w, inv, "cbc:LineExtensionAmount", t.line_extension)?; // BT-106
        amount(w, inv, "cbc:TaxExclusiveAmount", t.tax_exclusive)?; // BT-109
        amount(w, inv, "cbc:TaxInclusiveAmount", t.tax_inclusive)?; // BT-112
        amount(w, inv, "cbc:PrepaidAmount", t.paid)?; // BT-113
        if t.rounding.0 != 0 {
            amount(w, inv, "cbc:PayableRoundingAmount", t.rounding)?; // BT-114
        }
        amount(w, inv, "cbc:PayableAmount", t.payable) // BT-115
    })?;
    Ok(())
}

fn invoice_line(w: &mut W, inv: &Invoice, line: &InvoiceLine) -> io::Result<()> {
    let quantity = line.quantity.to_string();
    w.create_element("cac:InvoiceLine").write_inner_content(|w| {
        text(w, "cbc:ID", &line.id.to_string())?; // BT-126
        text_attr(w, "cbc:InvoicedQuantity", ("unitCode", line.unit.code()), &quantity)?; // BT-129, BT-130
        amount(w, inv, "cbc:LineExtensionAmount", line.net)?; // BT-131
        w.create_element("cac:Item").write_inner_content(|w| {
            text(w, "cbc:Name", &line.name)?; // BT-153
            tax_category(w, "cac:ClassifiedTaxCategory", &line.vat) // BG-30
        })?;
        w.create_element("cac:Price").write_inner_content(|w| {
            amount(w, inv, "cbc:PriceAmount", line.price)?; // BT-146
            text_attr(w, "cbc:BaseQuantity", ("unitCode", line.unit.code()), &quantity)
            // BT-149, BT-150
        })?;
        Ok(())
    })?;
    Ok(())
}

/// HTML-escapes a value (`&`, `<`, `>`, `'`, `"`).
fn esc(value: &str) -> String {
    escape(value).into_owned()
}

fn money(inv: &Invoice, m: MoneyMinor) -> String {
    format!("{} {}", inv.amount(m), inv.currency.code)
}

fn quantity_label(line: &InvoiceLine) -> String {
    format!("{} {}", line.quantity, line.unit.label())
}

fn vat_label(vat: &Vat) -> String {
    match vat.category {
        VatCategory::Standard => format!("{} %", vat.percent()),
        _ => format!("{} ({})", vat.category.code(), vat.exemption_reason.as_deref().unwrap_or("0 %")),
    }
}

/// The invoice e-mail's HTML body: a self-contained page, every value escaped.
pub fn html(inv: &Invoice) -> String {
    let mut rows = String::new();
    for l in &inv.lines {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
            l.id,
            esc(&l.name),
            esc(&quantity_label(l)),
            esc(&vat_label(&l.vat)),
            esc(&money(inv, l.net)),
        ));
    }
    let mut vat_rows = String::new();
    for b in &inv.vat_breakdown {
        vat_rows.push_str(&format!(
            "<tr><td colspan=\"4\">VAT {} on {}</td><td class=\"n\">{}</td></tr>\n",
            esc(&vat_label(&b.vat)),
            esc(&money(inv, b.taxable)),
            esc(&money(inv, b.tax)),
        ));
    }
    let t = &inv.totals;
    let mut totals = format!(
        "<tr><th colspan=\"4\">Total without VAT</th><td class=\"n\">{}</td></tr>\n\
         {vat_rows}<tr><th colspan=\"4\">Total with VAT</th><td class=\"n\">{}</td></tr>\n",
        esc(&money(inv, t.tax_exclusive)),
        esc(&money(inv, t.tax_inclusive)),
    );
    if t.rounding.0 != 0 {
        totals.push_str(&format!(
            "<tr><td colspan=\"4\">Rounding</td><td class=\"n\">{}</td></tr>\n",
            esc(&money(inv, t.rounding))
        ));
    }
    totals.push_str(&format!(
        "<tr><td colspan=\"4\">Paid</td><td class=\"n\">{}</td></tr>\n\
         <tr><th colspan=\"4\">Amount due</th><td class=\"n\">{}</td></tr>\n",
        esc(&money(inv, t.paid)),
        esc(&money(inv, t.payable)),
    ));
    let status = if inv.is_paid() {
        format!("Paid by {}.", esc(&inv.payment.describe()))
    } else {
        format!("Due by {}, to be paid by {}.", inv.due_date, esc(&inv.payment.describe()))
    };
    let s = &inv.seller;
    let b = &inv.buyer;
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Invoice {number}</title>\n\
         <style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{padding:2px 8px;text-align:left}}\
         .n{{text-align:right}}</style></head>\n<body>\n\
         <h1>Invoice {number}</h1>\n\
         <p>Issued {issued} by {seller_name}, {seller_street}, {seller_postal} {seller_city}, {seller_country} \
         (VAT {seller_vat}).</p>\n\
         <p>To {buyer_name}, {buyer_street}, {buyer_postal} {buyer_city}, {buyer_country} (customer {buyer_id}).</p>\n\
         <table>\n<tr><th>#</th><th>Service</th><th class=\"n\">Quantity</th><th class=\"n\">VAT</th>\
         <th class=\"n\">Net amount</th></tr>\n{rows}{totals}</table>\n<p>{status}</p>\n</body></html>\n",
        number = esc(&inv.number),
        issued = inv.issue_date,
        seller_name = esc(&s.name),
        seller_street = esc(&s.street),
        seller_postal = esc(&s.postal_code),
        seller_city = esc(&s.city),
        seller_country = esc(&s.country_code),
        seller_vat = esc(&s.vat_id),
        buyer_name = esc(&b.name),
        buyer_street = esc(&b.address.street),
        buyer_postal = esc(&b.address.postal_code),
        buyer_city = esc(&b.address.city),
        buyer_country = esc(&b.address.country_code),
        buyer_id = esc(&b.id),
    )
}

/// The invoice e-mail's plain-text body.
pub fn text_body(inv: &Invoice) -> String {
    let t = &inv.totals;
    let mut out = format!(
        "Invoice {}\nIssued {} by {}, VAT {}\nTo {} (customer {})\n\n",
        inv.number, inv.issue_date, inv.seller.name, inv.seller.vat_id, inv.buyer.name, inv.buyer.id
    );
    for l in &inv.lines {
        out.push_str(&format!(
            "{:>3}  {:<24} {:>16}  VAT {:<8} {:>14}\n",
            l.id,
            l.name,
            quantity_label(l),
            vat_label(&l.vat),
            money(inv, l.net)
        ));
    }
    out.push_str(&format!("\nTotal without VAT: {}\n", money(inv, t.tax_exclusive)));
    for b in &inv.vat_breakdown {
        out.push_str(&format!(
            "VAT {} on {}: {}\n",
            vat_label(&b.vat),
            money(inv, b.taxable),
            money(inv, b.tax)
        ));
    }
    out.push_str(&format!("Total with VAT: {}\n", money(inv, t.tax_inclusive)));
    if t.rounding.0 != 0 {
        out.push_str(&format!("Rounding: {}\n", money(inv, t.rounding)));
    }
    out.push_str(&format!("Paid: {}\nAmount due: {}\n\n", money(inv, t.paid), money(inv, t.payable)));
    if inv.is_paid() {
        out.push_str(&format!("Paid by {}.\n", inv.payment.describe()));
    } else {
        out.push_str(&format!("Due by {}, to be paid by {}.\n", inv.due_date, inv.payment.describe()));
    }
    out
}

#[cfg(test)]
mod tests;
