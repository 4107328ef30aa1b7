//! A fixed loop for instruction counting, which is deterministic on a noisy shared machine:
//! `valgrind --tool=callgrind target/release/examples/decode_loop ccr_u 10000` and divide the
//! total by the iteration count (minus a run with 0 iterations, which is the set-up cost).

use gyro::diameter::{frame, validate_request, ApplicationId, Dictionary, MessageRef};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "ccr_u".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let bytes = std::fs::read(format!("{}/tests/vectors/{name}.bin", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let dict = Dictionary::embedded().unwrap();
    let supported = [ApplicationId::COMMON, ApplicationId::CREDIT_CONTROL];
    let mut ok = 0usize;
    for _ in 0..n {
        let len = frame(std::hint::black_box(&bytes)).unwrap().unwrap();
        let msg = MessageRef::parse(&bytes[..len]).unwrap();
        ok += usize::from(validate_request(&dict, &msg, &supported).is_ok());
    }
    assert_eq!(ok, n);
}
