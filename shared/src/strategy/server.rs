//! The server's optimiser on a round's aggregate (Reddi et al., "Adaptive
//! Federated Optimization", ICLR 2021): the rule combines the round's
//! updates into a mean update `Δ`, and the optimiser turns `Δ` (a
//! pseudo-gradient, pointing downhill) into the step the model takes.
//!
//! | optimiser | state | step |
//! |---|---|---|
//! | FedAvg | none | `η Δ` |
//! | FedAvgM | `m` | `m ← β m + Δ`, step `η m` |
//! | FedAdagrad | `v` | `v ← v + Δ²`, step `η Δ / (√v + τ)` |
//! | FedAdam | `m, v` | `m ← β₁ m + (1-β₁) Δ`, `v ← β₂ v + (1-β₂) Δ²`, step `η m / (√v + τ)` |
//! | FedYogi | `m, v` | as FedAdam but `v ← v - (1-β₂) Δ² sign(v - Δ²)` |
//!
//! `η` is the server learning rate of the round ([`Schedule`]). A tensor
//! the round left exactly as it was (a head no vehicle of its task
//! trained) takes no step and keeps its state, so a task absent for a
//! round is not moved by the others' momentum. The state is plain data:
//! the server stores it with each version it publishes, so a restart, and
//! a replay of a round from its kept updates, continue from it.

use crate::params::{ParamError, ParamSet};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The server-side optimiser and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ServerOpt {
    /// Plain FedAvg: the model moves by `η Δ`.
    FedAvg,
    /// FedAvg with server momentum.
    FedAvgM {
        /// Momentum β, in [0, 1).
        momentum: f64,
    },
    /// Adagrad on the pseudo-gradient.
    FedAdagrad {
        /// Adaptivity τ (> 0): larger is closer to momentum-free SGD.
        tau: f64,
    },
    /// Adam on the pseudo-gradient.
    FedAdam {
        /// First-moment decay β₁, in [0, 1).
        beta1: f64,
        /// Second-moment decay β₂, in [0, 1).
        beta2: f64,
        /// Adaptivity τ (> 0).
        tau: f64,
    },
    /// Yogi on the pseudo-gradient: Adam whose second moment grows and
    /// shrinks additively, so it forgets a burst more slowly.
    FedYogi {
        /// First-moment decay β₁, in [0, 1).
        beta1: f64,
        /// Second-moment decay β₂, in [0, 1).
        beta2: f64,
        /// Adaptivity τ (> 0).
        tau: f64,
    },
}

impl ServerOpt {
    /// FedAvgM with β = 0.9.
    pub const FEDAVGM: ServerOpt = ServerOpt::FedAvgM { momentum: 0.9 };
    /// FedAdagrad with τ = 10⁻³.
    pub const FEDADAGRAD: ServerOpt = ServerOpt::FedAdagrad { tau: 1e-3 };
    /// FedAdam with β₁ = 0.9, β₂ = 0.99, τ = 10⁻³.
    pub const FEDADAM: ServerOpt = ServerOpt::FedAdam {
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
    };
    /// FedYogi with β₁ = 0.9, β₂ = 0.99, τ = 10⁻³.
    pub const FEDYOGI: ServerOpt = ServerOpt::FedYogi {
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
    };

    /// The optimiser's name without its hyper-parameters.
    pub fn name(&self) -> &'static str {
        match self {
            ServerOpt::FedAvg => "fedavg",
            ServerOpt::FedAvgM { .. } => "fedavgm",
            ServerOpt::FedAdagrad { .. } => "fedadagrad",
            ServerOpt::FedAdam { .. } => "fedadam",
            ServerOpt::FedYogi { .. } => "fedyogi",
        }
    }

    /// True when the optimiser keeps state from round to round.
    pub fn is_stateful(&self) -> bool {
        !matches!(self, ServerOpt::FedAvg)
    }

    /// The server learning rate the optimiser is meant to run at when the
    /// config names none: 1 for FedAvg and FedAvgM, 0.1 for FedAdagrad,
    /// 0.01 for FedAdam and FedYogi (whose steps are about `η` per
    /// coordinate whatever the size of `Δ`).
    pub fn default_lr(&self) -> f64 {
        match self {
            ServerOpt::FedAvg | ServerOpt::FedAvgM { .. } => 1.0,
            ServerOpt::FedAdagrad { .. } => 0.1,
            ServerOpt::FedAdam { .. } | ServerOpt::FedYogi { .. } => 0.01,
        }
    }

    /// Checks the hyper-parameters' ranges.
    pub fn validate(&self) -> Result<(), String> {
        let decay = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {v} must be in [0, 1)"))
            }
        };
        let tau = |v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("tau {v} must be above 0"))
            }
        };
        match *self {
            ServerOpt::FedAvg => Ok(()),
            ServerOpt::FedAvgM { momentum } => decay("momentum", momentum),
            ServerOpt::FedAdagrad { tau: t } => tau(t),
            ServerOpt::FedAdam {
                beta1,
                beta2,
                tau: t,
            }
            | ServerOpt::FedYogi {
                beta1,
                beta2,
                tau: t,
            } => decay("beta1", beta1).and(decay("beta2", beta2)).and(tau(t)),
        }
    }

    /// A fresh state for a model of `like`'s layout: zeros (FedAdagrad's
    /// and FedYogi's second moments start at τ², as in the paper).
    pub fn init(&self, like: &ParamSet) -> OptState {
        let (m, v) = self.state_lens(like);
        let v0 = match *self {
            ServerOpt::FedAdagrad { tau } | ServerOpt::FedYogi { tau, .. } => (tau * tau) as f32,
            _ => 0.0,
        };
        OptState {
            opt: self.to_string(),
            steps: 0,
            m: vec![0.0; m],
            v: vec![v0; v],
            control: None,
        }
    }

    /// Lengths of the first and second moments for a model of `like`'s
    /// size (0 where the optimiser keeps none).
    fn state_lens(&self, like: &ParamSet) -> (usize, usize) {
        let n = like.numel();
        match self {
            ServerOpt::FedAvg => (0, 0),
            ServerOpt::FedAvgM { .. } => (n, 0),
            ServerOpt::FedAdagrad { .. } => (0, n),
            ServerOpt::FedAdam { .. } | ServerOpt::FedYogi { .. } => (n, n),
        }
    }

    /// Moves `base` by the step the mean update `target - base` calls for
    /// at learning rate `lr`, updating `state` (a state of another
    /// optimiser or layout starts afresh). `target` is the rule's aggregate
    /// taken with learning rate 1.
    pub fn step(
        &self,
        base: &ParamSet,
        target: &ParamSet,
        state: &mut OptState,
        lr: f64,
    ) -> Result<ParamSet, ParamError> {
        target.check_layout(&base.layout())?;
        if !state.fits(self, base) {
            *state = self.init(base);
        }
        let mut out = base.clone();
        let mut at = 0;
        for (t, (o, g)) in out.tensors.iter_mut().zip(&target.tensors).enumerate() {
            let n = o.data.len();
            let b = &base.tensors[t].data;
            let untouched = g.data.iter().zip(b).all(|(x, y)| x == y);
            if !untouched {
                for (i, ((o, g), b)) in o.data.iter_mut().zip(&g.data).zip(b).enumerate() {
                    let delta = (g - b) as f64;
                    *o = b + (lr * self.direction(state, at + i, delta)) as f32;
                }
            }
            at += n;
        }
        state.steps += 1;
        Ok(out)
    }

    /// One coordinate's direction (before `η`) from its mean update
    /// `delta`, updating its state at `i`.
    fn direction(&self, state: &mut OptState, i: usize, delta: f64) -> f64 {
        match *self {
            ServerOpt::FedAvg => delta,
            ServerOpt::FedAvgM { momentum } => {
                let m = momentum * state.m[i] as f64 + delta;
                state.m[i] = m as f32;
                m
            }
            ServerOpt::FedAdagrad { tau } => {
                let v = state.v[i] as f64 + delta * delta;
                state.v[i] = v as f32;
                delta / (v.sqrt() + tau)
            }
            ServerOpt::FedAdam { beta1, beta2, tau } | ServerOpt::FedYogi { beta1, beta2, tau } => {
                let m = beta1 * state.m[i] as f64 + (1.0 - beta1) * delta;
                let d2 = delta * delta;
                let old = state.v[i] as f64;
                let v = if matches!(self, ServerOpt::FedAdam { .. }) {
                    beta2 * old + (1.0 - beta2) * d2
                } else {
                    old - (1.0 - beta2) * d2 * (old - d2).signum()
                };
                state.m[i] = m as f32;
                state.v[i] = v as f32;
                m / (v.max(0.0).sqrt() + tau)
            }
        }
    }
}

impl fmt::Display for ServerOpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerOpt::FedAvg => write!(f, "fedavg"),
            ServerOpt::FedAvgM { momentum } => write!(f, "fedavgm:momentum={momentum}"),
            ServerOpt::FedAdagrad { tau } => write!(f, "fedadagrad:tau={tau}"),
            ServerOpt::FedAdam { beta1, beta2, tau } | ServerOpt::FedYogi { beta1, beta2, tau } => {
                write!(f, "{}:beta1={beta1},beta2={beta2},tau={tau}", self.name())
            }
        }
    }
}

impl FromStr for ServerOpt {
    type Err = String;

    /// `fedavg`, `fedavgm[:momentum=B]`, `fedadagrad[:tau=T]`,
    /// `fedadam[:beta1=B1,beta2=B2,tau=T]`, `fedyogi[:...]`; a key left out
    /// keeps its default.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, args) = s.split_once(':').unwrap_or((s, ""));
        let mut opt = match name.trim() {
            "fedavg" => ServerOpt::FedAvg,
            "fedavgm" => ServerOpt::FEDAVGM,
            "fedadagrad" => ServerOpt::FEDADAGRAD,
            "fedadam" => ServerOpt::FEDADAM,
            "fedyogi" => ServerOpt::FEDYOGI,
            other => {
                return Err(format!(
                    "unknown server optimiser {other:?}: use fedavg, fedavgm, fedadagrad, fedadam or fedyogi"
                ));
            }
        };
        for pair in args.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{s:?}: expected KEY=VALUE, got {pair:?}"))?;
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: {key} is not a number: {value:?}"))?;
            let slot = match (&mut opt, key.trim()) {
                (ServerOpt::FedAvgM { momentum }, "momentum") => momentum,
                (ServerOpt::FedAdagrad { tau }, "tau") => tau,
                (ServerOpt::FedAdam { beta1, .. } | ServerOpt::FedYogi { beta1, .. }, "beta1") => {
                    beta1
                }
                (ServerOpt::FedAdam { beta2, .. } | ServerOpt::FedYogi { beta2, .. }, "beta2") => {
                    beta2
                }
                (ServerOpt::FedAdam { tau, .. } | ServerOpt::FedYogi { tau, .. }, "tau") => tau,
                (_, key) => return Err(format!("{name} has no parameter {key:?}")),
            };
            *slot = value;
        }
        opt.validate().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(opt)
    }
}

text_setting!(ServerOpt);

/// A server optimiser's state: what it carries from round to round.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OptState {
    /// The optimiser it belongs to, as [`ServerOpt`]'s `Display` writes it.
    pub opt: String,
    /// Steps taken.
    pub steps: u64,
    /// First moment (momentum), one per parameter, or empty.
    pub m: Vec<f32>,
    /// Second moment, one per parameter, or empty.
    pub v: Vec<f32>,
    /// SCAFFOLD's server control as published (see
    /// [`super::scaffold::Control`]), when the fleet runs SCAFFOLD.
    pub control: Option<crate::messages::Delta>,
}

/// The state as releases before SCAFFOLD stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct OptStateV1 {
    opt: String,
    steps: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl OptState {
    /// True when this state is `opt`'s for a model of `like`'s size.
    pub fn fits(&self, opt: &ServerOpt, like: &ParamSet) -> bool {
        self.opt == opt.to_string() && (self.m.len(), self.v.len()) == opt.state_lens(like)
    }

    /// The state as stored (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// A stored state back, in this release's layout or the one before
    /// it (read without a control).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        if let Ok((old, [])) = postcard::take_from_bytes::<OptStateV1>(bytes) {
            return Ok(OptState {
                opt: old.opt,
                steps: old.steps,
                m: old.m,
                v: old.v,
                control: None,
            });
        }
        postcard::from_bytes(bytes)
    }
}

/// How the server learning rate changes over rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Schedule {
    /// The same every round.
    Constant,
    /// Multiplied by `gamma` every `every` rounds.
    Step {
        /// Rounds between decays (at least 1).
        every: u64,
        /// Factor per decay, in (0, 1].
        gamma: f64,
    },
    /// Cosine decay from the rate to `floor` times it over `rounds`
    /// rounds, then `floor` times it.
    Cosine {
        /// Rounds the decay takes (at least 1).
        rounds: u64,
        /// Share of the rate left at the end, in [0, 1].
        floor: f64,
    },
}

impl Schedule {
    /// The learning rate of round index `t` (0 for the first round this
    /// server published) from the base rate `lr`.
    pub fn lr(&self, lr: f64, t: u64) -> f64 {
        match *self {
            Schedule::Constant => lr,
            Schedule::Step { every, gamma } => lr * gamma.powi((t / every.max(1)) as i32),
            Schedule::Cosine { rounds, floor } => {
                let p = (t as f64 / rounds.max(1) as f64).min(1.0);
                lr * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Step { every, gamma } => write!(f, "step:{every}:{gamma}"),
            Schedule::Cosine { rounds, floor } => write!(f, "cosine:{rounds}:{floor}"),
        }
    }
}

impl FromStr for Schedule {
    type Err = String;

    /// `constant`, `step:EVERY:GAMMA` or `cosine:ROUNDS[:FLOOR]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "unknown learning-rate schedule {s:?}: use constant, step:EVERY:GAMMA (EVERY rounds >= 1, GAMMA in (0, 1]) or cosine:ROUNDS[:FLOOR] (FLOOR in [0, 1], default 0)"
            )
        };
        let parts: Vec<&str> = s.split(':').map(str::trim).collect();
        match parts.as_slice() {
            ["constant"] => Ok(Schedule::Constant),
            ["step", every, gamma] => {
                let every: u64 = every.parse().map_err(|_| bad())?;
                let gamma: f64 = gamma.parse().map_err(|_| bad())?;
                if every == 0 || !(gamma > 0.0 && gamma <= 1.0) {
                    return Err(bad());
                }
                Ok(Schedule::Step { every, gamma })
            }
            ["cosine", rounds, rest @ ..] if rest.len() <= 1 => {
                let rounds: u64 = rounds.parse().map_err(|_| bad())?;
                let floor: f64 = match rest {
                    [f] => f.parse().map_err(|_| bad())?,
                    _ => 0.0,
                };
                if rounds == 0 || !(0.0..=1.0).contains(&floor) {
                    return Err(bad());
                }
                Ok(Schedule::Cosine { rounds, floor })
            }
            _ => Err(bad()),
        }
    }
}

text_setting!(Schedule);

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
