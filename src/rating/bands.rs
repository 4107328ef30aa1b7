//! Time bands: which price is in force at an instant, and when that next changes.
//!
//! Local time is UTC plus the plan's fixed offset (no daylight-saving rules: a plan that needs
//! them uses two catalogs or accepts the hour). Day 0 of Unix time, 1970-01-01, was a Thursday.

use super::{Rate, BANDS_PER_RATE_MAX};

const SECS_PER_DAY: i128 = 86_400;
const MINUTES_PER_DAY: u16 = 1440;

/// Day index of 1970-01-01 with Monday = 0 (it was a Thursday).
const EPOCH_WEEKDAY: i128 = 3;

/// The band index (0 = base price, i + 1 = `bands[i]`) in force at `unix_secs`, with the plan's
/// fixed UTC offset. The first band whose days and `[from, to)` minutes contain the local time
/// wins.
pub fn band_at(rate: &Rate, unix_secs: u64, utc_offset_minutes: i32) -> usize {
    band_at_local(rate, local_secs(unix_secs, utc_offset_minutes))
}

/// The first instant strictly after `unix_secs` at which `band_at` returns something else (for
/// Tariff-Time-Change, RFC 4006 §8.20), or `None` if the rate has no bands or its band never
/// changes (a band covering the whole week).
pub fn next_band_change(rate: &Rate, unix_secs: u64, utc_offset_minutes: i32) -> Option<u64> {
    if rate.bands.is_empty() {
        return None;
    }
    let offset = i128::from(utc_offset_minutes) * 60;
    let now = i128::from(unix_secs) + offset;
    let current = band_at_local(rate, now);
    // The band can only change at midnight or at a band edge; those minutes, sorted.
    let mut edges = [0u16; 1 + 2 * BANDS_PER_RATE_MAX];
    let mut count = 1;
    for band in rate.bands.iter().take(BANDS_PER_RATE_MAX) {
        for minute in [band.from_minute, band.to_minute] {
            if minute < MINUTES_PER_DAY {
                edges[count] = minute;
                count += 1;
            }
        }
    }
    let edges = &mut edges[..count];
    edges.sort_unstable();
    // Bands repeat weekly, so a change, if any, comes within the next seven days.
    let today = now.div_euclid(SECS_PER_DAY);
    for day in today..=today + 7 {
        for &minute in edges.iter() {
            let instant = day * SECS_PER_DAY + i128::from(minute) * 60;
            if now < instant && band_at_local(rate, instant) != current {
                return u64::try_from(instant - offset).ok();
            }
        }
    }
    None
}

fn local_secs(unix_secs: u64, utc_offset_minutes: i32) -> i128 {
    i128::from(unix_secs) + i128::from(utc_offset_minutes) * 60
}

fn band_at_local(rate: &Rate, local: i128) -> usize {
    // Most rates have no bands, and the 128-bit day and minute arithmetic below costs ~170
    // instructions on every grant; without bands the answer is the base price anyway.
    if rate.bands.is_empty() {
        return 0;
    }
    let weekday = (local.div_euclid(SECS_PER_DAY) + EPOCH_WEEKDAY).rem_euclid(7);
    let day_bit = 1u8 << weekday;
    // rem_euclid keeps this in 0..1440.
    let minute = (local.rem_euclid(SECS_PER_DAY) / 60) as u16;
    let bands = rate.bands.iter().take(BANDS_PER_RATE_MAX);
    for (i, band) in bands.enumerate() {
        if band.days & day_bit != 0 && band.from_minute <= minute && minute < band.to_minute {
            return i + 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::rating::{Band, UnitKind};

    const MON: u8 = 1;
    const FRI: u8 = 1 << 4;
    const SAT: u8 = 1 << 5;
    const SUN: u8 = 1 << 6;
    const WEEKDAYS: u8 = 0b001_1111;

    /// Monday 2024-01-01 00:00:00 UTC.
    const MONDAY: u64 = 1_704_067_200;
    const DAY: u64 = 86_400;
    const HOUR: u64 = 3600;

    fn rate(bands: &[(u8, u16, u16)]) -> Rate {
        Rate {
            unit: UnitKind::Time,
            price: Decimal::ONE,
            per: 60,
            increment: 1,
            first_increment: 1,
            connect_fee: Decimal::ZERO,
            min_charge: None,
            max_charge: None,
            bands: bands
                .iter()
                .map(|&(days, from_minute, to_minute)| Band {
                    days,
                    from_minute,
                    to_minute,
                    price: Decimal::ONE,
                })
                .collect(),
        }
    }

    fn weekend() -> Rate {
        rate(&[(SAT | SUN, 0, 1440)])
    }

    #[test]
    fn epoch_was_a_thursday() {
        let thursday = rate(&[(1 << 3, 0, 1440)]);
        assert_eq!(band_at(&thursday, 0, 0), 1);
        assert_eq!(band_at(&thursday, DAY - 1, 0), 1);
        assert_eq!(band_at(&thursday, DAY, 0), 0);
        assert_eq!(band_at(&rate(&[(MON, 0, 1440)]), MONDAY, 0), 1);
    }

    #[test]
    fn weekend_band() {
        let r = weekend();
        assert_eq!(band_at(&r, MONDAY + 4 * DAY + 23 * HOUR, 0), 0, "Friday 23:00");
        assert_eq!(band_at(&r, MONDAY + 5 * DAY, 0), 1, "Saturday 00:00");
        assert_eq!(band_at(&r, MONDAY + 7 * DAY - 1, 0), 1, "Sunday 23:59:59");
        assert_eq!(band_at(&r, MONDAY + 7 * DAY, 0), 0, "Monday again");
        assert_eq!(next_band_change(&r, MONDAY + 2 * DAY + 5, 0), Some(MONDAY + 5 * DAY));
        assert_eq!(next_band_change(&r, MONDAY + 5 * DAY, 0), Some(MONDAY + 7 * DAY));
        assert_eq!(next_band_change(&r, MONDAY + 5 * DAY - 1, 0), Some(MONDAY + 5 * DAY));
    }

    #[test]
    fn utc_offset_moves_local_midnight() {
        let r = weekend();
        // UTC+1: Saturday starts at Friday 23:00 UTC.
        let friday_2300 = MONDAY + 4 * DAY + 23 * HOUR;
        assert_eq!(band_at(&r, friday_2300, 60), 1);
        assert_eq!(band_at(&r, friday_2300 - 1, 60), 0);
        assert_eq!(next_band_change(&r, MONDAY, 60), Some(friday_2300));
        // UTC−5: Monday 00:00 UTC is still Sunday locally; Saturday starts at Saturday 05:00 UTC.
        assert_eq!(band_at(&r, MONDAY, -300), 1);
        assert_eq!(next_band_change(&r, MONDAY, -300), Some(MONDAY + 5 * HOUR));
        assert_eq!(next_band_change(&r, MONDAY + DAY, -300), Some(MONDAY + 5 * DAY + 5 * HOUR));
        // Before 1970 in local time does not underflow.
        assert_eq!(band_at(&rate(&[(1 << 2, 0, 1440)]), 0, -60), 1, "Wednesday 1969-12-31 23:00");
    }

    #[test]
    fn first_matching_band_wins_and_edges_are_half_open() {
        // Weekday evenings 18:00–24:00, every night 00:00–08:00.
        let r = rate(&[(WEEKDAYS, 18 * 60, 1440), (0x7f, 0, 8 * 60)]);
        assert_eq!(band_at(&r, MONDAY, 0), 2);
        assert_eq!(band_at(&r, MONDAY + 8 * HOUR - 1, 0), 2);
        assert_eq!(band_at(&r, MONDAY + 8 * HOUR, 0), 0);
        assert_eq!(band_at(&r, MONDAY + 18 * HOUR, 0), 1);
        assert_eq!(next_band_change(&r, MONDAY, 0), Some(MONDAY + 8 * HOUR));
        assert_eq!(next_band_change(&r, MONDAY + 8 * HOUR, 0), Some(MONDAY + 18 * HOUR));
        assert_eq!(next_band_change(&r, MONDAY + 18 * HOUR, 0), Some(MONDAY + DAY));
        // Friday 18:00 → Saturday 00:00 is evening → night; Saturday 08:00 → base.
        let friday_1800 = MONDAY + 4 * DAY + 18 * HOUR;
        assert_eq!(next_band_change(&r, friday_1800, 0), Some(MONDAY + 5 * DAY));
        assert_eq!(next_band_change(&r, MONDAY + 5 * DAY, 0), Some(MONDAY + 5 * DAY + 8 * HOUR));
        let sat_0800 = MONDAY + 5 * DAY + 8 * HOUR;
        assert_eq!(next_band_change(&r, sat_0800, 0), Some(MONDAY + 6 * DAY));
    }

    #[test]
    fn no_change_without_bands_or_with_an_all_week_band() {
        assert_eq!(next_band_change(&rate(&[]), MONDAY, 0), None);
        assert_eq!(band_at(&rate(&[]), MONDAY, 0), 0);
        assert_eq!(next_band_change(&rate(&[(0x7f, 0, 1440)]), MONDAY, 0), None);
        // A band only on Fridays changes once a week.
        let friday = rate(&[(FRI, 0, 1440)]);
        assert_eq!(next_band_change(&friday, MONDAY + 5 * DAY, 0), Some(MONDAY + 11 * DAY));
    }

    #[test]
    fn next_change_is_strictly_later_and_really_changes() {
        let r = rate(&[(WEEKDAYS, 9 * 60, 17 * 60 + 30), (SAT, 0, 12 * 60)]);
        let mut t = MONDAY - 3 * DAY;
        for _ in 0..40 {
            let next = next_band_change(&r, t, 90).unwrap();
            assert!(t < next);
            assert_ne!(band_at(&r, next, 90), band_at(&r, t, 90));
            // Nothing changes in between (checked every minute).
            let mut s = t;
            while s < next {
                assert_eq!(band_at(&r, s, 90), band_at(&r, t, 90));
                s += 60;
            }
            t = next;
        }
        assert_eq!(next_band_change(&r, u64::MAX - 10, 0), None, "beyond u64");
    }
}
