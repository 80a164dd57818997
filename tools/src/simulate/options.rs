//! The simulator's settings: the `simulate` command's flags.

use super::devices::DeviceModel;
use super::*;

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

/// `rounds.mode`, as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimMode {
    /// Rounds wait for every selected vehicle.
    Sync,
    /// FedBuff: a new model every --async-buffer accepted updates.
    Async,
}

/// `--strategy`: a server optimiser, `fedprox` (FedAvg on the server, the
/// proximal term on the vehicles) or `scaffold` (FedAvg on the server,
/// control variates on both sides).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimStrategy {
    /// The server optimiser.
    pub server: ServerOpt,
    /// Named `fedprox`.
    pub prox: bool,
    /// Named `scaffold`.
    pub scaffold: bool,
}

impl std::str::FromStr for SimStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let plain = SimStrategy {
            server: ServerOpt::FedAvg,
            prox: false,
            scaffold: false,
        };
        match s {
            "fedprox" => Ok(SimStrategy {
                prox: true,
                ..plain
            }),
            "scaffold" => Ok(SimStrategy {
                scaffold: true,
                ..plain
            }),
            _ => Ok(SimStrategy {
                server: s
                    .parse()
                    .map_err(|e| format!("{e}, or fedprox, or scaffold"))?,
                ..plain
            }),
        }
    }
}

impl std::fmt::Display for SimStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prox {
            write!(f, "fedprox")
        } else if self.scaffold {
            write!(f, "scaffold")
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
    /// Folder with the Fashion-MNIST idx.gz files; with --label, a folder
    /// of CSV files, one per vehicle.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub data_dir: PathBuf,
    /// A fleet of CSV files: the label column of every `*.csv` in
    /// --data-dir, one vehicle per file, through the real agents' path
    /// (schema and statistics rounds included; --dataset, --clients and the
    /// partitioners are not used).
    #[arg(long)]
    pub label: Option<String>,
    /// One CSV to split into a fleet (with --label): one file per vehicle
    /// by --csv-split, then the real agents' path as with --data-dir.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// How --csv is spread over --clients vehicles: `iid`,
    /// `condition:COLUMN[:SHARE]` (each vehicle holds mostly one range or
    /// value of COLUMN, SHARE of its rows, default 0.8) or
    /// `features:GROUPS` (the columns fall into GROUPS groups; each vehicle
    /// does not log one of them).
    #[arg(long, default_value = "iid")]
    pub csv_split: crate::csv_split::CsvSplit,
    /// The task of --label.
    #[arg(long, default_value = "classification")]
    pub task: TaskKind,
    /// A CSV of held-out rows the server scores each round's model on
    /// (CSV fleets; without it the figures are the vehicles' own held-out
    /// scores of each round's base model).
    #[arg(long)]
    pub test_csv: Option<PathBuf>,
    /// Number of clients (all take part every round).
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// Number of rounds.
    #[arg(long, default_value_t = 30)]
    pub rounds: u64,
    /// How rows are spread over clients.
    #[arg(long, value_enum, default_value_t = Partition::Dirichlet)]
    pub partition: Partition,
    /// Shards per client of the shards partition (about that many classes each).
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
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
    /// An update weighs at most this multiple of the round's median claim
    /// (0: no cap; `aggregation.median_cap`).
    #[arg(long, default_value_t = AggregationConfig::default().median_cap)]
    pub median_cap: f64,
    /// An update weighs at most this multiple of its vehicle's largest
    /// earlier weight (0: no cap; `aggregation.growth_cap`).
    #[arg(long, default_value_t = AggregationConfig::default().growth_cap)]
    pub growth_cap: f64,
    /// Updates above this multiple of the median norm are scaled down to
    /// it (0: off; `rounds.norm_bound`).
    #[arg(long, default_value_t = RoundConfig::default().norm_bound)]
    pub norm_bound: f64,
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
    /// The strategy: `fedavg`, `fedavgm`, `fedprox`, `scaffold`,
    /// `fedadagrad`, `fedadam` or `fedyogi`, with hyper-parameters as in `[strategy]
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
    /// Synchronous rounds, or asynchronous buffered aggregation (FedBuff;
    /// `rounds.mode`).
    #[arg(long, value_enum, default_value_t = SimMode::Sync)]
    pub mode: SimMode,
    /// Asynchronous rounds: accepted updates per new model
    /// (`rounds.async_buffer`).
    #[arg(long, default_value_t = RoundConfig::default().async_buffer)]
    pub async_buffer: usize,
    /// Asynchronous rounds: most versions an update's model may lag
    /// (`rounds.max_staleness`).
    #[arg(long, default_value_t = RoundConfig::default().max_staleness)]
    pub max_staleness: u64,
    /// Online vehicles needed to open a round (0: every vehicle;
    /// `rounds.min_clients`).
    #[arg(long, default_value_t = 0)]
    pub min_clients: usize,
    /// Seconds from a round's announcement to its deadline
    /// (`rounds.deadline_secs`; simulated seconds under --online).
    #[arg(long, default_value_t = 600)]
    pub deadline_secs: u64,
    /// The availability and device model (a simulated clock).
    #[command(flatten)]
    pub devices: DeviceModel,
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
    /// Name of this run in the results (default: the codec).
    #[arg(long)]
    pub name: Option<String>,
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
