//! Which model the fleet should run: the latest, or the best by the
//! federated validation metric (each round's vehicles score its base model
//! on their held-out rows before they train). Derived from the ledger on
//! demand, so the server, `models fleet` and the API always agree.

use super::{RoundRow, RoundStatus, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How the deployed model is chosen (`rounds.deploy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum Deploy {
    /// The newest model.
    #[default]
    Last,
    /// The best-scored model of all.
    Best,
    /// The best-scored model among the last N published.
    BestWithin(u64),
}

impl fmt::Display for Deploy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deploy::Last => write!(f, "last"),
            Deploy::Best => write!(f, "best"),
            Deploy::BestWithin(n) => write!(f, "best_within:{n}"),
        }
    }
}

impl FromStr for Deploy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "last" => Ok(Deploy::Last),
            None if s == "best" => Ok(Deploy::Best),
            Some(("best_within", n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Deploy::BestWithin(n)),
                _ => Err(format!(
                    "best_within:{n}: N must be a whole number of at least 1"
                )),
            },
            _ => Err(format!(
                "unknown deploy rule {s:?}: use last, best or best_within:N"
            )),
        }
    }
}

convoy_shared::text_setting!(Deploy);

/// A published model's federated validation score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// The version (hex).
    pub version: String,
    /// The round that published it.
    pub round: u64,
    /// Pooled held-out accuracy (classification), else RMSE, as the next
    /// round's vehicles measured it; `None` until a round has scored it.
    pub accuracy: Option<f64>,
    /// Pooled held-out RMSE when no accuracy was measured.
    pub rmse: Option<f64>,
}

impl Scored {
    /// Larger is better: the accuracy, or minus the RMSE.
    pub fn score(&self) -> Option<f64> {
        self.accuracy.or(self.rmse.map(|r| -r))
    }
}

/// The latest model and the one `rule` deploys, with why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    /// The rule applied.
    pub rule: String,
    /// The newest published model.
    pub latest: Option<Scored>,
    /// The model the rule picks (the latest while nothing is scored).
    pub deployed: Option<Scored>,
    /// Rounds published since the best score was first reached (0 when
    /// the newest scored model is the best).
    pub since_best: u64,
}

/// The published models of `rounds` (oldest first) with their scores: a
/// round's on-vehicle metric belongs to its base model.
pub fn scored(rounds: &[RoundRow]) -> Vec<Scored> {
    let mut out: Vec<Scored> = rounds
        .iter()
        .filter(|r| r.status == RoundStatus::Finished)
        .filter_map(|r| {
            Some(Scored {
                version: r.model_version.clone()?,
                round: r.round,
                accuracy: None,
                rmse: None,
            })
        })
        .collect();
    for r in rounds.iter().filter(|r| r.holdout_samples > 0) {
        if let Some(s) = out.iter_mut().rev().find(|s| s.version == r.base_version) {
            (s.accuracy, s.rmse) = (r.holdout_accuracy, r.holdout_rmse);
        }
    }
    out
}

/// What `rule` deploys from `models` (oldest first).
pub fn choose(models: &[Scored], rule: Deploy) -> Deployment {
    let latest = models.last().cloned();
    let window = match rule {
        Deploy::BestWithin(n) => &models[models.len().saturating_sub(n as usize)..],
        _ => models,
    };
    // the first to reach the best score wins a tie: a later equal model
    // is no improvement
    let best = window
        .iter()
        .filter(|m| m.score().is_some())
        .fold(None::<&Scored>, |best, m| match best {
            Some(b) if b.score() >= m.score() => Some(b),
            _ => Some(m),
        });
    let scored_after = |m: &Scored| {
        models
            .iter()
            .filter(|x| x.round > m.round && x.score().is_some())
            .count() as u64
    };
    let since_best = best.map_or(0, scored_after);
    let deployed = match rule {
        Deploy::Last => latest.clone(),
        Deploy::Best | Deploy::BestWithin(_) => best.cloned().or_else(|| latest.clone()),
    };
    Deployment {
        rule: rule.to_string(),
        latest,
        deployed,
        since_best,
    }
}

impl Store {
    /// The latest model and the one `rule` deploys, from the ledger.
    pub fn deployment(&self, rule: Deploy) -> Result<Deployment, StoreError> {
        Ok(choose(&scored(&self.rounds()?), rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(round: u64, base: &str, model: &str, accuracy: Option<f64>) -> RoundRow {
        RoundRow {
            round,
            status: RoundStatus::Finished,
            base_version: base.into(),
            model_version: Some(model.into()),
            holdout_samples: u64::from(accuracy.is_some()),
            holdout_accuracy: accuracy,
            ..Default::default()
        }
    }

    /// v1..v5 published by rounds 1..5; round r+1 scores v_r. Accuracy
    /// peaks at v2 and drifts down.
    fn ledger() -> Vec<RoundRow> {
        vec![
            round(1, "v0", "v1", Some(0.3)),
            round(2, "v1", "v2", Some(0.80)),
            round(3, "v2", "v3", Some(0.85)),
            round(4, "v3", "v4", Some(0.84)),
            round(5, "v4", "v5", Some(0.83)),
        ]
    }

    #[test]
    fn the_best_model_is_deployed_not_the_drifted_one() {
        let models = scored(&ledger());
        assert_eq!(models.len(), 5);
        assert_eq!(models[1].accuracy, Some(0.85), "v2 scored by round 3");
        assert_eq!(models[4].accuracy, None, "v5 not yet scored");
        let last = choose(&models, Deploy::Last);
        assert_eq!(last.deployed.unwrap().version, "v5");
        let best = choose(&models, Deploy::Best);
        assert_eq!(best.deployed.unwrap().version, "v2");
        assert_eq!(best.latest.unwrap().version, "v5");
        assert_eq!(best.since_best, 2, "v3 and v4 scored after v2, no better");
        let recent = choose(&models, Deploy::BestWithin(2));
        assert_eq!(recent.deployed.unwrap().version, "v4");
        // nothing scored yet: the latest
        let unscored: Vec<Scored> = models
            .iter()
            .map(|m| Scored {
                accuracy: None,
                ..m.clone()
            })
            .collect();
        assert_eq!(
            choose(&unscored, Deploy::Best).deployed.unwrap().version,
            "v5"
        );
    }

    #[test]
    fn regression_prefers_the_lowest_rmse_and_rules_parse() {
        let mut rows = ledger();
        for (r, rmse) in rows.iter_mut().zip([3.0, 2.0, 2.5, 2.0, 1.0]) {
            (r.holdout_accuracy, r.holdout_rmse) = (None, Some(rmse));
        }
        let models = scored(&rows);
        // v4's RMSE 1.0 is the lowest
        assert_eq!(
            choose(&models, Deploy::Best).deployed.unwrap().version,
            "v4"
        );
        // v1 and v3 tie at 2.0: the first to reach it keeps it
        let tie = choose(&models[..3], Deploy::Best);
        assert_eq!(tie.deployed.unwrap().version, "v1");
        assert_eq!(tie.since_best, 2);
        for rule in [Deploy::Last, Deploy::Best, Deploy::BestWithin(3)] {
            assert_eq!(rule.to_string().parse::<Deploy>().unwrap(), rule);
        }
        assert!("best_within:0".parse::<Deploy>().is_err());
        assert!("top".parse::<Deploy>().is_err());
    }
}
