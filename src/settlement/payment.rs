//! Payment adapters behind one trait, the `sandbox` gateway, payment methods, and the retry
//! policy.
//!
//! # Why the trait is async
//! The settlement worker will be a tokio task, and the real adapters (`stripe`, `webhook`) are
//! HTTP clients that wait hundreds of milliseconds per call. A synchronous trait would need a
//! thread per payment in flight to keep up with the termination rate of a loaded server (or
//! settle one payment at a time, a few per second); async lets one task keep many payments in
//! flight on the existing runtime. The methods return `impl Future + Send` rather than being
//! `async fn` so the futures are `Send` (spawnable); the worker is generic over the adapter,
//! or holds an enum of the configured ones, so no boxing or `dyn` is needed.
//!
//! # Idempotency and unknown outcomes
//! Every charge carries an [`IdempotencyKey`] (the settlement's key, as Stripe's
//! `Idempotency-Key`): an adapter must never charge twice for one key and must answer a repeated
//! key with the first outcome. A [`PaymentError::Unknown`] (the request was sent, no answer came
//! back) means the charge may have happened: the worker must call [`PaymentAdapter::lookup`]
//! before any retry, and retry only if the lookup finds nothing.
//!
//! # The adapters
//! - [`Sandbox`] (here): in-process and deterministic, the embedded default.
//! - [`stripe::Stripe`]: a Stripe-compatible HTTP client (PaymentIntents, created and confirmed
//!   off-session in one request).
//! - [`webhook::Webhook`]: a signed JSON POST to the operator's billing system.
//!
//! [`configured::ConfiguredAdapter`] is the one of them `[settlement.payment] adapter` names, as
//! an enum, so the worker needs no `dyn`. The two HTTP adapters are the only code under
//! `settlement` that opens sockets; they take no clock either (the webhook's signature time is
//! an argument, read by the caller through [`configured::ConfiguredAdapter`]).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use siphasher::sip::SipHasher13;

use crate::limits::PAYMENT_ATTEMPTS_MAX;
use crate::rating::{Currency, MoneyMinor};

use super::invoice::PaymentMeans;

pub mod configured;
mod http;
pub mod stripe;
pub mod webhook;

pub use configured::{AdapterKind, ConfiguredAdapter, PaymentConfigError, Secret};
pub use http::Timeouts;

/// The key a charge is idempotent on: one per settled session (or event).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct IdempotencyKey(pub String);

/// The customer's id in the catalog (the webhook's `customer`; the invoice's buyer). The
/// sandbox ignores it, and Stripe is sent [`GatewayRefs::customer`] instead.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CustomerRef(pub String);

/// The customer as a remote gateway knows them: Stripe's `cus_…` (catalog `gateway_customer`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct GatewayCustomer(pub String);

/// A payment method saved at a remote gateway: Stripe's `pm_…`, a card or a SEPA debit with its
/// mandate (catalog `payment_method_id`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PaymentMethodId(pub String);

/// An account's references at a remote gateway, copied by the operator from the gateway into the
/// catalog. A real gateway charges only what it has saved (Stripe refuses a card number or an
/// IBAN it did not tokenise itself), so these, not the catalog's card or IBAN, are what it is
/// sent; the card or IBAN stays for the invoice's payment means and for the sandbox, which needs
/// neither reference. Both are absent for an account without a payment method.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct GatewayRefs {
    pub customer: Option<GatewayCustomer>,
    pub payment_method: Option<PaymentMethodId>,
}

/// A gateway's identifier of a successful payment.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PaymentId(pub String);

/// Card networks we show on invoices (BT-87's `NetworkID`), from the number's prefix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CardBrand {
    Visa,
    Mastercard,
    Amex,
    Other,
}

impl CardBrand {
    pub fn name(self) -> &'static str {
        match self {
            Self::Visa => "VISA",
            Self::Mastercard => "MASTERCARD",
            Self::Amex => "AMEX",
            Self::Other => "CARD",
        }
    }

    fn of(digits: &str) -> Self {
        let prefix2: u32 = digits.get(..2).and_then(|p| p.parse().ok()).unwrap_or(0);
        let prefix4: u32 = digits.get(..4).and_then(|p| p.parse().ok()).unwrap_or(0);
        match prefix2 {
            _ if digits.starts_with('4') => Self::Visa,
            51..=55 => Self::Mastercard,
            _ if (2221..=2720).contains(&prefix4) => Self::Mastercard,
            34 | 37 => Self::Amex,
            _ => Self::Other,
        }
    }
}

/// A card from the catalog: the sandbox's instrument (`token`, the test card number) and what may
/// be shown (brand, last four). A remote gateway is sent [`GatewayRefs::payment_method`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Card {
    pub token: String,
    pub brand: CardBrand,
    pub last4: String,
}

/// A SEPA direct-debit mandate: the mandate reference and the IBAN it debits (the sandbox charges
/// by IBAN). A remote gateway's handle of the mandate is [`GatewayRefs::payment_method`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SepaDebit {
    pub mandate: String,
    pub iban: Iban,
}

/// How an `on_file` account pays.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PaymentMethod {
    Card(Card),
    SepaDebit(SepaDebit),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum MethodError {
    #[error("a card number is 12 to 19 digits (spaces allowed) and passes the Luhn check")]
    CardNumber,
    #[error("an IBAN is a country code, two check digits and up to 30 letters or digits, with check digits that verify (ISO 13616 mod 97)")]
    Iban,
}

impl Card {
    /// A card from a (test) card number. Only the sandbox charges numbers; a real gateway is sent
    /// the account's saved `payment_method_id` instead.
    pub fn from_number(number: &str) -> Result<Self, MethodError> {
        let digits: String = number.chars().filter(|c| *c != ' ').collect();
        if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) || !luhn(&digits)
        {
            return Err(MethodError::CardNumber);
        }
        let last4 = digits[digits.len() - 4..].to_owned();
        Ok(Self { brand: CardBrand::of(&digits), last4, token: digits })
    }
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if 9 < doubled {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// An IBAN in electronic form (no spaces, upper case), check digits verified.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Iban(String);

impl Iban {
    pub fn parse(text: &str) -> Result<Self, MethodError> {
        let iban: String = text.chars().filter(|c| *c != ' ').map(|c| c.to_ascii_uppercase()).collect();
        let b = iban.as_bytes();
        let shape = (15..=34).contains(&b.len())
            && b[..2].iter().all(u8::is_ascii_uppercase)
            && b[2..4].iter().all(u8::is_ascii_digit)
            && b[4..].iter().all(u8::is_ascii_alphanumeric);
        if !shape || mod97(&iban) != 1 {
            return Err(MethodError::Iban);
        }
        Ok(Self(iban))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first four and the last four characters, the rest as `*`: `DE89**************3000`.
    /// Enough for the customer to recognise the account, not enough to debit it.
    pub fn masked(&self) -> String {
        let n = self.0.len();
        format!("{}{}{}", &self.0[..4], "*".repeat(n - 8), &self.0[n - 4..])
    }
}

/// ISO 13616: move the first four characters to the end, letters → 10..35, remainder mod 97.
fn mod97(iban: &str) -> u32 {
    let rotated = iban[4..].bytes().chain(iban[..4].bytes());
    rotated.fold(0u32, |acc, b| {
        let value = if b.is_ascii_digit() { u32::from(b - b'0') } else { u32::from(b - b'A') + 10 };
        if value < 10 {
            (acc * 10 + value) % 97
        } else {
            (acc * 100 + value) % 97
        }
    })
}

impl PaymentMethod {
    /// What the invoice shows (BG-16 / BG-18 / BG-19), never the whole number.
    pub fn means(&self) -> PaymentMeans {
        match self {
            Self::Card(card) => {
                PaymentMeans::Card { brand: card.brand.name().into(), last4: card.last4.clone() }
            }
            Self::SepaDebit(sepa) => {
                PaymentMeans::SepaDebit { mandate: sepa.mandate.clone(), iban_masked: sepa.iban.masked() }
            }
        }
    }

    /// What the sandbox charges: the card token or the IBAN.
    fn instrument(&self) -> &str {
        match self {
            Self::Card(card) => &card.token,
            Self::SepaDebit(sepa) => sepa.iban.as_str(),
        }
    }
}

/// One charge: the invoice's collected amount from the account's method.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChargeRequest {
    pub key: IdempotencyKey,
    pub invoice_number: String,
    pub customer: CustomerRef,
    pub amount: MoneyMinor,
    pub currency: Currency,
    pub method: PaymentMethod,
    /// The account's references at a remote gateway (the sandbox ignores them).
    pub gateway: GatewayRefs,
}

/// A final answer from the gateway.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ChargeOutcome {
    Succeeded {
        payment_id: PaymentId,
    },
    /// Accepted but not final: a SEPA debit takes days to clear (Stripe's `processing`). The
    /// invoice is not yet paid and the charge must not be made again; a later `lookup` (or the
    /// gateway's own notification) turns it into `Succeeded` or `Declined`.
    Pending {
        payment_id: PaymentId,
    },
    /// The money did not move and will not by retrying: the account is barred and the
    /// customer told (issue 6, outcomes).
    Declined {
        reason: DeclineReason,
    },
}

/// Why a charge was declined. Open-world: the codes we act on or show specially have variants,
/// any other code a gateway sends (Stripe has dozens: `do_not_honor`, `lost_card`, …) is kept
/// as it came in `Other`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DeclineReason {
    CardDeclined,
    InsufficientFunds,
    ExpiredCard,
    /// A SEPA mandate the bank refuses (closed account, revoked mandate).
    MandateRefused,
    Other(DeclineCode),
}

/// A gateway's decline code we have no variant for, as the gateway spelled it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeclineCode(pub String);

impl DeclineReason {
    pub fn code(&self) -> &str {
        match self {
            Self::CardDeclined => "card_declined",
            Self::InsufficientFunds => "insufficient_funds",
            Self::ExpiredCard => "expired_card",
            Self::MandateRefused => "mandate_refused",
            Self::Other(code) => &code.0,
        }
    }

    /// The reason for a gateway's code: the inverse of [`Self::code`], plus Stripe's
    /// `generic_decline` and its SEPA mandate failures.
    pub fn from_code(code: &str) -> Self {
        match code {
            "card_declined" | "generic_decline" => Self::CardDeclined,
            "insufficient_funds" => Self::InsufficientFunds,
            "expired_card" => Self::ExpiredCard,
            "mandate_refused" | "debit_not_authorized" | "account_closed" | "no_account" => {
                Self::MandateRefused
            }
            other => Self::Other(DeclineCode(other.to_owned())),
        }
    }
}

/// The payment upstream is at fault, or its answer is missing. Not a decline.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PaymentError {
    /// Nothing was charged (a 5xx or a refused connection): retry with backoff.
    #[error("the gateway failed before charging; retry later")]
    Transient,
    /// The request may have been processed but no answer came (a timeout after sending):
    /// `lookup` before any retry.
    #[error("no answer after sending the charge; look the payment up before retrying")]
    Unknown,
    /// The same key came with a different request: a bug on our side, never retried.
    #[error("the idempotency key was used before with a different charge")]
    KeyReused,
    /// The request cannot succeed as it is: the gateway refused it (an HTTP 4xx that is not a
    /// decline: bad parameters, a bad key, an unknown customer), or the adapter refused to send
    /// it because the account lacks what the gateway needs. Retrying the same request cannot
    /// help: dead-letter it and tell the operator.
    #[error("{0}; retrying cannot help")]
    Rejected(Rejection),
}

/// Why a request was rejected.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum Rejection {
    /// The gateway answered with this HTTP status.
    #[error("the gateway rejected the request (HTTP {0})")]
    Status(u16),
    /// Not sent: the account has no `field` (a catalog account key), which the gateway needs.
    /// Sending without it would only earn a 4xx, or charge something else than the account's
    /// saved method.
    #[error("not sent: the account has no {field} in the catalog, which this gateway needs")]
    Missing { field: &'static str },
}

impl PaymentError {
    /// Whether the worker may try again (after `lookup`, for `Unknown`).
    pub fn is_retryable(self) -> bool {
        match self {
            Self::Transient | Self::Unknown => true,
            Self::KeyReused | Self::Rejected(_) => false,
        }
    }
}

/// A payment gateway. See the module doc for the contract.
pub trait PaymentAdapter: Send + Sync {
    /// Charges once per key; a repeated key gets the first final outcome.
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeOutcome, PaymentError>> + Send;

    /// The outcome recorded for `key`, if any charge under it reached one (`Pending`
    /// included). `Err(Unknown)` means this gateway cannot tell (see each adapter): a resend
    /// under the same key is then the only way on, safe because the gateway is idempotent on it.
    fn lookup(
        &self,
        key: &IdempotencyKey,
    ) -> impl Future<Output = Result<Option<ChargeOutcome>, PaymentError>> + Send;
}

/// Documented test instruments of the sandbox. Any other card number that passes the Luhn
/// check, and any other valid IBAN, succeeds.
pub mod test_instruments {
    /// Visa: succeeds.
    pub const CARD_SUCCEEDS: &str = "4242424242424242";
    /// Mastercard: succeeds.
    pub const CARD_MASTERCARD_SUCCEEDS: &str = "5555555555554444";
    /// Declined, `card_declined`.
    pub const CARD_DECLINED: &str = "4000000000000002";
    /// Declined, `insufficient_funds`.
    pub const CARD_INSUFFICIENT_FUNDS: &str = "4000000000009995";
    /// Declined, `expired_card`.
    pub const CARD_EXPIRED: &str = "4000000000000069";
    /// Fails transiently (`PaymentError::Transient`) on the first `TRANSIENT_FAILURES` attempts
    /// under a key, then succeeds.
    pub const CARD_TRANSIENT: &str = "4000000000000119";
    /// Charges, but the first attempt under a key answers `PaymentError::Unknown` (the reply
    /// was lost); `lookup` finds the success, and a retry returns it without charging again.
    pub const CARD_LOST_REPLY: &str = "4000000000000259";
    /// SEPA: succeeds.
    pub const IBAN_SUCCEEDS: &str = "DE89370400440532013000";
    /// SEPA: declined, `insufficient_funds`.
    pub const IBAN_INSUFFICIENT_FUNDS: &str = "DE62370400440532013001";
    /// SEPA: declined, `mandate_refused`.
    pub const IBAN_MANDATE_REFUSED: &str = "DE35370400440532013002";
    /// SEPA: fails transiently like `CARD_TRANSIENT`.
    pub const IBAN_TRANSIENT: &str = "DE08370400440532013003";
    /// How many attempts under one key the transient instruments fail.
    pub const TRANSIENT_FAILURES: u32 = 2;
}

/// One successful charge the sandbox made (what a reconciliation test counts).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SandboxCharge {
    pub key: IdempotencyKey,
    pub payment_id: PaymentId,
    pub amount: MoneyMinor,
    pub currency: Currency,
}

/// The embedded default gateway: in-process, deterministic (payment ids are a keyed hash of the
/// idempotency key, outcomes depend only on the instrument and the attempt count under the key).
///
/// A real gateway remembers its charges when gyro crashes; so does the sandbox when it keeps
/// books ([`Sandbox::with_books`], what `gyro serve` does with a data directory): every final
/// outcome is appended to a file and synced before the charge returns, and loaded again at
/// start. So "at most one successful charge per key" holds across restarts, and tests count
/// charges in the file. [`Sandbox::new`] keeps them in memory only (unit tests).
#[derive(Debug, Default)]
pub struct Sandbox {
    state: Mutex<SandboxState>,
    books: Option<Arc<Books>>,
}

/// The sandbox's books file with a group commit, as a gateway's ledger commits: outcomes
/// decided meanwhile are appended and synced together, by whichever charge flushes first, so
/// hundreds of charges in flight share one `fdatasync` instead of queueing for one each (and
/// no runtime thread blocks on the disk: the async path syncs on the blocking pool).
#[derive(Debug)]
struct Books {
    file: std::fs::File,
    /// Lines decided and not yet written, and the sequence number of the last one.
    queue: Mutex<(Vec<u8>, u64)>,
    /// Held while writing and syncing (sync and async flushers alike).
    writing: Mutex<()>,
    /// Async charges queue here so that one of them flushes for all.
    flusher: tokio::sync::Mutex<()>,
    /// Lines up to this sequence number are durable.
    synced: AtomicU64,
    /// A write or sync failed: the books can no longer commit (fsyncgate: no retry).
    failed: AtomicBool,
    syncs: AtomicU64,
}

impl Books {
    /// Queues `line`; returns its sequence number.
    fn queue(&self, line: &str) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.0.extend_from_slice(line.as_bytes());
        q.1 += 1;
        q.1
    }

    /// Writes and syncs what is queued (blocking). Ok when line `seq` is durable.
    fn flush_now(&self, seq: u64) -> Result<(), PaymentError> {
        use std::io::Write;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if self.synced.load(Ordering::Acquire) < seq && !self.failed.load(Ordering::Acquire) {
            let (buf, upto) = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                (std::mem::take(&mut q.0), q.1)
            };
            self.syncs.fetch_add(1, Ordering::Relaxed);
            match (&self.file).write_all(&buf).and_then(|()| self.file.sync_data()) {
                Ok(()) => self.synced.store(upto, Ordering::Release),
                Err(e) => {
                    tracing::error!(error = %e, "sandbox books cannot be written");
                    self.failed.store(true, Ordering::Release);
                }
            }
        }
        // A gateway that cannot commit has charged nothing: a transient failure.
        if self.synced.load(Ordering::Acquire) >= seq {
            Ok(())
        } else {
            Err(PaymentError::Transient)
        }
    }

    /// The async flush: waits its turn, then flushes on the blocking pool unless a flush
    /// meanwhile made `seq` durable.
    async fn flush(self: &Arc<Self>, seq: u64) -> Result<(), PaymentError> {
        let _turn = self.flusher.lock().await;
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let books = Arc::clone(self);
        tokio::task::spawn_blocking(move || books.flush_now(seq))
            .await
            .map_err(|_| PaymentError::Transient)?
    }
}

/// What a repeated key must match: the charge's invoice, amount, currency and instrument.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Fingerprint {
    invoice_number: String,
    amount: MoneyMinor,
    currency: u16,
    instrument: String,
}

impl Fingerprint {
    fn of(request: &ChargeRequest) -> Self {
        Self {
            invoice_number: request.invoice_number.clone(),
            amount: request.amount,
            currency: request.currency.numeric,
            instrument: request.method.instrument().to_owned(),
        }
    }
}

/// The books' file name in a data directory.
pub const SANDBOX_BOOKS_FILE: &str = "sandbox-books.tsv";

/// One line of the sandbox's books: `key \t invoice \t amount \t currency \t instrument \t
/// outcome` where the outcome is `succeeded:<payment id>` or `declined:<reason>`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BooksLine {
    pub key: IdempotencyKey,
    pub invoice_number: String,
    pub amount: MoneyMinor,
    pub currency: u16,
    pub outcome: ChargeOutcome,
}

/// Reads a sandbox's books (for start-up and tests). Lines that do not parse (a torn last
/// line) are skipped.
pub fn read_books(path: &std::path::Path) -> std::io::Result<Vec<(BooksLine, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text.lines().filter_map(parse_books_line).collect())
}

fn parse_books_line(line: &str) -> Option<(BooksLine, String)> {
    let f: Vec<&str> = line.split('\t').collect();
    let [key, invoice, amount, currency, instrument, outcome] = f[..] else { return None };
    let outcome = match outcome.split_once(':')? {
        ("succeeded", id) => ChargeOutcome::Succeeded { payment_id: PaymentId(id.to_owned()) },
        ("declined", reason) => ChargeOutcome::Declined {
            reason: [
                DeclineReason::CardDeclined,
                DeclineReason::InsufficientFunds,
                DeclineReason::ExpiredCard,
                DeclineReason::MandateRefused,
            ]
            .into_iter()
            .find(|r| r.code() == reason)?,
        },
        _ => return None,
    };
    let line = BooksLine {
        key: IdempotencyKey(key.to_owned()),
        invoice_number: invoice.to_owned(),
        amount: MoneyMinor(amount.parse().ok()?),
        currency: currency.parse().ok()?,
        outcome,
    };
    Some((line, instrument.to_owned()))
}

#[derive(Debug, Default)]
struct SandboxState {
    /// Final outcomes by key, with the request they answered.
    outcomes: HashMap<IdempotencyKey, (Fingerprint, ChargeOutcome)>,
    /// Attempts per key (for the transient and lost-reply instruments).
    attempts: HashMap<IdempotencyKey, u32>,
    charges: Vec<SandboxCharge>,
}

impl Sandbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sandbox whose books are the file `path` (created if missing): the outcomes in it are
    /// loaded, and every new final outcome is appended and synced before the charge returns.
    pub fn with_books(path: &std::path::Path) -> std::io::Result<Self> {
        let mut state = SandboxState::default();
        for (line, instrument) in read_books(path)? {
            let print = Fingerprint {
                invoice_number: line.invoice_number.clone(),
                amount: line.amount,
                currency: line.currency,
                instrument,
            };
            if let (ChargeOutcome::Succeeded { payment_id }, Some(currency)) =
                (&line.outcome, Currency::from_numeric(line.currency))
            {
                state.charges.push(SandboxCharge {
                    key: line.key.clone(),
                    payment_id: payment_id.clone(),
                    amount: line.amount,
                    currency,
                });
            }
            state.outcomes.insert(line.key, (print, line.outcome));
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        // A line torn by a crash is ended, so the next outcome starts a line of its own.
        if std::fs::read(path)?.last().is_some_and(|&b| b != b'\n') {
            std::io::Write::write_all(&mut file, b"\n")?;
        }
        let books = Books {
            file,
            queue: Mutex::new((Vec::new(), 0)),
            writing: Mutex::new(()),
            flusher: tokio::sync::Mutex::new(()),
            synced: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
        };
        Ok(Self { state: Mutex::new(state), books: Some(Arc::new(books)) })
    }

    /// Queues a final outcome's line in the books; returns its sequence number (`None`: no
    /// books). The charge returns once that line is durable (a gateway's commit).
    fn book(&self, request: &ChargeRequest, outcome: &ChargeOutcome) -> Result<Option<u64>, PaymentError> {
        let Some(books) = &self.books else { return Ok(None) };
        if books.failed.load(Ordering::Acquire) {
            return Err(PaymentError::Transient);
        }
        let outcome = match outcome {
            ChargeOutcome::Succeeded { payment_id } => format!("succeeded:{}", payment_id.0),
            ChargeOutcome::Pending { payment_id } => format!("pending:{}", payment_id.0),
            ChargeOutcome::Declined { reason } => format!("declined:{}", reason.code()),
        };
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{outcome}\n",
            request.key.0,
            request.invoice_number,
            request.amount.0,
            request.currency.numeric,
            request.method.instrument()
        );
        Ok(Some(books.queue(&line)))
    }

    /// Syncs of the books file so far (for the benchmark's accounting).
    pub fn books_syncs(&self) -> u64 {
        self.books.as_ref().map_or(0, |b| b.syncs.load(Ordering::Relaxed))
    }

    /// Every successful charge so far, in order.
    pub fn charges(&self) -> Vec<SandboxCharge> {
        self.state.lock().expect("sandbox lock poisoned only by a panic in it").charges.clone()
    }

    /// `charge` without a runtime: the books, if any, are synced on this thread.
    pub fn charge_now(&self, request: &ChargeRequest) -> Result<ChargeOutcome, PaymentError> {
        let decided = self.decide(request)?;
        if let (Some(books), Some(seq)) = (&self.books, decided.booked) {
            books.flush_now(seq)?;
        }
        decided.answer()
    }

    /// The outcome of `request`: already known under its key, or decided now and queued in the
    /// books.
    fn decide(&self, request: &ChargeRequest) -> Result<Decided, PaymentError> {
        use test_instruments as t;
        let mut state = self.state.lock().expect("sandbox lock poisoned only by a panic in it");
        if let Some((first, outcome)) = state.outcomes.get(&request.key) {
            return if *first == Fingerprint::of(request) {
                Ok(Decided { outcome: outcome.clone(), booked: None, lose_reply: false })
            } else {
                Err(PaymentError::KeyReused)
            };
        }
        let attempt = {
            let n = state.attempts.entry(request.key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let instrument = request.method.instrument();
        let outcome = match instrument {
            t::CARD_TRANSIENT | t::IBAN_TRANSIENT if attempt <= t::TRANSIENT_FAILURES => {
                return Err(PaymentError::Transient)
            }
            t::CARD_DECLINED => ChargeOutcome::Declined { reason: DeclineReason::CardDeclined },
            t::CARD_INSUFFICIENT_FUNDS | t::IBAN_INSUFFICIENT_FUNDS => {
                ChargeOutcome::Declined { reason: DeclineReason::InsufficientFunds }
            }
            t::CARD_EXPIRED => ChargeOutcome::Declined { reason: DeclineReason::ExpiredCard },
            t::IBAN_MANDATE_REFUSED => ChargeOutcome::Declined { reason: DeclineReason::MandateRefused },
            _ => ChargeOutcome::Succeeded { payment_id: payment_id(&request.key) },
        };
        let booked = self.book(request, &outcome)?;
        if let ChargeOutcome::Succeeded { payment_id } = &outcome {
            state.charges.push(SandboxCharge {
                key: request.key.clone(),
                payment_id: payment_id.clone(),
                amount: request.amount,
                currency: request.currency,
            });
        }
        state.outcomes.insert(request.key.clone(), (Fingerprint::of(request), outcome.clone()));
        Ok(Decided { outcome, booked, lose_reply: instrument == t::CARD_LOST_REPLY && attempt == 1 })
    }

    pub fn lookup_now(&self, key: &IdempotencyKey) -> Option<ChargeOutcome> {
        let state = self.state.lock().expect("sandbox lock poisoned only by a panic in it");
        state.outcomes.get(key).map(|(_, outcome)| outcome.clone())
    }
}

/// An outcome the sandbox decided, with its books line's sequence number when it was booked
/// just now.
struct Decided {
    outcome: ChargeOutcome,
    booked: Option<u64>,
    /// The lost-reply instrument's first attempt: committed, but the reply never arrives.
    lose_reply: bool,
}

impl Decided {
    /// The gateway's reply, once the outcome is committed.
    fn answer(self) -> Result<ChargeOutcome, PaymentError> {
        if self.lose_reply {
            return Err(PaymentError::Unknown);
        }
        Ok(self.outcome)
    }
}

impl PaymentAdapter for Sandbox {
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeOutcome, PaymentError>> + Send {
        let decided = self.decide(request);
        let books = self.books.clone();
        async move {
            let decided = decided?;
            if let (Some(books), Some(seq)) = (books, decided.booked) {
                books.flush(seq).await?;
            }
            decided.answer()
        }
    }

    fn lookup(
        &self,
        key: &IdempotencyKey,
    ) -> impl Future<Output = Result<Option<ChargeOutcome>, PaymentError>> + Send {
        std::future::ready(Ok(self.lookup_now(key)))
    }
}

/// `sbx_pay_` and 16 hex digits of SipHash-1-3 of the key under a fixed key: the same key
/// always gets the same id, on any machine.
fn payment_id(key: &IdempotencyKey) -> PaymentId {
    let mut hasher = SipHasher13::new_with_keys(0x6779_726f_5f73_6278, 0x7061_796d_656e_7473);
    hasher.write(key.0.as_bytes());
    PaymentId(format!("sbx_pay_{:016x}", hasher.finish()))
}

/// Exponential backoff with full jitter (`[settlement.retry]`): before attempt `n + 1` the
/// worker waits a uniformly random time in `[0, min(cap, base × 2ⁿ⁻¹)]`; after
/// `attempts_max` attempts the payment is dead-lettered. Full jitter spreads retries of many
/// payments that failed together (an outage of the gateway) instead of retrying them in waves.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub cap_ms: u64,
    /// Attempts in all, the first included; 1 to `PAYMENT_ATTEMPTS_MAX`.
    pub attempts_max: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // 0.5 s, 1 s, 2 s … capped at 5 min: eight attempts span about ten minutes at most.
        Self { base_ms: 500, cap_ms: 300_000, attempts_max: 8 }
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Retry {
    After { delay_ms: u64 },
    DeadLetter,
}

/// A source of uniformly distributed `u64`s for jitter.
pub trait JitterSource {
    fn next_u64(&mut self) -> u64;
}

/// SplitMix64: tiny, fast, and good enough for jitter; seeded (e.g. from the key) it makes a
/// run repeatable.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl JitterSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum RetryPolicyError {
    #[error("attempts_max must be 1 to {PAYMENT_ATTEMPTS_MAX}")]
    Attempts,
    #[error("base_ms must be ≥ 1 and ≤ cap_ms")]
    Base,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if !(1..=PAYMENT_ATTEMPTS_MAX).contains(&self.attempts_max) {
            return Err(RetryPolicyError::Attempts);
        }
        if self.base_ms == 0 || self.cap_ms < self.base_ms {
            return Err(RetryPolicyError::Base);
        }
        Ok(())
    }

    /// The upper bound of the wait after `attempts` failed attempts: `min(cap, base × 2^(n−1))`.
    pub fn ceiling_ms(&self, attempts: u32) -> u64 {
        let exponent = attempts.saturating_sub(1).min(63);
        self.base_ms.saturating_mul(1u64 << exponent).min(self.cap_ms)
    }

    /// What to do after `attempts` (≥ 1) failed attempts: wait a random time up to the
    /// ceiling, or give up once `attempts_max` is reached.
    pub fn next_delay(&self, attempts: u32, rng: &mut impl JitterSource) -> Retry {
        if self.attempts_max <= attempts {
            return Retry::DeadLetter;
        }
        let ceiling = self.ceiling_ms(attempts);
        // Modulo bias is below 2⁻³⁰ for ceilings under 2³⁴ ms (half a year): irrelevant here.
        let delay_ms = match ceiling.checked_add(1) {
            Some(span) => rng.next_u64() % span,
            None => rng.next_u64(),
        };
        Retry::After { delay_ms }
    }
}

#[cfg(test)]
mod tests;
