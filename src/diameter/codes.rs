//! Open-world protocol numbers: newtypes over the wire integer with named constants.
//!
//! Unknown values decode fine and print in hex; policy (the M bit, the dictionary) decides whether
//! they are rejected. This follows rustls' `enum_builder!` habit rather than closed Rust enums.

use std::fmt;

macro_rules! wire_u32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({}/{:#x})", stringify!($name), self.0, self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

wire_u32!(
    /// RFC 6733 §3: the 24-bit Command-Code of the header.
    CommandCode
);
wire_u32!(
    /// RFC 6733 §3: Application-ID of the header (and of Auth-/Acct-Application-Id AVPs).
    ApplicationId
);
wire_u32!(
    /// RFC 6733 §4.1: AVP Code.
    AvpCode
);
wire_u32!(
    /// RFC 6733 §4.1: Vendor-ID; 0 when the V bit is clear.
    VendorId
);
wire_u32!(
    /// RFC 6733 §7.1: Result-Code values.
    ResultCode
);

impl CommandCode {
    pub const CAPABILITIES_EXCHANGE: Self = Self(257);
    pub const RE_AUTH: Self = Self(258);
    pub const CREDIT_CONTROL: Self = Self(272);
    pub const ABORT_SESSION: Self = Self(274);
    pub const SESSION_TERMINATION: Self = Self(275);
    pub const DEVICE_WATCHDOG: Self = Self(280);
    pub const DISCONNECT_PEER: Self = Self(282);
}

impl ApplicationId {
    /// RFC 6733 §2.4: the common messages (CER, DWR, DPR) use application 0.
    pub const COMMON: Self = Self(0);
    /// RFC 4006 §1.3: Diameter Credit-Control Application.
    pub const CREDIT_CONTROL: Self = Self(4);
    /// RFC 6733 §2.4: relay.
    pub const RELAY: Self = Self(0xffff_ffff);
}

impl VendorId {
    pub const IETF: Self = Self(0);
    pub const TGPP: Self = Self(10415);
}

impl AvpCode {
    pub const USER_NAME: Self = Self(1);
    pub const HOST_IP_ADDRESS: Self = Self(257);
    pub const AUTH_APPLICATION_ID: Self = Self(258);
    pub const ACCT_APPLICATION_ID: Self = Self(259);
    pub const VENDOR_SPECIFIC_APPLICATION_ID: Self = Self(260);
    pub const SESSION_ID: Self = Self(263);
    pub const ORIGIN_HOST: Self = Self(264);
    pub const SUPPORTED_VENDOR_ID: Self = Self(265);
    pub const VENDOR_ID: Self = Self(266);
    pub const FIRMWARE_REVISION: Self = Self(267);
    pub const RESULT_CODE: Self = Self(268);
    pub const PRODUCT_NAME: Self = Self(269);
    pub const DISCONNECT_CAUSE: Self = Self(273);
    pub const ORIGIN_STATE_ID: Self = Self(278);
    pub const FAILED_AVP: Self = Self(279);
    pub const ERROR_MESSAGE: Self = Self(281);
    pub const ROUTE_RECORD: Self = Self(282);
    pub const DESTINATION_REALM: Self = Self(283);
    pub const PROXY_INFO: Self = Self(284);
    pub const DESTINATION_HOST: Self = Self(293);
    pub const ERROR_REPORTING_HOST: Self = Self(294);
    pub const ORIGIN_REALM: Self = Self(296);
    pub const EXPERIMENTAL_RESULT: Self = Self(297);
    pub const INBAND_SECURITY_ID: Self = Self(299);
}

impl ResultCode {
    // RFC 6733 §7.1.2: success.
    pub const SUCCESS: Self = Self(2001);
    pub const LIMITED_SUCCESS: Self = Self(2002);
    // RFC 6733 §7.1.3: protocol errors; answers carry the E bit.
    pub const COMMAND_UNSUPPORTED: Self = Self(3001);
    pub const UNABLE_TO_DELIVER: Self = Self(3002);
    pub const REALM_NOT_SERVED: Self = Self(3003);
    pub const TOO_BUSY: Self = Self(3004);
    pub const LOOP_DETECTED: Self = Self(3005);
    pub const REDIRECT_INDICATION: Self = Self(3006);
    pub const APPLICATION_UNSUPPORTED: Self = Self(3007);
    pub const INVALID_HDR_BITS: Self = Self(3008);
    pub const INVALID_AVP_BITS: Self = Self(3009);
    pub const UNKNOWN_PEER: Self = Self(3010);
    // RFC 6733 §7.1.4: transient failures.
    pub const AUTHENTICATION_REJECTED: Self = Self(4001);
    pub const OUT_OF_SPACE: Self = Self(4002);
    pub const ELECTION_LOST: Self = Self(4003);
    // RFC 4006 §9.1: credit-control transient failures.
    pub const END_USER_SERVICE_DENIED: Self = Self(4010);
    pub const CREDIT_CONTROL_NOT_APPLICABLE: Self = Self(4011);
    pub const CREDIT_LIMIT_REACHED: Self = Self(4012);
    // RFC 6733 §7.1.5: permanent failures.
    pub const AVP_UNSUPPORTED: Self = Self(5001);
    pub const UNKNOWN_SESSION_ID: Self = Self(5002);
    pub const AUTHORIZATION_REJECTED: Self = Self(5003);
    pub const INVALID_AVP_VALUE: Self = Self(5004);
    pub const MISSING_AVP: Self = Self(5005);
    pub const RESOURCES_EXCEEDED: Self = Self(5006);
    pub const CONTRADICTING_AVPS: Self = Self(5007);
    pub const AVP_NOT_ALLOWED: Self = Self(5008);
    pub const AVP_OCCURS_TOO_MANY_TIMES: Self = Self(5009);
    pub const NO_COMMON_APPLICATION: Self = Self(5010);
    pub const UNSUPPORTED_VERSION: Self = Self(5011);
    pub const UNABLE_TO_COMPLY: Self = Self(5012);
    pub const INVALID_BIT_IN_HEADER: Self = Self(5013);
    pub const INVALID_AVP_LENGTH: Self = Self(5014);
    pub const INVALID_MESSAGE_LENGTH: Self = Self(5015);
    pub const INVALID_AVP_BIT_COMBO: Self = Self(5016);
    pub const NO_COMMON_SECURITY: Self = Self(5017);
    // RFC 4006 §9.1: credit-control permanent failures.
    pub const USER_UNKNOWN: Self = Self(5030);
    pub const RATING_FAILED: Self = Self(5031);

    /// RFC 6733 §7.1.3: "Protocol errors ... the 'E' bit in the header is set."
    pub fn is_protocol_error(self) -> bool {
        (3000..4000).contains(&self.0)
    }

    pub fn is_success(self) -> bool {
        (2000..3000).contains(&self.0)
    }

    /// A stable, bounded name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self.0 {
            2001 => "DIAMETER_SUCCESS",
            2002 => "DIAMETER_LIMITED_SUCCESS",
            3001 => "DIAMETER_COMMAND_UNSUPPORTED",
            3002 => "DIAMETER_UNABLE_TO_DELIVER",
            3003 => "DIAMETER_REALM_NOT_SERVED",
            3004 => "DIAMETER_TOO_BUSY",
            3005 => "DIAMETER_LOOP_DETECTED",
            3006 => "DIAMETER_REDIRECT_INDICATION",
            3007 => "DIAMETER_APPLICATION_UNSUPPORTED",
            3008 => "DIAMETER_INVALID_HDR_BITS",
            3009 => "DIAMETER_INVALID_AVP_BITS",
            3010 => "DIAMETER_UNKNOWN_PEER",
            4001 => "DIAMETER_AUTHENTICATION_REJECTED",
            4002 => "DIAMETER_OUT_OF_SPACE",
            4003 => "ELECTION_LOST",
            4010 => "DIAMETER_END_USER_SERVICE_DENIED",
            4011 => "DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE",
            4012 => "DIAMETER_CREDIT_LIMIT_REACHED",
            5001 => "DIAMETER_AVP_UNSUPPORTED",
            5002 => "DIAMETER_UNKNOWN_SESSION_ID",
            5003 => "DIAMETER_AUTHORIZATION_REJECTED",
            5004 => "DIAMETER_INVALID_AVP_VALUE",
            5005 => "DIAMETER_MISSING_AVP",
            5006 => "DIAMETER_RESOURCES_EXCEEDED",
            5007 => "DIAMETER_CONTRADICTING_AVPS",
            5008 => "DIAMETER_AVP_NOT_ALLOWED",
            5009 => "DIAMETER_AVP_OCCURS_TOO_MANY_TIMES",
            5010 => "DIAMETER_NO_COMMON_APPLICATION",
            5011 => "DIAMETER_UNSUPPORTED_VERSION",
            5012 => "DIAMETER_UNABLE_TO_COMPLY",
            5013 => "DIAMETER_INVALID_BIT_IN_HEADER",
            5014 => "DIAMETER_INVALID_AVP_LENGTH",
            5015 => "DIAMETER_INVALID_MESSAGE_LENGTH",
            5016 => "DIAMETER_INVALID_AVP_BIT_COMBO",
            5017 => "DIAMETER_NO_COMMON_SECURITY",
            5030 => "DIAMETER_USER_UNKNOWN",
            5031 => "DIAMETER_RATING_FAILED",
            _ => "OTHER",
        }
    }
}
