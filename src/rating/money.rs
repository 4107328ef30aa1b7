//! ISO 4217 currencies, and conversions between `MoneyMinor` and `Decimal`.

use std::fmt;

use rust_decimal::Decimal;

use super::{Currency, MoneyMinor};

/// The largest minor-unit exponent we support (ISO 4217 has none above 4; the table has 3).
/// Rating works in units of 10⁻⁹ (`PRICE_SCALE_MAX`), so a currency finer than that could not
/// be charged exactly.
pub const CURRENCY_EXPONENT_MAX: u8 = 9;

macro_rules! currencies {
    ($($name:ident = $code:literal, $numeric:literal, $exponent:literal;)*) => {
        impl Currency {
            $(
                #[doc = concat!("ISO 4217 ", $code, " (", stringify!($numeric), "), ",
                    stringify!($exponent), " minor-unit digits.")]
                pub const $name: Self = Self { code: $code, numeric: $numeric, exponent: $exponent };
            )*

            /// Every currency gyro knows, in code order.
            pub const ALL: &'static [Self] = &[$(Self::$name),*];
        }
    };
}

// Source: ISO 4217 list one (numeric code and minor unit), as published by SIX.
currencies! {
    AUD = "AUD", 36, 2;
    BHD = "BHD", 48, 3;
    BRL = "BRL", 986, 2;
    CAD = "CAD", 124, 2;
    CHF = "CHF", 756, 2;
    CLP = "CLP", 152, 0;
    CNY = "CNY", 156, 2;
    CZK = "CZK", 203, 2;
    DKK = "DKK", 208, 2;
    EUR = "EUR", 978, 2;
    GBP = "GBP", 826, 2;
    HKD = "HKD", 344, 2;
    HUF = "HUF", 348, 2;
    INR = "INR", 356, 2;
    ISK = "ISK", 352, 0;
    JOD = "JOD", 400, 3;
    JPY = "JPY", 392, 0;
    KRW = "KRW", 410, 0;
    KWD = "KWD", 414, 3;
    MXN = "MXN", 484, 2;
    NOK = "NOK", 578, 2;
    NZD = "NZD", 554, 2;
    OMR = "OMR", 512, 3;
    PLN = "PLN", 985, 2;
    RON = "RON", 946, 2;
    SEK = "SEK", 752, 2;
    SGD = "SGD", 702, 2;
    TND = "TND", 788, 3;
    TRY = "TRY", 949, 2;
    USD = "USD", 840, 2;
    ZAR = "ZAR", 710, 2;
}

impl Currency {
    /// Looks up an alphabetic code ("EUR"); ASCII case is ignored.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().find(|c| c.code.eq_ignore_ascii_case(code)).copied()
    }

    /// Looks up a numeric code (978), as carried by Currency-Code (RFC 4006 §8.11).
    pub fn from_numeric(numeric: u16) -> Option<Self> {
        Self::ALL.iter().find(|c| c.numeric == numeric).copied()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl MoneyMinor {
    /// The exact decimal amount: 1234 cents → 12.34.
    pub fn to_decimal(self, currency: Currency) -> Decimal {
        Decimal::new(self.0, exponent(currency))
    }

    /// Converts a decimal amount to minor units, rounding toward +∞ when it has more digits than
    /// the currency: 12.341 EUR → 1235, −12.349 EUR → −1234. For a positive amount that is "up,
    /// away from zero"; for a negative one it is toward zero, so the rule stays monotone and never
    /// makes a debt larger than written. Amounts beyond `i64` saturate.
    pub fn from_decimal_up(amount: Decimal, currency: Currency) -> Self {
        let exponent = exponent(currency);
        let (mantissa, scale) = (amount.mantissa(), amount.scale());
        let minor = if scale <= exponent {
            // |mantissa| < 2⁹⁶ and the factor ≤ 10⁹ < 2³⁰, so this cannot overflow i128.
            mantissa * 10i128.pow(exponent - scale)
        } else {
            let divisor = 10i128.pow((scale - exponent).min(38));
            mantissa.div_euclid(divisor) + i128::from(mantissa.rem_euclid(divisor) != 0)
        };
        Self(i64::try_from(minor).unwrap_or(if minor < 0 { i64::MIN } else { i64::MAX }))
    }

    /// True when `amount` is exactly a whole number of minor units (50.00 EUR yes, 50.001 no).
    pub fn fits(amount: Decimal, currency: Currency) -> bool {
        amount.normalize().scale() <= exponent(currency)
    }
}

/// The currency's exponent; a hand-made `Currency` above `CURRENCY_EXPONENT_MAX` is treated as
/// that maximum rather than overflowing (no ISO currency comes close).
pub(super) fn exponent(currency: Currency) -> u32 {
    u32::from(currency.exponent.min(CURRENCY_EXPONENT_MAX))
}

/// "12.34 EUR", "-0.05 EUR", "1234 JPY", "1.234 KWD".
pub fn format_money(amount: MoneyMinor, currency: Currency) -> String {
    let exponent = exponent(currency);
    let sign = if amount.0 < 0 { "-" } else { "" };
    let abs = amount.0.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs} {}", currency.code);
    }
    let unit = 10u64.pow(exponent.min(19));
    let width = exponent as usize;
    format!("{sign}{}.{:0width$} {}", abs / unit, abs % unit, currency.code)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn table_has_the_required_currencies() {
        let want = [
            ("EUR", 978, 2),
            ("USD", 840, 2),
            ("GBP", 826, 2),
            ("CHF", 756, 2),
            ("SEK", 752, 2),
            ("NOK", 578, 2),
            ("DKK", 208, 2),
            ("PLN", 985, 2),
            ("CZK", 203, 2),
            ("HUF", 348, 2),
            ("JPY", 392, 0),
            ("INR", 356, 2),
            ("BRL", 986, 2),
            ("ZAR", 710, 2),
            ("AUD", 36, 2),
            ("CAD", 124, 2),
            ("KWD", 414, 3),
            ("BHD", 48, 3),
        ];
        for (code, numeric, exponent) in want {
            let c = Currency::from_code(code).unwrap();
            assert_eq!((c.numeric, c.exponent), (numeric, exponent), "{code}");
            assert_eq!(Currency::from_numeric(numeric), Some(c));
        }
        assert_eq!(Currency::from_code("eur"), Some(Currency::EUR));
        assert_eq!(Currency::from_code("XXX"), None);
        assert_eq!(Currency::from_numeric(999), None);
    }

    #[test]
    fn table_is_consistent() {
        for (i, a) in Currency::ALL.iter().enumerate() {
            assert!(a.exponent <= CURRENCY_EXPONENT_MAX);
            assert_eq!(a.code.len(), 3);
            for b in &Currency::ALL[i + 1..] {
                assert!(a.code < b.code, "sorted and unique: {} {}", a.code, b.code);
                assert_ne!(a.numeric, b.numeric);
            }
        }
    }

    #[test]
    fn decimal_round_trip() {
        assert_eq!(MoneyMinor(1234).to_decimal(Currency::EUR), d("12.34"));
        assert_eq!(MoneyMinor(-5).to_decimal(Currency::EUR), d("-0.05"));
        assert_eq!(MoneyMinor(1234).to_decimal(Currency::JPY), d("1234"));
        assert_eq!(MoneyMinor(1234).to_decimal(Currency::KWD), d("1.234"));
        for m in [-1_000_001, -1, 0, 1, 99, 100, 12_345_678] {
            for c in [Currency::EUR, Currency::JPY, Currency::KWD] {
                assert_eq!(MoneyMinor::from_decimal_up(MoneyMinor(m).to_decimal(c), c), MoneyMinor(m));
            }
        }
    }

    #[test]
    fn from_decimal_rounds_toward_positive_infinity() {
        let eur = Currency::EUR;
        assert_eq!(MoneyMinor::from_decimal_up(d("50.00"), eur), MoneyMinor(5000));
        assert_eq!(MoneyMinor::from_decimal_up(d("50"), eur), MoneyMinor(5000));
        assert_eq!(MoneyMinor::from_decimal_up(d("12.341"), eur), MoneyMinor(1235));
        assert_eq!(MoneyMinor::from_decimal_up(d("12.3400001"), eur), MoneyMinor(1235));
        assert_eq!(MoneyMinor::from_decimal_up(d("-12.349"), eur), MoneyMinor(-1234));
        assert_eq!(MoneyMinor::from_decimal_up(d("0.001"), Currency::JPY), MoneyMinor(1));
        assert_eq!(MoneyMinor::from_decimal_up(d("1.0001"), Currency::KWD), MoneyMinor(1001));
        assert_eq!(MoneyMinor::from_decimal_up(Decimal::MAX, eur), MoneyMinor(i64::MAX));
        assert_eq!(MoneyMinor::from_decimal_up(Decimal::MIN, eur), MoneyMinor(i64::MIN));
        assert!(MoneyMinor::fits(d("50.10"), eur));
        assert!(MoneyMinor::fits(d("50.100"), eur));
        assert!(!MoneyMinor::fits(d("50.101"), eur));
        assert!(!MoneyMinor::fits(d("0.5"), Currency::JPY));
    }

    #[test]
    fn formats() {
        assert_eq!(format_money(MoneyMinor(1234), Currency::EUR), "12.34 EUR");
        assert_eq!(format_money(MoneyMinor(5), Currency::EUR), "0.05 EUR");
        assert_eq!(format_money(MoneyMinor(-5), Currency::EUR), "-0.05 EUR");
        assert_eq!(format_money(MoneyMinor(0), Currency::USD), "0.00 USD");
        assert_eq!(format_money(MoneyMinor(1234), Currency::JPY), "1234 JPY");
        assert_eq!(format_money(MoneyMinor(1234), Currency::KWD), "1.234 KWD");
        assert_eq!(format_money(MoneyMinor(i64::MIN), Currency::EUR), "-92233720368547758.08 EUR");
        assert_eq!(Currency::GBP.to_string(), "GBP");
    }
}
