//! Writing messages into a `BytesMut`: headers first with a placeholder length, then AVPs, then
//! the lengths back-patched. Nothing is allocated beyond the buffer's own growth, so a connection
//! can reuse one buffer for every answer it writes.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

use super::avp::{avp_header_len, AvpFlags};
use super::codes::{ApplicationId, AvpCode, CommandCode, VendorId};
use super::header::{CommandFlags, Header, VERSION};
use crate::limits::{AVP_HEADER_SIZE_BYTES, AVP_HEADER_VENDOR_SIZE_BYTES, HEADER_SIZE_BYTES};

/// The identity and flags of an AVP we send: code, vendor, V and M bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AvpSpec {
    pub code: AvpCode,
    pub vendor: VendorId,
    pub flags: AvpFlags,
}

impl AvpSpec {
    /// A vendor-0 AVP with the M bit set (most RFC 6733 and RFC 4006 AVPs).
    pub const fn mandatory(code: u32) -> Self {
        Self { code: AvpCode(code), vendor: VendorId(0), flags: AvpFlags(AvpFlags::MANDATORY) }
    }
    /// A vendor-0 AVP without the M bit.
    pub const fn optional(code: u32) -> Self {
        Self { code: AvpCode(code), vendor: VendorId(0), flags: AvpFlags(0) }
    }
    /// A 3GPP (vendor 10415) AVP with V and M set.
    pub const fn tgpp(code: u32) -> Self {
        Self {
            code: AvpCode(code),
            vendor: VendorId::TGPP,
            flags: AvpFlags(AvpFlags::VENDOR | AvpFlags::MANDATORY),
        }
    }
}

/// Where an open Grouped AVP starts, to patch its length when it ends.
#[must_use]
#[derive(Debug)]
pub struct GroupMark(usize);

/// Writes one message into a buffer.
pub struct Encoder<'b> {
    buf: &'b mut BytesMut,
    start: usize,
}

impl<'b> Encoder<'b> {
    /// Starts a message; the header's length is patched by `finish`.
    pub fn new(
        buf: &'b mut BytesMut,
        flags: CommandFlags,
        command: CommandCode,
        application: ApplicationId,
        hop_by_hop: u32,
        end_to_end: u32,
    ) -> Self {
        let start = buf.len();
        let header =
            Header { version: VERSION, length: 0, flags, command, application, hop_by_hop, end_to_end };
        let mut bytes = [0u8; HEADER_SIZE_BYTES];
        header.write(&mut bytes);
        buf.put_slice(&bytes);
        Self { buf, start }
    }

    /// Writes an AVP header with one copy of a fixed size: every field put separately costs a
    /// capacity check each (and the 3-byte length a call to `memcpy`), for the ~13 AVPs of a
    /// CCA.
    fn header(&mut self, spec: AvpSpec, data_len: usize) {
        let length = avp_header_len(spec.flags) + data_len;
        debug_assert!(length < (1 << 24));
        let flags_and_length = (u32::from(spec.flags.0) << 24) | (length as u32 & 0x00ff_ffff);
        let mut h = [0u8; AVP_HEADER_VENDOR_SIZE_BYTES];
        h[..4].copy_from_slice(&spec.code.0.to_be_bytes());
        h[4..8].copy_from_slice(&flags_and_length.to_be_bytes());
        if spec.flags.is_vendor() {
            h[8..].copy_from_slice(&spec.vendor.0.to_be_bytes());
            self.buf.put_slice(&h);
        } else {
            self.buf.put_slice(&h[..AVP_HEADER_SIZE_BYTES]);
        }
    }

    /// Writes an AVP whose value has a fixed size (numbers) with its header in one copy of a
    /// size known at compile time, for the same reason as `header`.
    fn fixed<const N: usize>(&mut self, spec: AvpSpec, value: [u8; N]) -> &mut Self {
        const { assert!(N <= 8) };
        let mut avp = [0u8; AVP_HEADER_VENDOR_SIZE_BYTES + 8];
        let length = (avp_header_len(spec.flags) + N) as u32;
        avp[..4].copy_from_slice(&spec.code.0.to_be_bytes());
        avp[4..8].copy_from_slice(&((u32::from(spec.flags.0) << 24) | length).to_be_bytes());
        if spec.flags.is_vendor() {
            const V: usize = AVP_HEADER_VENDOR_SIZE_BYTES;
            avp[8..V].copy_from_slice(&spec.vendor.0.to_be_bytes());
            avp[V..V + N].copy_from_slice(&value);
            self.buf.put_slice(&avp[..V + N]);
        } else {
            const H: usize = AVP_HEADER_SIZE_BYTES;
            avp[H..H + N].copy_from_slice(&value);
            self.buf.put_slice(&avp[..H + N]);
        }
        self
    }

    fn pad(&mut self, data_len: usize) {
        let pad = (4 - data_len % 4) % 4;
        self.buf.put_bytes(0, pad);
    }

    pub fn bytes(&mut self, spec: AvpSpec, data: &[u8]) -> &mut Self {
        self.header(spec, data.len());
        self.buf.put_slice(data);
        self.pad(data.len());
        self
    }

    pub fn str(&mut self, spec: AvpSpec, s: &str) -> &mut Self {
        self.bytes(spec, s.as_bytes())
    }

    pub fn u32(&mut self, spec: AvpSpec, v: u32) -> &mut Self {
        self.fixed(spec, v.to_be_bytes())
    }

    pub fn u64(&mut self, spec: AvpSpec, v: u64) -> &mut Self {
        self.fixed(spec, v.to_be_bytes())
    }

    pub fn i32(&mut self, spec: AvpSpec, v: i32) -> &mut Self {
        self.fixed(spec, v.to_be_bytes())
    }

    pub fn i64(&mut self, spec: AvpSpec, v: i64) -> &mut Self {
        self.fixed(spec, v.to_be_bytes())
    }

    pub fn ip(&mut self, spec: AvpSpec, ip: IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(v4) => {
                self.header(spec, 6);
                self.buf.put_u16(super::types::ADDRESS_FAMILY_IPV4);
                self.buf.put_slice(&v4.octets());
                self.pad(6);
            }
            IpAddr::V6(v6) => {
                self.header(spec, 18);
                self.buf.put_u16(super::types::ADDRESS_FAMILY_IPV6);
                self.buf.put_slice(&v6.octets());
                self.pad(18);
            }
        }
        self
    }

    /// Copies an AVP that is already encoded (header included, padding excluded), e.g. a
    /// Proxy-Info to echo or the offending AVP inside Failed-AVP.
    pub fn raw(&mut self, avp: &[u8]) -> &mut Self {
        self.buf.put_slice(avp);
        self.pad(avp.len());
        self
    }

    pub fn begin_group(&mut self, spec: AvpSpec) -> GroupMark {
        let at = self.buf.len();
        self.header(spec, 0);
        GroupMark(at)
    }

    pub fn end_group(&mut self, mark: GroupMark) {
        // Members are padded, so the group's own length is a multiple of 4 already.
        let length = self.buf.len() - mark.0;
        debug_assert!(length < (1 << 24));
        self.buf[mark.0 + 5..mark.0 + 8].copy_from_slice(&(length as u32).to_be_bytes()[1..]);
    }

    /// Patches the message length and returns it.
    pub fn finish(self) -> usize {
        let length = self.buf.len() - self.start;
        debug_assert!(length.is_multiple_of(4));
        debug_assert!(length < (1 << 24));
        self.buf[self.start + 1..self.start + 4].copy_from_slice(&(length as u32).to_be_bytes()[1..]);
        length
    }
}

/// AVPs gyro writes itself, with the flags RFC 6733 §4.5 and RFC 4006 §8 give them.
pub mod spec {
    use super::AvpSpec;

    pub const USER_NAME: AvpSpec = AvpSpec::mandatory(1);
    pub const HOST_IP_ADDRESS: AvpSpec = AvpSpec::mandatory(257);
    pub const AUTH_APPLICATION_ID: AvpSpec = AvpSpec::mandatory(258);
    pub const ACCT_APPLICATION_ID: AvpSpec = AvpSpec::mandatory(259);
    pub const VENDOR_SPECIFIC_APPLICATION_ID: AvpSpec = AvpSpec::mandatory(260);
    pub const SESSION_ID: AvpSpec = AvpSpec::mandatory(263);
    pub const ORIGIN_HOST: AvpSpec = AvpSpec::mandatory(264);
    pub const SUPPORTED_VENDOR_ID: AvpSpec = AvpSpec::mandatory(265);
    pub const VENDOR_ID: AvpSpec = AvpSpec::mandatory(266);
    /// RFC 6733 §5.3.4: Firmware-Revision has the M bit clear.
    pub const FIRMWARE_REVISION: AvpSpec = AvpSpec::optional(267);
    pub const RESULT_CODE: AvpSpec = AvpSpec::mandatory(268);
    /// RFC 6733 §4.5: Product-Name has the M bit clear.
    pub const PRODUCT_NAME: AvpSpec = AvpSpec::optional(269);
    pub const DISCONNECT_CAUSE: AvpSpec = AvpSpec::mandatory(273);
    pub const ORIGIN_STATE_ID: AvpSpec = AvpSpec::mandatory(278);
    pub const FAILED_AVP: AvpSpec = AvpSpec::mandatory(279);
    /// RFC 6733 §7.3: Error-Message has the M bit clear.
    pub const ERROR_MESSAGE: AvpSpec = AvpSpec::optional(281);
    pub const DESTINATION_REALM: AvpSpec = AvpSpec::mandatory(283);
    pub const PROXY_INFO: AvpSpec = AvpSpec::mandatory(284);
    pub const DESTINATION_HOST: AvpSpec = AvpSpec::mandatory(293);
    pub const ORIGIN_REALM: AvpSpec = AvpSpec::mandatory(296);
    pub const INBAND_SECURITY_ID: AvpSpec = AvpSpec::mandatory(299);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diameter::message::MessageRef;

    #[test]
    fn group_and_message_lengths_are_patched() {
        let mut buf = BytesMut::new();
        let mut e = Encoder::new(
            &mut buf,
            CommandFlags(CommandFlags::REQUEST),
            CommandCode::DEVICE_WATCHDOG,
            ApplicationId::COMMON,
            1,
            2,
        );
        e.str(spec::ORIGIN_HOST, "a.example");
        let g = e.begin_group(spec::VENDOR_SPECIFIC_APPLICATION_ID);
        e.u32(spec::VENDOR_ID, 10415).u32(spec::AUTH_APPLICATION_ID, 4);
        e.end_group(g);
        let len = e.finish();
        assert_eq!(len, buf.len());
        let msg = MessageRef::parse(&buf).unwrap();
        let avps: Vec<_> = msg.avps().collect::<Result<_, _>>().unwrap();
        assert_eq!(avps.len(), 2);
        assert_eq!(avps[0].data, b"a.example");
        assert_eq!(avps[1].raw.len(), 8 + 12 + 12);
        assert_eq!(avps[1].members().count(), 2);
    }

    /// The one-copy writers give the bytes the field-by-field layout of RFC 6733 §4.1 gives.
    #[test]
    fn fixed_size_avps_have_the_rfc_layout() {
        let mut buf = BytesMut::new();
        let mut e = Encoder::new(&mut buf, CommandFlags(0), CommandCode(1), ApplicationId(0), 0, 0);
        e.u32(AvpSpec::mandatory(268), 2001).u64(AvpSpec::tgpp(421), 0x0102_0304_0506_0708);
        e.i32(AvpSpec::optional(429), -2).i64(AvpSpec::mandatory(447), -3);
        e.str(AvpSpec::tgpp(30), "abcde");
        e.finish();
        let body = &buf[HEADER_SIZE_BYTES..];
        let mut want = vec![0, 0, 1, 12, 0x40, 0, 0, 12, 0, 0, 0x07, 0xd1];
        want.extend_from_slice(&[0, 0, 1, 165, 0xc0, 0, 0, 20, 0, 0, 0x28, 0xaf, 1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&[0, 0, 1, 173, 0, 0, 0, 12, 0xff, 0xff, 0xff, 0xfe]);
        want.extend_from_slice(&[0, 0, 1, 191, 0x40, 0, 0, 16]);
        want.extend_from_slice(&(-3i64).to_be_bytes());
        want.extend_from_slice(&[
            0, 0, 0, 30, 0xc0, 0, 0, 17, 0, 0, 0x28, 0xaf, b'a', b'b', b'c', b'd', b'e', 0, 0, 0,
        ]);
        assert_eq!(body, &want[..]);
    }
}
