//! `convoy-server run` as a process: when every round it ran failed, it
//! says why and exits non-zero, so a service manager or a script notices.
//! One provisioned vehicle logs in to the embedded broker, says it is idle,
//! and never sends an update.

use convoy_server::identity;
use convoy_shared::identity::SecretKey;
use convoy_shared::messages::{self, AgentState, Status};
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::wire::{self, Kind};
use convoy_store::Store;
use rumqttc::{Client, MqttOptions, QoS};
use std::process::Command;
use std::time::Duration;

#[test]
fn run_exits_non_zero_when_every_round_failed() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut csv = String::from("a,b,y\n");
    for i in 0..20 {
        csv.push_str(&format!("{i},{},{}\n", i % 3, i % 2));
    }
    std::fs::write(dir.path().join("schema.csv"), csv).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "fleet = \"exit\"\ndb = \"convoy.db\"\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
             [rounds]\ntotal = 2\nmin_clients = 1\ndeadline_secs = 1\n\
             [model]\nschema_csv = \"schema.csv\"\nlabel = \"y\"\nhidden = [4]\n"
        ),
    )
    .unwrap();
    // provisioned before the server starts, as an operator would
    let server_key = identity::server_key(&dir.path().join("server.key")).unwrap();
    let store = Store::open(&dir.path().join("convoy.db")).unwrap();
    let id = "car".parse().unwrap();
    let car = identity::provision(
        &store,
        &server_key.public().into(),
        &[id],
        dir.path(),
        false,
    )
    .unwrap()
    .remove(0);
    drop(store);
    let car_key = SecretKey::read(&car.dir.join(identity::VEHICLE_KEY)).unwrap();

    let mut server = Command::new(env!("CARGO_BIN_EXE_convoy-server"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the embedded broker is up once its port answers
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server's broker never listened"
        );
        assert!(
            server.try_wait().unwrap().is_none(),
            "the server exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut options = MqttOptions::new("car", "127.0.0.1", port);
    options.set_credentials("car", car.password.as_str());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 16);
    let topic = topics::client("exit", ClientTopic::Status, "car").to_string();
    let status = Status {
        samples: 20,
        detail: messages::detail("idle, and it will stay so"),
        ..Status::new(messages::id("car").unwrap(), AgentState::Idle, (1, 1))
    };
    let payload = wire::encode(Kind::Status, &status, &topic, &car_key).unwrap();
    client
        .publish(&topic, QoS::AtLeastOnce, true, payload)
        .unwrap();
    std::thread::spawn(move || for _ in connection.iter() {});

    let started = std::time::Instant::now();
    let code = loop {
        if let Some(code) = server.try_wait().unwrap() {
            break code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "server did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!code.success(), "{stderr}");
    assert!(stderr.contains("every round failed"), "{stderr}");
}
