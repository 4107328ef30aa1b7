//! RFC 6733 §4.2–§4.3 data types: how an AVP's data field is read and checked.
//!
//! Decoding borrows: strings are `&str` views into the message, octet strings are slices.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The data type of an AVP, as named in dictionaries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AvpType {
    OctetString,
    Integer32,
    Integer64,
    Unsigned32,
    Unsigned64,
    Float32,
    Float64,
    Grouped,
    Address,
    Time,
    Utf8String,
    DiameterIdentity,
    DiameterUri,
    Enumerated,
    IpFilterRule,
    QosFilterRule,
}

impl AvpType {
    pub const ALL: [Self; 16] = [
        Self::OctetString,
        Self::Integer32,
        Self::Integer64,
        Self::Unsigned32,
        Self::Unsigned64,
        Self::Float32,
        Self::Float64,
        Self::Grouped,
        Self::Address,
        Self::Time,
        Self::Utf8String,
        Self::DiameterIdentity,
        Self::DiameterUri,
        Self::Enumerated,
        Self::IpFilterRule,
        Self::QosFilterRule,
    ];

    /// The name used in dictionary files (RFC 6733 spelling).
    pub fn name(self) -> &'static str {
        match self {
            Self::OctetString => "OctetString",
            Self::Integer32 => "Integer32",
            Self::Integer64 => "Integer64",
            Self::Unsigned32 => "Unsigned32",
            Self::Unsigned64 => "Unsigned64",
            Self::Float32 => "Float32",
            Self::Float64 => "Float64",
            Self::Grouped => "Grouped",
            Self::Address => "Address",
            Self::Time => "Time",
            Self::Utf8String => "UTF8String",
            Self::DiameterIdentity => "DiameterIdentity",
            Self::DiameterUri => "DiameterURI",
            Self::Enumerated => "Enumerated",
            Self::IpFilterRule => "IPFilterRule",
            Self::QosFilterRule => "QoSFilterRule",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The fixed data length of the type, if it has one.
    pub fn fixed_len(self) -> Option<usize> {
        match self {
            Self::Integer32 | Self::Unsigned32 | Self::Float32 | Self::Time | Self::Enumerated => Some(4),
            Self::Integer64 | Self::Unsigned64 | Self::Float64 => Some(8),
            _ => None,
        }
    }

    /// The smallest valid data field, used to build the zero-filled example AVP that RFC 6733
    /// §7.5 asks for in Failed-AVP when an AVP is missing.
    pub fn min_len(self) -> usize {
        match self {
            Self::Address => 6,
            Self::DiameterIdentity | Self::DiameterUri => 1,
            t => t.fixed_len().unwrap_or(0),
        }
    }
}

/// IANA address family numbers used by the Address type (RFC 6733 §4.3.1).
pub const ADDRESS_FAMILY_IPV4: u16 = 1;
pub const ADDRESS_FAMILY_IPV6: u16 = 2;

/// A decoded Address: IP addresses are typed, other families (E.164 = 8, …) stay raw.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Address<'a> {
    Ip(IpAddr),
    Other { family: u16, bytes: &'a [u8] },
}

/// A decoded AVP value.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Value<'a> {
    OctetString(&'a [u8]),
    Integer32(i32),
    Integer64(i64),
    Unsigned32(u32),
    Unsigned64(u64),
    Float32(f32),
    Float64(f64),
    /// The members, still encoded; iterate them with `AvpIter`.
    Grouped(&'a [u8]),
    Address(Address<'a>),
    /// Seconds since 1900-01-01 00:00 UTC (NTP era 0), as on the wire (RFC 6733 §4.3.1).
    Time(u32),
    Utf8String(&'a str),
    DiameterIdentity(&'a str),
    DiameterUri(&'a str),
    Enumerated(i32),
    IpFilterRule(&'a str),
    QosFilterRule(&'a str),
}

/// Why a data field does not fit its type. `Length` maps to 5014, `Value` to 5004.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ValueError {
    #[error("data length {actual} is wrong for {ty:?}")]
    Length { ty: AvpType, actual: usize },
    #[error("data is not a valid {ty:?}")]
    Value { ty: AvpType },
}

fn be4(d: &[u8]) -> [u8; 4] {
    [d[0], d[1], d[2], d[3]]
}

fn be8(d: &[u8]) -> [u8; 8] {
    [d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// Decodes `data` as `ty`, checking length and content.
pub fn decode_value(ty: AvpType, data: &[u8]) -> Result<Value<'_>, ValueError> {
    if let Some(n) = ty.fixed_len() {
        if data.len() != n {
            return Err(ValueError::Length { ty, actual: data.len() });
        }
    }
    let text = |d| utf8(d).map_err(|_| ValueError::Value { ty });
    Ok(match ty {
        AvpType::OctetString => Value::OctetString(data),
        AvpType::Integer32 => Value::Integer32(i32::from_be_bytes(be4(data))),
        AvpType::Integer64 => Value::Integer64(i64::from_be_bytes(be8(data))),
        AvpType::Unsigned32 => Value::Unsigned32(u32::from_be_bytes(be4(data))),
        AvpType::Unsigned64 => Value::Unsigned64(u64::from_be_bytes(be8(data))),
        AvpType::Float32 => Value::Float32(f32::from_be_bytes(be4(data))),
        AvpType::Float64 => Value::Float64(f64::from_be_bytes(be8(data))),
        AvpType::Time => Value::Time(u32::from_be_bytes(be4(data))),
        AvpType::Enumerated => Value::Enumerated(i32::from_be_bytes(be4(data))),
        AvpType::Grouped => Value::Grouped(data),
        AvpType::Address => Value::Address(decode_address(data)?),
        AvpType::Utf8String => Value::Utf8String(text(data)?),
        AvpType::DiameterIdentity => Value::DiameterIdentity(identity(data)?),
        AvpType::DiameterUri => Value::DiameterUri(uri(data)?),
        AvpType::IpFilterRule => Value::IpFilterRule(text(data)?),
        AvpType::QosFilterRule => Value::QosFilterRule(text(data)?),
    })
}

/// Reads `data` as UTF-8 text, as `std::str::from_utf8` does. Nearly every string on the wire
/// (Session-Id, hosts, realms, subscriber numbers) is ASCII, and the word-at-a-time ASCII test
/// costs a fraction of full UTF-8 validation on such short strings; this runs for several
/// strings of every request.
#[inline]
pub fn utf8(data: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if data.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8 (`is_ascii` checked all of them).
        Ok(unsafe { std::str::from_utf8_unchecked(data) })
    } else {
        std::str::from_utf8(data)
    }
}

/// Checks that `data` is a valid `ty` without building the value: the validation hot path.
/// Agrees with `decode_value` on every input (a unit test says so).
#[inline]
pub fn check_value(ty: AvpType, data: &[u8]) -> Result<(), ValueError> {
    match ty {
        // Most strings on the wire are ASCII; the word-at-a-time ASCII test is cheaper than
        // full UTF-8 validation for short strings, which is all of them.
        AvpType::Utf8String | AvpType::IpFilterRule | AvpType::QosFilterRule => {
            if data.is_ascii() || std::str::from_utf8(data).is_ok() {
                Ok(())
            } else {
                Err(ValueError::Value { ty })
            }
        }
        AvpType::OctetString | AvpType::Grouped => Ok(()),
        // Every bit pattern of the right length is a valid number, time or enumeration value,
        // so the length is the whole check.
        AvpType::Integer32
        | AvpType::Integer64
        | AvpType::Unsigned32
        | AvpType::Unsigned64
        | AvpType::Float32
        | AvpType::Float64
        | AvpType::Time
        | AvpType::Enumerated => match ty.fixed_len() {
            Some(n) if data.len() != n => Err(ValueError::Length { ty, actual: data.len() }),
            _ => Ok(()),
        },
        AvpType::DiameterIdentity => {
            if is_identity(data) {
                Ok(())
            } else {
                Err(ValueError::Value { ty })
            }
        }
        _ => decode_value(ty, data).map(|_| ()),
    }
}

fn decode_address(data: &[u8]) -> Result<Address<'_>, ValueError> {
    let ty = AvpType::Address;
    if data.len() < 2 {
        return Err(ValueError::Length { ty, actual: data.len() });
    }
    let family = u16::from_be_bytes([data[0], data[1]]);
    let bytes = &data[2..];
    match family {
        ADDRESS_FAMILY_IPV4 => {
            let b: [u8; 4] = bytes.try_into().map_err(|_| ValueError::Length { ty, actual: data.len() })?;
            Ok(Address::Ip(IpAddr::V4(Ipv4Addr::from(b))))
        }
        ADDRESS_FAMILY_IPV6 => {
            let b: [u8; 16] = bytes.try_into().map_err(|_| ValueError::Length { ty, actual: data.len() })?;
            Ok(Address::Ip(IpAddr::V6(Ipv6Addr::from(b))))
        }
        _ => Ok(Address::Other { family, bytes }),
    }
}

/// RFC 6733 §4.3.1 DiameterIdentity: an FQDN or realm, ASCII, non-empty.
fn identity(data: &[u8]) -> Result<&str, ValueError> {
    let ty = AvpType::DiameterIdentity;
    if !is_identity(data) {
        return Err(ValueError::Value { ty });
    }
    utf8(data).map_err(|_| ValueError::Value { ty })
}

#[inline]
fn is_identity(data: &[u8]) -> bool {
    !data.is_empty()
        && data.len() <= crate::limits::DIAMETER_IDENTITY_MAX_BYTES
        && data.iter().all(u8::is_ascii_graphic)
}

/// RFC 6733 §4.3.1 DiameterURI: "aaa://" or "aaas://" followed by an FQDN.
fn uri(data: &[u8]) -> Result<&str, ValueError> {
    let ty = AvpType::DiameterUri;
    let s = utf8(data).map_err(|_| ValueError::Value { ty })?;
    let rest = s.strip_prefix("aaa://").or_else(|| s.strip_prefix("aaas://"));
    match rest {
        Some(r) if !r.is_empty() && r.is_ascii() => Ok(s),
        _ => Err(ValueError::Value { ty }),
    }
}

/// Encodes an IP address in the Address format.
pub fn encode_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            out.extend_from_slice(&ADDRESS_FAMILY_IPV4.to_be_bytes());
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.extend_from_slice(&ADDRESS_FAMILY_IPV6.to_be_bytes());
            out.extend_from_slice(&v6.octets());
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OctetString(b) => {
                if !b.is_empty() && b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
                    write!(f, "{:?}", String::from_utf8_lossy(b))
                } else {
                    f.write_str("0x")?;
                    b.iter().try_for_each(|c| write!(f, "{c:02x}"))
                }
            }
            Self::Integer32(v) => write!(f, "{v}"),
            Self::Integer64(v) => write!(f, "{v}"),
            Self::Unsigned32(v) => write!(f, "{v}"),
            Self::Unsigned64(v) => write!(f, "{v}"),
            Self::Float32(v) => write!(f, "{v}"),
            Self::Float64(v) => write!(f, "{v}"),
            Self::Grouped(_) => f.write_str("{…}"),
            Self::Address(Address::Ip(ip)) => write!(f, "{ip}"),
            Self::Address(Address::Other { family, bytes }) => {
                write!(f, "family {family} 0x")?;
                bytes.iter().try_for_each(|c| write!(f, "{c:02x}"))
            }
            Self::Time(v) => write!(f, "ntp:{v}"),
            Self::Enumerated(v) => write!(f, "{v}"),
            Self::Utf8String(s)
            | Self::DiameterIdentity(s)
            | Self::DiameterUri(s)
            | Self::IpFilterRule(s)
            | Self::QosFilterRule(s) => write!(f, "{s:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_lengths_are_checked() {
        assert_eq!(decode_value(AvpType::Unsigned32, &[0, 0, 1, 0]), Ok(Value::Unsigned32(256)));
        assert_eq!(
            decode_value(AvpType::Unsigned32, &[0, 0, 1]),
            Err(ValueError::Length { ty: AvpType::Unsigned32, actual: 3 })
        );
        assert_eq!(decode_value(AvpType::Integer64, &(-5i64).to_be_bytes()), Ok(Value::Integer64(-5)));
    }

    #[test]
    fn addresses() {
        let v = decode_value(AvpType::Address, &[0, 1, 127, 0, 0, 1]).unwrap();
        assert_eq!(v, Value::Address(Address::Ip("127.0.0.1".parse().unwrap())));
        assert!(decode_value(AvpType::Address, &[0, 1, 127, 0, 0]).is_err());
        let e164 = decode_value(AvpType::Address, &[0, 8, b'4', b'9']).unwrap();
        assert_eq!(e164, Value::Address(Address::Other { family: 8, bytes: b"49" }));
    }

    #[test]
    fn check_agrees_with_decode() {
        let samples: [&[u8]; 8] = [
            b"",
            b"a",
            b"abc\xff",
            "é".as_bytes(),
            &[0, 1, 127, 0, 0, 1],
            &[0, 0, 0, 1],
            &[0; 8],
            b"aaa://x",
        ];
        for ty in AvpType::ALL {
            for d in samples {
                assert_eq!(check_value(ty, d).is_ok(), decode_value(ty, d).is_ok(), "{ty:?} {d:?}");
            }
        }
    }

    #[test]
    fn utf8_fast_path_agrees_with_std() {
        let samples: [&[u8]; 8] = [
            b"",
            b"pgw1.test.example;1700000000;1",
            b"abc\xff",
            "é".as_bytes(),
            "32251@3gpp.org\u{7f}".as_bytes(),
            b"\x80",
            &[0xe2, 0x82],
            "naïve-session-id-longer-than-a-word".as_bytes(),
        ];
        for d in samples {
            assert_eq!(utf8(d), std::str::from_utf8(d), "{d:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn utf8_agrees_with_std_on_any_bytes(d in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(utf8(&d), std::str::from_utf8(&d));
        }
    }

    #[test]
    fn strings() {
        assert!(decode_value(AvpType::Utf8String, &[0xff]).is_err());
        assert!(decode_value(AvpType::DiameterIdentity, b"").is_err());
        assert!(decode_value(AvpType::DiameterIdentity, b"a b").is_err());
        assert!(decode_value(AvpType::DiameterUri, b"aaa://host.example:3868").is_ok());
        assert!(decode_value(AvpType::DiameterUri, b"http://x").is_err());
    }
}
