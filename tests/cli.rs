//! The command line as an operator uses it: checks that pass, and errors that name the file,
//! the line or the key.

use std::process::Command;

fn gyro(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gyro")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn dict_check_prints_the_embedded_set() {
    let (ok, text) = gyro(&["dict", "check"]);
    assert!(ok, "{text}");
    assert!(text.contains("272 Credit-Control (CCR/CCA) app 4"), "{text}");
    assert!(text.contains("vendor 10415 (3GPP)"), "{text}");
}

#[test]
fn dict_check_names_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"<dictionary>
  <vendor id="9" name="Acme"/>
  <avp name="Acme-Quota" code="1" vendor="9" type="Unsigned64" must="V M"/>
</dictionary>
"#;
    std::fs::write(dir.path().join("acme.xml"), good).unwrap();
    let (ok, text) = gyro(&["dict", "check", dir.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("vendor 9 (Acme): 1 avps"), "{text}");

    let bad = "<dictionary>\n  <avp name=\"Acme-Bad\" code=\"2\" vendor=\"9\" type=\"Unsigned33\" must=\"V\"/>\n</dictionary>\n";
    std::fs::write(dir.path().join("bad.xml"), bad).unwrap();
    let (ok, text) = gyro(&["dict", "check", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("bad.xml:2:"), "{text}");
    assert!(text.contains("unknown type `Unsigned33`"), "{text}");
}

#[test]
fn config_check_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gyro.toml");
    std::fs::write(&path, "[diameter]\norigin_host = \"ocs.example.net\"\nwatchdog_interval_ms = 1000\n")
        .unwrap();
    let (ok, text) = gyro(&["config", "check", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("diameter.watchdog_interval_ms"), "{text}");

    std::fs::write(&path, "[diameter]\norigin_host = \"ocs.example.net\"\nlistne = \"x\"\n").unwrap();
    let (ok, text) = gyro(&["config", "check", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("unknown field `listne`"), "{text}");

    std::fs::write(&path, "[diameter]\norigin_host = \"ocs.example.net\"\n").unwrap();
    let (ok, text) = gyro(&["config", "check", path.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("ocs.example.net"), "{text}");
}
