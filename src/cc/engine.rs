//! The credit-control engine: one `handle` call per CCR, synchronous, with all of a session's
//! work done under that session's map entry (so parallel CCR-Us on one session serialise, and
//! different sessions run in parallel). Lock order is always session → ledger account.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use smallvec::SmallVec;

use super::cca::{self, Amount, Answer, Grant, MsccAnswer};
use super::ccr::{session_key, Ccr, Mscc, RequestType, RequestedAction, TariffChangeUsage, Units};
use crate::catalog::{Catalog, Package, Service, SharedPackage};
use crate::diameter::answer::error_answer;
use crate::diameter::{LocalIdentity, MessageRef, ResultCode};
use crate::ledger::{AccountId, Ledger, NewAccount, NewBundle, Reject, ReservationKey};
use crate::rating::{self, CumulativeUsage, MoneyMinor, UnitKind};
use crate::replay::{answer_again, DuplicateCache, KeyCase};

/// Seconds between the NTP era 0 (1900) and the Unix epoch, for Time AVPs (RFC 6733 §4.3.1).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// How far an Event-Timestamp may be from our clock and still be used for rating.
const EVENT_TIMESTAMP_SKEW_MAX_SECS: u64 = 86_400;

/// Answers remembered per session for duplicate CCRs (Session-Id + CC-Request-Number): the
/// last two, which covers a client that sends one CCR-U per MSCC in parallel (magma#8663). A
/// number older than those is refused (5004), never charged twice.
const SESSION_ANSWERS_MAX: usize = 2;

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
}

impl EngineConfig {
    pub fn new(local: &LocalIdentity) -> Self {
        Self { local: local.clone(), tcc_grace_ms: 30_000, closed_retention_ms: 600_000 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub sessions_expired: usize,
    pub sessions_removed: usize,
    pub reservations_released: usize,
}

/// Per rating group state of a session.
#[derive(Clone, Debug)]
struct RgState {
    rating_group: Option<u32>,
    /// Index into the package's services.
    service: u16,
    /// Usage paid with money, cumulative, by band: charging always rates the total.
    usage: CumulativeUsage,
    /// What `usage` has cost so far (= rounded charge of `usage`).
    debited: MoneyMinor,
    /// A reservation is open for this rating group.
    open: bool,
    from_bundle: bool,
    /// Bands in force before and after the Tariff-Time-Change of the open grant.
    band_before: u8,
    band_after: u8,
}

#[derive(Clone, Debug)]
struct Recent {
    number: u32,
    fingerprint: u64,
    /// Reused when the entry is recycled, so a long session allocates nothing per request.
    answer: Vec<u8>,
}

#[derive(Debug)]
struct Session {
    account: AccountId,
    package: SharedPackage,
    context: u32,
    key: u64,
    deadline_ms: u64,
    closed_at_ms: Option<u64>,
    expired: bool,
    rgs: SmallVec<[RgState; 1]>,
    recent: SmallVec<[Recent; SESSION_ANSWERS_MAX]>,
    /// The highest CC-Request-Number answered.
    highest: u32,
}

/// The credit-control engine.
pub struct Engine {
    cfg: EngineConfig,
    ledger: Arc<Ledger>,
    packages: DashMap<AccountId, SharedPackage>,
    /// Boxed: a map slot is then a key and a pointer, and the hash table's growth slack (up to
    /// 2× at a power-of-two boundary) costs 24 bytes per session instead of the whole session.
    sessions: DashMap<Box<str>, Box<Session>>,
    /// Event (CCR-E) answers by (Session-Id, CC-Request-Number): events have no session.
    events: DuplicateCache,
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
fn fingerprint(body: &[u8]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ body.len() as u64;
    let mut chunks = body.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ v).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(31);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    }
    h ^ (h >> 29)
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
            cfg,
            ledger,
            packages: DashMap::new(),
            sessions: DashMap::new(),
            events: DuplicateCache::with_defaults(KeyCase::Sensitive),
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Sets the price package used for an account.
    pub fn set_package(&self, account: AccountId, package: SharedPackage) {
        self.packages.insert(account, package);
    }

    /// Open (not closed, not expired) sessions.
    pub fn open_sessions(&self) -> usize {
        self.sessions.iter().filter(|s| s.closed_at_ms.is_none() && !s.expired).count()
    }

    /// Handles one validated CCR and writes the CCA (or an error answer) into `out`.
    pub fn handle(&self, now: Now, msg: &MessageRef<'_>, out: &mut BytesMut) {
        let ccr = match Ccr::parse(msg) {
            Ok(c) => c,
            Err(e) => {
                error_answer(out, &self.cfg.local, msg, e.result, Some(e.message), Some(&e.failed_avp));
                return;
            }
        };
        match ccr.request_type {
            RequestType::Event => self.event(now, msg, &ccr, out),
            RequestType::Initial => self.initial(now, msg, &ccr, out),
            RequestType::Update | RequestType::Termination => self.update(now, msg, &ccr, out),
        }
    }

    fn write(
        &self,
        out: &mut BytesMut,
        msg: &MessageRef<'_>,
        ccr: &Ccr<'_>,
        result: ResultCode,
        a: &Answer<'_>,
    ) {
        let echo = cca::Echo {
            origin_host: &self.cfg.local.origin_host,
            origin_realm: &self.cfg.local.origin_realm,
            session_id: ccr.session_id,
            request_type: ccr.request_type as u32,
            request_number: ccr.request_number,
        };
        cca::write(out, msg, echo, result, a);
    }

    fn resolve(&self, ccr: &Ccr<'_>) -> Option<AccountId> {
        ccr.subscriptions.iter().find_map(|(kind, data)| self.ledger.lookup(*kind, data))
    }

    /// Replays the remembered answer to a retransmitted request; refuses a different request
    /// under a number already used (it must not be charged a second time). Returns whether an
    /// answer was written.
    fn replay(&self, session: &Session, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut) -> bool {
        let n = ccr.request_number;
        let Some(r) = session.recent.iter().find(|r| r.number == n) else {
            let oldest = session.recent.iter().map(|r| r.number).min().unwrap_or(0);
            if session.recent.len() == SESSION_ANSWERS_MAX && n < oldest && n < session.highest {
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
        if r.fingerprint == fingerprint(msg.body) {
            answer_again(&r.answer, &msg.header, out);
        } else {
            self.refuse_number(msg, ccr, out, "CC-Request-Number already used by a different request");
        }
        true
    }

    fn refuse_number(&self, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut, text: &str) {
        tracing::warn!(session = ccr.session_id, number = ccr.request_number, "{text}");
        let failed = msg.find(crate::diameter::AvpCode(415)).map(|a| a.raw.to_vec()).unwrap_or_default();
        error_answer(out, &self.cfg.local, msg, ResultCode::INVALID_AVP_VALUE, Some(text), Some(&failed));
    }

    fn remember(session: &mut Session, msg: &MessageRef<'_>, ccr: &Ccr<'_>, answer: &[u8]) {
        let mut buf = if session.recent.len() == SESSION_ANSWERS_MAX {
            let oldest = (0..session.recent.len()).min_by_key(|&i| session.recent[i].number).unwrap_or(0);
            session.recent.remove(oldest).answer
        } else {
            Vec::with_capacity(answer.len())
        };
        buf.clear();
        buf.extend_from_slice(answer);
        session.highest = session.highest.max(ccr.request_number);
        session.recent.push(Recent {
            number: ccr.request_number,
            fingerprint: fingerprint(msg.body),
            answer: buf,
        });
    }

    // -----------------------------------------------------------------------------------------
    // CCR-I

    fn initial(&self, now: Now, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut) {
        let start = out.len();
        // The entry stays locked while the session is set up, so the same CCR-I arriving on two
        // connections at once is processed once and replayed once, and no hold is orphaned.
        let vacant = match self.sessions.entry(ccr.session_id.into()) {
            dashmap::mapref::entry::Entry::Occupied(s) => {
                if !self.replay(s.get(), msg, ccr, out) {
                    let text = Some("session already exists");
                    error_answer(out, &self.cfg.local, msg, ResultCode::INVALID_AVP_VALUE, text, None);
                }
                return;
            }
            dashmap::mapref::entry::Entry::Vacant(v) => v,
        };
        let Some(account) = self.resolve(ccr) else {
            // RFC 4006 §9.1 5030 DIAMETER_USER_UNKNOWN.
            self.write(out, msg, ccr, ResultCode::USER_UNKNOWN, &Answer::default());
            return;
        };
        if let Err(r) = self.ledger.available(account) {
            self.write(out, msg, ccr, reject_code(r), &Answer::default());
            return;
        }
        let Some(package) = self.packages.get(&account).map(|p| Arc::clone(&p)) else {
            self.write(out, msg, ccr, ResultCode::UNABLE_TO_COMPLY, &Answer::default());
            return;
        };
        let Some(context) = ccr.context.filter(|c| serves_context(&package, *c)) else {
            // The plan has no service for this context: service not allowed (RFC 4006 §9.1
            // 4010 DIAMETER_END_USER_SERVICE_DENIED).
            self.write(out, msg, ccr, ResultCode::END_USER_SERVICE_DENIED, &Answer::default());
            return;
        };
        let mut session = Session {
            account,
            package: Arc::clone(&package),
            context,
            key: session_key(ccr.session_id),
            deadline_ms: now.mono_ms,
            closed_at_ms: None,
            expired: false,
            rgs: SmallVec::new(),
            recent: SmallVec::new(),
            highest: 0,
        };
        let mut answer = Answer::default();
        for m in ccr.services() {
            let a = self.service_request(now, &mut session, &package, m, true);
            push_answer(&mut answer, ccr, a);
        }
        let result = command_result(&answer);
        self.refresh_deadline(now, &mut session);
        self.write(out, msg, ccr, result, &answer);
        Self::remember(&mut session, msg, ccr, &out[start..]);
        if result.is_success() {
            vacant.insert(Box::new(session));
        } else {
            // RFC 4006 §5.6: a failed CCR-I leaves no session; release what was granted.
            self.release_all(&mut session);
        }
    }

    // -----------------------------------------------------------------------------------------
    // CCR-U / CCR-T

    fn update(&self, now: Now, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut) {
        let start = out.len();
        let Some(mut session) = self.sessions.get_mut(ccr.session_id) else {
            // RFC 4006 §7 (server state machine, Idle: CCR-U/T → 5002) and RFC 6733 §7.1.5
            // DIAMETER_UNKNOWN_SESSION_ID.
            self.write(out, msg, ccr, ResultCode::UNKNOWN_SESSION_ID, &Answer::default());
            return;
        };
        if self.replay(&session, msg, ccr, out) {
            return;
        }
        if session.closed_at_ms.is_some() {
            self.write(out, msg, ccr, ResultCode::UNKNOWN_SESSION_ID, &Answer::default());
            return;
        }
        let package = Arc::clone(&session.package);
        let terminate = ccr.request_type == RequestType::Termination;
        let mut answer = Answer::default();
        for m in ccr.services() {
            let a = self.service_request(now, &mut session, &package, m, !terminate);
            push_answer(&mut answer, ccr, a);
        }
        if terminate {
            // RFC 4006 §5.6: CCR-T releases what was reserved and not used.
            self.release_all(&mut session);
            session.closed_at_ms = Some(now.mono_ms);
            let total = session.rgs.iter().map(|r| r.debited.0).sum::<i64>();
            answer.cost = Some(Amount { money: MoneyMinor(total), currency: package.currency });
            let service = session.rgs.first().map(|r| &package.services[usize::from(r.service)]);
            self.remaining_balance(session.account, &package, service, &mut answer);
        }
        if !terminate && matches!(ccr.aoc_request_type, Some(1 | 2)) {
            // TS 32.299 §6.5 advice of charge: the cost of the session so far.
            let total = session.rgs.iter().map(|r| r.debited.0).sum::<i64>();
            answer.cost = Some(Amount { money: MoneyMinor(total), currency: package.currency });
        }
        session.expired = false;
        self.refresh_deadline(now, &mut session);
        let result = if terminate && answer.msccs.is_empty() && answer.single.is_none() {
            ResultCode::SUCCESS
        } else {
            command_result(&answer)
        };
        self.write(out, msg, ccr, result, &answer);
        Self::remember(&mut session, msg, ccr, &out[start..]);
    }

    /// One MSCC (or the single-service form): charge the reported usage, then grant anew if
    /// asked for.
    fn service_request<'p>(
        &self,
        now: Now,
        session: &mut Session,
        package: &'p Package,
        m: &Mscc<'_>,
        may_grant: bool,
    ) -> MsccAnswer<'p> {
        let mut a = MsccAnswer::success(m.rating_group, m.service_id);
        let idx = match session.rgs.iter().position(|r| r.rating_group == m.rating_group) {
            Some(i) => i,
            None => {
                let Some(service) = find_service(package, session.context, m) else {
                    // TS 32.299: no rate for this rating group → 5031 DIAMETER_RATING_FAILED.
                    a.result = ResultCode::RATING_FAILED;
                    return a;
                };
                if session.rgs.len() == RATING_GROUPS_PER_SESSION_MAX {
                    a.result = ResultCode::UNABLE_TO_COMPLY;
                    return a;
                }
                session.rgs.push(RgState {
                    rating_group: m.rating_group,
                    service,
                    usage: CumulativeUsage::default(),
                    debited: MoneyMinor(0),
                    open: false,
                    from_bundle: false,
                    band_before: 0,
                    band_after: 0,
                });
                session.rgs.len() - 1
            }
        };
        let service = &package.services[usize::from(session.rgs[idx].service)];
        if !m.used.is_empty() {
            self.charge_usage(now, session, idx, service, package, &m.used);
        } else if session.rgs[idx].open && may_grant && m.requested.is_some() {
            // A new request without usage replaces the open grant (e.g. after a RAR).
            self.release_rg(session, idx);
        }
        if !may_grant || m.requested.is_none() {
            if !may_grant {
                self.release_rg(session, idx);
            }
            return a;
        }
        self.grant(now, session, idx, package, m, &mut a);
        a
    }

    /// Sizes and reserves a grant (TS 32.299 §6.3.x; architecture: grant = min(requested,
    /// quota, affordable), bundles first, a fair share of the balance when other sessions are
    /// active, Final-Unit-Indication when the funds do not cover the full quota).
    fn grant<'p>(
        &self,
        now: Now,
        session: &mut Session,
        idx: usize,
        package: &'p Package,
        m: &Mscc<'_>,
        a: &mut MsccAnswer<'p>,
    ) {
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
            .map(|cap| rating::affordable(rate, &session.rgs[idx].usage, band, cap, package.currency));
        let target = requested.or(for_money).map_or(service.quota, |r| r.min(service.quota)).max(1);
        let change = rating::next_band_change(rate, now.unix_secs, package.utc_offset_minutes)
            .filter(|&t| t < now.unix_secs + u64::from(service.validity_time_s));
        let band_after = change.map_or(band, |t| rating::band_at(rate, t, package.utc_offset_minutes));
        let expires_at_ms = now.mono_ms + u64::from(service.validity_time_s) * 1000 + self.cfg.tcc_grace_ms;
        let key = ReservationKey { session: session.key, rating_group: m.rating_group.unwrap_or(u32::MAX) };
        let account = session.account;
        let rg = &mut session.rgs[idx];
        debug_assert!(!rg.open, "charge_usage or release_rg closed the previous grant");
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
                shape.record(rg, a, service, units, Funds::Bundle);
                return;
            }
        }
        let available = match self.ledger.available(account) {
            Ok(v) => v,
            Err(r) => {
                a.result = reject_code(r);
                return;
            }
        };
        let all = rating::affordable(rate, &rg.usage, band, available, package.currency);
        // Fair share: with other grants open on the account (a family plan), take at most an
        // equal share of what is left, so one session does not starve the others.
        let others = self.ledger.open_reservations(account).unwrap_or(0) as i64;
        let share = MoneyMinor(available.0 / (others + 1));
        let fair =
            if others > 0 { rating::affordable(rate, &rg.usage, band, share, package.currency) } else { all };
        let units = target.min(if fair > 0 { fair } else { all });
        if units == 0 {
            // RFC 4006 §9.1 4012 DIAMETER_CREDIT_LIMIT_REACHED.
            a.result = ResultCode::CREDIT_LIMIT_REACHED;
            return;
        }
        let mut after = rg.usage;
        after.0[band] = after.0[band].saturating_add(units);
        let hold = MoneyMinor(
            rating::charge(rate, &after, package.currency).0
                - rating::charge(rate, &rg.usage, package.currency).0,
        );
        if let Err(r) = self.ledger.reserve(now.mono_ms, account, key, hold, None, expires_at_ms) {
            a.result = reject_code(r);
            return;
        }
        shape.record(rg, a, service, units, Funds::Money);
        if all < target && units == all {
            // The last grant the funds allow (RFC 4006 §5.6.2 Final-Unit-Indication). A grant cut
            // by the fair share is not final: more funds remain for later requests.
            a.final_unit = Some(&service.final_unit_action);
            a.final_unit_rules = &service.restriction_filter_rules;
        }
    }

    /// Charges reported usage (Used-Service-Unit), closing the open grant. Late usage — after
    /// the grant expired or beyond it — is charged too, never dropped.
    fn charge_usage(
        &self,
        now: Now,
        session: &mut Session,
        idx: usize,
        service: &Service,
        package: &Package,
        used: &[super::ccr::UsedUnits],
    ) {
        let rate = &service.rate;
        let key = ReservationKey {
            session: session.key,
            rating_group: session.rgs[idx].rating_group.unwrap_or(u32::MAX),
        };
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
        if rg.open && rg.from_bundle {
            match self.ledger.commit(now.mono_ms, account, key, MoneyMinor(0), total) {
                Ok(c) => {
                    // Units beyond what the bundle still had are priced in money.
                    paid = [0; rating::BANDS_PER_RATE_MAX + 1];
                    paid[usize::from(rg.band_before)] = c.units_unpaid;
                }
                Err(r) => tracing::error!(?r, "bundle commit failed; usage priced in money"),
            }
            rg.open = false;
        }
        let mut after = rg.usage;
        for (slot, add) in after.0.iter_mut().zip(paid) {
            *slot = slot.saturating_add(add);
        }
        let new_charge = rating::charge(rate, &after, package.currency);
        let delta = MoneyMinor(new_charge.0 - rg.debited.0);
        // The ledger may have expired the hold on its own deadline before the session sweep
        // noticed; then the usage is charged as late usage, never dropped.
        let committed = rg.open
            && match self.ledger.commit(now.mono_ms, account, key, delta, 0) {
                Ok(c) => {
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
        rg.open = false;
        if !committed && delta.0 > 0 {
            let op = key.session ^ u64::from(key.rating_group).rotate_left(32) ^ new_charge.0 as u64;
            if let Err(r) = self.ledger.debit(now.mono_ms, account, op, delta, true) {
                tracing::error!(?r, "late usage debit failed");
            }
        }
        rg.usage = after;
        rg.debited = new_charge;
    }

    fn release_rg(&self, session: &mut Session, idx: usize) {
        let key = ReservationKey {
            session: session.key,
            rating_group: session.rgs[idx].rating_group.unwrap_or(u32::MAX),
        };
        if session.rgs[idx].open {
            let _ = self.ledger.release(session.account, key);
            session.rgs[idx].open = false;
        }
    }

    fn release_all(&self, session: &mut Session) {
        for i in 0..session.rgs.len() {
            self.release_rg(session, i);
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

    fn event(&self, now: Now, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut) {
        if let Some(answer) = self.events.lookup(now.mono_ms, ccr.session_id, ccr.request_number) {
            answer_again(&answer, &msg.header, out);
            return;
        }
        let start = out.len();
        let changed = self.event_inner(now, msg, ccr, out);
        if changed {
            self.events.insert(
                now.mono_ms,
                ccr.session_id,
                ccr.request_number,
                Bytes::copy_from_slice(&out[start..]),
            );
        }
    }

    /// Returns whether the ledger changed (only then is the answer remembered).
    fn event_inner(&self, now: Now, msg: &MessageRef<'_>, ccr: &Ccr<'_>, out: &mut BytesMut) -> bool {
        let Some(account) = self.resolve(ccr) else {
            self.write(out, msg, ccr, ResultCode::USER_UNKNOWN, &Answer::default());
            return false;
        };
        let action = ccr.requested_action.unwrap_or(RequestedAction::DirectDebiting);
        let mut answer = Answer { requested_action: Some(action as u32), ..Answer::default() };
        let available = match self.ledger.available(account) {
            Ok(v) => v,
            Err(r) => {
                self.write(out, msg, ccr, reject_code(r), &answer);
                return false;
            }
        };
        let Some(package) = self.packages.get(&account).map(|p| Arc::clone(&p)) else {
            self.write(out, msg, ccr, ResultCode::UNABLE_TO_COMPLY, &answer);
            return false;
        };
        let Some(context) = ccr.context.filter(|c| serves_context(&package, *c)) else {
            self.write(out, msg, ccr, ResultCode::END_USER_SERVICE_DENIED, &answer);
            return false;
        };
        let empty = Mscc::default();
        let m = ccr.services().first().unwrap_or(&empty);
        let Some(si) = find_service(&package, context, m) else {
            self.write(out, msg, ccr, ResultCode::RATING_FAILED, &answer);
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
        let op =
            session_key(ccr.session_id) ^ u64::from(ccr.request_number).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (result, changed) = match action {
            RequestedAction::DirectDebiting => {
                let bundle = self
                    .ledger
                    .find_bundle(account, &service.name, now.mono_ms)
                    .filter(|&(_, free)| free >= units);
                let key = ReservationKey { session: op, rating_group: m.rating_group.unwrap_or(u32::MAX) };
                let paid_by_bundle = bundle.is_some_and(|(b, _)| {
                    self.ledger
                        .reserve(
                            now.mono_ms,
                            account,
                            key,
                            MoneyMinor(0),
                            Some((b, units)),
                            now.mono_ms + 1000,
                        )
                        .is_ok()
                        && self.ledger.commit(now.mono_ms, account, key, MoneyMinor(0), units).is_ok()
                });
                if paid_by_bundle {
                    answer.cost = Some(Amount { money: MoneyMinor(0), currency: package.currency });
                    mscc.grant = Some(grant);
                    (ResultCode::SUCCESS, true)
                } else {
                    match self.ledger.debit(now.mono_ms, account, op, cost, false) {
                        Ok(_) => {
                            answer.cost = Some(Amount { money: cost, currency: package.currency });
                            mscc.grant = Some(grant);
                            (ResultCode::SUCCESS, true)
                        }
                        Err(r) => (reject_code(r), false),
                    }
                }
            }
            RequestedAction::RefundAccount => match self.ledger.refund(account, op, cost) {
                Ok(_) => {
                    answer.cost = Some(Amount { money: cost, currency: package.currency });
                    (ResultCode::SUCCESS, true)
                }
                Err(r) => (reject_code(r), false),
            },
            RequestedAction::CheckBalance => {
                answer.check_balance_enough = Some(available >= cost && available.0 > 0);
                (ResultCode::SUCCESS, false)
            }
            RequestedAction::PriceEnquiry => {
                answer.cost = Some(Amount { money: cost, currency: package.currency });
                (ResultCode::SUCCESS, false)
            }
        };
        mscc.result = result;
        self.remaining_balance(account, &package, Some(service), &mut answer);
        if single {
            answer.single = Some(mscc);
        } else {
            answer.msccs.push(mscc);
        }
        self.write(out, msg, ccr, result, &answer);
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
        answer.low_balance = service.is_some_and(|s| {
            let mut full = CumulativeUsage::default();
            full.0[0] = s.quota;
            available < rating::charge(&s.rate, &full, package.currency)
        });
    }

    // -----------------------------------------------------------------------------------------
    // Supervision

    /// Session supervision (RFC 4006 §8.38 Tcc): a session silent past its deadline has its
    /// reservations released; closed and expired sessions are forgotten after the retention
    /// period. Called periodically by `net`.
    pub fn sweep(&self, now: Now) -> SweepStats {
        let mut stats = SweepStats::default();
        let retention = self.cfg.closed_retention_ms;
        self.sessions.retain(|_, s| {
            if let Some(at) = s.closed_at_ms {
                let keep = now.mono_ms < at + retention;
                stats.sessions_removed += usize::from(!keep);
                return keep;
            }
            if !s.expired && s.deadline_ms <= now.mono_ms {
                for i in 0..s.rgs.len() {
                    if s.rgs[i].open {
                        let key = ReservationKey {
                            session: s.key,
                            rating_group: s.rgs[i].rating_group.unwrap_or(u32::MAX),
                        };
                        let _ = self.ledger.release(s.account, key);
                        s.rgs[i].open = false;
                        stats.reservations_released += 1;
                    }
                }
                s.expired = true;
                stats.sessions_expired += 1;
            }
            if s.expired && now.mono_ms >= s.deadline_ms + retention {
                stats.sessions_removed += 1;
                return false;
            }
            true
        });
        for _ in self.ledger.expire(now.mono_ms) {
            stats.reservations_released += 1;
        }
        stats
    }

    /// Loads a catalog: creates accounts in the ledger and assigns each its package.
    pub fn load_catalog(&self, catalog: &Catalog, now_ms: u64) -> Result<usize, String> {
        load_catalog(self, catalog, now_ms)
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
    /// Records a reserved grant in the rating-group state and the answer: units, Validity-Time,
    /// Tariff-Time-Change, the quota threshold (the share of the grant that, left over,
    /// triggers a report) and Quota-Holding-Time as the plan configures them.
    fn record<'p>(
        self,
        rg: &mut RgState,
        a: &mut MsccAnswer<'p>,
        service: &'p Service,
        units: u64,
        funds: Funds,
    ) {
        rg.open = true;
        rg.from_bundle = funds == Funds::Bundle;
        rg.band_before = self.band;
        rg.band_after = self.band_after;
        a.grant = Some(Grant { unit: service.rate.unit, units, tariff_time_change: self.tariff_time_change });
        a.validity_time_s = Some(service.validity_time_s);
        a.threshold = service
            .threshold_percent
            .map(|p| u32::try_from(units.saturating_mul(u64::from(p)) / 100).unwrap_or(u32::MAX));
        a.quota_holding_time_s = service.quota_holding_time_s;
    }
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
fn command_result(answer: &Answer<'_>) -> ResultCode {
    let mut results = answer.msccs.iter().chain(answer.single.iter()).map(|m| m.result);
    let Some(first) = results.next() else { return ResultCode::SUCCESS };
    if first.is_success() {
        return ResultCode::SUCCESS;
    }
    let mut common = Some(first);
    for r in results {
        if r.is_success() {
            return ResultCode::SUCCESS;
        }
        if Some(r) != common {
            common = None;
        }
    }
    common.unwrap_or(ResultCode::SUCCESS)
}

/// Bundles live from the catalog load for their number of days.
const DAY_MS: u64 = 86_400_000;

fn load_catalog(engine: &Engine, catalog: &Catalog, now_ms: u64) -> Result<usize, String> {
    let packages = catalog.packages();
    for (i, a) in catalog.accounts.iter().enumerate() {
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
                expires_at_ms: now_ms.saturating_add(u64::from(b.valid_days) * DAY_MS),
            })
            .collect();
        let account = NewAccount {
            customer: a.customer.clone(),
            subscriptions: a.subscription_ids.iter().map(|s| (s.kind, s.data.clone())).collect(),
            currency,
            funding: a.funding,
            status: a.status,
            balance: MoneyMinor::from_decimal_up(a.balance, currency),
            credit_limit: MoneyMinor::from_decimal_up(a.credit_limit, currency),
            bundles,
        };
        let id = engine.ledger.create(account).map_err(|e| format!("accounts[{i}]: {e:?}"))?;
        engine.set_package(id, Arc::clone(package));
    }
    Ok(catalog.accounts.len())
}
