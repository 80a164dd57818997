//! Interop: the same end-to-end run against a real Mosquitto broker.
//!
//! Opt-in (`cargo test -p convoy-tests --test interop -- --ignored`): it
//! needs the `mosquitto` binary, which `.ci/run` installs.

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
    let addr = url.trim_start_matches("mqtt://");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut options = rumqttc::MqttOptions::new(user, host, port.parse()?);
    options.set_credentials(user, password);
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

/// `provision --mosquitto`'s files on a real Mosquitto: a vehicle reads
/// neither another's updates nor anything but the round and its own model
/// and receipts, and publishes nothing but on its own topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the mosquitto binary; run with --ignored (CI does)"]
async fn mosquitto_acls_keep_each_vehicle_to_its_own_topics() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let fleet: convoy_shared::topics::TopicId = "acl".parse().map_err(anyhow::Error::msg)?;
    let accounts: Vec<(String, String)> = ["convoy-server", "car-0", "car-1"]
        .iter()
        .map(|u| (u.to_string(), format!("{u}-{}", rand::random::<u64>())))
        .collect();
    convoy_server::mosquitto::write(dir.path(), &fleet, "convoy-server", &accounts)?;
    // the files are private to their owner: as root, Mosquitto would drop
    // to its own user and no longer read them
    let broker = Broker::mosquitto_with(&format!(
        "user root\nallow_anonymous false\npassword_file {}\nacl_file {}\n",
        dir.path().join("mosquitto.passwd").display(),
        dir.path().join("mosquitto.acl").display()
    ))?;
    let url = broker.url();
    let pass = |i: usize| accounts[i].1.as_str();
    assert!(
        login(&url, "car-0", "wrong").await.is_err(),
        "a wrong password"
    );
    let mut server = login(&url, "convoy-server", pass(0)).await?;
    let mut car0 = login(&url, "car-0", pass(1)).await?;
    let car1 = login(&url, "car-1", pass(2)).await?;
    server
        .client
        .subscribe("convoy/v1/acl/#", rumqttc::QoS::AtLeastOnce)
        .await?;
    car0.client
        .subscribe("#", rumqttc::QoS::AtLeastOnce)
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // car-1's update reaches the server, not car-0 listening on `#`
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
    assert_eq!(
        at_server,
        [
            "convoy/v1/acl/model/car-0",
            "convoy/v1/acl/model/car-1",
            "convoy/v1/acl/round",
            "convoy/v1/acl/status/car-0",
            "convoy/v1/acl/update/car-1",
        ],
        "the server's own three, and each vehicle's own topic: none of car-0's forgeries"
    );
    let mut at_car0 = car0.drain(500).await;
    at_car0.sort();
    assert_eq!(
        at_car0,
        ["convoy/v1/acl/model/car-0", "convoy/v1/acl/round"],
        "car-0 reads the round and its own model, nothing of car-1's"
    );
    println!("server received: {at_server:?}\ncar-0 (subscribed to #) received: {at_car0:?}");
    Ok(())
}
