//! Harness for convoy's end-to-end tests: a real broker on an ephemeral
//! loopback port, the real server and real agents, all in-process, plus an
//! independent MQTT subscriber that counts what crosses the wire.

#![forbid(unsafe_code)]

use anyhow::Context;
use convoy_agent::config::{AgentConfig, DataConfig, Faults, TrainingConfig};
use convoy_agent::mqtt::BrokerConfig;
use convoy_server::config::{EvalConfig, ModelConfig, RoundConfig, ServerBroker, ServerConfig};
use convoy_server::store::RoundRow;
use convoy_shared::dataset::Table;
use convoy_shared::spec::{Recipe, TaskKind};
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::wire::{self, Kind};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Fleet name used by the tests.
pub const FLEET: &str = "e2e";

/// Log to the test's captured output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off")),
        )
        .with_test_writer()
        .try_init();
}

/// Starts an embedded rumqttd on a free loopback port; returns its URL.
pub fn start_broker() -> anyhow::Result<String> {
    let addr = convoy_server::broker::free_local_addr()?;
    let addr = convoy_server::broker::start_embedded(&addr.to_string(), 1024 * 1024)?;
    Ok(format!("mqtt://{addr}"))
}

/// A work folder with the digits data split into a test set and `clients`
/// non-IID partitions.
#[derive(Debug)]
pub struct Scenario {
    /// Temporary folder (deleted on drop).
    pub dir: tempfile::TempDir,
    /// Server's schema/test CSV.
    pub test_csv: PathBuf,
    /// One CSV per client.
    pub client_csvs: Vec<PathBuf>,
}

impl Scenario {
    /// Splits the bundled digits data (seed fixed) into `clients` parts.
    pub fn digits(clients: usize, seed: u64) -> anyhow::Result<Self> {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let dir = tempfile::tempdir()?;
        let table = Table::read(convoy_server::tools::digits::DIGITS_CSV.as_bytes())?;
        let mut order: Vec<usize> = (0..table.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let (test, train) = order.split_at(table.len() / 5);
        let test_csv = dir.path().join("test.csv");
        convoy_server::tools::csv_file::write_rows(&test_csv, &table, test)?;
        let label = table.column("digit").context("digit column")?;
        let labels: Vec<String> = train.iter().map(|i| table.text(*i, label)).collect();
        let parts =
            convoy_server::tools::partition::dirichlet_split(&labels, clients, 0.5, seed, 20);
        let mut client_csvs = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let path = dir.path().join(format!("client-{i}.csv"));
            let rows: Vec<usize> = part.iter().map(|p| train[*p]).collect();
            convoy_server::tools::csv_file::write_rows(&path, &table, &rows)?;
            client_csvs.push(path);
        }
        Ok(Self {
            dir,
            test_csv,
            client_csvs,
        })
    }

    /// A server config for this scenario on `broker_url`.
    pub fn server_config(&self, broker_url: &str, rounds: u64, min_clients: usize) -> ServerConfig {
        ServerConfig {
            fleet: FLEET.into(),
            db: self.dir.path().join("server.db"),
            broker: ServerBroker {
                url: broker_url.into(),
                max_packet_size: 1024 * 1024,
                ..Default::default()
            },
            rounds: RoundConfig {
                total: rounds,
                min_clients,
                min_reports: 1,
                deadline_secs: 30,
                codec: "fp32".into(),
                ..Default::default()
            },
            model: ModelConfig {
                schema_csv: self.test_csv.clone(),
                label: "digit".into(),
                task: TaskKind::Classification,
                hidden: vec![32],
                init_seed: 7,
            },
            training: Recipe {
                epochs: 1,
                lr: 0.05,
                batch_size: 16,
            },
            eval: EvalConfig {
                test_csv: Some(self.test_csv.clone()),
            },
        }
    }

    /// An agent config for client `i` on `broker_url`.
    pub fn agent_config(&self, broker_url: &str, i: usize) -> AgentConfig {
        AgentConfig {
            fleet: FLEET.into(),
            client_id: format!("car-{i}"),
            state_dir: self.dir.path().join(format!("car-{i}.state")),
            broker: BrokerConfig {
                url: broker_url.into(),
                max_packet_size: 1024 * 1024,
                ..Default::default()
            },
            data: DataConfig {
                path: self.client_csvs[i].clone(),
                label: "digit".into(),
                task: TaskKind::Classification,
            },
            training: TrainingConfig {
                ack_timeout_secs: 2,
                ..Default::default()
            },
            policy: Default::default(),
            faults: Faults::default(),
            deployment: String::new(),
        }
    }
}

/// A running server task and the rounds it reports.
#[derive(Debug)]
pub struct ServerRun {
    /// Stops it gracefully.
    pub stop: CancellationToken,
    /// Closed rounds, as they close.
    pub rounds: mpsc::UnboundedReceiver<RoundRow>,
    /// The task.
    pub task:
        tokio::task::JoinHandle<Result<convoy_server::RunSummary, convoy_server::ServerError>>,
}

/// Spawns the server.
pub fn spawn_server(config: ServerConfig) -> ServerRun {
    let stop = CancellationToken::new();
    let (tx, rounds) = mpsc::unbounded_channel();
    let task = tokio::spawn(convoy_server::run_observed(config, stop.clone(), Some(tx)));
    ServerRun { stop, rounds, task }
}

/// Spawns an agent.
pub fn spawn_agent(
    config: AgentConfig,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), convoy_agent::AgentError>> {
    tokio::spawn(convoy_agent::run(config, stop.clone()))
}

/// Waits for the next closed round, failing after `secs`.
pub async fn next_round(run: &mut ServerRun, secs: u64) -> anyhow::Result<RoundRow> {
    tokio::time::timeout(Duration::from_secs(secs), run.rounds.recv())
        .await
        .context("timed out waiting for a round to close")?
        .context("server stopped before the round closed")
}

/// What the independent subscriber saw on update topics.
#[derive(Debug, Default, Clone)]
pub struct WireTally {
    /// Payload bytes per round (envelopes included, as the ledger counts).
    pub update_bytes_by_round: BTreeMap<u64, u64>,
    /// Raw update payloads per client, in arrival order.
    pub update_payloads: BTreeMap<String, Vec<Vec<u8>>>,
}

/// An MQTT client, independent of convoy's own, that counts payload bytes
/// on `convoy/v1/<fleet>/update/+`.
#[derive(Debug)]
pub struct Watcher {
    /// What it saw so far.
    pub tally: Arc<Mutex<WireTally>>,
    /// Stops it.
    pub stop: CancellationToken,
}

impl Watcher {
    /// Connects and subscribes; returns once the subscription is acknowledged.
    pub async fn start(broker_url: &str) -> anyhow::Result<Self> {
        let broker = BrokerConfig {
            url: broker_url.into(),
            max_packet_size: 1024 * 1024,
            ..Default::default()
        };
        let (client, mut eventloop) =
            rumqttc::AsyncClient::new(broker.options("e2e-watcher", None)?, 64);
        let filter = topics::all_clients(FLEET, ClientTopic::Update);
        client
            .subscribe(filter.as_str(), rumqttc::QoS::AtLeastOnce)
            .await?;
        let tally = Arc::new(Mutex::new(WireTally::default()));
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (t, s) = (tally.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let _client = client;
            loop {
                let event = tokio::select! {
                    _ = s.cancelled() => break,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let Some((_, client)) = topics::parse_client(FLEET, &p.topic) else {
                            continue;
                        };
                        let mut tally = t.lock().expect("tally lock");
                        tally
                            .update_payloads
                            .entry(client.to_string())
                            .or_default()
                            .push(p.payload.to_vec());
                        if let Ok(chunk) = wire::decode::<convoy_shared::messages::UpdateChunk>(
                            &p.payload,
                            Kind::UpdateChunk,
                            1 << 20,
                        ) {
                            *tally.update_bytes_by_round.entry(chunk.round).or_default() +=
                                p.payload.len() as u64;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("watcher subscription not acknowledged")??;
        Ok(Self { tally, stop })
    }

    /// A copy of the tally.
    pub fn snapshot(&self) -> WireTally {
        self.tally.lock().expect("tally lock").clone()
    }
}

/// Publishes raw payloads as `client` on its update topic (for replay and
/// malformed-input tests).
pub async fn publish_raw(
    broker_url: &str,
    client_id: &str,
    payloads: &[Vec<u8>],
) -> anyhow::Result<()> {
    let broker = BrokerConfig {
        url: broker_url.into(),
        max_packet_size: 1024 * 1024,
        ..Default::default()
    };
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(broker.options(&format!("{client_id}-raw"), None)?, 64);
    let topic = topics::client(FLEET, ClientTopic::Update, client_id);
    for p in payloads {
        client
            .publish(topic.as_str(), rumqttc::QoS::AtLeastOnce, false, p.clone())
            .await?;
    }
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acked < payloads.len() {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .context("publishing timed out")??;
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event {
            acked += 1;
        }
    }
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    Ok(())
}

/// A bare MQTT client for playing a misbehaving vehicle.
#[derive(Debug)]
pub struct RawClient {
    /// For publishing.
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<rumqttc::Publish>,
    stop: CancellationToken,
}

impl RawClient {
    /// Connects as `id`.
    pub async fn connect(broker_url: &str, id: &str) -> anyhow::Result<Self> {
        let broker = BrokerConfig {
            url: broker_url.into(),
            max_packet_size: 1024 * 1024,
            ..Default::default()
        };
        let (client, mut eventloop) = rumqttc::AsyncClient::new(broker.options(id, None)?, 256);
        let (tx, events) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = s.cancelled() => break,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Ok(Self {
            client,
            events,
            stop,
        })
    }

    /// Waits for the next publish on any subscribed topic.
    pub async fn next(&mut self, secs: u64) -> anyhow::Result<rumqttc::Publish> {
        tokio::time::timeout(Duration::from_secs(secs), self.events.recv())
            .await
            .context("timed out waiting for a message")?
            .context("client stopped")
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
