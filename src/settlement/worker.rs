//! The settlement worker: takes pending settlements from the outbox in order (up to
//! `SETTLEMENTS_IN_FLIGHT_MAX` at once, never one twice) and carries each to its end, journaling
//! every step before acting on it, so a crash anywhere resumes from the last durable step
//! (invariant 6: one invoice number, at most one successful charge, one confirmation per
//! settlement).
//!
//! One settlement, step by step ([`Worker::advance`] does one step per call):
//!
//! 1. **Number.** The invoice is built first with a placeholder number and rendered (so a
//!    settlement whose invoice or e-mail cannot be made — no address, a bad e-mail — ends as
//!    `Failed` without taking a number: no gap). Then the number is allocated, `Numbered` is
//!    journaled, and the worker waits until it is durable before using it. The journal is
//!    sequential and the entry reached the outbox only after its record was appended, so this
//!    also proves the outbox entry durable.
//! 2. **Pay** (on_file accounts with a payment method; prepaid ones were paid from the wallet
//!    when the ledger debited them). `Attempt n` is journaled and durable, then the adapter is
//!    called with the settlement key as idempotency key. The final outcome is applied to the
//!    ledger (success: the debited amount is credited back, restoring the credit line; decline:
//!    the account is barred, so its next CCR-I gets 4010) and journaled with that effect. A
//!    transient failure waits per `RetryPolicy` (other settlements go on meanwhile) and is
//!    dead-lettered after `attempts_max`; an unknown outcome, and any attempt found journaled
//!    without an outcome after a restart, is looked up before a new attempt.
//! 3. **Deliver.** The invoice (paid, or open after a decline or dead letter) is written as
//!    `<number>.json` and `<number>.xml` under the invoice directory; with billing records on,
//!    its row (status from the outcome) and the final payment row are written; then the
//!    invoice e-mail and the payment confirmation (or payment-failed notice) go through the
//!    [`Mailer`] (an SMTP relay, or the `.eml` directory); `Done` is journaled and the
//!    settlement leaves the outbox. Files, rows and messages are pure functions of the
//!    journaled state, written atomically or as idempotent upserts under names derived from
//!    the number, so a repeat after a crash rewrites the same bytes and rows; an e-mail may be
//!    sent twice then (at least once), with the same Message-ID.
//!
//! A database error or a transient mail failure (a 4yz reply, a relay that cannot be reached)
//! leaves the step undone: the settlement is tried again after a backoff (`[settlement.retry]`'s
//! delays, never dead-lettered), other settlements go on meanwhile, and `Done` waits. E-mails a
//! relay accepted are remembered in memory, so a retry does not send them again (a restart
//! does). A permanent mail failure (a 5yz: a bad customer address, a refused message) is
//! logged (warn) and the settlement finishes: the invoice and the payment stand, and one bad
//! address must not hold the queue.
//!
//! Must not touch: the engine. Its sockets are the adapter's, the relay's and the database's,
//! each behind its own type. Time comes in through [`Clock`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, Funding, Installed, Live};
use crate::ledger::{AccountId, Ledger};
use crate::limits::SETTLEMENTS_IN_FLIGHT_MAX;

use super::billing::{BillingError, InvoiceStatus, PaymentOutcome, PaymentRecord, PgBilling};
use super::docsync::DocSync;
use super::email::{self, EmlDir, MessageKind, Rendered};
use super::invoice::{Buyer, Date, Invoice, InvoiceDraft, PaymentMeans, UsageLine, Vat};
use super::outbox::{
    encode_group, encode_step, Effect, FailReason, Outbox, Outcome, Pending, SettleEntry, SettleLine,
    SettlementKey, Step,
};
use super::payment::{
    ChargeOutcome, ChargeRequest, CustomerRef, DeclineReason, GatewayRefs, IdempotencyKey, PaymentAdapter,
    PaymentError, PaymentId, PaymentMethod, Retry, SplitMix64,
};
use super::smtp::{Mailer, SendError};
use super::{render, Aggregate, SettlementConfig};

/// Where the worker's step records go: the journal.
pub trait StepLog: Send + Sync + 'static {
    /// Appends `record` now — its place in the journal is fixed when this returns — and returns
    /// what resolves once it is durable. (Numbers must reach the journal in the order they
    /// were allocated, so the append cannot wait for the first poll.)
    fn append_step(&self, record: &[u8]) -> impl Future<Output = Result<(), StepLogError>> + Send + 'static;
}

/// The journal failed: the worker stops (a restart resumes from the journal).
#[derive(Debug, thiserror::Error)]
#[error("journal: {0}")]
pub struct StepLogError(pub String);

/// Unix seconds now (the worker's only clock).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Why a step did not finish. Only `Journal` stops the worker; the others are retried later.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Journal(#[from] StepLogError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("payment: {0}")]
    Payment(PaymentError),
}

/// Why a delivery step must be tried again (nothing journaled, nothing lost).
#[derive(Debug, thiserror::Error)]
enum NotYet {
    #[error("billing records: {0}")]
    Billing(#[from] BillingError),
    #[error("e-mail: {0}")]
    Mail(SendError),
}

/// What one call of [`Worker::advance`] did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Advanced {
    Failed(FailReason),
    Numbered(String),
    /// A payment outcome journaled.
    Paid(Outcome),
    /// Nothing final: retry after this long (transient failure, lookup failed).
    RetryAfter(Duration),
    Done,
}

/// Counters for tests and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub settled: u64,
    pub invoices_written: u64,
    /// E-mails delivered (written as `.eml` files, or accepted by the relay).
    pub emails_written: u64,
    /// E-mails the relay refused for good (logged; the settlement finished anyway).
    pub emails_refused: u64,
    /// Delivery steps put off by a database error or a transient mail failure.
    pub deliveries_deferred: u64,
    pub charge_attempts: u64,
    pub failed: u64,
}

/// Where invoices and e-mails go, and the group sync that makes them durable.
#[derive(Clone, Debug)]
pub struct Output {
    pub invoices: PathBuf,
    pub mail: EmlDir,
    /// Syncs the data directory's filesystem once for every settlement that asked meanwhile.
    pub docs: Arc<DocSync>,
    /// `<invoices>/index.jsonl`: one line per settled invoice (status, payment), appended at
    /// delivery and made durable by the same group sync; the admin API's payments and dead
    /// letters. A delivery repeated after a crash appends the same line again: readers keep the
    /// last line per number.
    pub index: Arc<Mutex<Option<std::fs::File>>>,
}

/// The settlement index's file name under the invoice directory.
pub const INDEX_FILE: &str = "index.jsonl";

impl Output {
    /// `<data dir>/invoices` and `<data dir>/mail`, created if needed.
    pub fn in_data_dir(dir: &Path) -> std::io::Result<Self> {
        let invoices = dir.join("invoices");
        std::fs::create_dir_all(&invoices)?;
        let docs = Arc::new(DocSync::open(dir)?);
        let index = std::fs::OpenOptions::new().create(true).append(true).open(invoices.join(INDEX_FILE))?;
        let index = Arc::new(Mutex::new(Some(index)));
        Ok(Self { invoices, mail: EmlDir::open(dir.join("mail"))?, docs, index })
    }
}

/// The settlement worker. Generic over the journal and the payment adapter, so tests drive it
/// step by step with their own.
pub struct Worker<J: StepLog, P: PaymentAdapter> {
    outbox: Arc<Outbox>,
    ledger: Arc<Ledger>,
    journal: J,
    payments: Arc<P>,
    /// The catalog in force (replaced by a reload): customers, plans and packages by id, as
    /// [`Self::context`] runs for every step. A settlement is invoiced with the catalog in
    /// force when it is numbered (names, addresses, VAT rate), not the one of its session.
    catalog: Arc<Live>,
    cfg: SettlementConfig,
    out: Output,
    /// Where e-mails go: `out.mail` unless [`Self::with_mailer`] says otherwise.
    mailer: Arc<Mailer>,
    /// Billing records, when `[settlement.postgres]` is on. A tokio mutex: a write is a
    /// transaction held across `.await`s, and settlements in flight take turns on the one
    /// connection (the rows are small; the journal's syncs dominate a settlement anyway).
    billing: Option<Arc<tokio::sync::Mutex<PgBilling>>>,
    clock: Clock,
    sched: Mutex<Sched>,
    /// Held from allocating a number until its record is appended: numbers reach the journal
    /// in order (recovery refuses a gap).
    numbering: Mutex<()>,
    /// Shared with the metrics endpoint ([`Self::stats_handle`]).
    stats: Arc<Mutex<WorkerStats>>,
}

/// Which settlements are being advanced or wait for a retry.
#[derive(Default)]
struct Sched {
    /// Settlements waiting for a retry, with the Unix ms they are due.
    not_before: HashMap<SettlementKey, u64>,
    in_flight: HashSet<SettlementKey>,
    /// Settlements whose delivery was put off (database, mail), with what already went out.
    deferred: HashMap<SettlementKey, Deferred>,
    rng: Option<SplitMix64>,
}

/// A delivery put off: how many times (for the backoff) and which e-mails the relay already
/// accepted (not sent again by the retry; a restart forgets this and sends them again).
#[derive(Default)]
struct Deferred {
    times: u32,
    sent: HashSet<MessageKind>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The catalog facts one settlement needs.
struct Context {
    funding: Funding,
    method: Option<PaymentMethod>,
    /// The account's ids at a remote gateway, sent with the method.
    gateway: GatewayRefs,
    draft: InvoiceDraft,
}

impl<J: StepLog, P: PaymentAdapter + 'static> Worker<J, P> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        outbox: Arc<Outbox>,
        ledger: Arc<Ledger>,
        journal: J,
        payments: Arc<P>,
        catalog: Catalog,
        cfg: SettlementConfig,
        out: Output,
        clock: Clock,
    ) -> Self {
        let catalog = Arc::new(Live::new(Installed::new(catalog, "catalog", "")));
        let seed = clock();
        let mailer = Arc::new(Mailer::Files(out.mail.clone()));
        Self {
            outbox,
            ledger,
            journal,
            payments,
            catalog,
            cfg,
            out,
            mailer,
            billing: None,
            clock,
            sched: Mutex::new(Sched { rng: Some(SplitMix64(seed)), ..Sched::default() }),
            numbering: Mutex::new(()),
            stats: Arc::new(Mutex::new(WorkerStats::default())),
        }
    }

    /// Reads the catalog from `live`, the server's catalog in force, which reloads replace.
    pub fn with_catalog(mut self, live: Arc<Live>) -> Self {
        self.catalog = live;
        self
    }

    /// Sends e-mails through `mailer` instead of the `.eml` directory of [`Output`].
    pub fn with_mailer(mut self, mailer: Mailer) -> Self {
        self.mailer = Arc::new(mailer);
        self
    }

    /// Writes billing records to `billing` (connected and migrated by the caller).
    pub fn with_billing(mut self, billing: PgBilling) -> Self {
        self.billing = Some(Arc::new(tokio::sync::Mutex::new(billing)));
        self
    }

    pub fn stats(&self) -> WorkerStats {
        lock(&self.stats).clone()
    }

    /// The worker's counters, readable while it runs (for metrics).
    pub fn stats_handle(&self) -> Arc<Mutex<WorkerStats>> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown`: ready settlements (in outbox order, at most
    /// `SETTLEMENTS_IN_FLIGHT_MAX` at once, never one twice) are advanced one step at a time;
    /// with none ready it sleeps until one is added or a retry is due. A journal failure stops
    /// it. On shutdown the steps under way finish (a cut-off step would be safe too: it is
    /// redone at the next start).
    pub async fn run(self, shutdown: CancellationToken) -> WorkerStats {
        let this = Arc::new(self);
        let notify = Arc::new(tokio::sync::Notify::new());
        let wake = Arc::clone(&notify);
        this.outbox.set_waker(move || wake.notify_one());
        let mut tasks = tokio::task::JoinSet::new();
        let mut stopping = false;
        let mut grouped_at_s = 0;
        loop {
            let now_ms = (this.clock)() * 1000;
            if this.cfg.aggregate != Aggregate::Session && grouped_at_s != now_ms / 1000 {
                // At most once a second: it scans the outbox.
                grouped_at_s = now_ms / 1000;
                this.fold_singles();
            }
            while !stopping && !shutdown.is_cancelled() && tasks.len() < SETTLEMENTS_IN_FLIGHT_MAX {
                let Some(key) = this.next_ready(now_ms) else { break };
                lock(&this.sched).in_flight.insert(key);
                let worker = Arc::clone(&this);
                tasks.spawn(async move { (key, worker.advance(key).await) });
            }
            if tasks.is_empty() && (stopping || shutdown.is_cancelled()) {
                return this.stats();
            }
            let due =
                lock(&this.sched).not_before.values().min().map_or(1_000, |&t| t.saturating_sub(now_ms));
            tokio::select! {
                () = shutdown.cancelled(), if !stopping => stopping = true,
                () = notify.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(due.clamp(10, 1_000))) => {}
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let Ok((key, result)) = joined else {
                        tracing::error!("a settlement step panicked; the worker stops");
                        stopping = true;
                        continue;
                    };
                    stopping |= this.finished(key, result, (this.clock)() * 1000);
                }
            }
        }
    }

    /// Books the end of one step; returns whether the worker must stop.
    fn finished(&self, key: SettlementKey, result: Result<Advanced, WorkerError>, now_ms: u64) -> bool {
        let mut sched = lock(&self.sched);
        sched.in_flight.remove(&key);
        match result {
            Ok(Advanced::RetryAfter(delay)) => {
                sched.not_before.insert(key, now_ms.saturating_add(delay.as_millis() as u64));
            }
            Ok(_) => {
                sched.not_before.remove(&key);
            }
            Err(WorkerError::Journal(e)) => {
                tracing::error!(error = %e, "settlement worker stopped: the journal failed");
                return true;
            }
            Err(e) => {
                tracing::error!(key = %key, error = %e, "settlement step failed; retrying in 1 s");
                sched.not_before.insert(key, now_ms + 1_000);
            }
        }
        false
    }

    /// The first pending settlement not under way and not waiting for a retry. With periods
    /// (`[settlement] aggregate`), single settlements wait to be folded into their period's
    /// group ([`Self::fold_singles`]), and a group waits until its period has ended plus
    /// `aggregate_delay_s`; settlements numbered before go on.
    pub fn next_ready(&self, now_ms: u64) -> Option<SettlementKey> {
        let sched = lock(&self.sched);
        let per_session = self.cfg.aggregate == Aggregate::Session;
        let now_s = now_ms / 1000;
        let delay = self.cfg.aggregate_delay_s;
        self.outbox.first(|p| {
            let key = p.entry.key;
            (per_session
                || p.number.is_some()
                || p.attempts > 0
                || (p.sessions > 0 && p.entry.closed_unix_s.saturating_add(delay) <= now_s))
                && !sched.in_flight.contains(&key)
                && sched.not_before.get(&key).is_none_or(|&due| due <= now_ms)
        })
    }

    /// Folds the pending single settlements into their period's group, one per (account,
    /// currency, period): one journal record each, the members (the new singles and the
    /// period's group so far, if it is not numbered or under way) leaving the outbox and the
    /// combined entry joining it, lines summed per service. Run continuously (once a second),
    /// so the outbox holds one entry per account and open period, not every session of the
    /// period; a group is settled once its period has ended plus `aggregate_delay_s`
    /// ([`Self::next_ready`]). Returns the groups written.
    ///
    /// The record is appended before the combined entry is visible, and every step of it comes
    /// later in the journal, so "its `Numbered` is durable" proves the group durable as it does
    /// for an entry; a fold lost in a crash is made again (its members are still pending).
    pub fn fold_singles(&self) -> usize {
        let aggregate = self.cfg.aggregate;
        if aggregate == Aggregate::Session {
            return 0;
        }
        type Bucket = (u32, u16, u64);
        let bucket = |p: &Pending| -> Bucket {
            let e = &p.entry;
            let end = if p.sessions > 0 {
                e.closed_unix_s
            } else {
                aggregate.period_end(e.closed_unix_s).unwrap_or(0)
            };
            (e.account, e.currency.numeric, end)
        };
        let mut groups: std::collections::BTreeMap<Bucket, Vec<Pending>> = Default::default();
        {
            let sched = lock(&self.sched);
            let foldable = |p: &Pending| {
                p.number.is_none() && p.attempts == 0 && !sched.in_flight.contains(&p.entry.key)
            };
            // The new singles first (in order), then the open groups of their buckets.
            for p in self.outbox.select(|p| (p.sessions == 0 && foldable(p)).then(|| p.clone())) {
                groups.entry(bucket(&p)).or_default().push(p);
            }
            if groups.is_empty() {
                return 0;
            }
            let open = self.outbox.select(|p| {
                (p.sessions > 0 && foldable(p) && groups.contains_key(&bucket(p))).then(|| p.clone())
            });
            for g in open {
                groups.get_mut(&bucket(&g)).expect("selected by bucket").insert(0, g);
            }
        }
        let mut made = 0;
        for ((account, _, end), members) in groups {
            let keys: Vec<SettlementKey> = members.iter().map(|p| p.entry.key).collect();
            let combined = combine(account, end, &members);
            let mut record = Vec::with_capacity(64 + 16 * keys.len());
            encode_group(&mut record, &keys, &combined);
            // Not awaited: see the doc above. A journal failure surfaces at the next step.
            drop(self.journal.append_step(&record));
            if let Err(e) = self.outbox.group(&keys, combined) {
                tracing::error!(error = %e, account, "settlements not grouped");
                continue;
            }
            made += 1;
        }
        made
    }

    /// Takes one journaled step of settlement `key` (see the module doc).
    pub async fn advance(&self, key: SettlementKey) -> Result<Advanced, WorkerError> {
        let Some(p) = self.outbox.get(key) else { return Ok(Advanced::Done) };
        let context = match self.context(&p) {
            Ok(c) => c,
            Err(reason) => return self.fail(&p, reason).await,
        };
        if p.number.is_none() {
            return self.number(&p, context.draft).await;
        }
        if context.funding == Funding::OnFile && p.outcome.is_none() {
            if let Some(method) = context.method.clone() {
                let invoice = self.invoice(&p, context.draft.clone(), None)?;
                return self.pay(&p, &invoice, method, context.gateway.clone()).await;
            }
        }
        self.deliver(&p, context).await
    }

    /// The invoice draft and payment facts from the catalog; `Err` when the settlement cannot
    /// be invoiced at all.
    fn context(&self, p: &Pending) -> Result<Context, FailReason> {
        let e = &p.entry;
        let catalog = self.catalog.current();
        let account = catalog.catalog.accounts.get(e.account as usize).ok_or(FailReason::NotInCatalog)?;
        let customer = catalog.customer(&account.customer).ok_or(FailReason::NotInCatalog)?;
        let plan = catalog.plan(&customer.plan).ok_or(FailReason::NotInCatalog)?;
        let package = catalog.packages.get(&customer.id).ok_or(FailReason::NotInCatalog)?;
        let buyer = Buyer::from_customer(customer).map_err(|_| FailReason::InvoiceRejected)?;
        let vat = Vat::from_plan_rate(plan.vat_rate);
        let lines = e
            .lines
            .iter()
            .map(|l| {
                let service = package.services.get(usize::from(l.service)).ok_or(FailReason::NotInCatalog)?;
                Ok(UsageLine {
                    description: service.name.clone(),
                    rating_group: l.rating_group,
                    unit: l.unit,
                    units: l.units,
                    amount: l.money,
                    vat: vat.clone(),
                })
            })
            .collect::<Result<Vec<_>, FailReason>>()?;
        let issued = i64::try_from(e.closed_unix_s).unwrap_or(i64::MAX);
        let series = self.cfg.numbering.series(Date::from_unix_s(issued).year);
        let (number, series) = match &p.number {
            Some((series, n)) => (self.cfg.numbering.format(series, *n), series.clone()),
            // A placeholder of the real one's shape, to check the invoice before numbering.
            None => (self.cfg.numbering.format(&series, 1), series),
        };
        let payment = match (account.funding, &account.payment) {
            (Funding::Prepaid, _) => PaymentMeans::Wallet,
            (Funding::OnFile, Some(m)) => m.means(),
            // No method on file: the invoice stays open. BG-16 is mandatory in Peppol, and the
            // model has no credit-transfer means yet (it needs the seller's IBAN), so the
            // account code stands in; the invoice shows the amount as payable.
            (Funding::OnFile, None) => PaymentMeans::Wallet,
        };
        let draft = InvoiceDraft {
            number,
            series,
            issued_at_unix_s: issued,
            currency: e.currency,
            seller: self.cfg.seller.clone(),
            buyer,
            basis: self.cfg.price_basis,
            lines,
            payment,
            settlement_key: e.key.to_string(),
        };
        Ok(Context {
            funding: account.funding,
            method: account.payment.clone(),
            gateway: account.gateway.clone(),
            draft,
        })
    }

    async fn fail(&self, p: &Pending, reason: FailReason) -> Result<Advanced, WorkerError> {
        tracing::warn!(key = %p.entry.key, account = p.entry.account, ?reason, "settlement failed: no invoice");
        self.step(p.entry.key, Step::Failed { reason }).await?;
        lock(&self.stats).failed += 1;
        Ok(Advanced::Failed(reason))
    }

    /// Step 1: checks the invoice and its e-mail with a placeholder number, then allocates the
    /// real one and waits until its record is durable.
    async fn number(&self, p: &Pending, draft: InvoiceDraft) -> Result<Advanced, WorkerError> {
        let series = draft.series.clone();
        let renders = Invoice::build(draft)
            .map_err(|e| e.to_string())
            .and_then(|inv| email::check_addresses(&inv).map_err(|e| e.to_string()));
        if let Err(error) = renders {
            tracing::warn!(key = %p.entry.key, %error, "the invoice cannot be made");
            return self.fail(p, FailReason::InvoiceRejected).await;
        }
        let (step, durable) = {
            let _in_order = lock(&self.numbering);
            let allocated = self.outbox.allocate(p.entry.key, &series).expect("the settlement is pending");
            let step = Step::Numbered { series: allocated.series, number: allocated.number };
            let mut record = Vec::with_capacity(64);
            encode_step(&mut record, p.entry.key, &step);
            (step, self.journal.append_step(&record))
        };
        durable.await?;
        self.outbox
            .apply(p.entry.key, &step)
            .map_err(|e| WorkerError::Journal(StepLogError(e.to_string())))?;
        let Step::Numbered { series, number } = step else { unreachable!("built above") };
        Ok(Advanced::Numbered(self.cfg.numbering.format(&series, number)))
    }

    /// The invoice of `p` with its number; paid when `paid` says by what.
    fn invoice(
        &self,
        p: &Pending,
        draft: InvoiceDraft,
        paid: Option<PaymentMeans>,
    ) -> Result<Invoice, WorkerError> {
        let invoice = Invoice::build(draft).map_err(|e| WorkerError::Io {
            path: self.out.invoices.clone(),
            source: std::io::Error::other(format!("invoice {}: {e}", p.entry.key)),
        })?;
        Ok(match paid {
            Some(means) => invoice.mark_paid(means),
            None => invoice,
        })
    }

    /// Step 2: one charge attempt (after a lookup when an earlier one may have reached the
    /// gateway), its outcome applied to the ledger and journaled.
    async fn pay(
        &self,
        p: &Pending,
        invoice: &Invoice,
        method: PaymentMethod,
        gateway: GatewayRefs,
    ) -> Result<Advanced, WorkerError> {
        let key = p.entry.key;
        let idempotency = IdempotencyKey(key.to_string());
        if 0 < p.attempts {
            // An attempt was journaled and its outcome was not: it may have charged.
            match self.payments.lookup(&idempotency).await {
                Ok(Some(outcome)) => return self.outcome(p, invoice, p.attempts, outcome).await,
                Ok(None) => {}
                Err(e) => return Ok(self.retry(p, p.attempts, e)),
            }
        }
        if self.cfg.retry.attempts_max <= p.attempts {
            return self.dead_letter(p).await;
        }
        // The payment rows refer to the invoice's row: it is written (issued) first.
        if let Err(error) = self.record_issued(invoice).await {
            return Ok(self.defer(key, &error.into()));
        }
        let attempt = p.attempts + 1;
        self.step(key, Step::Attempt { attempt }).await?;
        lock(&self.stats).charge_attempts += 1;
        let request = ChargeRequest {
            key: idempotency,
            invoice_number: invoice.number.clone(),
            customer: CustomerRef(invoice.buyer.id.clone()),
            amount: invoice.totals.collected(),
            currency: invoice.currency,
            method,
            gateway,
        };
        match self.payments.charge(&request).await {
            Ok(outcome) => self.outcome(p, invoice, attempt, outcome).await,
            Err(PaymentError::KeyReused) => {
                tracing::error!(key = %key, "the gateway says the key was used for another charge");
                let detail = Some("the idempotency key was used for another charge");
                self.note_payment(invoice, attempt, PaymentOutcome::Failed, None, detail).await;
                self.dead_letter(p).await
            }
            Err(e) if !e.is_retryable() => {
                // A 4xx other than a decline, or a charge that cannot be sent (a missing gateway
                // reference): the same request would be refused again, so no retry.
                tracing::warn!(key = %key, error = %e, "the gateway refused the charge for good: the invoice stays open");
                self.note_payment(invoice, attempt, PaymentOutcome::Failed, None, Some(&e.to_string())).await;
                self.dead_letter(p).await
            }
            Err(e) => {
                let outcome = match e {
                    PaymentError::Unknown => PaymentOutcome::Unknown,
                    _ => PaymentOutcome::Failed,
                };
                self.note_payment(invoice, attempt, outcome, None, Some(&e.to_string())).await;
                Ok(self.retry(p, attempt, e))
            }
        }
    }

    fn retry(&self, p: &Pending, attempts: u32, error: PaymentError) -> Advanced {
        let mut sched = lock(&self.sched);
        let rng = sched.rng.get_or_insert(SplitMix64(0));
        let delay_ms = match self.cfg.retry.next_delay(attempts.max(1), rng) {
            Retry::After { delay_ms } => delay_ms,
            // The next advance dead-letters it (after looking it up once more).
            Retry::DeadLetter => 0,
        };
        tracing::info!(key = %p.entry.key, attempts, %error, delay_ms, "payment not final; retrying");
        Advanced::RetryAfter(Duration::from_millis(delay_ms))
    }

    async fn dead_letter(&self, p: &Pending) -> Result<Advanced, WorkerError> {
        tracing::warn!(key = %p.entry.key, attempts = p.attempts, "payment dead-lettered: the invoice stays open");
        let outcome = Outcome::DeadLetter { at_unix_s: (self.clock)() };
        let step =
            Step::Outcome { outcome: outcome.clone(), account: p.entry.account, credit: Default::default() };
        self.step(p.entry.key, step).await?;
        Ok(Advanced::Paid(outcome))
    }

    /// The gateway's answer to `attempt`: applied, journaled, and its payment row written.
    async fn outcome(
        &self,
        p: &Pending,
        invoice: &Invoice,
        attempt: u32,
        outcome: ChargeOutcome,
    ) -> Result<Advanced, WorkerError> {
        let at_unix_s = (self.clock)();
        let (outcome, credit) = match outcome {
            ChargeOutcome::Succeeded { payment_id } => {
                (Outcome::Paid { payment_id: payment_id.0, at_unix_s }, p.entry.debited())
            }
            ChargeOutcome::Pending { payment_id } => {
                // Accepted, not final (a SEPA debit clearing): never charged again; the next
                // advance looks it up (an attempt is journaled without an outcome) until the
                // gateway says succeeded or declined.
                tracing::info!(key = %p.entry.key, payment_id = %payment_id.0, "payment pending at the gateway");
                let id = Some(payment_id.0.as_str());
                self.note_payment(invoice, attempt, PaymentOutcome::Pending, id, None).await;
                return Ok(self.retry(p, p.attempts.max(1), PaymentError::Unknown));
            }
            ChargeOutcome::Declined { reason } => {
                tracing::warn!(key = %p.entry.key, account = p.entry.account, reason = reason.code(),
                    "payment declined: the account is barred");
                (Outcome::Declined { reason, at_unix_s }, Default::default())
            }
        };
        let step = Step::Outcome { outcome: outcome.clone(), account: p.entry.account, credit };
        // The ledger first, then the record, as the engine does: a crash before the record is
        // durable loses both, and the retried charge gets the same outcome from the gateway.
        if let Some(effect) = step.effect(p.entry.key) {
            apply_effect(&self.ledger, effect);
        }
        self.step(p.entry.key, step).await?;
        // After the record: the charge is a fact whatever the database says. This row is
        // written again, from the journaled outcome, before the settlement is done.
        match &outcome {
            Outcome::Paid { payment_id, .. } => {
                let id = Some(payment_id.as_str());
                self.note_payment(invoice, attempt, PaymentOutcome::Succeeded, id, None).await;
            }
            Outcome::Declined { reason, .. } => {
                let detail = Some(reason.code());
                self.note_payment(invoice, attempt, PaymentOutcome::Declined, None, detail).await;
            }
            Outcome::DeadLetter { .. } => {}
        }
        Ok(Advanced::Paid(outcome))
    }

    /// Writes one payment attempt's row, if billing records are on. Best effort: a failure is
    /// logged and the settlement goes on, because the charge has happened either way; the
    /// final outcome's row is written again by [`Self::record`] before `Done`, while the row of
    /// an attempt that failed on the way (its detail is not journaled) may then be missing.
    async fn note_payment(
        &self,
        invoice: &Invoice,
        attempt: u32,
        outcome: PaymentOutcome,
        payment_id: Option<&str>,
        detail: Option<&str>,
    ) {
        if self.billing.is_none() {
            return;
        }
        let record = PaymentRecord {
            invoice_number: &invoice.number,
            attempt,
            idempotency_key: &invoice.settlement_key,
            outcome,
            payment_id,
            amount: invoice.totals.collected(),
            currency: invoice.currency.code,
            detail,
            at_unix_s: i64::try_from((self.clock)()).unwrap_or(i64::MAX),
        };
        let written = match self.billing().await {
            Some(Ok(db)) => db.record_payment(&record).await,
            Some(Err(error)) => Err(error),
            None => Ok(()),
        };
        if let Err(error) = written {
            tracing::warn!(invoice = %invoice.number, attempt, %error, "payment row not written");
        }
    }

    /// The billing database, if billing records are on; reconnected first when its connection
    /// was lost (the server restarted, the network cut): a failed reconnect is a database error
    /// like any other, and the step is tried again later.
    async fn billing(&self) -> Option<Result<tokio::sync::MutexGuard<'_, PgBilling>, BillingError>> {
        let mut db = self.billing.as_ref()?.lock().await;
        if db.client().is_closed() {
            match PgBilling::connect(&self.cfg.postgres, |name| std::env::var(name).ok()).await {
                Ok(fresh) => {
                    tracing::info!("billing database reconnected");
                    *db = fresh;
                }
                Err(error) => return Some(Err(error)),
            }
        }
        Some(Ok(db))
    }

    /// The invoice's row as issued (before its first charge attempt), if billing records are on.
    async fn record_issued(&self, invoice: &Invoice) -> Result<(), BillingError> {
        match self.billing().await {
            Some(db) => db?.record_invoice(invoice, InvoiceStatus::Issued).await,
            None => Ok(()),
        }
    }

    /// The invoice's row with its final status and the row of the payment that settled it (the
    /// gateway's charge or its decline, or the prepaid wallet), if billing records are on.
    async fn record(
        &self,
        p: &Pending,
        invoice: &Invoice,
        funding: Funding,
        status: InvoiceStatus,
    ) -> Result<(), BillingError> {
        if self.billing.is_none() {
            return Ok(());
        }
        let at = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
        let wallet = format!("wallet-{}", p.entry.key);
        let row = match (&p.outcome, funding) {
            (_, Funding::Prepaid) => {
                Some((1, PaymentOutcome::Wallet, Some(wallet.as_str()), None, invoice.issued_at_unix_s))
            }
            (Some(Outcome::Paid { payment_id, at_unix_s }), _) => {
                Some((p.attempts, PaymentOutcome::Succeeded, Some(payment_id.as_str()), None, at(*at_unix_s)))
            }
            (Some(Outcome::Declined { reason, at_unix_s }), _) => {
                Some((p.attempts, PaymentOutcome::Declined, None, Some(reason.code()), at(*at_unix_s)))
            }
            _ => None,
        };
        let Some(db) = self.billing().await else { return Ok(()) };
        let mut db = db?;
        db.record_invoice(invoice, status).await?;
        if let Some((attempt, outcome, payment_id, detail, at_unix_s)) = row {
            let record = PaymentRecord {
                invoice_number: &invoice.number,
                attempt: attempt.max(1),
                idempotency_key: &invoice.settlement_key,
                outcome,
                payment_id,
                amount: invoice.totals.collected(),
                currency: invoice.currency.code,
                detail,
                at_unix_s,
            };
            db.record_payment(&record).await?;
        }
        Ok(())
    }

    /// Step 3: invoice files, billing rows, e-mails, `Done`.
    async fn deliver(&self, p: &Pending, context: Context) -> Result<Advanced, WorkerError> {
        let key = p.entry.key;
        let means = context.draft.payment.clone();
        let paid = match (&p.outcome, context.funding) {
            (_, Funding::Prepaid) => Some(PaymentMeans::Wallet),
            (Some(Outcome::Paid { .. }), _) => Some(means),
            _ => None,
        };
        let open_without_method = context.funding == Funding::OnFile && context.method.is_none();
        let invoice = self.invoice(p, context.draft, paid)?;
        let notice = match (&p.outcome, context.funding) {
            (_, Funding::Prepaid) => {
                Notice::Paid(PaymentId(format!("wallet-{key}")), invoice.issued_at_unix_s)
            }
            (Some(Outcome::Paid { payment_id, at_unix_s }), _) => {
                Notice::Paid(PaymentId(payment_id.clone()), i64::try_from(*at_unix_s).unwrap_or(i64::MAX))
            }
            (Some(Outcome::Declined { reason, at_unix_s }), _) => {
                Notice::Failed(reason.clone(), i64::try_from(*at_unix_s).unwrap_or(i64::MAX))
            }
            _ => Notice::None,
        };
        let status = match (&p.outcome, context.funding) {
            (_, Funding::Prepaid) | (Some(Outcome::Paid { .. }), _) => InvoiceStatus::Paid,
            (Some(Outcome::Declined { .. }), _) => InvoiceStatus::PaymentFailed,
            (Some(Outcome::DeadLetter { .. }), _) => InvoiceStatus::DeadLetter,
            (None, _) => InvoiceStatus::Issued,
        };
        // Rendering and synced writes are blocking work: off the runtime's threads, which
        // serve Diameter connections.
        let out = self.out.clone();
        let files = tokio::task::spawn_blocking(move || write_files(&out, invoice, notice));
        let (invoice, messages) = files.await.map_err(|e| WorkerError::Io {
            path: self.out.invoices.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
        // The rows before the e-mails, so what a customer is told is on record; both before
        // `Done`, so a failure or a crash in between repeats them (upserts; the same messages).
        if let Err(error) = self.record(p, &invoice, context.funding, status).await {
            return Ok(self.defer(key, &error.into()));
        }
        if let Err(error) = self.mail(key, messages).await {
            return Ok(self.defer(key, &error));
        }
        self.index_line(p, &invoice, status)
            .map_err(|source| WorkerError::Io { path: self.out.invoices.join(INDEX_FILE), source })?;
        // The files and `.eml`s were written unsynced: durable before `Done` stops a repeat.
        self.out
            .docs
            .sync()
            .await
            .map_err(|source| WorkerError::Io { path: self.out.invoices.clone(), source })?;
        lock(&self.stats).invoices_written += 1;
        self.done(key)?;
        lock(&self.sched).deferred.remove(&key);
        lock(&self.stats).settled += 1;
        if open_without_method {
            tracing::warn!(invoice = %invoice.number, account = p.entry.account,
                "on_file account without a payment method: the invoice stays open");
        }
        tracing::info!(
            invoice = %invoice.number,
            key = %key,
            account = p.entry.account,
            total = %invoice.amount(invoice.totals.collected()),
            currency = invoice.currency.code,
            paid = invoice.is_paid(),
            "invoice settled"
        );
        Ok(Advanced::Done)
    }

    /// Appends the invoice's line to the settlement index (one `write` of a whole line on an
    /// `O_APPEND` file: lines of settlements in flight never interleave).
    fn index_line(&self, p: &Pending, invoice: &Invoice, status: InvoiceStatus) -> std::io::Result<()> {
        let (payment_id, at) = match &p.outcome {
            Some(Outcome::Paid { payment_id, at_unix_s }) => (Some(payment_id.clone()), *at_unix_s),
            Some(Outcome::Declined { at_unix_s, .. } | Outcome::DeadLetter { at_unix_s }) => {
                (None, *at_unix_s)
            }
            None => (None, u64::try_from(invoice.issued_at_unix_s).unwrap_or(0)),
        };
        let decline = match &p.outcome {
            Some(Outcome::Declined { reason, .. }) => Some(reason.code().to_owned()),
            _ => None,
        };
        let funding = if p.outcome.is_none() && status == InvoiceStatus::Paid { "wallet" } else { "gateway" };
        let line = serde_json::json!({
            "number": invoice.number,
            "settlement_key": invoice.settlement_key,
            "account": p.entry.account,
            "customer": invoice.buyer.id,
            "status": status.name(),
            "paid_by": funding,
            "total": invoice.amount(invoice.totals.collected()).to_string(),
            "currency": invoice.currency.code,
            "payment_id": payment_id,
            "decline": decline,
            "attempts": p.attempts,
            "sessions": p.sessions.max(1),
            "at_unix_s": at,
        });
        let mut text = line.to_string();
        text.push('\n');
        let mut index = lock(&self.out.index);
        match index.as_mut() {
            Some(file) => file.write_all(text.as_bytes()),
            None => Ok(()),
        }
    }

    /// Delivers the settlement's e-mails in order, skipping those a relay already accepted. A
    /// permanent refusal is logged and counts as handled (see the module doc); a transient
    /// failure stops here, to be tried again.
    async fn mail(&self, key: SettlementKey, messages: Vec<Rendered>) -> Result<(), NotYet> {
        for message in messages {
            let sent = lock(&self.sched).deferred.get(&key).is_some_and(|d| d.sent.contains(&message.kind));
            if sent {
                continue;
            }
            match self.send(&message).await {
                Ok(at) => {
                    tracing::debug!(%at, message_id = %message.message_id, "e-mail delivered");
                    lock(&self.stats).emails_written += 1;
                }
                Err(SendError::Permanent(error)) => {
                    tracing::warn!(invoice = %message.invoice_number, kind = message.kind.slug(),
                        to = %message.to, %error, "e-mail refused for good: not sent again");
                    lock(&self.stats).emails_refused += 1;
                }
                Err(e @ SendError::Transient(_)) => return Err(NotYet::Mail(e)),
            }
            lock(&self.sched).deferred.entry(key).or_default().sent.insert(message.kind);
        }
        Ok(())
    }

    /// One message through the mailer; `.eml` files on the blocking pool (synced writes).
    async fn send(&self, message: &Rendered) -> Result<String, SendError> {
        let Mailer::Files(dir) = &*self.mailer else { return self.mailer.deliver(message).await };
        let (dir, message) = (dir.clone(), message.clone());
        let shown = dir.dir().display().to_string();
        tokio::task::spawn_blocking(move || dir.write_with(&message, false))
            .await
            .map_err(|e| SendError::Transient(e.to_string()))?
            .map(|path| path.display().to_string())
            .map_err(|e| SendError::Transient(format!("{shown}: {e}")))
    }

    /// Puts a delivery off after a database error or a transient mail failure: the next try
    /// after a backoff (the payment retry policy's delays, but never a dead letter: the invoice
    /// and the payment stand, only rows or e-mails wait), other settlements going on meanwhile.
    fn defer(&self, key: SettlementKey, error: &NotYet) -> Advanced {
        let mut sched = lock(&self.sched);
        let deferred = sched.deferred.entry(key).or_default();
        deferred.times = deferred.times.saturating_add(1);
        let times = deferred.times;
        let policy = &self.cfg.retry;
        let n = times.min(policy.attempts_max.saturating_sub(1)).max(1);
        let rng = sched.rng.get_or_insert(SplitMix64(0));
        let delay_ms = match policy.next_delay(n, rng) {
            Retry::After { delay_ms } => delay_ms,
            Retry::DeadLetter => policy.cap_ms,
        };
        drop(sched);
        lock(&self.stats).deliveries_deferred += 1;
        tracing::warn!(key = %key, times, %error, delay_ms, "settlement delivery put off; trying again");
        Advanced::RetryAfter(Duration::from_millis(delay_ms))
    }

    /// Journals `Done` for `key` and applies it without waiting for it to be durable: nothing
    /// follows it, and if a crash loses it the settlement is delivered again — the same files
    /// and rows, the e-mails once more under the same Message-IDs (delivery is at least once
    /// anyway). Not waiting takes one journal sync off every settlement's path. A journal
    /// failure surfaces at the next step that waits.
    fn done(&self, key: SettlementKey) -> Result<(), WorkerError> {
        let mut record = Vec::with_capacity(32);
        encode_step(&mut record, key, &Step::Done);
        drop(self.journal.append_step(&record));
        self.outbox.apply(key, &Step::Done).map_err(|e| WorkerError::Journal(StepLogError(e.to_string())))
    }

    /// Journals `step` for `key`, waits until it is durable, then applies it to the outbox.
    async fn step(&self, key: SettlementKey, step: Step) -> Result<(), WorkerError> {
        let mut record = Vec::with_capacity(64);
        encode_step(&mut record, key, &step);
        self.journal.append_step(&record).await?;
        self.outbox.apply(key, &step).map_err(|e| WorkerError::Journal(StepLogError(e.to_string())))?;
        Ok(())
    }
}

/// The settlement that stands for `members` (one account's, one currency's, one period's):
/// closed at the period's end, its lines the members' summed per (service, rating group,
/// unit), under a key derived from the members' keys (SipHash-1-3 128 of them in order).
fn combine(account: u32, period_end: u64, members: &[Pending]) -> SettleEntry {
    use siphasher::sip128::{Hasher128, SipHasher13};
    use std::hash::Hasher;
    let mut hasher = SipHasher13::new_with_keys(0x6779_726f_6772_6f75, 0x7065_7269_6f64_7321);
    let mut lines: std::collections::BTreeMap<(u16, Option<u32>, u8), SettleLine> = Default::default();
    for p in members {
        hasher.write_u64(p.entry.key.0[0]);
        hasher.write_u64(p.entry.key.0[1]);
        for l in &p.entry.lines {
            let unit = match l.unit {
                crate::rating::UnitKind::Time => 0,
                crate::rating::UnitKind::Octets => 1,
                crate::rating::UnitKind::Events => 2,
            };
            let line = lines.entry((l.service, l.rating_group, unit)).or_insert_with(|| SettleLine {
                units: 0,
                money: crate::rating::MoneyMinor(0),
                ..l.clone()
            });
            line.units = line.units.saturating_add(l.units);
            line.money.0 += l.money.0;
        }
    }
    let hash = hasher.finish128();
    SettleEntry {
        key: SettlementKey([hash.h1, hash.h2]),
        account,
        closed_unix_s: period_end,
        currency: members[0].entry.currency,
        lines: lines.into_values().collect(),
    }
}

/// The e-mail that follows the invoice e-mail.
enum Notice {
    /// A payment confirmation with the payment's reference and time.
    Paid(PaymentId, i64),
    Failed(DeclineReason, i64),
    None,
}

/// Renders the invoice once as JSON and UBL, writes `<number>.json` and `<number>.xml` (each to
/// a temporary name, renamed; unsynced: the group sync before `Done` makes them durable), and
/// renders the invoice e-mail (with the same bytes attached) and the notice. Returns the invoice
/// and the messages, in the order they are to be sent.
fn write_files(
    out: &Output,
    invoice: Invoice,
    notice: Notice,
) -> Result<(Invoice, Vec<Rendered>), WorkerError> {
    let json = serde_json::to_vec_pretty(&render::json(&invoice)).expect("a JSON value serializes");
    let xml = render::ubl(&invoice);
    for (ext, bytes) in [("json", &json), ("xml", &xml)] {
        let path = out.invoices.join(format!("{}.{ext}", invoice.number));
        write_renamed(&path, bytes).map_err(|source| WorkerError::Io { path: path.clone(), source })?;
    }
    let mut messages = vec![email::invoice_email_with(&invoice, xml, json)];
    match notice {
        Notice::Paid(payment, at) => messages.push(email::payment_confirmation(&invoice, &payment, at)),
        Notice::Failed(reason, at) => messages.push(email::payment_failed(&invoice, reason, at)),
        Notice::None => {}
    }
    let rendered = messages.into_iter().collect::<Result<Vec<_>, _>>().map_err(|e| WorkerError::Io {
        path: out.mail.dir().to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok((invoice, rendered))
}

/// A step's ledger change, made live (recovery makes it through `Engine::recover`).
fn apply_effect(ledger: &Ledger, effect: Effect) {
    let result = match effect {
        Effect::Credit { account, key, amount } => ledger.top_up(AccountId(account), key, amount).map(|_| ()),
        Effect::Bar { account } => {
            ledger.set_status(AccountId(account), crate::catalog::AccountStatus::Barred)
        }
    };
    if let Err(r) = result {
        tracing::error!(?effect, ?r, "a settlement's ledger change was refused");
    }
}

/// Writes `bytes` to a temporary name and renames it over `path`, so a reader never sees half a
/// document. Not synced: see [`DocSync`].
fn write_renamed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}
