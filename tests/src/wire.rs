//! A bare MQTT client, independent of convoy's own link: it subscribes,
//! publishes raw bytes, hands over what arrives and counts the update bytes
//! it sees, so tests can check the ledger against the wire.

use crate::api::{ClientTopic, Kind, UpdateChunk, topics, wire};
use crate::scenario::MAX_PACKET;
use anyhow::Context;
use convoy_runtime::link::BrokerUrl;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How long a subscription or a batch of publishes may wait for the broker.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a [`Wire`] saw on its fleet's update topics.
#[derive(Debug, Default, Clone)]
pub struct WireTally {
    /// Payload bytes per round (envelopes included, as the ledger counts).
    pub update_bytes_by_round: BTreeMap<u64, u64>,
    /// Raw update payloads per client, in arrival order.
    pub update_payloads: BTreeMap<String, Vec<Vec<u8>>>,
}

/// Acknowledgements the broker has sent so far.
#[derive(Debug, Default, Clone, Copy)]
struct Acks {
    subscribed: u64,
    published: u64,
}

/// A raw MQTT connection to one fleet's broker.
#[derive(Debug)]
pub struct Wire {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<rumqttc::Publish>,
    tally: Arc<Mutex<WireTally>>,
    acks: watch::Receiver<Acks>,
    requested: Acks,
    stop: CancellationToken,
}

impl Wire {
    /// Connects to `broker_url` (`mqtt://host:port`) as `id`; update
    /// payloads on `fleet`'s topics are tallied once subscribed to.
    pub async fn connect(broker_url: &str, fleet: &str, id: &str) -> anyhow::Result<Self> {
        let mut options = options(broker_url, id)?;
        options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        options.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (acks_tx, acks) = watch::channel(Acks::default());
        let tally = Arc::new(Mutex::new(WireTally::default()));
        let stop = CancellationToken::new();
        let (t, s, fleet) = (tally.clone(), stop.clone(), fleet.to_string());
        // This task only polls: publishing from it could deadlock rumqttc.
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = s.cancelled() => break,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks_tx.send_modify(|a| a.subscribed += 1);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks_tx.send_modify(|a| a.published += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        count(&t, &fleet, &p);
                        let _ = messages_tx.send(p);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Ok(Self {
            client,
            messages,
            tally,
            acks,
            requested: Acks::default(),
            stop,
        })
    }

    /// Subscribes to `filter`; returns once the broker acknowledged it, so
    /// nothing published afterwards is missed.
    pub async fn subscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        self.requested.subscribed += 1;
        let want = self.requested.subscribed;
        tokio::time::timeout(ACK_TIMEOUT, self.acks.wait_for(|a| a.subscribed >= want))
            .await
            .with_context(|| format!("subscription to {filter} not acknowledged"))??;
        Ok(())
    }

    /// Queues `payload` on `topic` at QoS 1; [`Wire::flush`] waits for it.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retained: bool,
    ) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retained, payload)
            .await?;
        self.requested.published += 1;
        Ok(())
    }

    /// Waits until the broker acknowledged everything published so far.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        let want = self.requested.published;
        tokio::time::timeout(ACK_TIMEOUT, self.acks.wait_for(|a| a.published >= want))
            .await
            .context("publishing timed out")??;
        Ok(())
    }

    /// Publishes every payload on `topic` and waits until all are acknowledged.
    pub async fn publish_all(&mut self, topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
        for p in payloads {
            self.publish(topic, p.clone(), false).await?;
        }
        self.flush().await
    }

    /// The next message on any subscribed topic, failing after `secs`.
    pub async fn next(&mut self, secs: u64) -> anyhow::Result<rumqttc::Publish> {
        tokio::time::timeout(Duration::from_secs(secs), self.messages.recv())
            .await
            .context("timed out waiting for a message")?
            .context("client stopped")
    }

    /// A copy of the update tally so far.
    pub fn tally(&self) -> WireTally {
        self.tally.lock().expect("tally lock").clone()
    }

    /// The tally after a short pause, for messages the broker still had in
    /// flight when the fleet stopped.
    pub async fn settled_tally(&self) -> WireTally {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.tally()
    }
}

/// Client options for `id` at `broker_url` (`mqtt://host:port`, or
/// `mqtts://host:port`, verified against the test process's CA).
fn options(broker_url: &str, id: &str) -> anyhow::Result<MqttOptions> {
    let config = crate::scenario::link(broker_url);
    let BrokerUrl::Tcp { host, port, tls } = config.url_or_local() else {
        anyhow::bail!("broker url {broker_url:?} is not an MQTT broker");
    };
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    if tls {
        let tls = convoy_runtime::link::tls_client_config(&config)?;
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    Ok(options)
}

/// Whether a broker at `broker_url` accepts a connection as `id` with
/// `login` (user name, password), or none: true on a successful ConnAck,
/// false when it refuses or drops the connection.
pub async fn login_accepted(
    broker_url: &str,
    id: &str,
    login: Option<(&str, &str)>,
) -> anyhow::Result<bool> {
    let mut options = options(broker_url, id)?;
    if let Some((user, pass)) = login {
        options.set_credentials(user, pass);
    }
    let (_client, mut eventloop) = AsyncClient::new(options, 8);
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return ack.code == rumqttc::ConnectReturnCode::Success;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .context("the broker neither accepted nor refused the login")?;
    Ok(answer)
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Adds `p` to the tally when it is an update of `fleet`.
fn count(tally: &Mutex<WireTally>, fleet: &str, p: &rumqttc::Publish) {
    let Some((ClientTopic::Update, client)) = topics::parse_client(fleet, &p.topic) else {
        return;
    };
    let mut tally = tally.lock().expect("tally lock");
    tally
        .update_payloads
        .entry(client.to_string())
        .or_default()
        .push(p.payload.to_vec());
    // The tap only counts; the server is the one that verifies signatures.
    let chunk = wire::open(&p.payload, 1 << 20)
        .ok()
        .filter(|e| e.kind == Kind::UpdateChunk)
        .and_then(|e| postcard::from_bytes::<UpdateChunk>(e.body).ok());
    if let Some(chunk) = chunk {
        *tally.update_bytes_by_round.entry(chunk.round).or_default() += p.payload.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ChunkPos, messages};
    use crate::broker::Broker;

    fn update(client: &str, round: u64) -> Vec<u8> {
        let chunk = UpdateChunk {
            client: messages::id(client).expect("valid id"),
            round,
            base_version: Default::default(),
            pos: ChunkPos {
                index: 0,
                count: 1,
                total_len: 3,
            },
            data: vec![1, 2, 3],
        };
        let key = convoy_shared::identity::SecretKey::from_seed([1; 32]);
        let topic = topics::client("fleet-a", ClientTopic::Update, client);
        wire::encode(Kind::UpdateChunk, &chunk, &topic, &key).expect("test messages encode")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tally_counts_update_bytes_of_its_fleet_only() -> anyhow::Result<()> {
        let url = Broker::embedded()?.url();
        let mut tap = Wire::connect(&url, "fleet-a", "tap").await?;
        tap.subscribe("convoy/v1/#").await?;
        let mut car = Wire::connect(&url, "fleet-a", "car").await?;
        let (one, two) = (update("car", 1), update("car", 2));
        let own = topics::client("fleet-a", ClientTopic::Update, "car");
        car.publish_all(&own, &[one.clone(), one.clone(), two.clone()])
            .await?;
        let other_fleet = topics::client("fleet-b", ClientTopic::Update, "car");
        let status = topics::client("fleet-a", ClientTopic::Status, "car");
        car.publish(&other_fleet, one.clone(), false).await?;
        car.publish(&status, b"online".to_vec(), true).await?;
        car.flush().await?;
        for _ in 0..5 {
            tap.next(10).await?;
        }
        let tally = tap.tally();
        let want = BTreeMap::from([(1, 2 * one.len() as u64), (2, two.len() as u64)]);
        assert_eq!(tally.update_bytes_by_round, want);
        assert_eq!(tally.update_payloads.len(), 1);
        assert_eq!(tally.update_payloads["car"], vec![one.clone(), one, two]);
        Ok(())
    }
}
