//! `gyro load provision`: a catalog with the subscribers a load run uses.
//!
//! One plan ("load": data 32251 per MiB, voice 32260/32275/32276 per minute, SMS 32274 per
//! message, quotas large enough that a session never runs out), one customer, and N prepaid
//! accounts `e164:FIRST .. e164:FIRST+N-1`, each with the same opening balance. The text is
//! written directly (no TOML serializer): it is a fixed plan and one short table per account,
//! and a million accounts take about a second.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;

use super::scenario::{decimal_digits, MSISDN_DIGITS_MAX};
use crate::ledger::ACCOUNTS_MAX;

/// Largest opening balance the catalog accepts (src/catalog/README.md: balances are at most
/// 10¹²), and the decimals of EUR, the plan's currency.
const BALANCE_MAX: i64 = 1_000_000_000_000;
const BALANCE_DECIMALS_MAX: u32 = 2;

/// The plan, the customer and the head of the file. Prices are the demo catalog's; quotas are
/// large (1 GiB, one hour, 1000 messages) so that grants, not balances, never limit a run, and
/// Validity-Time is an hour so the sessions a run leaves open are expired by the server an hour
/// after it (RFC 4006 §8.33 Validity-Time, plus gyro's Tcc grace).
const HEAD: &str = r#"# gyro load test catalog, written by `gyro load provision`.
# One plan, one customer, and one prepaid account per subscriber. Serve it with
#   [charging]
#   catalog = "<this file>"
# in the file given to `gyro serve --config`.

[[plans]]
id = "load"
name = "Load test"
currency = "EUR"

  [[plans.services]]
  name = "data"
  contexts = [32251]
  unit = "octets"
  price = "0.01"
  per = 1048576
  increment = 1024
  quota = 1073741824
  validity_time = 3600

  [[plans.services]]
  name = "voice"
  contexts = [32260, 32275, 32276]
  unit = "time"
  price = "0.05"
  per = 60
  quota = 3600
  validity_time = 3600

  [[plans.services]]
  name = "sms"
  contexts = [32274]
  unit = "events"
  price = "0.09"
  quota = 1000
  validity_time = 3600

[[customers]]
id = "load"
name = "Load test"
plan = "load"
"#;

/// Options of `gyro load provision`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProvisionArgs {
    /// Accounts to write, one per MSISDN.
    #[arg(long, value_name = "N")]
    pub subscribers: u64,
    /// The catalog file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The first MSISDN (E.164 digits, no +); the others follow it.
    #[arg(long, default_value_t = super::FIRST_MSISDN_DEFAULT, value_name = "DIGITS")]
    pub first_msisdn: u64,
    /// Opening balance of every account, in EUR.
    #[arg(long, default_value = "1000000.00", value_name = "AMOUNT")]
    pub balance: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("--subscribers {0}: must be between 1 and {ACCOUNTS_MAX} (the ledger's account limit)")]
    Subscribers(u64),
    #[error(transparent)]
    Msisdn(#[from] super::MsisdnError),
    #[error("--balance {0:?}: expected an amount in EUR with at most 2 decimals, from 0 to 1000000000000")]
    Balance(String),
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    pub accounts: u64,
    pub first: u64,
    pub last: u64,
}

/// Checks the options and writes the catalog.
pub fn provision(args: &ProvisionArgs) -> Result<Provisioned, ProvisionError> {
    if args.subscribers == 0 || args.subscribers > u64::from(ACCOUNTS_MAX) {
        return Err(ProvisionError::Subscribers(args.subscribers));
    }
    super::check_msisdns(args.first_msisdn, args.subscribers)?;
    let balance =
        parse_balance(&args.balance).ok_or_else(|| ProvisionError::Balance(args.balance.clone()))?;
    let write_error = |source| ProvisionError::Write { path: args.out.clone(), source };
    write_catalog(&args.out, args.first_msisdn, args.subscribers, &balance).map_err(write_error)?;
    Ok(Provisioned {
        accounts: args.subscribers,
        first: args.first_msisdn,
        last: args.first_msisdn + args.subscribers - 1,
    })
}

/// The balance as the catalog writes money: a plain decimal string, at most 2 decimals.
fn parse_balance(text: &str) -> Option<String> {
    let d: Decimal = text.parse().ok()?;
    let ok = !d.is_sign_negative() && d.scale() <= BALANCE_DECIMALS_MAX && d <= Decimal::from(BALANCE_MAX);
    ok.then(|| d.to_string())
}

fn write_catalog(path: &Path, first: u64, count: u64, balance: &str) -> std::io::Result<()> {
    debug_assert!(decimal_digits(first + count - 1) <= MSISDN_DIGITS_MAX);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(HEAD.as_bytes())?;
    for msisdn in first..first + count {
        write!(
            out,
            "\n[[accounts]]\ncustomer = \"load\"\nsubscription_ids = [\"e164:{msisdn}\"]\nfunding = \"prepaid\"\nbalance = \"{balance}\"\n"
        )?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn args(dir: &Path, n: u64) -> ProvisionArgs {
        ProvisionArgs {
            subscribers: n,
            out: dir.join("catalog.toml"),
            first_msisdn: super::super::FIRST_MSISDN_DEFAULT,
            balance: "1000000.00".into(),
        }
    }

    #[test]
    fn the_catalog_loads_with_one_account_per_subscriber() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), 25);
        let p = provision(&a).unwrap();
        assert_eq!(p, Provisioned { accounts: 25, first: 491_700_000_000, last: 491_700_000_024 });
        let catalog = Catalog::load(&a.out).unwrap();
        assert_eq!(catalog.accounts.len(), 25);
        assert_eq!(catalog.accounts[24].subscription_ids[0].to_string(), "e164:491700000024");
    }

    #[test]
    fn bad_options_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = |a: ProvisionArgs| provision(&a).unwrap_err().to_string();
        assert!(err(args(dir.path(), 0)).starts_with("--subscribers 0: "));
        let a = ProvisionArgs { balance: "1.234".into(), ..args(dir.path(), 1) };
        assert!(err(a).starts_with("--balance \"1.234\": "));
        let a = ProvisionArgs { balance: "-1".into(), ..args(dir.path(), 1) };
        assert!(err(a).starts_with("--balance \"-1\": "));
        let a = ProvisionArgs { first_msisdn: 999, ..args(dir.path(), 2) };
        assert!(
            err(a).starts_with("--subscribers 2 from --first-msisdn 999"),
            "{}",
            err(args(dir.path(), 0))
        );
        assert_eq!(parse_balance("5"), Some("5".into()));
    }
}
