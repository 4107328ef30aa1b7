//! `charge` and `affordable`: exact integer arithmetic over a rate converted to 10⁻⁹ units.
//!
//! The rules are listed in the parent module's docs (§Rounding). Here is how they are kept
//! exact: every price, fee and min/max charge is turned into an integer number of nano-units
//! (10⁻⁹ of the currency), and the whole charge is carried as the integer
//! `N = per × 10⁹ × value` until the single final division. With prices below `PRICE_MAX` at no
//! more than `PRICE_SCALE_MAX` decimals and usage below 2⁶⁴, every term stays below 2¹²⁵ and the
//! sum of at most seven terms below 2¹²⁸, so the `saturating_*` operations never saturate for a
//! rate that passed [`Rate::check`]; for one that did not, they keep the result monotone.

use std::cell::Cell;

use super::money::exponent;
use super::{CumulativeUsage, Currency, MoneyMinor, Rate, RateError, RateField, BANDS_PER_RATE_MAX};

/// Most decimal places a price, connect fee or min/max charge may have. Discounts are rounded
/// to 6 places, so 9 leaves room for hand-written sub-cent prices.
pub const PRICE_SCALE_MAX: u32 = 9;

/// Largest price, connect fee or min/max charge, in whole currency units. Together with
/// `PRICE_SCALE_MAX` this bounds the integers in `charge` (module docs).
pub const PRICE_MAX: u64 = 1_000_000_000;

/// What `affordable` returns for "as much as the client wants": a zero price, a `max_charge`
/// already within the funds, or more units than any counter will reach.
pub const AFFORDABLE_UNLIMITED: u64 = u64::MAX / 2;

/// The estimate in `affordable` is exact; these correction steps only guard it, and a miss is a
/// bug that debug builds (and so the property tests) report.
const CORRECTION_STEPS_MAX: usize = 4;

const NANOS_PER_UNIT: u128 = 1_000_000_000;
const _: () = assert!(NANOS_PER_UNIT == 10u128.pow(PRICE_SCALE_MAX));
// The largest price in nano-units times usage below 2⁶⁵ (usage plus an increment) fits in 2¹²⁵.
const _: () = assert!((PRICE_MAX as u128) * NANOS_PER_UNIT < (1u128 << 60));
const _: () = assert!(BANDS_PER_RATE_MAX + 3 <= 8); // 1 + bands + connect + top-up < 2¹²⁸.

const SLOTS: usize = BANDS_PER_RATE_MAX + 1;

/// Wide cumulative usage, so `usage + AFFORDABLE_UNLIMITED` cannot overflow.
type Wide = [u128; SLOTS];

/// The charge for cumulative usage, in minor units (rules: module docs §Rounding). Saturates at
/// `i64::MAX`.
pub fn charge(rate: &Rate, usage: &CumulativeUsage, currency: Currency) -> MoneyMinor {
    Pricer::new(rate, currency).charge(usage)
}

/// The most extra units in `band` that `available` pays for on top of `usage`: the largest `x`
/// with `charge(usage + x in band) − charge(usage) ≤ available`.
///
/// `x` may be positive with `available = 0`: the rest of a block already billed is free. A
/// negative `available` (an overdrawn account) gets 0. When the extra charge is bounded within
/// the funds (a zero price, or `max_charge` reached), the answer is `AFFORDABLE_UNLIMITED`.
///
/// # Panics
/// If `band` is not 0 or a band of `rate` (a caller bug: bands come from `band_at`).
pub fn affordable(
    rate: &Rate,
    usage: &CumulativeUsage,
    band: usize,
    available: MoneyMinor,
    currency: Currency,
) -> u64 {
    Pricer::new(rate, currency).affordable(usage, band, available)
}

/// A rate converted once to the integers `charge` and `affordable` compute with. Converting
/// the Decimal amounts costs about as much as rating itself, and one credit-control request
/// rates the same rate three or four times (the debit, the grant, its hold), so the engine
/// builds one `Pricer` per service and request. The results are those of [`charge`] and
/// [`affordable`], which are these methods on a fresh `Pricer`.
pub struct Pricer {
    exact: Exact,
    /// The last usage rated through `charge` or as `affordable`'s starting point, and its
    /// charge in minor units. A request rates the same usage more than once (the debit's usage
    /// after is the grant's usage before, for `affordable` and for the hold), and a rating
    /// costs ~170 instructions, a comparison of five counters a handful.
    last: Cell<Option<(CumulativeUsage, u128)>>,
}

impl Pricer {
    pub fn new(rate: &Rate, currency: Currency) -> Self {
        Self { exact: Exact::new(rate, currency), last: Cell::new(None) }
    }

    /// [`charge`] of this rate.
    pub fn charge(&self, usage: &CumulativeUsage) -> MoneyMinor {
        let minor = self.minor(usage);
        MoneyMinor(i64::try_from(minor).unwrap_or(i64::MAX))
    }

    /// [`affordable`] with this rate.
    ///
    /// # Panics
    /// If `band` is not 0 or a band of the rate.
    pub fn affordable(&self, usage: &CumulativeUsage, band: usize, available: MoneyMinor) -> u64 {
        let exact = &self.exact;
        assert!(band < exact.slots, "band {band} is not a band of this rate ({} bands)", exact.slots - 1);
        let Ok(available) = u128::try_from(available.0) else {
            return 0;
        };
        let budget = self.minor(usage).saturating_add(available);
        affordable_within(exact, &widen(usage), band, budget)
    }

    /// `Exact::minor`, remembering the last answer.
    fn minor(&self, usage: &CumulativeUsage) -> u128 {
        if let Some((last, minor)) = self.last.get() {
            if last == *usage {
                return minor;
            }
        }
        let minor = self.exact.minor(&widen(usage));
        self.last.set(Some((*usage, minor)));
        minor
    }
}

/// The rest of [`affordable`] (its docs): the most extra units in `band` on top of `usage` whose
/// charge stays within `budget` minor units.
fn affordable_within(exact: &Exact, usage: &Wide, band: usize, budget: u128) -> u64 {
    let usage = *usage;
    let ok = |x: u64| {
        let mut more = usage;
        more[band] += u128::from(x);
        exact.minor(&more) <= budget
    };
    if ok(AFFORDABLE_UNLIMITED) {
        return AFFORDABLE_UNLIMITED;
    }
    // The last unit of the billed block that holds usage + x: moving within it costs nothing.
    let used = usage[band];
    let block_end = |x: u64| -> u64 {
        if x == 0 {
            return 0;
        }
        let end = round_up(used + u128::from(x), exact.increment) - used;
        u64::try_from(end).unwrap_or(u64::MAX).min(AFFORDABLE_UNLIMITED)
    };
    let mut x = block_end(exact.estimate(&usage, band, budget));
    for _ in 0..CORRECTION_STEPS_MAX {
        if !ok(x) {
            x = x.checked_sub(exact.increment_u64()).map_or(0, block_end);
        } else if ok(x + 1) {
            x = block_end(x + 1);
        } else {
            return x;
        }
    }
    debug_assert!(false, "affordable: the estimate was off by more than {CORRECTION_STEPS_MAX} steps");
    // Monotone search for the largest affordable x: ok(0) holds and ok(UNLIMITED) does not.
    let (mut lo, mut hi) = (0u64, AFFORDABLE_UNLIMITED);
    while 1 < hi - lo {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

impl Rate {
    /// Checks what `charge` relies on: non-negative amounts below `PRICE_MAX` with at most
    /// `PRICE_SCALE_MAX` decimals, `per` and `increment` ≥ 1, `first_increment ≥ increment`,
    /// `min_charge ≤ max_charge`, at most `BANDS_PER_RATE_MAX` well-formed, non-overlapping bands.
    pub fn check(&self) -> Result<(), RateError> {
        check_amount(RateField::Price, self.price)?;
        check_amount(RateField::ConnectFee, self.connect_fee)?;
        if let Some(min) = self.min_charge {
            check_amount(RateField::MinCharge, min)?;
        }
        if let Some(max) = self.max_charge {
            check_amount(RateField::MaxCharge, max)?;
        }
        if let (Some(min), Some(max)) = (self.min_charge, self.max_charge) {
            if max < min {
                return Err(RateError::MinAboveMax { min, max });
            }
        }
        if self.per == 0 {
            return Err(RateError::PerZero);
        }
        if self.increment == 0 {
            return Err(RateError::IncrementZero);
        }
        if self.first_increment < self.increment {
            return Err(RateError::FirstIncrementBelowIncrement {
                first_increment: self.first_increment,
                increment: self.increment,
            });
        }
        if BANDS_PER_RATE_MAX < self.bands.len() {
            return Err(RateError::TooManyBands { count: self.bands.len() });
        }
        for (i, band) in self.bands.iter().enumerate() {
            check_amount(RateField::BandPrice(i), band.price)?;
            if band.days == 0 || 0x7f < band.days {
                return Err(RateError::BandDays { band: i, days: band.days });
            }
            if band.to_minute <= band.from_minute || 1440 < band.to_minute {
                return Err(RateError::BandTimes { band: i, from: band.from_minute, to: band.to_minute });
            }
            for (j, earlier) in self.bands[..i].iter().enumerate() {
                let same_day = earlier.days & band.days != 0;
                if same_day && earlier.from_minute < band.to_minute && band.from_minute < earlier.to_minute {
                    return Err(RateError::BandsOverlap { band: i, other: j });
                }
            }
        }
        Ok(())
    }
}

fn check_amount(field: RateField, value: rust_decimal::Decimal) -> Result<(), RateError> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(RateError::Negative { field, value });
    }
    if PRICE_SCALE_MAX < value.normalize().scale() {
        return Err(RateError::TooPrecise { field, value });
    }
    if rust_decimal::Decimal::from(PRICE_MAX) < value {
        return Err(RateError::TooLarge { field, value });
    }
    Ok(())
}

/// A rate in integers: amounts in nano-units, fees and limits already multiplied by `per` so they
/// add directly to `price × billed`.
struct Exact {
    prices: [u128; SLOTS],
    /// 1 + the number of bands in use.
    slots: usize,
    connect_fee: u128,
    min_charge: Option<u128>,
    max_charge: Option<u128>,
    increment: u128,
    first_increment: u128,
    /// `N / divisor` is the charge in minor units: `per × 10^(9 − exponent)`.
    divisor: u128,
}

impl Exact {
    fn new(rate: &Rate, currency: Currency) -> Self {
        // `per` and `increment` are ≥ 1 after `Rate::check`; 0 is read as 1 rather than dividing
        // by zero.
        let per = u128::from(rate.per.max(1));
        let increment = u128::from(rate.increment.max(1));
        let slots = 1 + rate.bands.len().min(BANDS_PER_RATE_MAX);
        let mut prices = [0; SLOTS];
        prices[0] = nanos(rate.price);
        for (slot, band) in prices[1..slots].iter_mut().zip(&rate.bands) {
            *slot = nanos(band.price);
        }
        Self {
            prices,
            slots,
            connect_fee: nanos(rate.connect_fee).saturating_mul(per),
            min_charge: rate.min_charge.map(|m| nanos(m).saturating_mul(per)),
            max_charge: rate.max_charge.map(|m| nanos(m).saturating_mul(per)),
            increment,
            first_increment: u128::from(rate.first_increment).max(increment),
            divisor: per * POW10[(PRICE_SCALE_MAX - exponent(currency)) as usize],
        }
    }

    fn increment_u64(&self) -> u64 {
        u64::try_from(self.increment).unwrap_or(u64::MAX)
    }

    /// `per × 10⁹ ×` the charge before clamping, or `None` for zero usage.
    fn raw(&self, usage: &Wide) -> Option<u128> {
        let mut any = false;
        let mut sum = self.connect_fee;
        let mut top_up = 0;
        for (&units, &price) in usage[..self.slots].iter().zip(&self.prices) {
            if units == 0 {
                continue;
            }
            any = true;
            let billed = round_up(units, self.increment);
            sum = sum.saturating_add(price.saturating_mul(billed));
            if billed < self.first_increment {
                top_up = top_up.max(price.saturating_mul(self.first_increment - billed));
            }
        }
        any.then(|| sum.saturating_add(top_up))
    }

    fn clamp(&self, raw: u128) -> u128 {
        let raw = self.min_charge.map_or(raw, |min| raw.max(min));
        self.max_charge.map_or(raw, |max| raw.min(max))
    }

    /// The charge in minor units, unsaturated.
    fn minor(&self, usage: &Wide) -> u128 {
        self.raw(usage).map_or(0, |raw| div_ceil(self.clamp(raw), self.divisor))
    }

    /// The largest extra units in `band` whose charge stays within `budget` minor units, solved
    /// from the prices. Writing B for the billed units of `band`, F for `first_increment`, A for
    /// the connect fee plus the other bands, E for the largest first-block top-up among the other
    /// used bands and P for the band's price, the raw charge for x ≥ 1 is
    /// `A + max(P × max(F, B), P × B + E)`; it must stay ≤ `budget × divisor` (the final rounding
    /// up, inverted), and so must `min_charge` (the caller has already handled `max_charge`).
    fn estimate(&self, usage: &Wide, band: usize, budget: u128) -> u64 {
        let limit = budget.saturating_mul(self.divisor);
        if self.min_charge.is_some_and(|min| limit < min) {
            return 0;
        }
        let (mut others, mut top_up) = (self.connect_fee, 0u128);
        for (slot, (&units, &price)) in usage[..self.slots].iter().zip(&self.prices).enumerate() {
            if slot == band || units == 0 {
                continue;
            }
            let billed = round_up(units, self.increment);
            others = others.saturating_add(price.saturating_mul(billed));
            if billed < self.first_increment {
                top_up = top_up.max(price.saturating_mul(self.first_increment - billed));
            }
        }
        let price = self.prices[band];
        let Some(room) = limit.checked_sub(others) else {
            return 0;
        };
        if price == 0 || room < price.saturating_mul(self.first_increment) {
            return 0;
        }
        let Some(room) = room.checked_sub(top_up) else {
            return 0;
        };
        let billed_max = room / price;
        let billed_max = billed_max - billed_max % self.increment;
        let x = billed_max.saturating_sub(usage[band]);
        u64::try_from(x).unwrap_or(u64::MAX).min(AFFORDABLE_UNLIMITED)
    }
}

fn widen(usage: &CumulativeUsage) -> Wide {
    usage.0.map(u128::from)
}

fn round_up(units: u128, increment: u128) -> u128 {
    // Usage and increments fit u64 except in `affordable`'s probes; a 64-bit division is several
    // times cheaper than a 128-bit one, and this runs once per band per charge.
    if let (Ok(units), Ok(increment)) = (u64::try_from(units), u64::try_from(increment)) {
        return u128::from(units.div_ceil(increment)) * u128::from(increment);
    }
    units.div_ceil(increment).saturating_mul(increment)
}

/// `a / b` rounded up, with the cheap 64-bit division when both fit (the usual case).
fn div_ceil(a: u128, b: u128) -> u128 {
    if let (Ok(a), Ok(b)) = (u64::try_from(a), u64::try_from(b)) {
        return u128::from(a.div_ceil(b));
    }
    a.div_ceil(b)
}

/// Powers of ten up to 10¹⁹ (what `nanos` needs for scales 0..=28), without a runtime loop.
const POW10: [u128; 20] = {
    let mut table = [1u128; 20];
    let mut i = 1;
    while i < table.len() {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// A non-negative amount in nano-units. More than 9 decimals round up; a negative amount reads as
/// 0. Both are out of contract (`Rate::check`) and only need to be harmless.
fn nanos(amount: rust_decimal::Decimal) -> u128 {
    if amount.is_sign_negative() {
        return 0;
    }
    let mantissa = amount.mantissa().unsigned_abs();
    let scale = amount.scale();
    if scale <= PRICE_SCALE_MAX {
        // mantissa < 2⁹⁶ and the factor ≤ 10⁹ < 2³⁰.
        mantissa * POW10[(PRICE_SCALE_MAX - scale) as usize]
    } else {
        // A Decimal's scale is at most 28, so the index is at most 19.
        mantissa.div_ceil(POW10[((scale - PRICE_SCALE_MAX) as usize).min(POW10.len() - 1)])
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rust_decimal::Decimal;

    use super::*;
    use crate::rating::{Band, UnitKind};

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn rate(unit: UnitKind, price: &str, per: u64, increment: u64) -> Rate {
        Rate {
            unit,
            price: d(price),
            per,
            increment,
            first_increment: increment,
            connect_fee: Decimal::ZERO,
            min_charge: None,
            max_charge: None,
            bands: Vec::new(),
        }
    }

    /// 0.05 EUR per 60 s, billed 60/1, with a 0.10 EUR connect fee.
    fn voice() -> Rate {
        Rate { first_increment: 60, connect_fee: d("0.10"), ..rate(UnitKind::Time, "0.05", 60, 1) }
    }

    /// 0.01 EUR per MiB in 1 KiB increments.
    fn data() -> Rate {
        rate(UnitKind::Octets, "0.01", 1 << 20, 1024)
    }

    fn sms() -> Rate {
        rate(UnitKind::Events, "0.09", 1, 1)
    }

    fn weekend(base: Rate, price: &str) -> Rate {
        let band = Band { days: 0b110_0000, from_minute: 0, to_minute: 1440, price: d(price) };
        Rate { bands: vec![band], ..base }
    }

    fn base(units: u64) -> CumulativeUsage {
        usage(&[units])
    }

    fn usage(per_band: &[u64]) -> CumulativeUsage {
        let mut u = CumulativeUsage::default();
        u.0[..per_band.len()].copy_from_slice(per_band);
        u
    }

    fn eur(rate: &Rate, u: &CumulativeUsage) -> i64 {
        charge(rate, u, Currency::EUR).0
    }

    #[test]
    fn voice_60_1_with_connect_fee() {
        let r = voice();
        r.check().unwrap();
        assert_eq!(eur(&r, &base(0)), 0, "no usage, no connect fee");
        // 1 s bills the first 60 s block: 0.10 + 0.05.
        assert_eq!(eur(&r, &base(1)), 15);
        assert_eq!(eur(&r, &base(60)), 15);
        // 61 s: 0.10 + 0.05 × 61/60 = 0.150833… → up to 0.16.
        assert_eq!(eur(&r, &base(61)), 16);
        assert_eq!(eur(&r, &base(120)), 20);
        // 30 min = 0.10 + 1.50.
        assert_eq!(eur(&r, &base(1800)), 160);
    }

    #[test]
    fn data_per_mib_in_kib_increments() {
        let r = data();
        assert_eq!(eur(&r, &base(1)), 1, "1 octet bills 1 KiB: 0.0000097… → 0.01");
        assert_eq!(eur(&r, &base(1 << 20)), 1);
        assert_eq!(eur(&r, &base((1 << 20) + 1)), 2);
        assert_eq!(eur(&r, &base(10 << 20)), 10);
        assert_eq!(eur(&r, &base(1 << 30)), 1024);
        // Rounding happens once, on the total: 100 × 1 KiB cost 100/1024 cents → 1 cent, not 100.
        assert_eq!(eur(&r, &base(100 * 1024)), 1);
    }

    #[test]
    fn sms_per_event() {
        let r = sms();
        assert_eq!(eur(&r, &base(1)), 9);
        assert_eq!(eur(&r, &base(3)), 27);
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(50), Currency::EUR), 5);
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(8), Currency::EUR), 0);
        assert_eq!(affordable(&r, &base(2), 0, MoneyMinor(9), Currency::EUR), 1);
    }

    #[test]
    fn jpy_has_no_minor_units() {
        // 3 JPY per 60 s, billed per second: 61 s = 3.05 → 4 JPY.
        let r = rate(UnitKind::Time, "3", 60, 1);
        assert_eq!(charge(&r, &base(60), Currency::JPY), MoneyMinor(3));
        assert_eq!(charge(&r, &base(61), Currency::JPY), MoneyMinor(4));
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(10), Currency::JPY), 200);
        // The same rate in KWD (3 decimals): 61 s = 3.050.
        assert_eq!(charge(&r, &base(61), Currency::KWD), MoneyMinor(3050));
    }

    #[test]
    fn min_and_max_charge() {
        let r = Rate { min_charge: Some(d("0.25")), max_charge: Some(d("1.00")), ..sms() };
        r.check().unwrap();
        assert_eq!(eur(&r, &base(0)), 0, "the minimum applies only to usage");
        assert_eq!(eur(&r, &base(1)), 25);
        assert_eq!(eur(&r, &base(3)), 27);
        assert_eq!(eur(&r, &base(11)), 99);
        assert_eq!(eur(&r, &base(12)), 100);
        assert_eq!(eur(&r, &base(1_000_000)), 100);
        // With 0.24 nothing is affordable; with 0.25 the minimum buys two messages (0.18 < 0.25).
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(24), Currency::EUR), 0);
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(25), Currency::EUR), 2);
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(99), Currency::EUR), 11);
        // Once the maximum is within reach, usage is unlimited.
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(100), Currency::EUR), AFFORDABLE_UNLIMITED);
        assert_eq!(affordable(&r, &base(12), 0, MoneyMinor(0), Currency::EUR), AFFORDABLE_UNLIMITED);
    }

    #[test]
    fn weekend_band() {
        let r = weekend(data(), "0.005");
        r.check().unwrap();
        assert_eq!(eur(&r, &usage(&[0, 10 << 20])), 5);
        assert_eq!(eur(&r, &usage(&[10 << 20, 10 << 20])), 15);
        // 0.5 MiB weekday + 0.5 MiB weekend = 0.0075 → one cent, rounded once.
        assert_eq!(eur(&r, &usage(&[1 << 19, 1 << 19])), 1);
        assert_eq!(affordable(&r, &usage(&[0, 0]), 1, MoneyMinor(5), Currency::EUR), 10 << 20);
        assert_eq!(affordable(&r, &usage(&[0, 0]), 0, MoneyMinor(5), Currency::EUR), 5 << 20);
    }

    #[test]
    fn first_block_across_bands() {
        // 60/1 voice with a cheaper weekend band: a call over the weekend boundary bills one first
        // block, on the segment where it costs most.
        let r = weekend(voice(), "0.02");
        assert_eq!(eur(&r, &usage(&[10, 0])), 15);
        assert_eq!(eur(&r, &usage(&[0, 10])), 12);
        // 10 s weekday + 10 s weekend: 0.10 + 0.05 × 60/60 + 0.02 × 10/60 = 0.1533… → 0.16.
        assert_eq!(eur(&r, &usage(&[10, 10])), 16);
        // Adding cheap weekday seconds to a weekend call never lowers the charge (monotone).
        assert!(eur(&r, &usage(&[0, 10])) <= eur(&r, &usage(&[1, 10])));
        // With a dearer band the block stays on it: 10 s at 0.10/min cost 0.10 + 0.10; one more
        // second at the cheaper base price must not move the block there (that would be 0.17).
        let peak = weekend(voice(), "0.10");
        assert_eq!(eur(&peak, &usage(&[0, 10])), 20);
        // 0.10 + 0.05/60 + 0.10 × 60/60 = 0.2008… → 0.21.
        assert_eq!(eur(&peak, &usage(&[1, 10])), 21);
    }

    #[test]
    fn affordable_voice() {
        let r = voice();
        let eur = Currency::EUR;
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(14), eur), 0, "connect + first block = 0.15");
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(15), eur), 60);
        // 1.00 EUR: 0.10 connect, then 0.90 buys 18 minutes.
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(100), eur), 1080);
        // Inside the first minute the rest of it is already paid.
        assert_eq!(affordable(&r, &base(10), 0, MoneyMinor(0), eur), 50);
        assert_eq!(affordable(&r, &base(61), 0, MoneyMinor(0), eur), 11, "0.16 pays up to 72 s");
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(-5), eur), 0);
    }

    #[test]
    fn affordable_data() {
        let r = data();
        let eur = Currency::EUR;
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(10), eur), 10 << 20);
        assert_eq!(affordable(&r, &base(0), 0, MoneyMinor(5000), eur), 5000 << 20);
        assert_eq!(affordable(&r, &base(1), 0, MoneyMinor(0), eur), (1 << 20) - 1);
        let free = Rate { price: Decimal::ZERO, ..data() };
        assert_eq!(affordable(&free, &base(0), 0, MoneyMinor(0), eur), AFFORDABLE_UNLIMITED);
        let free_with_fee = Rate { connect_fee: d("0.10"), ..free };
        assert_eq!(affordable(&free_with_fee, &base(0), 0, MoneyMinor(9), eur), 0);
        assert_eq!(affordable(&free_with_fee, &base(0), 0, MoneyMinor(10), eur), AFFORDABLE_UNLIMITED);
    }

    #[test]
    #[should_panic(expected = "not a band of this rate")]
    fn affordable_rejects_an_unknown_band() {
        affordable(&data(), &base(0), 1, MoneyMinor(1), Currency::EUR);
    }

    #[test]
    fn huge_usage_saturates_instead_of_wrapping() {
        let r = Rate { price: Decimal::from(PRICE_MAX), per: 1, ..sms() };
        r.check().unwrap();
        let all = CumulativeUsage([u64::MAX; SLOTS]);
        assert_eq!(charge(&r, &all, Currency::KWD), MoneyMinor(i64::MAX));
        // i64::MAX thousandths of a KWD buy 9 223 372 events at 10⁹ KWD each.
        assert_eq!(affordable(&r, &all, 0, MoneyMinor(i64::MAX), Currency::KWD), 9_223_372);
    }

    #[test]
    fn out_of_contract_rates_do_not_panic() {
        let r = Rate { price: d("0.0000000000001"), per: 0, increment: 0, first_increment: 0, ..data() };
        assert!(r.check().is_err());
        assert_eq!(eur(&r, &base(5)), 1, "13 decimals round up to 10⁻⁹ per unit");
        let negative = Rate { price: d("-1"), ..sms() };
        assert_eq!(eur(&negative, &base(5)), 0);
    }

    #[test]
    fn check_reports_each_problem() {
        use RateError as E;
        let err = |r: Rate| r.check().unwrap_err();
        assert_eq!(
            err(Rate { price: d("-1"), ..sms() }),
            E::Negative { field: RateField::Price, value: d("-1") }
        );
        assert!(matches!(err(Rate { price: d("0.0000000001"), ..sms() }), E::TooPrecise { .. }));
        assert!(matches!(err(Rate { connect_fee: d("1000000001"), ..sms() }), E::TooLarge { .. }));
        assert_eq!(err(Rate { per: 0, ..sms() }), E::PerZero);
        assert_eq!(err(Rate { increment: 0, ..sms() }), E::IncrementZero);
        assert!(matches!(
            err(Rate { first_increment: 30, ..rate(UnitKind::Time, "1", 60, 60) }),
            E::FirstIncrementBelowIncrement { .. }
        ));
        assert!(matches!(
            err(Rate { min_charge: Some(d("2")), max_charge: Some(d("1")), ..sms() }),
            E::MinAboveMax { .. }
        ));
        let band = |days, from_minute, to_minute| Band { days, from_minute, to_minute, price: d("1") };
        assert!(matches!(err(Rate { bands: vec![band(0, 0, 60)], ..sms() }), E::BandDays { band: 0, .. }));
        assert!(matches!(err(Rate { bands: vec![band(1, 60, 60)], ..sms() }), E::BandTimes { band: 0, .. }));
        assert!(matches!(err(Rate { bands: vec![band(1, 0, 1441)], ..sms() }), E::BandTimes { .. }));
        assert_eq!(
            err(Rate { bands: vec![band(0b11, 0, 60), band(0b10, 59, 120)], ..sms() }),
            E::BandsOverlap { band: 1, other: 0 }
        );
        Rate { bands: vec![band(0b11, 0, 60), band(0b10, 60, 120), band(0b100, 0, 1440)], ..sms() }
            .check()
            .unwrap();
        assert!(matches!(err(Rate { bands: vec![band(1, 0, 1); 5], ..sms() }), E::TooManyBands { count: 5 }));
        assert_eq!(err(Rate { price: d("-1"), ..sms() }).to_string(), "price \"-1\" must be ≥ 0",);
    }
}
