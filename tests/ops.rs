//! Operations (issue 7): `gyro serve`'s HTTP listener — metrics scraped and parsed after a
//! scripted session mix (the counters match the traffic sent), the probes, and the admin API's
//! invoice endpoints with their errors. Real processes on loopback: `gyro serve` and `gyro ccr`
//! as a Diameter client.

#[path = "common/admin.rs"]
mod admin;
mod common;
#[path = "common/serve.rs"]
mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serve::Gyro;

use admin::{request, TOKEN};

/// One sample of the text exposition format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (0.0.4) strictly enough to catch a malformed line: every
/// non-comment line is `name{l="v",...} value`, and every family has HELP and TYPE.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            typed.insert(it.next().unwrap().to_owned());
            let kind = it.next().unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), HashMap::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(&name);
        assert!(typed.contains(family), "no TYPE line before {line}");
        out.push(Sample { name, labels, value });
    }
    out
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// A minimal HTTP/1.1 GET on loopback (bounded), returning (status, body).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    request(addr, "GET", path, token, None)
}

/// A POST with a JSON (or other) body.
fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    request(addr, "POST", path, Some(TOKEN), Some(body))
}

/// `gyro ccr --script` against `addr`; asserts it met every expectation.
fn ccr_script(addr: SocketAddr, subscriber: &str, script: &str, dir: &Path) {
    let file = dir.join(format!("{}.script", subscriber.replace(':', "_")));
    std::fs::write(&file, script).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gyro"))
        .args(["ccr", "--server", &addr.to_string(), "--subscriber", subscriber, "--script"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gyro ccr failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start(dir: &Path) -> (Gyro, SocketAddr) {
    admin::start_with(dir, "[diameter]\nallowed_peers = [\"ccr.gyro.test\", \"pgw.absent.test\"]\n")
}

#[test]
fn metrics_count_the_traffic_sent_and_probes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (gyro, http) = start(dir.path());
    assert_eq!(get(http, "/healthz", None).0, 200);
    // Ready once the listeners are bound: the log line the harness waits for comes from the
    // bind, a moment before gyro marks itself ready, so poll (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = get(http, "/readyz", None);
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((status, body.contains("\"ready\":true")), (200, true), "{body}");

    // Bob (on_file): a whole data session, charged in money. Then three refusals.
    ccr_script(
        gyro.addr,
        "e164:491700000002",
        "initial rg=10 requested=0 expect=2001\n\
         update rg=10 used=1048576 requested=0 expect=2001\n\
         terminate rg=10 used=524288 expect=2001\n",
        dir.path(),
    );
    ccr_script(gyro.addr, "e164:491700000003", "initial rg=10 requested=0 expect=4012\n", dir.path());
    ccr_script(gyro.addr, "e164:491700000004", "initial rg=10 requested=0 expect=4010\n", dir.path());
    ccr_script(gyro.addr, "e164:491799999999", "initial rg=10 requested=0 expect=5030\n", dir.path());

    let (status, text) = get(http, "/metrics", None);
    assert_eq!(status, 200);
    let m = parse(&text);
    let requests = |t: &str, rc: &str| {
        value(
            &m,
            "gyro_diameter_requests_total",
            &[("command", "CCR"), ("request_type", t), ("result_code", rc)],
        )
    };
    assert_eq!(requests("initial", "2001"), Some(1.0), "{text}");
    assert_eq!(requests("update", "2001"), Some(1.0));
    assert_eq!(requests("termination", "2001"), Some(1.0));
    assert_eq!(requests("initial", "4012"), Some(1.0));
    assert_eq!(requests("initial", "4010"), Some(1.0));
    assert_eq!(requests("initial", "5030"), Some(1.0));
    let cer = value(&m, "gyro_diameter_requests_total", &[("command", "CER"), ("result_code", "2001")]);
    assert_eq!(cer, Some(4.0), "one capabilities exchange per gyro ccr run");
    // Every answered CCR is in the latency histogram.
    assert_eq!(value(&m, "gyro_diameter_request_duration_seconds_count", &[("command", "CCR")]), Some(6.0));
    assert_eq!(value(&m, "gyro_sessions_open", &[]), Some(0.0));
    assert_eq!(value(&m, "gyro_reservations_open", &[]), Some(0.0));
    assert!(value(&m, "gyro_granted_volume_bytes_total", &[]).unwrap() > 0.0);
    assert!(
        value(&m, "gyro_debited_money_total", &[("currency", "EUR")]).unwrap() > 0.0,
        "Bob paid in money"
    );
    assert_eq!(value(&m, "gyro_diameter_peer_up", &[("peer", "pgw.absent.test")]), Some(0.0));
    assert!(value(&m, "gyro_journal_fsync_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert!(value(&m, "gyro_journal_records_total", &[]).unwrap() >= 3.0);
    assert_eq!(value(&m, "gyro_overload_shed_total", &[]), Some(0.0));
    assert!(value(&m, "gyro_config_info", &[("catalog", "embedded demo")]).is_some());
    assert!(value(&m, "process_resident_memory_bytes", &[]).unwrap() > 0.0);
    // Histogram buckets are cumulative and end at the count.
    let buckets: Vec<f64> = m
        .iter()
        .filter(|s| s.name == "gyro_diameter_request_duration_seconds_bucket" && s.labels["command"] == "CCR")
        .map(|s| s.value)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]) && buckets.last() == Some(&6.0), "{buckets:?}");

    // Bob's settlement reaches the metrics once the worker is done.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = parse(&get(http, "/metrics", None).1);
        let paid = value(&m, "gyro_settlement_payments_total", &[("outcome", "paid")]);
        let settled = value(&m, "gyro_settlement_settled_total", &[]);
        if paid == Some(1.0) && settled == Some(1.0) {
            assert_eq!(value(&m, "gyro_settlement_queue_depth", &[]), Some(0.0));
            assert_eq!(value(&m, "gyro_emails_sent_total", &[]), Some(2.0), "invoice and confirmation");
            break;
        }
        assert!(Instant::now() < deadline, "not settled: paid {paid:?}, settled {settled:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_admin_api_serves_invoices_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (gyro, http) = start(dir.path());
    ccr_script(
        gyro.addr,
        "e164:491700000002",
        "initial rg=10 requested=0 expect=2001\nterminate rg=10 used=2097152 expect=2001\n",
        dir.path(),
    );
    // Authentication first, on every admin endpoint.
    let (status, body) = get(http, "/v1/invoices", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"field\":\"Authorization\""), "{body}");
    assert_eq!(get(http, "/v1/invoices", Some("wrong-token-wrong-token")).0, 401);

    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let (status, body) = get(http, "/v1/invoices", Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !v["invoices"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(Instant::now() < deadline, "no invoice listed: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let invoice = &list["invoices"][0];
    let number = invoice["number"].as_str().unwrap().to_owned();
    assert_eq!(invoice["paid"], true, "{list}");
    assert_eq!(invoice["buyer_id"], "c-bob");
    assert_eq!(list["next_after"], serde_json::Value::Null);

    let (status, body) = get(http, &format!("/v1/invoices/{number}"), Some(TOKEN));
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["number"], number.as_str());
    assert_eq!(doc["totals"]["payable_amount"], "0.00");
    let (status, xml) = get(http, &format!("/v1/invoices/{number}?format=ubl"), Some(TOKEN));
    assert_eq!(status, 200);
    assert!(xml.starts_with("<?xml") && xml.contains(&format!("<cbc:ID>{number}</cbc:ID>")), "{xml}");

    // Bad input: 4xx with a JSON body naming the field.
    for (path, status, field) in [
        (format!("/v1/invoices/{number}?format=pdf"), 400, "format"),
        ("/v1/invoices/GYR-2026-999999".to_owned(), 404, "number"),
        ("/v1/invoices/..%2Fgyro".to_owned(), 400, "number"),
        ("/v1/invoices?limit=0".to_owned(), 400, "limit"),
        ("/v1/invoices?limit=many".to_owned(), 400, "query"),
        ("/v1/invoices?colour=red".to_owned(), 400, "query"),
    ] {
        let (got, body) = get(http, &path, Some(TOKEN));
        assert_eq!(got, status, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"));
        assert_eq!(v["field"], field, "{path}: {body}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    let (status, body) = get(http, "/v1/nothing-here", Some(TOKEN));
    assert_eq!(status, 404);
    assert!(body.contains("no such endpoint: /v1/nothing-here"), "{body}");
    // Payments: Bob's card charge, by the sandbox; no dead letters.
    let payments = json(&get(http, "/v1/payments", Some(TOKEN)).1);
    let payment = &payments["payments"][0];
    assert_eq!(
        (payment["number"].as_str(), payment["status"].as_str()),
        (Some(number.as_str()), Some("paid"))
    );
    assert!(payment["payment_id"].as_str().unwrap().starts_with("sbx_pay_"), "{payment}");
    assert_eq!(payment["total"], doc["totals"]["tax_inclusive_amount"]);
    assert_eq!(json(&get(http, "/v1/dead-letters", Some(TOKEN)).1)["payments"], serde_json::json!([]));
    assert_eq!(
        json(&get(http, "/v1/payments?status=dead_letter", Some(TOKEN)).1)["payments"],
        serde_json::json!([])
    );
    let (status, body) = get(http, "/v1/payments?status=lost", Some(TOKEN));
    assert_eq!((status, json(&body)["field"].as_str()), (400, Some("status")), "{body}");
    // Paging: after the only invoice there is nothing.
    let (_, body) = get(http, &format!("/v1/invoices?after={number}"), Some(TOKEN));
    assert!(body.contains("\"invoices\":[]"), "{body}");
}

#[test]
fn a_bad_http_section_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gyro.toml");
    std::fs::write(&config, "[http]\nlisten = \"not-an-address\"\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_gyro")).args(["config", "check"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The TOML error points at the line and the key, with serde's reason.
    assert!(err.contains("listen = \"not-an-address\"") && err.contains("invalid socket address"), "{err}");
}

/// The example configurations under `deploy/` (systemd, container, and the Kubernetes ConfigMap,
/// which `deploy/check.sh` keeps equal to the container's) are ones gyro accepts.
#[test]
fn the_deploy_configurations_pass_config_check() {
    for file in ["deploy/gyro.toml", "deploy/docker/gyro.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let out =
            Command::new(env!("CARGO_BIN_EXE_gyro")).args(["config", "check"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The account endpoints: read, top up (idempotent by key), adjust, bar and unbar — each
/// journaled, so a restart keeps it — and their errors, each naming the field.
#[test]
fn the_admin_api_changes_accounts_durably_and_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gyro, http) = start(dir.path());
    let alice = "/v1/accounts/e164:491700000001";
    let (status, body) = get(http, alice, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let a = json(&body);
    assert_eq!(
        (a["balance"].as_str(), a["status"].as_str(), a["funding"].as_str()),
        (Some("50.00"), Some("active"), Some("prepaid"))
    );
    assert_eq!(
        json(&get(http, &format!("/v1/accounts/{}", a["id"]), Some(TOKEN)).1)["customer"],
        a["customer"]
    );

    let top_up = format!("{alice}/top-ups");
    let (status, body) = post(http, &top_up, r#"{"amount": "10.00", "key": "t-1"}"#);
    assert_eq!((status, json(&body)["balance"].as_str()), (200, Some("60.00")), "{body}");
    let (status, body) = post(http, &top_up, r#"{"amount": "10.00", "key": "t-1"}"#);
    assert_eq!(
        (status, json(&body)["balance"].as_str()),
        (200, Some("60.00")),
        "a retry changes nothing: {body}"
    );
    let (status, body) = post(http, &top_up, r#"{"amount": "11.00", "key": "t-1"}"#);
    assert_eq!((status, json(&body)["field"].as_str()), (409, Some("key")), "{body}");
    let (status, body) = post(
        http,
        &format!("{alice}/adjustments"),
        r#"{"amount": "-2.5", "key": "a-1", "reason": "goodwill reversed"}"#,
    );
    assert_eq!((status, json(&body)["balance"].as_str()), (200, Some("57.50")), "{body}");

    for (path, body, status, field) in [
        (top_up.as_str(), r#"{"amount": "0.001", "key": "t-2"}"#, 400, "amount"),
        (top_up.as_str(), r#"{"amount": "ten", "key": "t-2"}"#, 400, "amount"),
        (top_up.as_str(), r#"{"amount": "-1", "key": "t-2"}"#, 400, "amount"),
        (top_up.as_str(), r#"{"amount": "1"}"#, 400, "body"),
        (top_up.as_str(), r#"{"amount": "1", "key": "has space"}"#, 400, "key"),
        (top_up.as_str(), r#"{"amount": "1", "key": "k", "colour": "red"}"#, 400, "body"),
        ("/v1/accounts/e164:499999999999/top-ups", r#"{"amount": "1", "key": "t-3"}"#, 404, "account"),
        ("/v1/accounts/bogus/top-ups", r#"{"amount": "1", "key": "t-3"}"#, 400, "account"),
        ("/v1/accounts/e164:491700000001/adjustments", r#"{"amount": "0", "key": "a-2"}"#, 400, "amount"),
    ] {
        let (got, answer) = post(http, path, body);
        assert_eq!((got, json(&answer)["field"].as_str()), (status, Some(field)), "{path} {body}: {answer}");
    }

    // Barred: the next session is refused 4010; unbarred: granted again.
    let (status, body) = post(http, &format!("{alice}/bar"), "");
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("barred")), "{body}");
    ccr_script(gyro.addr, "e164:491700000001", "initial rg=10 requested=0 expect=4010\n", dir.path());
    assert_eq!(json(&post(http, &format!("{alice}/unbar"), "").1)["status"], "active");
    let (status, body) = post(http, "/v1/accounts/e164:491700000004/bar", "");
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("barred")), "Dave stays barred: {body}");
    ccr_script(
        gyro.addr,
        "e164:491700000001",
        "initial rg=10 requested=0 expect=2001\nterminate rg=10 used=0 expect=2001\n",
        dir.path(),
    );

    // The changes are in the journal: a restart keeps them.
    assert!(gyro.terminate().success());
    let config = dir.path().join("gyro.toml");
    let gyro = Gyro::start(&config, &dir.path().join("data"), dir.path().join("gyro-2.log"));
    let http = serve::http_addr(&gyro.log_text()).unwrap();
    let a = json(&get(http, alice, Some(TOKEN)).1);
    assert_eq!((a["balance"].as_str(), a["status"].as_str()), (Some("57.50"), Some("active")), "{a}");
    let (status, body) = post(http, &top_up, r#"{"amount": "10.00", "key": "t-1"}"#);
    assert_eq!(
        (status, json(&body)["balance"].as_str()),
        (200, Some("57.50")),
        "the key outlives a restart: {body}"
    );

    // Plans: listed, and a catalog validated without loading it.
    let plans = json(&get(http, "/v1/plans", Some(TOKEN)).1);
    assert!(plans["plans"].as_array().unwrap().iter().any(|p| p["id"] == "mobile-basic"), "{plans}");
    let demo = include_str!("../src/catalog/demo.toml");
    let (status, body) = post(http, "/v1/plans/validate", demo);
    assert_eq!((status, json(&body)["valid"].as_bool()), (200, Some(true)), "{body}");
    let (status, body) = post(http, "/v1/plans/validate", "[[plans]]\nid = 7\n");
    assert_eq!((status, json(&body)["field"].as_str()), (422, Some("catalog")), "{body}");
}

/// `/openapi.json` documents every route of the listener and every documented operation
/// exists (answered by its handler, not by the 404 fallback).
#[test]
fn the_openapi_document_matches_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (_gyro, http) = start(dir.path());
    let (status, body) = get(http, "/openapi.json", None);
    assert_eq!(status, 200);
    let doc = json(&body);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
            let concrete = path
                .replace("{account}", "0")
                .replace("{number}", "GYR-2026-000001")
                .replace("{session_id}", "pgw.test%3B1%3B1");
            let body = (method == "post").then_some(r#"{"amount": "1", "key": "openapi-check"}"#);
            let (status, answer) = request(http, &method.to_uppercase(), &concrete, Some(TOKEN), body);
            assert!(!answer.contains("no such endpoint"), "{method} {path}: {status} {answer}");
            assert_ne!(status, 405, "{method} {path}");
        }
    }
    // Every route in the router is documented.
    let source = include_str!("../src/http/mod.rs");
    for line in source.lines().filter(|l| l.trim_start().starts_with(".route(\"")) {
        let path = line.split('"').nth(1).unwrap();
        let method = if line.contains("post(") { "POST" } else { "GET" };
        assert!(
            documented.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} is not in openapi.json"
        );
    }
}

/// `gyro account|invoice|plan` call the same API: JSON on stdout, the API's error naming the
/// field on stderr with exit 1, usage and token problems exit 2.
#[test]
fn the_cli_calls_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let (_gyro, http) = start(dir.path());
    let api = format!("http://{http}");
    let token = dir.path().join("admin-token");
    let gyro = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gyro"))
            .args(args)
            .args(["--api", &api, "--token-file"])
            .arg(&token)
            .env_remove("GYRO_ADMIN_TOKEN")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = gyro(&["account", "show", "e164:491700000001"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["balance"], "50.00");
    let (code, out, _) =
        gyro(&["account", "top-up", "e164:491700000001", "--amount", "1.5", "--key", "cli-1"]);
    assert_eq!((code, json(&out)["balance"].as_str()), (0, Some("51.50")));
    let (code, out, _) =
        gyro(&["account", "adjust", "0", "--amount", "-0.50", "--key", "cli-2", "--reason", "test"]);
    assert_eq!((code, json(&out)["balance"].as_str()), (0, Some("51.00")));
    let (code, _, err) = gyro(&["account", "top-up", "0", "--amount", "0.001", "--key", "cli-3"]);
    assert_eq!(code, 1);
    assert!(err.contains("400") && err.contains("amount:"), "{err}");
    let (code, out, _) = gyro(&["account", "bar", "e164:491700000002"]);
    assert_eq!((code, json(&out)["status"].as_str()), (0, Some("barred")));
    let (code, out, _) = gyro(&["invoice", "list"]);
    assert_eq!((code, json(&out)["invoices"].is_array()), (0, true));
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/catalog/demo.toml");
    let (code, out, err) = gyro(&["plan", "validate", demo.to_str().unwrap()]);
    assert_eq!((code, json(&out)["valid"].as_bool()), (0, Some(true)), "{err}");
    assert_eq!(json(&out)["change_allowed"].as_bool(), Some(true), "the demo may replace itself");
    // Catalog changes (tests/reload.rs has their rules): a customer, an account, a close.
    let (code, out, err) =
        gyro(&["customer", "create", r#"{"id":"c-cli","name":"CLI","plan":"mobile-basic"}"#]);
    assert_eq!((code, json(&out)["id"].as_str()), (0, Some("c-cli")), "{err}");
    let body = dir.path().join("account.json");
    std::fs::write(
        &body,
        r#"{"customer":"c-cli","subscription_ids":["e164:491708888888"],"funding":"prepaid"}"#,
    )
    .unwrap();
    let (code, out, err) = gyro(&["account", "create", &format!("@{}", body.display())]);
    assert_eq!((code, json(&out)["id"].as_u64()), (0, Some(5)), "{err}");
    let (code, _, err) = gyro(&["account", "update", "5", r#"{"funding":"on_file"}"#]);
    assert_eq!(code, 1);
    assert!(err.contains("422") && err.contains("funding"), "{err}");
    let (code, out, err) = gyro(&["account", "close", "e164:491708888888"]);
    assert_eq!((code, json(&out)["status"].as_str()), (0, Some("closed")), "{err}");
    let (code, out, err) = gyro(&["customer", "show", "c-cli"]);
    assert_eq!((code, json(&out)["accounts"].clone()), (0, serde_json::json!([5])), "{err}");
    let (code, out, err) = gyro(&["catalog", "show"]);
    assert!(code == 0 && out.contains("c-cli") && out.contains("closed = true"), "{err}");
    let shown = dir.path().join("in-force.toml");
    std::fs::write(&shown, &out).unwrap();
    let (code, out, err) = gyro(&["catalog", "load", shown.to_str().unwrap()]);
    assert_eq!(
        (code, json(&out)["changed"].as_bool()),
        (0, Some(false)),
        "the same content is no change: {err}"
    );
    let (code, out, err) = gyro(&["reload"]);
    assert_eq!((code, json(&out)["catalog"]["changed"].as_bool()), (0, Some(false)), "{err}");
    // A wrong token is the API's refusal (1); no token at all is a usage error (2).
    std::fs::write(dir.path().join("wrong"), "wrong-token-wrong-token").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gyro"))
        .args(["account", "show", "0", "--api", &api, "--token-file"])
        .arg(dir.path().join("wrong"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Authorization"));
    let out = Command::new(env!("CARGO_BIN_EXE_gyro"))
        .args(["account", "show", "0", "--api", &api])
        .env_remove("GYRO_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GYRO_ADMIN_TOKEN"));
}

/// The session endpoints: a session opened by a CCR-I is shown by its Session-Id (percent-
/// encoded in the path) with its client's Origin-Host, open, rating group 10 granted, and in
/// its account's list; after its CCR-T it is shown closed (it is kept for retransmissions
/// until `closed_retention_ms`, then 404). `gyro session list|show` call the same endpoints.
#[test]
fn the_admin_api_shows_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (gyro, http) = start(dir.path());
    let id = "ccr.gyro.test;1;ops-1";
    let path = "/v1/sessions/ccr.gyro.test%3B1%3Bops-1";
    ccr_script(
        gyro.addr,
        "e164:491700000001",
        &format!("session={id}\ninitial rg=10 requested=0 expect=2001\n"),
        dir.path(),
    );
    let (status, body) = get(http, path, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let s = json(&body);
    assert_eq!(
        (s["session_id"].as_str(), s["origin_host"].as_str(), s["state"].as_str()),
        (Some(id), Some("ccr.gyro.test"), Some("open")),
        "{s}"
    );
    let rg = &s["rating_groups"][0];
    assert_eq!((rg["rating_group"].as_u64(), rg["open"].as_bool()), (Some(10), Some(true)), "{s}");
    assert!(rg["granted_units"].as_u64().is_some_and(|u| u > 0), "{s}");
    assert_eq!(rg["last_decision"]["result_code"], 2001, "{s}");

    let (status, body) = get(http, "/v1/sessions?account=e164:491700000001", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let list = json(&body);
    assert_eq!(list["sessions"][0]["session_id"].as_str(), Some(id), "{list}");
    assert_eq!(list["next_after"], serde_json::Value::Null);
    let (_, body) = get(http, "/v1/sessions?account=e164:491700000002", Some(TOKEN));
    assert_eq!(json(&body)["sessions"].as_array().map(Vec::len), Some(0), "Bob has none: {body}");

    for (path, status, field) in [
        ("/v1/sessions/ccr.gyro.test%3B1%3Bnone", 404, "session_id"),
        ("/v1/sessions?limit=0", 400, "limit"),
        ("/v1/sessions?after=xyz", 400, "after"),
        ("/v1/sessions?account=e164:499999999999", 404, "account"),
        ("/v1/sessions?colour=red", 400, "query"),
    ] {
        let (got, answer) = get(http, path, Some(TOKEN));
        assert_eq!((got, json(&answer)["field"].as_str()), (status, Some(field)), "{path}: {answer}");
    }

    // The CLI, then the session's end.
    let api = format!("http://{http}");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gyro"))
            .args(args)
            .args(["--api", &api, "--token-file"])
            .arg(dir.path().join("admin-token"))
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = cli(&["session", "show", id]);
    assert_eq!((code, json(&out)["state"].as_str()), (Some(0), Some("open")), "{out}");
    let (code, out) = cli(&["session", "list", "--account", "0", "--limit", "5"]);
    assert_eq!((code, json(&out)["sessions"][0]["session_id"].as_str()), (Some(0), Some(id)), "{out}");
    ccr_script(
        gyro.addr,
        "e164:491700000001",
        &format!("session={id}\nterminate rg=10 used=1000 number=1 expect=2001\n"),
        dir.path(),
    );
    let s = json(&get(http, path, Some(TOKEN)).1);
    assert_eq!((s["state"].as_str(), s["request_number"].as_u64()), (Some("closed"), Some(1)), "{s}");
    assert_eq!(s["rating_groups"][0]["open"], false, "{s}");
}
