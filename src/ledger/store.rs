//! A growable array in fixed chunks that are allocated whole and never move or grow: pushing
//! never copies the elements already there (so never while a shard lock is held for long), and
//! the spare capacity is at most one partly filled chunk, where a `Vec` keeps up to as much
//! again as it holds after doubling. Elements are addressed by a dense index.

pub(super) struct Chunked<T, const N: usize> {
    /// Each allocated with capacity `N` and never grown beyond it; all but the last are full.
    chunks: Vec<Vec<T>>,
}

impl<T, const N: usize> Chunked<T, N> {
    pub(super) const fn new() -> Self {
        Self { chunks: Vec::new() }
    }

    pub(super) fn len(&self) -> usize {
        self.chunks.last().map_or(0, |last| (self.chunks.len() - 1) * N + last.len())
    }

    /// Appends `value`; returns its index.
    pub(super) fn push(&mut self, value: T) -> usize {
        if self.chunks.last().is_none_or(|chunk| chunk.len() == N) {
            self.chunks.push(Vec::with_capacity(N));
        }
        let index = self.len();
        let chunk = self.chunks.last_mut().expect("a chunk with room was just ensured");
        chunk.push(value);
        assert!(chunk.len() <= N, "chunks never grow beyond N, so they never move");
        index
    }

    pub(super) fn get(&self, index: usize) -> Option<&T> {
        self.chunks.get(index / N)?.get(index % N)
    }

    pub(super) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks.get_mut(index / N)?.get_mut(index % N)
    }
}

#[cfg(test)]
mod tests {
    use super::Chunked;

    #[test]
    fn indexes_are_dense_across_chunks_and_elements_never_move() {
        let mut store: Chunked<u32, 4> = Chunked::new();
        assert_eq!((store.len(), store.get(0)), (0, None));
        let first: *const u32 = {
            store.push(0);
            store.get(0).unwrap()
        };
        for n in 1..10 {
            assert_eq!(store.push(n), n as usize);
        }
        assert_eq!(store.len(), 10);
        assert!(std::ptr::eq(first, store.get(0).unwrap()), "the first chunk stayed where it was");
        *store.get_mut(9).unwrap() += 100;
        assert_eq!((store.get(4), store.get(9), store.get(10)), (Some(&4), Some(&109), None));
    }
}
