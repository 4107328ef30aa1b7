//! A framed message as a zero-copy view.

use super::avp::{AvpIter, AvpRef};
use super::codes::AvpCode;
use super::header::Header;
use crate::limits::HEADER_SIZE_BYTES;

/// A whole Diameter message borrowed from a receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct MessageRef<'a> {
    pub header: Header,
    /// The AVPs, after the 20-byte header.
    pub body: &'a [u8],
    /// The whole message.
    pub raw: &'a [u8],
}

impl<'a> MessageRef<'a> {
    /// Views an exactly framed message (the slice `header::frame` said is whole).
    ///
    /// Returns `None` if the slice is shorter than a header or its length field disagrees with
    /// the slice; callers frame first, so that is a programming error on their side.
    pub fn parse(raw: &'a [u8]) -> Option<Self> {
        let header = Header::parse(raw.get(..HEADER_SIZE_BYTES)?)?;
        if header.length as usize != raw.len() {
            return None;
        }
        Some(Self { header, body: &raw[HEADER_SIZE_BYTES..], raw })
    }

    pub fn avps(&self) -> AvpIter<'a> {
        AvpIter::new(self.body)
    }

    /// The first top-level AVP with this code (vendor 0), ignoring malformed tails.
    pub fn find(&self, code: AvpCode) -> Option<AvpRef<'a>> {
        self.avps().map_while(Result::ok).find(|a| a.code == code && a.vendor.0 == 0)
    }

    /// All top-level AVPs with this code (vendor 0).
    pub fn find_all(&self, code: AvpCode) -> impl Iterator<Item = AvpRef<'a>> + 'a {
        self.avps().map_while(Result::ok).filter(move |a| a.code == code && a.vendor.0 == 0)
    }

    /// Reads a top-level Unsigned32 AVP.
    pub fn u32(&self, code: AvpCode) -> Option<u32> {
        let d = self.find(code)?.data;
        Some(u32::from_be_bytes(d.try_into().ok()?))
    }

    /// Reads a top-level string AVP (UTF8String or DiameterIdentity).
    pub fn str(&self, code: AvpCode) -> Option<&'a str> {
        super::types::utf8(self.find(code)?.data).ok()
    }
}
