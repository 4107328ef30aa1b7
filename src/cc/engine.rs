//! The credit-control engine: one `handle` call per CCR, synchronous, with all of a session's
//! work done under that session's map entry (so parallel CCR-Us on one session serialise, and
//! different sessions run in parallel). Lock order is always session → ledger account.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::cca::{self, Amount, Answer, Grant, MsccAnswer};
use super::ccr::{Ccr, Mscc, RequestType, RequestedAction, TariffChangeUsage, Units};
use super::redo::{self, Reader, RecordError, Recorder};
use super::sessions::{Keyed, SessionKey, Table};
use crate::catalog::{AccountStatus, Catalog, Package, Service, SharedPackage};
use crate::diameter::answer::error_answer;
use crate::diameter::{LocalIdentity, MessageRef, ResultCode};
use crate::ledger::{AccountId, BundleIndex, Ledger, NewAccount, NewBundle, Reject, ReservationKey};
use crate::rating::{self, CumulativeUsage, MoneyMinor, Pricer, UnitKind};
use crate::replay::{answer_again, DuplicateCache, KeyCase};
use crate::settlement::outbox::{self, Effect, Outbox, SettleEntry, SettleLine, SettlementKey};

// A child module, so the views read the session's private fields without widening them.
#[path = "session_views.rs"]
mod views;
pub use views::{AnswerView, RatingGroupView, SessionCursor, SessionFilter, SessionState, SessionView};

/// Seconds between the NTP era 0 (1900) and the Unix epoch, for Time AVPs (RFC 6733 §4.3.1).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// How far an Event-Timestamp may be from our clock and still be used for rating.
const EVENT_TIMESTAMP_SKEW_MAX_SECS: u64 = 86_400;

/// Answers remembered per session for duplicate CCRs (Session-Id + CC-Request-Number): the
/// last two, which covers a client that sends one CCR-U per MSCC in parallel (magma#8663). A
/// number older than those is refused (5004), never charged twice.
const SESSION_ANSWERS_MAX: usize = 2;

/// A sweep's changes go to the journal in records of about this size.
const SWEEP_RECORD_BYTES: usize = 64 * 1024;

/// Rating groups one session may use.
const RATING_GROUPS_PER_SESSION_MAX: usize = 64;

/// The two clocks the engine needs: a monotonic one for deadlines and wall time for tariffs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Now {
    pub mono_ms: u64,
    pub unix_secs: u64,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Our identity, written into every answer (error answers included).
    pub local: LocalIdentity,
    /// Added to Validity-Time before a silent session's reservations are released (Tcc).
    pub tcc_grace_ms: u64,
    /// How long a closed or expired session is kept, so late usage is still charged and
    /// retransmissions are still answered.
    pub closed_retention_ms: u64,
    /// The SipHash key under which Session-Ids are hashed (see `sessions`). Random by default;
    /// the journal keeps it so a restarted server finds its sessions again.
    pub session_hash_key: [u8; 16],
    /// Write an outbox entry with the debit that ends a session or an event (settlement,
    /// issue 6). `gyro serve` sets it when it has a journal and so runs the worker: numbers and
    /// charges must survive a restart. Off by default (tests, benchmarks, tools); recovery
    /// replays settlement entries either way.
    pub settle: bool,
}

impl EngineConfig {
    pub fn new(local: &LocalIdentity) -> Self {
        let random = std::collections::hash_map::RandomState::new();
        let (a, b) = (random.hash_one(1u8), random.hash_one(2u8));
        let mut session_hash_key = [0; 16];
        session_hash_key[..8].copy_from_slice(&a.to_le_bytes());
        session_hash_key[8..].copy_from_slice(&b.to_le_bytes());
        Self {
            local: local.clone(),
            tcc_grace_ms: 30_000,
            closed_retention_ms: 600_000,
            session_hash_key,
            settle: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub sessions_expired: usize,
    pub sessions_removed: usize,
    pub reservations_released: usize,
}

/// `RgState::rating_group` of the single-service form (no Rating-Group); also what the ledger
/// key uses for it.
const RG_NONE: u32 = u32::MAX;

fn rg_of(rating_group: Option<u32>) -> u32 {
    rating_group.unwrap_or(RG_NONE)
}

/// Per rating group state of a session, with the decision this rating group last contributed
/// to an answer (`last_*`): enough to write its MSCC again for a retransmitted request, so
/// sessions remember decisions (a few bytes) instead of answer bytes (≈ 200 per answer).
/// Field order is for size: 80 bytes, checked below.
#[derive(Clone, Debug)]
struct RgState {
    /// Usage paid with money, cumulative, by band: charging always rates the total.
    usage: CumulativeUsage,
    /// What `usage` has cost so far (= rounded charge of `usage`).
    debited: MoneyMinor,
    /// Units of the last grant.
    last_units: u64,
    rating_group: u32,
    /// CC-Request-Number of the last decision (valid when `LAST_DECIDED` is set).
    last_number: u32,
    /// Tariff-Time-Change (NTP seconds) of the last grant, 0 for none.
    last_tariff_time_change: u32,
    /// The CC-Request-Number that made the open grant: part of its hold's ledger key, so every
    /// grant has a key of its own (see `redo`).
    grant_number: u32,
    /// Result-Code of the last decision (every Diameter result code is below 65 536).
    last_result: u16,
    /// Index into the package's services.
    service: u16,
    /// `OPEN`, `FROM_BUNDLE`, `LAST_*` bits.
    flags: u8,
    /// Bands in force before and after the Tariff-Time-Change of the open grant.
    band_before: u8,
    band_after: u8,
    /// Why the last decision came out as it did (`Why::code`; 0: not known, a decision
    /// recovered from the journal, whose images do not carry it). Shown by the admin API; it
    /// sits in what was padding.
    last_why: u8,
}

const _: () = assert!(size_of::<RgState>() <= 80);

/// A reservation is open for this rating group.
const OPEN: u8 = 1;
const FROM_BUNDLE: u8 = 2;
const LAST_DECIDED: u8 = 4;
const LAST_GRANTED: u8 = 8;
const LAST_FINAL: u8 = 16;

impl RgState {
    fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Starts the decision for request `number`: success, nothing granted yet.
    fn decide(&mut self, number: u32) {
        self.last_number = number;
        self.last_result = ResultCode::SUCCESS.0 as u16;
        self.flags = (self.flags | LAST_DECIDED) & !(LAST_GRANTED | LAST_FINAL);
    }

    fn refuse(&mut self, result: ResultCode) {
        self.last_result = result_u16(result);
    }

    /// The MSCC answer of the last decision (TS 32.299 §6.3): Result-Code, and for a grant the
    /// units, Validity-Time, Tariff-Time-Change, quota threshold, Quota-Holding-Time and FUI,
    /// the last four as the plan configures them.
    fn answer<'p>(&self, m: &Mscc<'_>, service: &'p Service) -> MsccAnswer<'p> {
        let mut a = MsccAnswer::success(m.rating_group, m.service_id);
        a.result = ResultCode(u32::from(self.last_result));
        if self.is(LAST_GRANTED) {
            let units = self.last_units;
            let tariff_time_change = Some(self.last_tariff_time_change).filter(|&t| t != 0);
            a.grant = Some(Grant { unit: service.rate.unit, units, tariff_time_change });
            a.validity_time_s = Some(service.validity_time_s);
            a.threshold = service
                .threshold_percent
                .map(|p| u32::try_from(units.saturating_mul(u64::from(p)) / 100).unwrap_or(u32::MAX));
            a.quota_holding_time_s = service.quota_holding_time_s;
        }
        if self.is(LAST_FINAL) {
            a.final_unit = Some(&service.final_unit_action);
            a.final_unit_rules = &service.restriction_filter_rules;
        }
        a
    }
}

/// Every Diameter Result-Code is below 65 536 (RFC 6733 §7.1: 1xxx–5xxx).
fn result_u16(result: ResultCode) -> u16 {
    u16::try_from(result.0).unwrap_or(ResultCode::UNABLE_TO_COMPLY.0 as u16)
}

/// The command-level part of a remembered answer; the MSCCs are in the rating groups.
#[derive(Clone, Copy, Debug, Default)]
struct Recent {
    number: u32,
    /// Of the request body, to tell a retransmission from a different request under the same
    /// number. 32 bits: a collision only makes such a (buggy) request get the first answer
    /// instead of an error; it can never charge twice.
    fingerprint: u32,
    result: u16,
    /// `RECENT_*` bits.
    flags: u8,
    /// The Cost-Information of an advice-of-charge CCR-U, or the Remaining-Balance of a CCR-T
    /// (whose cost, the session total, no longer changes once the session is closed).
    money: i64,
}

const _: () = assert!(size_of::<Recent>() <= 24);

const RECENT_USED: u8 = 1;
const RECENT_COST: u8 = 2;
const RECENT_REMAINING: u8 = 4;
const RECENT_LOW_BALANCE: u8 = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum State {
    Open = 0,
    /// Terminated by CCR-T at `deadline_ms`; kept for retransmissions.
    Closed,
    /// Silent past its deadline; its holds were released. Late usage is still charged.
    Expired,
}

/// A session's Session-Id and the Origin-Host of the CCR-I that opened it, in one allocation:
/// `host length u16 LE | host | Session-Id`. One boxed slice (16 bytes in the slot, the two
/// strings' length plus two on the heap) is the cheapest honest form: two `Box<str>` would
/// cost 16 bytes more per session, and interning the host (`Arc<str>`, a few PGWs hold millions
/// of sessions) would save its bytes but cost a fat pointer and a lock at every CCR-I. Empty
/// (no allocation) for a session recovered from a record written before gyro kept them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Names(Box<[u8]>);

impl Names {
    fn new(session_id: &str, origin_host: &str) -> Self {
        // An AVP's data is shorter than a message (at most 64 KiB with its headers), so an
        // Origin-Host's length fits in 16 bits.
        let host_len = u16::try_from(origin_host.len()).expect("an AVP's data is below 64 KiB");
        let mut bytes = Vec::with_capacity(2 + origin_host.len() + session_id.len());
        bytes.extend_from_slice(&host_len.to_le_bytes());
        bytes.extend_from_slice(origin_host.as_bytes());
        bytes.extend_from_slice(session_id.as_bytes());
        Self(bytes.into_boxed_slice())
    }

    /// Checks bytes read from a record: the layout `new` writes, both parts UTF-8.
    fn from_record(bytes: &[u8]) -> Result<Self, RecordError> {
        let names = Self(bytes.into());
        if names.split().is_none() {
            return Err(RecordError("a session's Session-Id and Origin-Host"));
        }
        Ok(names)
    }

    fn is_known(&self) -> bool {
        !self.0.is_empty()
    }

    /// (Session-Id, Origin-Host), `None` when not known.
    fn split(&self) -> Option<(&str, &str)> {
        let (len, rest) = self.0.split_first_chunk::<2>()?;
        let (host, id) = rest.split_at_checked(usize::from(u16::from_le_bytes(*len)))?;
        Some((std::str::from_utf8(id).ok()?, std::str::from_utf8(host).ok()?))
    }
}

/// One session: 200 bytes with one rating group (checked below), plus ≈ 10 bytes in the
/// session table's index, its `names` on the heap and the ledger hold of its open grant.
#[derive(Debug)]
struct Session {
    key: SessionKey,
    /// The Session-Id and the CCR-I's Origin-Host, for the admin API and for server-initiated
    /// requests (RAR/ASR need the peer that holds the session).
    names: Names,
    package: SharedPackage,
    /// Open: the Tcc deadline. Closed: when it was closed. Expired: the deadline it missed.
    deadline_ms: u64,
    account: AccountId,
    context: u32,
    /// The highest CC-Request-Number answered.
    highest: u32,
    state: State,
    recent: [Recent; SESSION_ANSWERS_MAX],
    rgs: SmallVec<[RgState; 1]>,
}

const _: () = assert!(size_of::<Session>() <= 200);

impl Keyed for Session {
    fn key(&self) -> SessionKey {
        self.key
    }
}

impl Session {
    /// The ledger key of the hold that request `grant_number` made for `rating_group`.
    fn ledger_key(&self, rating_group: u32, grant_number: u32) -> ReservationKey {
        let grant = u64::from(grant_number).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ReservationKey { session: self.key.0[0] ^ grant, rating_group }
    }

    fn hold_key(&self, idx: usize) -> ReservationKey {
        self.ledger_key(self.rgs[idx].rating_group, self.rgs[idx].grant_number)
    }

    /// Appends the session's whole state but its names to a redo record (`redo::TAG_SESSION`):
    /// what every CCR-U, CCR-T and sweep writes. The names never change after the CCR-I, whose
    /// record (`encode_named`) carries them, so leaving them out keeps a CCR-U's record as
    /// short as before; recovery keeps the names of the session an image replaces.
    fn encode(&self, rec: &mut Recorder, now: Now) {
        rec.u8(redo::TAG_SESSION);
        self.encode_body(rec, now);
    }

    /// The image with the names (`redo::TAG_SESSION_NAMED`): the CCR-I's record and snapshots.
    /// A session whose names are not known (recovered from an older record) is written as
    /// `encode` writes it.
    fn encode_named(&self, rec: &mut Recorder, now: Now) {
        if !self.names.is_known() {
            return self.encode(rec, now);
        }
        rec.u8(redo::TAG_SESSION_NAMED);
        self.encode_body(rec, now);
        rec.bytes_field(&self.names.0);
    }

    fn encode_body(&self, rec: &mut Recorder, now: Now) {
        rec.u64(self.key.0[0]).u64(self.key.0[1]);
        rec.u32(self.account.0).u32(self.context).u32(self.highest);
        rec.u8(self.state as u8).u64(redo::unix_ms(now, self.deadline_ms));
        for r in &self.recent {
            rec.u32(r.number).u32(r.fingerprint).u16(r.result).u8(r.flags).i64(r.money);
        }
        rec.u8(u8::try_from(self.rgs.len()).expect("RATING_GROUPS_PER_SESSION_MAX < 256"));
        for g in &self.rgs {
            for u in g.usage.0 {
                rec.u64(u);
            }
            rec.i64(g.debited.0).u64(g.last_units).u32(g.rating_group).u32(g.last_number);
            rec.u32(g.last_tariff_time_change).u32(g.grant_number).u16(g.last_result).u16(g.service);
            rec.u8(g.flags).u8(g.band_before).u8(g.band_after);
        }
    }

    /// Reads back what `encode` or `encode_named` wrote (after the tag, which says which). The
    /// package comes from the account (the catalog loaded at start); a service index it does
    /// not have is an error.
    fn decode(
        r: &mut Reader<'_>,
        tag: u8,
        now: Now,
        package: impl FnOnce(AccountId) -> Option<SharedPackage>,
    ) -> Result<Self, RecordError> {
        let image = SessionImage::read(r, tag)?;
        let package = package(image.account).ok_or(RecordError("a session's account has no package"))?;
        for g in &image.rgs {
            let bands_ok = usize::from(g.band_before.max(g.band_after)) <= rating::BANDS_PER_RATE_MAX;
            if usize::from(g.service) >= package.services.len() || !bands_ok {
                return Err(RecordError("a rating group's service is not in the account's package"));
            }
        }
        Ok(Self {
            key: image.key,
            names: image.names,
            package,
            deadline_ms: redo::mono_ms(now, image.deadline_unix_ms),
            account: image.account,
            context: image.context,
            highest: image.highest,
            state: image.state,
            recent: image.recent,
            rgs: image.rgs,
        })
    }

    /// Σ what the session's usage has cost.
    fn total_cost(&self) -> MoneyMinor {
        MoneyMinor(self.rgs.iter().map(|r| r.debited.0).sum())
    }

    /// The outbox entry of the session's end: one line per rating group that used money-paid
    /// units or was debited. `None` when nothing was debited (nothing to invoice).
    fn settle_entry(&self, now: Now) -> Option<SettleEntry> {
        if self.total_cost().0 <= 0 {
            return None;
        }
        let lines = self
            .rgs
            .iter()
            .filter(|g| g.debited.0 != 0 || g.usage.0.iter().any(|&u| u != 0))
            .map(|g| SettleLine {
                service: g.service,
                rating_group: (g.rating_group != RG_NONE).then_some(g.rating_group),
                unit: self.package.services[usize::from(g.service)].rate.unit,
                units: g.usage.0.iter().fold(0u64, |a, &u| a.saturating_add(u)),
                money: g.debited,
            })
            .collect();
        // The session's key with its close time mixed in: a retransmitted CCR-T adds no entry
        // (it is answered from the session), and a client that reuses a Session-Id after the
        // session was forgotten (RFC 6733 §8.8 says it must not) still gets a settlement of
        // its own rather than one mistaken for the first.
        let closed = redo::unix_ms(now, now.mono_ms).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Some(SettleEntry {
            key: SettlementKey([self.key.0[0], self.key.0[1] ^ closed]),
            account: self.account.0,
            closed_unix_s: now.unix_secs,
            currency: self.package.currency,
            lines,
        })
    }
}

/// A session as a redo record holds it: everything but the package (which recovery takes from
/// the account) with its deadline in Unix time.
struct SessionImage {
    key: SessionKey,
    /// Empty for `TAG_SESSION`.
    names: Names,
    account: AccountId,
    context: u32,
    highest: u32,
    state: State,
    deadline_unix_ms: u64,
    recent: [Recent; SESSION_ANSWERS_MAX],
    rgs: SmallVec<[RgState; 1]>,
}

impl SessionImage {
    /// `tag` is `TAG_SESSION` (the image alone) or `TAG_SESSION_NAMED` (the image, then the
    /// names as a length-prefixed field).
    fn read(r: &mut Reader<'_>, tag: u8) -> Result<Self, RecordError> {
        let mut image = Self::read_body(r)?;
        if tag == redo::TAG_SESSION_NAMED {
            image.names = Names::from_record(r.bytes_field()?)?;
        }
        Ok(image)
    }

    fn read_body(r: &mut Reader<'_>) -> Result<Self, RecordError> {
        let key = SessionKey([r.u64()?, r.u64()?]);
        let (account, context, highest) = (AccountId(r.u32()?), r.u32()?, r.u32()?);
        let state = match r.u8()? {
            0 => State::Open,
            1 => State::Closed,
            2 => State::Expired,
            _ => return Err(RecordError("session state")),
        };
        let deadline_unix_ms = r.u64()?;
        let mut recent = [Recent::default(); SESSION_ANSWERS_MAX];
        for slot in &mut recent {
            *slot = Recent {
                number: r.u32()?,
                fingerprint: r.u32()?,
                result: r.u16()?,
                flags: r.u8()?,
                money: r.i64()?,
            };
        }
        let count = usize::from(r.u8()?);
        if count > RATING_GROUPS_PER_SESSION_MAX {
            return Err(RecordError("rating groups"));
        }
        let mut rgs = SmallVec::new();
        for _ in 0..count {
            let mut usage = CumulativeUsage::default();
            for u in &mut usage.0 {
                *u = r.u64()?;
            }
            rgs.push(RgState {
                usage,
                debited: MoneyMinor(r.i64()?),
                last_units: r.u64()?,
                rating_group: r.u32()?,
                last_number: r.u32()?,
                last_tariff_time_change: r.u32()?,
                grant_number: r.u32()?,
                last_result: r.u16()?,
                service: r.u16()?,
                flags: r.u8()?,
                band_before: r.u8()?,
                band_after: r.u8()?,
                last_why: 0,
            });
        }
        Ok(Self {
            key,
            names: Names::default(),
            account,
            context,
            highest,
            state,
            deadline_unix_ms,
            recent,
            rgs,
        })
    }

    /// One line for `gyro journal inspect`.
    fn describe(&self) -> String {
        let mut s = format!(
            "session {:016x}{:016x} account={} state={:?} highest={} deadline_unix_ms={}",
            self.key.0[0], self.key.0[1], self.account.0, self.state, self.highest, self.deadline_unix_ms
        );
        if let Some((session_id, origin_host)) = self.names.split() {
            s.push_str(&format!(" session_id={session_id:?} origin_host={origin_host:?}"));
        }
        for g in &self.rgs {
            let rg = if g.rating_group == RG_NONE { "-".to_owned() } else { g.rating_group.to_string() };
            s.push_str(&format!(
                " [rg={rg} usage={:?} debited={} open={} last=#{}:{}]",
                g.usage.0,
                g.debited.0,
                g.is(OPEN),
                g.last_number,
                g.last_result
            ));
        }
        s
    }
}

/// Which records `gyro journal inspect` prints.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    pub account: Option<u32>,
    /// A Session-Id and its hash under the data directory's key.
    pub session: Option<(String, [u64; 2])>,
}

/// One line per redo record for `gyro journal inspect`: each entry decoded, `; ` between them;
/// `None` when the filter excludes the record (it mentions neither the account nor the session).
pub fn describe_record(record: &[u8], filter: &RecordFilter) -> Option<String> {
    let mut parts = Vec::new();
    let mut accounts = Vec::new();
    let mut sessions = Vec::new();
    let mut event_ids = Vec::new();
    let mut r = Reader::new(record);
    let result: Result<(), RecordError> = (|| {
        while !r.is_empty() {
            match r.u8()? {
                tag @ (redo::TAG_SESSION | redo::TAG_SESSION_NAMED) => {
                    let image = SessionImage::read(&mut r, tag)?;
                    accounts.push(image.account.0);
                    sessions.push(image.key.0);
                    parts.push(image.describe());
                }
                redo::TAG_CATALOG => {
                    let len = usize::from(r.u16()?);
                    let digest = String::from_utf8_lossy(r.take(len)?).into_owned();
                    parts.push(format!("catalog installed digest={digest} unix_ms={}", r.u64()?));
                }
                redo::TAG_CATALOG_EDIT => {
                    let unix_ms = r.u64()?;
                    let len = r.u32()? as usize;
                    let edit = String::from_utf8_lossy(r.take(len)?).into_owned();
                    parts.push(format!("catalog edit unix_ms={unix_ms} {edit}"));
                }
                redo::TAG_SESSION_GONE => {
                    let key = [r.u64()?, r.u64()?];
                    sessions.push(key);
                    parts.push(format!("session {:016x}{:016x} forgotten", key[0], key[1]));
                }
                redo::TAG_RESERVE => {
                    let (account, key) = r.key()?;
                    let (money, bundle, units, deadline) = (r.i64()?, r.u16()?, r.u64()?, r.u64()?);
                    accounts.push(account.0);
                    let bundle = if bundle == u16::MAX {
                        String::new()
                    } else {
                        format!(" bundle={bundle} units={units}")
                    };
                    parts.push(format!(
                        "reserve account={} hold={:016x}/{} money={money}{bundle} deadline_unix_ms={deadline}",
                        account.0, key.session, key.rating_group
                    ));
                }
                redo::TAG_COMMIT => {
                    let (account, key) = r.key()?;
                    let (money, units) = (r.i64()?, r.u64()?);
                    accounts.push(account.0);
                    parts.push(format!(
                        "commit account={} hold={:016x}/{} money={money} units={units}",
                        account.0, key.session, key.rating_group
                    ));
                }
                redo::TAG_RELEASE => {
                    let (account, key) = r.key()?;
                    accounts.push(account.0);
                    parts.push(format!(
                        "release account={} hold={:016x}/{}",
                        account.0, key.session, key.rating_group
                    ));
                }
                redo::TAG_DEBIT => {
                    let (account, op, amount, overdraft) = (r.u32()?, r.u64()?, r.i64()?, r.u8()?);
                    accounts.push(account);
                    let late = if overdraft == 1 { " (usage: overdraft allowed)" } else { "" };
                    parts.push(format!("debit account={account} key={op:016x} money={amount}{late}"));
                }
                redo::TAG_REFUND => {
                    let (account, op, amount) = (r.u32()?, r.u64()?, r.i64()?);
                    accounts.push(account);
                    parts.push(format!("refund account={account} key={op:016x} money={amount}"));
                }
                redo::TAG_TOP_UP => {
                    let (account, op, amount) = (r.u32()?, r.u64()?, r.i64()?);
                    accounts.push(account);
                    parts.push(format!("top-up (admin) account={account} key={op:016x} money={amount}"));
                }
                redo::TAG_STATUS => {
                    let (account, barred) = (r.u32()?, r.u8()?);
                    accounts.push(account);
                    let status = if barred == 1 { "barred" } else { "active" };
                    parts.push(format!("status (admin) account={account} {status}"));
                }
                redo::TAG_EVENT => {
                    let id = String::from_utf8_lossy(r.bytes_field()?).into_owned();
                    let (number, _print) = (r.u32()?, r.u32()?);
                    let answer = r.bytes_field()?.len();
                    parts.push(format!("event answer session-id={id:?} number={number} ({answer} bytes)"));
                    event_ids.push(id);
                }
                t if outbox::is_settlement_tag(t) => {
                    let body = r.bytes_field()?;
                    // The record's session image names the session; the entry names the account.
                    if t == outbox::TAG_SETTLE && 20 <= body.len() {
                        accounts.push(u32::from_le_bytes(body[16..20].try_into().expect("4 bytes")));
                    }
                    parts.push(outbox::describe(t, body));
                }
                _ => return Err(RecordError("unknown entry tag")),
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        parts.push(format!("UNREADABLE: {e}"));
    }
    let wanted_account = filter.account.is_none_or(|a| accounts.contains(&a));
    let wanted_session = filter
        .session
        .as_ref()
        .is_none_or(|(id, key)| sessions.contains(key) || event_ids.iter().any(|e| e == id));
    (wanted_account && wanted_session).then(|| parts.join("; "))
}

/// Price packages by account: interned, so a million accounts on a few plans cost 4 bytes
/// each here (the accounts are dense numbers).
#[derive(Default)]
struct Packages {
    list: Vec<SharedPackage>,
    by_pointer: std::collections::HashMap<usize, u32>,
    /// Index into `list`, or `u32::MAX`.
    by_account: Vec<u32>,
}

impl Packages {
    /// Interns `package` (by pointer) and assigns it to `account`.
    fn set(&mut self, account: AccountId, package: &SharedPackage) {
        let Self { list, by_pointer, by_account } = self;
        let index = *by_pointer.entry(Arc::as_ptr(package) as usize).or_insert_with(|| {
            list.push(Arc::clone(package));
            u32::try_from(list.len() - 1).expect("fewer than 2^32 packages")
        });
        let slot = account.0 as usize;
        if by_account.len() <= slot {
            by_account.resize(slot + 1, u32::MAX);
        }
        by_account[slot] = index;
    }

    fn get(&self, account: AccountId) -> Option<&SharedPackage> {
        self.list.get(*self.by_account.get(account.0 as usize)? as usize)
    }
}

/// Where the engine puts the redo record of each request that changed something (see `redo`).
pub trait RecordSink {
    /// Makes `record` durable, then sends `answer`, the bytes the engine just wrote for the
    /// request. An empty `record` asks only that `answer` not leave before the records appended
    /// earlier are durable (a replayed answer must not overtake its original's record). Returns
    /// whether the sink took the answer; if not, the caller sends it as usual.
    fn append(&mut self, record: &[u8], answer: &[u8]) -> bool;
}

/// Records go nowhere: for tests, benchmarks and the in-memory run.
pub struct NoJournal;

impl RecordSink for NoJournal {
    fn append(&mut self, _record: &[u8], _answer: &[u8]) -> bool {
        false
    }
}

thread_local! {
    /// One record buffer per thread, reused: building a record does not allocate in steady state.
    static RECORDER: std::cell::RefCell<Recorder> = std::cell::RefCell::new(Recorder::new());
}

/// The record of the request being handled and where it goes.
struct Tx<'a> {
    rec: &'a mut Recorder,
    sink: &'a mut dyn RecordSink,
    deferred: bool,
}

impl Tx<'_> {
    /// Hands the record and the answer written at `out[start..]` to the sink.
    fn send(&mut self, out: &mut BytesMut, start: usize) {
        if self.sink.append(self.rec.bytes(), &out[start..]) {
            out.truncate(start);
            self.deferred = true;
        }
    }
}

/// The credit-control engine.
pub struct Engine {
    cfg: EngineConfig,
    ledger: Arc<Ledger>,
    packages: RwLock<Packages>,
    sessions: Table<Session>,
    /// Event (CCR-E) answers by (Session-Id, CC-Request-Number): events have no session.
    events: DuplicateCache,
    /// Settlements waiting for the worker (entries added after their record was appended).
    outbox: Arc<Outbox>,
    counters: EngineCounters,
    /// The catalog in force and when each range of accounts began, written into snapshots.
    catalog_state: Mutex<redo::CatalogState>,
}

/// An operator's change to an account (the admin API), journaled like a CCR's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOp {
    /// Credits `amount` once per `key`.
    TopUp { account: AccountId, key: u64, amount: MoneyMinor },
    /// Debits `amount` once per `key`, into overdraft if need be.
    Debit { account: AccountId, key: u64, amount: MoneyMinor },
    /// Bars (the next CCR-I gets 4010) or unbars.
    Status { account: AccountId, status: AccountStatus },
}

/// Counters for metrics: relaxed atomic adds, one per grant or replayed answer (the metrics
/// endpoint reads them; nothing decides by them).
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Units granted (reserved) by unit kind, bundles and money alike.
    pub granted_seconds: AtomicU64,
    pub granted_octets: AtomicU64,
    pub granted_events: AtomicU64,
    /// Retransmitted CCRs answered again from the session or the event cache.
    pub replayed: AtomicU64,
}

impl EngineCounters {
    fn granted(&self, unit: UnitKind, units: u64) {
        let counter = match unit {
            UnitKind::Time => &self.granted_seconds,
            UnitKind::Octets => &self.granted_octets,
            UnitKind::Events => &self.granted_events,
        };
        counter.fetch_add(units, Ordering::Relaxed);
    }
}

/// Why a grant could not be made for one MSCC.
fn reject_code(r: Reject) -> ResultCode {
    match r {
        Reject::AccountNotFound => ResultCode::USER_UNKNOWN,
        Reject::AccountBarred => ResultCode::END_USER_SERVICE_DENIED,
        Reject::InsufficientFunds | Reject::InsufficientUnits => ResultCode::CREDIT_LIMIT_REACHED,
        _ => ResultCode::UNABLE_TO_COMPLY,
    }
}

/// A fast, stable fingerprint of a request body, to tell a retransmission (same bytes) from a
/// different request reusing a CC-Request-Number.
fn fingerprint(body: &[u8]) -> u32 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ body.len() as u64;
    let mut chunks = body.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ v).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(31);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    }
    h ^= h >> 29;
    (h ^ (h >> 32)) as u32
}

fn units_of(unit: UnitKind, u: &Units) -> Option<u64> {
    match unit {
        UnitKind::Time => u.time.map(u64::from),
        UnitKind::Octets => u.octets(),
        UnitKind::Events => u.specific,
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig, ledger: Arc<Ledger>) -> Self {
        Self {
            sessions: Table::new(cfg.session_hash_key),
            cfg,
            ledger,
            packages: RwLock::default(),
            events: DuplicateCache::with_defaults(KeyCase::Sensitive),
            outbox: Arc::new(Outbox::new()),
            counters: EngineCounters::default(),
            catalog_state: Mutex::default(),
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The pending settlements (shared with the settlement worker).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Grants and replays so far, for metrics.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Applies a settlement step's ledger effect on recovery (the worker makes the same change
    /// live, before journaling the step).
    pub fn apply_effect(&self, effect: Effect) -> Result<(), Reject> {
        match effect {
            Effect::Credit { account, key, amount } => {
                self.ledger.top_up(AccountId(account), key, amount).map(|_| ())
            }
            Effect::Bar { account } => self.ledger.set_status(AccountId(account), AccountStatus::Barred),
        }
    }

    /// Sets the price package used for an account.
    pub fn set_package(&self, account: AccountId, package: SharedPackage) {
        self.packages.write().unwrap_or_else(|e| e.into_inner()).set(account, &package);
    }

    fn package(&self, account: AccountId) -> Option<SharedPackage> {
        let p = self.packages.read().unwrap_or_else(|e| e.into_inner());
        let index = *p.by_account.get(account.0 as usize)?;
        p.list.get(index as usize).cloned()
    }

    /// Applies an operator's change to an account and writes its redo record into `record`
    /// (cleared first). The caller appends the record and answers once it is durable, as for a
    /// CCR; a crash before that loses the change, and the client's retry under the same key
    /// makes it (the ledger remembers keys: a retry after it was made returns the first
    /// result and changes nothing). Returns the balance after it.
    pub fn admin(&self, op: &AdminOp, record: &mut Vec<u8>) -> Result<MoneyMinor, Reject> {
        let mut rec = Recorder { buf: std::mem::take(record) };
        rec.clear();
        let balance = match *op {
            AdminOp::TopUp { account, key, amount } => {
                let balance = self.ledger.top_up(account, key, amount)?;
                rec.top_up(account, key, amount);
                balance
            }
            AdminOp::Debit { account, key, amount } => {
                // Allowed into overdraft and on barred accounts: an operator's correction.
                self.ledger.debit(0, account, key, amount, true)?;
                rec.debit(account, key, amount, true);
                self.ledger.view(account).map_or(MoneyMinor(0), |v| v.balance)
            }
            AdminOp::Status { account, status } => {
                self.ledger.set_status(account, status)?;
                rec.status(account, status == AccountStatus::Barred);
                self.ledger.view(account).map_or(MoneyMinor(0), |v| v.balance)
            }
        };
        *record = rec.buf;
        Ok(balance)
    }

    /// Open (not closed, not expired) sessions.
    pub fn open_sessions(&self) -> usize {
        let mut open = 0;
        self.sessions.for_each_shard(|s| open += s.iter().filter(|s| s.state == State::Open).count());
        open
    }

    /// Handles one validated CCR and writes the CCA (or an error answer) into `out`, without
    /// a journal (tests, benchmarks, the in-memory run).
    pub fn handle(&self, now: Now, msg: &MessageRef<'_>, out: &mut BytesMut) {
        self.handle_with(now, msg, out, &mut NoJournal);
    }

    /// Handles one validated CCR. The answer is written into `out`, unless the request changed
    /// something: then its redo record and the answer go to `sink` (which sends the answer once
    /// the record is durable, and takes it out of `out`). Returns whether `sink` took it.
    pub fn handle_with(
        &self,
        now: Now,
        msg: &MessageRef<'_>,
        out: &mut BytesMut,
        sink: &mut dyn RecordSink,
    ) -> bool {
        RECORDER.with_borrow_mut(|rec| {
            rec.clear();
            let mut tx = Tx { rec, sink, deferred: false };
            let ccr = match Ccr::parse(msg) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(result = e.result.0, why = e.message, "credit-control request refused");
                    error_answer(out, &self.cfg.local, msg, e.result, Some(e.message), Some(&e.failed_avp));
                    return false;
                }
            };
            match ccr.request_type {
                RequestType::Event => self.event(now, msg, &ccr, out, &mut tx),
                RequestType::Initial => self.initial(now, msg, &ccr, out, &mut tx),
                RequestType::Update | RequestType::Termination => self.update(now, msg, &ccr, out, &mut tx),
            }
            tx.deferred
        })
    }

    fn write(
        &self,
        out: &mut BytesMut,
        msg: &MessageRef<'_>,
        ccr: &Ccr<'_>,
        result: ResultCode,
        why: Why,
        a: &Answer<'_>,
    ) {
        // See `service_request` for why the line is written out of line.
        if tracing::enabled!(tracing::Level::DEBUG) {
            log_answer(ccr, result, why, a);
        }
        let echo = cca::Echo {
            origin_host: &self.cfg.local.origin_host,
            origin_realm: &self.cfg.local.origin_realm,
            session_id: ccr.session_id,
            request_type: ccr.request_type as u32,
            request_number: ccr.request_number,
            proxy_info: ccr.proxy_info,
        };
        cca::write(out, msg, echo, result, a);
    }

    fn resolve(&self, ccr: &Ccr<'_>) -> Option<AccountId> {
        ccr.subscriptions.iter().find_map(|(kind, data)| self.ledger.lookup(*kind, data))
    }

    /// Answers a retransmitted request again, from the decisions remembered for its number;
    /// refuses a different request under a number already used (it must not be charged a
    /// second time). Returns whether an answer was written.
    fn replay(&self, session: &Session, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut) -> bool {
        let n = ccr.request_number;
        let used = || session.recent.iter().filter(|r| r.flags & RECENT_USED != 0);
        let Some(recent) = used().find(|r| r.number == n) else {
            let oldest = used().map(|r| r.number).min().unwrap_or(0);
            if used().count() == SESSION_ANSWERS_MAX && n < oldest && n < session.highest {
                // Older than every remembered answer: it may have been charged already, and we can
                // no longer tell, so it is refused rather than risked twice.
                self.refuse_number(
                    msg,
                    ccr,
                    out,
                    "CC-Request-Number older than the session's recent requests",
                );
                return true;
            }
            return false;
        };
        if recent.fingerprint != fingerprint(msg.body) {
            self.refuse_number(msg, ccr, out, "CC-Request-Number already used by a different request");
            return true;
        }
        match build_answer(session, ccr, recent) {
            Some(answer) => {
                let result = ResultCode(u32::from(recent.result));
                self.write(out, msg, ccr, result, Why::Retransmission, &answer);
            }
            None => {
                // A later request has since decided again for one of its rating groups (the
                // client reported on that grant, so it had this answer); the original answer
                // can no longer be written, and a new decision would charge twice.
                self.refuse_number(
                    msg,
                    ccr,
                    out,
                    "the answer to this CC-Request-Number is no longer available",
                );
            }
        }
        true
    }

    fn refuse_number(&self, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut, text: &str) {
        // A warning is written at info level too, where no request span exists: the ids here.
        tracing::warn!(
            session = ccr.session_id,
            number = ccr.request_number,
            hbh = format_args!("{:#010x}", msg.header.hop_by_hop),
            e2e = format_args!("{:#010x}", msg.header.end_to_end),
            "{text}"
        );
        let failed = msg.find(crate::diameter::AvpCode(415)).map(|a| a.raw.to_vec()).unwrap_or_default();
        error_answer(out, &self.cfg.local, msg, ResultCode::INVALID_AVP_VALUE, Some(text), Some(&failed));
    }

    /// Records the command-level part of the answer to `ccr` (the MSCC parts are already in the
    /// rating groups), replacing the oldest remembered one, and writes the answer.
    /// `summary` carries the command-level Result-Code and the `RECENT_*` flags and money.
    fn answer_and_remember(
        &self,
        session: &mut Session,
        msg: &MessageRef<'_>,
        ccr: &Ccr<'_>,
        summary: Recent,
        out: &mut BytesMut,
    ) {
        let recent = Recent {
            number: ccr.request_number,
            fingerprint: fingerprint(msg.body),
            flags: summary.flags | RECENT_USED,
            ..summary
        };
        let slot = (0..SESSION_ANSWERS_MAX)
            .min_by_key(|&i| {
                let r = &session.recent[i];
                (r.flags & RECENT_USED != 0, r.number)
            })
            .unwrap_or(0);
        session.recent[slot] = recent;
        session.highest = session.highest.max(ccr.request_number);
        let answer =
            build_answer(session, ccr, &recent).expect("every rating group of this request decided for it");
        self.write(out, msg, ccr, ResultCode(u32::from(recent.result)), Why::RatingGroups, &answer);
    }

    // -----------------------------------------------------------------------------------------
    // CCR-I

    fn initial(&self, now: Now, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut, tx: &mut Tx<'_>) {
        // The shard stays locked while the session is set up, so the same CCR-I arriving on two
        // connections at once is processed once and replayed once, and no hold is orphaned.
        let key = self.sessions.key(ccr.session_id);
        let mut shard = self.sessions.lock(key);
        if let Some(s) = shard.get_mut(key) {
            let start = out.len();
            if self.replay(s, msg, ccr, out) {
                self.counters.replayed.fetch_add(1, Ordering::Relaxed);
                tx.send(out, start);
            } else {
                let text = Some("session already exists");
                tracing::debug!(
                    session = ccr.session_id,
                    number = ccr.request_number,
                    result = ResultCode::INVALID_AVP_VALUE.0,
                    why = text,
                    "credit-control request refused"
                );
                error_answer(out, &self.cfg.local, msg, ResultCode::INVALID_AVP_VALUE, text, None);
            }
            return;
        }
        let Some(account) = self.resolve(ccr) else {
            // RFC 4006 §9.1 5030 DIAMETER_USER_UNKNOWN.
            self.write(out, msg, ccr, ResultCode::USER_UNKNOWN, Why::UnknownSubscriber, &Answer::default());
            return;
        };
        if let Err(r) = self.ledger.available(account) {
            self.write(out, msg, ccr, reject_code(r), Why::ledger(r), &Answer::default());
            return;
        }
        let Some(package) = self.package(account) else {
            self.write(out, msg, ccr, ResultCode::UNABLE_TO_COMPLY, Why::NoPackage, &Answer::default());
            return;
        };
        let Some(context) = ccr.context.filter(|c| serves_context(&package, *c)) else {
            // The plan has no service for this context: service not allowed (RFC 4006 §9.1
            // 4010 DIAMETER_END_USER_SERVICE_DENIED).
            let why = Why::ContextNotServed;
            self.write(out, msg, ccr, ResultCode::END_USER_SERVICE_DENIED, why, &Answer::default());
            return;
        };
        let mut session = Session {
            key,
            names: Names::new(ccr.session_id, ccr.origin_host),
            package: Arc::clone(&package),
            deadline_ms: now.mono_ms,
            account,
            context,
            highest: 0,
            state: State::Open,
            recent: [Recent::default(); SESSION_ANSWERS_MAX],
            rgs: SmallVec::new(),
        };
        let mut results = Results::default();
        for m in ccr.services() {
            results.add(self.service_request(now, tx.rec, &mut session, &package, ccr, m, true));
        }
        let result = results.command();
        self.refresh_deadline(now, &mut session);
        let summary = Recent { result: result_u16(result), ..Recent::default() };
        let start = out.len();
        self.answer_and_remember(&mut session, msg, ccr, summary, out);
        if result.is_success() {
            session.encode_named(tx.rec, now);
            tx.send(out, start);
            shard.insert(session);
        } else {
            // RFC 4006 §5.6: a failed CCR-I leaves no session; release what was granted. The
            // holds made and released cancel out: nothing to journal. The refusal (a 4012, say)
            // waits behind pending records like any answer that read balances.
            self.release_all(tx.rec, &mut session);
            tx.rec.clear();
            tx.send(out, start);
        }
    }

    // -----------------------------------------------------------------------------------------
    // CCR-U / CCR-T

    fn update(&self, now: Now, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut, tx: &mut Tx<'_>) {
        let key = self.sessions.key(ccr.session_id);
        let mut shard = self.sessions.lock(key);
        let Some(session) = shard.get_mut(key) else {
            // RFC 4006 §7 (server state machine, Idle: CCR-U/T → 5002) and RFC 6733 §7.1.5
            // DIAMETER_UNKNOWN_SESSION_ID.
            let why = Why::UnknownSession;
            self.write(out, msg, ccr, ResultCode::UNKNOWN_SESSION_ID, why, &Answer::default());
            return;
        };
        let start = out.len();
        if self.replay(session, msg, ccr, out) {
            self.counters.replayed.fetch_add(1, Ordering::Relaxed);
            // Not before the original's record is durable.
            tx.send(out, start);
            return;
        }
        if session.state == State::Closed {
            let why = Why::SessionClosed;
            self.write(out, msg, ccr, ResultCode::UNKNOWN_SESSION_ID, why, &Answer::default());
            return;
        }
        let package = Arc::clone(&session.package);
        let terminate = ccr.request_type == RequestType::Termination;
        let mut results = Results::default();
        for m in ccr.services() {
            results.add(self.service_request(now, tx.rec, session, &package, ccr, m, !terminate));
        }
        let (mut flags, mut money) = (0, 0);
        if terminate {
            // RFC 4006 §5.6: CCR-T releases what was reserved and not used.
            self.release_all(tx.rec, session);
            session.state = State::Closed;
            session.deadline_ms = now.mono_ms;
            // TS 32.299 §7.2.140 Remaining-Balance and §7.2.94 Low-Balance-Indication: what the
            // subscriber can still spend, and whether it would no longer pay for a full quota
            // of the service just used.
            flags |= RECENT_COST;
            if let Ok(available) = self.ledger.available(session.account) {
                flags |= RECENT_REMAINING;
                money = available.0;
                let service = session.rgs.first().map(|r| &package.services[usize::from(r.service)]);
                if service.is_some_and(|s| low_balance(available, s, &package)) {
                    flags |= RECENT_LOW_BALANCE;
                }
            }
        } else {
            session.state = State::Open;
            self.refresh_deadline(now, session);
            if matches!(ccr.aoc_request_type, Some(1 | 2)) {
                // TS 32.299 §6.5 advice of charge: the cost of the session so far.
                flags |= RECENT_COST;
                money = session.total_cost().0;
            }
        }
        let result = if terminate && results.count == 0 { ResultCode::SUCCESS } else { results.command() };
        let summary = Recent { result: result_u16(result), flags, money, ..Recent::default() };
        self.answer_and_remember(session, msg, ccr, summary, out);
        session.encode(tx.rec, now);
        // The outbox entry goes in the same record as the debit (transactional outbox), and
        // into the outbox only once the record is appended, so every step record the worker
        // appends for it follows it in the journal.
        let settle = if terminate && self.cfg.settle { session.settle_entry(now) } else { None };
        if let Some(entry) = &settle {
            outbox::encode_entry(&mut tx.rec.buf, entry);
        }
        tx.send(out, start);
        if let Some(entry) = settle {
            self.outbox.add(entry);
        }
    }

    /// One MSCC (or the single-service form): charge the reported usage, then grant anew if
    /// asked for. The decision is recorded in the rating group's state and logged (debug);
    /// returns its Result-Code.
    #[allow(clippy::too_many_arguments)]
    fn service_request(
        &self,
        now: Now,
        rec: &mut Recorder,
        session: &mut Session,
        package: &Package,
        ccr: &Ccr<'_>,
        m: &Mscc<'_>,
        may_grant: bool,
    ) -> ResultCode {
        let number = ccr.request_number;
        let d = self.decide_service(now, rec, session, package, number, m, may_grant);
        // With debug off this is one level comparison. The line itself is written by a cold
        // function: inline, the macro's code kept `write` from being inlined and cost ≈ 30
        // instructions per CCR-U in register moves around it (callgrind, benches/engine.rs).
        if tracing::enabled!(tracing::Level::DEBUG) {
            log_decision(session, package, ccr, m, &d);
        }
        d.result
    }

    /// `service_request` without the log line.
    #[allow(clippy::too_many_arguments)]
    fn decide_service(
        &self,
        now: Now,
        rec: &mut Recorder,
        session: &mut Session,
        package: &Package,
        number: u32,
        m: &Mscc<'_>,
        may_grant: bool,
    ) -> Decision {
        let rating_group = rg_of(m.rating_group);
        let idx = match session.rgs.iter().position(|r| r.rating_group == rating_group) {
            Some(i) => i,
            None => {
                let Some(service) = find_service(package, session.context, m) else {
                    // TS 32.299: no rate for this rating group → 5031 DIAMETER_RATING_FAILED.
                    // Not recorded: `build_answer` finds the same again from the package.
                    return Decision::refused(ResultCode::RATING_FAILED, Why::NoService);
                };
                if session.rgs.len() == RATING_GROUPS_PER_SESSION_MAX {
                    return Decision::refused(ResultCode::UNABLE_TO_COMPLY, Why::RatingGroupsMax);
                }
                session.rgs.push(RgState {
                    usage: CumulativeUsage::default(),
                    debited: MoneyMinor(0),
                    last_units: 0,
                    rating_group,
                    last_number: 0,
                    last_tariff_time_change: 0,
                    grant_number: 0,
                    last_result: 0,
                    service,
                    flags: 0,
                    band_before: 0,
                    band_after: 0,
                    last_why: 0,
                });
                session.rgs.len() - 1
            }
        };
        session.rgs[idx].decide(number);
        let d = self.decide_rg(now, rec, session, idx, package, m, may_grant);
        // For the admin API's session view (a refusal before the rating group had a place,
        // 5031 or too many rating groups, has none to keep it in).
        session.rgs[idx].last_why = d.why.code();
        d
    }

    /// `decide_service` for the rating group at `idx`, its decision begun.
    #[allow(clippy::too_many_arguments)]
    fn decide_rg(
        &self,
        now: Now,
        rec: &mut Recorder,
        session: &mut Session,
        idx: usize,
        package: &Package,
        m: &Mscc<'_>,
        may_grant: bool,
    ) -> Decision {
        // The rate converted once for the debit, the grant and its hold.
        let pricer =
            Pricer::new(&package.services[usize::from(session.rgs[idx].service)].rate, package.currency);
        let mut debited = MoneyMinor(0);
        if !m.used.is_empty() {
            debited = self.charge_usage(now, rec, session, idx, package, &pricer, &m.used);
        } else if session.rgs[idx].is(OPEN) && may_grant && m.requested.is_some() {
            // A new request without usage replaces the open grant (e.g. after a RAR).
            self.release_rg(rec, session, idx);
        }
        if !may_grant || m.requested.is_none() {
            let why = if may_grant {
                Why::NothingRequested
            } else {
                self.release_rg(rec, session, idx);
                Why::Terminated
            };
            return Decision { result: ResultCode::SUCCESS, why, reserved: MoneyMinor(0), debited };
        }
        match self.grant(now, rec, session, idx, package, &pricer, m) {
            Ok((why, reserved)) => Decision { result: ResultCode::SUCCESS, why, reserved, debited },
            Err((result, why)) => {
                session.rgs[idx].refuse(result);
                Decision { result, why, reserved: MoneyMinor(0), debited }
            }
        }
    }

    /// Sizes and reserves a grant (TS 32.299 §6.3.x; architecture: grant = min(requested,
    /// quota, affordable), bundles first, a fair share of the balance when other sessions are
    /// active, Final-Unit-Indication when the funds do not cover the full quota). Returns why
    /// the grant has its size and the money held for it, or the refusal and why.
    #[allow(clippy::too_many_arguments)]
    fn grant(
        &self,
        now: Now,
        rec: &mut Recorder,
        session: &mut Session,
        idx: usize,
        package: &Package,
        pricer: &Pricer,
        m: &Mscc<'_>,
    ) -> Result<(Why, MoneyMinor), (ResultCode, Why)> {
        let service = &package.services[usize::from(session.rgs[idx].service)];
        let rate = &service.rate;
        let requested = m.requested.as_ref().and_then(|u| units_of(rate.unit, u)).filter(|&u| u > 0);
        let band = rating::band_at(rate, now.unix_secs, package.utc_offset_minutes);
        // RFC 4006 §8.22: a client may ask for money (CC-Money) rather than units; the grant is
        // then what that much money buys, in the service's units.
        let for_money = m
            .requested
            .as_ref()
            .and_then(|u| u.money)
            .and_then(|money| money_minor(money, package.currency))
            .map(|cap| pricer.affordable(&session.rgs[idx].usage, band, cap));
        let target = requested.or(for_money).map_or(service.quota, |r| r.min(service.quota)).max(1);
        let change = rating::next_band_change(rate, now.unix_secs, package.utc_offset_minutes)
            .filter(|&t| t < now.unix_secs + u64::from(service.validity_time_s));
        let band_after = change.map_or(band, |t| rating::band_at(rate, t, package.utc_offset_minutes));
        let expires_at_ms = now.mono_ms + u64::from(service.validity_time_s) * 1000 + self.cfg.tcc_grace_ms;
        let key = session.ledger_key(session.rgs[idx].rating_group, session.rgs[idx].last_number);
        let account = session.account;
        let rg = &mut session.rgs[idx];
        debug_assert!(!rg.is(OPEN), "charge_usage or release_rg closed the previous grant");
        let shape = GrantShape {
            band: band as u8,
            band_after: band_after as u8,
            tariff_time_change: change.map(ntp),
        };
        // Free units first.
        if let Some((bundle, free)) = self.ledger.find_bundle(account, &service.name, now.mono_ms) {
            let units = target.min(free);
            if units > 0
                && self
                    .ledger
                    .reserve(now.mono_ms, account, key, MoneyMinor(0), Some((bundle, units)), expires_at_ms)
                    .is_ok()
            {
                rec.reserve(now, account, key, MoneyMinor(0), Some((bundle, units)), expires_at_ms);
                shape.record(rg, units, Funds::Bundle);
                self.counters.granted(rate.unit, units);
                return Ok((Why::Bundle, MoneyMinor(0)));
            }
        }
        let available = self.ledger.available(account).map_err(|r| (reject_code(r), Why::ledger(r)))?;
        let all = pricer.affordable(&rg.usage, band, available);
        // Fair share: with other grants open on the account (a family plan), take at most an
        // equal share of what is left, so one session does not starve the others.
        let others = self.ledger.open_reservations(account).unwrap_or(0) as i64;
        let share = MoneyMinor(available.0 / (others + 1));
        let fair = if others > 0 { pricer.affordable(&rg.usage, band, share) } else { all };
        let units = target.min(if fair > 0 { fair } else { all });
        if units == 0 {
            // RFC 4006 §9.1 4012 DIAMETER_CREDIT_LIMIT_REACHED.
            return Err((ResultCode::CREDIT_LIMIT_REACHED, Why::CreditLimit));
        }
        let mut after = rg.usage;
        after.0[band] = after.0[band].saturating_add(units);
        // The charge before first: it is the one the debit above (or `affordable`) just rated.
        let before = pricer.charge(&rg.usage);
        let hold = MoneyMinor(pricer.charge(&after).0 - before.0);
        self.ledger
            .reserve(now.mono_ms, account, key, hold, None, expires_at_ms)
            .map_err(|r| (reject_code(r), Why::ledger(r)))?;
        rec.reserve(now, account, key, hold, None, expires_at_ms);
        shape.record(rg, units, Funds::Money);
        self.counters.granted(rate.unit, units);
        // The last grant the funds allow (RFC 4006 §5.6.2 Final-Unit-Indication). A grant cut
        // by the fair share is not final: more funds remain for later requests.
        let last = all < target && units == all;
        rg.set(LAST_FINAL, last);
        let why = if last {
            Why::FinalUnit
        } else if units < target {
            Why::FairShare
        } else if target < service.quota {
            Why::Requested
        } else {
            Why::Quota
        };
        Ok((why, hold))
    }

    /// Charges reported usage (Used-Service-Unit), closing the open grant. Late usage — after
    /// the grant expired or beyond it — is charged too, never dropped. Returns the debit.
    #[allow(clippy::too_many_arguments)]
    fn charge_usage(
        &self,
        now: Now,
        rec: &mut Recorder,
        session: &mut Session,
        idx: usize,
        package: &Package,
        pricer: &Pricer,
        used: &[super::ccr::UsedUnits],
    ) -> MoneyMinor {
        let rate = &package.services[usize::from(session.rgs[idx].service)].rate;
        let key = session.hold_key(idx);
        let account = session.account;
        let rg = &mut session.rgs[idx];
        let mut by_band = [0u64; rating::BANDS_PER_RATE_MAX + 1];
        let mut total = 0u64;
        for u in used {
            let n = units_of(rate.unit, &u.units).unwrap_or(0);
            // RFC 4006 §8.27: UNIT_AFTER usage is rated at the tariff after the change.
            let band = if u.tariff_change == Some(TariffChangeUsage::UnitAfter) {
                rg.band_after
            } else {
                rg.band_before
            };
            by_band[usize::from(band)] = by_band[usize::from(band)].saturating_add(n);
            total = total.saturating_add(n);
        }
        let mut paid = by_band;
        if rg.is(OPEN) && rg.is(FROM_BUNDLE) {
            match self.ledger.commit(now.mono_ms, account, key, MoneyMinor(0), total) {
                Ok(c) => {
                    rec.commit(account, key, MoneyMinor(0), total - c.units_unpaid);
                    // Units beyond what the bundle still had are priced in money.
                    paid = [0; rating::BANDS_PER_RATE_MAX + 1];
                    paid[usize::from(rg.band_before)] = c.units_unpaid;
                }
                Err(r) => tracing::error!(?r, "bundle commit failed; usage priced in money"),
            }
            rg.set(OPEN, false);
        }
        let mut after = rg.usage;
        for (slot, add) in after.0.iter_mut().zip(paid) {
            *slot = slot.saturating_add(add);
        }
        let new_charge = pricer.charge(&after);
        let delta = MoneyMinor(new_charge.0 - rg.debited.0);
        // The ledger may have expired the hold on its own deadline before the session sweep
        // noticed; then the usage is charged as late usage, never dropped.
        let committed = rg.is(OPEN)
            && match self.ledger.commit(now.mono_ms, account, key, delta, 0) {
                Ok(c) => {
                    rec.commit(account, key, delta, 0);
                    if c.overdraft {
                        tracing::warn!(
                            account = account.0,
                            "usage beyond the grant put the account in overdraft"
                        );
                    }
                    true
                }
                Err(Reject::ReservationNotFound) => false,
                Err(r) => {
                    tracing::error!(?r, "commit failed; charging as late usage");
                    false
                }
            };
        rg.set(OPEN, false);
        if !committed && delta.0 > 0 {
            let op = key.session ^ u64::from(key.rating_group).rotate_left(32) ^ new_charge.0 as u64;
            match self.ledger.debit(now.mono_ms, account, op, delta, true) {
                Ok(_) => rec.debit(account, op, delta, true),
                Err(r) => tracing::error!(?r, "late usage debit failed"),
            }
        }
        rg.usage = after;
        rg.debited = new_charge;
        delta
    }

    fn release_rg(&self, rec: &mut Recorder, session: &mut Session, idx: usize) {
        if session.rgs[idx].is(OPEN) {
            let key = session.hold_key(idx);
            if self.ledger.release(session.account, key).is_ok() {
                rec.release(session.account, key);
            }
            session.rgs[idx].set(OPEN, false);
        }
    }

    fn release_all(&self, rec: &mut Recorder, session: &mut Session) {
        for i in 0..session.rgs.len() {
            self.release_rg(rec, session, i);
        }
    }

    fn refresh_deadline(&self, now: Now, session: &mut Session) {
        let validity = session
            .rgs
            .iter()
            .map(|r| session.package.services[usize::from(r.service)].validity_time_s)
            .max()
            .unwrap_or(0);
        session.deadline_ms = now.mono_ms + u64::from(validity) * 1000 + self.cfg.tcc_grace_ms;
    }

    // -----------------------------------------------------------------------------------------
    // CCR-E

    fn event(&self, now: Now, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut, tx: &mut Tx<'_>) {
        let print = fingerprint(msg.body);
        if let Some((answer, first)) =
            self.events.lookup_tagged(now.mono_ms, ccr.session_id, ccr.request_number)
        {
            if first != print {
                self.refuse_number(msg, ccr, out, "CC-Request-Number already used by a different event");
                return;
            }
            tracing::debug!(
                session = ccr.session_id,
                request = ?ccr.request_type,
                number = ccr.request_number,
                why = Why::Retransmission.text(),
                "credit-control answer"
            );
            let start = out.len();
            self.counters.replayed.fetch_add(1, Ordering::Relaxed);
            answer_again(&answer, &msg.header, out);
            // Not before the original's record is durable.
            tx.send(out, start);
            return;
        }
        let start = out.len();
        let mut settle = None;
        let changed = self.event_inner(now, msg, ccr, out, tx.rec, &mut settle);
        if changed {
            let answer = &out[start..];
            let (id, n) = (ccr.session_id, ccr.request_number);
            self.events.insert_tagged(now.mono_ms, id, n, print, Bytes::copy_from_slice(answer));
            tx.rec.event(id, n, print, answer);
            if let Some(entry) = &settle {
                outbox::encode_entry(&mut tx.rec.buf, entry);
            }
            tx.send(out, start);
            if let Some(entry) = settle {
                self.outbox.add(entry);
            }
        } else {
            // Nothing changed, but the answer may show balances (Remaining-Balance,
            // Check-Balance-Result, a 4012) that include changes whose records are still
            // pending: it waits behind them (never for a new fsync of its own), so it never shows
            // what a crash could undo.
            tx.send(out, start);
        }
    }

    /// Returns whether the ledger changed (only then is the answer remembered); a money debit
    /// leaves its outbox entry in `settle` when settlement is on (`EngineConfig::settle`).
    #[allow(clippy::too_many_arguments)]
    fn event_inner(
        &self,
        now: Now,
        msg: &MessageRef<'_>,
        ccr: &Ccr<'_>,
        out: &mut BytesMut,
        rec: &mut Recorder,
        settle: &mut Option<SettleEntry>,
    ) -> bool {
        let Some(account) = self.resolve(ccr) else {
            self.write(out, msg, ccr, ResultCode::USER_UNKNOWN, Why::UnknownSubscriber, &Answer::default());
            return false;
        };
        let action = ccr.requested_action.unwrap_or(RequestedAction::DirectDebiting);
        let mut answer = Answer { requested_action: Some(action as u32), ..Answer::default() };
        let available = match self.ledger.available(account) {
            Ok(v) => v,
            Err(r) => {
                self.write(out, msg, ccr, reject_code(r), Why::ledger(r), &answer);
                return false;
            }
        };
        let Some(package) = self.package(account) else {
            self.write(out, msg, ccr, ResultCode::UNABLE_TO_COMPLY, Why::NoPackage, &answer);
            return false;
        };
        let Some(context) = ccr.context.filter(|c| serves_context(&package, *c)) else {
            self.write(out, msg, ccr, ResultCode::END_USER_SERVICE_DENIED, Why::ContextNotServed, &answer);
            return false;
        };
        let empty = Mscc::default();
        let m = ccr.services().first().unwrap_or(&empty);
        let Some(si) = find_service(&package, context, m) else {
            self.write(out, msg, ccr, ResultCode::RATING_FAILED, Why::NoService, &answer);
            return false;
        };
        let service = &package.services[usize::from(si)];
        let rate = &service.rate;
        let units = m.requested.as_ref().and_then(|u| units_of(rate.unit, u)).filter(|&u| u > 0).unwrap_or(1);
        // RFC 4006 §8.21: Event-Timestamp is when the event happened; rate at that time when the
        // client sends a plausible one (within a day of our clock), else at our own time.
        let at = ccr
            .event_timestamp
            .map(|t| u64::from(t).wrapping_sub(NTP_UNIX_OFFSET_SECS))
            .filter(|t| t.abs_diff(now.unix_secs) <= EVENT_TIMESTAMP_SKEW_MAX_SECS)
            .unwrap_or(now.unix_secs);
        let band = rating::band_at(rate, at, package.utc_offset_minutes);
        let mut usage = CumulativeUsage::default();
        usage.0[band] = units;
        let cost = rating::charge(rate, &usage, package.currency);
        let grant = Grant { unit: rate.unit, units, tariff_time_change: None };
        let single = ccr.single.is_some() || ccr.msccs.is_empty();
        let mut mscc = MsccAnswer::success(m.rating_group, m.service_id);
        // Keyed like sessions (a peer cannot pick two events that share a ledger key) and stable
        // across restarts (the key is kept with the journal).
        let op = self.sessions.key(ccr.session_id).0[0]
            ^ u64::from(ccr.request_number).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (result, why, changed) = match action {
            RequestedAction::DirectDebiting => {
                let bundle = self
                    .ledger
                    .find_bundle(account, &service.name, now.mono_ms)
                    .filter(|&(_, free)| free >= units);
                let key = ReservationKey { session: op, rating_group: m.rating_group.unwrap_or(u32::MAX) };
                let paid_by_bundle = bundle.is_some_and(|(b, _)| {
                    let expires_at_ms = now.mono_ms + 1000;
                    let held = self
                        .ledger
                        .reserve(now.mono_ms, account, key, MoneyMinor(0), Some((b, units)), expires_at_ms)
                        .is_ok();
                    if held {
                        rec.reserve(now, account, key, MoneyMinor(0), Some((b, units)), expires_at_ms);
                    }
                    held && match self.ledger.commit(now.mono_ms, account, key, MoneyMinor(0), units) {
                        Ok(c) => {
                            rec.commit(account, key, MoneyMinor(0), units - c.units_unpaid);
                            true
                        }
                        Err(_) => false,
                    }
                });
                if paid_by_bundle {
                    answer.cost = Some(Amount { money: MoneyMinor(0), currency: package.currency });
                    mscc.grant = Some(grant);
                    (ResultCode::SUCCESS, Why::Bundle, true)
                } else {
                    match self.ledger.debit(now.mono_ms, account, op, cost, false) {
                        Ok(_) => {
                            rec.debit(account, op, cost, false);
                            if self.cfg.settle && 0 < cost.0 {
                                // Keyed by the event's ledger key, and apart from any session's.
                                // Built only when settling: with settlement off (no data
                                // directory, benchmarks) a CCR-E hashes and allocates nothing
                                // for it.
                                let key = SettlementKey([op, !self.sessions.key(ccr.session_id).0[1]]);
                                *settle = Some(SettleEntry {
                                    key,
                                    account: account.0,
                                    closed_unix_s: at,
                                    currency: package.currency,
                                    lines: vec![SettleLine {
                                        service: si,
                                        rating_group: m.rating_group,
                                        unit: rate.unit,
                                        units,
                                        money: cost,
                                    }],
                                });
                            }
                            answer.cost = Some(Amount { money: cost, currency: package.currency });
                            mscc.grant = Some(grant);
                            (ResultCode::SUCCESS, Why::Debited, true)
                        }
                        Err(r) => (reject_code(r), Why::ledger(r), false),
                    }
                }
            }
            RequestedAction::RefundAccount => match self.ledger.refund(account, op, cost) {
                Ok(_) => {
                    rec.refund(account, op, cost);
                    answer.cost = Some(Amount { money: cost, currency: package.currency });
                    (ResultCode::SUCCESS, Why::Refunded, true)
                }
                Err(r) => (reject_code(r), Why::ledger(r), false),
            },
            RequestedAction::CheckBalance => {
                answer.check_balance_enough = Some(available >= cost && available.0 > 0);
                (ResultCode::SUCCESS, Why::BalanceChecked, false)
            }
            RequestedAction::PriceEnquiry => {
                answer.cost = Some(Amount { money: cost, currency: package.currency });
                (ResultCode::SUCCESS, Why::PriceQuoted, false)
            }
        };
        mscc.result = result;
        self.remaining_balance(account, &package, Some(service), &mut answer);
        if single {
            answer.single = Some(mscc);
        } else {
            answer.msccs.push(mscc);
        }
        self.write(out, msg, ccr, result, why, &answer);
        changed
    }

    /// TS 32.299 §7.2.140 Remaining-Balance and §7.2.94 Low-Balance-Indication: what the
    /// subscriber can still spend, and whether it would no longer pay for a full quota of the
    /// service just used.
    fn remaining_balance(
        &self,
        account: AccountId,
        package: &Package,
        service: Option<&Service>,
        answer: &mut Answer<'_>,
    ) {
        let Ok(available) = self.ledger.available(account) else { return };
        answer.remaining_balance = Some(Amount { money: available, currency: package.currency });
        answer.low_balance = service.is_some_and(|s| low_balance(available, s, package));
    }

    // -----------------------------------------------------------------------------------------
    // Supervision

    /// Session supervision (RFC 4006 §8.38 Tcc): a session silent past its deadline has its
    /// reservations released; closed and expired sessions are forgotten after the retention
    /// period. Called periodically by `net`.
    pub fn sweep(&self, now: Now) -> SweepStats {
        self.sweep_with(now, &mut NoJournal)
    }

    /// `sweep`, with what it changes journaled through `sink` (records without an answer).
    pub fn sweep_with(&self, now: Now, sink: &mut dyn RecordSink) -> SweepStats {
        let mut stats = SweepStats::default();
        let retention = self.cfg.closed_retention_ms;
        let mut rec = Recorder::new();
        // Outbox entries of the record being built: added once it is appended.
        let mut settle: Vec<SettleEntry> = Vec::new();
        let outbox = &self.outbox;
        let mut append = |rec: &mut Recorder, settle: &mut Vec<SettleEntry>| {
            sink.append(rec.bytes(), &[]);
            rec.clear();
            for entry in settle.drain(..) {
                outbox.add(entry);
            }
        };
        // One shard at a time: requests on the other shards go on meanwhile. The records are
        // appended under the shard lock, so they keep their order with the sessions' own.
        self.sessions.for_each_shard(|shard| {
            shard.retain(|s| {
                let mut keep = true;
                if s.state == State::Open && s.deadline_ms <= now.mono_ms {
                    for i in 0..s.rgs.len() {
                        if s.rgs[i].is(OPEN) {
                            self.release_rg(&mut rec, s, i);
                            stats.reservations_released += 1;
                        }
                    }
                    s.state = State::Expired;
                    stats.sessions_expired += 1;
                    s.encode(&mut rec, now);
                }
                // Closed and expired sessions are kept for the retention period after their
                // deadline (or close), then forgotten.
                if s.state != State::Open && now.mono_ms >= s.deadline_ms.saturating_add(retention) {
                    // An expired session that no CCR-T closed is settled when it is forgotten:
                    // late usage may be charged to it until then.
                    if s.state == State::Expired && self.cfg.settle {
                        if let Some(entry) = s.settle_entry(now) {
                            outbox::encode_entry(&mut rec.buf, &entry);
                            settle.push(entry);
                        }
                    }
                    rec.session_gone(s.key.0);
                    stats.sessions_removed += 1;
                    keep = false;
                }
                if rec.bytes().len() >= SWEEP_RECORD_BYTES {
                    append(&mut rec, &mut settle);
                }
                keep
            });
            if !rec.is_empty() {
                append(&mut rec, &mut settle);
            }
        });
        for (account, key, _, _) in self.ledger.expire(now.mono_ms) {
            rec.release(account, key);
            stats.reservations_released += 1;
            if rec.bytes().len() >= SWEEP_RECORD_BYTES {
                append(&mut rec, &mut settle);
            }
        }
        if !rec.is_empty() {
            append(&mut rec, &mut settle);
        }
        stats
    }

    /// Forgets the session with this Session-Id at once: its client answered a RAR or ASR with
    /// 5002 DIAMETER_UNKNOWN_SESSION_ID (RFC 6733 §7.1.5), so no CCR will ever come for it.
    /// Journaled as the sweep forgets a session: its open holds released (no usage will be
    /// reported against them), an open or expired session with usage settled, then the
    /// "session gone" entry. Returns whether the table had it.
    pub fn forget_session(&self, now: Now, session_id: &str, sink: &mut dyn RecordSink) -> bool {
        let key = self.sessions.key(session_id);
        let mut rec = Recorder::new();
        let mut settle = None;
        {
            let mut shard = self.sessions.lock(key);
            let Some(s) = shard.get_mut(key) else { return false };
            for i in 0..s.rgs.len() {
                if s.rgs[i].is(OPEN) {
                    self.release_rg(&mut rec, s, i);
                }
            }
            // A closed session was settled by its CCR-T.
            if s.state != State::Closed && self.cfg.settle {
                if let Some(entry) = s.settle_entry(now) {
                    outbox::encode_entry(&mut rec.buf, &entry);
                    settle = Some(entry);
                }
            }
            rec.session_gone(s.key.0);
            shard.remove(key);
            // Appended under the shard lock, like the sweep's, to keep the session's order.
            sink.append(rec.bytes(), &[]);
        }
        if let Some(entry) = settle {
            self.outbox.add(entry);
        }
        true
    }

    /// Applies one redo record at start-up, in journal order (see `redo`): ledger operations
    /// without the funds checks that decided whether they happened at all, session images,
    /// remembered event answers. An operation the ledger refuses means the state is not what the
    /// record was written against: recovery stops with an error rather than guess.
    pub fn recover(&self, now: Now, record: &[u8]) -> Result<(), RecordError> {
        let mut r = Reader::new(record);
        while !r.is_empty() {
            match r.u8()? {
                tag @ (redo::TAG_SESSION | redo::TAG_SESSION_NAMED) => {
                    let mut session = Session::decode(&mut r, tag, now, |account| self.package(account))?;
                    let mut shard = self.sessions.lock(session.key);
                    // A CCR-U's image has no names: they are the CCR-I's (or the snapshot's),
                    // which this image replaces.
                    if !session.names.is_known() {
                        if let Some(before) = shard.get_mut(session.key) {
                            session.names = std::mem::take(&mut before.names);
                        }
                    }
                    shard.upsert(session);
                }
                redo::TAG_SESSION_GONE => {
                    let key = SessionKey([r.u64()?, r.u64()?]);
                    self.sessions.lock(key).remove(key);
                }
                redo::TAG_CATALOG | redo::TAG_CATALOG_EDIT => {
                    return Err(RecordError(
                        "a catalog change is replayed by durable::catalogs, which reads its file or edit",
                    ))
                }
                redo::TAG_RESERVE => {
                    let (account, key) = r.key()?;
                    let money = MoneyMinor(r.i64()?);
                    let (bundle, units) = (r.u16()?, r.u64()?);
                    let units = (bundle != u16::MAX).then_some((BundleIndex(bundle), units));
                    let deadline = redo::mono_ms(now, r.u64()?);
                    self.ledger
                        .restore_reservation(now.mono_ms, account, key, money, units, deadline)
                        .map_err(|_| RecordError("a reservation could not be restored"))?;
                }
                redo::TAG_COMMIT => {
                    let (account, key) = r.key()?;
                    let (money, units) = (MoneyMinor(r.i64()?), r.u64()?);
                    self.ledger
                        .restore_commit(now.mono_ms, account, key, money, units)
                        .map_err(|_| RecordError("a commit found no reservation"))?;
                }
                redo::TAG_RELEASE => {
                    let (account, key) = r.key()?;
                    self.ledger
                        .release(account, key)
                        .map_err(|_| RecordError("a release found no reservation"))?;
                }
                redo::TAG_DEBIT => {
                    let (account, op, amount) = (AccountId(r.u32()?), r.u64()?, MoneyMinor(r.i64()?));
                    let allow_overdraft = r.u8()? == 1;
                    self.ledger
                        .restore_debit(account, op, amount, allow_overdraft)
                        .map_err(|_| RecordError("a debit was refused"))?;
                }
                redo::TAG_REFUND => {
                    let (account, op, amount) = (AccountId(r.u32()?), r.u64()?, MoneyMinor(r.i64()?));
                    self.ledger
                        .refund(account, op, amount)
                        .map_err(|_| RecordError("a refund was refused"))?;
                }
                redo::TAG_EVENT => {
                    let session_id = std::str::from_utf8(r.bytes_field()?)
                        .map_err(|_| RecordError("an event's Session-Id is not UTF-8"))?;
                    let (number, print) = (r.u32()?, r.u32()?);
                    let answer = Bytes::copy_from_slice(r.bytes_field()?);
                    self.events.insert_tagged(now.mono_ms, session_id, number, print, answer);
                }
                redo::TAG_TOP_UP => {
                    let (account, op, amount) = (AccountId(r.u32()?), r.u64()?, MoneyMinor(r.i64()?));
                    self.ledger
                        .top_up(account, op, amount)
                        .map_err(|_| RecordError("a top-up was refused"))?;
                }
                redo::TAG_STATUS => {
                    let account = AccountId(r.u32()?);
                    let status = if r.u8()? == 1 { AccountStatus::Barred } else { AccountStatus::Active };
                    self.ledger
                        .set_status(account, status)
                        .map_err(|_| RecordError("a status change found no account"))?;
                }
                t if outbox::is_settlement_tag(t) => {
                    let body = r.bytes_field()?;
                    let effect = self.outbox.recover(t, body).map_err(|e| RecordError(e.0))?;
                    if let Some(effect) = effect {
                        self.apply_effect(effect)
                            .map_err(|_| RecordError("a settlement's ledger change was refused"))?;
                    }
                }
                _ => return Err(RecordError("unknown entry tag")),
            }
        }
        Ok(())
    }

    /// Writes the whole state (accounts' balances, statuses, bundles and holds; sessions; event
    /// answers) as a snapshot body: the entries of redo records plus `TAG_ACCOUNT`. Meant for an
    /// engine nobody else uses (the checkpointer's, rebuilt from the journal), so the state is
    /// the state at one LSN.
    pub fn write_snapshot(&self, now: Now, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut rec = Recorder::new();
        w.write_all(redo::SNAPSHOT_MAGIC)?;
        let state = self.catalog_state();
        if !state.version.is_empty() {
            w.write_all(&state.encode())?;
        }
        let accounts = self.ledger.stats().accounts;
        for id in (0..accounts).map(AccountId) {
            let (Some(view), Some(holds)) = (self.ledger.view(id), self.ledger.holds(id)) else { continue };
            rec.u8(redo::TAG_ACCOUNT).u32(id.0).i64(view.balance.0);
            rec.u8(u8::from(view.status == AccountStatus::Barred));
            rec.u8(u8::try_from(view.bundles.len()).expect("BUNDLES_PER_ACCOUNT_MAX < 256"));
            for b in &view.bundles {
                rec.u64(b.remaining);
            }
            rec.u16(u16::try_from(holds.len()).expect("RESERVATIONS_PER_ACCOUNT_MAX < 65536"));
            for h in &holds {
                let (bundle, units) = h.units.map_or((u16::MAX, 0), |(b, u)| (b.0, u));
                rec.u64(h.key.session).u32(h.key.rating_group).i64(h.money.0).u16(bundle).u64(units);
                rec.u64(redo::unix_ms(now, h.expires_at_ms));
            }
            if rec.bytes().len() >= SWEEP_RECORD_BYTES {
                w.write_all(rec.bytes())?;
                rec.clear();
            }
        }
        let mut sessions_done = Ok(());
        self.sessions.for_each_shard(|shard| {
            for s in shard.iter() {
                s.encode_named(&mut rec, now);
            }
            if sessions_done.is_ok() {
                sessions_done = w.write_all(rec.bytes());
            }
            rec.clear();
        });
        sessions_done?;
        for (session_id, number, print, answer) in self.events.entries(now.mono_ms) {
            rec.event(&session_id, number, print, &answer);
        }
        // Numbering state and pending settlements, as settlement entries.
        self.outbox.write_snapshot(&mut rec.buf);
        w.write_all(rec.bytes())
    }

    /// Loads a snapshot body into an engine whose catalog is loaded and which has seen no
    /// traffic: each account's balance (the difference from the catalog's booked as funding or
    /// debit), status, bundles and holds; then sessions and event answers.
    pub fn load_snapshot(&self, now: Now, body: &[u8]) -> Result<(), RecordError> {
        let rest = body.strip_prefix(redo::SNAPSHOT_MAGIC).ok_or(RecordError("not a gyro snapshot"))?;
        // The catalog in force: the caller read it (`CatalogState::of_snapshot`) and loaded it.
        let rest = redo::CatalogState::skip(rest);
        let mut r = Reader::new(rest);
        let refused = |what| move |_| RecordError(what);
        while !r.is_empty() {
            if r.rest[0] != redo::TAG_ACCOUNT {
                break;
            }
            r.u8()?;
            let id = AccountId(r.u32()?);
            let balance = MoneyMinor(r.i64()?);
            let status = if r.u8()? == 1 { AccountStatus::Barred } else { AccountStatus::Active };
            self.ledger.restore_balance(id, balance).map_err(refused("an account's balance"))?;
            self.ledger.set_status(id, status).map_err(refused("an account's status"))?;
            for i in 0..r.u8()? {
                let remaining = r.u64()?;
                self.ledger
                    .restore_bundle(id, BundleIndex(u16::from(i)), remaining)
                    .map_err(refused("a bundle"))?;
            }
            for _ in 0..r.u16()? {
                let key = ReservationKey { session: r.u64()?, rating_group: r.u32()? };
                let money = MoneyMinor(r.i64()?);
                let (bundle, units) = (r.u16()?, r.u64()?);
                let units = (bundle != u16::MAX).then_some((BundleIndex(bundle), units));
                let deadline = redo::mono_ms(now, r.u64()?);
                self.ledger
                    .restore_reservation(now.mono_ms, id, key, money, units, deadline)
                    .map_err(refused("a hold"))?;
            }
        }
        // Sessions and events are redo entries.
        self.recover(now, r.rest)
    }

    /// Loads a catalog: creates accounts in the ledger and assigns each its package.
    pub fn load_catalog(&self, catalog: &Catalog, now_ms: u64) -> Result<usize, String> {
        load_catalog(self, catalog, |valid_ms| now_ms.saturating_add(valid_ms))
    }

    /// `load_catalog` for accounts that exist since `since_unix_ms` (a data directory's
    /// creation): bundles expire that long after it, not after this start, so a restart does not
    /// renew them.
    pub fn load_catalog_since(
        &self,
        catalog: &Catalog,
        now: Now,
        since_unix_ms: u64,
    ) -> Result<usize, String> {
        load_catalog(self, catalog, |valid_ms| redo::mono_ms(now, since_unix_ms.saturating_add(valid_ms)))
    }

    /// Installs a new version of the catalog, one `catalog::check_change` accepted against the
    /// one in force: every account in force gets its customer's new package, the accounts
    /// after them are created (their bundles valid from `at_unix_ms`, when the change was
    /// made), and every session switches to its account's new package, so its next update is
    /// rated by the new prices. Recovery replays the change at the same place in the journal
    /// and does the same, so live and recovered engines agree. Returns the accounts added.
    pub fn install_catalog(
        &self,
        installed: &crate::catalog::Installed,
        now: Now,
        at_unix_ms: u64,
    ) -> Result<usize, String> {
        let in_force = self.ledger.stats().accounts as usize;
        let catalog = &installed.catalog;
        if catalog.accounts.len() < in_force {
            return Err(format!(
                "{} accounts are in force, the catalog has {}",
                in_force,
                catalog.accounts.len()
            ));
        }
        let mut packages = self.packages.write().unwrap_or_else(|e| e.into_inner());
        for (i, a) in catalog.accounts.iter().enumerate().take(in_force) {
            let package = installed
                .packages
                .get(&a.customer)
                .ok_or_else(|| format!("accounts[{i}]: customer {:?} has no package", a.customer))?;
            // Unchanged packages keep their `Arc` (`Installed::succeeding`): nothing to do.
            if !packages.get(AccountId(i as u32)).is_some_and(|p| Arc::ptr_eq(p, package)) {
                packages.set(AccountId(i as u32), package);
            }
        }
        drop(packages);
        for (i, a) in catalog.accounts.iter().enumerate().take(in_force) {
            if a.closed {
                // Closing is a catalog change: replayed here, it bars at the same place.
                self.ledger
                    .set_status(AccountId(i as u32), AccountStatus::Barred)
                    .map_err(|e| format!("accounts[{i}]: {e:?}"))?;
            }
        }
        create_accounts(self, catalog, &installed.packages, in_force..catalog.accounts.len(), |valid_ms| {
            redo::mono_ms(now, at_unix_ms.saturating_add(valid_ms))
        })?;
        // The package lock is taken per session, never held while a shard lock is waited for
        // (a CCR holds its shard's lock and may read packages).
        self.sessions.for_each_shard(|shard| {
            shard.retain(|s| {
                if let Some(p) = self.package(s.account) {
                    if !Arc::ptr_eq(&s.package, &p) {
                        s.package = p;
                    }
                }
                true
            })
        });
        let added = catalog.accounts.len() - in_force;
        let mut state = self.catalog_state.lock().unwrap_or_else(|e| e.into_inner());
        state.version = installed.digest.clone();
        if added > 0 {
            state.epochs.push((u32::try_from(in_force).expect("fewer than 2^32 accounts"), at_unix_ms));
        }
        Ok(added)
    }

    /// Records the catalog the engine was loaded with (`load_catalog*`): file digest and
    /// version `digest`, every account existing since `since_unix_ms`.
    pub fn set_catalog_base(&self, digest: &str, since_unix_ms: u64) {
        *self.catalog_state.lock().unwrap_or_else(|e| e.into_inner()) = redo::CatalogState {
            file: digest.to_owned(),
            version: digest.to_owned(),
            epochs: vec![(0, since_unix_ms)],
        };
    }

    /// Loads a snapshot's catalog (`state`; `catalog` is its file's): creates the accounts,
    /// each range since its time, and assigns packages. Returns the accounts created.
    pub fn load_catalog_state(
        &self,
        catalog: &Catalog,
        state: &redo::CatalogState,
        now: Now,
    ) -> Result<usize, String> {
        let packages = catalog.packages();
        for (k, &(first, since)) in state.epochs.iter().enumerate() {
            let end = state.epochs.get(k + 1).map_or(catalog.accounts.len(), |e| e.0 as usize);
            if end > catalog.accounts.len() || (first as usize) > end {
                return Err(format!(
                    "the snapshot's account ranges do not fit the catalog ({} accounts)",
                    catalog.accounts.len()
                ));
            }
            create_accounts(self, catalog, &packages, first as usize..end, |valid_ms| {
                redo::mono_ms(now, since.saturating_add(valid_ms))
            })?;
        }
        *self.catalog_state.lock().unwrap_or_else(|e| e.into_inner()) = state.clone();
        Ok(catalog.accounts.len())
    }

    /// The catalog in force, as snapshots record it.
    pub fn catalog_state(&self) -> redo::CatalogState {
        self.catalog_state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Names the file holding the catalog in force (the checkpointer stores it before it
    /// writes a snapshot).
    pub fn set_catalog_file(&self, digest: &str) {
        self.catalog_state.lock().unwrap_or_else(|e| e.into_inner()).file = digest.to_owned();
    }
}

/// What pays for a grant.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Funds {
    Bundle,
    Money,
}

/// The tariff facts of a grant being made.
#[derive(Clone, Copy, Debug)]
struct GrantShape {
    band: u8,
    band_after: u8,
    /// NTP seconds.
    tariff_time_change: Option<u32>,
}

impl GrantShape {
    /// Records a reserved grant in the rating-group state: the open hold, its bands, and the
    /// decision (units, Tariff-Time-Change) that `RgState::answer` writes.
    fn record(self, rg: &mut RgState, units: u64, funds: Funds) {
        rg.set(OPEN, true);
        rg.set(FROM_BUNDLE, funds == Funds::Bundle);
        rg.set(LAST_GRANTED, true);
        rg.band_before = self.band;
        rg.band_after = self.band_after;
        rg.last_units = units;
        rg.grant_number = rg.last_number;
        rg.last_tariff_time_change = self.tariff_time_change.unwrap_or(0);
    }
}

/// One rating group's decision, as `service_request` logs it.
#[derive(Clone, Copy, Debug)]
struct Decision {
    result: ResultCode,
    why: Why,
    /// The hold of the new grant (0 for bundle units and refusals).
    reserved: MoneyMinor,
    /// What the reported usage cost.
    debited: MoneyMinor,
}

impl Decision {
    fn refused(result: ResultCode, why: Why) -> Self {
        Self { result, why, reserved: MoneyMinor(0), debited: MoneyMinor(0) }
    }
}

/// Why a decision came out as it did: the `why` of its debug line. A small enum while
/// deciding; text only when the line is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Why {
    // A rating group's grant. The discriminants index `WHY_TEXTS` (0 is "not known").
    Bundle = 1,
    Requested,
    Quota,
    FairShare,
    FinalUnit,
    NothingRequested,
    Terminated,
    // Refusals, of a rating group or of the whole request.
    CreditLimit,
    LedgerBarred,
    LedgerGone,
    LedgerFunds,
    LedgerLimit,
    LedgerOther,
    NoService,
    RatingGroupsMax,
    UnknownSubscriber,
    NoPackage,
    ContextNotServed,
    UnknownSession,
    SessionClosed,
    // The command level and events.
    RatingGroups,
    Retransmission,
    Debited,
    Refunded,
    BalanceChecked,
    PriceQuoted,
}

/// `Why::text` by `Why::code`; index 0 is "not known".
const WHY_TEXTS: [&str; Why::PriceQuoted as usize + 1] = [
    "not known: decided before the last restart (the journal keeps the result, not the reason)",
    "granted from a bundle's free units",
    "granted the units requested",
    "granted the service's quota",
    "cut to an equal share of the balance: other grants are open on the account",
    "final unit: the remaining balance covers only the units granted",
    "usage charged; no units requested",
    "session ends: usage charged, the open grant released",
    "4012: the balance is below the cost of the smallest grant",
    "the account is barred",
    "the account is gone",
    "the balance does not cover it",
    "the account holds as many reservations as it may",
    "the ledger refused the operation",
    "5031: no service of the plan rates this rating group / service id",
    "the session uses as many rating groups as it may",
    "5030: no account has these Subscription-Ids",
    "the account has no price package",
    "4010: the plan serves no service in this Service-Context-Id",
    "5002: no such session",
    "5002: the session has ended",
    "from the rating groups: 2001 if any succeeded, else their common failure",
    "retransmission: the answer remembered for this CC-Request-Number",
    "event: debited",
    "event: refunded",
    "event: balance checked",
    "event: price quoted",
];

impl Why {
    /// Why the ledger refused.
    fn ledger(r: Reject) -> Self {
        match r {
            Reject::AccountBarred => Self::LedgerBarred,
            Reject::AccountNotFound => Self::LedgerGone,
            Reject::InsufficientFunds | Reject::InsufficientUnits => Self::LedgerFunds,
            Reject::LimitReached => Self::LedgerLimit,
            _ => Self::LedgerOther,
        }
    }

    /// A byte for the decision's reason: its index into `WHY_TEXTS`, never 0.
    fn code(self) -> u8 {
        self as u8
    }

    fn text(self) -> &'static str {
        WHY_TEXTS[usize::from(self.code())]
    }
}

/// The text of a stored `Why::code`.
pub(super) fn why_text(code: u8) -> &'static str {
    WHY_TEXTS.get(usize::from(code)).copied().unwrap_or(WHY_TEXTS[0])
}

/// The debug line of one rating group's decision (`Engine::service_request`). The request ids
/// (peer, hbh, e2e) come from the span `net::charging` opens.
#[cold]
#[inline(never)]
fn log_decision(session: &Session, package: &Package, ccr: &Ccr<'_>, m: &Mscc<'_>, d: &Decision) {
    let rg = decided_rg(session, m, ccr.request_number);
    tracing::debug!(
        session = ccr.session_id,
        request = ?ccr.request_type,
        number = ccr.request_number,
        rating_group = m.rating_group,
        service_id = m.service_id,
        result = d.result.0,
        granted = rg.filter(|r| r.is(LAST_GRANTED)).map(|r| r.last_units),
        unit = rg.map(|r| tracing::field::debug(package.services[usize::from(r.service)].rate.unit)),
        final_unit = rg.is_some_and(|r| r.is(LAST_FINAL)),
        reserved = d.reserved.0,
        debited = d.debited.0,
        currency = package.currency.code,
        why = d.why.text(),
        "rating group decision"
    );
}

/// The debug line of a request's answer (`Engine::write`, which every CCA goes through).
#[cold]
#[inline(never)]
fn log_answer(ccr: &Ccr<'_>, result: ResultCode, why: Why, a: &Answer<'_>) {
    tracing::debug!(
        session = ccr.session_id,
        request = ?ccr.request_type,
        number = ccr.request_number,
        result = result.0,
        cost = a.cost.map(|c| c.money.0),
        remaining_balance = a.remaining_balance.map(|c| c.money.0),
        currency = a.cost.or(a.remaining_balance).map(|c| c.currency.code),
        why = why.text(),
        "credit-control answer"
    );
}

/// The rating group of `m` if it decided for request `number` (for the debug line).
fn decided_rg<'s>(session: &'s Session, m: &Mscc<'_>, number: u32) -> Option<&'s RgState> {
    let rating_group = rg_of(m.rating_group);
    session
        .rgs
        .iter()
        .find(|r| r.rating_group == rating_group && r.is(LAST_DECIDED) && r.last_number == number)
}

/// A CC-Money amount in minor units of `currency`, if it is in that currency (or names none)
/// and fits; fractions of a minor unit are dropped (the client asked for at most this much).
fn money_minor(money: super::ccr::Money, currency: rating::Currency) -> Option<MoneyMinor> {
    if money.currency.is_some_and(|c| c != currency.numeric) || money.value_digits < 0 {
        return None;
    }
    let shift = money.exponent.checked_add(i32::from(currency.exponent))?;
    let value = if shift >= 0 {
        money.value_digits.checked_mul(10i64.checked_pow(u32::try_from(shift).ok()?)?)?
    } else {
        money.value_digits / 10i64.checked_pow(u32::try_from(-shift).ok()?).unwrap_or(i64::MAX)
    };
    Some(MoneyMinor(value))
}

fn ntp(unix_secs: u64) -> u32 {
    (unix_secs + NTP_UNIX_OFFSET_SECS) as u32
}

fn serves_context(package: &Package, context: u32) -> bool {
    package.services.iter().any(|s| s.contexts.is_empty() || s.contexts.contains(&context))
}

fn find_service(package: &Package, context: u32, m: &Mscc<'_>) -> Option<u16> {
    package
        .services
        .iter()
        .position(|s| {
            (s.contexts.is_empty() || s.contexts.contains(&context))
                && (s.rating_groups.is_empty()
                    || m.rating_group.is_some_and(|rg| s.rating_groups.contains(&rg)))
                && (s.service_ids.is_empty() || m.service_id.is_some_and(|id| s.service_ids.contains(&id)))
        })
        .map(|i| i as u16)
}

fn push_answer<'p>(answer: &mut Answer<'p>, ccr: &Ccr<'_>, a: MsccAnswer<'p>) {
    if ccr.single.is_some() {
        answer.single = Some(a);
    } else {
        answer.msccs.push(a);
    }
}

/// The command-level Result-Code from the per-MSCC ones: success if any service succeeded (or
/// none was asked about); otherwise the common failure, so clients that read only the command
/// level still learn it (e.g. 4012 on a single-MSCC CCR-I).
#[derive(Default)]
struct Results {
    count: usize,
    any_success: bool,
    first_failure: Option<ResultCode>,
    mixed: bool,
}

impl Results {
    fn add(&mut self, r: ResultCode) {
        self.count += 1;
        if r.is_success() {
            self.any_success = true;
        } else if self.first_failure.is_none() {
            self.first_failure = Some(r);
        } else if self.first_failure != Some(r) {
            self.mixed = true;
        }
    }

    fn command(&self) -> ResultCode {
        match self.first_failure {
            Some(common) if !self.any_success && !self.mixed => common,
            _ => ResultCode::SUCCESS,
        }
    }
}

/// The answer to request `ccr` (number n) of `session`, from the decisions its rating groups
/// recorded for n and the command-level `recent` entry. Used for the first answer and for every
/// retransmission alike, so both carry the same AVPs. `None` when a later request has decided
/// again for one of the request's rating groups.
fn build_answer<'p>(session: &'p Session, ccr: &Ccr<'_>, recent: &Recent) -> Option<Answer<'p>> {
    let package = &*session.package;
    let mut answer = Answer::default();
    for m in ccr.services() {
        let rating_group = rg_of(m.rating_group);
        let a = match session.rgs.iter().find(|r| r.rating_group == rating_group) {
            Some(rg) if rg.is(LAST_DECIDED) && rg.last_number == ccr.request_number => {
                rg.answer(m, &package.services[usize::from(rg.service)])
            }
            Some(_) => return None,
            None => {
                // Not recorded (see `service_request`): no service for it, or the session had
                // as many rating groups as it may.
                let mut a = MsccAnswer::success(m.rating_group, m.service_id);
                a.result = if find_service(package, session.context, m).is_none() {
                    ResultCode::RATING_FAILED
                } else {
                    ResultCode::UNABLE_TO_COMPLY
                };
                a
            }
        };
        push_answer(&mut answer, ccr, a);
    }
    let currency = package.currency;
    if recent.flags & RECENT_REMAINING != 0 {
        answer.remaining_balance = Some(Amount { money: MoneyMinor(recent.money), currency });
        answer.low_balance = recent.flags & RECENT_LOW_BALANCE != 0;
    }
    if recent.flags & RECENT_COST != 0 {
        let money = if ccr.request_type == RequestType::Termination {
            session.total_cost()
        } else {
            MoneyMinor(recent.money)
        };
        answer.cost = Some(Amount { money, currency });
    }
    Some(answer)
}

/// TS 32.299 §7.2.94 Low-Balance-Indication: `available` would no longer pay for a full quota
/// of `service`.
fn low_balance(available: MoneyMinor, service: &Service, package: &Package) -> bool {
    let mut full = CumulativeUsage::default();
    full.0[0] = service.quota;
    available < rating::charge(&service.rate, &full, package.currency)
}

/// Bundles live from the catalog load for their number of days.
const DAY_MS: u64 = 86_400_000;

/// `expires_at_ms` turns a bundle's validity into its monotonic deadline.
fn load_catalog(
    engine: &Engine,
    catalog: &Catalog,
    expires_at_ms: impl Fn(u64) -> u64,
) -> Result<usize, String> {
    let packages = catalog.packages();
    create_accounts(engine, catalog, &packages, 0..catalog.accounts.len(), expires_at_ms)?;
    Ok(catalog.accounts.len())
}

/// Creates the catalog's accounts `range`, each with its package.
fn create_accounts(
    engine: &Engine,
    catalog: &Catalog,
    packages: &std::collections::HashMap<String, SharedPackage>,
    range: std::ops::Range<usize>,
    expires_at_ms: impl Fn(u64) -> u64,
) -> Result<(), String> {
    for (i, a) in catalog.accounts.iter().enumerate().take(range.end).skip(range.start) {
        let package = packages
            .get(&a.customer)
            .ok_or_else(|| format!("accounts[{i}]: customer {:?} has no package", a.customer))?;
        let currency = package.currency;
        let bundles = package
            .bundles
            .iter()
            .map(|b| NewBundle {
                service: b.service.clone(),
                units: b.units,
                expires_at_ms: expires_at_ms(u64::from(b.valid_days) * DAY_MS),
            })
            .collect();
        let account = NewAccount {
            customer: a.customer.clone(),
            subscriptions: a.subscription_ids.iter().map(|s| (s.kind, s.data.clone())).collect(),
            currency,
            funding: a.funding,
            status: if a.closed { AccountStatus::Barred } else { a.status },
            balance: MoneyMinor::from_decimal_up(a.balance, currency),
            credit_limit: MoneyMinor::from_decimal_up(a.credit_limit, currency),
            bundles,
        };
        let id = engine.ledger.create(account).map_err(|e| format!("accounts[{i}]: {e:?}"))?;
        debug_assert_eq!(id.0 as usize, i, "accounts are numbered in catalog order");
        engine.set_package(id, Arc::clone(package));
    }
    Ok(())
}
