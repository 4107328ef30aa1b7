//! What the benches that drive the engine through the real journal share (`recovery`,
//! `settlement`, `catalog`): a catalog of N accounts, our identity, a CCR builder, the sink that journals without holding answers,
//! and size overrides from the environment. Included with `#[path]`.

#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use gyro::cc::RecordSink;
use gyro::diameter::encode::spec;
use gyro::diameter::{ApplicationId, AvpSpec, CommandCode, CommandFlags, Encoder, LocalIdentity};
use gyro::durable::Sink;

/// A catalog of one plan (data at 0.01 EUR per MiB), one customer `c` and `accounts` prepaid
/// accounts, e164:4917 + the account number in 8 digits.
pub fn catalog_text(accounts: usize) -> String {
    let mut s = String::from(
        "[[plans]]\nid = \"p\"\nname = \"P\"\ncurrency = \"EUR\"\n  [[plans.services]]\n  name = \"data\"\n  \
         contexts = [32251]\n  unit = \"octets\"\n  price = \"0.01\"\n  per = 1048576\n  quota = 10485760\n\
         [[customers]]\nid = \"c\"\nname = \"C\"\nplan = \"p\"\n",
    );
    for i in 0..accounts {
        s.push_str(&format!(
            "[[accounts]]\ncustomer = \"c\"\nsubscription_ids = [\"e164:4917{i:08}\"]\nfunding = \"prepaid\"\nbalance = \"1000.00\"\n"
        ));
    }
    s
}

pub fn local() -> LocalIdentity {
    LocalIdentity {
        origin_host: "gyro.bench".into(),
        origin_realm: "bench".into(),
        host_ip_addresses: vec![],
        vendor_id: 0,
        product_name: "gyro".into(),
        firmware_revision: 0,
        origin_state_id: 1,
    }
}

/// A data CCR (Gy, rating group 10) of CC-Request-Type `kind` (1 initial, 2 update,
/// 3 termination with Termination-Cause LOGOUT): an empty Requested-Service-Unit unless it
/// terminates, and `used_octets` in a Used-Service-Unit when above 0.
pub fn ccr(out: &mut BytesMut, session: &str, msisdn: &str, kind: u32, number: u32, used_octets: u64) {
    out.clear();
    let mut e = Encoder::new(
        out,
        CommandFlags(CommandFlags::REQUEST),
        CommandCode::CREDIT_CONTROL,
        ApplicationId::CREDIT_CONTROL,
        number,
        number,
    );
    e.str(spec::SESSION_ID, session);
    e.str(spec::ORIGIN_HOST, "pgw").str(spec::ORIGIN_REALM, "bench");
    e.str(spec::DESTINATION_REALM, "bench").u32(spec::AUTH_APPLICATION_ID, 4);
    e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
    e.u32(AvpSpec::mandatory(416), kind).u32(AvpSpec::mandatory(415), number);
    let g = e.begin_group(AvpSpec::mandatory(443));
    e.u32(AvpSpec::mandatory(450), 0).str(AvpSpec::mandatory(444), msisdn);
    e.end_group(g);
    if kind == 3 {
        e.u32(AvpSpec::mandatory(295), 1);
    }
    let m = e.begin_group(AvpSpec::mandatory(456));
    if kind != 3 {
        let r = e.begin_group(AvpSpec::mandatory(437));
        e.end_group(r);
    }
    if used_octets > 0 {
        let u = e.begin_group(AvpSpec::mandatory(446));
        e.u64(AvpSpec::mandatory(421), used_octets);
        e.end_group(u);
    }
    e.u32(AvpSpec::mandatory(432), 10);
    e.end_group(m);
    e.finish();
}

/// Journals without holding the answer (nobody waits for it here).
pub struct Journaling<'a, 'b>(pub &'a mut Sink<'b>);

impl RecordSink for Journaling<'_, '_> {
    fn append(&mut self, record: &[u8], _answer: &[u8]) -> bool {
        self.0.append(record, &[]);
        false
    }
}

/// `name` from the environment as a number, else `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
