//! The recent idempotency keys of top-ups, refunds and debits: a bounded table, sharded by key,
//! remembering each applied operation and its outcome so a retransmission returns the original
//! result and changes nothing. Oldest keys are forgotten first once a shard is full.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use super::{lock, IDEMPOTENCY_KEYS_MAX, KEY_SHARDS};

const KEYS_PER_SHARD_MAX: usize = IDEMPOTENCY_KEYS_MAX / KEY_SHARDS;

pub(super) struct Keys {
    shards: Box<[Mutex<KeyShard>]>,
}

/// The operation a key stands for; a key seen again with a different one is `KeyReused`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct KeyedOp {
    pub(super) account: u32,
    pub(super) kind: KeyedKind,
    pub(super) amount: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum KeyedKind {
    TopUp,
    Refund,
    Debit { allow_overdraft: bool },
}

/// What the operation returned the first time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Outcome {
    /// The balance right after the operation.
    pub(super) balance: i64,
    pub(super) overdraft: bool,
}

#[derive(Clone, Copy)]
pub(super) struct Known {
    pub(super) op: KeyedOp,
    pub(super) outcome: Outcome,
}

/// The map uses std's randomly keyed SipHash: keys derive from peer-chosen Session-Ids.
#[derive(Default)]
pub(super) struct KeyShard {
    known: HashMap<u64, Known>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<u64>,
}

impl Keys {
    pub(super) fn new() -> Self {
        Self { shards: (0..KEY_SHARDS).map(|_| Mutex::default()).collect() }
    }

    pub(super) fn lock(&self, key: u64) -> MutexGuard<'_, KeyShard> {
        // The top bits of a Fibonacci hash: spreads sequential keys over the shards.
        let shard = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - KEY_SHARDS.trailing_zeros())) as usize;
        lock(&self.shards[shard % KEY_SHARDS])
    }
}

impl KeyShard {
    pub(super) fn find(&self, key: u64) -> Option<Known> {
        self.known.get(&key).copied()
    }

    pub(super) fn remember(&mut self, key: u64, op: KeyedOp, outcome: Outcome) {
        assert_eq!(self.known.len(), self.order.len());
        if self.order.len() == KEYS_PER_SHARD_MAX {
            let oldest = self.order.pop_front().expect("the shard is full");
            assert!(self.known.remove(&oldest).is_some(), "every key in the order is known");
        }
        let previous = self.known.insert(key, Known { op, outcome });
        assert!(previous.is_none(), "a known key is answered, never applied again");
        self.order.push_back(key);
        assert!(self.known.len() == self.order.len() && self.order.len() <= KEYS_PER_SHARD_MAX);
    }
}
