//! `convoy-agent check` refuses what `run` would refuse, before connecting:
//! a CSV without the label column or without rows, a malformed policy
//! window, a state directory that cannot be written, missing key files.

use std::path::Path;
use std::process::Command;

fn check(dir: &Path, csv: &str, extra: &str, state: &str) -> (bool, String) {
    check_keys(dir, csv, extra, state, "vehicle.key")
}

fn check_keys(dir: &Path, csv: &str, extra: &str, state: &str, key: &str) -> (bool, String) {
    std::fs::write(dir.join("data.csv"), csv).expect("write the CSV");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "client_id = \"car-1\"\nstate_dir = \"{state}\"\n{extra}\n[data]\npath = \"data.csv\"\nlabel = \"y\"\n[identity]\nkey_file = \"{key}\"\nserver_key_file = \"server.pub\"\n"
        ),
    )
    .expect("write the config");
    let out = Command::new(env!("CARGO_BIN_EXE_convoy-agent"))
        .args(["check", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .output()
        .expect("run convoy-agent check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_refuses_what_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let vehicle = convoy_shared::identity::SecretKey::generate();
    vehicle.write_new(&dir.path().join("vehicle.key")).unwrap();
    let server = convoy_shared::identity::SecretKey::generate();
    server
        .public()
        .write(&dir.path().join("server.pub"))
        .unwrap();
    let (ok, text) = check(dir.path(), "a,y\n1,0\n2,1\n", "", "state");
    assert!(ok, "a good config passes: {text}");
    assert!(text.contains("config ok"), "{text}");

    let (ok, text) = check(dir.path(), "a,b\n1,0\n", "", "state");
    assert!(!ok && text.contains("label column"), "{text}");

    let (ok, text) = check(dir.path(), "a,y\n", "", "state");
    assert!(!ok && text.contains("no data rows"), "{text}");

    let (ok, text) = check(
        dir.path(),
        "a,y\n1,0\n",
        "[policy]\nwindow = \"soon\"",
        "state",
    );
    assert!(!ok && text.contains("HH:MM-HH:MM"), "{text}");

    // a state dir below a regular file cannot be created, even by root
    let (ok, text) = check(dir.path(), "a,y\n1,0\n", "", "data.csv/state");
    assert!(!ok && text.contains("state dir"), "{text}");

    // a vehicle that was never provisioned is told how to get its keys
    let (ok, text) = check_keys(dir.path(), "a,y\n1,0\n", "", "state", "missing.key");
    assert!(!ok && text.contains("convoy-server provision"), "{text}");
}
