//! The decode hot path allocates nothing: frame + validate a CCR-U with a counting allocator;
//! nor does the echo responder's answer once its output buffer has grown.
//!
//! One test function, because the counter is process-wide and the harness runs tests on
//! parallel threads.

use std::sync::atomic::Ordering;

use gyro::diameter::{frame, validate_request, ApplicationId, Dictionary, MessageRef};

#[path = "../benches/support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

#[test]
fn decoding_a_ccr_u_allocates_nothing() {
    let dict = Dictionary::embedded().unwrap();
    let supported = [ApplicationId::COMMON, ApplicationId::CREDIT_CONTROL];
    for name in ["ccr_u", "ccr_u_10mscc"] {
        let bytes =
            std::fs::read(format!("{}/tests/vectors/{name}.bin", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..100 {
            let len = frame(&bytes).unwrap().unwrap();
            let msg = MessageRef::parse(&bytes[..len]).unwrap();
            assert!(validate_request(&dict, &msg, &supported).is_ok());
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "{name}: allocations during 100 decodes");

        // `gyro echo`: the canned answer is spliced into the connection's write buffer.
        let echo = gyro::net::echo::Echo::new(&gyro::diameter::LocalIdentity {
            origin_host: "gyro.test".into(),
            origin_realm: "test".into(),
            host_ip_addresses: vec![],
            vendor_id: 0,
            product_name: "gyro".into(),
            firmware_revision: 0,
            origin_state_id: 0,
        });
        let msg = MessageRef::parse(&bytes).unwrap();
        let mut out = bytes::BytesMut::with_capacity(64 * 1024);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..100 {
            out.clear();
            echo.answer(&msg, &mut out);
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "{name}: allocations during 100 echo answers");
        assert!(MessageRef::parse(&out).is_some());
    }
}
