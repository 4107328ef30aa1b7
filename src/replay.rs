//! Remembered answers: a bounded, windowed cache of answers by (text key, number), and the one
//! way a remembered answer is sent again.
//!
//! Two users, one mechanism. Transport-level duplicate detection (RFC 6733 §5.5.4): "The
//! End-to-End Identifier ... MUST remain locally unique for at least 4 minutes" and, together
//! with the Origin-Host, "is used to detect duplicate messages" — keyed by (Origin-Host,
//! End-to-End id), case-insensitive like any DiameterIdentity. And credit-control events
//! (CCR-E), keyed by (Session-Id, CC-Request-Number), case-sensitive: a Session-Id is opaque.
//! A request seen again within the window gets the answer sent the first time, byte for byte
//! except the ids of the new request, and is not processed again.
//!
//! Owns nothing else; may use only `bytes`, `limits` and the `diameter` header.
//!
//! Memory is bounded by `DUPLICATE_ENTRIES_MAX`: when full, the oldest entry is evicted even if
//! its window has not passed (counted in `evicted_early`, so an operator can see it).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::limits::{DUPLICATE_ENTRIES_MAX, DUPLICATE_SHARDS, DUPLICATE_WINDOW_MS};

#[derive(Debug)]
struct Entry {
    host: Box<str>,
    answer: Bytes,
    at_ms: u64,
    /// What the caller wants to check a repeat against (the engine: a fingerprint of the
    /// request, so different content under a used number is refused, not answered).
    tag: u32,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<(u64, u32), Entry>,
    /// Insertion order, for expiry and eviction; entries may be stale after an overwrite.
    order: VecDeque<(u64, (u64, u32))>,
}

/// How keys compare.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyCase {
    /// DiameterIdentity (Origin-Host): FQDNs compare without case.
    Insensitive,
    /// Opaque strings (Session-Id).
    Sensitive,
}

#[derive(Debug)]
pub struct DuplicateCache {
    case: KeyCase,
    shards: Vec<Mutex<Shard>>,
    per_shard_max: usize,
    window_ms: u64,
    pub evicted_early: AtomicU64,
    pub replayed: AtomicU64,
}

fn key_hash(key: &str, case: KeyCase) -> u64 {
    let mut h = DefaultHasher::new();
    match case {
        KeyCase::Insensitive => key.bytes().for_each(|b| b.to_ascii_lowercase().hash(&mut h)),
        KeyCase::Sensitive => key.bytes().for_each(|b| b.hash(&mut h)),
    }
    h.finish()
}

fn same(a: &str, b: &str, case: KeyCase) -> bool {
    match case {
        KeyCase::Insensitive => a.eq_ignore_ascii_case(b),
        KeyCase::Sensitive => a == b,
    }
}

impl DuplicateCache {
    /// A cache with the default size and window (`DUPLICATE_ENTRIES_MAX`, 4 minutes).
    pub fn with_defaults(case: KeyCase) -> Self {
        Self::new(case, DUPLICATE_ENTRIES_MAX, DUPLICATE_WINDOW_MS)
    }

    pub fn new(case: KeyCase, entries_max: usize, window_ms: u64) -> Self {
        let per_shard_max = (entries_max / DUPLICATE_SHARDS).max(1);
        Self {
            case,
            shards: (0..DUPLICATE_SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard_max,
            window_ms,
            evicted_early: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: (u64, u32)) -> &Mutex<Shard> {
        let i = (key.0 ^ u64::from(key.1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize;
        &self.shards[i & (DUPLICATE_SHARDS - 1)]
    }

    /// The answer sent to an earlier request with this key and number, if it was sent within
    /// the window.
    pub fn lookup(&self, now_ms: u64, origin_host: &str, end_to_end: u32) -> Option<Bytes> {
        self.lookup_tagged(now_ms, origin_host, end_to_end).map(|(answer, _)| answer)
    }

    /// `lookup`, with the tag the answer was remembered with.
    pub fn lookup_tagged(&self, now_ms: u64, origin_host: &str, end_to_end: u32) -> Option<(Bytes, u32)> {
        let key = (key_hash(origin_host, self.case), end_to_end);
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let e = shard.map.get(&key)?;
        let fresh = now_ms.saturating_sub(e.at_ms) < self.window_ms;
        if fresh && same(&e.host, origin_host, self.case) {
            self.replayed.fetch_add(1, Ordering::Relaxed);
            return Some((e.answer.clone(), e.tag));
        }
        None
    }

    /// Every entry still within the window at `now_ms` (key, number, tag, answer): for
    /// snapshots.
    pub fn entries(&self, now_ms: u64) -> Vec<(String, u32, u32, Bytes)> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (&(_, number), e) in &shard.map {
                let age = now_ms.saturating_sub(e.at_ms);
                if age < self.window_ms {
                    all.push((e.host.to_string(), number, e.tag, e.answer.clone()));
                }
            }
        }
        all
    }

    /// Remembers the answer to a request.
    pub fn insert(&self, now_ms: u64, origin_host: &str, end_to_end: u32, answer: Bytes) {
        self.insert_tagged(now_ms, origin_host, end_to_end, 0, answer);
    }

    /// `insert`, with a tag `lookup_tagged` returns.
    pub fn insert_tagged(&self, now_ms: u64, origin_host: &str, end_to_end: u32, tag: u32, answer: Bytes) {
        let key = (key_hash(origin_host, self.case), end_to_end);
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut shard, now_ms);
        while shard.map.len() >= self.per_shard_max {
            let Some((at, k)) = shard.order.pop_front() else { break };
            if shard.map.get(&k).is_some_and(|e| e.at_ms == at) {
                shard.map.remove(&k);
                self.evicted_early.fetch_add(1, Ordering::Relaxed);
            }
        }
        shard.order.push_back((now_ms, key));
        shard.map.insert(key, Entry { host: origin_host.into(), answer, at_ms: now_ms, tag });
        debug_assert!(shard.map.len() <= self.per_shard_max);
    }

    fn expire(&self, shard: &mut Shard, now_ms: u64) {
        while let Some(&(at, k)) = shard.order.front() {
            if now_ms.saturating_sub(at) < self.window_ms {
                break;
            }
            shard.order.pop_front();
            if shard.map.get(&k).is_some_and(|e| e.at_ms == at) {
                shard.map.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes a remembered answer for `req`: the same bytes with the request's Hop-by-Hop and
/// End-to-End ids (RFC 6733 §6.2: an answer carries the ids of the request it answers; a client
/// that retransmits through another agent, or re-sends with a fresh End-to-End id, must still
/// be able to match it).
pub fn answer_again(answer: &[u8], req: &crate::diameter::Header, out: &mut bytes::BytesMut) {
    let start = out.len();
    out.extend_from_slice(answer);
    out[start + 12..start + 16].copy_from_slice(&req.hop_by_hop.to_be_bytes());
    out[start + 16..start + 20].copy_from_slice(&req.end_to_end.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_within_window_only() {
        let c = DuplicateCache::new(KeyCase::Insensitive, 64, 1000);
        c.insert(0, "pgw.example", 7, Bytes::from_static(b"answer"));
        assert_eq!(c.lookup(999, "PGW.example", 7).as_deref(), Some(&b"answer"[..]));
        let s = DuplicateCache::new(KeyCase::Sensitive, 64, 1000);
        s.insert(0, "pgw;1;Ab", 7, Bytes::from_static(b"answer"));
        assert_eq!(s.lookup(1, "pgw;1;ab", 7), None, "Session-Ids are case-sensitive");
        assert!(s.lookup(1, "pgw;1;Ab", 7).is_some());
        assert_eq!(c.lookup(999, "other.example", 7), None);
        assert_eq!(c.lookup(999, "pgw.example", 8), None);
        assert_eq!(c.lookup(1000, "pgw.example", 7), None);
    }

    #[test]
    fn memory_is_bounded() {
        let c = DuplicateCache::new(KeyCase::Insensitive, DUPLICATE_SHARDS * 2, 1_000_000);
        for i in 0..10_000u32 {
            c.insert(u64::from(i), "h", i, Bytes::from_static(b"a"));
        }
        assert!(c.len() <= DUPLICATE_SHARDS * 2);
        assert!(c.evicted_early.load(Ordering::Relaxed) > 0);
    }
}
