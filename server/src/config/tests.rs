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

#[test]
fn the_embedded_broker_serves_tls_and_plain_tcp_only_on_this_machine() {
    let with = |text: &str| -> Result<ServerConfig, String> {
        let c: ServerConfig = toml::from_str(&format!(
            "[model]\nschema_csv = \"t.csv\"\nlabel = \"y\"\n[broker]\n{text}"
        ))
        .map_err(|e| e.to_string())?;
        c.validate().map(|()| c).map_err(|e| e.to_string())
    };
    // plain TCP from other machines needs allow_plaintext
    let e = with("listen = \"0.0.0.0:1883\"").unwrap_err();
    assert!(
        e.contains("allow_plaintext") && e.contains("tls_listen"),
        "{e}"
    );
    let open = with("listen = \"0.0.0.0:1883\"\nallow_plaintext = true").unwrap();
    assert!(!open.vehicles_on_tls());
    // TLS needs its files; the server's own link stays plain on loopback
    let e = with("tls_listen = \"0.0.0.0:8883\"").unwrap_err();
    assert!(e.contains("tls_cert"), "{e}");
    let tls =
        with("tls_listen = \"0.0.0.0:8883\"\ntls_cert = \"b.crt\"\ntls_key = \"b.key\"").unwrap();
    assert!(tls.vehicles_on_tls());
    assert_eq!(
        tls.client_broker().url_or_local().to_string(),
        "mqtt://127.0.0.1:1883"
    );
    let listen = tls.broker_listen();
    assert_eq!(listen.plain, Some("127.0.0.1:1883".parse().unwrap()));
    assert_eq!(
        listen.tls.map(|t| t.addr),
        Some("0.0.0.0:8883".parse().unwrap())
    );
    // TLS only: the server reaches its broker over TLS, with a CA to trust
    let e = with(
        "listen = \"\"\ntls_listen = \"0.0.0.0:8883\"\ntls_cert = \"b.crt\"\ntls_key = \"b.key\"",
    )
    .unwrap_err();
    assert!(e.contains("ca_file"), "{e}");
    let only = with(
        "listen = \"\"\ntls_listen = \"0.0.0.0:8883\"\ntls_cert = \"b.crt\"\ntls_key = \"b.key\"\nca_file = \"ca.crt\"",
    )
    .unwrap();
    assert_eq!(
        only.client_broker().url_or_local().to_string(),
        "mqtts://127.0.0.1:8883"
    );
    let e = with("listen = \"\"").unwrap_err();
    assert!(e.contains("at least one listener"), "{e}");
    // an external broker by plain TCP off this machine is refused too
    let e = with("url = \"mqtt://broker.example:1883\"").unwrap_err();
    assert!(e.contains("allow_plaintext"), "{e}");
    assert!(
        with("url = \"mqtts://broker.example:8883\"")
            .unwrap()
            .vehicles_on_tls()
    );
}
