//! Redo records: what one request (or one supervision sweep) changed, as one journal record,
//! and the parsing recovery needs to apply it again.
//!
//! A record is a sequence of entries, each a tag byte and little-endian fields. It is written
//! under the session's shard lock, after the change and before the answer leaves (the answer
//! waits until the record is durable: architecture invariant 1), and it is one journal record,
//! so a request's changes are recovered all together or not at all.
//!
//! Why logical operations and not account images: several sessions change one account (a
//! family plan) under different session locks, so their records may reach the journal in
//! another order than the ledger applied them. Ledger operations commute (balances and holds
//! add and subtract) when recovery applies them without the funds checks, which only decided
//! whether they happened at all; account images would not commute. Each grant's hold has a key
//! of its own (session, rating group, the CC-Request-Number that granted it), so a release by
//! the ledger's own expiry that reaches the journal late cannot hit a later hold.
//!
//! Times: deadlines are stored as Unix milliseconds (the monotonic clock restarts with the
//! process) and turned back into monotonic ones on recovery; one that passed meanwhile expires
//! at the first sweep.

use crate::ledger::{AccountId, BundleIndex, ReservationKey};
use crate::rating::MoneyMinor;

use super::engine::Now;

pub(super) const TAG_SESSION: u8 = 1;
pub(super) const TAG_RESERVE: u8 = 2;
pub(super) const TAG_COMMIT: u8 = 3;
pub(super) const TAG_RELEASE: u8 = 4;
pub(super) const TAG_DEBIT: u8 = 5;
pub(super) const TAG_REFUND: u8 = 6;
pub(super) const TAG_EVENT: u8 = 7;
pub(super) const TAG_SESSION_GONE: u8 = 8;
/// Snapshots only: an account's balance, status, bundles and holds.
pub(super) const TAG_ACCOUNT: u8 = 9;
// Tags 10–14 are settlement entries (`settlement::outbox`), framed `tag | length u32 | body`
// so this module need not know their bodies: the outbox entry written with a session's or an
// event's last debit (10), the worker's steps (11), in snapshots the pending settlements (12)
// and the numbering series (13), and a period's settlements grouped (14).
/// An operator's top-up (the admin API): `account u32 | op key u64 | amount i64`.
pub(super) const TAG_TOP_UP: u8 = 20;
/// An operator's bar or unbar: `account u32 | status u8` (0 active, 1 barred).
pub(super) const TAG_STATUS: u8 = 21;
/// A session's image followed by its names (`length u32 | host length u16 | Origin-Host |
/// Session-Id`): the CCR-I's record and snapshots. Tag 1's entries are not framed by a length,
/// so a trailing field could not be told from the next entry: a new tag, which an older gyro
/// refuses ("unknown entry tag") rather than misreads. Tag 1 stays for the images of CCR-U,
/// CCR-T and sweeps (the names do not change) and for records written before tag 22.
pub(super) const TAG_SESSION_NAMED: u8 = 22;
/// A catalog file installed (live reload, `PUT /v1/catalog`, a changed file at start):
/// `length u16 | digest (ASCII) | installed Unix ms u64`. Always a record of its own; the
/// catalog's text is the file `catalogs/<digest>.toml` in the data directory, made durable
/// before the record was appended. `durable` replays it (it reads the file).
pub(super) const TAG_CATALOG: u8 = 23;
/// An admin API edit of the catalog (a customer or account created, updated, closed):
/// `installed Unix ms u64 | length u32 | the edit as JSON` (`catalog::Edit`). A record of its
/// own; `durable` replays it by making the same edit on the catalog in force then.
pub(super) const TAG_CATALOG_EDIT: u8 = 24;
/// Snapshots only, right after the magic: the catalog in force at the snapshot —
/// `length u16 | file digest` (the `catalogs/<digest>.toml` holding it) `| length u16 |
/// version` (its digest as metrics show it) `| count u32 | (first account u32 | since Unix
/// ms u64) × count` (from which account on, accounts exist since when: bundle validity).
pub(super) const TAG_CATALOG_STATE: u8 = 25;

fn put_str16(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&u16::try_from(s.len()).expect("a digest is short").to_le_bytes());
    v.extend_from_slice(s.as_bytes());
}

fn get_str16(bytes: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?));
    let s = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((s.to_owned(), &bytes[2 + len..]))
}

fn get_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    Some((u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?), &bytes[8..]))
}

fn get_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    Some((u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?), &bytes[4..]))
}

/// The record for catalog file `digest`, installed at `unix_ms`.
pub fn catalog_entry(digest: &str, unix_ms: u64) -> Vec<u8> {
    let mut v = vec![TAG_CATALOG];
    put_str16(&mut v, digest);
    v.extend_from_slice(&unix_ms.to_le_bytes());
    v
}

/// A whole catalog-file record: (digest, Unix ms), or `None` if `record` is not one.
pub fn read_catalog_entry(record: &[u8]) -> Option<(String, u64)> {
    let (digest, rest) = get_str16(record.strip_prefix(&[TAG_CATALOG])?)?;
    match get_u64(rest)? {
        (unix_ms, []) => Some((digest, unix_ms)),
        _ => None,
    }
}

/// The record for an admin edit (`json`, a serialized `catalog::Edit`) made at `unix_ms`.
pub fn catalog_edit_entry(unix_ms: u64, json: &[u8]) -> Vec<u8> {
    let mut v = vec![TAG_CATALOG_EDIT];
    v.extend_from_slice(&unix_ms.to_le_bytes());
    v.extend_from_slice(&u32::try_from(json.len()).expect("an edit is small").to_le_bytes());
    v.extend_from_slice(json);
    v
}

/// A whole admin-edit record: (Unix ms, JSON), or `None` if `record` is not one.
pub fn read_catalog_edit_entry(record: &[u8]) -> Option<(u64, &[u8])> {
    let (unix_ms, rest) = get_u64(record.strip_prefix(&[TAG_CATALOG_EDIT])?)?;
    let (len, rest) = get_u32(rest)?;
    (rest.len() == len as usize).then_some((unix_ms, rest))
}

/// The catalog in force at a snapshot (`TAG_CATALOG_STATE`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogState {
    /// The digest of the file in `catalogs/` that holds it.
    pub file: String,
    /// Its version (what metrics and the admin API show): the file's digest, or after admin
    /// edits a digest chained over them.
    pub version: String,
    /// (first account, Unix ms): accounts from `first` on exist since then.
    pub epochs: Vec<(u32, u64)>,
}

impl CatalogState {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![TAG_CATALOG_STATE];
        put_str16(&mut v, &self.file);
        put_str16(&mut v, &self.version);
        v.extend_from_slice(&u32::try_from(self.epochs.len()).expect("few epochs").to_le_bytes());
        for (first, since) in &self.epochs {
            v.extend_from_slice(&first.to_le_bytes());
            v.extend_from_slice(&since.to_le_bytes());
        }
        v
    }

    /// The state at the start of `bytes` and what follows it.
    fn decode(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let (file, rest) = get_str16(bytes.strip_prefix(&[TAG_CATALOG_STATE])?)?;
        let (version, rest) = get_str16(rest)?;
        let (n, mut rest) = get_u32(rest)?;
        let mut epochs = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            let (first, r) = get_u32(rest)?;
            let (since, r) = get_u64(r)?;
            epochs.push((first, since));
            rest = r;
        }
        Some((Self { file, version, epochs }, rest))
    }

    /// The state a snapshot body names, if any (snapshots written before live reload have
    /// none: their catalog is the data directory's first).
    pub fn of_snapshot(body: &[u8]) -> Option<Self> {
        Self::decode(body.strip_prefix(SNAPSHOT_MAGIC.as_slice())?).map(|(s, _)| s)
    }

    /// `body` after the magic and the state, if any.
    pub(super) fn skip(body: &[u8]) -> &[u8] {
        Self::decode(body).map_or(body, |(_, rest)| rest)
    }
}

/// The first bytes of a snapshot body.
pub(super) const SNAPSHOT_MAGIC: &[u8; 8] = b"GYROSNP1";

/// Builds one record. Reused across requests: clearing keeps the capacity, so steady state
/// does not allocate.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    pub(super) buf: Vec<u8>,
}

impl Recorder {
    pub(super) fn new() -> Self {
        Self::default()
    }

    pub(super) fn clear(&mut self) {
        self.buf.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub(super) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub(super) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn bytes_field(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).expect("a record field below 4 GiB"));
        self.buf.extend_from_slice(v);
        self
    }

    fn key(&mut self, account: AccountId, key: ReservationKey) -> &mut Self {
        self.u32(account.0).u64(key.session).u32(key.rating_group)
    }

    pub(super) fn reserve(
        &mut self,
        now: Now,
        account: AccountId,
        key: ReservationKey,
        money: MoneyMinor,
        units: Option<(BundleIndex, u64)>,
        expires_at_ms: u64,
    ) {
        let (bundle, units) = units.map_or((u16::MAX, 0), |(b, u)| (b.0, u));
        self.u8(TAG_RESERVE).key(account, key).i64(money.0).u16(bundle).u64(units);
        self.u64(unix_ms(now, expires_at_ms));
    }

    /// `units` are the bundle units the commit consumed (not the reported ones), so recovery
    /// consumes exactly as many whatever order it sees other sessions' commits in.
    pub(super) fn commit(&mut self, account: AccountId, key: ReservationKey, money: MoneyMinor, units: u64) {
        self.u8(TAG_COMMIT).key(account, key).i64(money.0).u64(units);
    }

    pub(super) fn release(&mut self, account: AccountId, key: ReservationKey) {
        self.u8(TAG_RELEASE).key(account, key);
    }

    /// `allow_overdraft` as the debit was made: recovery remembers its key as that operation.
    pub(super) fn debit(&mut self, account: AccountId, op: u64, amount: MoneyMinor, allow_overdraft: bool) {
        self.u8(TAG_DEBIT).u32(account.0).u64(op).i64(amount.0).u8(u8::from(allow_overdraft));
    }

    pub(super) fn refund(&mut self, account: AccountId, op: u64, amount: MoneyMinor) {
        self.u8(TAG_REFUND).u32(account.0).u64(op).i64(amount.0);
    }

    pub(super) fn top_up(&mut self, account: AccountId, op: u64, amount: MoneyMinor) {
        self.u8(TAG_TOP_UP).u32(account.0).u64(op).i64(amount.0);
    }

    pub(super) fn status(&mut self, account: AccountId, barred: bool) {
        self.u8(TAG_STATUS).u32(account.0).u8(u8::from(barred));
    }

    /// An event's answer, with the request's fingerprint, so a retransmitted CCR-E is answered
    /// again after a restart (and a different one under its number refused).
    pub(super) fn event(&mut self, session_id: &str, number: u32, fingerprint: u32, answer: &[u8]) {
        self.u8(TAG_EVENT)
            .bytes_field(session_id.as_bytes())
            .u32(number)
            .u32(fingerprint)
            .bytes_field(answer);
    }

    pub(super) fn session_gone(&mut self, key: [u64; 2]) {
        self.u8(TAG_SESSION_GONE).u64(key[0]).u64(key[1]);
    }
}

/// A monotonic deadline as Unix milliseconds.
pub(super) fn unix_ms(now: Now, mono_ms: u64) -> u64 {
    (now.unix_secs * 1000).saturating_add(mono_ms.saturating_sub(now.mono_ms))
}

/// A Unix-milliseconds deadline as a monotonic one (at least `now`).
pub(super) fn mono_ms(now: Now, unix_ms: u64) -> u64 {
    now.mono_ms.saturating_add(unix_ms.saturating_sub(now.unix_secs * 1000))
}

/// Why a record could not be read back: a bug or a format change, never a torn write (the
/// journal's CRC catches those before a record gets here).
#[derive(Debug, thiserror::Error)]
#[error("redo record: {0}")]
pub struct RecordError(pub(super) &'static str);

/// Reads the fields of a record in order.
pub(super) struct Reader<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(record: &'a [u8]) -> Self {
        Self { rest: record }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.rest.len() < n {
            return Err(RecordError("cut short"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    pub(super) fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub(super) fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub(super) fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub(super) fn bytes_field(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub(super) fn key(&mut self) -> Result<(AccountId, ReservationKey), RecordError> {
        let account = AccountId(self.u32()?);
        let session = self.u64()?;
        let rating_group = self.u32()?;
        Ok((account, ReservationKey { session, rating_group }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_survive_a_restart_of_the_monotonic_clock() {
        let before = Now { mono_ms: 5_000, unix_secs: 1_800_000_000 };
        let stored = unix_ms(before, 65_000);
        assert_eq!(stored, 1_800_000_000_000 + 60_000);
        // Restarted 10 s later with a new monotonic origin.
        let after = Now { mono_ms: 1, unix_secs: 1_800_000_010 };
        assert_eq!(mono_ms(after, stored), 1 + 50_000);
        // Already passed: due now.
        let late = Now { mono_ms: 1, unix_secs: 1_800_000_100 };
        assert_eq!(mono_ms(late, stored), 1);
    }

    #[test]
    fn fields_read_back_and_short_input_is_an_error() {
        let mut r = Recorder::new();
        r.u8(7).u16(0x1234).u32(5).u64(u64::MAX).i64(-3).bytes_field(b"abc");
        let mut rd = Reader::new(r.bytes());
        assert_eq!(rd.u8().unwrap(), 7);
        assert_eq!(rd.u16().unwrap(), 0x1234);
        assert_eq!(rd.u32().unwrap(), 5);
        assert_eq!(rd.u64().unwrap(), u64::MAX);
        assert_eq!(rd.i64().unwrap(), -3);
        assert_eq!(rd.bytes_field().unwrap(), b"abc");
        assert!(rd.is_empty());
        assert!(Reader::new(&[1, 2]).u32().is_err());
    }
}
