//! The cost model: what a round will cost before it runs, so the ledger can
//! put prediction beside measurement and `convoy-server plan` can answer
//! "what will this cost" for rounds not yet run.
//!
//! **Training time.** A vehicle's device is described by its measured
//! [`Throughput`]: a fixed cost per optimiser step (kernel launches,
//! batching, the autodiff graph) plus a rate in FLOPs per second. An agent
//! measures both at start-up on two synthetic models and refines the rate
//! from every round it trains; it reports them in its status. The
//! prediction for a round is `steps x step_secs + flops / flops_per_sec`,
//! with `steps = epochs x ceil(samples / batch)` and `flops` from
//! [`training_flops`].
//!
//! **Bytes.** An update's size follows from the parameter count and the
//! codec: kept values times their width plus the index coding
//! ([`update_bytes`]). The entropy stage and the envelope (signature,
//! headers, chunking) are not modelled from first principles: the server
//! keeps each vehicle's last ratio of measured to modelled bytes per codec
//! and applies it to the next prediction ([`Calibrated`]).
//!
//! **Money.** [`Prices`] turn device-seconds and bytes into a cost.

use crate::codec::{Pipeline, Sparsify};
use crate::spec::{ModelSpec, Recipe};
use serde::{Deserialize, Serialize};

/// FLOPs of training `samples` for `epochs` epochs through the trunk and
/// head `head`: forward is 2 FLOPs per multiply-accumulate, backward twice
/// the forward.
pub fn training_flops(spec: &ModelSpec, head: usize, samples: u64, epochs: u32) -> u64 {
    6 * spec.forward_macs(head) * samples * epochs as u64
}

/// Optimiser steps of `samples` rows for `epochs` epochs in batches of `batch`.
pub fn training_steps(samples: u64, epochs: u32, batch: u32) -> u64 {
    samples.div_ceil(batch.max(1) as u64) * epochs as u64
}

/// Modelled encoded bytes of one update under `codec` (before the entropy
/// stage and the envelope): kept values times their width, plus index
/// coding estimated at the varint size of the mean gap (or the bitmap,
/// whichever the encoder would pick).
pub fn update_bytes(spec: &ModelSpec, codec: &Pipeline) -> u64 {
    spec.layout()
        .tensors
        .iter()
        .map(|(_, shape)| {
            let n: usize = shape.iter().map(|d| *d as usize).product();
            let k = codec.sparsify.keep(n);
            let indices = if k == n || codec.sparsify == Sparsify::Dense {
                0
            } else {
                let gap_bits = ((n as f64 / k.max(1) as f64).log2().ceil() as usize).max(1);
                (n.div_ceil(8)).min(k * gap_bits.div_ceil(7)) + 2
            };
            (indices + codec.quant.encoded_len(k)) as u64
        })
        .sum()
}

/// A round's predicted cost for one client, from the model alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Modelled update bytes (see [`update_bytes`]).
    pub bytes_up: u64,
    /// Training FLOPs.
    pub flops: u64,
}

/// Predicts the round cost of one client that trains head `head`.
pub fn predict(
    spec: &ModelSpec,
    head: usize,
    codec: &Pipeline,
    samples: u64,
    epochs: u32,
) -> Prediction {
    Prediction {
        bytes_up: update_bytes(spec, codec),
        flops: training_flops(spec, head, samples, epochs),
    }
}

/// How fast a device trains: a fixed cost per optimiser step plus a FLOP
/// rate. All zeros: not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Training FLOPs per second.
    pub flops_per_sec: f64,
    /// Seconds per optimiser step that do not scale with the model.
    pub step_secs: f64,
}

impl Throughput {
    /// Whether this describes a measured device.
    pub fn is_known(&self) -> bool {
        self.flops_per_sec.is_finite() && self.flops_per_sec > 0.0 && self.step_secs >= 0.0
    }

    /// Predicted seconds for `steps` steps totalling `flops` FLOPs.
    pub fn seconds(&self, steps: u64, flops: u64) -> Option<f64> {
        self.is_known()
            .then(|| steps as f64 * self.step_secs + flops as f64 / self.flops_per_sec)
    }

    /// Fits both terms from two timed runs `(steps, flops, seconds)` of
    /// different model sizes; `None` when the times do not separate them.
    pub fn fit(small: (u64, u64, f64), large: (u64, u64, f64)) -> Option<Self> {
        let (s1, f1, t1) = (small.0 as f64, small.1 as f64, small.2);
        let (s2, f2, t2) = (large.0 as f64, large.1 as f64, large.2);
        // per-step time t = o + (f / s) / r: two equations, two unknowns
        let (a1, a2) = (t1 / s1, t2 / s2);
        let (g1, g2) = (f1 / s1, f2 / s2);
        if !(g2 > g1 && a2 > a1) {
            return None;
        }
        let rate = (g2 - g1) / (a2 - a1);
        let step = (a1 - g1 / rate).max(0.0);
        let t = Self {
            flops_per_sec: rate,
            step_secs: step,
        };
        t.is_known().then_some(t)
    }

    /// This device after a measured round of `steps` steps, `flops` FLOPs
    /// in `seconds`: the per-step cost stays, the rate takes what the
    /// round showed (a round is a better sample than the calibration).
    pub fn refined(&self, steps: u64, flops: u64, seconds: f64) -> Self {
        if !(seconds.is_finite() && seconds > 0.0 && flops > 0) {
            return *self;
        }
        if !self.is_known() {
            // no calibration: the round's plain rate
            return Self {
                flops_per_sec: flops as f64 / seconds,
                step_secs: 0.0,
            };
        }
        let compute = seconds - steps as f64 * self.step_secs;
        if compute > 0.05 * seconds {
            Self {
                flops_per_sec: flops as f64 / compute,
                step_secs: self.step_secs,
            }
        } else {
            // the step cost alone explains the round: scale it
            Self {
                flops_per_sec: self.flops_per_sec,
                step_secs: (seconds - flops as f64 / self.flops_per_sec.max(1.0)).max(0.0)
                    / steps.max(1) as f64,
            }
        }
    }
}

/// A modelled size corrected by what the last measurement showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibrated {
    /// Measured over modelled bytes of the last observation (0: none).
    pub ratio: f64,
}

impl Calibrated {
    /// The prediction for a modelled size.
    pub fn predict(&self, modelled: u64) -> u64 {
        if self.ratio > 0.0 && self.ratio.is_finite() {
            (modelled as f64 * self.ratio).round() as u64
        } else {
            modelled
        }
    }

    /// Learns from one measurement.
    pub fn observe(&mut self, modelled: u64, measured: u64) {
        if modelled > 0 && measured > 0 {
            self.ratio = measured as f64 / modelled as f64;
        }
    }
}

/// Prices that turn a plan into money.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// Per MB (10^6 bytes) of cellular data, either way.
    pub per_mb: f64,
    /// Per hour of vehicle compute spent training.
    pub per_device_hour: f64,
}

/// A planned run, as `convoy-server plan` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Rounds.
    pub rounds: u64,
    /// Vehicles in the fleet.
    pub vehicles: u64,
    /// Share of them asked to train each round, (0, 1].
    pub participation: f64,
    /// Training rows per vehicle.
    pub samples: u64,
    /// Share of the participants training each head, as (head index,
    /// share); empty: every vehicle trains the first head.
    pub heads: Vec<(usize, f64)>,
    /// Local recipe (epochs, batch).
    pub recipe: Recipe,
    /// Update codec.
    pub codec: Pipeline,
    /// Downlink codec of the published delta.
    pub downlink: Pipeline,
    /// Every this many rounds the published model is exact (0 never).
    pub keyframe_every: u64,
    /// The fleet's devices.
    pub device: Throughput,
    /// Measured over modelled bytes, up and down (1 when not known).
    pub ratio_up: f64,
    /// Same, for the downlink delta.
    pub ratio_down: f64,
}

/// What a plan costs, per round and in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PlanCost {
    /// Vehicles training each round.
    pub participants: u64,
    /// Training seconds of one vehicle in one round (`None`: device unknown).
    pub train_seconds: Option<f64>,
    /// Device-seconds of the whole run.
    pub device_seconds: Option<f64>,
    /// Uplink bytes of one round.
    pub bytes_up_round: u64,
    /// Downlink bytes of one round (deltas; full models on keyframe rounds).
    pub bytes_down_round: u64,
    /// Uplink bytes of the run.
    pub bytes_up: u64,
    /// Downlink bytes of the run.
    pub bytes_down: u64,
    /// Store growth of the run (one published delta per round, a whole
    /// model per keyframe).
    pub storage: u64,
    /// Money, when prices are set.
    pub cost: f64,
}

/// Costs `plan` for `spec`. A vehicle trains the trunk and its own head,
/// so its FLOPs are those of the plan's head mix (the shares' weighted
/// mean); its update and download cover the whole model either way.
pub fn plan(spec: &ModelSpec, plan: &Plan, prices: &Prices) -> PlanCost {
    let participants = ((plan.vehicles as f64 * plan.participation).ceil() as u64)
        .clamp(plan.vehicles.min(1), plan.vehicles);
    let steps = training_steps(plan.samples, plan.recipe.epochs, plan.recipe.batch_size);
    let head_flops = |head: usize| training_flops(spec, head, plan.samples, plan.recipe.epochs);
    let total_share: f64 = plan.heads.iter().map(|(_, s)| s.max(0.0)).sum();
    let flops = if total_share > 0.0 {
        let mixed: f64 = plan
            .heads
            .iter()
            .map(|(h, s)| s.max(0.0) * head_flops(*h) as f64)
            .sum();
        (mixed / total_share).round() as u64
    } else {
        head_flops(0)
    };
    let train_seconds = plan.device.seconds(steps, flops);
    let device_seconds = train_seconds.map(|t| t * (participants * plan.rounds) as f64);
    let scale = |bytes: u64, ratio: f64| {
        if ratio > 0.0 && ratio.is_finite() {
            (bytes as f64 * ratio).round() as u64
        } else {
            bytes
        }
    };
    let bytes_up_round = participants * scale(update_bytes(spec, &plan.codec), plan.ratio_up);
    let full = spec.layout().numel() as u64 * 4;
    let delta = if plan.downlink.is_lossless() {
        full
    } else {
        scale(update_bytes(spec, &plan.downlink), plan.ratio_down)
    };
    let keyframes = match plan.keyframe_every {
        0 => 0,
        k => plan.rounds / k,
    };
    // every participant fetches each round: the delta, or the model on a
    // keyframe round (its exact delta is as large)
    let per_round_down = participants * delta.min(full);
    let bytes_down = per_round_down * (plan.rounds - keyframes) + participants * full * keyframes;
    let bytes_up = bytes_up_round * plan.rounds;
    let storage = delta.min(full) * (plan.rounds - keyframes) + full * keyframes;
    let cost = (bytes_up + bytes_down) as f64 / 1e6 * prices.per_mb
        + device_seconds.unwrap_or(0.0) / 3600.0 * prices.per_device_hour;
    PlanCost {
        participants,
        train_seconds,
        device_seconds,
        bytes_up_round,
        bytes_down_round: per_round_down,
        bytes_up,
        bytes_down,
        storage,
        cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Feature, Head};

    fn spec() -> ModelSpec {
        ModelSpec {
            features: (0..4)
                .map(|i| Feature::numeric(format!("x{i}"), 0.0, 1.0))
                .collect(),
            heads: vec![Head::classification("y", ["a".into(), "b".into()])],
            hidden: vec![8],
            init_seed: 1,
        }
    }

    #[test]
    fn flops_and_steps_by_hand() {
        // 4 inputs -> 8 hidden -> 2 outputs: 4*8 + 8*2 = 48 MACs per row
        let s = spec();
        assert_eq!(s.forward_macs(0), 48);
        assert_eq!(training_flops(&s, 0, 100, 2), 6 * 48 * 100 * 2);
        assert_eq!(training_steps(100, 2, 32), 4 * 2);
        assert_eq!(training_steps(96, 1, 32), 3);
    }

    #[test]
    fn update_bytes_by_hand() {
        let s = spec();
        // weights 4x8 + bias 8 + 8x2 + bias 2 = 58 values
        assert_eq!(update_bytes(&s, &Pipeline::FP32), 58 * 4);
        let q8 = Pipeline::parse("q8").unwrap();
        let dense_q8: u64 = s
            .layout()
            .tensors
            .iter()
            .map(|(_, sh)| q8.quant.encoded_len(sh.iter().product::<u32>() as usize) as u64)
            .sum();
        assert_eq!(update_bytes(&s, &q8), dense_q8);
        // top half of the 32 first-layer weights: 16 kept, gaps of 2 (1 bit
        // -> 1 varint byte each) lose to the 4-byte bitmap, + 2 header bytes
        let top = Pipeline::parse("topk:0.5").unwrap();
        let first = 4 + 2 + 16 * 4;
        // then bias 8 -> 4 kept (1 + 2 + 16), 8x2 -> 8 kept (2 + 2 + 32),
        // bias 2 -> 1 kept (1 + 2 + 4)
        assert_eq!(update_bytes(&s, &top), first + 19 + 36 + 7);
        assert!(update_bytes(&s, &top) < update_bytes(&s, &Pipeline::FP32));
    }

    #[test]
    fn a_throughput_fit_recovers_the_step_cost_and_rate() {
        let truth = Throughput {
            flops_per_sec: 2e9,
            step_secs: 1e-4,
        };
        let time = |steps: u64, flops: u64| truth.seconds(steps, flops).unwrap();
        let small = (100, 1_000_000, time(100, 1_000_000));
        let large = (100, 500_000_000, time(100, 500_000_000));
        let fit = Throughput::fit(small, large).unwrap();
        assert!((fit.flops_per_sec - 2e9).abs() < 1.0, "{fit:?}");
        assert!((fit.step_secs - 1e-4).abs() < 1e-12, "{fit:?}");
        // 10 steps of 1 GFLOP: 10 * 0.1 ms + 0.5 s
        assert!((fit.seconds(10, 1_000_000_000).unwrap() - 0.501).abs() < 1e-9);
        assert!(
            Throughput::fit(large, small).is_none(),
            "larger model must be slower"
        );
        assert_eq!(Throughput::default().seconds(1, 1), None);
        // a round at half the rate halves it, the step cost stays
        let slower = fit.refined(10, 1_000_000_000, 10.0 * 1e-4 + 1.0);
        assert!((slower.flops_per_sec - 1e9).abs() < 1.0, "{slower:?}");
    }

    #[test]
    fn calibration_applies_the_last_ratio() {
        let mut c = Calibrated::default();
        assert_eq!(c.predict(1000), 1000);
        c.observe(1000, 1100);
        assert_eq!(c.predict(2000), 2200);
        c.observe(0, 5);
        assert_eq!(c.predict(10), 11, "a zero model size teaches nothing");
    }

    #[test]
    fn a_plan_by_hand() {
        let s = spec();
        let p = Plan {
            rounds: 10,
            vehicles: 20,
            participation: 0.5,
            samples: 320,
            heads: Vec::new(),
            recipe: Recipe {
                epochs: 1,
                batch_size: 32,
                ..Recipe::default()
            },
            codec: Pipeline::FP32,
            downlink: Pipeline::parse("q8").unwrap(),
            keyframe_every: 5,
            device: Throughput {
                flops_per_sec: 1e6,
                step_secs: 0.01,
            },
            ratio_up: 1.0,
            ratio_down: 1.0,
        };
        let prices = Prices {
            per_mb: 2.0,
            per_device_hour: 36.0,
        };
        let c = plan(&s, &p, &prices);
        assert_eq!(c.participants, 10);
        // 10 steps * 0.01 s + 6*48*320 FLOPs / 1e6 = 0.1 + 0.09216 s
        let t = 0.1 + 0.092_16;
        assert!((c.train_seconds.unwrap() - t).abs() < 1e-9);
        assert!((c.device_seconds.unwrap() - t * 100.0).abs() < 1e-6);
        assert_eq!(c.bytes_up, 10 * 10 * 58 * 4);
        let q8 = update_bytes(&s, &p.downlink);
        // 8 delta rounds and 2 keyframe rounds of 10 fetches each
        assert_eq!(c.bytes_down, 10 * q8 * 8 + 10 * 58 * 4 * 2);
        assert_eq!(c.storage, q8 * 8 + 58 * 4 * 2);
        let money = (c.bytes_up + c.bytes_down) as f64 / 1e6 * 2.0 + t * 100.0 / 3600.0 * 36.0;
        assert!((c.cost - money).abs() < 1e-9);

        // a second head of 6 classes: 8*6 = 48 more MACs for its vehicles;
        // a fleet split 3:1 trains 4*8 + 0.75*8*2 + 0.25*8*6 = 56 MACs a row
        let mut two = s.clone();
        two.heads
            .push(Head::classification("z", (0..6).map(|c| c.to_string())));
        assert_eq!(two.forward_macs(1), 4 * 8 + 8 * 6);
        let mixed = plan(
            &two,
            &Plan {
                heads: vec![(0, 3.0), (1, 1.0)],
                ..p.clone()
            },
            &prices,
        );
        let t = 0.1 + 6.0 * 56.0 * 320.0 / 1e6;
        assert!((mixed.train_seconds.unwrap() - t).abs() < 1e-9, "{mixed:?}");
        let first = plan(&two, &p, &prices);
        assert!((first.train_seconds.unwrap() - (0.1 + 0.092_16)).abs() < 1e-9);
    }
}

/// The median of the finite `values` (the mean of the middle two for an
/// even count); `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

#[cfg(test)]
mod median_tests {
    #[test]
    fn median_of_odd_even_empty_and_non_finite() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(super::median(&[]), None);
        assert_eq!(super::median(&[f64::NAN, 5.0]), Some(5.0));
    }
}
