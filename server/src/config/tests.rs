//! The server config: defaults, every check, environment overrides.

use super::*;

fn minimal() -> ServerConfig {
    toml::from_str("[model]\nschema_csv = \"t.csv\"\nlabel = \"y\"\n").unwrap()
}

#[test]
fn defaults_validate() {
    let c = minimal();
    assert!(c.validate().is_ok());
    assert_eq!(c.rounds.chunk_size, 128 * 1024);
    assert_eq!(
        c.client_broker().url_or_local().to_string(),
        "mqtt://127.0.0.1:1883"
    );
    assert!(c.embedded_broker());
}

#[test]
fn shipped_example_config_states_the_defaults() {
    let c: ServerConfig =
        toml::from_str(include_str!("../../../systemd/server.example.toml")).unwrap();
    assert_eq!(c.rounds, RoundConfig::default());
    assert_eq!(c.broker, ServerBroker::default());
    assert_eq!(c.training, Recipe::default());
    assert_eq!(c.model, ModelConfig::default());
    assert_eq!(c.align, AlignConfig::default());
    assert_eq!(c.http, HttpConfig::default());
    assert_eq!(c.budget, BudgetConfig::default());
    c.validate().unwrap();
}

#[test]
fn an_empty_config_needs_no_data() {
    let c: ServerConfig = toml::from_str("").unwrap();
    assert_eq!(c.model.schema_csv, None);
    c.validate().unwrap();
    let half: ServerConfig = toml::from_str("[model]\nschema_csv = \"s.csv\"\n").unwrap();
    let err = half.validate().unwrap_err().to_string();
    assert!(err.contains("model.label"), "{err}");
    let bad: ServerConfig = toml::from_str("[align]\nmax_categories = 0\n").unwrap();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("max_categories")
    );
}

#[test]
fn numbers_out_of_range_are_refused_with_the_range() {
    type Set = fn(&mut ServerConfig);
    let cases: [(&str, Set); 4] = [
        ("deadline_secs", |c| c.rounds.deadline_secs = u64::MAX),
        ("deadline_secs", |c| c.rounds.deadline_secs = 0),
        ("chunk_size", |c| c.rounds.chunk_size = 0),
        ("max_update_bytes", |c| c.rounds.max_update_bytes = 0),
    ];
    for (key, set) in cases {
        let mut c = minimal();
        set(&mut c);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(" to "), "{err}");
    }
}

#[test]
fn bad_values_are_explained() {
    let err = toml::from_str::<ServerConfig>(
        "[model]\nschema_csv = \"t.csv\"\nlabel = \"y\"\n[rounds]\ncodec = \"gzip\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("fp16"), "{err}");
    let mut c = minimal();
    c.rounds.chunk_size = 1 << 20;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("max_packet_size")
    );
    let err = toml::from_str::<ServerConfig>(
        "[model]\nschema_csv = \"t.csv\"\nlabel = \"y\"\n[broker]\nurl = \"http://x\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("mqtt://host:port"), "{err}");
    let c: ServerConfig = toml::from_str(
        "[model]\nschema_csv = \"t.csv\"\nlabel = \"y\"\n[broker]\nlisten_on = \"x\"\n",
    )
    .unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("broker.listen_on"), "{err}");
    assert!(toml::from_str::<ServerConfig>("[model]\nlabel = 3").is_err());
}

#[test]
fn min_reports_above_min_clients_is_refused() {
    let mut c = minimal();
    c.rounds.min_clients = 3;
    c.rounds.min_reports = 3;
    assert!(c.validate().is_ok());
    c.rounds.min_reports = 4;
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("min_reports 4") && e.contains("min_clients 3"),
        "{e}"
    );
}

#[test]
fn hidden_layers_too_wide_to_allocate_are_refused_at_load() {
    let mut c = minimal();
    c.model.hidden = vec![4_294_967_295];
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("model.hidden") && e.contains("parameters"),
        "{e}"
    );
    c.model.hidden = vec![4096, 4096];
    assert!(c.validate().is_ok(), "17 M parameters are allowed");
}
