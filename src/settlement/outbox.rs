//! The transactional outbox: settlements waiting for the worker, and the journal entries that
//! create, advance and end them.
//!
//! - The engine writes a [`SettleEntry`] into the same redo record as the debit that ends a
//!   session (CCR-T), an expired session's last record (when it is forgotten), or a CCR-E
//!   DIRECT_DEBITING money debit. The entry is self-contained (account, close time, per rating
//!   group the service, the units paid with money and the money debited), because the session
//!   itself is purged later. It reaches the outbox only after its record was appended, so any
//!   step record the worker appends for it comes later in the journal.
//! - The worker journals each step as a [`Step`]: the invoice number, each charge attempt, its
//!   outcome, and `Done`. Recovery replays them in journal order through [`Outbox::recover`],
//!   so a restarted worker resumes from the last durable step.
//! - Snapshots carry the numbering state and every pending settlement's whole state
//!   ([`Outbox::write_snapshot`]); their entries never repeat a step's ledger effect.
//!
//! Entries are framed by the redo format of `cc` as `tag u8 | length u32 | body`, so `cc` need
//! not know their bodies; the bodies are little-endian fields written and read here.
//!
//! Must not touch: the journal, the ledger (steps name their ledger effects, [`Effect`], and
//! the caller applies them), the clock.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use crate::limits::SETTLEMENTS_PENDING_MAX;
use crate::rating::{Currency, MoneyMinor, UnitKind};

use super::numbering::{NumberAllocated, Sequences};
use super::payment::DeclineReason;

/// Redo entry tags owned by settlement (the engine's are 1–9).
pub const TAG_SETTLE: u8 = 10;
/// A worker step (`Step`).
pub const TAG_SETTLE_STEP: u8 = 11;
/// Snapshots only: one pending settlement with its progress.
pub const TAG_SETTLE_STATE: u8 = 12;
/// Snapshots only: one numbering series and its last number.
pub const TAG_SETTLE_SERIES: u8 = 13;
/// A period's settlements folded into one (`[settlement] aggregate`): the members leave the
/// outbox and the combined entry joins it, in one record.
pub const TAG_SETTLE_GROUP: u8 = 14;

/// Whether `tag` is one of the settlement entries (framed with a length).
pub fn is_settlement_tag(tag: u8) -> bool {
    (TAG_SETTLE..=TAG_SETTLE_GROUP).contains(&tag)
}

/// What identifies one settlement: a session's key with its close time mixed in, or an event's
/// ledger operation key. Written once, in the debit's record (a retransmission adds nothing),
/// and the same after every recovery. Its text form is the payment's
/// idempotency key and the invoice's BT-13-style reference.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SettlementKey(pub [u64; 2]);

impl fmt::Display for SettlementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stl_{:016x}{:016x}", self.0[0], self.0[1])
    }
}

impl SettlementKey {
    /// A 64-bit key for ledger operations made for this settlement (the credit line restored).
    pub fn ledger_op(self) -> u64 {
        (self.0[0] ^ self.0[1].rotate_left(17)) ^ 0x5e77_1e5e_771e_5e77
    }
}

/// One rated service of the settled session: an invoice line.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SettleLine {
    /// Index into the account's package services (the catalog gives its name).
    pub service: u16,
    /// `None` for the single-service form.
    pub rating_group: Option<u32>,
    pub unit: UnitKind,
    /// Units paid with money (bundle units are free and not invoiced).
    pub units: u64,
    /// What was debited for them.
    pub money: MoneyMinor,
}

/// The outbox entry written with the debit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SettleEntry {
    pub key: SettlementKey,
    /// The ledger's account number (the catalog's order).
    pub account: u32,
    pub closed_unix_s: u64,
    pub currency: Currency,
    pub lines: Vec<SettleLine>,
}

impl SettleEntry {
    /// Σ money debited: what the invoice collects on the gross basis.
    pub fn debited(&self) -> MoneyMinor {
        MoneyMinor(self.lines.iter().map(|l| l.money.0).sum())
    }
}

/// How a payment ended (or why there is none).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Charged through the gateway.
    Paid { payment_id: String, at_unix_s: u64 },
    /// The gateway declined: the account is barred, the customer told.
    Declined { reason: DeclineReason, at_unix_s: u64 },
    /// Attempts exhausted (or the gateway refused the key): the invoice stays open.
    DeadLetter { at_unix_s: u64 },
}

/// Why a settlement ended without an invoice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FailReason {
    /// The invoice could not be built (catalog: the customer's address or e-mail, VAT).
    InvoiceRejected = 1,
    /// The account, its customer or the service is not in the catalog.
    NotInCatalog = 2,
}

/// One journaled step of the worker.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Step {
    /// The invoice number: also a numbering record (`Sequences::restore`).
    Numbered { series: String, number: u64 },
    /// Charge attempt `attempt` (1, 2, …) is about to be sent.
    Attempt { attempt: u32 },
    /// A final payment outcome, with its ledger effect: `Paid` credits `credit` back to the
    /// account (the credit line restored), `Declined` bars it.
    Outcome { outcome: Outcome, account: u32, credit: MoneyMinor },
    /// The settlement ended without an invoice (never numbered).
    Failed { reason: FailReason },
    /// Files and e-mails written: the settlement leaves the outbox.
    Done,
}

/// What recovery must apply to the ledger for a step.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Effect {
    /// `Ledger::top_up(account, key, amount)`.
    Credit { account: u32, key: u64, amount: MoneyMinor },
    /// `Ledger::set_status(account, Barred)`.
    Bar { account: u32 },
}

impl Step {
    /// The ledger change this step stands for, if any.
    pub fn effect(&self, key: SettlementKey) -> Option<Effect> {
        match self {
            Self::Outcome { outcome: Outcome::Paid { .. }, account, credit } if 0 < credit.0 => {
                Some(Effect::Credit { account: *account, key: key.ledger_op(), amount: *credit })
            }
            Self::Outcome { outcome: Outcome::Declined { .. }, account, .. } => {
                Some(Effect::Bar { account: *account })
            }
            _ => None,
        }
    }
}

/// A pending settlement and how far it got.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Pending {
    pub entry: SettleEntry,
    /// Series and number, once durable.
    pub number: Option<(String, u64)>,
    /// Charge attempts journaled.
    pub attempts: u32,
    pub outcome: Option<Outcome>,
    /// For a period's combined settlement, how many settlements it folds (0: a single one).
    pub sessions: u32,
}

impl Pending {
    fn new(entry: SettleEntry) -> Self {
        Self { entry, number: None, attempts: 0, outcome: None, sessions: 0 }
    }
}

/// Counters for tests and logs (metrics are issue 7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub added: u64,
    pub done: u64,
    pub failed: u64,
    pub paid: u64,
    pub declined: u64,
    pub dead_letters: u64,
    /// Entries dropped because the outbox was full.
    pub dropped: u64,
    /// Period groups made, and the settlements folded into them.
    pub groups: u64,
    pub grouped: u64,
}

#[derive(Debug, Default)]
struct State {
    /// By arrival order (journal order on recovery).
    pending: BTreeMap<u64, Pending>,
    by_key: HashMap<SettlementKey, u64>,
    next_seq: u64,
    sequences: Sequences,
    stats: OutboxStats,
}

/// The pending settlements and the invoice numbering state. Shared by the engine (which adds
/// entries and recovers records) and the worker (which advances them).
#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    /// Called after an entry is added (the worker's wake-up); set once by the worker.
    waker: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").field("pending", &self.len()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("settlement entry: {0}")]
pub struct EntryError(pub &'static str);

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets what to call when an entry arrives.
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(wake));
    }

    /// Adds an entry (the engine, after its record was appended). A key already pending is a
    /// repeat and changes nothing.
    pub fn add(&self, entry: SettleEntry) {
        let added = {
            let mut s = self.lock();
            if s.by_key.contains_key(&entry.key) {
                false
            } else if SETTLEMENTS_PENDING_MAX <= s.pending.len() {
                s.stats.dropped += 1;
                tracing::error!(key = %entry.key, "settlement outbox full: a settlement is dropped");
                false
            } else {
                let seq = s.next_seq;
                s.next_seq += 1;
                s.by_key.insert(entry.key, seq);
                s.pending.insert(seq, Pending::new(entry));
                s.stats.added += 1;
                true
            }
        };
        if added {
            if let Some(wake) = &*self.waker.lock().unwrap_or_else(|e| e.into_inner()) {
                wake();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> OutboxStats {
        self.lock().stats.clone()
    }

    /// Every pending settlement, in order.
    pub fn pending(&self) -> Vec<Pending> {
        self.lock().pending.values().cloned().collect()
    }

    /// The key of the first pending settlement (in order) that `ready` accepts.
    pub fn first(&self, ready: impl Fn(&Pending) -> bool) -> Option<SettlementKey> {
        self.lock().pending.values().find(|p| ready(p)).map(|p| p.entry.key)
    }

    /// What `pick` returns for each pending settlement, in order (cloning only what it picks).
    pub fn select<T>(&self, pick: impl FnMut(&Pending) -> Option<T>) -> Vec<T> {
        self.lock().pending.values().filter_map(pick).collect()
    }

    /// Folds `members` (pending, not numbered) into `combined` (live; recovery does the same
    /// from the journaled [`encode_group`] record, which the caller appended first).
    pub fn group(&self, members: &[SettlementKey], combined: SettleEntry) -> Result<(), EntryError> {
        apply_group(&mut self.lock(), members, combined)
    }

    pub fn get(&self, key: SettlementKey) -> Option<Pending> {
        let s = self.lock();
        s.by_key.get(&key).and_then(|seq| s.pending.get(seq)).cloned()
    }

    /// The last number allocated in `series`.
    pub fn last_number(&self, series: &str) -> u64 {
        self.lock().sequences.last(series)
    }

    /// Allocates the next number of `series` for `key`, in memory; the caller journals
    /// `Step::Numbered` and uses the number only once it is durable. A settlement that has a
    /// number keeps it.
    pub fn allocate(&self, key: SettlementKey, series: &str) -> Option<NumberAllocated> {
        let mut s = self.lock();
        let seq = *s.by_key.get(&key)?;
        if let Some((series, number)) = &s.pending[&seq].number {
            return Some(NumberAllocated { series: series.clone(), number: *number });
        }
        let allocated = s.sequences.allocate(series);
        let p = s.pending.get_mut(&seq).expect("by_key and pending agree");
        p.number = Some((allocated.series.clone(), allocated.number));
        Some(allocated)
    }

    /// Applies a step the worker journaled (live), as recovery would.
    pub fn apply(&self, key: SettlementKey, step: &Step) -> Result<(), EntryError> {
        apply(&mut self.lock(), key, step)
    }

    /// Replays one settlement entry of a redo record or snapshot (`tag`, `body`) and returns
    /// the ledger effect to apply, if any.
    pub fn recover(&self, tag: u8, body: &[u8]) -> Result<Option<Effect>, EntryError> {
        let mut r = Reader(body);
        let mut s = self.lock();
        let effect = match tag {
            TAG_SETTLE => {
                let entry = read_entry(&mut r)?;
                if !s.by_key.contains_key(&entry.key) {
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    s.by_key.insert(entry.key, seq);
                    s.pending.insert(seq, Pending::new(entry));
                    s.stats.added += 1;
                }
                None
            }
            TAG_SETTLE_GROUP => {
                let n = r.u32()?;
                let mut members = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    members.push(read_key(&mut r)?);
                }
                let combined = read_entry(&mut r)?;
                apply_group(&mut s, &members, combined)?;
                None
            }
            TAG_SETTLE_STEP => {
                let key = read_key(&mut r)?;
                let step = read_step(&mut r)?;
                apply(&mut s, key, &step)?;
                step.effect(key)
            }
            TAG_SETTLE_STATE => {
                let entry = read_entry(&mut r)?;
                let number = match r.u8()? {
                    0 => None,
                    _ => Some((r.string()?, r.u64()?)),
                };
                let attempts = r.u32()?;
                let outcome = match r.u8()? {
                    0 => None,
                    _ => Some(read_outcome(&mut r)?),
                };
                // Added with period groups; absent in snapshots written before them.
                let sessions = if r.0.is_empty() { 0 } else { r.u32()? };
                let seq = s.next_seq;
                s.next_seq += 1;
                s.by_key.insert(entry.key, seq);
                s.pending.insert(seq, Pending { entry, number, attempts, outcome, sessions });
                None
            }
            TAG_SETTLE_SERIES => {
                let series = r.string()?;
                let last = r.u64()?;
                s.sequences.load(&series, last);
                None
            }
            _ => return Err(EntryError("not a settlement tag")),
        };
        if !r.0.is_empty() {
            return Err(EntryError("trailing bytes"));
        }
        Ok(effect)
    }

    /// The numbering state and every pending settlement as framed snapshot entries.
    pub fn write_snapshot(&self, out: &mut Vec<u8>) {
        let s = self.lock();
        for (series, last) in s.sequences.iter() {
            frame(out, TAG_SETTLE_SERIES, |w| {
                put_string(w, series);
                w.extend_from_slice(&last.to_le_bytes());
            });
        }
        for p in s.pending.values() {
            frame(out, TAG_SETTLE_STATE, |w| {
                put_entry(w, &p.entry);
                match &p.number {
                    None => w.push(0),
                    Some((series, number)) => {
                        w.push(1);
                        put_string(w, series);
                        w.extend_from_slice(&number.to_le_bytes());
                    }
                }
                w.extend_from_slice(&p.attempts.to_le_bytes());
                match &p.outcome {
                    None => w.push(0),
                    Some(o) => {
                        w.push(1);
                        put_outcome(w, o);
                    }
                }
                w.extend_from_slice(&p.sessions.to_le_bytes());
            });
        }
    }
}

/// The members leave (each must be pending and unnumbered: the worker folds only those, so
/// anything else is a corrupt journal; a member may be the period's previous group, folded
/// again with newer settlements), the combined entry joins at the end with the members'
/// settlements counted. Replaying it again changes nothing (the members are gone, the combined
/// key is pending or done).
fn apply_group(s: &mut State, members: &[SettlementKey], combined: SettleEntry) -> Result<(), EntryError> {
    if s.by_key.contains_key(&combined.key) {
        return Ok(());
    }
    let mut folded = 0u32;
    for key in members {
        let Some(&seq) = s.by_key.get(key) else { continue };
        let member = &s.pending[&seq];
        if member.number.is_some() || member.attempts > 0 {
            return Err(EntryError("a grouped settlement was numbered"));
        }
        let (sessions, was_group) = (member.sessions.max(1), member.sessions > 0);
        s.pending.remove(&seq);
        s.by_key.remove(key);
        folded += sessions;
        if was_group {
            // Folded again: counted once, as the group it becomes part of.
            s.stats.groups -= 1;
            s.stats.grouped -= u64::from(sessions);
        }
    }
    if folded == 0 {
        // Every member ended already: the group was settled and done before this replay.
        return Ok(());
    }
    let seq = s.next_seq;
    s.next_seq += 1;
    s.by_key.insert(combined.key, seq);
    s.pending.insert(seq, Pending { sessions: folded, ..Pending::new(combined) });
    s.stats.groups += 1;
    s.stats.grouped += u64::from(folded);
    Ok(())
}

fn apply(s: &mut State, key: SettlementKey, step: &Step) -> Result<(), EntryError> {
    if let Step::Numbered { series, number } = step {
        // The numbering record stands on its own: applied even if the settlement is gone.
        s.sequences
            .restore(&NumberAllocated { series: series.clone(), number: *number })
            .map_err(|_| EntryError("an invoice number leaves a gap"))?;
    }
    match step {
        Step::Outcome { outcome: Outcome::Paid { .. }, .. } => s.stats.paid += 1,
        Step::Outcome { outcome: Outcome::Declined { .. }, .. } => s.stats.declined += 1,
        Step::Outcome { outcome: Outcome::DeadLetter { .. }, .. } => s.stats.dead_letters += 1,
        _ => {}
    }
    let Some(&seq) = s.by_key.get(&key) else {
        // Its settlement ended already (a step journaled twice around a crash): nothing left.
        return Ok(());
    };
    let p = s.pending.get_mut(&seq).expect("by_key and pending agree");
    match step {
        Step::Numbered { series, number } => p.number = Some((series.clone(), *number)),
        Step::Attempt { attempt } => p.attempts = p.attempts.max(*attempt),
        Step::Outcome { outcome, .. } => p.outcome = Some(outcome.clone()),
        Step::Failed { .. } | Step::Done => {
            s.pending.remove(&seq);
            s.by_key.remove(&key);
            if matches!(step, Step::Done) {
                s.stats.done += 1;
            } else {
                s.stats.failed += 1;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding: `tag u8 | length u32 | body`, fields little-endian.

/// Appends `tag | length | body` with the body written by `body`.
pub fn frame(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = u32::try_from(out.len() - at - 4).expect("a settlement entry below 4 GiB");
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// The framed outbox entry for a redo record.
pub fn encode_entry(out: &mut Vec<u8>, entry: &SettleEntry) {
    frame(out, TAG_SETTLE, |w| put_entry(w, entry));
}

/// The framed group record of the worker: `count u32 | member keys | combined entry`.
pub fn encode_group(out: &mut Vec<u8>, members: &[SettlementKey], combined: &SettleEntry) {
    frame(out, TAG_SETTLE_GROUP, |w| {
        let n = u32::try_from(members.len()).expect("fewer than 2³² settlements in a group");
        w.extend_from_slice(&n.to_le_bytes());
        for &key in members {
            put_key(w, key);
        }
        put_entry(w, combined);
    });
}

/// The framed step record of the worker.
pub fn encode_step(out: &mut Vec<u8>, key: SettlementKey, step: &Step) {
    frame(out, TAG_SETTLE_STEP, |w| {
        put_key(w, key);
        match step {
            Step::Numbered { series, number } => {
                w.push(1);
                put_string(w, series);
                w.extend_from_slice(&number.to_le_bytes());
            }
            Step::Attempt { attempt } => {
                w.push(2);
                w.extend_from_slice(&attempt.to_le_bytes());
            }
            Step::Outcome { outcome, account, credit } => {
                w.push(3);
                put_outcome(w, outcome);
                w.extend_from_slice(&account.to_le_bytes());
                w.extend_from_slice(&credit.0.to_le_bytes());
            }
            Step::Failed { reason } => {
                w.push(4);
                w.push(*reason as u8);
            }
            Step::Done => w.push(5),
        }
    });
}

fn put_key(w: &mut Vec<u8>, key: SettlementKey) {
    w.extend_from_slice(&key.0[0].to_le_bytes());
    w.extend_from_slice(&key.0[1].to_le_bytes());
}

fn put_string(w: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("settlement strings are short");
    w.extend_from_slice(&len.to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn unit_code(unit: UnitKind) -> u8 {
    match unit {
        UnitKind::Time => 0,
        UnitKind::Octets => 1,
        UnitKind::Events => 2,
    }
}

fn put_entry(w: &mut Vec<u8>, e: &SettleEntry) {
    put_key(w, e.key);
    w.extend_from_slice(&e.account.to_le_bytes());
    w.extend_from_slice(&e.closed_unix_s.to_le_bytes());
    w.extend_from_slice(&e.currency.numeric.to_le_bytes());
    let n = u16::try_from(e.lines.len()).expect("rating groups per session < 65536");
    w.extend_from_slice(&n.to_le_bytes());
    for l in &e.lines {
        w.extend_from_slice(&l.service.to_le_bytes());
        w.extend_from_slice(&l.rating_group.unwrap_or(u32::MAX).to_le_bytes());
        w.push(unit_code(l.unit));
        w.extend_from_slice(&l.units.to_le_bytes());
        w.extend_from_slice(&l.money.0.to_le_bytes());
    }
}

/// A decline reason: its number, and for a gateway code without a variant (5) the code itself.
fn put_decline(w: &mut Vec<u8>, r: &DeclineReason) {
    match r {
        DeclineReason::CardDeclined => w.push(1),
        DeclineReason::InsufficientFunds => w.push(2),
        DeclineReason::ExpiredCard => w.push(3),
        DeclineReason::MandateRefused => w.push(4),
        DeclineReason::Other(code) => {
            w.push(5);
            put_string(w, &code.0);
        }
    }
}

fn put_outcome(w: &mut Vec<u8>, o: &Outcome) {
    match o {
        Outcome::Paid { payment_id, at_unix_s } => {
            w.push(1);
            put_string(w, payment_id);
            w.extend_from_slice(&at_unix_s.to_le_bytes());
        }
        Outcome::Declined { reason, at_unix_s } => {
            w.push(2);
            put_decline(w, reason);
            w.extend_from_slice(&at_unix_s.to_le_bytes());
        }
        Outcome::DeadLetter { at_unix_s } => {
            w.push(3);
            w.extend_from_slice(&at_unix_s.to_le_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError("cut short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, EntryError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, EntryError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, EntryError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Result<i64, EntryError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn string(&mut self) -> Result<String, EntryError> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| EntryError("a string is not UTF-8"))
    }
}

fn read_key(r: &mut Reader<'_>) -> Result<SettlementKey, EntryError> {
    Ok(SettlementKey([r.u64()?, r.u64()?]))
}

fn read_entry(r: &mut Reader<'_>) -> Result<SettleEntry, EntryError> {
    let key = read_key(r)?;
    let account = r.u32()?;
    let closed_unix_s = r.u64()?;
    let currency = Currency::from_numeric(r.u16()?).ok_or(EntryError("unknown currency"))?;
    let n = r.u16()?;
    let mut lines = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let service = r.u16()?;
        let rating_group = Some(r.u32()?).filter(|&rg| rg != u32::MAX);
        let unit = match r.u8()? {
            0 => UnitKind::Time,
            1 => UnitKind::Octets,
            2 => UnitKind::Events,
            _ => return Err(EntryError("unit kind")),
        };
        let units = r.u64()?;
        let money = MoneyMinor(r.i64()?);
        lines.push(SettleLine { service, rating_group, unit, units, money });
    }
    Ok(SettleEntry { key, account, closed_unix_s, currency, lines })
}

fn read_outcome(r: &mut Reader<'_>) -> Result<Outcome, EntryError> {
    Ok(match r.u8()? {
        1 => Outcome::Paid { payment_id: r.string()?, at_unix_s: r.u64()? },
        2 => {
            let reason = match r.u8()? {
                1 => DeclineReason::CardDeclined,
                2 => DeclineReason::InsufficientFunds,
                3 => DeclineReason::ExpiredCard,
                4 => DeclineReason::MandateRefused,
                5 => DeclineReason::Other(super::payment::DeclineCode(r.string()?)),
                _ => return Err(EntryError("decline reason")),
            };
            Outcome::Declined { reason, at_unix_s: r.u64()? }
        }
        3 => Outcome::DeadLetter { at_unix_s: r.u64()? },
        _ => return Err(EntryError("payment outcome")),
    })
}

fn read_step(r: &mut Reader<'_>) -> Result<Step, EntryError> {
    Ok(match r.u8()? {
        1 => Step::Numbered { series: r.string()?, number: r.u64()? },
        2 => Step::Attempt { attempt: r.u32()? },
        3 => {
            let outcome = read_outcome(r)?;
            Step::Outcome { outcome, account: r.u32()?, credit: MoneyMinor(r.i64()?) }
        }
        4 => Step::Failed {
            reason: match r.u8()? {
                1 => FailReason::InvoiceRejected,
                2 => FailReason::NotInCatalog,
                _ => return Err(EntryError("failure reason")),
            },
        },
        5 => Step::Done,
        _ => return Err(EntryError("step kind")),
    })
}

/// One line for `gyro journal inspect`.
pub fn describe(tag: u8, body: &[u8]) -> String {
    let mut r = Reader(body);
    let text = match tag {
        TAG_SETTLE => read_entry(&mut r).map(|e| {
            format!(
                "settle {} account={} closed_unix_s={} debited={} {} lines={}",
                e.key,
                e.account,
                e.closed_unix_s,
                e.debited().0,
                e.currency.code,
                e.lines.len()
            )
        }),
        TAG_SETTLE_STEP => {
            read_key(&mut r).and_then(|k| read_step(&mut r).map(|s| format!("settle {k} {s:?}")))
        }
        TAG_SETTLE_STATE => read_entry(&mut r).map(|e| format!("settle {} pending (snapshot)", e.key)),
        TAG_SETTLE_SERIES => r.string().and_then(|s| r.u64().map(|n| format!("series {s} last={n}"))),
        TAG_SETTLE_GROUP => r.u32().and_then(|n| {
            for _ in 0..n {
                read_key(&mut r)?;
            }
            read_entry(&mut r).map(|e| {
                format!(
                    "settle group {} of {n} account={} debited={} {}",
                    e.key,
                    e.account,
                    e.debited().0,
                    e.currency.code
                )
            })
        }),
        _ => Err(EntryError("not a settlement tag")),
    };
    text.unwrap_or_else(|e| format!("UNREADABLE settlement entry: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: u64) -> SettleEntry {
        SettleEntry {
            key: SettlementKey([k, !k]),
            account: 3,
            closed_unix_s: 1_800_000_000,
            currency: Currency::from_code("EUR").unwrap(),
            lines: vec![SettleLine {
                service: 1,
                rating_group: Some(10),
                unit: UnitKind::Octets,
                units: 5_000_000,
                money: MoneyMinor(123),
            }],
        }
    }

    /// Splits framed entries and replays them.
    fn replay(outbox: &Outbox, mut bytes: &[u8]) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let [tag, rest @ ..] = bytes {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            if let Some(e) = outbox.recover(*tag, &rest[4..4 + len]).unwrap() {
                effects.push(e);
            }
            bytes = &rest[4 + len..];
        }
        effects
    }

    #[test]
    fn entries_and_steps_replay_to_the_live_state_and_snapshots_carry_it() {
        let live = Outbox::new();
        let mut journal = Vec::new();
        for k in 1..=3 {
            encode_entry(&mut journal, &entry(k));
            live.add(entry(k));
        }
        // A repeated entry (a CCR-T journaled twice) is one settlement.
        encode_entry(&mut journal, &entry(1));
        live.add(entry(1));
        let k1 = entry(1).key;
        let n = live.allocate(k1, "GYR-2026").unwrap();
        let steps = [
            Step::Numbered { series: n.series.clone(), number: n.number },
            Step::Attempt { attempt: 1 },
            Step::Outcome {
                outcome: Outcome::Paid { payment_id: "sbx_pay_1".into(), at_unix_s: 5 },
                account: 3,
                credit: MoneyMinor(123),
            },
            Step::Done,
        ];
        for s in &steps {
            encode_step(&mut journal, k1, s);
            live.apply(k1, s).unwrap();
        }
        let k2 = entry(2).key;
        let n2 = live.allocate(k2, "GYR-2026").unwrap();
        assert_eq!(n2.number, 2);
        let declined = Step::Outcome {
            outcome: Outcome::Declined { reason: DeclineReason::CardDeclined, at_unix_s: 6 },
            account: 3,
            credit: MoneyMinor(0),
        };
        for s in [Step::Numbered { series: n2.series.clone(), number: 2 }, declined] {
            encode_step(&mut journal, k2, &s);
            live.apply(k2, &s).unwrap();
        }

        let recovered = Outbox::new();
        let effects = replay(&recovered, &journal);
        assert_eq!(
            effects,
            vec![
                Effect::Credit { account: 3, key: k1.ledger_op(), amount: MoneyMinor(123) },
                Effect::Bar { account: 3 }
            ]
        );
        assert_eq!(recovered.pending(), live.pending());
        assert_eq!(recovered.pending().len(), 2);
        assert_eq!(recovered.last_number("GYR-2026"), 2);

        let mut snap = Vec::new();
        live.write_snapshot(&mut snap);
        let from_snapshot = Outbox::new();
        assert_eq!(replay(&from_snapshot, &snap), vec![], "a snapshot repeats no ledger effect");
        assert_eq!(from_snapshot.pending(), live.pending());
        assert_eq!(from_snapshot.last_number("GYR-2026"), 2);
        // A number after the snapshot's continues the series; one with a gap is refused.
        let mut gap = Vec::new();
        encode_step(&mut gap, entry(3).key, &Step::Numbered { series: "GYR-2026".into(), number: 4 });
        let (tag, body) = (gap[0], &gap[5..]);
        assert!(from_snapshot.recover(tag, body).is_err());
        assert!(describe(tag, body).contains("Numbered"));
    }

    #[test]
    fn allocation_is_once_per_settlement() {
        let o = Outbox::new();
        o.add(entry(7));
        let a = o.allocate(entry(7).key, "S").unwrap();
        let b = o.allocate(entry(7).key, "S").unwrap();
        assert_eq!(a, b);
        assert_eq!(o.last_number("S"), 1);
        assert!(o.allocate(entry(8).key, "S").is_none());
    }
}
