//! The server's TOML configuration, with documented defaults.

pub use convoy_runtime::ConfigError;
use convoy_runtime::config::{env_override, load_toml, resolve};
use convoy_runtime::link::{BrokerConfig, BrokerUrl};
use convoy_shared::codec::Pipeline;
use convoy_shared::spec::{MAX_PARAMS, Recipe, TaskKind};
use convoy_shared::strategy::robust::{Rule, Weighting};
use convoy_shared::topics::TopicId;
pub use convoy_store::{Deploy, StorePolicy};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod sections;
mod strategy;

pub use sections::{
    AggregationConfig, AlignConfig, BudgetConfig, EvalConfig, HttpConfig, ModelConfig, RoundConfig,
    RoundMode, ServerBroker, ServerIdentity, Weights,
};
pub use strategy::StrategyConfig;

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
    /// How updates are combined and weighed.
    #[serde(default)]
    pub aggregation: AggregationConfig,
    /// The server optimiser, its learning-rate schedule, and the vehicles' objective.
    #[serde(default)]
    pub strategy: StrategyConfig,
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

impl Default for ServerConfig {
    /// The documented defaults: what an empty config file means.
    fn default() -> Self {
        Self {
            fleet: default_fleet(),
            db: default_db(),
            broker: Default::default(),
            rounds: Default::default(),
            model: Default::default(),
            align: Default::default(),
            training: Default::default(),
            eval: Default::default(),
            identity: Default::default(),
            store: Default::default(),
            http: Default::default(),
            budget: Default::default(),
            aggregation: Default::default(),
            strategy: Default::default(),
        }
    }
}

impl ServerConfig {
    /// The server learning rate of round `round` (numbered from 1): the
    /// strategy's base rate through its schedule.
    pub fn round_lr(&self, round: u64) -> f64 {
        let base = self.strategy.base_lr(self.rounds.server_lr);
        self.strategy.lr_schedule.lr(base, round.saturating_sub(1))
    }

    /// The strategy string round `round`'s version records in its provenance.
    pub fn strategy_of(&self, round: u64) -> String {
        convoy_shared::strategy::describe(
            &self.strategy.server,
            &self.strategy.objective(),
            &self.aggregation.rule,
            self.round_lr(round),
        )
    }

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
        for p in [
            &mut config.broker.tls_cert,
            &mut config.broker.tls_key,
            &mut config.broker.tls_client_ca,
        ]
        .into_iter()
        .flatten()
        {
            resolve(path, p);
        }
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
        if let Some(problem) = self.aggregation.problem() {
            return bad(problem);
        }
        if !(1..=86_400).contains(&self.align.deadline_secs) || self.align.settle_secs > 3_600 {
            return bad(
                "align.deadline_secs must be 1 to 86400 and align.settle_secs at most 3600".into(),
            );
        }
        if self.model.schema_csv.is_some() && self.model.label.is_none() {
            return bad("model.schema_csv needs model.label, the label column of that CSV".into());
        }
        // the hidden layers alone, with one input and one output, bound the
        // model from below: refuse here what could never be allocated
        let mut widths = vec![1u128];
        widths.extend(self.model.hidden.iter().map(|w| u128::from(*w)));
        widths.push(1);
        let at_least: u128 = widths.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
        if at_least > u128::from(MAX_PARAMS) {
            return bad(format!(
                "model.hidden {:?} makes at least {at_least} parameters, more than the {MAX_PARAMS} a model may have; use fewer or narrower layers",
                self.model.hidden
            ));
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
        self.strategy.validate().map_err(ConfigError::Invalid)?;
        if self.rounds.codec_warmup_rounds > 1000 {
            return bad(format!(
                "rounds.codec_warmup_rounds {} must be 0 to 1000",
                self.rounds.codec_warmup_rounds
            ));
        }
        if !(1..=1_000_000).contains(&self.rounds.async_buffer) {
            return bad(format!(
                "rounds.async_buffer {} must be 1 to 1000000",
                self.rounds.async_buffer
            ));
        }
        if self.rounds.max_staleness > 1000 {
            return bad(format!(
                "rounds.max_staleness {} must be 0 to 1000",
                self.rounds.max_staleness
            ));
        }
        if self.rounds.min_reports == 0 {
            return bad("rounds.min_reports must be at least 1".into());
        }
        if self.rounds.min_reports > self.rounds.min_clients {
            // a round may select as few as min_clients: it could never close
            return bad(format!(
                "rounds.min_reports {} is more than rounds.min_clients {}: a round that selects {} vehicles could never publish; lower min_reports or raise min_clients",
                self.rounds.min_reports, self.rounds.min_clients, self.rounds.min_clients
            ));
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
                "unknown key broker.{key}; known: url, listen, tls_listen, tls_cert, tls_key, tls_client_ca, status_readers, client_id, allow_anonymous, username, password, password_file, max_packet_size, keep_alive_secs, ca_file, cert_file, key_file, allow_plaintext"
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
        if self.identity.rotation_overlap_hours > 8760 {
            return bad(format!(
                "identity.rotation_overlap_hours {} must be 0 to 8760 (a year)",
                self.identity.rotation_overlap_hours
            ));
        }
        if self.embedded_broker() {
            self.validate_embedded_broker()?;
        }
        Ok(())
    }

    /// The embedded broker's listeners: at least one; TLS with its files;
    /// plain TCP off this machine only with `allow_plaintext`.
    fn validate_embedded_broker(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let b = &self.broker;
        let address = |key: &str, text: &str| -> Result<Option<SocketAddr>, ConfigError> {
            if text.is_empty() {
                return Ok(None);
            }
            text.parse().map(Some).map_err(|_| {
                ConfigError::Invalid(format!(
                    "broker.{key} {text:?} is not an address like 127.0.0.1:1883 (empty: none)"
                ))
            })
        };
        let plain = address("listen", &b.listen)?;
        let tls = address("tls_listen", &b.tls_listen)?;
        if plain.is_none() && tls.is_none() {
            return bad("broker.listen and broker.tls_listen are both empty: the embedded broker needs at least one listener".into());
        }
        if let Some(addr) = plain
            && !addr.ip().is_loopback()
            && !b.link.allow_plaintext
        {
            return bad(format!(
                "broker.listen {addr} accepts plain TCP from other machines: anyone on the path could read and change every update and model. Serve vehicles on broker.tls_listen (with tls_cert and tls_key), keep broker.listen on 127.0.0.1, or set broker.allow_plaintext = true to accept the risk"
            ));
        }
        if tls.is_some() && (b.tls_cert.is_none() || b.tls_key.is_none()) {
            return bad("broker.tls_listen needs broker.tls_cert and broker.tls_key (PEM files; `convoy-server tls init` makes them)".into());
        }
        if tls.is_none() && (b.tls_cert.is_some() || b.tls_client_ca.is_some()) {
            return bad("broker.tls_cert or broker.tls_client_ca is set but broker.tls_listen is empty: set tls_listen (for example 0.0.0.0:8883)".into());
        }
        if let Some(bad_id) = b
            .status_readers
            .iter()
            .find(|id| !convoy_shared::topics::valid_id(id) || **id == b.client_id)
        {
            return bad(format!(
                "broker.status_readers: {bad_id:?} is not a vehicle-style id (1 to 64 of A-Z a-z 0-9 _ . -) other than the server's"
            ));
        }
        if plain.is_none() && b.link.ca_file.is_none() {
            return bad("broker.listen is empty, so the server reaches its own broker over TLS: set broker.ca_file to the CA that signed broker.tls_cert".into());
        }
        Ok(())
    }

    /// Client settings for reaching the broker: the external one, or the
    /// embedded one on `listen`.
    pub fn client_broker(&self) -> BrokerConfig {
        let mut link = self.broker.link.clone();
        if link.url.is_none() {
            let configured = crate::broker::Started {
                plain: self.broker.listen.parse().ok(),
                tls: self.broker.tls_listen.parse().ok(),
            };
            link.url = configured.url();
        }
        link
    }

    /// Whether vehicles reach the broker over TLS, as far as the server can
    /// tell: an external broker at an `mqtts://` URL, or an embedded one
    /// with a TLS listener and no plain listener off this machine. The
    /// ledger's wire figures then include TLS's record framing.
    pub fn vehicles_on_tls(&self) -> bool {
        match &self.broker.link.url {
            Some(BrokerUrl::Tcp { tls, .. }) => *tls,
            Some(BrokerUrl::Memory(_)) => false,
            None => {
                let plain_here_only = self.broker.listen.is_empty()
                    || self
                        .broker
                        .listen
                        .parse::<SocketAddr>()
                        .is_ok_and(|a| a.ip().is_loopback());
                !self.broker.tls_listen.is_empty() && plain_here_only
            }
        }
    }

    /// The embedded broker's listeners, as configured.
    pub fn broker_listen(&self) -> crate::broker::Listen {
        let b = &self.broker;
        let tls = match (b.tls_listen.parse(), &b.tls_cert, &b.tls_key) {
            (Ok(addr), Some(cert), Some(key)) => Some(crate::broker::TlsListen {
                addr,
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        crate::broker::Listen {
            plain: b.listen.parse().ok(),
            tls,
            client_ca: b.tls_client_ca.clone(),
        }
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
mod tests;
