//! The table of credit-control sessions: 128-bit keyed hashes of Session-Ids to session
//! records, in lock shards.
//!
//! Memory is the reason this is not a `DashMap<Box<str>, Box<Session>>` (which cost about
//! 100 bytes per session before the session itself: the Session-Id string, a key-and-pointer
//! slot, the hash table's slack at a power-of-two boundary and the box). Here a session is
//! found through a `hashbrown::HashTable<u32>` of slot numbers (5 bytes a bucket, ≈ 10 bytes a
//! session at the worst load factor) into chunks of slots that never move, and the table keys
//! a session by its Session-Id's 128-bit SipHash-1-3 under a random key (the string itself is
//! kept once, in the session's record, for the admin API and RAR/ASR): peers choose
//! Session-Ids, so an unkeyed hash would let one make two sessions collide, and at 128 bits an accidental
//! collision among 10⁹ live sessions has a probability below 10⁻²⁰. The key is explicit (not
//! `RandomState`) so the journal can store it and recovery can hash Session-Ids the same way.
//!
//! Sixty-four shards, each one `std::sync::Mutex`: all of a session's work is done under its
//! shard lock (so parallel CCR-Us on one session serialise), held for microseconds, never
//! across an `.await`.

use std::hash::Hasher;
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashTable;
use siphasher::sip128::{Hasher128, SipHasher13};

/// Lock shards; a power of two.
pub(super) const SHARDS: usize = 64;

/// Slots per chunk: a chunk is allocated whole and never moves or grows, so the table's slack
/// is at most one chunk per shard (not the 2× of a doubling vector).
const SLOTS_PER_CHUNK: usize = 128;

const _: () = assert!(SHARDS.is_power_of_two());

/// A Session-Id's 128-bit keyed hash; `0[0]` also keys the session's ledger reservations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct SessionKey(pub(super) [u64; 2]);

impl SessionKey {
    fn shard(self) -> usize {
        (self.0[1] >> 58) as usize % SHARDS
    }

    fn hash(self) -> u64 {
        self.0[1]
    }
}

/// SipHash-1-3-128 of a Session-Id under `hash_key` (a data directory's key, for tools).
pub fn hash_session_id(hash_key: &[u8; 16], session_id: &str) -> [u64; 2] {
    let mut h = SipHasher13::new_with_key(hash_key);
    h.write(session_id.as_bytes());
    let h = h.finish128();
    [h.h1, h.h2]
}

/// What the table stores.
pub(super) trait Keyed {
    fn key(&self) -> SessionKey;
}

pub(super) struct Table<T> {
    shards: Box<[Mutex<Shard<T>>]>,
    hash_key: [u8; 16],
}

pub(super) struct Shard<T> {
    index: HashTable<u32>,
    chunks: Vec<Box<[Option<T>]>>,
    /// Slots freed by `retain`, reused first.
    free: Vec<u32>,
}

impl<T: Keyed> Table<T> {
    pub(super) fn new(hash_key: [u8; 16]) -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(), hash_key }
    }

    pub(super) fn key(&self, session_id: &str) -> SessionKey {
        SessionKey(hash_session_id(&self.hash_key, session_id))
    }

    /// The shard holding `key`, locked. A poisoned shard (a panic while it was held) is used
    /// anyway: the panicking request answered 5012 and the session records stay consistent
    /// field by field (the ledger, which holds the money, has its own invariants).
    pub(super) fn lock(&self, key: SessionKey) -> MutexGuard<'_, Shard<T>> {
        self.shards[key.shard()].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every shard in turn, for sweeps and counts.
    pub(super) fn for_each_shard(&self, mut f: impl FnMut(&mut Shard<T>)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

impl<T: Keyed> Shard<T> {
    fn new() -> Self {
        Self { index: HashTable::new(), chunks: Vec::new(), free: Vec::new() }
    }

    fn slot(&self, slot: u32) -> &T {
        let chunk = &self.chunks[slot as usize / SLOTS_PER_CHUNK];
        chunk[slot as usize % SLOTS_PER_CHUNK].as_ref().expect("indexed slots are occupied")
    }

    fn find(&self, key: SessionKey) -> Option<u32> {
        self.index.find(key.hash(), |&slot| self.slot(slot).key() == key).copied()
    }

    pub(super) fn get_mut(&mut self, key: SessionKey) -> Option<&mut T> {
        let slot = self.find(key)?;
        self.chunks[slot as usize / SLOTS_PER_CHUNK][slot as usize % SLOTS_PER_CHUNK].as_mut()
    }

    /// Adds a record whose key is not in the table yet.
    pub(super) fn insert(&mut self, value: T) {
        let key = value.key();
        assert!(self.find(key).is_none(), "a session key is inserted once");
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let next = self.chunks.len() * SLOTS_PER_CHUNK;
                self.chunks.push((0..SLOTS_PER_CHUNK).map(|_| None).collect());
                // Slots beyond the first of the new chunk go to the free list, highest first,
                // so they are handed out in order.
                self.free.extend((next + 1..next + SLOTS_PER_CHUNK).rev().map(|s| s as u32));
                next as u32
            }
        };
        let cell = &mut self.chunks[slot as usize / SLOTS_PER_CHUNK][slot as usize % SLOTS_PER_CHUNK];
        debug_assert!(cell.is_none());
        *cell = Some(value);
        let chunks = &self.chunks;
        self.index.insert_unique(key.hash(), slot, |&s| {
            chunks[s as usize / SLOTS_PER_CHUNK][s as usize % SLOTS_PER_CHUNK]
                .as_ref()
                .expect("indexed slots are occupied")
                .key()
                .hash()
        });
    }

    /// Adds `value`, or replaces the record with its key (recovery applies session images).
    pub(super) fn upsert(&mut self, value: T) {
        match self.find(value.key()) {
            Some(slot) => {
                self.chunks[slot as usize / SLOTS_PER_CHUNK][slot as usize % SLOTS_PER_CHUNK] = Some(value);
            }
            None => self.insert(value),
        }
    }

    /// Removes the record with `key`, if any.
    pub(super) fn remove(&mut self, key: SessionKey) {
        let found = self.index.find_entry(key.hash(), |&slot| {
            let chunk = &self.chunks[slot as usize / SLOTS_PER_CHUNK];
            chunk[slot as usize % SLOTS_PER_CHUNK].as_ref().is_some_and(|v| v.key() == key)
        });
        if let Ok(entry) = found {
            let (slot, _) = entry.remove();
            self.chunks[slot as usize / SLOTS_PER_CHUNK][slot as usize % SLOTS_PER_CHUNK] = None;
            self.free.push(slot);
        }
    }

    /// Keeps the records for which `keep` returns true.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        let Self { index, chunks, free } = self;
        index.retain(|&mut slot| {
            let cell = &mut chunks[slot as usize / SLOTS_PER_CHUNK][slot as usize % SLOTS_PER_CHUNK];
            let value = cell.as_mut().expect("indexed slots are occupied");
            if keep(value) {
                return true;
            }
            *cell = None;
            free.push(slot);
            false
        });
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter()).filter_map(Option::as_ref)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec(SessionKey, u32);
    impl Keyed for Rec {
        fn key(&self) -> SessionKey {
            self.0
        }
    }

    #[test]
    fn insert_find_retain_reuse() {
        let table: Table<Rec> = Table::new([7; 16]);
        let keys: Vec<SessionKey> = (0..1000).map(|i| table.key(&format!("pgw;1;{i}"))).collect();
        for (i, &k) in keys.iter().enumerate() {
            table.lock(k).insert(Rec(k, i as u32));
        }
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(table.lock(k).get_mut(k).map(|r| r.1), Some(i as u32));
        }
        assert!(table.lock(table.key("other")).get_mut(table.key("other")).is_none());
        table.for_each_shard(|s| s.retain(|r| r.1 % 2 == 0));
        let mut total = 0;
        table.for_each_shard(|s| total += s.len());
        assert_eq!(total, 500);
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(table.lock(k).get_mut(k).is_some(), i % 2 == 0);
        }
        // Freed slots are reused: no new chunk for the second half.
        let chunks_before: usize = {
            let mut n = 0;
            table.for_each_shard(|s| n += s.chunks.len());
            n
        };
        for (i, &k) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            table.lock(k).insert(Rec(k, i as u32));
        }
        let mut n = 0;
        table.for_each_shard(|s| n += s.chunks.len());
        assert_eq!(n, chunks_before);
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(table.lock(k).get_mut(k).map(|r| r.1), Some(i as u32));
        }
        // Upsert replaces; remove frees the slot.
        table.lock(keys[0]).upsert(Rec(keys[0], 77));
        assert_eq!(table.lock(keys[0]).get_mut(keys[0]).map(|r| r.1), Some(77));
        table.lock(keys[1]).remove(keys[1]);
        assert!(table.lock(keys[1]).get_mut(keys[1]).is_none());
        table.lock(keys[1]).upsert(Rec(keys[1], 5));
        assert_eq!(table.lock(keys[1]).get_mut(keys[1]).map(|r| r.1), Some(5));
    }

    #[test]
    fn keys_depend_on_the_hash_key() {
        let a: Table<Rec> = Table::new([1; 16]);
        let b: Table<Rec> = Table::new([2; 16]);
        assert_eq!(a.key("s;1"), a.key("s;1"));
        assert_ne!(a.key("s;1"), a.key("s;2"));
        assert_ne!(a.key("s;1"), b.key("s;1"));
    }
}
