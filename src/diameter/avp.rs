//! AVP headers and zero-copy AVP views (RFC 6733 §4.1).
//!
//! An [`AvpRef`] borrows its bytes from the message buffer: decoding a message allocates
//! nothing. Iteration stops at the first malformed AVP, because after a bad length the rest of
//! the buffer cannot be trusted; the error says which AVP and why.

use super::codes::{AvpCode, VendorId};
use crate::limits::{AVP_HEADER_SIZE_BYTES, AVP_HEADER_VENDOR_SIZE_BYTES};

/// AVP flags (RFC 6733 §4.1): V(endor-specific), M(andatory), P (deprecated end-to-end
/// security); the other five bits are reserved.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AvpFlags(pub u8);

impl AvpFlags {
    pub const VENDOR: u8 = 0x80;
    pub const MANDATORY: u8 = 0x40;
    pub const PROTECTED: u8 = 0x20;

    pub fn is_vendor(self) -> bool {
        self.0 & Self::VENDOR != 0
    }
    pub fn is_mandatory(self) -> bool {
        self.0 & Self::MANDATORY != 0
    }
}

impl std::fmt::Debug for AvpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = if self.is_vendor() { 'V' } else { '-' };
        let m = if self.is_mandatory() { 'M' } else { '-' };
        let p = if self.0 & Self::PROTECTED != 0 { 'P' } else { '-' };
        write!(f, "{v}{m}{p}")
    }
}

/// A view of one AVP inside a message buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AvpRef<'a> {
    pub code: AvpCode,
    pub flags: AvpFlags,
    pub vendor: VendorId,
    /// The data field, without header or padding.
    pub data: &'a [u8],
    /// The whole AVP as it stands on the wire, header included and padding excluded; this is
    /// what goes into Failed-AVP.
    pub raw: &'a [u8],
}

impl<'a> AvpRef<'a> {
    /// Iterates the members of a Grouped AVP.
    pub fn members(&self) -> AvpIter<'a> {
        AvpIter::new(self.data)
    }
}

/// Why an AVP could not be framed inside its parent.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AvpFrameError {
    /// Fewer bytes left than an AVP header needs.
    #[error("{remaining} trailing bytes cannot hold an AVP header")]
    TruncatedHeader { remaining: usize },
    /// The AVP Length is smaller than its own header.
    #[error("AVP {code} has length {length}, shorter than its header")]
    LengthTooShort { code: AvpCode, vendor: VendorId, length: u32, offset: usize },
    /// The AVP Length (or its padding) runs past the end of the enclosing message or group.
    #[error("AVP {code} has length {length}, past the end of its container")]
    Overrun { code: AvpCode, vendor: VendorId, length: u32, offset: usize },
}

/// Iterator over consecutive AVPs in a buffer (a message body or a Grouped AVP's data).
#[derive(Clone, Debug)]
pub struct AvpIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> AvpIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, failed: false }
    }

    /// Byte offset of the next AVP inside the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for AvpIter<'a> {
    type Item = Result<AvpRef<'a>, AvpFrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        // The 8 fixed header bytes, then the Vendor-ID when the V bit is set (RFC 6733 §4.1).
        // Read by hand: this runs for every AVP of every message, and a measured nom version
        // cost twice the instructions for the same checks.
        let Some(&[c0, c1, c2, c3, flags, l0, l1, l2]) = rest.first_chunk::<8>() else {
            self.failed = true;
            return Some(Err(AvpFrameError::TruncatedHeader { remaining: rest.len() }));
        };
        let vendor_flag = flags & AvpFlags::VENDOR != 0;
        let vendor = if vendor_flag {
            match rest.get(8..12) {
                Some(&[v0, v1, v2, v3]) => u32::from_be_bytes([v0, v1, v2, v3]),
                _ => {
                    self.failed = true;
                    return Some(Err(AvpFrameError::TruncatedHeader { remaining: rest.len() }));
                }
            }
        } else {
            0
        };
        let h_code = u32::from_be_bytes([c0, c1, c2, c3]);
        let h_length = u32::from_be_bytes([0, l0, l1, l2]);
        let code = AvpCode(h_code);
        let vendor = VendorId(vendor);
        let header_len = if vendor_flag { AVP_HEADER_VENDOR_SIZE_BYTES } else { AVP_HEADER_SIZE_BYTES };
        let length = h_length as usize;
        if length < header_len {
            self.failed = true;
            return Some(Err(AvpFrameError::LengthTooShort {
                code,
                vendor,
                length: h_length,
                offset: self.pos,
            }));
        }
        // RFC 6733 §4.1: the AVP Length excludes padding, but the next AVP starts at the next
        // 4-byte boundary; padding that runs past the container is as wrong as data that does.
        let padded = (length + 3) & !3;
        if padded > rest.len() {
            self.failed = true;
            return Some(Err(AvpFrameError::Overrun { code, vendor, length: h_length, offset: self.pos }));
        }
        let avp = AvpRef {
            code,
            flags: AvpFlags(flags),
            vendor,
            data: &rest[header_len..length],
            raw: &rest[..length],
        };
        self.pos += padded;
        Some(Ok(avp))
    }
}

/// Header size for the given flags.
pub fn avp_header_len(flags: AvpFlags) -> usize {
    if flags.is_vendor() {
        AVP_HEADER_VENDOR_SIZE_BYTES
    } else {
        AVP_HEADER_SIZE_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_padded_avps() {
        // Session-Id "abcde" (length 13, 3 bytes padding), then a vendor AVP Unsigned32.
        let mut buf = vec![0, 0, 1, 7, 0x40, 0, 0, 13];
        buf.extend_from_slice(b"abcde\0\0\0");
        buf.extend_from_slice(&[0, 0, 3, 100, 0xc0, 0, 0, 16, 0, 0, 0x28, 0xaf, 0, 0, 0, 9]);
        let avps: Vec<_> = AvpIter::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(avps.len(), 2);
        assert_eq!(avps[0].code, AvpCode(263));
        assert_eq!(avps[0].data, b"abcde");
        assert_eq!(avps[1].vendor, VendorId(10415));
        assert_eq!(avps[1].data, &[0, 0, 0, 9]);
    }

    #[test]
    fn rejects_overrun_and_short() {
        let buf = [0, 0, 1, 7, 0x40, 0, 0, 13, b'a', b'b', b'c', b'd', b'e'];
        let first = AvpIter::new(&buf).next().unwrap();
        assert!(matches!(first, Err(AvpFrameError::Overrun { length: 13, .. })));
        let buf = [0, 0, 1, 7, 0x40, 0, 0, 7];
        let first = AvpIter::new(&buf).next().unwrap();
        assert!(matches!(first, Err(AvpFrameError::LengthTooShort { length: 7, .. })));
        let buf = [0, 0, 1];
        let first = AvpIter::new(&buf).next().unwrap();
        assert!(matches!(first, Err(AvpFrameError::TruncatedHeader { remaining: 3 })));
    }
}
