//! Every command takes `--db` and `--config` the same way, before or after
//! its subcommand, and says what to do when neither is given.

use std::path::Path;
use std::process::{Command, Output};

fn convoy_server(args: &[&str], env_db: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_convoy-server"));
    command
        .args(args)
        .env_remove("CONVOY_DB")
        .env_remove("CONVOY_SERVER_CONFIG")
        .env("RUST_LOG", "error");
    if let Some(db) = env_db {
        command.env("CONVOY_DB", db);
    }
    command.output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

#[test]
fn db_and_config_go_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    convoy_store::Store::open(&db).unwrap();
    let db_arg = db.to_str().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, format!("db = {db_arg:?}\n")).unwrap();
    let config_arg = config.to_str().unwrap();

    let after = stdout(&convoy_server(
        &["models", "list", "--db", db_arg, "--format", "json"],
        None,
    ));
    let before = stdout(&convoy_server(
        &["models", "--db", db_arg, "list", "--format", "json"],
        None,
    ));
    let from_config = stdout(&convoy_server(
        &["models", "list", "--config", config_arg, "--format", "json"],
        None,
    ));
    let from_env = stdout(&convoy_server(
        &["models", "list", "--format", "json"],
        Some(&db),
    ));
    assert_eq!(after.trim(), "[]", "an empty store lists no version");
    assert_eq!(before, after);
    assert_eq!(from_config, after);
    assert_eq!(from_env, after);

    let report = stdout(&convoy_server(&["report", "--db", db_arg], None));
    let report_config = stdout(&convoy_server(&["report", "-c", config_arg], None));
    assert_eq!(report, report_config);
    let fleet = stdout(&convoy_server(
        &["models", "fleet", "--config", config_arg],
        None,
    ));
    assert_eq!(
        fleet,
        stdout(&convoy_server(
            &["models", "--config", config_arg, "fleet"],
            None
        ))
    );
}

#[test]
fn a_command_without_a_database_says_how_to_name_one() {
    for args in [&["report"][..], &["models", "list"][..]] {
        let out = convoy_server(args, None);
        assert!(!out.status.success(), "{args:?} ran without a database");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("--db") && said.contains("--config"),
            "{args:?}: {said}"
        );
    }
    let out = convoy_server(&["run"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --config FILE"));
}
