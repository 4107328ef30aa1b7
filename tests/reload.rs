//! Live reload and catalog changes (issue 7), against `gyro serve` as a child process: a new
//! price by SIGHUP reaches the open session (RAR) and its next update is charged by it; a bad
//! catalog and an incompatible one are refused by `POST /v1/reload` naming the entry, and
//! nothing changes; a restart keeps the catalog in force even when the file is bad; customers
//! and accounts are created, updated and closed through the admin API, and survive a restart.
//! Every step is bounded (the HTTP client's timeouts, `common::Client`'s receive timeout).

#[path = "common/admin.rs"]
mod admin;
mod common;
#[path = "common/serve.rs"]
mod serve;

use std::path::Path;
use std::time::Duration;

use admin::{answer_request, exchange, http, http_async, http_text, start_with, MIB};
use common::{result_code, Client};
use gyro::catalog::Catalog;
use gyro::diameter::CommandCode;
use gyro::tools::ccr::RequestType;

const ERIN: &str = "e164:491700000005";
/// The demo's mobile-flex data price line (the only one with this comment).
const FLEX_DATA: &str = "0.50 EUR lasts 5 MiB";

fn catalog_config(dir: &Path) -> String {
    let catalog = dir.join("catalog.toml");
    std::fs::write(&catalog, Catalog::demo_toml()).unwrap();
    format!("[charging]\ncatalog = {:?}\n", catalog.display().to_string())
}

fn write_catalog(dir: &Path, text: &str) {
    std::fs::write(dir.join("catalog.toml"), text).unwrap();
}

/// The demo catalog with mobile-flex data at `price`.
fn flex_priced(price: &str) -> String {
    let lines: Vec<String> = Catalog::demo_toml()
        .lines()
        .map(|l| if l.contains(FLEX_DATA) { format!("  price = {price:?}") } else { l.to_owned() })
        .collect();
    let text = lines.join("\n");
    assert_ne!(
        text.trim_end(),
        Catalog::demo_toml().trim_end(),
        "the demo still has the line this test edits"
    );
    text
}

fn version(api: std::net::SocketAddr) -> String {
    let (status, plans) = http(api, "GET", "/v1/plans", None);
    assert_eq!(status, 200, "{plans}");
    plans["catalog_digest"].as_str().unwrap().to_owned()
}

fn metric_line(api: std::net::SocketAddr, prefix: &str) -> String {
    let (_, text) = http_text(api, "GET", "/metrics", None);
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_price_by_sighup_reaches_open_sessions_and_bad_catalogs_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let extra = catalog_config(dir.path());
    let (mut gyro, api) = start_with(dir.path(), &extra);
    let v1 = version(api);
    let mut c = Client::open(gyro.addr).await;
    let id = "pgw.test;1;erin";
    let cca = exchange(&mut c, id, 0, ERIN, RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001));

    // Half the price, by SIGHUP: the session's client is asked to re-authorise (RAR), and the
    // usage it reports next is charged at the new price: 1 MiB at 0.05 of Erin's 0.50.
    write_catalog(dir.path(), &flex_priced("0.05"));
    gyro.hangup();
    answer_request(&mut c, CommandCode::RE_AUTH, id, 2001).await;
    let cca = exchange(&mut c, id, 1, ERIN, RequestType::Update, Some(MIB)).await;
    assert_eq!(result_code(&cca), Some(2001));
    let (_, erin) = http_async(api, "GET", format!("/v1/accounts/{ERIN}"), None).await.unwrap();
    assert_eq!(erin["balance"], "0.45", "{erin}");
    let v2 = version(api);
    assert_ne!(v1, v2, "the new catalog is in force");
    assert!(metric_line(api, "gyro_reloads_total{outcome=\"ok\"}").ends_with(" 1"));
    assert!(metric_line(api, "gyro_config_info").contains(&format!("version=\"{v2}\"")));

    // A bad plan: refused, naming the plan and the field; nothing changes.
    write_catalog(dir.path(), &flex_priced("-1"));
    let (status, body) = http_async(api, "POST", "/v1/reload".into(), None).await.unwrap();
    assert_eq!((status, body["field"].as_str()), (422, Some("charging.catalog")), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("mobile-flex") && error.contains("price"), "{error}");
    assert_eq!(version(api), v2);
    assert!(metric_line(api, "gyro_reloads_total{outcome=\"failed\"}").ends_with(" 1"));
    // An account removed: valid on its own, but not a change of the catalog in force.
    let without_erin = flex_priced("0.05");
    let without_erin = &without_erin[..without_erin.rfind("[[accounts]]").unwrap()];
    write_catalog(dir.path(), without_erin);
    let (status, body) = http_async(api, "POST", "/v1/reload".into(), None).await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cannot be removed"), "{body}");
    assert_eq!(version(api), v2);
    // Still served at the price in force.
    let cca = exchange(&mut c, id, 2, ERIN, RequestType::Update, Some(MIB)).await;
    assert_eq!(result_code(&cca), Some(2001));
    let (_, erin) = http_async(api, "GET", format!("/v1/accounts/{ERIN}"), None).await.unwrap();
    assert_eq!(erin["balance"], "0.40", "{erin}");

    // A restart with the bad file: the data directory's catalog in force stays.
    write_catalog(dir.path(), &flex_priced("-1"));
    drop(c);
    gyro.terminate();
    let (gyro, api) = start_with(dir.path(), &extra);
    assert!(gyro.log_text().contains("the catalog file was refused"), "{}", gyro.log_text());
    assert_eq!(version(api), v2);
    let (_, erin) = http_async(api, "GET", format!("/v1/accounts/{ERIN}"), None).await.unwrap();
    assert_eq!(erin["balance"], "0.40", "{erin}");
    let mut c = Client::open(gyro.addr).await;
    let cca = exchange(&mut c, id, 3, ERIN, RequestType::Terminate, Some(MIB)).await;
    assert_eq!(result_code(&cca), Some(2001));
    let (_, erin) = http_async(api, "GET", format!("/v1/accounts/{ERIN}"), None).await.unwrap();
    assert_eq!(erin["balance"], "0.35", "the recovered session is charged at the price in force: {erin}");

    // The file fixed and the server restarted with it: installed at start like a reload.
    write_catalog(dir.path(), &flex_priced("0.07"));
    drop(c);
    let mut gyro = gyro;
    gyro.terminate();
    let (_gyro, api) = start_with(dir.path(), &extra);
    let v3 = version(api);
    assert!(v3 != v2 && v3 != v1, "the fixed file is in force after the restart");
}

#[test]
fn a_bad_configuration_or_a_key_that_needs_a_restart_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let extra = catalog_config(dir.path());
    let (_gyro, api) = start_with(dir.path(), &extra);
    // Nothing changed: fine, nothing to do.
    let (status, body) = http(api, "POST", "/v1/reload", None);
    assert_eq!((status, body["catalog"]["changed"].as_bool()), (200, Some(false)), "{body}");
    // A syntax error in the configuration: refused, naming it.
    std::fs::write(dir.path().join("gyro.toml"), "[charging\n").unwrap();
    let (status, body) = http(api, "POST", "/v1/reload", None);
    assert_eq!((status, body["field"].as_str()), (422, Some("config")), "{body}");
    // A key that only a restart applies: reloaded anyway, and said.
    admin::write_config(dir.path(), &format!("{extra}[journal]\nsnapshot_interval_s = 77\n"));
    let (status, body) = http(api, "POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restart_required"], serde_json::json!(["journal"]), "{body}");
    // log.level reloads, unless RUST_LOG chose the filter (as the test harness does): then it
    // is said, not pretended.
    admin::write_config(dir.path(), &format!("{extra}[log]\nlevel = \"debug\"\n"));
    let (status, body) = http(api, "POST", "/v1/reload", None);
    assert_eq!((status, body["log_level_changed"].as_bool()), (200, Some(false)), "{body}");
    assert!(body["restart_required"].to_string().contains("RUST_LOG"), "{body}");

    // A catalog over axum's default 2 MB body limit is loaded (25 000 accounts more); a body
    // over the API's limit for small JSON is a JSON 413 naming the body.
    let mut big = Catalog::demo_toml().to_owned();
    for n in 0..25_000u32 {
        big += &format!(
            "[[accounts]]\ncustomer = \"c-carol\"\nsubscription_ids = [\"e164:4917100{n:05}\"]\nfunding = \"prepaid\"\n"
        );
    }
    assert!(big.len() > 2 << 20);
    let (status, body) = http(api, "PUT", "/v1/catalog", Some(&big));
    assert_eq!((status, body["accounts_added"].as_u64()), (200, Some(25_000)), "{body}");
    let (status, body) =
        http(api, "POST", "/v1/customers", Some(&format!("{{\"id\":\"{}\"}}", "x".repeat(3 << 20))));
    assert_eq!((status, body["field"].as_str()), (413, Some("body")), "{body}");

    // Dictionaries: a vendor file added to diameter.dictionary_dir is loaded; a broken one is
    // refused naming the key, and the set in force stays.
    let dicts = dir.path().join("dicts");
    std::fs::create_dir(&dicts).unwrap();
    std::fs::write(
        dicts.join("vendor.xml"),
        r#"<dictionary><vendor id="99" name="Example"/><avp name="Example-Counter" code="9001" vendor="99" type="Unsigned32" must="V"/></dictionary>"#,
    )
    .unwrap();
    let with_dicts = format!("{extra}[diameter]\ndictionary_dir = {:?}\n", dicts.display().to_string());
    admin::write_config(dir.path(), &with_dicts);
    let before = body["dictionaries"]["version"].clone();
    let (status, body) = http(api, "POST", "/v1/reload", None);
    assert_eq!((status, body["dictionaries"]["changed"].as_bool()), (200, Some(true)), "{body}");
    let loaded = body["dictionaries"]["version"].clone();
    assert_ne!(loaded, before);
    assert!(metric_line(api, "gyro_config_info").contains(&format!("dictionaries={loaded}")));
    std::fs::write(dicts.join("zz-broken.xml"), "<dictionary><avp name=").unwrap();
    let (status, body) = http(api, "POST", "/v1/reload", None);
    assert_eq!((status, body["field"].as_str()), (422, Some("diameter.dictionary_dir")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("zz-broken.xml"), "{body}");
    assert!(metric_line(api, "gyro_config_info").contains(&format!("dictionaries={loaded}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_and_accounts_are_created_updated_and_closed_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gyro, api) = start_with(dir.path(), "");
    let customer =
        r#"{"id":"c-acme","name":"ACME Ltd","email":"billing@acme.example","plan":"mobile-basic"}"#;
    let (status, body) = http_async(api, "POST", "/v1/customers".into(), Some(customer)).await.unwrap();
    assert_eq!((status, body["id"].as_str()), (201, Some("c-acme")), "{body}");
    let (status, body) = http_async(api, "POST", "/v1/customers".into(), Some(customer)).await.unwrap();
    assert_eq!((status, body["field"].as_str()), (409, Some("id")), "{body}");
    // Bad bodies name the key.
    let (status, body) =
        http_async(api, "POST", "/v1/accounts".into(), Some(r#"{"customer":"c-acme","colour":"red"}"#))
            .await
            .unwrap();
    assert_eq!((status, body["field"].as_str()), (422, Some("body")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");
    let (status, body) = http_async(
        api,
        "POST",
        "/v1/accounts".into(),
        Some(r#"{"customer":"c-nobody","subscription_ids":["e164:491709999999"],"funding":"prepaid"}"#),
    )
    .await
    .unwrap();
    assert_eq!((status, body["field"].as_str()), (422, Some("catalog")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("c-nobody"), "{body}");

    let account = r#"{"customer":"c-acme","subscription_ids":["e164:491709999999"],"funding":"prepaid","balance":"5.00"}"#;
    let (status, body) = http_async(api, "POST", "/v1/accounts".into(), Some(account)).await.unwrap();
    assert_eq!(
        (status, body["balance"].as_str(), body["status"].as_str()),
        (201, Some("5.00"), Some("active")),
        "{body}"
    );
    let number = body["id"].as_u64().unwrap();
    assert_eq!(number, 5, "after the demo's five accounts");
    let mut c = Client::open(gyro.addr).await;
    let (sub, id) = ("e164:491709999999", "pgw.test;1;acme");
    let cca = exchange(&mut c, id, 0, sub, RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001), "the new subscriber is served at once");

    // Updates: a customer's address; an account's opening balance is refused, naming it.
    let (status, body) =
        http_async(api, "PATCH", "/v1/customers/c-acme".into(), Some(r#"{"email":"ap@acme.example"}"#))
            .await
            .unwrap();
    assert_eq!((status, body["email"].as_str()), (200, Some("ap@acme.example")), "{body}");
    let (status, body) =
        http_async(api, "PATCH", format!("/v1/accounts/{number}"), Some(r#"{"balance":"99"}"#))
            .await
            .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("opening value"), "{body}");

    // Closed: its session gets an ASR, new sessions 4010, and it is never unbarred.
    let closed = http_async(api, "POST", format!("/v1/accounts/{number}/close"), None);
    answer_request(&mut c, CommandCode::ABORT_SESSION, id, 2001).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), closed).await.unwrap().unwrap();
    assert_eq!((status, body["status"].as_str()), (200, Some("closed")), "{body}");
    assert_eq!(body["notified"][0]["command"], "ASR", "{body}");
    let cca = exchange(&mut c, id, 1, sub, RequestType::Terminate, Some(MIB)).await;
    assert_eq!(result_code(&cca), Some(2001), "the session in progress ends normally");
    let cca = exchange(&mut c, "pgw.test;2;acme", 0, sub, RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(4010));
    let (status, body) = http_async(api, "POST", format!("/v1/accounts/{number}/unbar"), None).await.unwrap();
    assert_eq!((status, body["field"].as_str()), (409, Some("account")), "{body}");

    // The catalog in force holds all of it, and so does the data directory after a restart.
    let (status, toml) = http_text(api, "GET", "/v1/catalog", None);
    assert_eq!(status, 200);
    assert!(
        toml.contains("c-acme") && toml.contains("ap@acme.example") && toml.contains("closed = true"),
        "{toml}"
    );
    drop(c);
    gyro.terminate();
    // `gyro journal inspect` finds the new subscriber's account in the data directory's own
    // catalog in force (the edits replayed), with no --catalog.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gyro"))
        .args(["journal", "inspect"])
        .arg(dir.path().join("data"))
        .args(["--subscriber", sub])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("account={number}")), "{text}");
    let (_gyro, api) = start_with(dir.path(), "");
    let (status, body) = http_async(api, "GET", format!("/v1/accounts/{number}"), None).await.unwrap();
    assert_eq!(
        (status, body["status"].as_str(), body["customer"].as_str()),
        (200, Some("closed"), Some("c-acme")),
        "{body}"
    );
    let (status, body) = http_async(api, "GET", "/v1/customers/c-acme".into(), None).await.unwrap();
    assert_eq!((status, body["accounts"].clone()), (200, serde_json::json!([number])), "{body}");
}

/// Without RUST_LOG, `log.level` reloads: a credit-control decision logged at debug appears
/// only after the reload turned debug on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let config = admin::write_config(dir.path(), "[log]\nlevel = \"info\"\n");
    let gyro = serve::Gyro::start_with_rust_log(
        &config,
        &dir.path().join("data"),
        dir.path().join("gyro.log"),
        None,
    );
    let api = serve::http_addr(&gyro.log_text()).unwrap();
    let mut c = Client::open(gyro.addr).await;
    let cca = exchange(&mut c, "pgw.test;1;a", 0, "e164:491700000001", RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001));
    assert!(!gyro.log_text().contains("DEBUG"), "{}", gyro.log_text());
    admin::write_config(dir.path(), "[log]\nlevel = \"debug\"\n");
    let (status, body) = http_async(api, "POST", "/v1/reload".into(), None).await.unwrap();
    assert_eq!((status, body["log_level_changed"].as_bool()), (200, Some(true)), "{body}");
    let cca = exchange(&mut c, "pgw.test;1;b", 0, "e164:491700000001", RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001));
    // Lines reach the file shortly after the answer: bounded wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gyro.log_text().contains("DEBUG") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gyro.log_text().contains("DEBUG"), "{}", gyro.log_text());
}
