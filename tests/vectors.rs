//! Golden wire vectors made by an independent encoder (python-diameter, see
//! tests/vectors/README.md): each valid one decodes to its snapshot (`*.txt`, refresh with
//! `UPDATE_EXPECT=1 cargo test --test vectors`), validates, and re-encodes to the exact bytes;
//! each invalid one gets the Result-Code RFC 6733 asks for.

use bytes::BytesMut;
use gyro::diameter::tree::{dump, OwnedMessage};
use gyro::diameter::{frame, validate_request, ApplicationId, AvpIter, Dictionary, MessageRef};

fn read(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const SUPPORTED: [ApplicationId; 2] = [ApplicationId::COMMON, ApplicationId::CREDIT_CONTROL];

const VALID: [&str; 12] =
    ["cer", "cea", "dwr", "dwa", "dpr", "dpa", "ccr_i", "ccr_u", "ccr_u_10mscc", "ccr_t", "cca", "ccr_e_sms"];

#[test]
fn valid_vectors_decode_validate_and_reencode() {
    let dict = Dictionary::embedded().unwrap();
    for name in VALID {
        let bytes = read(name);
        assert_eq!(frame(&bytes), Ok(Some(bytes.len())), "{name}");
        let msg = MessageRef::parse(&bytes).unwrap();
        expect_test::expect_file![format!("vectors/{name}.txt")].assert_eq(&dump(&dict, &msg));
        if msg.header.flags.is_request() {
            if let Err(e) = validate_request(&dict, &msg, &SUPPORTED) {
                panic!("{name}: {}", e.message(&dict));
            }
        } else {
            gyro::diameter::validate_answer(&dict, &msg, &SUPPORTED)
                .unwrap_or_else(|e| panic!("{name}: {}", e.message(&dict)));
        }
        let tree = OwnedMessage::decode(&dict, &msg).unwrap();
        let mut out = BytesMut::new();
        tree.encode(&mut out);
        assert_eq!(&out[..], &bytes[..], "{name}: re-encoding differs");
    }
}

/// What gyro answers for each invalid vector, sent on an open connection.
fn classify(dict: &Dictionary, bytes: &[u8]) -> (u32, Option<u32>) {
    match frame(bytes) {
        Err(e) => (e.result_code().0, None),
        Ok(None) => panic!("incomplete"),
        Ok(Some(len)) => {
            let msg = MessageRef::parse(&bytes[..len]).unwrap();
            let e = validate_request(dict, &msg, &SUPPORTED).expect_err("invalid vector validated");
            // Failed-AVP bytes are unpadded; the answer's encoder pads them.
            let mut padded = e.failed_avp.clone();
            padded.resize((padded.len() + 3) & !3, 0);
            let failed = AvpIter::new(&padded).next().and_then(Result::ok).map(|a| a.code.0);
            (e.result_code().0, failed)
        }
    }
}

#[test]
fn invalid_vectors_get_the_rfc_result_code() {
    let dict = Dictionary::embedded().unwrap();
    let cases: [(&str, u32, Option<u32>); 11] = [
        ("bad_version", 5011, None),
        ("bad_length", 5015, None),
        ("bad_msg_length", 5015, None),
        ("avp_overrun", 5014, Some(278)),
        ("bad_padding", 5014, None),
        ("avp_short", 5014, Some(278)),
        ("missing_mandatory", 5005, Some(415)),
        ("unknown_mbit_avp", 5001, Some(99_999)),
        ("unknown_command", 3001, None),
        ("too_many", 5009, Some(264)),
        ("e_bit_request", 3008, None),
    ];
    for (name, code, failed) in cases {
        let (got, got_failed) = classify(&dict, &read(name));
        assert_eq!(got, code, "{name}");
        if failed.is_some() {
            assert_eq!(got_failed, failed, "{name}: Failed-AVP");
        }
    }
}
