//! Gapless invoice numbers: one sequence per series, allocated by a pure state machine whose
//! every step is a journal record.
//!
//! EN 16931 BT-1 asks for "a unique identification of the Invoice"; VAT law (Directive
//! 2006/112/EC Art. 226(2)) asks for "a sequential number … which uniquely identifies the
//! invoice", and several member states read that as gapless per series. So a number is never
//! skipped and never reused, whatever crashes happen:
//!
//! - [`Sequences::allocate`] returns the next number and the [`NumberAllocated`] record that
//!   says so. The caller appends the record to the journal (in the same batch as the step of
//!   the settlement it numbers) and uses the number only once the record is durable.
//! - A crash before the record is durable loses the allocation with everything else of that
//!   step; after restart the same settlement, consumed in the same order, allocates the same
//!   number again. No gap.
//! - Recovery calls [`Sequences::restore`] for every record in journal order. A record at or
//!   below the series' last number is a repeat (the step was retried and journaled twice) and
//!   changes nothing; a record more than one ahead is a gap and is refused, which stops
//!   start-up rather than issuing a number twice.
//!
//! The series of a number is its prefix with the issue year (`GYR-2026`), so numbering
//! restarts each year when `yearly` is on; the number's text is `GYR-2026-000001`.
//! One invoice number per settled session is the settlement worker's part: it allocates only
//! for a settlement whose journaled state has no number yet.

use std::collections::BTreeMap;

use serde::Deserialize;

/// How invoice numbers look (`[settlement.numbering]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeriesConfig {
    /// Letters, digits and `-` only (the number names files and Message-IDs).
    pub prefix: String,
    /// Start a new series each calendar year (the year joins the prefix).
    pub yearly: bool,
    /// Zero-padded width of the sequence number (wider numbers are written in full).
    pub digits: u8,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        Self { prefix: "GYR".into(), yearly: true, digits: 6 }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum SeriesConfigError {
    #[error("prefix must be 1 to 32 ASCII letters, digits or '-'")]
    Prefix,
    #[error("digits must be 1 to 12")]
    Digits,
}

impl SeriesConfig {
    pub fn validate(&self) -> Result<(), SeriesConfigError> {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
        if self.prefix.is_empty() || 32 < self.prefix.len() || !self.prefix.bytes().all(ok) {
            return Err(SeriesConfigError::Prefix);
        }
        if !(1..=12).contains(&self.digits) {
            return Err(SeriesConfigError::Digits);
        }
        Ok(())
    }

    /// The series an invoice issued in `year` belongs to.
    pub fn series(&self, year: i32) -> String {
        if self.yearly {
            format!("{}-{year:04}", self.prefix)
        } else {
            self.prefix.clone()
        }
    }

    /// The invoice number (BT-1) for `number` in `series`: `GYR-2026-000001`.
    pub fn format(&self, series: &str, number: u64) -> String {
        format!("{series}-{number:0width$}", width = usize::from(self.digits))
    }
}

/// The journal record of one allocation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NumberAllocated {
    pub series: String,
    pub number: u64,
}

/// Tag of a [`NumberAllocated`] record in settlement journal payloads.
pub const NUMBER_ALLOCATED_TAG: u8 = 0x51;

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum NumberingError {
    #[error("not a number record (tag, series length, series, number > 0)")]
    Malformed,
    #[error("number {got} follows {last}: a gap in the journal")]
    Gap { last: u64, got: u64 },
}

impl NumberAllocated {
    /// `tag u8 | series length u8 | series | number u64 LE`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let series = self.series.as_bytes();
        assert!(series.len() <= usize::from(u8::MAX), "series names are validated to ≤ 37 bytes");
        out.push(NUMBER_ALLOCATED_TAG);
        out.push(series.len() as u8);
        out.extend_from_slice(series);
        out.extend_from_slice(&self.number.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NumberingError> {
        let malformed = NumberingError::Malformed;
        let [NUMBER_ALLOCATED_TAG, len, rest @ ..] = bytes else {
            return Err(malformed);
        };
        let len = usize::from(*len);
        if rest.len() != len + 8 {
            return Err(malformed);
        }
        let series = std::str::from_utf8(&rest[..len]).map_err(|_| malformed)?.to_owned();
        let number = u64::from_le_bytes(rest[len..].try_into().map_err(|_| malformed)?);
        if number == 0 {
            return Err(malformed);
        }
        Ok(Self { series, number })
    }
}

/// What [`Sequences::restore`] did with a record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Restored {
    /// The next number of its series: applied.
    Applied,
    /// At or below the series' last number: a repeat, ignored.
    Repeated,
}

/// The last number of every series. Numbers start at 1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequences {
    last: BTreeMap<String, u64>,
}

impl Sequences {
    /// The next number of `series` (the last + 1), and its record for the journal.
    pub fn allocate(&mut self, series: &str) -> NumberAllocated {
        let last = self.last.entry(series.to_owned()).or_insert(0);
        *last = last.checked_add(1).expect("a u64 sequence does not run out");
        NumberAllocated { series: series.to_owned(), number: *last }
    }

    /// Replays one journaled allocation (see the module doc).
    pub fn restore(&mut self, record: &NumberAllocated) -> Result<Restored, NumberingError> {
        let last = self.last.entry(record.series.clone()).or_insert(0);
        if record.number <= *last {
            return Ok(Restored::Repeated);
        }
        if record.number != *last + 1 {
            return Err(NumberingError::Gap { last: *last, got: record.number });
        }
        *last = record.number;
        Ok(Restored::Applied)
    }

    /// The last number allocated in `series` (0 for none).
    pub fn last(&self, series: &str) -> u64 {
        self.last.get(series).copied().unwrap_or(0)
    }

    /// Every series and its last number, for snapshots.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.last.iter().map(|(s, &n)| (s.as_str(), n))
    }

    /// Loads a snapshot's entry (the state at the snapshot's LSN; records after it are then
    /// restored on top).
    pub fn load(&mut self, series: &str, last: u64) {
        self.last.insert(series.to_owned(), last);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn numbers_look_like_the_config_says() {
        let config = SeriesConfig::default();
        assert_eq!(config.validate(), Ok(()));
        let series = config.series(2026);
        assert_eq!(series, "GYR-2026");
        assert_eq!(config.format(&series, 1), "GYR-2026-000001");
        assert_eq!(config.format(&series, 1_234_567), "GYR-2026-1234567");
        let flat = SeriesConfig { prefix: "INV".into(), yearly: false, digits: 4 };
        assert_eq!(flat.format(&flat.series(2026), 42), "INV-0042");
        assert_eq!(
            SeriesConfig { prefix: "a b".into(), ..flat.clone() }.validate(),
            Err(SeriesConfigError::Prefix)
        );
        assert_eq!(SeriesConfig { digits: 0, ..flat }.validate(), Err(SeriesConfigError::Digits));
    }

    #[test]
    fn allocation_counts_from_one_per_series() {
        let mut s = Sequences::default();
        assert_eq!(s.allocate("A").number, 1);
        assert_eq!(s.allocate("A").number, 2);
        assert_eq!(s.allocate("B").number, 1);
        assert_eq!(s.allocate("A").number, 3);
        assert_eq!((s.last("A"), s.last("B"), s.last("C")), (3, 1, 0));
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let record = NumberAllocated { series: "GYR-2026".into(), number: 7 };
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        assert_eq!(NumberAllocated::decode(&bytes), Ok(record));
        for cut in 0..bytes.len() {
            assert!(NumberAllocated::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_tag = bytes.clone();
        wrong_tag[0] = 0;
        assert!(NumberAllocated::decode(&wrong_tag).is_err());
    }

    #[test]
    fn a_gap_in_the_journal_is_refused_and_a_repeat_ignored() {
        let mut s = Sequences::default();
        let at = |n| NumberAllocated { series: "A".into(), number: n };
        assert_eq!(s.restore(&at(1)), Ok(Restored::Applied));
        assert_eq!(s.restore(&at(1)), Ok(Restored::Repeated));
        assert_eq!(s.restore(&at(3)), Err(NumberingError::Gap { last: 1, got: 3 }));
        assert_eq!(s.last("A"), 1);
        assert_eq!(s.allocate("A").number, 2);
    }

    /// One step of a settlement worker: allocate, then the record is durable or the process
    /// dies before it is.
    #[derive(Clone, Debug)]
    enum Step {
        Allocate { series: u8 },
        CrashBeforeDurable { series: u8 },
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u8..3).prop_map(|series| Step::Allocate { series }),
            1 => (0u8..3).prop_map(|series| Step::CrashBeforeDurable { series }),
            1 => Just(Step::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever crashes happen, the numbers in the journal are 1, 2, 3, … per series (no
        /// gap, no reuse), and replaying the journal gives the state the live process had.
        #[test]
        fn replay_gives_the_same_numbers_with_no_gap_or_reuse(steps in prop::collection::vec(step(), 1..200)) {
            let mut journal: Vec<Vec<u8>> = Vec::new();
            let mut live = Sequences::default();
            let mut issued: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Allocate { series } => {
                        let record = live.allocate(&format!("S{series}"));
                        let mut bytes = Vec::new();
                        record.encode(&mut bytes);
                        journal.push(bytes);
                        issued.entry(record.series).or_default().push(record.number);
                    }
                    Step::CrashBeforeDurable { series } => {
                        // The allocation happened in memory only; the process dies.
                        let _lost = live.allocate(&format!("S{series}"));
                        live = replay(&journal)?;
                    }
                    Step::Restart => live = replay(&journal)?,
                }
            }
            for (series, numbers) in &issued {
                let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
                prop_assert_eq!(numbers, &expected, "series {}", series);
            }
            prop_assert_eq!(replay(&journal)?, live);
        }
    }

    fn replay(journal: &[Vec<u8>]) -> Result<Sequences, TestCaseError> {
        let mut s = Sequences::default();
        for bytes in journal {
            let record = NumberAllocated::decode(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(s.restore(&record), Ok(Restored::Applied));
        }
        // A second replay of the same records (a retried step journaled twice) changes nothing.
        let again = s.clone();
        for bytes in journal {
            let record = NumberAllocated::decode(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(s.restore(&record), Ok(Restored::Repeated));
        }
        prop_assert_eq!(&s, &again);
        Ok(s)
    }
}
