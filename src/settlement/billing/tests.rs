use super::*;
use crate::settlement::invoice::tests::sample;
use crate::settlement::invoice::PaymentMeans;

fn parse(text: &str) -> Result<PostgresConfig, String> {
    let c: PostgresConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    c.validate().map_err(|e| format!("{}: {e}", e.key()))?;
    Ok(c)
}

#[test]
fn off_by_default_and_bad_settings_are_named() {
    let c = parse("").unwrap();
    assert!(!c.enabled());
    assert_eq!(c.schema, "gyro");
    assert!(parse("url = \"postgresql://gyro@db.example.net:5432/billing\"").unwrap().enabled());
    assert!(parse("url = \"host=127.0.0.1 user=gyro dbname=billing\"").unwrap().enabled());
    for (text, key) in [
        ("url = \"postgresql://gyro:hunter2@db/billing\"", "settlement.postgres.url"),
        ("url = \"host=db password=hunter2\"", "settlement.postgres.url"),
        ("url = \"postgresql://db:notaport/x\"", "settlement.postgres.url"),
        ("schema = \"Gyro\"", "settlement.postgres.schema"),
        ("schema = \"1st\"", "settlement.postgres.schema"),
        ("schema = \"a\\\"; DROP TABLE x; --\"", "settlement.postgres.schema"),
        ("connect_timeout_ms = 0", "settlement.postgres.connect_timeout_ms"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.starts_with(key), "{text}: {e}");
        assert!(!e.contains("hunter2"), "a password is never shown: {e}");
    }
}

/// The local server of the development and CI machines (trust authentication); override with
/// `GYRO_TEST_PG_URL`.
fn test_url() -> String {
    std::env::var("GYRO_TEST_PG_URL").unwrap_or_else(|_| "host=127.0.0.1 port=5432 dbname=test".to_owned())
}

/// A schema of this test's own, dropped at the end.
fn test_config() -> PostgresConfig {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    PostgresConfig {
        url: Some(test_url()),
        schema: format!("gyro_test_{}_{nanos}", std::process::id()),
        ..PostgresConfig::default()
    }
}

async fn count(db: &PgBilling, sql: &str) -> i64 {
    db.client().query_one(sql, &[]).await.unwrap().get(0)
}

/// Needs PostgreSQL on 127.0.0.1:5432 (database `test`): run by `.ci/run`, which checks that it
/// is up (`cargo test --lib settlement::billing -- --ignored`); without it, it fails, never skips.
#[tokio::test]
#[ignore = "needs PostgreSQL on 127.0.0.1:5432; .ci/run runs it"]
async fn billing_records_are_idempotent_monotonic_and_reconcile() {
    let config = test_config();
    let mut db = tokio::time::timeout(Duration::from_secs(20), PgBilling::connect(&config, |_| None))
        .await
        .expect("connect within 20 s")
        .unwrap_or_else(|e| panic!("PostgreSQL at {} must be running for this test: {e}", test_url()));
    // Connecting again finds the schema current and applies nothing.
    let again = PgBilling::connect(&config, |_| None).await.unwrap();
    drop(again);
    assert_eq!(count(&db, "SELECT count(*) FROM schema_migrations").await, 1);

    // An invoice written twice (a replayed worker step) is one invoice.
    let issued = sample();
    db.record_invoice(&issued, InvoiceStatus::Issued).await.unwrap();
    db.record_invoice(&issued, InvoiceStatus::Issued).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM invoices").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM invoice_lines").await, 3);
    assert_eq!(count(&db, "SELECT count(*) FROM usage_records").await, 3);
    let quantity: String = db
        .client()
        .query_one("SELECT quantity::text FROM invoice_lines WHERE name = 'data'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(quantity, "52.4288", "quantities are exact numerics");

    // Paid, then a stale "issued" write: it stays paid.
    let paid = issued.clone().mark_paid(PaymentMeans::Card { brand: "VISA".into(), last4: "4242".into() });
    db.record_invoice(&paid, InvoiceStatus::Paid).await.unwrap();
    db.record_invoice(&issued, InvoiceStatus::Issued).await.unwrap();
    let row =
        db.client().query_one("SELECT status, paid_minor, payable_minor FROM invoices", &[]).await.unwrap();
    let (status, paid_minor, payable): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((status.as_str(), paid_minor, payable), ("paid", paid.totals.collected().0, 0));

    // Payment attempts: a transient failure, then a success; recording the success again is
    // one row, and a second success for the invoice is refused by the database itself.
    let attempt = |n: u32, outcome: PaymentOutcome, id: Option<&'static str>| PaymentRecord {
        invoice_number: &paid.number,
        attempt: n,
        idempotency_key: &paid.settlement_key,
        outcome,
        payment_id: id,
        amount: paid.totals.collected(),
        currency: paid.currency.code,
        detail: None,
        at_unix_s: paid.issued_at_unix_s,
    };
    db.record_payment(&attempt(1, PaymentOutcome::Failed, None)).await.unwrap();
    db.record_payment(&attempt(2, PaymentOutcome::Succeeded, Some("pay_1"))).await.unwrap();
    db.record_payment(&attempt(2, PaymentOutcome::Succeeded, Some("pay_1"))).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM payments").await, 2);
    assert!(db.record_payment(&attempt(3, PaymentOutcome::Succeeded, Some("pay_2"))).await.is_err());

    // Reconciliation in SQL: Σ debits = Σ invoice totals = Σ charged, to the minor unit.
    let row = db
        .client()
        .query_one(
            "SELECT (SELECT sum(debited_minor) FROM usage_records)::bigint,
                    (SELECT sum(tax_inclusive_minor + rounding_minor) FROM invoices)::bigint,
                    (SELECT sum(amount_minor) FROM payments WHERE outcome IN ('succeeded', 'wallet'))::bigint",
            &[],
        )
        .await
        .unwrap();
    let (debited, invoiced, charged): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((debited, invoiced, charged), (94, 94, 94));

    // The same number for another settlement is a reused number: refused, nothing changed.
    let mut other = sample();
    other.settlement_key = "session-2".into();
    let e = db.record_invoice(&other, InvoiceStatus::Issued).await.unwrap_err();
    assert!(matches!(e, BillingError::NumberReused { .. }), "{e}");
    // And another number for a settled session is refused by the unique settlement key.
    let mut renumbered = sample();
    renumbered.number = "GYR-2026-999999".into();
    assert!(db.record_invoice(&renumbered, InvoiceStatus::Issued).await.is_err());
    assert_eq!(count(&db, "SELECT count(*) FROM invoices").await, 1);

    // A database migrated by a newer gyro is refused.
    db.client()
        .execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'future')", &[])
        .await
        .unwrap();
    let e = PgBilling::connect(&config, |_| None).await.unwrap_err();
    assert!(matches!(e, BillingError::SchemaNewer { found: 99, .. }), "{e}");

    db.client().batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema)).await.unwrap();
}
