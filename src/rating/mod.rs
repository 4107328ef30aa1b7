//! Rating: price plans → money, as pure functions (no I/O, no clock, no state).
//!
//! The names and signatures of [`charge`], [`affordable`], [`band_at`], [`next_band_change`]
//! and the types below are a contract that `ledger` and `cc` code against; this module owns
//! only the arithmetic. It may use `limits`; it must not touch sessions, balances, sockets or
//! the clock (time arrives as `unix_secs`).
//!
//! # Charging
//! A [`Rate`] prices one service. Usage is always rated *cumulatively* (per session and rating
//! group, split by time band in a [`CumulativeUsage`]), and a debit for an update is
//! `charge(cumulative after) − charge(cumulative before)`. So k updates cost exactly what one
//! update with their sum costs, and the deltas add up to the charge of the total, to the minor
//! unit: rounding never accumulates.
//!
//! ```text
//! charge = 0                                                   if all usage is 0
//!        = ceil_minor( clamp( connect_fee
//!                             + Σ_b price_b × billed_b / per
//!                             + first-block top-up ,
//!                             min_charge, max_charge ) )       otherwise
//! ```
//!
//! # Rounding (one rule per step)
//! 1. **Amounts in the rate** (prices, connect fee, min/max charge) are used exactly. They must
//!    have at most [`PRICE_SCALE_MAX`] (9) decimal places and be at most [`PRICE_MAX`]
//!    ([`Rate::check`]); the arithmetic is in integers of 10⁻⁹ currency units. (A rate that
//!    skipped the check has extra decimals rounded up, and negative amounts read as 0.)
//! 2. **Billed units**: each band's usage is rounded **up** to a multiple of `increment`.
//! 3. **First block**: the first billed block of the session is at least `first_increment` (60/1
//!    voice bills a 1-second call as 60 s). It applies to one band segment with usage; when only
//!    one band has usage (the usual case) that is the segment. When several have, it goes to the
//!    segment where topping its billed units up to `first_increment` costs the **most**. (The
//!    brief proposed "the lowest band index with usage"; that rule is not monotone: with a
//!    cheap base price and a dear band 1, adding 1 s of base usage to a 10 s band-1 call would
//!    move the 60 s block to the cheap segment and *lower* the charge, so a later update would be
//!    a refund. The most-expensive rule is the smallest monotone one that agrees with it on
//!    single-band usage.)
//! 4. **Sum**: connect fee (once, with any usage) plus Σ price × billed / per plus the top-up, as
//!    an exact fraction: no intermediate rounding.
//! 5. **Clamp** to `[min_charge, max_charge]` (only when there is usage).
//! 6. **Round once, up** (toward +∞, i.e. away from zero: charges are never negative) to the
//!    currency's minor unit. The result saturates at `i64::MAX` minor units.
//!
//! Other conversions: [`MoneyMinor::from_decimal_up`] rounds toward +∞ (for a negative amount
//! that is toward zero); catalog discounts round toward +∞ at 6 decimal places
//! (`crate::catalog`).
//!
//! # Affordable units
//! [`affordable`] inverts `charge`: the largest number of extra units in one band that the
//! available money pays for, solved from the prices (not by scanning) and checked against
//! `charge` itself, so it is exact. It is what a grant is capped to.
//!
//! # Time bands
//! [`band_at`] picks the first band whose days and `[from, to)` minutes contain the local time
//! (UTC + the plan's fixed offset; no DST). [`next_band_change`] gives the next instant the band
//! changes, for Tariff-Time-Change.

mod bands;
mod charge;
mod money;

use std::fmt;

use rust_decimal::Decimal;

pub use bands::{band_at, next_band_change};
pub use charge::{affordable, charge, Pricer, AFFORDABLE_UNLIMITED, PRICE_MAX, PRICE_SCALE_MAX};
pub use money::{format_money, CURRENCY_EXPONENT_MAX};

/// An ISO 4217 currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Currency {
    /// Alphabetic code, e.g. "EUR".
    pub code: &'static str,
    /// Numeric code, e.g. 978 (what Currency-Code, RFC 4006 §8.11, carries).
    pub numeric: u16,
    /// Minor-unit exponent: 2 for EUR (cents), 0 for JPY, 3 for KWD.
    pub exponent: u8,
}

/// An amount in minor units of an account's currency (cents for EUR). All balances,
/// reservations and debits are integers of this; Decimal is used only inside rating.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct MoneyMinor(pub i64);

/// What a service is measured in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum UnitKind {
    /// Seconds (CC-Time).
    Time,
    /// Octets (CC-Total-Octets, or input + output).
    Octets,
    /// Events / service-specific units (CC-Service-Specific-Units).
    Events,
}

/// Most time bands one rate may have.
pub const BANDS_PER_RATE_MAX: usize = 4;

/// Cumulative usage of one rating group in one session, split by band (index 0: the base
/// price; i + 1: `bands[i]`). Charging always rates the cumulative usage, so k updates cost
/// exactly what one update with the sum costs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CumulativeUsage(pub [u64; BANDS_PER_RATE_MAX + 1]);

/// A price for one service.
#[derive(Clone, PartialEq, Debug)]
pub struct Rate {
    pub unit: UnitKind,
    /// Money per `per` units (in the plan's currency).
    pub price: Decimal,
    pub per: u64,
    /// Usage is billed in multiples of this (rounded up).
    pub increment: u64,
    /// The first billed block (e.g. 60 for "60/1" voice billing); ≥ `increment`.
    pub first_increment: u64,
    /// Charged once per session and rating group, with the first usage.
    pub connect_fee: Decimal,
    pub min_charge: Option<Decimal>,
    pub max_charge: Option<Decimal>,
    pub bands: Vec<Band>,
}

/// A time-of-day / day-of-week price.
#[derive(Clone, PartialEq, Debug)]
pub struct Band {
    /// Bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Minutes after local midnight, `from < to <= 1440`.
    pub from_minute: u16,
    pub to_minute: u16,
    pub price: Decimal,
}

impl CumulativeUsage {
    /// Usage in every band together.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, &units| sum.saturating_add(units))
    }

    /// This usage plus `units` in `band` (saturating).
    pub fn plus(mut self, band: usize, units: u64) -> Self {
        self.0[band] = self.0[band].saturating_add(units);
        self
    }
}

/// An amount field of a [`Rate`], for [`RateError`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RateField {
    Price,
    ConnectFee,
    MinCharge,
    MaxCharge,
    /// The price of `bands[i]`.
    BandPrice(usize),
}

impl fmt::Display for RateField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Price => f.write_str("price"),
            Self::ConnectFee => f.write_str("connect_fee"),
            Self::MinCharge => f.write_str("min_charge"),
            Self::MaxCharge => f.write_str("max_charge"),
            Self::BandPrice(i) => write!(f, "bands[{i}].price"),
        }
    }
}

/// Why a [`Rate`] cannot be charged exactly ([`Rate::check`]). The catalog adds which plan and
/// service it is.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum RateError {
    #[error("{field} \"{value}\" must be ≥ 0")]
    Negative { field: RateField, value: Decimal },
    #[error("{field} \"{value}\" has more than {PRICE_SCALE_MAX} decimal places")]
    TooPrecise { field: RateField, value: Decimal },
    #[error("{field} \"{value}\" is above the limit of {PRICE_MAX}")]
    TooLarge { field: RateField, value: Decimal },
    #[error("min_charge \"{min}\" is above max_charge \"{max}\"")]
    MinAboveMax { min: Decimal, max: Decimal },
    #[error("per must be ≥ 1")]
    PerZero,
    #[error("increment must be ≥ 1")]
    IncrementZero,
    #[error("first_increment {first_increment} must be ≥ increment {increment}")]
    FirstIncrementBelowIncrement { first_increment: u64, increment: u64 },
    #[error("{count} bands; at most {BANDS_PER_RATE_MAX} are allowed")]
    TooManyBands { count: usize },
    #[error("bands[{band}]: days {days:#04x} must name at least one of mon..sun")]
    BandDays { band: usize, days: u8 },
    #[error("bands[{band}]: from {} must be before to {} (at most 24:00)", hhmm(*from), hhmm(*to))]
    BandTimes { band: usize, from: u16, to: u16 },
    #[error("bands[{band}] overlaps bands[{other}] (same day and time)")]
    BandsOverlap { band: usize, other: usize },
}

/// Minutes after midnight as "HH:MM" (1440 is "24:00").
fn hhmm(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}
