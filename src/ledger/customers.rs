//! Customer ids: text the ledger only gives back in `view`, which is rare. An account keeps an
//! 8-byte span (start << 16 | length) into the ledger's customer text instead of a 16-byte
//! `Box<str>` and the allocation behind it. Filled under the ledger's creation lock.
//!
//! The text lives in pages that never move or grow (no copying of all ids when one more is
//! added, and no doubling slack). Ids are deduplicated against recently added ones only: a
//! direct-mapped cache of spans by a hash of the text. That catches the accounts of a customer
//! created together or between few other customers (a test catalog's one customer, a family's
//! or a company's accounts), so they share one copy. A full table of every distinct id would
//! catch the rest too, but costs about 19 bytes per distinct id at 1M (the id's number and its
//! span, each table doubled), more than a short id itself; most prepaid customers have one
//! account, so each id is usually distinct and that table would be pure overhead. A repeated
//! id that the cache missed costs its length again, never more.

use std::hash::{BuildHasher, RandomState};

use super::CUSTOMER_ID_MAX_BYTES;

/// Bytes per text page; no id straddles two pages.
const PAGE_BYTES: usize = 16 * 1024;

/// Slots of the cache of recently added ids (128 KiB, allocated with the first id).
const RECENT: usize = 1 << 14;

const LEN_BITS: u32 = 16;

const _: () = assert!(CUSTOMER_ID_MAX_BYTES <= PAGE_BYTES && CUSTOMER_ID_MAX_BYTES < 1 << LEN_BITS);
const _: () = assert!(RECENT.is_power_of_two());

/// The span of the empty id (and of an unused cache slot, which no non-empty id matches).
const EMPTY: u64 = 0;

pub(super) struct Customers {
    /// Each allocated with capacity `PAGE_BYTES` and never grown beyond it.
    pages: Vec<String>,
    /// Spans of recently added ids by the hash of their text, or `EMPTY`.
    recent: Box<[u64]>,
    /// Randomly keyed: the ids come from the catalog and the admin API.
    hasher: RandomState,
}

impl Customers {
    pub(super) fn new() -> Self {
        Self { pages: Vec::new(), recent: Box::default(), hasher: RandomState::new() }
    }

    /// The span of `id`'s text: a recent copy's, or a new one's.
    pub(super) fn intern(&mut self, id: &str) -> u64 {
        assert!(id.len() <= CUSTOMER_ID_MAX_BYTES, "customer ids are validated before interning");
        if id.is_empty() {
            return EMPTY;
        }
        if self.recent.is_empty() {
            self.recent = vec![EMPTY; RECENT].into_boxed_slice();
        }
        let slot = self.hasher.hash_one(id) as usize % RECENT;
        if self.get(self.recent[slot]) == id {
            return self.recent[slot];
        }
        let pages = &mut self.pages;
        if pages.last().is_none_or(|page| PAGE_BYTES - page.len() < id.len()) {
            pages.push(String::with_capacity(PAGE_BYTES));
        }
        let page_index = pages.len() - 1;
        let page = &mut pages[page_index];
        let start = (page_index * PAGE_BYTES + page.len()) as u64;
        page.push_str(id);
        assert!(page.len() <= PAGE_BYTES, "pages never grow, so they never move");
        let span = start << LEN_BITS | id.len() as u64;
        self.recent[slot] = span;
        span
    }

    /// The id with this span, which `intern` returned.
    pub(super) fn get(&self, span: u64) -> &str {
        let (start, len) = ((span >> LEN_BITS) as usize, (span & ((1 << LEN_BITS) - 1)) as usize);
        if len == 0 {
            return "";
        }
        let (page, offset) = (start / PAGE_BYTES, start % PAGE_BYTES);
        &self.pages[page][offset..offset + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_back_across_pages_and_a_recent_one_is_shared() {
        let mut customers = Customers::new();
        let long = "x".repeat(CUSTOMER_ID_MAX_BYTES);
        let mut spans = Vec::new();
        for n in 0..200 {
            let id = format!("{n}{}", &long[..CUSTOMER_ID_MAX_BYTES - n.to_string().len()]);
            spans.push((customers.intern(&id), id));
        }
        assert!(customers.pages.len() > 1);
        assert_eq!(customers.intern(""), EMPTY);
        assert_eq!(customers.get(EMPTY), "");
        for (span, id) in &spans {
            assert_eq!(customers.get(*span), id);
        }
        // The cache is direct-mapped by a random hash, so only the last id is surely in it.
        let text = |customers: &Customers| customers.pages.iter().map(String::len).sum::<usize>();
        let before = text(&customers);
        let (span, id) = spans.last().unwrap();
        assert_eq!(customers.intern(id), *span);
        assert_eq!(text(&customers), before, "not added again");
        for (_, id) in &spans {
            let span = customers.intern(id);
            assert_eq!(customers.get(span), id);
        }
    }
}
