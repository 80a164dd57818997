//! `[strategy]`: the server's optimiser on each round's aggregate, its
//! learning-rate schedule, and what the vehicles add to their own loss.

use convoy_shared::messages::Objective;
use convoy_shared::strategy::server::{Schedule, ServerOpt};
use serde::{Deserialize, Serialize};

/// How the aggregate of a round moves the model (see docs/strategies.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyConfig {
    /// `fedavg`, `fedavgm[:momentum=B]`, `fedadagrad[:tau=T]`,
    /// `fedadam[:beta1=B1,beta2=B2,tau=T]` or `fedyogi[:...]`.
    pub server: ServerOpt,
    /// The server learning rate η (above 0, at most 100). Unset: for
    /// `fedavg` and `fedavgm` `rounds.server_lr`, else the optimiser's own
    /// default (0.1 FedAdagrad, 0.01 FedAdam and FedYogi).
    pub server_lr: Option<f64>,
    /// `constant`, `step:EVERY:GAMMA` or `cosine:ROUNDS[:FLOOR]`: η of
    /// round r is the schedule's value at r − 1.
    pub lr_schedule: Schedule,
    /// FedProx's proximal weight μ sent with every round (0: off; at most
    /// 100): each vehicle adds `μ/2 ‖w − w₀‖²` to its loss.
    pub proximal_mu: f64,
    /// SCAFFOLD: control variates on the server and every vehicle correct
    /// each vehicle's drift (no uplink byte more; the server control is
    /// fetched with the model). Not with `proximal_mu`.
    pub scaffold: bool,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self {
            server: ServerOpt::FedAvg,
            server_lr: None,
            lr_schedule: Schedule::Constant,
            proximal_mu: 0.0,
            scaffold: false,
        }
    }
}

impl StrategyConfig {
    /// The base server learning rate, given `rounds.server_lr`.
    pub fn base_lr(&self, rounds_server_lr: f64) -> f64 {
        self.server_lr.unwrap_or(match self.server {
            ServerOpt::FedAvg | ServerOpt::FedAvgM { .. } => rounds_server_lr,
            other => other.default_lr(),
        })
    }

    /// The vehicles' objective every round announces; under SCAFFOLD the
    /// coordinator fills in the id of the round's control (zeros here).
    pub fn objective(&self) -> Objective {
        if self.scaffold {
            Objective::Scaffold { control: [0; 32] }
        } else if self.proximal_mu > 0.0 {
            Objective::Prox {
                mu: self.proximal_mu as f32,
            }
        } else {
            Objective::Plain
        }
    }

    /// Checks the values' ranges.
    pub fn validate(&self) -> Result<(), String> {
        self.server
            .validate()
            .map_err(|e| format!("strategy.server: {e}"))?;
        if let Some(lr) = self.server_lr
            && !(lr.is_finite() && lr > 0.0 && lr <= 100.0)
        {
            return Err(format!(
                "strategy.server_lr {lr} must be above 0 and at most 100"
            ));
        }
        if !(self.proximal_mu.is_finite() && (0.0..=100.0).contains(&self.proximal_mu)) {
            return Err(format!(
                "strategy.proximal_mu {} must be 0 (off) to 100",
                self.proximal_mu
            ));
        }
        if self.scaffold && self.proximal_mu > 0.0 {
            return Err(
                "strategy.scaffold and strategy.proximal_mu both correct client drift: set one"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_reads_and_checks() {
        let s: StrategyConfig = toml::from_str(
            "server = \"fedadam:tau=0.01\"\nlr_schedule = \"step:10:0.5\"\nproximal_mu = 0.01\n",
        )
        .unwrap();
        assert_eq!(s.base_lr(1.0), 0.01);
        assert_eq!(s.objective(), Objective::Prox { mu: 0.01 });
        assert!(s.validate().is_ok());
        assert_eq!(StrategyConfig::default().base_lr(3.0), 3.0);
        assert!(toml::from_str::<StrategyConfig>("server = \"fedsgd\"").is_err());
        assert!(toml::from_str::<StrategyConfig>("server_lr = 0.5\nmu = 1").is_err());
        let bad = StrategyConfig {
            proximal_mu: -1.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let both = StrategyConfig {
            proximal_mu: 0.01,
            scaffold: true,
            ..Default::default()
        };
        assert!(both.validate().unwrap_err().contains("set one"));
        let scaffold: StrategyConfig = toml::from_str("scaffold = true").unwrap();
        assert!(matches!(scaffold.objective(), Objective::Scaffold { .. }));
    }
}
