//! Reading credit-control answers, shared by the tests that drive the engine or a `gyro serve`
//! process directly (durability, settlement, reconciliation). Included with `#[path]`.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use gyro::diameter::{AvpCode, CommandFlags, LocalIdentity, MessageRef, VendorId};

/// The same request with the T flag (RFC 6733 §3: a retransmission after a failover).
pub fn retransmission(req: &[u8]) -> Bytes {
    let mut b = req.to_vec();
    b[4] |= CommandFlags::RETRANSMIT;
    Bytes::from(b)
}

pub fn msg(b: &[u8]) -> MessageRef<'_> {
    MessageRef::parse(b).expect("a whole Diameter message")
}

pub fn result_code(a: &[u8]) -> u32 {
    msg(a).u32(AvpCode::RESULT_CODE).expect("an answer with a Result-Code")
}

/// A money AVP (Cost-Information, Remaining-Balance: a Unit-Value inside) in cents.
pub fn money(a: &[u8], code: u32, vendor: VendorId) -> Option<i64> {
    let m = msg(a).avps().map_while(Result::ok).find(|m| m.code.0 == code && m.vendor == vendor)?;
    let uv = m.members().map_while(Result::ok).find(|u| u.code.0 == 445)?;
    let (mut digits, mut exponent) = (0i64, 0i32);
    for x in uv.members().map_while(Result::ok) {
        match x.code.0 {
            447 => digits = i64::from_be_bytes(x.data.try_into().unwrap()),
            429 => exponent = i32::from_be_bytes(x.data.try_into().unwrap()),
            _ => {}
        }
    }
    assert_eq!(exponent, -2, "EUR amounts in cents");
    Some(digits)
}

/// The identity gyro serves with on its defaults.
pub fn local() -> LocalIdentity {
    LocalIdentity {
        origin_host: "gyro.localdomain".into(),
        origin_realm: "localdomain".into(),
        host_ip_addresses: vec![],
        vendor_id: 0,
        product_name: "gyro".into(),
        firmware_revision: 0,
        origin_state_id: 0,
    }
}
