//! The sections of the server config other than its top level: `[http]`,
//! `[budget]`, `[identity]`, `[broker]`, `[rounds]`, `[aggregation]`,
//! `[model]`, `[align]` and `[eval]`, each with its defaults.

use super::*;

/// The HTTP server (`/metrics`, `/api/v1/*`, `/healthz`, `/readyz`, the
/// dashboard at `/`). Off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve on, e.g. `127.0.0.1:9464` (port 0: any free port);
    /// empty: no HTTP server.
    pub listen: String,
    /// Most vehicles given series of their own in `/metrics` (those with
    /// the most bytes); the rest are summed under `vehicle="_other"`
    /// (0 to 10000).
    pub vehicle_series_cap: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            vehicle_series_cap: 100,
        }
    }
}

/// Caps on the MQTT bytes (up plus down, framing included) one vehicle
/// may use per UTC day and per calendar month; 0 is no cap. A vehicle
/// whose use so far plus the round's predicted cost would pass a cap is
/// not selected, and its ledger row for that round says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// MB (10^6 bytes) per vehicle per UTC day.
    pub daily_mb: f64,
    /// MB per vehicle per calendar month (UTC).
    pub monthly_mb: f64,
}

impl BudgetConfig {
    /// The daily cap in bytes, if any.
    pub fn daily_bytes(&self) -> Option<u64> {
        (self.daily_mb > 0.0).then_some((self.daily_mb * 1e6) as u64)
    }

    /// The monthly cap in bytes, if any.
    pub fn monthly_bytes(&self) -> Option<u64> {
        (self.monthly_mb > 0.0).then_some((self.monthly_mb * 1e6) as u64)
    }
}

/// Where the server's signing key lives, and how keys are rotated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerIdentity {
    /// The server's ed25519 secret key, created on first start (0600) with
    /// its public half beside it as `server.pub`, which `provision` installs
    /// on vehicles. Unset: `server.key` beside the database.
    pub key_file: Option<PathBuf>,
    /// After a key rotation (`keys rotate-server`, `provision --rotate`),
    /// how long, in hours, what the previous key signed still counts (a
    /// retained announcement, an update a vehicle stored before it got its
    /// new key); after that it is refused (`bad_signature`). 0 to 8760.
    pub rotation_overlap_hours: u64,
}

impl Default for ServerIdentity {
    fn default() -> Self {
        Self {
            key_file: None,
            rotation_overlap_hours: 168,
        }
    }
}

/// Broker settings: the client keys every convoy binary shares
/// ([`BrokerConfig`]: `url`, `username`, `password`, `password_file`,
/// `max_packet_size`, `keep_alive_secs`) plus the server's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerBroker {
    /// Plain-TCP listen address of the embedded broker (used when `url` is
    /// unset); empty: none. Any address but loopback needs
    /// `allow_plaintext = true`: vehicles should use `tls_listen`.
    pub listen: String,
    /// TLS listen address of the embedded broker (for example
    /// `0.0.0.0:8883`); empty: none. Needs `tls_cert` and `tls_key`.
    pub tls_listen: String,
    /// The embedded broker's certificate chain (PEM), which vehicles verify
    /// against their `broker.ca_file` (`convoy-server tls init` makes a CA
    /// and one).
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Require every TLS client to present a certificate signed by this CA
    /// (PEM): mutual TLS. `provision --tls-ca` issues vehicle certificates.
    pub tls_client_ca: Option<PathBuf>,
    /// Provisioned ids (`convoy-server provision deployer`) that may read
    /// the vehicles' status topics on the embedded broker and nothing else:
    /// `deploy`'s check that an agent came up (its `status_username`), or a
    /// monitoring account. Vehicles may not read each other's topics.
    pub status_readers: Vec<String>,
    /// MQTT client id of the server; the embedded broker lets no one else
    /// take it.
    pub client_id: String,
    /// Let the embedded broker accept clients without credentials. Off by
    /// default: only the server and provisioned vehicles (user name = client
    /// id, password from `provision`) may connect. Signatures are checked
    /// either way.
    pub allow_anonymous: bool,
    /// How the server's client reaches the broker; an unset `url` runs the
    /// embedded broker. `max_packet_size` is also the embedded broker's
    /// payload limit.
    #[serde(flatten)]
    pub link: BrokerConfig,
    /// Keys no setting knows; refused by `validate` (serde cannot deny
    /// unknown fields beside a flattened struct).
    #[serde(flatten, skip_serializing)]
    pub unknown: std::collections::BTreeMap<String, toml::Value>,
}

impl Default for ServerBroker {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:1883".into(),
            tls_listen: String::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            status_readers: Vec::new(),
            client_id: "convoy-server".into(),
            allow_anonymous: false,
            link: BrokerConfig::default(),
            unknown: Default::default(),
        }
    }
}

/// How rounds run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundConfig {
    /// Rounds to run before exiting; 0 runs until stopped.
    pub total: u64,
    /// Online clients needed to open a round (1 to 1,000,000).
    pub min_clients: usize,
    /// Accepted updates needed to publish a new model; fewer fails the
    /// round (1 to 1,000,000).
    pub min_reports: usize,
    /// Share of eligible online clients asked to train each round (0, 1].
    pub sample_fraction: f64,
    /// Seconds from announcement to deadline (1 to a week); later updates
    /// are counted late.
    pub deadline_secs: u64,
    /// Update codec pipeline, e.g. `fp32`, `q8+zstd`, `topk:0.01+q8+zstd`.
    pub codec: Pipeline,
    /// Codec of the model delta published each round (`fp32`: full models only).
    pub downlink_codec: Pipeline,
    /// Rounds of sparsity warm-up: a `topk`/`randk` codec starts at 25 % kept
    /// and shrinks 4x a round down to its own fraction (0: none; at most 1000).
    pub codec_warmup_rounds: u64,
    /// Server learning rate applied to the averaged update (1: plain
    /// FedAvg; above 0, at most 100).
    pub server_lr: f64,
    /// Every this many rounds the published model is exact (a keyframe) and
    /// the server's downlink residual restarts; 0 never (agents that are
    /// behind still fetch the full model on demand).
    pub keyframe_every: u64,
    /// Chunk size for updates, bytes (1 KiB up to `broker.max_packet_size`
    /// less 1 KiB; 128 KiB fits AWS IoT-style limits).
    pub chunk_size: usize,
    /// Largest reassembled update accepted, bytes (1 KiB to 1 GiB).
    pub max_update_bytes: usize,
    /// Seed for client sampling.
    pub seed: u64,
    /// Largest sample count one update may claim (1 to 1e9); an update may
    /// also claim no more rows than its vehicle's status declared, so one
    /// vehicle cannot outweigh the fleet.
    pub max_samples: u64,
    /// Updates whose L2 norm exceeds this multiple of the median norm
    /// (of the previous round, or of this round's first updates) are scaled
    /// down to it; 0 turns the check off (otherwise 1 to 1000).
    pub norm_bound: f64,
    /// Seconds without a signed message after which a vehicle counts as
    /// offline and is not selected (10 to 86400). Agents send a status at
    /// least every 30 s.
    pub offline_after_secs: u64,
    /// The model the fleet should run: `last`, `best` (by the vehicles'
    /// held-out score of each model) or `best_within:N` (the best of the
    /// last N); `models fleet` shows it beside the latest.
    pub deploy: Deploy,
    /// Stop training after this many scored models without a better one
    /// than the best so far (0: never).
    pub early_stop_rounds: u64,
    /// `sync`: a round waits for its selected vehicles (or its deadline);
    /// `async`: buffered asynchronous aggregation (FedBuff), a new model
    /// after every `async_buffer` accepted updates, trained on models up to
    /// `max_staleness` versions old (see docs/strategies.md).
    pub mode: RoundMode,
    /// Asynchronous rounds: accepted updates per new model (1 to 1,000,000).
    pub async_buffer: usize,
    /// Asynchronous rounds: an update trained on a model more than this
    /// many versions older than the current one is refused, with the
    /// reason (0 to 1000). The rest count scaled by 1/√(1 + staleness).
    pub max_staleness: u64,
}

/// How rounds wait for updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundMode {
    /// A round closes when its selected vehicles have reported, or at its
    /// deadline; a newer round abandons an older one on the vehicles.
    Sync,
    /// FedBuff: a round closes after `async_buffer` accepted updates, from
    /// any round up to `max_staleness` versions back.
    Async,
}

impl RoundConfig {
    /// The staleness bound rounds announce: `max_staleness` in
    /// asynchronous mode, 0 (synchronous) otherwise.
    pub fn announced_staleness(&self) -> u32 {
        match self.mode {
            RoundMode::Sync => 0,
            RoundMode::Async => self.max_staleness.min(u32::MAX as u64) as u32,
        }
    }

    /// The factor a stale update is scaled by: 1/√(1 + s).
    pub fn staleness_weight(staleness: u64) -> f64 {
        1.0 / (1.0 + staleness as f64).sqrt()
    }
}

impl Default for RoundConfig {
    fn default() -> Self {
        Self {
            total: 0,
            min_clients: 2,
            min_reports: 1,
            sample_fraction: 1.0,
            deadline_secs: 120,
            codec: Pipeline::FP32,
            downlink_codec: Pipeline::FP32,
            keyframe_every: 10,
            codec_warmup_rounds: 0,
            server_lr: 1.0,
            chunk_size: convoy_shared::chunk::DEFAULT_CHUNK_SIZE,
            max_update_bytes: 64 * 1024 * 1024,
            seed: 42,
            max_samples: 1_000_000,
            norm_bound: 5.0,
            offline_after_secs: 120,
            deploy: Deploy::Last,
            early_stop_rounds: 0,
            mode: RoundMode::Sync,
            async_buffer: 10,
            max_staleness: 4,
        }
    }
}

/// How a round's accepted updates become the next model, and how far the
/// server trusts what each vehicle says (see docs/security.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregationConfig {
    /// `cosine[:FLOOR]` (FedAvg over the updates whose cosine with the
    /// round's coordinate-wise trimmed mean is at least FLOOR, default 0),
    /// `fedavg` (streamed, O(model) memory), `trimmed_mean[:SHARE]` (per
    /// parameter, drop SHARE of the lowest and of the highest values),
    /// `median`, or `krum[:F]` (multi-Krum assuming F dishonest vehicles).
    pub rule: Rule,
    /// `samples`: an update weighs the rows its vehicle claims, capped as
    /// below; `equal`: every update weighs the same.
    pub weights: Weights,
    /// An update weighs at most this multiple of the round's median claim
    /// (0: no cap; otherwise 1 to 1000).
    pub median_cap: f64,
    /// An update weighs at most this multiple of its vehicle's largest
    /// weight in earlier rounds (0: no cap; otherwise 1 to 1000).
    pub growth_cap: f64,
    /// Most memory the robust rules hold updates in, MiB (1 to 65536);
    /// beyond it they work through the parameters in blocks, reading the
    /// round's updates back from the database for each block.
    pub memory_mb: u64,
    /// Flag a vehicle as suspected when its update's cosine with the
    /// round's aggregate is below this (-1 to 1).
    pub suspect_cosine: f64,
}

/// How updates are weighted against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weights {
    /// By the rows each vehicle claims, capped.
    Samples,
    /// One each.
    Equal,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        Self {
            rule: Rule::Cosine { floor: 0.0 },
            weights: Weights::Samples,
            median_cap: 3.0,
            growth_cap: 4.0,
            memory_mb: 256,
            suspect_cosine: 0.0,
        }
    }
}

impl AggregationConfig {
    /// The weighting rules the pure aggregation code applies.
    pub fn weighting(&self) -> Weighting {
        Weighting {
            equal: self.weights == Weights::Equal,
            median_cap: self.median_cap,
            growth_cap: self.growth_cap,
        }
    }

    /// `memory_mb` in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mb as usize) << 20
    }

    /// `None` when every value is in range, else what is wrong.
    pub fn problem(&self) -> Option<String> {
        let cap = |v: f64| v == 0.0 || (1.0..=1000.0).contains(&v);
        if !cap(self.median_cap) || !cap(self.growth_cap) {
            return Some(format!(
                "aggregation.median_cap {} and aggregation.growth_cap {} must each be 0 (no cap) or 1 to 1000",
                self.median_cap, self.growth_cap
            ));
        }
        if !(1..=65_536).contains(&self.memory_mb) {
            return Some(format!(
                "aggregation.memory_mb {} must be 1 to 65536",
                self.memory_mb
            ));
        }
        if !(-1.0..=1.0).contains(&self.suspect_cosine) {
            return Some(format!(
                "aggregation.suspect_cosine {} must be -1 to 1",
                self.suspect_cosine
            ));
        }
        None
    }
}

/// Model architecture. The features, their normalisation and the classes
/// come from the fleet's alignment rounds; `schema_csv` overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Optional override: derive the features, normalisation and classes
    /// from this CSV instead of aligning with the fleet (needs `label`).
    pub schema_csv: Option<PathBuf>,
    /// Label column of `schema_csv`.
    pub label: Option<String>,
    /// `classification` or `regression`, for `schema_csv`.
    pub task: TaskKind,
    /// Hidden layer widths.
    pub hidden: Vec<u32>,
    /// Seed of the initial weights.
    pub init_seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            schema_csv: None,
            label: None,
            task: TaskKind::Classification,
            hidden: default_hidden(),
            init_seed: default_seed(),
        }
    }
}

/// The schema and statistics rounds that run before the first training
/// round when the database holds no model yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlignConfig {
    /// Local column name → fleet column name, e.g. `speed_kmh = "vehicle_speed"`.
    pub renames: std::collections::BTreeMap<String, String>,
    /// Columns treated as categories even where every cell is a number.
    pub categorical: Vec<String>,
    /// Most categories a feature gets its own input for; the rest share "other".
    pub max_categories: usize,
    /// Vehicles that must answer before the fleet's schema is fixed
    /// (0: `rounds.min_clients`).
    pub min_vehicles: usize,
    /// Seconds each alignment stage waits for vehicles; with fewer than
    /// `min_vehicles` answers it asks again.
    pub deadline_secs: u64,
    /// Once `min_vehicles` have answered, seconds without a new answer
    /// before going ahead (at once when every provisioned vehicle answered).
    pub settle_secs: u64,
}

impl Default for AlignConfig {
    fn default() -> Self {
        let settings = convoy_shared::align::AlignSettings::default();
        Self {
            renames: settings.renames,
            categorical: settings.categorical,
            max_categories: settings.max_categories,
            min_vehicles: 0,
            deadline_secs: 120,
            settle_secs: 5,
        }
    }
}

impl AlignConfig {
    /// The merge rules shared with the pure alignment code.
    pub fn settings(&self) -> convoy_shared::align::AlignSettings {
        convoy_shared::align::AlignSettings {
            renames: self.renames.clone(),
            categorical: self.categorical.clone(),
            max_categories: self.max_categories,
        }
    }
}

/// Server-side evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Test CSV evaluated after every round; none skips evaluation.
    pub test_csv: Option<PathBuf>,
}
