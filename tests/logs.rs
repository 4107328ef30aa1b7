//! Log lines of `gyro serve` as an operator's collector sees them: with `[log] format = "json"`
//! and `level = "debug"` every line is one JSON object with a timestamp and a level, and each
//! credit-control decision is a line with the Session-Id, the Result-Code, why, and the
//! request's ids (peer, Hop-by-Hop, End-to-End): the same ids `gyro ccr` saw on the wire.

#[path = "common/serve.rs"]
mod serve;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use serve::Gyro;

/// One prepaid account with money, one with none (for a 4012).
const CATALOG: &str = r#"
[[plans]]
id = "p"
name = "P"
currency = "EUR"
  [[plans.services]]
  name = "data"
  contexts = [32251]
  unit = "octets"
  price = "0.01"
  per = 1048576
  increment = 1024
  quota = 10485760
  validity_time = 3600
[[customers]]
id = "c"
name = "C"
plan = "p"
[[accounts]]
customer = "c"
subscription_ids = ["e164:491700000001"]
funding = "prepaid"
balance = "10.00"
[[accounts]]
customer = "c"
subscription_ids = ["e164:491700000002"]
funding = "prepaid"
balance = "0.00"
"#;

/// `gyro ccr` sends one CCR-I; returns its stdout, which shows the answer's ids (an answer
/// carries its request's Hop-by-Hop and End-to-End).
fn ccr_initial(gyro: &Gyro, subscriber: &str, session: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gyro"))
        .args(["ccr", "--server", &gyro.addr.to_string(), "--type", "initial"])
        .args(["--subscriber", subscriber, "--session-id", session])
        .args(["--context", "32251@3gpp.org", "--rg", "10", "--requested", "0"])
        .args(["--timeout-ms", "10000"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `hbh=0x…` and `e2e=0x…` of the answer line `gyro ccr` prints.
fn wire_ids(ccr_out: &str) -> (String, String) {
    let line = ccr_out.lines().find(|l| l.starts_with("<<< ")).unwrap_or_else(|| panic!("{ccr_out}"));
    let field = |name: &str| {
        let at = line.find(name).unwrap_or_else(|| panic!("{name} in {line}")) + name.len();
        line[at..].split_whitespace().next().unwrap().to_owned()
    };
    (field("hbh="), field("e2e="))
}

/// The log's lines, each parsed as a JSON object with a timestamp and a level.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            assert!(v["timestamp"].as_str().is_some_and(|t| t.contains('T')), "timestamp: {l}");
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap_or("")),
                "level: {l}"
            );
            v
        })
        .collect()
}

/// The line with `message` for `session`.
fn line<'a>(lines: &'a [Value], message: &str, session: &str) -> &'a Value {
    lines
        .iter()
        .find(|v| v["message"] == message && v["session"] == session)
        .unwrap_or_else(|| panic!("no {message:?} line for {session}"))
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let catalog = dir.join("catalog.toml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let config = dir.join("gyro.toml");
    let text = format!(
        "[charging]\ncatalog = \"{}\"\n\n[log]\nlevel = \"debug\"\nformat = \"json\"\n",
        catalog.display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn json_logs_at_debug_carry_each_decision_with_its_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut gyro =
        Gyro::start_with_rust_log(&config, &dir.path().join("data"), dir.path().join("gyro.log"), None);

    let granted = ccr_initial(&gyro, "e164:491700000001", "pgw.test;1;granted");
    let broke = ccr_initial(&gyro, "e164:491700000002", "pgw.test;1;broke");
    let unknown = ccr_initial(&gyro, "e164:491700000099", "pgw.test;1;unknown");
    assert!(gyro.terminate().success());
    let lines = json_lines(&gyro.log_text());

    // A grant: the rating group's decision and the command-level answer, both with the ids of
    // the request on the wire and the peer's Origin-Host (`gyro ccr`'s default).
    let (hbh, e2e) = wire_ids(&granted);
    let decision = line(&lines, "rating group decision", "pgw.test;1;granted");
    let answer = line(&lines, "credit-control answer", "pgw.test;1;granted");
    for v in [decision, answer] {
        assert_eq!(v["level"], "DEBUG", "{v}");
        assert_eq!(v["request"], "Initial", "{v}");
        assert_eq!(v["number"], 0, "{v}");
        assert_eq!(v["result"], 2001, "{v}");
        assert_eq!(v["span"]["hbh"], hbh.as_str(), "{v}");
        assert_eq!(v["span"]["e2e"], e2e.as_str(), "{v}");
        assert_eq!(v["span"]["peer"], "ccr.gyro.test", "{v}");
    }
    assert_eq!(decision["rating_group"], 10, "{decision}");
    assert_eq!(decision["granted"], 10_485_760, "{decision}");
    assert_eq!(decision["unit"], "Octets", "{decision}");
    // 10 MiB at 0.01 EUR per MiB: ten cents held.
    assert_eq!((&decision["reserved"], &decision["currency"]), (&Value::from(10), &Value::from("EUR")));
    assert_eq!(decision["why"], "granted the service's quota", "{decision}");

    // No money: 4012 for the rating group and the command, and why.
    let (hbh, _) = wire_ids(&broke);
    let decision = line(&lines, "rating group decision", "pgw.test;1;broke");
    assert_eq!(decision["result"], 4012, "{decision}");
    assert_eq!(decision["span"]["hbh"], hbh.as_str(), "{decision}");
    assert!(decision["why"].as_str().unwrap().starts_with("4012: "), "{decision}");
    assert_eq!(line(&lines, "credit-control answer", "pgw.test;1;broke")["result"], 4012);

    // No account: decided at the command level only.
    let answer = line(&lines, "credit-control answer", "pgw.test;1;unknown");
    assert_eq!(answer["result"], 5030, "{answer}");
    assert_eq!(answer["span"]["hbh"], wire_ids(&unknown).0.as_str(), "{answer}");
    assert!(answer["why"].as_str().unwrap().starts_with("5030: "), "{answer}");

    // The lines of the rest of the run are JSON too, with their fields at the top level.
    let listening = lines.iter().find(|v| v["message"] == "gyro listening for Diameter").unwrap();
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["addr"], gyro.addr.to_string());
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gyro.toml");
    std::fs::write(&config, "[log]\nformat = \"xml\"\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_gyro")).arg("config").arg("check").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.format") && err.contains("xml"), "{err}");
    let out =
        Command::new(env!("CARGO_BIN_EXE_gyro")).args(["serve", "--log-format", "xml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.format"));
}
