//! The subscriber index: subscription id → account.
//!
//! Nearly every subscription id is an MSISDN (E.164) or an IMSI: a string of at most 15
//! digits. Those, and any other E.164 or IMSI data of 1..=19 ASCII digits, are kept as
//! numbers in a compact sharded hash table of 12-byte entries (the number split in two u32,
//! then the account id with the digit count and kind in its top bits, so "0049…" and "49…",
//! or the same digits as an MSISDN and as an IMSI, stay distinct). A `DashMap<Box<str>, _>`
//! entry costs about 55–60 bytes per MSISDN (a 16-byte key, the 16-byte allocation behind it,
//! the id, padding and load factor); this table costs 13 bytes per bucket, about 27 per entry
//! at 1M entries right after its table doubled. Every other id (SIP URIs, NAIs, private ids,
//! E.164 data that is not all digits) stays in a string-keyed map per kind, as before.
//!
//! Peers choose these ids, so both use a randomly keyed hash (std's SipHash `RandomState`).
//! Lookups take a shard's read lock and never allocate; inserts happen under the ledger's
//! creation lock only.

use std::hash::{BuildHasher, RandomState};
use std::sync::RwLock;

use dashmap::DashMap;
use hashbrown::hash_table::{Entry, HashTable};

use super::{AccountId, ACCOUNTS_MAX};
use crate::catalog::SubscriptionKind;

/// Shards of the numeric table; a power of two.
const NUMERIC_SHARDS: usize = 64;

/// Most digits a number kept in the numeric table has: 10^19 − 1 < 2^64.
const DIGITS_MAX: usize = 19;

/// Bits of an entry's third word that carry the account id; the tag goes above them.
const ID_BITS: u32 = 26;

const _: () = assert!(NUMERIC_SHARDS.is_power_of_two());
const _: () = assert!(ACCOUNTS_MAX as u64 <= 1 << ID_BITS);
// The tag (digit count, 5 bits, and kind, 1 bit) fits above the id.
const _: () = assert!(DIGITS_MAX < 1 << 5 && ID_BITS + 6 <= 32);

pub(super) struct SubscriberIndex {
    numeric: Box<[NumericShard]>,
    hasher: RandomState,
    /// One map per `SubscriptionKind` (indexed by its RFC 4006 value), keyed by the id data, for
    /// ids that are not numeric.
    strings: [DashMap<Box<str>, AccountId>; 5],
}

/// On its own cache lines, so lookups on neighbouring shards do not contend.
#[repr(align(128))]
struct NumericShard(RwLock<HashTable<[u32; 3]>>);

/// A numeric subscription id: its value and its tag (digit count | kind << 5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Numeric {
    value: u64,
    tag: u32,
}

impl Numeric {
    /// The numeric form of E.164 and IMSI data of 1..=19 ASCII digits; None for anything else.
    fn parse(kind: SubscriptionKind, data: &str) -> Option<Self> {
        let kind = match kind {
            SubscriptionKind::E164 => 0,
            SubscriptionKind::Imsi => 1,
            SubscriptionKind::SipUri | SubscriptionKind::Nai | SubscriptionKind::Private => return None,
        };
        let digits = data.as_bytes();
        if digits.is_empty() || DIGITS_MAX < digits.len() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = digits.iter().fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
        Some(Self { value, tag: digits.len() as u32 | kind << 5 })
    }

    fn entry(self, id: AccountId) -> [u32; 3] {
        assert!(id.0 < 1 << ID_BITS);
        [self.value as u32, (self.value >> 32) as u32, id.0 | self.tag << ID_BITS]
    }

    fn of(entry: &[u32; 3]) -> Self {
        Self { value: u64::from(entry[0]) | u64::from(entry[1]) << 32, tag: entry[2] >> ID_BITS }
    }

    fn matches(self, entry: &[u32; 3]) -> bool {
        Self::of(entry) == self
    }
}

fn id_of(entry: &[u32; 3]) -> AccountId {
    AccountId(entry[2] & ((1 << ID_BITS) - 1))
}

impl SubscriberIndex {
    pub(super) fn new() -> Self {
        Self {
            numeric: (0..NUMERIC_SHARDS).map(|_| NumericShard(RwLock::new(HashTable::new()))).collect(),
            hasher: RandomState::new(),
            strings: std::array::from_fn(|_| DashMap::new()),
        }
    }

    /// The account `data` of `kind` leads to. Does not allocate.
    pub(super) fn get(&self, kind: SubscriptionKind, data: &str) -> Option<AccountId> {
        match Numeric::parse(kind, data) {
            Some(numeric) => {
                let (hash, shard) = self.place(numeric);
                let table = shard.0.read().expect("index lock poisoned");
                table.find(hash, |entry| numeric.matches(entry)).map(id_of)
            }
            None => self.strings[kind as usize].get(data).map(|entry| *entry.value()),
        }
    }

    pub(super) fn contains(&self, kind: SubscriptionKind, data: &str) -> bool {
        self.get(kind, data).is_some()
    }

    /// Adds `data` of `kind` → `id`. Callers check first, under the creation lock, that the id
    /// is new.
    pub(super) fn insert(&self, kind: SubscriptionKind, data: &str, id: AccountId) {
        let Some(numeric) = Numeric::parse(kind, data) else {
            let previous = self.strings[kind as usize].insert(data.into(), id);
            assert!(previous.is_none(), "subscription ids are checked and inserted under the creator lock");
            return;
        };
        let (hash, shard) = self.place(numeric);
        let mut table = shard.0.write().expect("index lock poisoned");
        let rehash = |entry: &[u32; 3]| self.hasher.hash_one(Numeric::of(entry));
        match table.entry(hash, |entry| numeric.matches(entry), rehash) {
            Entry::Vacant(vacant) => {
                vacant.insert(numeric.entry(id));
            }
            Entry::Occupied(_) => panic!("subscription ids are checked and inserted under the creator lock"),
        }
    }

    /// The hash of a numeric id and its shard. The shard comes from bits 32.. of the hash,
    /// which the shard's table uses for neither its bucket (the low bits) nor its control byte
    /// (the top 7 bits).
    fn place(&self, numeric: Numeric) -> (u64, &NumericShard) {
        let hash = self.hasher.hash_one(numeric);
        (hash, &self.numeric[(hash >> 32) as usize % NUMERIC_SHARDS])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubscriptionKind::{Imsi, Nai, Private, SipUri, E164};

    #[test]
    fn numeric_ids_are_told_apart_by_digit_count_and_kind() {
        let index = SubscriberIndex::new();
        let ids = [
            (E164, "491701234567"),
            (E164, "00491701234567"),
            (E164, "0"),
            (E164, "00"),
            (Imsi, "491701234567"),
            (E164, "9999999999999999999"),
            (E164, "18446744073709551615"),
            (E164, "+491701234567"),
            (E164, "٣"),
            (SipUri, "sip:491701234567@example.net"),
            (Nai, "491701234567"),
            (Private, "491701234567"),
        ];
        for (n, (kind, data)) in ids.iter().enumerate() {
            assert!(!index.contains(*kind, data), "{kind:?} {data}");
            index.insert(*kind, data, AccountId(n as u32 + ACCOUNTS_MAX - 100));
        }
        for (n, (kind, data)) in ids.iter().enumerate() {
            assert_eq!(index.get(*kind, data), Some(AccountId(n as u32 + ACCOUNTS_MAX - 100)), "{data}");
        }
        for (kind, data) in [(E164, "000"), (E164, "49170123456"), (Imsi, "0"), (E164, ""), (Imsi, "")] {
            assert_eq!(index.get(kind, data), None, "{kind:?} {data}");
        }
        // Only the digit strings of E.164 and IMSI kinds went into the numeric table.
        let numeric: usize = index.numeric.iter().map(|shard| shard.0.read().unwrap().len()).sum();
        assert_eq!(numeric, 6);
    }

    #[test]
    fn the_numeric_form_round_trips_through_an_entry() {
        for (kind, data) in [(E164, "1"), (Imsi, "262011234567890"), (E164, "9999999999999999999")] {
            let numeric = Numeric::parse(kind, data).unwrap();
            let entry = numeric.entry(AccountId(ACCOUNTS_MAX - 1));
            assert_eq!((Numeric::of(&entry), id_of(&entry)), (numeric, AccountId(ACCOUNTS_MAX - 1)));
        }
        assert_eq!(Numeric::parse(E164, "12345678901234567890"), None, "20 digits are a string id");
    }
}
