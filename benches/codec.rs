//! Codec benchmarks: decode (frame + dictionary validation) of a CCR-U with 1 and 10 MSCCs,
//! and CCA encode. Inputs are the python-diameter vectors in tests/vectors. Also what metrics
//! add per answer on a connection (`metrics/answered`: the request's class, the answer's
//! Result-Code, one counter and one latency observation), to set beside `decode`.
//!
//! Run: `cargo bench --bench codec`. `cargo test --benches` runs each once as a smoke test.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gyro::diameter::encode::spec;
use gyro::diameter::{
    frame, validate_request, ApplicationId, AvpSpec, CommandCode, CommandFlags, Dictionary, Encoder,
    MessageRef,
};

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/vectors/{name}.bin", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const SUPPORTED: [ApplicationId; 2] = [ApplicationId::COMMON, ApplicationId::CREDIT_CONTROL];

/// Visits every AVP, nested ones included, without the dictionary: the cost of framing and the
/// zero-copy views alone.
fn walk(iter: gyro::diameter::AvpIter<'_>, depth: usize) -> usize {
    let mut n = 0;
    for a in iter.map_while(Result::ok) {
        n += 1;
        // Grouped AVPs in these vectors are the IETF and 3GPP containers below.
        if depth < 4 && matches!(a.code.0, 443 | 456 | 437 | 446 | 431 | 873 | 874) {
            n += walk(a.members(), depth + 1);
        }
    }
    n
}

fn decode(c: &mut Criterion) {
    let dict = Dictionary::embedded().unwrap();
    let mut g = c.benchmark_group("decode");
    for name in ["ccr_u", "ccr_u_10mscc"] {
        let bytes = vector(name);
        g.bench_function(format!("{name}/walk"), |b| {
            b.iter(|| {
                let len = frame(black_box(&bytes)).unwrap().unwrap();
                let msg = MessageRef::parse(&bytes[..len]).unwrap();
                black_box(walk(msg.avps(), 0))
            })
        });
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}/validate"), |b| {
            b.iter(|| {
                let len = frame(black_box(&bytes)).unwrap().unwrap();
                let msg = MessageRef::parse(&bytes[..len]).unwrap();
                black_box(validate_request(&dict, &msg, &SUPPORTED).is_ok())
            })
        });
    }
    g.finish();
}

/// A CCA as the credit-control engine will write it: Session-Id, Result-Code, Origin-Host,
/// Origin-Realm, Auth-Application-Id, CC-Request-Type/Number, one MSCC with GSU and Validity-Time.
fn encode_cca(buf: &mut BytesMut) -> usize {
    let mut e = Encoder::new(
        buf,
        CommandFlags(CommandFlags::PROXIABLE),
        CommandCode::CREDIT_CONTROL,
        ApplicationId(4),
        0x1234,
        0x5678,
    );
    e.str(spec::SESSION_ID, "pgw1.test.example;1700000000;1");
    e.u32(spec::RESULT_CODE, 2001);
    e.str(spec::ORIGIN_HOST, "gyro.localdomain");
    e.str(spec::ORIGIN_REALM, "localdomain");
    e.u32(spec::AUTH_APPLICATION_ID, 4);
    e.u32(AvpSpec::mandatory(416), 2);
    e.u32(AvpSpec::mandatory(415), 1);
    let mscc = e.begin_group(AvpSpec::mandatory(456));
    let gsu = e.begin_group(AvpSpec::mandatory(431));
    e.u64(AvpSpec::mandatory(421), 10 * 1024 * 1024);
    e.end_group(gsu);
    e.u32(AvpSpec::mandatory(432), 10);
    e.u32(AvpSpec::mandatory(448), 3600);
    e.u32(spec::RESULT_CODE, 2001);
    e.end_group(mscc);
    e.finish()
}

fn encode(c: &mut Criterion) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    c.bench_function("encode/cca", |b| {
        b.iter(|| {
            buf.clear();
            black_box(encode_cca(&mut buf))
        })
    });
}

/// `NetMetrics::answered` for a CCR-U and its CCA, as the connection calls it per answer.
fn metrics(c: &mut Criterion) {
    use gyro::net::metrics::{Class, NetMetrics};
    let metrics = NetMetrics::new();
    let request = vector("ccr_u");
    let mut cca = BytesMut::with_capacity(1024);
    encode_cca(&mut cca);
    let received = std::time::Instant::now();
    c.bench_function("metrics/answered", |b| {
        b.iter(|| {
            let msg = MessageRef::parse(black_box(&request)).unwrap();
            metrics.answered(Class::of(&msg), black_box(&cca), received);
        })
    });
}

criterion_group!(benches, decode, encode, metrics);
criterion_main!(benches);
