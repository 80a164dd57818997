//! The server's TOML configuration, with documented defaults.

pub use crate::store::StorePolicy;
pub use convoy_runtime::ConfigError;
use convoy_runtime::config::{env_override, load_toml, resolve};
use convoy_runtime::link::{BrokerConfig, BrokerUrl};
use convoy_shared::codec::Pipeline;
use convoy_shared::spec::{Recipe, TaskKind};
use convoy_shared::topics::TopicId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Longest round deadline accepted: a week.
pub const MAX_DEADLINE_SECS: u64 = 7 * 24 * 3600;
/// Smallest update chunk accepted (and smallest `max_update_bytes`).
pub const MIN_CHUNK_SIZE: usize = 1024;
/// Largest reassembled update `max_update_bytes` may allow: 1 GiB.
pub const MAX_UPDATE_BYTES: usize = 1 << 30;

/// Everything the server needs. See `systemd/server.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Fleet served. Env: `CONVOY_FLEET`.
    #[serde(default = "default_fleet")]
    pub fleet: TopicId,
    /// SQLite database; model blobs go to `<db>.models/` beside it. Env: `CONVOY_DB`.
    #[serde(default = "default_db")]
    pub db: PathBuf,
    /// Broker: embedded by default, external when `broker.url` is set.
    #[serde(default)]
    pub broker: ServerBroker,
    /// Round rules.
    #[serde(default)]
    pub rounds: RoundConfig,
    /// Model architecture (and an optional schema override).
    #[serde(default)]
    pub model: ModelConfig,
    /// How vehicles' schemas are aligned before the first round.
    #[serde(default)]
    pub align: AlignConfig,
    /// Local training recipe sent with every round.
    #[serde(default)]
    pub training: Recipe,
    /// Server-side evaluation.
    #[serde(default)]
    pub eval: EvalConfig,
    /// The server's key pair.
    #[serde(default)]
    pub identity: ServerIdentity,
    /// How model versions are kept (keyframes, deltas, replay).
    #[serde(default)]
    pub store: StorePolicy,
    /// The HTTP side: Prometheus metrics, the JSON API, health and the dashboard.
    #[serde(default)]
    pub http: HttpConfig,
    /// Per-vehicle cellular data budgets.
    #[serde(default)]
    pub budget: BudgetConfig,
}

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

/// Where the server's signing key lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServerIdentity {
    /// The server's ed25519 secret key, created on first start (0600) with
    /// its public half beside it as `server.pub`, which `provision` installs
    /// on vehicles. Unset: `server.key` beside the database.
    pub key_file: Option<PathBuf>,
}

/// Broker settings: the client keys every convoy binary shares
/// ([`BrokerConfig`]: `url`, `username`, `password`, `password_file`,
/// `max_packet_size`, `keep_alive_secs`) plus the server's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerBroker {
    /// Listen address of the embedded broker (used when `url` is unset).
    pub listen: String,
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
        }
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

fn default_fleet() -> TopicId {
    TopicId::default_fleet()
}
fn default_db() -> PathBuf {
    PathBuf::from("/var/lib/convoy-server/convoy.db")
}
fn default_hidden() -> Vec<u32> {
    vec![64]
}
fn default_seed() -> u64 {
    42
}

impl ServerConfig {
    /// Reads, applies env overrides, resolves relative paths against the
    /// config file's folder, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: ServerConfig = load_toml(path)?;
        if let Some(p) = config.model.schema_csv.as_mut() {
            resolve(path, p);
        }
        if let Some(t) = config.eval.test_csv.as_mut() {
            resolve(path, t);
        }
        if let Some(k) = config.identity.key_file.as_mut() {
            resolve(path, k);
        }
        config.broker.link.resolve_paths(path);
        config.apply_env()?;
        resolve(path, &mut config.db);
        config.broker.link.load_password()?;
        config.validate()?;
        Ok(config)
    }

    /// `CONVOY_FLEET`, `CONVOY_DB`, `CONVOY_BROKER_*`.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        env_override("CONVOY_FLEET", &mut self.fleet)?;
        env_override("CONVOY_DB", &mut self.db)?;
        self.broker.link.apply_env()
    }

    /// Checks values a config file can get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.align
            .settings()
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.store.validate().map_err(ConfigError::Invalid)?;
        if !(1..=86_400).contains(&self.align.deadline_secs) || self.align.settle_secs > 3_600 {
            return bad(
                "align.deadline_secs must be 1 to 86400 and align.settle_secs at most 3600".into(),
            );
        }
        if self.model.schema_csv.is_some() && self.model.label.is_none() {
            return bad("model.schema_csv needs model.label, the label column of that CSV".into());
        }
        if !(self.training.clip_norm.is_finite() && self.training.clip_norm >= 0.0) {
            return bad(format!(
                "training.clip_norm {} must be 0 (off) or a positive number",
                self.training.clip_norm
            ));
        }
        if self.rounds.min_clients == 0 {
            return bad("rounds.min_clients must be at least 1".into());
        }
        if !(self.rounds.server_lr.is_finite()
            && self.rounds.server_lr > 0.0
            && self.rounds.server_lr <= 100.0)
        {
            return bad(format!(
                "rounds.server_lr {} must be above 0 and at most 100",
                self.rounds.server_lr
            ));
        }
        if self.rounds.codec_warmup_rounds > 1000 {
            return bad(format!(
                "rounds.codec_warmup_rounds {} must be 0 to 1000",
                self.rounds.codec_warmup_rounds
            ));
        }
        if self.rounds.min_reports == 0 {
            return bad("rounds.min_reports must be at least 1".into());
        }
        if !(self.rounds.sample_fraction > 0.0 && self.rounds.sample_fraction <= 1.0) {
            return bad(format!(
                "rounds.sample_fraction {} must be in (0, 1]",
                self.rounds.sample_fraction
            ));
        }
        let r = &self.rounds;
        if !(1..=MAX_DEADLINE_SECS).contains(&r.deadline_secs) {
            return bad(format!(
                "rounds.deadline_secs {} must be 1 to {MAX_DEADLINE_SECS} (a week)",
                r.deadline_secs
            ));
        }
        let max_chunk = self.broker.link.max_packet_size.saturating_sub(1024);
        if !(MIN_CHUNK_SIZE..=max_chunk).contains(&r.chunk_size) {
            return bad(format!(
                "rounds.chunk_size {} must be {MIN_CHUNK_SIZE} to {max_chunk} bytes (broker.max_packet_size less 1 KiB for headers)",
                r.chunk_size
            ));
        }
        if !(MIN_CHUNK_SIZE..=MAX_UPDATE_BYTES).contains(&r.max_update_bytes) {
            return bad(format!(
                "rounds.max_update_bytes {} must be {MIN_CHUNK_SIZE} to {MAX_UPDATE_BYTES}",
                r.max_update_bytes
            ));
        }
        if !(1..=1_000_000_000).contains(&r.max_samples) {
            return bad(format!(
                "rounds.max_samples {} must be 1 to 1000000000",
                r.max_samples
            ));
        }
        if !(r.norm_bound == 0.0 || (1.0..=1000.0).contains(&r.norm_bound)) {
            return bad(format!(
                "rounds.norm_bound {} must be 0 (off) or 1 to 1000",
                r.norm_bound
            ));
        }
        if !(10..=86_400).contains(&r.offline_after_secs) {
            return bad(format!(
                "rounds.offline_after_secs {} must be 10 to 86400",
                r.offline_after_secs
            ));
        }
        if r.min_clients > 1_000_000 || r.min_reports > 1_000_000 {
            return bad("rounds.min_clients and rounds.min_reports must be 1 to 1000000".into());
        }
        if let Some(key) = self.broker.unknown.keys().next() {
            return bad(format!(
                "unknown key broker.{key}; known: url, listen, client_id, allow_anonymous, username, password, password_file, max_packet_size, keep_alive_secs"
            ));
        }
        self.broker.link.validate()?;
        let t = &self.training;
        let recipe_ok = (1..=1000).contains(&t.epochs)
            && (1..=65_536).contains(&t.batch_size)
            && t.lr.is_finite()
            && t.lr > 0.0
            && t.lr <= 10.0;
        if !recipe_ok {
            return bad(format!(
                "training: epochs {} must be 1 to 1000, batch_size {} 1 to 65536 and lr {} above 0 and at most 10",
                t.epochs, t.batch_size, t.lr
            ));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return bad(format!(
                "http.listen {:?} is not an address like 127.0.0.1:9464 (empty: no HTTP server)",
                self.http.listen
            ));
        }
        if self.http.vehicle_series_cap > 10_000 {
            return bad(format!(
                "http.vehicle_series_cap {} must be 0 to 10000",
                self.http.vehicle_series_cap
            ));
        }
        let b = &self.budget;
        if !(b.daily_mb.is_finite()
            && b.daily_mb >= 0.0
            && b.monthly_mb.is_finite()
            && b.monthly_mb >= 0.0)
        {
            return bad(format!(
                "budget.daily_mb {} and budget.monthly_mb {} must be 0 (no cap) or above",
                b.daily_mb, b.monthly_mb
            ));
        }
        if self.broker.link.url.is_none()
            && self.broker.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return bad(format!(
                "broker.listen {:?} is not an address like 127.0.0.1:1883",
                self.broker.listen
            ));
        }
        Ok(())
    }

    /// Client settings for reaching the broker: the external one, or the
    /// embedded one on `listen`.
    pub fn client_broker(&self) -> BrokerConfig {
        let mut link = self.broker.link.clone();
        if link.url.is_none()
            && let Ok(addr) = self.broker.listen.parse()
        {
            link.url = Some(BrokerUrl::tcp(addr));
        }
        link
    }

    /// The server's key file.
    pub fn key_file(&self) -> PathBuf {
        self.identity
            .key_file
            .clone()
            .unwrap_or_else(|| self.db.with_file_name("server.key"))
    }

    /// Whether the server runs its embedded broker.
    pub fn embedded_broker(&self) -> bool {
        self.broker.link.url.is_none()
    }
}

#[cfg(test)]
mod tests {
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
            toml::from_str(include_str!("../../systemd/server.example.toml")).unwrap();
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
}
