//! A shard's open reservations: one slab of 40-byte slots per shard, under the shard's lock.
//! Each account links its own holds through [`Reservation::next`] from its `holds` head; freed
//! slots are linked the same way into a free list and reused first, so once a shard has had as
//! many holds open at once as it has now, reserve and commit allocate nothing.
//!
//! Why a slab instead of a `Vec` per account: the `Vec` costs 24 bytes in every account record
//! (most accounts have no hold open most of the time) plus an allocation per account that has
//! ever held one, kept afterwards; the slab costs a 4-byte head and a 2-byte count per account,
//! and memory only for the holds open at the busiest moment.

use super::store::Chunked;
use super::{ReservationKey, AMOUNT_MAX_MINOR, BUNDLES_PER_ACCOUNT_MAX};

/// "No slot": the end of a list.
pub(super) const NONE: u32 = u32::MAX;

/// A reservation's bundle when it holds no units.
pub(super) const BUNDLE_NONE: u8 = u8::MAX;

/// Slots per slab chunk (10 KiB): a shard's first hold allocates one chunk.
const HOLDS_PER_CHUNK: usize = 256;

// The held money and the bundle index share one word (see `Reservation::money_bundle`).
const _: () = assert!(AMOUNT_MAX_MINOR < 1 << 56);
const _: () = assert!(BUNDLES_PER_ACCOUNT_MAX < BUNDLE_NONE as usize);
const _: () = assert!(size_of::<Reservation>() <= 40);

/// One open hold. The key is stored split, and the money shares a word with the bundle index,
/// so the slot packs into 40 bytes with its link.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reservation {
    pub(super) session: u64,
    /// `money << 8 | bundle`: money is at most [`AMOUNT_MAX_MINOR`] < 2^56, the bundle an index
    /// into the account's bundles or `BUNDLE_NONE`.
    money_bundle: u64,
    pub(super) units: u64,
    pub(super) expires_at_ms: u64,
    pub(super) rating_group: u32,
    /// The account's next hold (or, for a free slot, the next free slot), or `NONE`.
    pub(super) next: u32,
}

impl Reservation {
    pub(super) fn new(key: ReservationKey, money: i64, bundle: u8, units: u64, expires_at_ms: u64) -> Self {
        assert!((0..=AMOUNT_MAX_MINOR).contains(&money), "hold money is checked before it is held");
        Self {
            session: key.session,
            money_bundle: (money as u64) << 8 | u64::from(bundle),
            units,
            expires_at_ms,
            rating_group: key.rating_group,
            next: NONE,
        }
    }

    pub(super) fn key(&self) -> ReservationKey {
        ReservationKey { session: self.session, rating_group: self.rating_group }
    }

    pub(super) fn is(&self, key: ReservationKey) -> bool {
        self.session == key.session && self.rating_group == key.rating_group
    }

    pub(super) fn money(&self) -> i64 {
        (self.money_bundle >> 8) as i64
    }

    /// An index into the account's bundles, or `BUNDLE_NONE`.
    pub(super) fn bundle(&self) -> u8 {
        self.money_bundle as u8
    }
}

pub(super) struct HoldSlab {
    slots: Chunked<Reservation, HOLDS_PER_CHUNK>,
    /// The first free slot, linked through `next`; `NONE` when every slot is in use.
    free: u32,
    free_len: usize,
}

impl HoldSlab {
    pub(super) const fn new() -> Self {
        Self { slots: Chunked::new(), free: NONE, free_len: 0 }
    }

    /// Stores `hold` in a free slot (a new one only if none is free); returns its index.
    pub(super) fn insert(&mut self, hold: Reservation) -> u32 {
        if self.free == NONE {
            let index = self.slots.push(hold);
            // A shard has at most 2^20 accounts with at most 256 holds each: 2^28 slots.
            return u32::try_from(index).ok().filter(|&i| i != NONE).expect("slot indexes fit u32");
        }
        let index = self.free;
        self.free = self.slot(index).next;
        *self.slot_mut(index) = hold;
        self.free_len -= 1;
        index
    }

    /// Frees the slot at `index`, which the caller has unlinked from its account; returns the
    /// hold it had.
    pub(super) fn remove(&mut self, index: u32) -> Reservation {
        let free = self.free;
        let slot = self.slot_mut(index);
        let hold = *slot;
        slot.next = free;
        self.free = index;
        self.free_len += 1;
        hold
    }

    pub(super) fn get(&self, index: u32) -> Option<&Reservation> {
        self.slots.get(index as usize)
    }

    /// The slot at `index`, which must be one handed out by `insert`.
    pub(super) fn slot(&self, index: u32) -> &Reservation {
        self.get(index).expect("hold links point into the slab")
    }

    pub(super) fn slot_mut(&mut self, index: u32) -> &mut Reservation {
        self.slots.get_mut(index as usize).expect("hold links point into the slab")
    }

    /// Walks the list starting at `head`, stopping after `limit` holds.
    pub(super) fn list(&self, head: u32, limit: usize) -> List<'_> {
        List { slab: self, at: head, left: limit }
    }

    /// (slots allocated, slots free), with the free list walked and checked: None if it is
    /// broken. For the audit.
    pub(super) fn usage(&self) -> Option<(usize, usize)> {
        let total = self.slots.len();
        let mut free = 0;
        let mut at = self.free;
        while at != NONE {
            if free == total {
                return None;
            }
            free += 1;
            at = self.get(at)?.next;
        }
        (free == self.free_len).then_some((total, free))
    }
}

/// The holds of one account, in list order (newest first), with their slot indexes.
pub(super) struct List<'a> {
    slab: &'a HoldSlab,
    at: u32,
    left: usize,
}

impl<'a> Iterator for List<'a> {
    type Item = (u32, &'a Reservation);

    fn next(&mut self) -> Option<Self::Item> {
        if self.at == NONE || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let index = self.at;
        let hold = self.slab.slot(index);
        self.at = hold.next;
        Some((index, hold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(session: u64, money: i64, bundle: u8) -> Reservation {
        Reservation::new(ReservationKey { session, rating_group: 7 }, money, bundle, 3, 99)
    }

    #[test]
    fn money_and_bundle_share_a_word_without_losing_either() {
        let held = hold(1, AMOUNT_MAX_MINOR, 63);
        assert_eq!((held.money(), held.bundle(), held.units), (AMOUNT_MAX_MINOR, 63, 3));
        let held = hold(2, 0, BUNDLE_NONE);
        assert_eq!((held.money(), held.bundle()), (0, BUNDLE_NONE));
        assert_eq!(held.key(), ReservationKey { session: 2, rating_group: 7 });
    }

    #[test]
    fn freed_slots_are_reused_before_new_ones() {
        let mut slab = HoldSlab::new();
        let a = slab.insert(hold(1, 10, BUNDLE_NONE));
        let b = slab.insert(hold(2, 20, BUNDLE_NONE));
        assert_eq!((a, b, slab.usage()), (0, 1, Some((2, 0))));
        assert_eq!(slab.remove(a).money(), 10);
        assert_eq!(slab.usage(), Some((2, 1)));
        assert_eq!(slab.insert(hold(3, 30, BUNDLE_NONE)), a);
        assert_eq!(slab.insert(hold(4, 40, BUNDLE_NONE)), 2);
        assert_eq!(slab.usage(), Some((3, 0)));
        assert_eq!(slab.slot(a).session, 3);
    }
}
