//! Credit-control behaviour as data (TigerBeetle / rust-analyzer style): every file in
//! tests/scenarios/*.txt sets up a catalog, sends CCRs with their expected answers, moves time,
//! and checks balances. One `check` function runs them all; a new case is a new text block.
//!
//! Format, one command per line (`#` starts a comment):
//! - `catalog demo` or `catalog {` … TOML … `}`: load a catalog into a fresh engine.
//! - `time 2026-11-28T10:00:00Z`: set the wall clock (tariff bands); `advance 30s` (ms, s, m, h):
//!   move both clocks.
//! - `ccr I|U|T|E SESSION [sub=e164:4917…] [ctx=32251] [num=N] [req=N] [used=N] [tcu=before|after]
//!   [reason=final] [action=debit|refund|check|price] [[rg=10 req=0 used=N tcu=after] …] [dup]
//!   (`before=N after=N` report usage split at a tariff change as two USUs; `money=0.05` asks
//!   for what 0.05 EUR buys, as CC-Money; `aoc=full|cost` sends AoC-Request-Type)
//!   -> RESULT [rgN.result=…] [rgN.granted=…] [rgN.fui=none|terminate|redirect|restrict]
//!   [rgN.validity=…] [rgN.ttc=yes|no] [granted=…] [cost=1.23] [check=enough|no-credit]
//!   [remaining=1.23] [low=yes|no] [rgN.threshold=…] [rgN.qht=…] [rgN.filter=ID]
//!   [rgN.rules=COUNT]`.
//!   Bracketed groups are MSCCs; without them RSU/USU go at command level. `dup` resends the
//!   previous request of that session byte for byte with the T flag. CC-Request-Number counts
//!   per session unless `num=` is given. `sub` and `ctx` default to the last ones used.
//! - `balance SUB AMOUNT [reserved=AMOUNT] [available=AMOUNT]`: check an account.
//! - `sweep`: run session supervision; `conservation`: Σ balances + Σ debits = Σ funding.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gyro::catalog::{Catalog, SubscriptionKind};
use gyro::cc::{Engine, EngineConfig, Now};
use gyro::diameter::encode::spec;
use gyro::diameter::{
    validate_request, ApplicationId, AvpCode, AvpIter, AvpSpec, CommandCode, CommandFlags, Dictionary,
    Encoder, LocalIdentity, MessageRef, VendorId,
};
use gyro::ledger::Ledger;

#[test]
fn scenarios() {
    let dir = format!("{}/tests/scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "txt")) {
        if let Err(e) = std::panic::catch_unwind(|| check(f)) {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".into());
            failures.push(format!("{}: {msg}", f.display()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// RFC 6733 §6.2: every Proxy-Info of a request comes back in the CCA, in order and byte for
/// byte, on a success, a refusal and a retransmission alike; a request without one gets none.
#[test]
fn ccas_echo_proxy_info() {
    let engine = Engine::new(EngineConfig::new(&local()), Arc::new(Ledger::new()));
    engine.load_catalog(&Catalog::demo(), 0).unwrap();
    let now = Now { mono_ms: 1_000, unix_secs: unix("2026-11-25T10:00:00Z") };
    let request = |session: &str, sub: &str, proxies: usize| {
        let mut b = BytesMut::new();
        let flags = CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE);
        let mut e =
            Encoder::new(&mut b, flags, CommandCode::CREDIT_CONTROL, ApplicationId::CREDIT_CONTROL, 1, 2);
        e.str(spec::SESSION_ID, session);
        e.str(spec::ORIGIN_HOST, "pgw.test").str(spec::ORIGIN_REALM, "test");
        e.str(spec::DESTINATION_REALM, "test");
        e.u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
        e.u32(AvpSpec::mandatory(416), 1).u32(AvpSpec::mandatory(415), 0);
        let g = e.begin_group(AvpSpec::mandatory(443));
        e.u32(AvpSpec::mandatory(450), 0).str(AvpSpec::mandatory(444), sub);
        e.end_group(g);
        for i in 0..proxies {
            let p = e.begin_group(spec::PROXY_INFO);
            e.str(AvpSpec::mandatory(280), &format!("proxy{i}.test"));
            e.bytes(AvpSpec::mandatory(33), &[i as u8; 5]);
            e.end_group(p);
        }
        e.finish();
        b.freeze()
    };
    let proxy_infos =
        |m: &MessageRef<'_>| -> Vec<Vec<u8>> { m.find_all(AvpCode(284)).map(|a| a.raw.to_vec()).collect() };
    let cases = [("s1", "491700000001", 2), ("s2", "491700000001", 0), ("s3", "499999999999", 1)];
    for (session, sub, proxies) in cases {
        let req = request(session, sub, proxies);
        let msg = MessageRef::parse(&req).unwrap();
        for _ in 0..2 {
            let mut out = BytesMut::new();
            engine.handle(now, &msg, &mut out);
            let answer = MessageRef::parse(&out).unwrap();
            assert_eq!(proxy_infos(&answer), proxy_infos(&msg), "{session}");
            assert_eq!(proxy_infos(&answer).len(), proxies, "{session}");
        }
    }
}

struct Harness {
    dict: Dictionary,
    engine: Option<Engine>,
    now: Now,
    e2e: u32,
    numbers: HashMap<String, u32>,
    last: HashMap<String, Bytes>,
    /// The answer to `last`, which a `dup` must get again byte for byte.
    last_answer: HashMap<String, Bytes>,
    sub: String,
    ctx: String,
}

fn local() -> LocalIdentity {
    LocalIdentity {
        origin_host: "gyro.test".into(),
        origin_realm: "test".into(),
        host_ip_addresses: vec![],
        vendor_id: 0,
        product_name: "gyro".into(),
        firmware_revision: 0,
        origin_state_id: 0,
    }
}

fn check(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut h = Harness {
        dict: Dictionary::embedded().unwrap(),
        engine: None,
        now: Now { mono_ms: 1_000, unix_secs: unix("2026-11-25T10:00:00Z") },
        e2e: 1,
        numbers: HashMap::new(),
        last: HashMap::new(),
        last_answer: HashMap::new(),
        sub: "e164:491700000001".into(),
        ctx: "32251@3gpp.org".into(),
    };
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("line {}: `{line}`", i + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "catalog" if words.get(1) == Some(&"{") => {
                let mut toml = String::new();
                for (_, l) in lines.by_ref() {
                    if l.trim() == "}" {
                        break;
                    }
                    toml.push_str(l);
                    toml.push('\n');
                }
                let c = Catalog::from_toml("scenario", &toml).unwrap_or_else(|e| panic!("{at}: {e}"));
                h.load(&c);
            }
            "catalog" => h.load(&Catalog::demo()),
            "time" => {
                h.now.unix_secs = unix(words[1]);
            }
            "advance" => {
                let ms = duration_ms(words[1]);
                h.now.mono_ms += ms;
                h.now.unix_secs += ms / 1000;
            }
            "sweep" => {
                h.engine().sweep(h.now);
            }
            "conservation" => assert!(h.engine().ledger().check_conservation(), "{at}: conservation broken"),
            "balance" => h.balance(&at, &words[1..]),
            "ccr" => h.ccr(&at, line),
            other => panic!("{at}: unknown command `{other}`"),
        }
    }
}

impl Harness {
    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("a `catalog` line comes first")
    }

    fn load(&mut self, c: &Catalog) {
        let engine = Engine::new(EngineConfig::new(&local()), Arc::new(Ledger::new()));
        engine.load_catalog(c, self.now.mono_ms).unwrap();
        self.engine = Some(engine);
    }

    fn account(&self, sub: &str) -> gyro::ledger::AccountView {
        let (kind, data) = subscription(sub);
        let ledger = self.engine().ledger();
        let id = ledger.lookup(kind, data).unwrap_or_else(|| panic!("no account for {sub}"));
        ledger.view(id).unwrap()
    }

    fn balance(&self, at: &str, args: &[&str]) {
        let v = self.account(args[0]);
        let exp = v.currency.exponent;
        assert_eq!(v.balance.0, money(args[1], exp), "{at}: balance");
        for kv in &args[2..] {
            let (k, val) = kv.split_once('=').unwrap();
            let want = money(val, exp);
            match k {
                "reserved" => assert_eq!(v.reserved.0, want, "{at}: reserved"),
                "available" => assert_eq!(v.available.0, want, "{at}: available"),
                _ => panic!("{at}: unknown key {k}"),
            }
        }
    }

    fn ccr(&mut self, at: &str, line: &str) {
        let (req, expect) = line.split_once("->").unwrap_or_else(|| panic!("{at}: missing `->`"));
        let toks = tokens(req);
        let kind = toks[1].as_str();
        let session = toks[2].clone();
        let dup = toks.iter().any(|t| t == "dup");
        let bytes = if dup {
            let mut b = self.last.get(&session).unwrap_or_else(|| panic!("{at}: nothing to resend")).to_vec();
            b[4] |= CommandFlags::RETRANSMIT;
            Bytes::from(b)
        } else {
            let b = self.build(at, kind, &session, &toks[3..]);
            self.last.insert(session.clone(), b.clone());
            b
        };
        let msg = MessageRef::parse(&bytes).unwrap();
        let supported = [ApplicationId::COMMON, ApplicationId::CREDIT_CONTROL];
        if let Err(e) = validate_request(&self.dict, &msg, &supported) {
            panic!("{at}: request does not validate: {}", e.message(&self.dict));
        }
        let mut out = BytesMut::new();
        self.engine().handle(self.now, &msg, &mut out);
        let answer = out.freeze();
        if dup {
            let first = &self.last_answer[&session];
            assert!(
                first == &answer,
                "{at}: a retransmission gets the original answer again, byte for byte\n first: {:02x?}\n again: {:02x?}",
                &first[..],
                &answer[..]
            );
        } else {
            self.last_answer.insert(session.clone(), answer.clone());
        }
        let a = MessageRef::parse(&answer).unwrap_or_else(|| panic!("{at}: answer does not frame"));
        assert_eq!(a.header.end_to_end, msg.header.end_to_end, "{at}: End-to-End echoed");
        assert_eq!(a.header.hop_by_hop, msg.header.hop_by_hop, "{at}: Hop-by-Hop echoed");
        self.expect(at, &a, expect);
    }

    fn build(&mut self, at: &str, kind: &str, session: &str, toks: &[String]) -> Bytes {
        let rtype = match kind {
            "I" => 1,
            "U" => 2,
            "T" => 3,
            "E" => 4,
            _ => panic!("{at}: request type I|U|T|E"),
        };
        let mut num = match rtype {
            1 | 4 => 0,
            _ => self.numbers.get(session).map_or(0, |n| n + 1),
        };
        let mut single: Vec<(String, String)> = Vec::new();
        let mut msccs: Vec<Vec<(String, String)>> = Vec::new();
        let mut in_group = false;
        for t in toks {
            if t == "[" {
                in_group = true;
                msccs.push(Vec::new());
                continue;
            }
            if t == "]" {
                in_group = false;
                continue;
            }
            let (k, v) = t.split_once('=').unwrap_or_else(|| panic!("{at}: `{t}` is not key=value"));
            match k {
                "sub" => self.sub = v.into(),
                "ctx" => self.ctx = if v.contains('@') { v.into() } else { format!("{v}@3gpp.org") },
                "num" => num = v.parse().unwrap(),
                _ if in_group => msccs.last_mut().unwrap().push((k.into(), v.into())),
                _ => single.push((k.into(), v.into())),
            }
        }
        self.numbers.insert(session.into(), num);
        self.e2e += 1;
        let (kind_s, data) = subscription(&self.sub);
        let mut b = BytesMut::new();
        let mut e = Encoder::new(
            &mut b,
            CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE),
            CommandCode::CREDIT_CONTROL,
            ApplicationId::CREDIT_CONTROL,
            self.e2e ^ 0x5555,
            self.e2e,
        );
        e.str(spec::SESSION_ID, session);
        e.str(spec::ORIGIN_HOST, "pgw.test").str(spec::ORIGIN_REALM, "test");
        e.str(spec::DESTINATION_REALM, "gyro.test");
        e.u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(AvpSpec::mandatory(461), &self.ctx.clone());
        e.u32(AvpSpec::mandatory(416), rtype);
        e.u32(AvpSpec::mandatory(415), num);
        let g = e.begin_group(AvpSpec::mandatory(443));
        e.u32(AvpSpec::mandatory(450), kind_s as u32);
        e.str(AvpSpec::mandatory(444), data);
        e.end_group(g);
        let mut action = None;
        for (k, v) in &single {
            if k == "action" {
                action = Some(match v.as_str() {
                    "debit" => 0,
                    "refund" => 1,
                    "check" => 2,
                    "price" => 3,
                    _ => panic!("{at}: action debit|refund|check|price"),
                });
            }
        }
        if let Some(a) = action {
            e.u32(AvpSpec::mandatory(436), a);
        }
        if let Some((_, aoc)) = single.iter().find(|(k, _)| k == "aoc") {
            // TS 32.299 AoC-Request-Type: 1 AoC_FULL, 2 AoC_COST_ONLY.
            e.u32(AvpSpec::tgpp(2055), if aoc == "full" { 1 } else { 2 });
        }
        if rtype == 3 {
            e.u32(AvpSpec::mandatory(295), 1);
        }
        if msccs.is_empty() {
            service_units(&mut e, at, &single);
        } else {
            e.u32(AvpSpec::mandatory(455), 1);
            for m in &msccs {
                let g = e.begin_group(AvpSpec::mandatory(456));
                service_units(&mut e, at, m);
                for (k, v) in m {
                    match k.as_str() {
                        "rg" => {
                            e.u32(AvpSpec::mandatory(432), v.parse().unwrap());
                        }
                        "sid" => {
                            e.u32(AvpSpec::mandatory(439), v.parse().unwrap());
                        }
                        _ => {}
                    }
                }
                e.end_group(g);
            }
        }
        e.finish();
        b.freeze()
    }

    fn expect(&self, at: &str, a: &MessageRef<'_>, expect: &str) {
        let mut words = expect.split_whitespace();
        let want: u32 = words.next().unwrap().parse().unwrap();
        let rc = a.u32(AvpCode::RESULT_CODE);
        assert_eq!(
            rc,
            Some(want),
            "{at}: Result-Code{}",
            a.str(AvpCode::ERROR_MESSAGE).map(|m| format!(" ({m})")).unwrap_or_default()
        );
        let msccs = mscc_facts(a);
        let command = command_facts(a);
        for w in words {
            let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("{at}: `{w}` is not key=value"));
            let (scope, key) = match k.split_once('.') {
                Some((s, k)) => (Some(s), k),
                None => (None, k),
            };
            let facts = match scope {
                Some(s) => {
                    let rg: u32 = s.trim_start_matches("rg").parse().unwrap();
                    msccs
                        .get(&rg)
                        .unwrap_or_else(|| panic!("{at}: no MSCC for rating group {rg} in the answer"))
                }
                None => &command,
            };
            let got = facts.get(key).map(String::as_str).unwrap_or("none");
            assert_eq!(got, v, "{at}: {k}");
        }
    }
}

fn service_units(e: &mut Encoder<'_>, at: &str, kv: &[(String, String)]) {
    let unit = kv.iter().find(|(k, _)| k == "unit").map_or("octets", |(_, v)| v.as_str());
    let put = |e: &mut Encoder<'_>, n: u64| match unit {
        "octets" => {
            e.u64(AvpSpec::mandatory(421), n);
        }
        "time" => {
            e.u32(AvpSpec::mandatory(420), n as u32);
        }
        "events" => {
            e.u64(AvpSpec::mandatory(417), n);
        }
        _ => panic!("{at}: unit octets|time|events"),
    };
    for (k, v) in kv {
        match k.as_str() {
            "req" => {
                let g = e.begin_group(AvpSpec::mandatory(437));
                let n: u64 = v.parse().unwrap();
                if n > 0 {
                    put(e, n);
                }
                e.end_group(g);
            }
            "money" => {
                // RSU{CC-Money{Unit-Value{Value-Digits, Exponent -2}, Currency-Code 978}}.
                let cents = (v.parse::<f64>().unwrap() * 100.0).round() as i64;
                let g = e.begin_group(AvpSpec::mandatory(437));
                let m = e.begin_group(AvpSpec::mandatory(413));
                let uv = e.begin_group(AvpSpec::mandatory(445));
                e.i64(AvpSpec::mandatory(447), cents).i32(AvpSpec::mandatory(429), -2);
                e.end_group(uv);
                e.u32(AvpSpec::mandatory(425), 978);
                e.end_group(m);
                e.end_group(g);
            }
            "before" | "after" => {
                // Usage split at a tariff change (RFC 4006 §8.27 Tariff-Change-Usage).
                let g = e.begin_group(AvpSpec::mandatory(446));
                put(e, v.parse().unwrap());
                e.u32(AvpSpec::mandatory(452), if k == "after" { 1 } else { 0 });
                e.end_group(g);
            }
            "used" => {
                let g = e.begin_group(AvpSpec::mandatory(446));
                put(e, v.parse().unwrap());
                if let Some((_, t)) = kv.iter().find(|(k, _)| k == "tcu") {
                    e.u32(AvpSpec::mandatory(452), if t == "after" { 1 } else { 0 });
                }
                if let Some((_, r)) = kv.iter().find(|(k, _)| k == "reason") {
                    let code = match r.as_str() {
                        "threshold" => 0,
                        "qht" => 1,
                        "final" => 2,
                        "exhausted" => 3,
                        "validity" => 4,
                        _ => panic!("{at}: reason threshold|qht|final|exhausted|validity"),
                    };
                    e.u32(AvpSpec::tgpp(872), code);
                }
                e.end_group(g);
            }
            _ => {}
        }
    }
}

fn u32_of(d: &[u8]) -> u32 {
    u32::from_be_bytes(d.try_into().unwrap())
}

fn unit_facts(avps: AvpIter<'_>, f: &mut HashMap<String, String>) {
    for m in avps.map_while(Result::ok) {
        match (m.code.0, m.vendor) {
            (268, VendorId::IETF) => {
                f.insert("result".into(), u32_of(m.data).to_string());
            }
            (431, VendorId::IETF) => {
                for u in m.members().map_while(Result::ok) {
                    match u.code.0 {
                        420 => {
                            f.insert("granted".into(), u32_of(u.data).to_string());
                        }
                        421 | 417 => {
                            f.insert(
                                "granted".into(),
                                u64::from_be_bytes(u.data.try_into().unwrap()).to_string(),
                            );
                        }
                        451 => {
                            f.insert("ttc".into(), "yes".into());
                        }
                        _ => {}
                    }
                }
            }
            (448, VendorId::IETF) => {
                f.insert("validity".into(), u32_of(m.data).to_string());
            }
            (430, VendorId::IETF) => {
                for u in m.members().map_while(Result::ok) {
                    match u.code.0 {
                        449 => {
                            let name = ["terminate", "redirect", "restrict"][u32_of(u.data) as usize];
                            f.insert("fui".into(), name.into());
                        }
                        438 => {
                            let n = f.get("rules").map_or(0, |v| v.parse::<u32>().unwrap()) + 1;
                            f.insert("rules".into(), n.to_string());
                        }
                        11 => {
                            f.insert("filter".into(), String::from_utf8_lossy(u.data).into_owned());
                        }
                        _ => {}
                    }
                }
            }
            (423, VendorId::IETF) => {
                f.insert("cost".into(), cost_of(&m));
            }
            (868 | 869 | 1226, VendorId::TGPP) => {
                f.insert("threshold".into(), u32_of(m.data).to_string());
            }
            (871, VendorId::TGPP) => {
                f.insert("qht".into(), u32_of(m.data).to_string());
            }
            (2021, VendorId::TGPP) => {
                f.insert("remaining".into(), cost_of(&m));
            }
            (2020, VendorId::TGPP) => {
                f.insert("low".into(), if u32_of(m.data) == 1 { "yes" } else { "no" }.into());
            }
            (422, VendorId::IETF) => {
                f.insert("check".into(), if u32_of(m.data) == 0 { "enough" } else { "no-credit" }.into());
            }
            _ => {}
        }
    }
}

fn cost_of(m: &gyro::diameter::AvpRef<'_>) -> String {
    let uv = m.members().map_while(Result::ok).find(|u| u.code.0 == 445).unwrap();
    let mut digits = 0i64;
    let mut exp = 0i32;
    for x in uv.members().map_while(Result::ok) {
        match x.code.0 {
            447 => digits = i64::from_be_bytes(x.data.try_into().unwrap()),
            429 => exp = i32::from_be_bytes(x.data.try_into().unwrap()),
            _ => {}
        }
    }
    let scale = (-exp) as u32;
    if scale == 0 {
        return digits.to_string();
    }
    let p = 10i64.pow(scale);
    format!("{}.{:0width$}", digits / p, (digits % p).abs(), width = scale as usize)
}

fn mscc_facts(a: &MessageRef<'_>) -> HashMap<u32, HashMap<String, String>> {
    let mut out = HashMap::new();
    for m in a.avps().map_while(Result::ok).filter(|m| m.code.0 == 456) {
        let mut f = HashMap::new();
        unit_facts(m.members(), &mut f);
        let rg =
            m.members().map_while(Result::ok).find(|x| x.code.0 == 432).map_or(u32::MAX, |x| u32_of(x.data));
        out.insert(rg, f);
    }
    out
}

fn command_facts(a: &MessageRef<'_>) -> HashMap<String, String> {
    let mut f = HashMap::new();
    unit_facts(a.avps(), &mut f);
    f.remove("result");
    f
}

fn tokens(s: &str) -> Vec<String> {
    s.replace('[', " [ ").replace(']', " ] ").split_whitespace().map(str::to_owned).collect()
}

fn subscription(s: &str) -> (SubscriptionKind, &str) {
    let (k, d) = s.split_once(':').unwrap();
    let kind = match k {
        "e164" => SubscriptionKind::E164,
        "imsi" => SubscriptionKind::Imsi,
        "sip" => SubscriptionKind::SipUri,
        "nai" => SubscriptionKind::Nai,
        "private" => SubscriptionKind::Private,
        _ => panic!("subscription kind {k}"),
    };
    (kind, if kind == SubscriptionKind::SipUri { s } else { d })
}

fn money(s: &str, exponent: u8) -> i64 {
    let neg = s.starts_with('-');
    let s = s.trim_start_matches('-');
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(frac.len() <= exponent as usize, "{s} has more decimals than the currency");
    let frac = format!("{frac:0<width$}", width = exponent as usize);
    let v = int.parse::<i64>().unwrap() * 10i64.pow(u32::from(exponent)) + frac.parse::<i64>().unwrap_or(0);
    if neg {
        -v
    } else {
        v
    }
}

fn duration_ms(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().unwrap();
    match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => panic!("duration unit ms|s|m|h"),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` → Unix seconds (days-from-civil, proleptic Gregorian).
fn unix(s: &str) -> u64 {
    let p = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (p(0..4), p(5..7), p(8..10));
    let (hh, mm, ss) = (p(11..13), p(14..16), p(17..19));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + hh * 3600 + mm * 60 + ss) as u64
}
