//! Interop: the same end-to-end run against a real Mosquitto broker, and
//! the per-vehicle topic rules on Mosquitto (from `provision --mosquitto`'s
//! files) and on the embedded broker.
//!
//! The Mosquitto tests are opt-in (`cargo test -p convoy-tests --test
//! interop -- --ignored`): they need the `mosquitto` binary, which `.ci/run`
//! installs.

use convoy_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the mosquitto binary; run with --ignored (CI does)"]
async fn fleet_learns_over_mosquitto() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits_on(Broker::mosquitto()?, "mosquitto", 3, 21)?
        .rounds(3)
        .start()
        .await?;
    let rounds = fleet.next_rounds(3, 60).await?;
    fleet.finish().await?;
    let tally = fleet.tap.settled_tally().await;
    for r in &rounds {
        assert_eq!(r.status, "finished");
        assert_eq!(r.clients_reported, 3);
        assert_eq!(
            Some(&r.bytes_up),
            tally.update_bytes_by_round.get(&r.round),
            "round {}",
            r.round
        );
    }
    let (first, last) = (
        rounds[0].accuracy.unwrap_or(0.0),
        rounds[2].accuracy.unwrap_or(0.0),
    );
    assert!(
        last > first + 0.05,
        "accuracy should rise over Mosquitto too: {first} -> {last}"
    );
    Ok(())
}

/// One MQTT session of the ACL test, with what it receives.
struct Session {
    client: rumqttc::AsyncClient,
    received: tokio::sync::mpsc::UnboundedReceiver<String>,
}

async fn login(url: &str, user: &str, password: &str) -> anyhow::Result<Session> {
    let config = link(url);
    let convoy_runtime::link::BrokerUrl::Tcp { host, port, tls } = config.url_or_local() else {
        anyhow::bail!("{url} is not an MQTT broker");
    };
    let mut options = rumqttc::MqttOptions::new(user, host, port);
    options.set_credentials(user, password);
    if tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(convoy_runtime::link::tls_client_config(&config)?),
        ));
    }
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    let (tx, received) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(ack.code == rumqttc::ConnectReturnCode::Success);
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send(p.topic);
                }
                Ok(_) => {}
                Err(_) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(false);
                    }
                    return;
                }
            }
        }
    });
    anyhow::ensure!(ready.await?, "{user}'s login was refused");
    Ok(Session { client, received })
}

impl Session {
    async fn publish(&self, topic: &str) -> anyhow::Result<()> {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, b"x".to_vec())
            .await?;
        Ok(())
    }

    /// Everything received within `ms`.
    async fn drain(&mut self, ms: u64) -> Vec<String> {
        let mut got = Vec::new();
        let end = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
        while let Ok(Some(t)) = tokio::time::timeout_at(end, self.received.recv()).await {
            got.push(t);
        }
        got
    }
}

/// What the server account and car-0 received when, on the broker at
/// `url` (accounts: server, car-0, car-1), car-1 sends its update, car-0
/// subscribes to `car0_filters` and publishes on the server's topics and
/// car-1's (and once on its own status, the control), and the server
/// announces a round and sends both models.
async fn acl_scenario(
    url: &str,
    accounts: &[(String, String)],
    car0_filters: &[&str],
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let pass = |i: usize| accounts[i].1.as_str();
    assert!(
        login(url, "car-0", "wrong").await.is_err(),
        "a wrong password"
    );
    let mut server = login(url, "convoy-server", pass(0)).await?;
    let mut car0 = login(url, "car-0", pass(1)).await?;
    let car1 = login(url, "car-1", pass(2)).await?;
    server
        .client
        .subscribe("convoy/v1/acl/#", rumqttc::QoS::AtLeastOnce)
        .await?;
    for filter in car0_filters {
        car0.client
            .subscribe(*filter, rumqttc::QoS::AtLeastOnce)
            .await?;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // car-1's update reaches the server, not car-0
    car1.publish("convoy/v1/acl/update/car-1").await?;
    // car-0 tries the server's topics and car-1's status
    for forged in [
        "round",
        "model/car-1",
        "ack/car-1",
        "status/car-1",
        "update/car-1",
    ] {
        car0.publish(&format!("convoy/v1/acl/{forged}")).await?;
    }
    // and one of its own, which must arrive: the control
    car0.publish("convoy/v1/acl/status/car-0").await?;
    // the server's announcement and car-0's model reach car-0; car-1's do not
    server.publish("convoy/v1/acl/round").await?;
    server.publish("convoy/v1/acl/model/car-0").await?;
    server.publish("convoy/v1/acl/model/car-1").await?;
    let mut at_server = server.drain(1_500).await;
    at_server.sort();
    let mut at_car0 = car0.drain(500).await;
    at_car0.sort();
    println!(
        "server received: {at_server:?}\ncar-0 (subscribed to {car0_filters:?}) received: {at_car0:?}"
    );
    for session in [server, car0, car1] {
        session.client.disconnect().await?;
    }
    Ok((at_server, at_car0))
}

/// What the server must receive in [`acl_scenario`]: its own three
/// messages and each vehicle's own topic, none of car-0's forgeries.
const AT_SERVER: [&str; 5] = [
    "convoy/v1/acl/model/car-0",
    "convoy/v1/acl/model/car-1",
    "convoy/v1/acl/round",
    "convoy/v1/acl/status/car-0",
    "convoy/v1/acl/update/car-1",
];

/// What car-0 must receive: the round and its own model, nothing of car-1's.
const AT_CAR0: [&str; 2] = ["convoy/v1/acl/model/car-0", "convoy/v1/acl/round"];

/// Login accounts for the ACL tests: the server, car-0, car-1.
fn accounts() -> Vec<(String, String)> {
    ["convoy-server", "car-0", "car-1"]
        .iter()
        .map(|u| (u.to_string(), format!("{u}-{}", rand::random::<u64>())))
        .collect()
}

/// `provision --mosquitto`'s files on a real Mosquitto: a vehicle reads
/// neither another's updates nor anything but the round and its own model
/// and receipts, and publishes nothing but on its own topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the mosquitto binary; run with --ignored (CI does)"]
async fn mosquitto_acls_keep_each_vehicle_to_its_own_topics() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let fleet: convoy_shared::topics::TopicId = "acl".parse().map_err(anyhow::Error::msg)?;
    let accounts = accounts();
    convoy_server::mosquitto::write(dir.path(), &fleet, ("convoy-server", &[]), &accounts)?;
    // the files are private to their owner: as root, Mosquitto would drop
    // to its own user and no longer read them
    let broker = Broker::mosquitto_with(&format!(
        "user root\nallow_anonymous false\npassword_file {}\nacl_file {}\n",
        dir.path().join("mosquitto.passwd").display(),
        dir.path().join("mosquitto.acl").display()
    ))?;
    // Mosquitto takes `#` and filters what it delivers by the read rules
    let (at_server, at_car0) = acl_scenario(&broker.url(), &accounts, &["#"]).await?;
    assert_eq!(at_server, AT_SERVER, "none of car-0's forgeries");
    assert_eq!(at_car0, AT_CAR0, "nothing of car-1's");
    Ok(())
}

/// The same rules on the embedded broker, over TLS, with the logins
/// `provision` makes; and a second client with a connected vehicle's id is
/// refused rather than knocking the first off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_keeps_each_vehicle_to_its_own_topics() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("convoy.db");
    let store = convoy_store::Store::open(&db)?;
    let server_key = convoy_server::identity::server_key(&dir.path().join("server.key"))?;
    let ids: Vec<convoy_shared::topics::TopicId> = vec![
        "car-0".parse().map_err(anyhow::Error::msg)?,
        "car-1".parse().map_err(anyhow::Error::msg)?,
        // the harness's broker lists it in broker.status_readers
        "deployer".parse().map_err(anyhow::Error::msg)?,
    ];
    let made = convoy_server::identity::provision(
        &store,
        &server_key.public().into(),
        &ids,
        &dir.path().join("keys"),
        false,
    )?;
    let mut accounts = accounts();
    for (account, vehicle) in accounts[1..].iter_mut().zip(&made) {
        account.1 = vehicle.password.clone();
    }
    let url = Broker::embedded_with_logins("acl", &accounts[0].1, &db)?.url();
    // The embedded broker refuses a filter a vehicle may not use (`#`,
    // another vehicle's topics) outright; car-0 also asks for its own.
    let (at_server, at_car0) = acl_scenario(
        &url,
        &accounts,
        &[
            "#",
            "convoy/v1/acl/update/+",
            "convoy/v1/acl/model/car-1",
            "convoy/v1/acl/round",
            "convoy/v1/acl/model/car-0",
        ],
    )
    .await?;
    assert_eq!(at_server, AT_SERVER, "none of car-0's forgeries");
    assert_eq!(at_car0, AT_CAR0, "nothing of car-1's");

    // a twin of car-0 while car-0 is connected: refused, and car-0 stays
    // (the scenario's sessions said goodbye: give the broker a moment)
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut first = login(&url, "car-0", &accounts[1].1).await?;
    assert!(
        login(&url, "car-0", &accounts[1].1).await.is_err(),
        "a second client with car-0's id is refused"
    );
    first
        .client
        .subscribe("convoy/v1/acl/round", rumqttc::QoS::AtLeastOnce)
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let server = login(&url, "convoy-server", &accounts[0].1).await?;
    server.publish("convoy/v1/acl/round").await?;
    assert_eq!(
        first.drain(1_000).await,
        ["convoy/v1/acl/round"],
        "the first car-0 is still connected"
    );

    // a status reader (deploy's watcher) reads statuses and nothing else
    let mut deployer = login(&url, "deployer", &made[2].password).await?;
    for filter in ["convoy/v1/acl/status/car-1", "convoy/v1/acl/update/car-1"] {
        deployer
            .client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await?;
    }
    let car1 = login(&url, "car-1", &accounts[2].1).await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    car1.publish("convoy/v1/acl/status/car-1").await?;
    car1.publish("convoy/v1/acl/update/car-1").await?;
    deployer.publish("convoy/v1/acl/round").await?;
    assert_eq!(
        deployer.drain(1_000).await,
        ["convoy/v1/acl/status/car-1"],
        "car-1's status, not its update"
    );
    assert!(
        first.drain(500).await.is_empty(),
        "the reader cannot announce"
    );
    Ok(())
}
