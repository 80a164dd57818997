//! `convoy-server simulate`: a fleet of tens to hundreds of agents on a
//! partitioned data set, through the real server code path and the real
//! embedded broker, writing per-round CSV/JSON and a summary.

use super::digits::DIGITS_CSV;
use super::partition::{Partition, partition};
use super::{fleet, idx};
use anyhow::Context;
use convoy_agent::LocalData;
use convoy_agent::config::Attack;
use convoy_server::config::{
    AggregationConfig, RoundConfig, ServerConfig, StrategyConfig, Weights,
};
use convoy_server::run::{Prepared, TestSet};
use convoy_shared::codec::Pipeline;
use convoy_shared::dataset::{Dataset, Table};
use convoy_shared::spec::{Feature, Head, ModelSpec, Recipe, TaskKind};
use convoy_shared::strategy::robust::Rule;
use convoy_shared::strategy::server::{Schedule, ServerOpt};
use convoy_shared::units::human_bytes;
use convoy_store::{ClientStatus, RoundRow, RoundStatus};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

mod output;
mod seeds;

pub use output::{SimResult, SimRound};
use output::{progress_bar, show_waiting, write_outputs};

/// How the simulated fleet talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// The real embedded MQTT broker on loopback.
    Mqtt,
    /// In-process channels with the same topics and payloads (faster).
    Memory,
}

/// Data sets the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimDataset {
    /// Fashion-MNIST from Debian's `dataset-fashion-mnist` (60k/10k, 784 features).
    FashionMnist,
    /// The bundled digits (1797 rows, 64 features; 20 % held out).
    Digits,
}

/// `[aggregation] weights`, as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimWeights {
    /// By claimed rows, capped.
    Samples,
    /// One each.
    Equal,
}

/// `--strategy`: a server optimiser, or `fedprox` (FedAvg on the server,
/// the proximal term on the vehicles).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimStrategy {
    /// The server optimiser.
    pub server: ServerOpt,
    /// Named `fedprox`.
    pub prox: bool,
}

impl std::str::FromStr for SimStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "fedprox" {
            return Ok(SimStrategy {
                server: ServerOpt::FedAvg,
                prox: true,
            });
        }
        Ok(SimStrategy {
            server: s.parse().map_err(|e| format!("{e}, or fedprox"))?,
            prox: false,
        })
    }
}

impl std::fmt::Display for SimStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prox {
            write!(f, "fedprox")
        } else {
            write!(f, "{}", self.server.name())
        }
    }
}

/// Simulator settings (also the `simulate` command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct SimOptions {
    /// Data set.
    #[arg(long, value_enum, default_value_t = SimDataset::FashionMnist)]
    pub dataset: SimDataset,
    /// Folder with the Fashion-MNIST idx.gz files.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub data_dir: PathBuf,
    /// Number of clients (all take part every round).
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// Number of rounds.
    #[arg(long, default_value_t = 30)]
    pub rounds: u64,
    /// How rows are spread over clients.
    #[arg(long, value_enum, default_value_t = Partition::Dirichlet)]
    pub partition: Partition,
    /// Dirichlet concentration for dirichlet/quantity partitions.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Seed of everything random.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run once per seed (e.g. `42,1,2`) and report the mean ± sd of every
    /// figure; `{seed}` in --partition-file is replaced by each seed.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Uplink codec pipeline, e.g. topk:0.01+q8+zstd.
    #[arg(long, default_value = "fp32")]
    pub codec: Pipeline,
    /// Downlink (model delta) codec pipeline.
    #[arg(long, default_value = "fp32")]
    pub downlink_codec: Pipeline,
    /// Exact keyframe every N rounds (0: never; late joiners still get full models).
    #[arg(long, default_value_t = 0)]
    pub keyframe_every: u64,
    /// Sparsity warm-up rounds for topk/randk codecs.
    #[arg(long, default_value_t = 0)]
    pub warmup_rounds: u64,
    /// How the server combines updates: `cosine[:FLOOR]`, `fedavg`,
    /// `trimmed_mean[:SHARE]`, `median` or `krum[:F]` (the config's
    /// `aggregation.rule`).
    #[arg(long, default_value_t = AggregationConfig::default().rule)]
    pub rule: Rule,
    /// Weigh updates by claimed rows (capped) or equally (`aggregation.weights`).
    #[arg(long, value_enum, default_value_t = SimWeights::Samples)]
    pub weights: SimWeights,
    /// Make the first --attackers vehicles dishonest: `huge[:VALUE]`,
    /// `sign_flip:SCALE`, `inflate[:SCALE[:ROWS]]` or `drift[:SHARE]`.
    #[arg(long)]
    pub attack: Option<Attack>,
    /// How many vehicles run --attack.
    #[arg(long, default_value_t = 1)]
    pub attackers: usize,
    /// Server learning rate η (default: 1 for fedavg, fedavgm and fedprox,
    /// the optimiser's own for fedadagrad, fedadam and fedyogi).
    #[arg(long)]
    pub server_lr: Option<f64>,
    /// The strategy: `fedavg`, `fedavgm`, `fedprox`, `fedadagrad`,
    /// `fedadam` or `fedyogi`, with hyper-parameters as in `[strategy]
    /// server` (e.g. `fedadam:tau=0.01`).
    #[arg(long, default_value = "fedavg")]
    pub strategy: SimStrategy,
    /// FedProx's μ (default 0.01 with `--strategy fedprox`, else 0; any
    /// strategy takes it).
    #[arg(long)]
    pub proximal_mu: Option<f64>,
    /// Server learning-rate schedule: `constant`, `step:EVERY:GAMMA` or
    /// `cosine:ROUNDS[:FLOOR]`.
    #[arg(long, default_value = "constant")]
    pub lr_schedule: Schedule,
    /// A per-row client id file (`.npy` of integers, or a one-column CSV)
    /// giving an exact split made elsewhere; overrides --partition and
    /// --clients.
    #[arg(long)]
    pub partition_file: Option<PathBuf>,
    /// Local epochs.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: u32,
    /// Hidden layer widths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub hidden: Vec<u32>,
    /// Output folder (rounds.csv, rounds.json, summary.txt, sim.db).
    #[arg(long, default_value = "sim-out")]
    pub out: PathBuf,
    /// Label of this run in the results (default: the codec).
    #[arg(long)]
    pub label: Option<String>,
    /// Draw a progress bar on stderr.
    #[arg(long = "quiet", action = clap::ArgAction::SetFalse, help = "Hide the progress bar")]
    pub progress: bool,
    /// The real embedded MQTT broker, or in-process channels (same bytes).
    #[arg(long, value_enum, default_value_t = Transport::Mqtt)]
    pub transport: Transport,
    /// Keep every round's client updates in the database (`store.keep_updates`).
    #[arg(long)]
    pub keep_updates: bool,
    /// `store.max_chain_depth`: deltas after a keyframe before the next.
    #[arg(long, default_value_t = 20)]
    pub max_chain_depth: u32,
    /// `store.max_rebuild_secs`: longest estimated rebuild of a version.
    #[arg(long, default_value_t = 5.0)]
    pub max_rebuild_secs: f64,
    /// The dashboard and metrics while the simulation runs.
    #[command(flatten)]
    pub serve: fleet::ServeOptions,
}

fn load(options: &SimOptions) -> anyhow::Result<(ModelSpec, Dataset, Dataset)> {
    match options.dataset {
        SimDataset::FashionMnist => {
            let open = |name: &str| -> anyhow::Result<std::io::BufReader<std::fs::File>> {
                let path = options.data_dir.join(name);
                let file = std::fs::File::open(&path).with_context(|| {
                    format!(
                        "opening {} (install it: apt-get install dataset-fashion-mnist)",
                        path.display()
                    )
                })?;
                Ok(std::io::BufReader::new(file))
            };
            let images = idx::read_images(open("train-images-idx3-ubyte.gz")?, 100_000)?;
            let labels = idx::read_labels(open("train-labels-idx1-ubyte.gz")?, 100_000)?;
            let test_images = idx::read_images(open("t10k-images-idx3-ubyte.gz")?, 100_000)?;
            let test_labels = idx::read_labels(open("t10k-labels-idx1-ubyte.gz")?, 100_000)?;
            let spec = ModelSpec {
                features: idx::feature_names(images.rows, images.cols)
                    .into_iter()
                    .map(|name| Feature::numeric(name, 0.0, 1.0))
                    .collect(),
                heads: vec![Head::classification(
                    "label",
                    (0..10).map(|c| c.to_string()),
                )],
                hidden: options.hidden.clone(),
                init_seed: options.seed,
            };
            Ok((
                spec,
                idx::to_dataset(&images, &labels, 10)?,
                idx::to_dataset(&test_images, &test_labels, 10)?,
            ))
        }
        SimDataset::Digits => {
            let table = Table::read(DIGITS_CSV.as_bytes())?;
            let spec = table.derive_spec(
                "digit",
                TaskKind::Classification,
                options.hidden.clone(),
                options.seed,
            )?;
            let all = Dataset::from_table(&table, &spec)?;
            let mut order: Vec<usize> = (0..all.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(options.seed));
            let (test, train) = order.split_at(all.len() / 5);
            Ok((spec, all.subset(train), all.subset(test)))
        }
    }
}

/// Runs the simulation and writes `rounds.csv`, `rounds.json` and
/// `summary.txt` under `options.out`; with `--seeds`, once per seed under
/// `seed-<n>/` and the mean ± sd of every figure in `seeds.json` and
/// `summary.txt` (the last seed's result comes back).
pub async fn run(options: SimOptions, shutdown: CancellationToken) -> anyhow::Result<SimResult> {
    if options.seeds.is_empty() {
        return run_one(options, shutdown).await;
    }
    seeds::run(options, shutdown).await
}

async fn run_one(options: SimOptions, shutdown: CancellationToken) -> anyhow::Result<SimResult> {
    anyhow::ensure!(
        options.clients >= 1 && options.rounds >= 1,
        "--clients and --rounds must be at least 1"
    );
    let (spec, train, test) = load(&options)?;
    let parts = match &options.partition_file {
        Some(file) => crate::split_file::read(file, train.len())?,
        None => partition(
            train.targets(),
            options.clients,
            options.partition,
            options.alpha,
            options.seed,
        ),
    };
    let asked = parts.len();
    // A vehicle without rows can never report: leave it out, loudly, rather
    // than make every round wait for it until its deadline.
    let (parts, empty): (Vec<_>, Vec<_>) = parts.into_iter().partition(|p| !p.is_empty());
    if !empty.is_empty() {
        eprintln!(
            "warning: {} of {asked} clients got no rows from the split and are left out",
            empty.len(),
        );
    }
    anyhow::ensure!(
        !parts.is_empty(),
        "no client got any rows; use fewer --clients or another --partition"
    );
    let left_out = empty.len();
    std::fs::create_dir_all(&options.out)?;
    let db = options.out.join("sim.db");
    let db_path = db.clone();
    for stale in ["sim.db", "sim.db-wal", "sim.db-shm"] {
        let _ = std::fs::remove_file(options.out.join(stale));
    }
    let _ = std::fs::remove_dir_all(options.out.join("sim.db.models"));
    let state = options.out.join("agents");
    let _ = std::fs::remove_dir_all(&state);

    let broker = match options.transport {
        Transport::Mqtt => fleet::local_broker(&db, "sim").await?,
        // a fresh name per run: several simulations may share a process
        Transport::Memory => fleet::LocalBroker::memory(format!(
            "sim-{}-{}",
            std::process::id(),
            convoy_runtime::clock::now_ms()
        )),
    };
    let server = ServerConfig {
        fleet: "sim".parse().map_err(anyhow::Error::msg)?,
        db,
        broker: fleet::server_broker(&broker),
        rounds: RoundConfig {
            total: options.rounds,
            min_clients: parts.len(),
            min_reports: 1,
            sample_fraction: 1.0,
            deadline_secs: 600,
            codec: options.codec,
            downlink_codec: options.downlink_codec,
            keyframe_every: options.keyframe_every,
            codec_warmup_rounds: options.warmup_rounds,
            seed: options.seed,
            ..Default::default()
        },
        strategy: StrategyConfig {
            server: options.strategy.server,
            server_lr: options.server_lr,
            lr_schedule: options.lr_schedule,
            proximal_mu: options.proximal_mu.unwrap_or(if options.strategy.prox {
                0.01
            } else {
                0.0
            }),
        },
        model: convoy_server::config::ModelConfig {
            hidden: spec.hidden.clone(),
            init_seed: spec.init_seed,
            ..Default::default()
        },
        training: Recipe {
            epochs: options.epochs,
            lr: options.lr,
            batch_size: options.batch_size,
            ..Default::default()
        },
        aggregation: AggregationConfig {
            rule: options.rule,
            weights: match options.weights {
                SimWeights::Samples => Weights::Samples,
                SimWeights::Equal => Weights::Equal,
            },
            ..Default::default()
        },
        store: convoy_server::config::StorePolicy {
            keep_updates: options.keep_updates,
            max_chain_depth: options.max_chain_depth,
            max_rebuild_secs: options.max_rebuild_secs,
            ..Default::default()
        },
        // served below, so it can outlive the run
        ..Default::default()
    };
    server.validate()?;
    let (server_lr, strategy) = (server.round_lr(1), server.strategy_of(1));
    let agents = parts
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            let id = format!("sim-{i:03}");
            let mut config = fleet::agent_config(
                "sim",
                &id,
                &broker,
                state.join(&id),
                fleet::prepared_data_config(&spec.primary().label),
            )?;
            if i < options.attackers {
                config.faults.attack = options.attack;
            }
            Ok((
                config,
                Some(LocalData::Prepared(Arc::new(train.subset(rows)))),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let prepared = Prepared {
        spec: Some(spec),
        test: TestSet::Ready(Arc::new(test)),
    };
    let started = Instant::now();
    let (mut up, mut down) = (0u64, 0u64);
    let (progress, total) = (options.progress, options.rounds);
    let dashboard = fleet::Dashboard::start(&options.serve, &server).await?;
    if let Some(d) = &dashboard {
        eprintln!("dashboard: {}", d.url());
    }
    let ticker = progress.then(|| tokio::spawn(show_waiting(db_path.clone(), total)));
    let live = dashboard.as_ref().map(|d| d.live.clone());
    let (rows, _) = fleet::run(
        server,
        Some(prepared),
        agents,
        shutdown.clone(),
        live,
        |row| {
            up += row.bytes_up;
            down += row.bytes_down;
            if progress {
                progress_bar(row.round.min(total), total, row, up, down);
            }
        },
    )
    .await?;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if progress {
        eprintln!();
    }
    if let Some(d) = dashboard {
        d.finish(&shutdown).await;
    }
    let rounds: Vec<SimRound> = rows.iter().map(SimRound::from).collect();
    let suspected = convoy_store::Store::open(&db_path)?
        .suspicions()?
        .values()
        .map(|s| s.count)
        .sum();
    let accuracies: Vec<f64> = rounds.iter().filter_map(|r| r.accuracy).collect();
    let result = SimResult {
        label: options
            .label
            .clone()
            .unwrap_or_else(|| options.codec.to_string()),
        alpha: (options.partition_file.is_none() && options.partition != Partition::Iid)
            .then_some(options.alpha),
        partition: match &options.partition_file {
            Some(file) => format!(
                "file:{}",
                file.file_name().unwrap_or_default().to_string_lossy()
            ),
            None => format!("{:?}", options.partition).to_lowercase(),
        },
        transport: format!("{:?}", options.transport).to_lowercase(),
        codec: options.codec.to_string(),
        downlink_codec: options.downlink_codec.to_string(),
        server_lr,
        strategy: options.strategy.to_string(),
        strategy_detail: strategy,
        rule: options.rule.to_string(),
        attack: options.attack.map(|a| a.to_string()),
        attackers: if options.attack.is_some() {
            options.attackers.min(parts.len())
        } else {
            0
        },
        suspected,
        warmup_rounds: options.warmup_rounds,
        keyframe_every: options.keyframe_every,
        clients: asked,
        clients_left_out: left_out,
        seed: options.seed,
        final_accuracy: accuracies.last().copied(),
        best_accuracy: accuracies.iter().copied().reduce(f64::max),
        last5_accuracy: (!accuracies.is_empty()).then(|| {
            let tail = &accuracies[accuracies.len().saturating_sub(5)..];
            tail.iter().sum::<f64>() / tail.len() as f64
        }),
        rounds_to_80: rounds
            .iter()
            .find(|r| r.accuracy.is_some_and(|a| a >= 0.8))
            .map(|r| r.round),
        bytes_up: rounds.iter().map(|r| r.bytes_up).sum(),
        bytes_down: rounds.iter().map(|r| r.bytes_down).sum(),
        wall_seconds: started.elapsed().as_secs_f64(),
        rounds,
    };
    write_outputs(&options.out, &result)?;
    Ok(result)
}
