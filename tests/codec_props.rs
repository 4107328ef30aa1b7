//! Property tests for the codec; the same properties serve as the long fuzz run.
//!
//! `GYRO_FUZZ_CASES` raises the number of cases (CI runs a larger budget; the default keeps
//! `cargo test` quick).

use bytes::BytesMut;
use gyro::diameter::tree::{Data, Node, OwnedMessage};
use gyro::diameter::{
    frame, validate_request, ApplicationId, AvpCode, AvpFlags, CommandCode, CommandFlags, Dictionary, Header,
    MessageRef, ResultCode, VendorId,
};
use proptest::prelude::*;

fn embedded() -> &'static Dictionary {
    static DICT: std::sync::OnceLock<Dictionary> = std::sync::OnceLock::new();
    DICT.get_or_init(|| Dictionary::embedded().unwrap())
}

fn shape() -> &'static Dictionary {
    static DICT: std::sync::OnceLock<Dictionary> = std::sync::OnceLock::new();
    DICT.get_or_init(shape_dictionary)
}

fn cases() -> u32 {
    std::env::var("GYRO_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// A dictionary where codes 1000..1010 are Grouped and everything else is unknown, so the
/// generator controls the tree shape exactly.
fn shape_dictionary() -> Dictionary {
    let mut xml = String::from("<dictionary>\n");
    for c in 1000..1010 {
        xml.push_str(&format!("<avp name=\"G{c}\" code=\"{c}\" type=\"Grouped\"/>\n"));
        xml.push_str(&format!(
            "<avp name=\"V{c}\" code=\"{c}\" vendor=\"7\" type=\"Grouped\" must=\"V\"/>\n"
        ));
    }
    xml.push_str("</dictionary>\n");
    Dictionary::from_sources([("shape.xml".to_owned(), xml)]).unwrap()
}

fn node() -> impl Strategy<Value = Node> {
    let vendor = prop_oneof![Just(0u32), Just(7u32)];
    let leaf = (2000u32..2100, vendor.clone(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..24))
        .prop_map(|(code, vendor, m, data)| Node {
            code: AvpCode(code),
            flags: flags(vendor, m),
            vendor: VendorId(vendor),
            data: Data::Raw(data),
        });
    leaf.prop_recursive(4, 64, 6, move |inner| {
        (1000u32..1010, vendor.clone(), any::<bool>(), proptest::collection::vec(inner, 0..6)).prop_map(
            |(code, vendor, m, members)| Node {
                code: AvpCode(code),
                flags: flags(vendor, m),
                vendor: VendorId(vendor),
                data: Data::Grouped(members),
            },
        )
    })
}

fn flags(vendor: u32, m: bool) -> AvpFlags {
    let mut f = if vendor != 0 { AvpFlags::VENDOR } else { 0 };
    if m {
        f |= AvpFlags::MANDATORY;
    }
    AvpFlags(f)
}

fn message() -> impl Strategy<Value = OwnedMessage> {
    (
        any::<u8>(),
        0u32..(1 << 24),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(node(), 0..8),
    )
        .prop_map(|(flags, command, app, hbh, e2e, avps)| OwnedMessage {
            header: Header {
                version: 1,
                length: 0,
                flags: CommandFlags(flags),
                command: CommandCode(command),
                application: ApplicationId(app),
                hop_by_hop: hbh,
                end_to_end: e2e,
            },
            avps,
        })
}

/// What the server would answer for these bytes: a frame error, a validation error, or success.
fn classify(dict: &Dictionary, bytes: &[u8]) -> Option<ResultCode> {
    match frame(bytes) {
        Err(e) => Some(e.result_code()),
        Ok(None) => None,
        Ok(Some(len)) => {
            let msg = MessageRef::parse(&bytes[..len]).expect("framed");
            if !msg.header.flags.is_request() {
                return None;
            }
            match validate_request(dict, &msg, &[ApplicationId::COMMON, ApplicationId::CREDIT_CONTROL]) {
                Ok(_) => Some(ResultCode::SUCCESS),
                Err(e) => Some(e.result_code()),
            }
        }
    }
}

const EXPECTED: [u32; 13] = [2001, 3001, 3007, 3008, 3009, 5001, 5004, 5005, 5008, 5009, 5011, 5014, 5015];

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity(mut m in message()) {
        let dict = shape();
        let mut buf = BytesMut::new();
        let len = m.encode(&mut buf);
        prop_assert_eq!(len, buf.len());
        m.header.length = len as u32;
        let framed = frame(&buf).unwrap();
        if len <= gyro::limits::MESSAGE_SIZE_MAX_BYTES {
            prop_assert_eq!(framed, Some(len));
        }
        let decoded = OwnedMessage::decode(dict, &MessageRef::parse(&buf).unwrap()).unwrap();
        prop_assert_eq!(decoded, m);
    }

    #[test]
    fn arbitrary_bodies_never_panic_and_reencode_stably(body in proptest::collection::vec(any::<u8>(), 0..512), cmd in prop_oneof![Just(257u32), Just(272), Just(280), Just(282), any::<u32>()]) {
        let dict = embedded();
        let len = 20 + (body.len() & !3);
        let mut bytes = vec![1, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 2];
        bytes[1..4].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        bytes[5..8].copy_from_slice(&(cmd & 0xff_ffff).to_be_bytes()[1..]);
        bytes.extend_from_slice(&body[..len - 20]);
        let rc = classify(dict, &bytes).unwrap();
        prop_assert!(EXPECTED.contains(&rc.0), "unexpected result code {}", rc.0);
        let msg = MessageRef::parse(&bytes).unwrap();
        let _ = gyro::diameter::tree::dump(dict, &msg);
        if let Ok(tree) = OwnedMessage::decode(dict, &msg) {
            let mut out = BytesMut::new();
            let n = tree.encode(&mut out);
            prop_assert_eq!(n, out.len());
            let again = OwnedMessage::decode(dict, &MessageRef::parse(&out).unwrap()).unwrap();
            let mut expected = tree.clone();
            expected.header.length = n as u32;
            prop_assert_eq!(again, expected);
        }
    }

    #[test]
    fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let dict = embedded();
        if let Some(rc) = classify(dict, &bytes) {
            prop_assert!(EXPECTED.contains(&rc.0), "unexpected result code {}", rc.0);
        }
    }
}
