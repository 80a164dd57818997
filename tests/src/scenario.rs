//! The digits data split into a test set and non-IID client partitions,
//! and the server and agent configs that run on it.

use crate::api::{AgentConfig, ServerConfig};
use anyhow::Context;
use convoy_agent::config::{DataConfig, Faults, TrainingConfig};
use convoy_runtime::link::BrokerConfig;
use convoy_server::config::{EvalConfig, ModelConfig, RoundConfig, ServerBroker};
use convoy_shared::codec::Pipeline;
use convoy_shared::dataset::Table;
use convoy_shared::spec::Recipe;
use convoy_shared::spec::TaskKind;
use std::path::PathBuf;

/// Largest MQTT packet every broker, server and client in the tests allows.
pub const MAX_PACKET: usize = 1024 * 1024;

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
        let table = Table::read(convoy_tools::digits::DIGITS_CSV.as_bytes())?;
        let mut order: Vec<usize> = (0..table.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let (test, train) = order.split_at(table.len() / 5);
        let test_csv = dir.path().join("test.csv");
        convoy_tools::csv_file::write_rows(&test_csv, &table, test)?;
        let label = table.column("digit").context("digit column")?;
        let labels: Vec<String> = train.iter().map(|i| table.text(*i, label)).collect();
        let parts = convoy_tools::partition::dirichlet_split(&labels, clients, 0.5, seed, 20);
        let mut client_csvs = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let path = dir.path().join(format!("client-{i}.csv"));
            let rows: Vec<usize> = part.iter().map(|p| train[*p]).collect();
            convoy_tools::csv_file::write_rows(&path, &table, &rows)?;
            client_csvs.push(path);
        }
        Ok(Self {
            dir,
            test_csv,
            client_csvs,
        })
    }

    /// A server config for `fleet` on `broker_url` that runs `rounds`
    /// rounds once `min_clients` vehicles are online.
    pub fn server_config(
        &self,
        broker_url: &str,
        fleet: &str,
        rounds: u64,
        min_clients: usize,
    ) -> ServerConfig {
        ServerConfig {
            fleet: id(fleet),
            db: self.dir.path().join("server.db"),
            broker: ServerBroker {
                link: link(broker_url),
                ..Default::default()
            },
            rounds: RoundConfig {
                total: rounds,
                min_clients,
                min_reports: 1,
                deadline_secs: 30,
                codec: Pipeline::FP32,
                ..Default::default()
            },
            // The schema override: these tests are about rounds, not
            // alignment (tests/tests/align.rs covers that).
            model: ModelConfig {
                schema_csv: Some(self.test_csv.clone()),
                label: Some("digit".into()),
                task: TaskKind::Classification,
                hidden: vec![32],
                init_seed: 7,
            },
            training: Recipe {
                epochs: 1,
                lr: 0.05,
                batch_size: 16,
                ..Default::default()
            },
            eval: EvalConfig {
                test_csv: Some(self.test_csv.clone()),
            },
            ..Default::default()
        }
    }

    /// An agent config for client `i` (`car-<i>`) of `fleet` on `broker_url`.
    pub fn agent_config(&self, broker_url: &str, fleet: &str, i: usize) -> AgentConfig {
        AgentConfig {
            fleet: id(fleet),
            client_id: id(&format!("car-{i}")),
            state_dir: self.dir.path().join(format!("car-{i}.state")),
            broker: link(broker_url),
            identity: Default::default(),
            data: DataConfig::new(
                self.client_csvs[i].clone(),
                "digit",
                TaskKind::Classification,
            ),
            training: TrainingConfig {
                ack_timeout_secs: 2,
                ..Default::default()
            },
            policy: Default::default(),
            limits: Default::default(),
            faults: Faults::default(),
            deployment: None,
        }
    }
}

/// Client settings for the test broker at `url`: an `mqtts://` broker is
/// verified against the test process's throwaway CA.
pub fn link(url: &str) -> BrokerConfig {
    BrokerConfig {
        max_packet_size: MAX_PACKET,
        ca_file: url
            .starts_with("mqtts://")
            .then(|| crate::broker::test_tls().ca.clone()),
        ..BrokerConfig::at(url.parse().expect("the harness builds valid broker URLs"))
    }
}

/// A fleet or vehicle id the harness made (always valid).
fn id(text: &str) -> convoy_shared::topics::TopicId {
    text.parse().expect("the harness builds valid ids")
}
