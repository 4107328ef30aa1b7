//! Read-only views of sessions for the admin API (issue 7): list and inspect what a session
//! holds — its Session-Id and client, account, state, and per rating group the last grant,
//! its hold, the usage so far and the last decision. Not the hot path: a list scans every
//! shard, but holds each shard's lock only while it copies what it needs, and reads the
//! ledger's holds after letting the shard go.

use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use super::{
    Engine, Now, Session, State, LAST_DECIDED, LAST_FINAL, LAST_GRANTED, OPEN, RECENT_USED, RG_NONE,
};
use crate::diameter::ResultCode;
use crate::ledger::AccountId;
use crate::rating::{Currency, MoneyMinor, UnitKind};

use super::redo;

/// Which sessions `Engine::sessions` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionFilter {
    All,
    Account(AccountId),
}

/// A session's place in the listing order: its 128-bit keyed hash, written as 32 hex digits.
/// The order is arbitrary but stable, so `after` pages through a table that changes meanwhile
/// without repeating a session (one opened behind the cursor is missed, as in any keyset
/// paging).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionCursor(pub u128);

impl fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for SessionCursor {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(Self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Open,
    /// Ended by a CCR-T; kept for `closed_retention_ms` so retransmissions and late usage are
    /// still answered, then forgotten.
    Closed,
    /// Silent past its deadline (Tcc); its holds were released. Kept like a closed one.
    Expired,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Expired => "expired",
        }
    }
}

/// A session as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    pub cursor: SessionCursor,
    /// `None` for a session recovered from a record written before gyro kept it (`session`
    /// fills in the Session-Id it was asked for).
    pub session_id: Option<String>,
    /// The Origin-Host of the CCR-I that opened the session; `None` as for `session_id`.
    pub origin_host: Option<String>,
    pub account: AccountId,
    pub currency: Currency,
    pub state: SessionState,
    /// The highest CC-Request-Number answered.
    pub request_number: u32,
    /// Open: the Tcc deadline; closed: when it closed; expired: the deadline it missed.
    pub deadline_unix_ms: u64,
    /// The command-level answers remembered for retransmissions, oldest first.
    pub answers: Vec<AnswerView>,
    pub rating_groups: Vec<RatingGroupView>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerView {
    pub request_number: u32,
    pub result_code: ResultCode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatingGroupView {
    /// `None`: the single-service form (no Rating-Group AVP).
    pub rating_group: Option<u32>,
    pub service: String,
    pub unit: UnitKind,
    /// Units of the last grant, if the last decision granted.
    pub granted_units: Option<u64>,
    /// A grant is open (reserved in the ledger, or bundle units held).
    pub open: bool,
    /// The open grant is held on a bundle's free units rather than on money.
    pub from_bundle: bool,
    /// Money held for the open grant (0 for bundle units or none open).
    pub reserved: MoneyMinor,
    /// When the open grant's hold expires (Validity-Time + the Tcc grace).
    pub validity_deadline_unix_ms: Option<u64>,
    /// Units paid with money so far (bundle units are counted in the account's bundles).
    pub used_units: u64,
    /// What those units cost.
    pub debited: MoneyMinor,
    /// The last grant carried a Final-Unit-Indication.
    pub final_unit: bool,
    /// The CC-Request-Number and Result-Code of this rating group's last decision.
    pub last_decision: Option<AnswerView>,
    /// Why it came out so ("granted the service's quota", "4012: the balance is below the cost
    /// of the smallest grant", "final unit: …"): the decision trace's reason, the same text as
    /// the debug log line's `why`. "not known" for a decision made before the last restart.
    pub why: Option<&'static str>,
}

impl Engine {
    /// Open sessions of the accounts `of` selects, as (Session-Id, Origin-Host of the CCR-I),
    /// at most `limit`: whom a RAR reaches after a price change. Sessions recovered without
    /// names (records from before tag 22) are left out: there is no Session-Id to address.
    pub fn open_sessions_of(&self, of: impl Fn(AccountId) -> bool, limit: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.sessions.for_each_shard(|shard| {
            for s in shard.iter() {
                if out.len() >= limit {
                    return;
                }
                if s.state == State::Open && of(s.account) {
                    if let Some((id, host)) = s.names.split() {
                        out.push((id.to_owned(), host.to_owned()));
                    }
                }
            }
        });
        out
    }

    /// The session with this Session-Id, if the table has it (open, or closed or expired and
    /// not yet forgotten).
    pub fn session(&self, now: Now, session_id: &str) -> Option<SessionView> {
        let key = self.sessions.key(session_id);
        let view = {
            let mut shard = self.sessions.lock(key);
            shard.get_mut(key).map(|s| view_of(now, s))
        }?;
        let mut view = self.with_holds(now, view);
        view.session_id.get_or_insert_with(|| session_id.to_owned());
        Some(view)
    }

    /// Up to `limit` sessions after `after` in cursor order (see [`SessionCursor`]), of one
    /// account or all. Two passes, each holding one shard lock at a time: the first finds the
    /// `limit` smallest cursors (a bounded heap, so memory is O(limit) whatever the table's
    /// size), the second copies those sessions; one forgotten in between is left out.
    pub fn sessions(
        &self,
        now: Now,
        filter: SessionFilter,
        after: Option<SessionCursor>,
        limit: usize,
    ) -> Vec<SessionView> {
        if limit == 0 {
            return Vec::new();
        }
        let mut smallest: BinaryHeap<SessionCursor> = BinaryHeap::with_capacity(limit + 1);
        self.sessions.for_each_shard(|shard| {
            for s in shard.iter() {
                let cursor = cursor_of(s);
                let wanted = match filter {
                    SessionFilter::All => true,
                    SessionFilter::Account(a) => s.account == a,
                };
                if !wanted || after.is_some_and(|a| cursor <= a) {
                    continue;
                }
                if smallest.len() < limit {
                    smallest.push(cursor);
                } else if smallest.peek().is_some_and(|&max| cursor < max) {
                    smallest.pop();
                    smallest.push(cursor);
                }
            }
        });
        let mut views = Vec::with_capacity(smallest.len());
        for cursor in smallest.into_sorted_vec() {
            let key = super::SessionKey([(cursor.0 >> 64) as u64, cursor.0 as u64]);
            let view = {
                let mut shard = self.sessions.lock(key);
                shard.get_mut(key).map(|s| view_of(now, s))
            };
            if let Some(view) = view {
                views.push(self.with_holds(now, view));
            }
        }
        views
    }

    /// Fills in the money and deadline of each open grant's hold from the ledger (after the
    /// session's shard lock is let go; the lock order would allow it under the lock, but an
    /// admin read has no reason to hold a session's CCRs back).
    fn with_holds(&self, now: Now, mut view: PendingView) -> SessionView {
        if view.hold_keys.iter().any(Option::is_some) {
            let holds = self.ledger.holds(view.session.account).unwrap_or_default();
            for (rg, key) in view.session.rating_groups.iter_mut().zip(&view.hold_keys) {
                let Some(key) = key else { continue };
                if let Some(h) = holds.iter().find(|h| h.key == *key) {
                    rg.reserved = h.money;
                    rg.validity_deadline_unix_ms = Some(redo::unix_ms(now, h.expires_at_ms));
                }
            }
        }
        view.session
    }
}

/// A view before the ledger's holds are read: the ledger keys of the open grants, by rating
/// group.
struct PendingView {
    session: SessionView,
    hold_keys: Vec<Option<crate::ledger::ReservationKey>>,
}

fn cursor_of(s: &Session) -> SessionCursor {
    SessionCursor((u128::from(s.key.0[0]) << 64) | u128::from(s.key.0[1]))
}

/// What the session itself holds, copied under its shard lock.
fn view_of(now: Now, s: &Session) -> PendingView {
    let (session_id, origin_host) = match s.names.split() {
        Some((id, host)) => (Some(id.to_owned()), Some(host.to_owned())),
        None => (None, None),
    };
    let mut answers: Vec<AnswerView> = s
        .recent
        .iter()
        .filter(|r| r.flags & RECENT_USED != 0)
        .map(|r| AnswerView { request_number: r.number, result_code: ResultCode(u32::from(r.result)) })
        .collect();
    answers.sort_by_key(|a| a.request_number);
    let mut hold_keys = Vec::with_capacity(s.rgs.len());
    let rating_groups = s
        .rgs
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let service = &s.package.services[usize::from(g.service)];
            hold_keys.push(g.is(OPEN).then(|| s.hold_key(i)));
            RatingGroupView {
                rating_group: (g.rating_group != RG_NONE).then_some(g.rating_group),
                service: service.name.clone(),
                unit: service.rate.unit,
                granted_units: g.is(LAST_GRANTED).then_some(g.last_units),
                open: g.is(OPEN),
                from_bundle: g.is(OPEN) && g.is(super::FROM_BUNDLE),
                reserved: MoneyMinor(0),
                validity_deadline_unix_ms: None,
                used_units: g.usage.0.iter().fold(0u64, |a, &u| a.saturating_add(u)),
                debited: g.debited,
                final_unit: g.is(LAST_FINAL),
                last_decision: g.is(LAST_DECIDED).then(|| AnswerView {
                    request_number: g.last_number,
                    result_code: ResultCode(u32::from(g.last_result)),
                }),
                why: g.is(LAST_DECIDED).then(|| super::why_text(g.last_why)),
            }
        })
        .collect();
    let state = match s.state {
        State::Open => SessionState::Open,
        State::Closed => SessionState::Closed,
        State::Expired => SessionState::Expired,
    };
    let session = SessionView {
        cursor: cursor_of(s),
        session_id,
        origin_host,
        account: s.account,
        currency: s.package.currency,
        state,
        request_number: s.highest,
        deadline_unix_ms: redo::unix_ms(now, s.deadline_ms),
        answers,
        rating_groups,
    };
    PendingView { session, hold_keys }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;

    use super::super::{redo, Names, RecordSink, Recorder};
    use super::*;
    use crate::catalog::Catalog;
    use crate::cc::EngineConfig;
    use crate::diameter::encode::spec;
    use crate::diameter::{
        ApplicationId, AvpSpec, CommandCode, CommandFlags, Encoder, LocalIdentity, MessageRef,
    };
    use crate::ledger::Ledger;

    const NOW: Now = Now { mono_ms: 1_000, unix_secs: 1_796_000_000 };
    const ID: &str = "pgw.test;1;alice";

    fn engine() -> Engine {
        let local = LocalIdentity {
            origin_host: "gyro.test".into(),
            origin_realm: "test".into(),
            host_ip_addresses: vec![],
            vendor_id: 0,
            product_name: "gyro".into(),
            firmware_revision: 0,
            origin_state_id: 1,
        };
        // One key for every engine of a test, as a data directory's identity gives them.
        let cfg = EngineConfig { session_hash_key: [7; 16], ..EngineConfig::new(&local) };
        let engine = Engine::new(cfg, Arc::new(Ledger::new()));
        engine.load_catalog(&Catalog::demo(), NOW.mono_ms).unwrap();
        engine
    }

    /// A data CCR (rating group 10) from `pgw-7.test` for Alice; CCR-T reports 1000 octets.
    fn ccr(kind: u32, number: u32) -> Vec<u8> {
        let mut b = BytesMut::new();
        let flags = CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE);
        let mut e =
            Encoder::new(&mut b, flags, CommandCode::CREDIT_CONTROL, ApplicationId::CREDIT_CONTROL, 1, 1);
        e.str(spec::SESSION_ID, ID);
        e.str(spec::ORIGIN_HOST, "pgw-7.test").str(spec::ORIGIN_REALM, "test");
        e.str(spec::DESTINATION_REALM, "test").u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
        e.u32(AvpSpec::mandatory(416), kind).u32(AvpSpec::mandatory(415), number);
        let g = e.begin_group(AvpSpec::mandatory(443));
        e.u32(AvpSpec::mandatory(450), 0).str(AvpSpec::mandatory(444), "491700000001");
        e.end_group(g);
        let m = e.begin_group(AvpSpec::mandatory(456));
        if kind == 3 {
            let u = e.begin_group(AvpSpec::mandatory(446));
            e.u64(AvpSpec::mandatory(421), 1000);
            e.end_group(u);
        } else {
            let r = e.begin_group(AvpSpec::mandatory(437));
            e.end_group(r);
        }
        e.u32(AvpSpec::mandatory(432), 10);
        e.end_group(m);
        e.finish();
        b.to_vec()
    }

    /// Keeps each request's redo record.
    #[derive(Default)]
    struct Records(Vec<Vec<u8>>);

    impl RecordSink for Records {
        fn append(&mut self, record: &[u8], _answer: &[u8]) -> bool {
            self.0.push(record.to_vec());
            false
        }
    }

    fn send(engine: &Engine, req: &[u8], records: &mut Records) {
        let mut out = BytesMut::new();
        engine.handle_with(NOW, &MessageRef::parse(req).unwrap(), &mut out, records);
    }

    #[test]
    fn a_session_shows_its_id_host_grant_and_last_decision() {
        let e = engine();
        let mut records = Records::default();
        send(&e, &ccr(1, 0), &mut records);
        let v = e.session(NOW, ID).expect("the session is open");
        assert_eq!((v.session_id.as_deref(), v.origin_host.as_deref()), (Some(ID), Some("pgw-7.test")));
        assert_eq!((v.state, v.request_number, v.account), (SessionState::Open, 0, AccountId(0)));
        assert_eq!(v.answers, [AnswerView { request_number: 0, result_code: ResultCode::SUCCESS }]);
        let g = &v.rating_groups[0];
        assert_eq!((g.rating_group, g.unit, g.open), (Some(10), UnitKind::Octets, true));
        assert!(g.granted_units.is_some_and(|u| u > 0), "{g:?}");
        assert!(g.validity_deadline_unix_ms.is_some_and(|d| d > NOW.unix_secs * 1000), "{g:?}");
        assert_eq!(g.last_decision.map(|d| d.result_code), Some(ResultCode::SUCCESS));
        // The decision trace: the demo's Alice is granted from her 1 GiB bundle.
        assert_eq!(g.why, Some("granted from a bundle's free units"), "{g:?}");
        assert_eq!(e.sessions(NOW, SessionFilter::Account(AccountId(0)), None, 10), std::slice::from_ref(&v));
        assert!(e.sessions(NOW, SessionFilter::Account(AccountId(1)), None, 10).is_empty());
        assert!(e.sessions(NOW, SessionFilter::All, Some(v.cursor), 10).is_empty());

        send(&e, &ccr(3, 1), &mut records);
        let v = e.session(NOW, ID).expect("a closed session is kept for closed_retention_ms");
        assert_eq!((v.state, v.request_number), (SessionState::Closed, 1));
        assert!(!v.rating_groups[0].open);
        assert_eq!(v.rating_groups[0].reserved, MoneyMinor(0));
        assert_eq!(v.rating_groups[0].why, Some("session ends: usage charged, the open grant released"));
        assert!(e.session(NOW, "pgw.test;1;nobody").is_none());
    }

    /// The CCR-I's record carries the names (tag 22), a CCR-U's image does not (tag 1) and
    /// recovery keeps the names it replaces; an image written before tag 22 existed still
    /// recovers, with the names unknown; a names field cut short is refused, not misread.
    #[test]
    fn names_are_recovered_and_older_images_still_read() {
        let live = engine();
        let mut records = Records::default();
        send(&live, &ccr(1, 0), &mut records);
        send(&live, &ccr(2, 1), &mut records);
        let described = |r: &[u8]| super::super::describe_record(r, &Default::default()).unwrap();
        assert!(
            described(&records.0[0]).contains("origin_host=\"pgw-7.test\""),
            "{}",
            described(&records.0[0])
        );
        assert!(!described(&records.0[1]).contains("origin_host"), "{}", described(&records.0[1]));

        let recovered = engine();
        for r in &records.0 {
            recovered.recover(NOW, r).unwrap();
        }
        // The same but for the reason of the last decision, which images do not carry.
        let mut view = recovered.session(NOW, ID).unwrap();
        assert!(view.rating_groups[0].why.is_some_and(|w| w.starts_with("not known")), "{view:?}");
        view.rating_groups[0].why = live.session(NOW, ID).unwrap().rating_groups[0].why;
        assert_eq!(Some(view), live.session(NOW, ID));
        assert_eq!(recovered.session(NOW, ID).unwrap().origin_host.as_deref(), Some("pgw-7.test"));

        // The same session as an older gyro wrote it: tag 1 only.
        let key = live.sessions.key(ID);
        let mut old = Recorder::new();
        live.sessions.lock(key).get_mut(key).unwrap().encode(&mut old, NOW);
        let older = engine();
        older.recover(NOW, old.bytes()).unwrap();
        let v = older.session(NOW, ID).unwrap();
        assert_eq!((v.session_id.as_deref(), v.origin_host), (Some(ID), None), "the id asked for, no host");
        let listed = older.sessions(NOW, SessionFilter::All, None, 10);
        assert_eq!((listed[0].session_id.as_ref(), listed[0].request_number), (None, 1));
        // Its snapshot image stays tag 1 rather than inventing names.
        let mut again = Recorder::new();
        older.sessions.lock(key).get_mut(key).unwrap().encode_named(&mut again, NOW);
        assert_eq!(again.bytes()[0], redo::TAG_SESSION);

        let mut cut = records.0[0].clone();
        let names = Names::new(ID, "pgw-7.test").0.len();
        let at = cut.len() - names - 4;
        cut[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
        cut.truncate(at + 4 + 2);
        cut[at + 4..].copy_from_slice(&200u16.to_le_bytes());
        assert!(engine().recover(NOW, &cut).is_err(), "a host longer than its field is refused");
    }
}
