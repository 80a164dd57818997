//! What a model is and how it is trained: the architecture, features and
//! normalisation ([`ModelSpec`]) and the local training recipe ([`Recipe`]).
//! Together with the weights they make a version recoverable.

use crate::params::{Layout, ParamSet, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// One of `classes`, softmax cross-entropy.
    #[default]
    Classification,
    /// A real number, mean squared error.
    Regression,
}

/// Everything needed to rebuild a model from its parameters: the "spec" half
/// of a recoverable version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Classification or regression.
    pub task: TaskKind,
    /// Input feature names, in model input order; CSV columns match by name.
    pub features: Vec<String>,
    /// Per-feature mean subtracted before training.
    pub norm_mean: Vec<f32>,
    /// Per-feature scale divided by before training (never zero).
    pub norm_std: Vec<f32>,
    /// Label column name.
    pub label: String,
    /// Class names for classification, in output order; empty for regression.
    pub classes: Vec<String>,
    /// Hidden layer widths.
    pub hidden: Vec<u32>,
    /// Seed for the initial weights.
    pub init_seed: u64,
}

/// A spec that cannot describe a model.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid model spec: {0}")]
pub struct SpecError(pub String);

impl ModelSpec {
    /// Number of inputs.
    pub fn inputs(&self) -> usize {
        self.features.len()
    }

    /// Number of outputs: one per class, or one for regression.
    pub fn outputs(&self) -> usize {
        match self.task {
            TaskKind::Classification => self.classes.len(),
            TaskKind::Regression => 1,
        }
    }

    /// Checks the spec is internally consistent.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.features.is_empty() {
            return Err(SpecError("no input features".into()));
        }
        if self.norm_mean.len() != self.inputs() || self.norm_std.len() != self.inputs() {
            return Err(SpecError(format!(
                "{} features but {} means and {} scales",
                self.inputs(),
                self.norm_mean.len(),
                self.norm_std.len()
            )));
        }
        if self.norm_std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(SpecError(
                "normalisation scales must be positive and finite".into(),
            ));
        }
        if self.task == TaskKind::Classification && self.classes.len() < 2 {
            return Err(SpecError(
                "classification needs at least two classes".into(),
            ));
        }
        if self.hidden.contains(&0) {
            return Err(SpecError("hidden layer widths must be positive".into()));
        }
        Ok(())
    }

    /// Layer widths from input to output.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths = vec![self.inputs()];
        widths.extend(self.hidden.iter().map(|h| *h as usize));
        widths.push(self.outputs());
        widths
    }

    /// The parameter layout this spec implies.
    pub fn layout(&self) -> Layout {
        let widths = self.widths();
        let mut tensors = Vec::new();
        for (i, pair) in widths.windows(2).enumerate() {
            tensors.push((
                format!("layers.{i}.weight"),
                vec![pair[0] as u32, pair[1] as u32],
            ));
            tensors.push((format!("layers.{i}.bias"), vec![pair[1] as u32]));
        }
        Layout { tensors }
    }

    /// Deterministic initial weights: U(-k, k), k = 1/sqrt(fan_in), the
    /// PyTorch/burn default, drawn from `init_seed` so every node agrees.
    pub fn init_params(&self) -> ParamSet {
        let mut rng = StdRng::seed_from_u64(self.init_seed);
        let layout = self.layout();
        let tensors = layout
            .tensors
            .into_iter()
            .map(|(name, shape)| {
                // weights are [fan_in, fan_out]; biases share their layer's fan_in
                let fan_in = if shape.len() == 2 { shape[0] } else { 0 };
                let numel: usize = shape.iter().map(|d| *d as usize).product();
                (name, shape, fan_in, numel)
            })
            .collect::<Vec<_>>();
        let mut out = Vec::with_capacity(tensors.len());
        let mut last_fan_in = 1;
        for (name, shape, fan_in, numel) in tensors {
            if fan_in > 0 {
                last_fan_in = fan_in;
            }
            let k = 1.0 / (last_fan_in as f32).sqrt();
            let data = (0..numel).map(|_| rng.random_range(-k..k)).collect();
            out.push(Tensor { name, shape, data });
        }
        ParamSet { tensors: out }
    }

    /// Multiply-accumulate count of one forward pass for one sample.
    pub fn forward_macs(&self) -> u64 {
        self.widths().windows(2).map(|p| (p[0] * p[1]) as u64).sum()
    }
}

/// The local training recipe of a round: set in the server's config, sent
/// with every announcement and hashed into every version id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Passes over the local data.
    pub epochs: u32,
    /// SGD learning rate.
    pub lr: f32,
    /// Mini-batch size.
    pub batch_size: u32,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 0.05,
            batch_size: 32,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid classification spec.
    pub(crate) fn spec() -> ModelSpec {
        ModelSpec {
            task: TaskKind::Classification,
            features: vec!["a".into(), "b".into(), "c".into()],
            norm_mean: vec![0.0; 3],
            norm_std: vec![1.0; 3],
            label: "y".into(),
            classes: vec!["no".into(), "yes".into()],
            hidden: vec![4],
            init_seed: 7,
        }
    }

    #[test]
    fn init_is_deterministic_and_seeded() {
        let spec = spec();
        assert_eq!(spec.init_params(), spec.init_params());
        let other = ModelSpec {
            init_seed: 8,
            ..spec.clone()
        };
        assert_ne!(spec.init_params(), other.init_params());
        assert!(spec.validate().is_ok());
    }
}
