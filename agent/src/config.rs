//! The agent's TOML configuration, with documented defaults.

pub use convoy_runtime::ConfigError;
use convoy_runtime::config::{env_override, load_toml, resolve};
pub use convoy_runtime::link::BrokerConfig;
use convoy_shared::spec::TaskKind;
use convoy_shared::topics::TopicId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything an agent needs to know. See `systemd/agent.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Fleet this vehicle belongs to. Env: `CONVOY_FLEET`.
    #[serde(default = "default_fleet")]
    pub fleet: TopicId,
    /// This vehicle's id: `[A-Za-z0-9_.-]{1,64}`. Env: `CONVOY_CLIENT_ID`.
    pub client_id: TopicId,
    /// Where the agent keeps its model, pending update and progress.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Broker connection.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// This vehicle's signing key and the server's public key, both written
    /// by `convoy-server provision`.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Local training data.
    pub data: DataConfig,
    /// Limits on local training.
    #[serde(default)]
    pub training: TrainingConfig,
    /// When the vehicle lets the agent train.
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    /// The largest model this vehicle will build.
    #[serde(default)]
    pub limits: crate::limits::Limits,
    /// Fault injection for tests; leave unset in deployments.
    #[serde(default)]
    pub faults: Faults,
    /// Label of the deployment this agent runs, echoed in its status
    /// (written by `convoy-server deploy`); empty when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<TopicId>,
}

/// Key files (see `convoy-server provision`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// This vehicle's ed25519 secret key: it signs every update, status and
    /// failure report. Keep it 0600.
    pub key_file: PathBuf,
    /// The server's public key: announcements, models and receipts that it
    /// did not sign are ignored.
    pub server_key_file: PathBuf,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from("/etc/convoy-agent/vehicle.key"),
            server_key_file: PathBuf::from("/etc/convoy-agent/server.pub"),
        }
    }
}

/// Where the vehicle's data is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// CSV file with a header row; columns are matched to model features by name.
    pub path: PathBuf,
    /// Label column name.
    pub label: String,
    /// `classification` or `regression`.
    #[serde(default)]
    pub task: TaskKind,
    /// Share of the rows kept out of training: each round the fleet's new
    /// model is scored on them and the score reported with the update
    /// (0: no held-out rows).
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// Which rows are held out: `random` (a fixed random share, the same
    /// each round) or `time` (the newest share by `time_column`; for logs,
    /// where a random split scores the model on moments it trained beside).
    #[serde(default)]
    pub holdout_by: HoldoutBy,
    /// The column that orders the rows in time (ISO 8601 text or a
    /// number), read with `holdout_by = "time"`. It orders the rows and is
    /// not a model input.
    #[serde(default)]
    pub time_column: Option<String>,
    /// Model line (a vehicle group, e.g. the car model): the vehicles of a
    /// line share the fleet's trunk but train an output head of their own.
    /// Unset: the fleet's head of the label.
    #[serde(default)]
    pub line: Option<String>,
}

fn default_holdout() -> f64 {
    0.2
}

/// How the held-out rows are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HoldoutBy {
    /// A random share of the rows, the same every round.
    #[default]
    Random,
    /// The newest share of the rows by `data.time_column`.
    Time,
}

impl DataConfig {
    /// `path`'s `label` for `task`, with the default held-out share.
    pub fn new(path: impl Into<PathBuf>, label: &str, task: TaskKind) -> Self {
        Self {
            path: path.into(),
            label: label.to_string(),
            task,
            holdout: default_holdout(),
            holdout_by: HoldoutBy::Random,
            time_column: None,
            line: None,
        }
    }

    /// The column the rows are ordered by (`holdout_by = "time"`).
    pub fn time_order(&self) -> Option<&str> {
        match self.holdout_by {
            HoldoutBy::Time => self.time_column.as_deref(),
            HoldoutBy::Random => None,
        }
    }
}

/// Where training may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The GPU when this build has the `gpu` feature and an adapter answers
    /// at start-up; the CPU otherwise.
    #[default]
    Auto,
    /// The CPU (burn's flex backend).
    Cpu,
    /// The GPU through wgpu; falls back to the CPU, with a warning, when no
    /// adapter exists or the build lacks the `gpu` feature.
    Gpu,
}

/// Training limits the vehicle imposes, whatever the round asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// CPU threads training may use.
    pub threads: usize,
    /// Upper bound on epochs per round (0: as the round asks).
    pub max_epochs: u32,
    /// Upper bound on batch size (0: as the round asks).
    pub max_batch: u32,
    /// Compute backend.
    pub backend: Backend,
    /// Seconds to wait for the server's receipt before re-sending an update.
    pub ack_timeout_secs: u64,
    /// SGD steps that fine-tune the output head of each round's base model
    /// on this vehicle's rows, giving a personalised model kept in the state
    /// directory (`personal.bin`) and scored beside the global one on the
    /// held-out rows (0: no personalised head).
    pub personal_steps: u32,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            threads: 1,
            max_epochs: 0,
            max_batch: 0,
            backend: Backend::Auto,
            ack_timeout_secs: 10,
            personal_steps: 0,
        }
    }
}

/// Deterministic faults for crash-recovery tests, and the dishonest
/// vehicles of the robustness benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Stop right after the update is persisted, before any chunk is sent,
    /// as if power were cut there.
    pub stop_after_persist: bool,
    /// Hold a persisted update this many milliseconds before sending it,
    /// as a slow link would.
    pub delay_upload_ms: u64,
    /// Send a dishonest update, correctly signed, as a vehicle whose key
    /// is in the wrong hands would (benchmarks/robustness).
    pub attack: Option<Attack>,
}

/// What a dishonest vehicle does to the update it trained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Attack {
    /// Every value of the update about `value` (`value` times one plus
    /// the honest value, so no two dishonest vehicles send the same bytes).
    Huge {
        /// The value (1e6 in the benchmark).
        value: f32,
    },
    /// The update negated and scaled to `scale` times its own norm.
    SignFlip {
        /// Multiple of the honest norm.
        scale: f32,
    },
    /// A sign flip of `scale`, claiming `rows` rows in its status and update.
    Inflate {
        /// Multiple of the honest norm.
        scale: f32,
        /// Rows claimed.
        rows: u64,
    },
    /// The honest update plus the same fixed direction every round, of
    /// `share` times the honest norm: a slow drift that stays close to
    /// the honest updates, as a backdoor would.
    Drift {
        /// Size of the push relative to the honest update.
        share: f32,
    },
}

impl Attack {
    /// Turns an honest `update` into the attack's.
    pub fn apply(&self, update: &mut convoy_shared::params::ParamSet) {
        let norm = update.l2_norm() as f32;
        match *self {
            Attack::Huge { value } => update.values_mut().for_each(|v| *v = value * (1.0 + *v)),
            Attack::SignFlip { scale } | Attack::Inflate { scale, .. } => {
                update.values_mut().for_each(|v| *v *= -scale)
            }
            Attack::Drift { share } => {
                // a fixed pseudo-random sign per coordinate, the same each round
                let n = update.numel().max(1) as f32;
                let step = share * norm / n.sqrt();
                for (i, v) in update.values_mut().enumerate() {
                    let bit = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63;
                    *v += if bit == 1 { step } else { -step };
                }
            }
        }
    }

    /// The rows it claims, having `honest` rows.
    pub fn rows(&self, honest: u64) -> u64 {
        match *self {
            Attack::Inflate { rows, .. } => rows,
            _ => honest,
        }
    }
}

impl std::fmt::Display for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attack::Huge { value } => write!(f, "huge:{value}"),
            Attack::SignFlip { scale } => write!(f, "sign_flip:{scale}"),
            Attack::Inflate { scale, rows } => write!(f, "inflate:{scale}:{rows}"),
            Attack::Drift { share } => write!(f, "drift:{share}"),
        }
    }
}

impl std::str::FromStr for Attack {
    type Err = String;

    /// `huge[:VALUE]`, `sign_flip:SCALE`, `inflate:SCALE:ROWS`, `drift:SHARE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize, default: Option<f64>| -> Result<f64, String> {
            match parts.get(i) {
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("{p:?} in {s:?} is not a number")),
                None => default.ok_or_else(|| format!("{s:?} needs a value after ':'")),
            }
        };
        let attack = match parts[0] {
            "huge" => Attack::Huge {
                value: num(1, Some(1e6))? as f32,
            },
            "sign_flip" => Attack::SignFlip {
                scale: num(1, None)? as f32,
            },
            "inflate" => Attack::Inflate {
                scale: num(1, Some(4.5))? as f32,
                rows: num(2, Some(1e6))? as u64,
            },
            "drift" => Attack::Drift {
                share: num(1, Some(0.5))? as f32,
            },
            _ => {
                return Err(format!(
                    "unknown attack {s:?}: use huge[:VALUE], sign_flip:SCALE, inflate[:SCALE[:ROWS]] or drift[:SHARE]"
                ));
            }
        };
        Ok(attack)
    }
}

fn default_fleet() -> TopicId {
    TopicId::default_fleet()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/convoy-agent")
}

impl AgentConfig {
    /// Reads, resolves relative paths against the file's folder, applies
    /// env overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: AgentConfig = load_toml(path)?;
        // Relative paths are relative to the config file, not the cwd.
        resolve(path, &mut config.data.path);
        resolve(path, &mut config.state_dir);
        resolve(path, &mut config.identity.key_file);
        resolve(path, &mut config.identity.server_key_file);
        config.broker.resolve_paths(path);
        config.apply_env()?;
        config.broker.load_password()?;
        config.validate()?;
        Ok(config)
    }

    /// `CONVOY_FLEET`, `CONVOY_CLIENT_ID` and `CONVOY_BROKER_*`.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        env_override("CONVOY_FLEET", &mut self.fleet)?;
        env_override("CONVOY_CLIENT_ID", &mut self.client_id)?;
        self.broker.apply_env()
    }

    /// Checks values a config file can get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Ids and the broker URL were checked when they were parsed.
        if self.training.threads == 0 {
            return Err(ConfigError::Invalid(
                "training.threads must be at least 1".into(),
            ));
        }
        if self.training.threads > 1024 {
            return Err(ConfigError::Invalid(format!(
                "training.threads {} must be 1 to 1024",
                self.training.threads
            )));
        }
        if !(1..=86_400).contains(&self.training.ack_timeout_secs) {
            return Err(ConfigError::Invalid(format!(
                "training.ack_timeout_secs {} must be 1 to 86400",
                self.training.ack_timeout_secs
            )));
        }
        if self.data.holdout_by == HoldoutBy::Time {
            match self.data.time_column.as_deref() {
                None | Some("") => {
                    return Err(ConfigError::Invalid(
                        "data.holdout_by = \"time\" needs data.time_column: the column that orders the rows in time".into(),
                    ));
                }
                Some(c) if c == self.data.label => {
                    return Err(ConfigError::Invalid(format!(
                        "data.time_column {c:?} is the label column"
                    )));
                }
                Some(_) => {}
            }
        }
        if !(0.0..=0.9).contains(&self.data.holdout) {
            return Err(ConfigError::Invalid(format!(
                "data.holdout {} must be 0 to 0.9",
                self.data.holdout
            )));
        }
        if self.training.personal_steps > 100_000 {
            return Err(ConfigError::Invalid(format!(
                "training.personal_steps {} must be 0 to 100000",
                self.training.personal_steps
            )));
        }
        self.policy.validate().map_err(ConfigError::Invalid)?;
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.broker.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c: AgentConfig =
            toml::from_str("client_id = \"car-1\"\n[data]\npath = \"d.csv\"\nlabel = \"y\"\n")
                .unwrap();
        assert_eq!(c.fleet, "default");
        assert_eq!(c.training.threads, 1);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let c: AgentConfig =
            toml::from_str(include_str!("../../systemd/agent.example.toml")).unwrap();
        assert_eq!(c.training, TrainingConfig::default());
        assert_eq!(
            c.broker,
            BrokerConfig::at(BrokerConfig::local()),
            "the example names the default broker"
        );
        assert_eq!(c.policy, crate::policy::PolicyConfig::default());
        assert_eq!(c.limits, crate::limits::Limits::default());
        c.validate().unwrap();
    }

    #[test]
    fn a_time_split_needs_its_column() {
        let base = "client_id = \"car-1\"\n[data]\npath = \"d.csv\"\nlabel = \"y\"\nholdout_by = \"time\"\n";
        let c: AgentConfig = toml::from_str(base).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("data.time_column"), "{e}");
        let c: AgentConfig = toml::from_str(&format!("{base}time_column = \"y\"\n")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("label"));
        let c: AgentConfig = toml::from_str(&format!("{base}time_column = \"ts\"\n")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.data.time_order(), Some("ts"));
        assert!(toml::from_str::<AgentConfig>(&base.replace("\"time\"", "\"sorted\"")).is_err());
    }

    #[test]
    fn bad_values_are_explained() {
        let err = toml::from_str::<AgentConfig>(
            "client_id = \"car/1\"\n[data]\npath = \"d.csv\"\nlabel = \"y\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("client_id") && err.contains("A-Z a-z 0-9"),
            "{err}"
        );
        let mut c: AgentConfig =
            toml::from_str("client_id = \"car-1\"\n[data]\npath = \"d.csv\"\nlabel = \"y\"\n")
                .unwrap();
        c.broker.max_packet_size = 1024;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_packet_size")
        );
        let bad_url = "client_id = \"c\"\n[broker]\nurl = \"nope\"\n[data]\npath = \"d.csv\"\nlabel = \"y\"\n";
        let err = toml::from_str::<AgentConfig>(bad_url).unwrap_err();
        assert!(err.to_string().contains("mqtt://"), "{err}");
        assert!(toml::from_str::<AgentConfig>("client_id = 1").is_err());
    }
}
