//! The bytes on disk: segment names, segment headers and record framing (see the module doc of
//! [`crate::journal`] for the layout). Pure functions over byte slices; no I/O.

use crate::limits::JOURNAL_RECORD_MAX_BYTES;

use super::{Lsn, Problem};

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"GYROJNL\0";

/// Version of the segment and record layout; bumped on any incompatible change.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Segment header: magic (8) | version u32 | first LSN u64 | CRC32C u32 of the 20 bytes before.
pub const SEGMENT_HEADER_BYTES: usize = 24;

/// Record header: length-and-flags u32 | CRC32C u32 | LSN u64, all little-endian.
pub const RECORD_HEADER_BYTES: usize = 16;

/// Bit 31 of the length word: the record's group goes on in the next record (`append_many`).
const GROUP_CONTINUES: u32 = 1 << 31;

/// Bit 30 of the length word: the first record of a write batch, set by the writer thread.
/// Recovery needs it to tell a torn batch from damage in an acknowledged one (see
/// [`valid_batch_after`]).
const BATCH_START: u32 = 1 << 30;

/// Bits 0–29: the payload length. Payloads are at most [`JOURNAL_RECORD_MAX_BYTES`] (< 2³⁰).
const LENGTH_MASK: u32 = BATCH_START - 1;

const SEGMENT_SUFFIX: &str = ".journal";

/// `{first_lsn:020}.journal`: twenty digits, so names sort like LSNs.
pub(crate) fn segment_name(first: Lsn) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", first.0)
}

/// The first LSN a segment file name announces; `None` for any other file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

pub(crate) fn encode_segment_header(first: Lsn) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first.0.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first LSN in a segment header, after checking magic, checksum and version (in that
/// order, so a damaged header is reported as damaged, not as a version we do not know).
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<Lsn, Problem> {
    let Some(h) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(Problem::HeaderCut { bytes: bytes.len() as u64 });
    };
    if h[0..8] != SEGMENT_MAGIC {
        return Err(Problem::HeaderMagic);
    }
    if crc32c::crc32c(&h[0..20]) != u32_at(h, 20) {
        return Err(Problem::HeaderChecksum);
    }
    let version = u32_at(h, 8);
    if version != FORMAT_VERSION {
        return Err(Problem::HeaderVersion { found: version });
    }
    Ok(Lsn(u64_at(h, 12)))
}

/// CRC32C of a payload alone. The record checksum starts from it so that appenders can compute
/// it before they take the journal's lock (only the LSN needs the lock).
pub(crate) fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// The record checksum: CRC32C over payload ‖ length word ‖ LSN. Covering the length word means
/// a flipped length bit is caught even when the shorter or longer record still fits the file.
fn record_crc(payload_crc: u32, len_word: u32, lsn: Lsn) -> u32 {
    let mut tail = [0u8; 12];
    tail[0..4].copy_from_slice(&len_word.to_le_bytes());
    tail[4..12].copy_from_slice(&lsn.0.to_le_bytes());
    crc32c::crc32c_append(payload_crc, &tail)
}

/// Bytes one record with this payload takes on disk.
pub(crate) const fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len
}

/// Appends one framed record to `out`. `continues` says that the next record belongs to the same
/// group (all but the last record of an `append_many`).
pub(crate) fn encode_record(out: &mut Vec<u8>, lsn: Lsn, payload: &[u8], payload_crc: u32, continues: bool) {
    assert!(payload.len() <= JOURNAL_RECORD_MAX_BYTES);
    let len_word = payload.len() as u32 | if continues { GROUP_CONTINUES } else { 0 };
    out.extend_from_slice(&len_word.to_le_bytes());
    out.extend_from_slice(&record_crc(payload_crc, len_word, lsn).to_le_bytes());
    out.extend_from_slice(&lsn.0.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A record header as framed, before its checksum is known to be right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) payload_len: usize,
    pub(crate) continues: bool,
    pub(crate) batch_start: bool,
    pub(crate) crc: u32,
    pub(crate) lsn: Lsn,
}

impl RecordHeader {
    /// Reads the 16 header bytes at `off`; `None` when fewer remain.
    pub(crate) fn at(bytes: &[u8], off: usize) -> Option<Self> {
        let h = bytes.get(off..off.checked_add(RECORD_HEADER_BYTES)?)?;
        let len_word = u32_at(h, 0);
        Some(Self {
            payload_len: (len_word & LENGTH_MASK) as usize,
            continues: len_word & GROUP_CONTINUES != 0,
            batch_start: len_word & BATCH_START != 0,
            crc: u32_at(h, 4),
            lsn: Lsn(u64_at(h, 8)),
        })
    }

    fn len_word(&self) -> u32 {
        let mut word = self.payload_len as u32;
        if self.continues {
            word |= GROUP_CONTINUES;
        }
        if self.batch_start {
            word |= BATCH_START;
        }
        word
    }

    /// Bytes of the whole record.
    pub(crate) fn size(&self) -> usize {
        record_bytes(self.payload_len)
    }
}

/// A record that passed every check, with its payload borrowed from the segment bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record<'a> {
    pub(crate) header: RecordHeader,
    pub(crate) payload: &'a [u8],
}

/// Reads and checks the record at `off`: whole, within the length limit, checksum right, and
/// carrying the `expected` LSN.
pub(crate) fn read_record(bytes: &[u8], off: usize, expected: Lsn) -> Result<Record<'_>, Problem> {
    let Some(header) = RecordHeader::at(bytes, off) else {
        return Err(Problem::RecordCut { bytes: (bytes.len() - off) as u64 });
    };
    if header.payload_len > JOURNAL_RECORD_MAX_BYTES {
        return Err(Problem::RecordTooLong { payload_bytes: header.payload_len as u64 });
    }
    let start = off + RECORD_HEADER_BYTES;
    let Some(payload) = bytes.get(start..start + header.payload_len) else {
        return Err(Problem::RecordCut { bytes: (bytes.len() - off) as u64 });
    };
    if record_crc(payload_crc(payload), header.len_word(), header.lsn) != header.crc {
        return Err(Problem::RecordChecksum);
    }
    if header.lsn != expected {
        return Err(Problem::RecordLsn { found: header.lsn });
    }
    Ok(Record { header, payload })
}

/// Marks the record at the start of `batch` as the first of a write batch, after checking it
/// (the writer's half of the pair of checksum checks; recovery does the other).
pub(crate) fn mark_batch_start(batch: &mut [u8], lsn: Lsn) {
    let record = read_record(batch, 0, lsn).expect("the writer's batch starts with a valid record");
    let mut header = record.header;
    header.batch_start = true;
    let crc = record_crc(payload_crc(record.payload), header.len_word(), lsn);
    batch[0..4].copy_from_slice(&header.len_word().to_le_bytes());
    batch[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Where the data written to a segment ends: one past its last non-zero byte, and at least
/// `from`. Everything after it is zeros: the unused part of a preallocated segment (nothing after
/// it for a segment in the growing layout). No record can start at or after it, since a record
/// header always holds a non-zero byte (LSNs start at 1); a record may still end after it, when
/// its payload ends in zeros.
pub(crate) fn data_end(bytes: &[u8], from: usize) -> usize {
    // Whole blocks first, compared with a block of zeros (a `memcmp`, fast in any build): this
    // runs over the tens of MiB of zeros at the end of the last segment at every start-up.
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut end = bytes.len();
    while end >= from + BLOCK && bytes[end - BLOCK..end] == ZEROS[..] {
        end -= BLOCK;
    }
    while end > from && bytes[end - 1] == 0 {
        end -= 1;
    }
    end.max(from)
}

/// After a bad record at `bad` that should have carried LSN `bad_lsn`, the first valid record
/// that starts a later write batch, if any: proof that the bad record's batch was complete and
/// synced (the writer writes a batch only after the previous one's fsync returned), so it was
/// acknowledged and its damage is corruption, not a torn tail. Records before `group_lsn` (the
/// start of the bad record's group) are not considered, nor records starting at or after `end`
/// (the segment's [`data_end`]: only zeros follow).
///
/// Valid records that do not start a batch prove nothing: a power failure while a batch was
/// being written back can leave later pages of it on disk and not earlier ones, since neither
/// the kernel nor the disk keeps the order of pages within one write; those records were never
/// acknowledged.
pub(crate) fn valid_batch_after(
    bytes: &[u8],
    end: usize,
    bad: usize,
    bad_lsn: Lsn,
    group_lsn: Lsn,
) -> Option<(usize, Lsn)> {
    // Every record takes at least a header, so a record that starts within the data left can
    // carry at most this LSN; the bound makes garbage cheap to skip.
    let lsn_max = Lsn(bad_lsn.0.saturating_add(end.saturating_sub(bad) as u64 / RECORD_HEADER_BYTES as u64));
    let mut off = bad + 1;
    while let Some(found) = next_valid_record(bytes, off, end, group_lsn, lsn_max) {
        let header = RecordHeader::at(bytes, found).expect("a valid record has a header");
        if header.batch_start {
            return Some((found, header.lsn));
        }
        off = found + header.size();
    }
    None
}

/// The first offset in `from..end` where a whole record with a right checksum and an LSN in
/// `lsn_min..=lsn_max` starts, if any.
///
/// Every offset is tried, since a corrupt length tells nothing about where the next record
/// starts. Cheap filters come first so a long stretch of garbage costs little: the length must
/// be within the limit and fit the file, and the LSN within the bounds; only then is the
/// checksum computed.
fn next_valid_record(bytes: &[u8], from: usize, end: usize, lsn_min: Lsn, lsn_max: Lsn) -> Option<usize> {
    let mut off = from;
    while off < end {
        let h = RecordHeader::at(bytes, off)?;
        let plausible = h.payload_len <= JOURNAL_RECORD_MAX_BYTES
            && off + h.size() <= bytes.len()
            && lsn_min <= h.lsn
            && h.lsn <= lsn_max;
        if plausible && read_record(bytes, off, h.lsn).is_ok() {
            return Some(off);
        }
        off += 1;
    }
    None
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(records: &[(u64, &[u8], bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(lsn, payload, continues) in records {
            encode_record(&mut out, Lsn(lsn), payload, payload_crc(payload), continues);
        }
        out
    }

    /// Records 1..=n, each its own write batch.
    fn batches(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let start = out.len();
            encode_record(&mut out, Lsn(i as u64 + 1), p, payload_crc(p), false);
            mark_batch_start(&mut out[start..], Lsn(i as u64 + 1));
        }
        out
    }

    #[test]
    fn segment_names_sort_like_lsns() {
        assert_eq!(segment_name(Lsn(42)), "00000000000000000042.journal");
        assert_eq!(parse_segment_name("00000000000000000042.journal"), Some(Lsn(42)));
        assert_eq!(parse_segment_name("0000000000000000042.journal"), None);
        assert_eq!(parse_segment_name("00000000000000000042.journal.tmp"), None);
        assert_eq!(parse_segment_name("snapshot-00000000000000000042.snap"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.journal"), None);
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = encode_segment_header(Lsn(7));
        assert_eq!(decode_segment_header(&h), Ok(Lsn(7)));
        assert_eq!(decode_segment_header(&h[..10]), Err(Problem::HeaderCut { bytes: 10 }));
        let mut bad = h;
        bad[0] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(Problem::HeaderMagic));
        let mut bad = h;
        bad[13] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(Problem::HeaderChecksum));
        let mut other = h;
        other[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&other[0..20]);
        other[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&other), Err(Problem::HeaderVersion { found: 2 }));
    }

    #[test]
    fn records_round_trip_with_group_flag() {
        let bytes = framed(&[(1, b"one", true), (2, b"", false)]);
        assert_eq!(bytes.len(), 2 * RECORD_HEADER_BYTES + 3);
        let r = read_record(&bytes, 0, Lsn(1)).unwrap();
        assert_eq!((r.payload, r.header.continues), (&b"one"[..], true));
        let r = read_record(&bytes, r.header.size(), Lsn(2)).unwrap();
        assert_eq!((r.payload, r.header.continues), (&b""[..], false));
        assert_eq!(read_record(&bytes, 0, Lsn(2)).unwrap_err(), Problem::RecordLsn { found: Lsn(1) });
    }

    #[test]
    fn every_bit_flip_in_a_record_is_caught() {
        let bytes = framed(&[(5, b"payload bytes", false)]);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(read_record(&b, 0, Lsn(5)).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn cut_and_oversized_records_are_named() {
        let bytes = framed(&[(1, b"abcdef", false)]);
        assert_eq!(read_record(&bytes[..5], 0, Lsn(1)).unwrap_err(), Problem::RecordCut { bytes: 5 });
        assert_eq!(read_record(&bytes[..20], 0, Lsn(1)).unwrap_err(), Problem::RecordCut { bytes: 20 });
        let mut big = bytes.clone();
        big[0..4].copy_from_slice(&(JOURNAL_RECORD_MAX_BYTES as u32 + 1).to_le_bytes());
        let e = read_record(&big, 0, Lsn(1)).unwrap_err();
        assert_eq!(e, Problem::RecordTooLong { payload_bytes: JOURNAL_RECORD_MAX_BYTES as u64 + 1 });
    }

    #[test]
    fn resynchronisation_finds_the_next_good_record() {
        let bytes = framed(&[(1, b"first", false), (2, b"second", false), (3, b"third", false)]);
        let second = record_bytes(5);
        let mut damaged = bytes.clone();
        damaged[second + 3] ^= 0x10; // the length word of record 2
        assert!(read_record(&damaged, second, Lsn(2)).is_err());
        let third = second + record_bytes(6);
        let end = damaged.len();
        assert_eq!(next_valid_record(&damaged, second + 1, end, Lsn(2), Lsn(9)), Some(third));
        assert_eq!(next_valid_record(&damaged, second + 1, end, Lsn(2), Lsn(2)), None);
        assert_eq!(next_valid_record(&damaged, second + 1, third, Lsn(2), Lsn(9)), None);
        assert_eq!(next_valid_record(&damaged, third + 1, end, Lsn(2), Lsn(9)), None);
        assert_eq!(next_valid_record(&[0u8; 4096], 0, 4096, Lsn(1), Lsn(999)), None);
    }

    #[test]
    fn data_ends_at_the_last_non_zero_byte() {
        assert_eq!(data_end(&[], 0), 0);
        assert_eq!(data_end(&[0; 300], 24), 24);
        let mut b = vec![0u8; 10_000];
        for at in [0usize, 23, 24, 63, 64, 65, 500, 4095, 4096, 5904, 5905, 9999] {
            b.fill(0);
            b[at] = 9;
            assert_eq!(data_end(&b, 0), at + 1, "at {at}");
            assert_eq!(data_end(&b, 24), (at + 1).max(24), "at {at}");
        }
        // A record whose payload ends in zeros: the data ends inside it.
        let bytes = framed(&[(1, &[5, 0, 0], false)]);
        assert_eq!(data_end(&bytes, 0), RECORD_HEADER_BYTES + 1);
    }

    #[test]
    fn only_a_later_batch_proves_the_damage_was_acknowledged() {
        // One batch of three records: damage in the first, the others valid.
        let mut one = framed(&[(1, b"a", false), (2, b"b", false), (3, b"c", false)]);
        mark_batch_start(&mut one, Lsn(1));
        assert!(RecordHeader::at(&one, 0).unwrap().batch_start);
        one[RECORD_HEADER_BYTES] ^= 1;
        assert_eq!(next_valid_record(&one, 1, one.len(), Lsn(1), Lsn(3)), Some(record_bytes(1)));
        assert_eq!(valid_batch_after(&one, one.len(), 0, Lsn(1), Lsn(1)), None);
        // Three batches: damage in the first, the second starts a later batch.
        let mut three = batches(&[b"a", b"b", b"c"]);
        three[RECORD_HEADER_BYTES] ^= 1;
        assert_eq!(
            valid_batch_after(&three, three.len(), 0, Lsn(1), Lsn(1)),
            Some((record_bytes(1), Lsn(2)))
        );
        // The same in a preallocated segment: zeros after the records change nothing.
        three.resize(three.len() + 4096, 0);
        let end = data_end(&three, 0);
        assert_eq!(end, 3 * record_bytes(1));
        assert_eq!(valid_batch_after(&three, end, 0, Lsn(1), Lsn(1)), Some((record_bytes(1), Lsn(2))));
    }
}
