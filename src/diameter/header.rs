//! The 20-byte Diameter header (RFC 6733 §3) and framing of a byte stream into messages.
//!
//! Framing has three outcomes, kept apart on purpose (style habit 2):
//! - `Ok(None)`: need more bytes;
//! - `Ok(Some(len))`: a whole message of `len` bytes is buffered; parse it on an exact slice;
//! - `Err(FrameError)`: the stream cannot be trusted any more; answer if possible, then close.
//!
//! A message that frames fine but is bad inside (an AVP overrun, a missing AVP) keeps the stream
//! in sync: it is answered with a Result-Code by `validate`, and the connection stays up.

use nom::number::complete::{be_u24, be_u32, be_u8};

use super::codes::{ApplicationId, CommandCode};
use crate::limits::{HEADER_SIZE_BYTES, MESSAGE_SIZE_MAX_BYTES};

/// RFC 6733 §3: "Version: This Version field MUST be set to 1".
pub const VERSION: u8 = 1;

/// Command flags (RFC 6733 §3): R(equest), P(roxiable), E(rror), T (potentially retransmitted).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CommandFlags(pub u8);

impl CommandFlags {
    pub const REQUEST: u8 = 0x80;
    pub const PROXIABLE: u8 = 0x40;
    pub const ERROR: u8 = 0x20;
    pub const RETRANSMIT: u8 = 0x10;
    /// RFC 6733 §3: bits 4–7 are reserved, "MUST be set to zero, and ignored by the receiver".
    pub const RESERVED: u8 = 0x0f;

    pub fn is_request(self) -> bool {
        self.0 & Self::REQUEST != 0
    }
    pub fn is_proxiable(self) -> bool {
        self.0 & Self::PROXIABLE != 0
    }
    pub fn is_error(self) -> bool {
        self.0 & Self::ERROR != 0
    }
    pub fn is_retransmit(self) -> bool {
        self.0 & Self::RETRANSMIT != 0
    }
}

impl std::fmt::Debug for CommandFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [(0x80, 'R'), (0x40, 'P'), (0x20, 'E'), (0x10, 'T')];
        let mut s = String::with_capacity(4);
        for (bit, c) in names {
            s.push(if self.0 & bit != 0 { c } else { '-' });
        }
        write!(f, "{s}")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    pub version: u8,
    /// Whole message length in bytes, header included.
    pub length: u32,
    pub flags: CommandFlags,
    pub command: CommandCode,
    pub application: ApplicationId,
    pub hop_by_hop: u32,
    pub end_to_end: u32,
}

impl Header {
    /// Parses the 20 header bytes. It does not judge them; `frame` does.
    pub fn parse(input: &[u8]) -> Option<Self> {
        let res: nom::IResult<&[u8], Self> = (|i| {
            let (i, version) = be_u8(i)?;
            let (i, length) = be_u24(i)?;
            let (i, flags) = be_u8(i)?;
            let (i, command) = be_u24(i)?;
            let (i, application) = be_u32(i)?;
            let (i, hop_by_hop) = be_u32(i)?;
            let (i, end_to_end) = be_u32(i)?;
            Ok((
                i,
                Self {
                    version,
                    length,
                    flags: CommandFlags(flags),
                    command: CommandCode(command),
                    application: ApplicationId(application),
                    hop_by_hop,
                    end_to_end,
                },
            ))
        })(input);
        res.ok().map(|(_, h)| h)
    }

    pub fn write(&self, out: &mut [u8; HEADER_SIZE_BYTES]) {
        debug_assert!(self.length < (1 << 24));
        debug_assert!(self.command.0 < (1 << 24));
        out[0] = self.version;
        out[1..4].copy_from_slice(&self.length.to_be_bytes()[1..]);
        out[4] = self.flags.0;
        out[5..8].copy_from_slice(&self.command.0.to_be_bytes()[1..]);
        out[8..12].copy_from_slice(&self.application.0.to_be_bytes());
        out[12..16].copy_from_slice(&self.hop_by_hop.to_be_bytes());
        out[16..20].copy_from_slice(&self.end_to_end.to_be_bytes());
    }
}

/// Why a byte stream can no longer be framed. Each maps to the Result-Code of the answer we try
/// to send before closing (RFC 6733 §7.1.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported Diameter version {version} (only 1 exists)")]
    UnsupportedVersion { version: u8 },
    #[error("message length {length} is below the 20-byte header")]
    LengthTooShort { length: u32 },
    #[error("message length {length} is not a multiple of 4")]
    LengthNotAligned { length: u32 },
    #[error("message length {length} exceeds the limit of {max} bytes")]
    LengthTooLong { length: u32, max: usize },
}

impl FrameError {
    pub fn result_code(self) -> super::ResultCode {
        match self {
            Self::UnsupportedVersion { .. } => super::ResultCode::UNSUPPORTED_VERSION,
            Self::LengthTooShort { .. } | Self::LengthNotAligned { .. } | Self::LengthTooLong { .. } => {
                super::ResultCode::INVALID_MESSAGE_LENGTH
            }
        }
    }
}

/// Decides whether `buf` starts with a whole message.
///
/// Only the 4-byte prefix (version, length) is read before the whole message is buffered, so a
/// peer announcing 16 MiB is refused at once instead of making us wait and buffer.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    frame_within(buf, MESSAGE_SIZE_MAX_BYTES)
}

/// `frame` with a configured size limit at or below `MESSAGE_SIZE_MAX_BYTES`.
pub fn frame_within(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    debug_assert!(max <= MESSAGE_SIZE_MAX_BYTES);
    if buf.len() < 4 {
        return Ok(None);
    }
    let version = buf[0];
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion { version });
    }
    let length = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]);
    if (length as usize) < HEADER_SIZE_BYTES {
        return Err(FrameError::LengthTooShort { length });
    }
    if length as usize > max {
        return Err(FrameError::LengthTooLong { length, max });
    }
    // RFC 6733 §3: "the message length field is always a multiple of 4".
    if !length.is_multiple_of(4) {
        return Err(FrameError::LengthNotAligned { length });
    }
    if buf.len() < length as usize {
        return Ok(None);
    }
    Ok(Some(length as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_outcomes() {
        assert_eq!(frame(&[1, 0]), Ok(None));
        assert_eq!(frame(&[2, 0, 0, 20]), Err(FrameError::UnsupportedVersion { version: 2 }));
        assert_eq!(frame(&[1, 0, 0, 19]), Err(FrameError::LengthTooShort { length: 19 }));
        assert_eq!(frame(&[1, 0, 0, 22]), Err(FrameError::LengthNotAligned { length: 22 }));
        assert!(matches!(frame(&[1, 0xff, 0, 0]), Err(FrameError::LengthTooLong { .. })));
        let mut msg = [0u8; 24];
        msg[0] = 1;
        msg[3] = 24;
        assert_eq!(frame(&msg[..20]), Ok(None));
        assert_eq!(frame(&msg), Ok(Some(24)));
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            version: 1,
            length: 0x0001_2344,
            flags: CommandFlags(0xc0),
            command: CommandCode(272),
            application: ApplicationId(4),
            hop_by_hop: 0xdead_beef,
            end_to_end: 7,
        };
        let mut out = [0u8; HEADER_SIZE_BYTES];
        h.write(&mut out);
        assert_eq!(Header::parse(&out), Some(h));
    }
}
