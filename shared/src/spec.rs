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

/// How one input column becomes model inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Encoding {
    /// A number, standardised; with `mask`, a second input says whether the
    /// value was there (1) or missing (0, and the value input is 0), so the
    /// model can tell "missing" from "average".
    Numeric {
        /// Mean subtracted.
        mean: f32,
        /// Scale divided by (never zero).
        std: f32,
        /// Whether a presence input follows the value.
        mask: bool,
    },
    /// One-hot over `vocabulary` plus a last "other" input for any category
    /// outside it; a missing cell is all zeros.
    Categorical {
        /// Categories with their own input, most frequent first.
        vocabulary: Vec<String>,
    },
}

impl Encoding {
    /// Model inputs this column takes.
    pub fn width(&self) -> usize {
        match self {
            Encoding::Numeric { mask, .. } => 1 + usize::from(*mask),
            Encoding::Categorical { vocabulary } => vocabulary.len() + 1,
        }
    }
}

/// One input column of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// Column name in the global schema.
    pub name: String,
    /// Other local names of the same column (the server's configured renames).
    pub aliases: Vec<String>,
    /// How its cells become inputs.
    pub encoding: Encoding,
}

impl Feature {
    /// A standardised numeric feature without a presence input.
    pub fn numeric(name: impl Into<String>, mean: f32, std: f32) -> Self {
        Self {
            name: name.into(),
            aliases: Vec::new(),
            encoding: Encoding::Numeric {
                mean,
                std,
                mask: false,
            },
        }
    }

    /// Does a CSV column called `column` hold this feature?
    pub fn matches(&self, column: &str) -> bool {
        self.name == column || self.aliases.iter().any(|a| a == column)
    }
}

/// Standardisation of a regression target: the model predicts
/// `(y - mean) / std`, metrics are reported in the original units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TargetScale {
    /// Target mean.
    pub mean: f32,
    /// Target standard deviation (never zero).
    pub std: f32,
}

impl Default for TargetScale {
    fn default() -> Self {
        Self {
            mean: 0.0,
            std: 1.0,
        }
    }
}

/// Everything needed to rebuild a model from its parameters: the "spec" half
/// of a recoverable version. It is the model's whole pipeline: the aligned
/// feature schema with its statistics and vocabularies, the target and the
/// architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Classification or regression.
    pub task: TaskKind,
    /// Input columns, in model input order; CSV columns match by name or alias.
    pub features: Vec<Feature>,
    /// Label column name.
    pub label: String,
    /// Other local names of the label column.
    pub label_aliases: Vec<String>,
    /// Class names for classification, in output order; empty for regression.
    pub classes: Vec<String>,
    /// Regression target standardisation (identity for classification).
    pub target: TargetScale,
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
    /// A classifier over numeric features used as they come (mean 0,
    /// scale 1, no presence inputs): image pixels, synthetic data.
    pub fn classifier(
        features: impl IntoIterator<Item = String>,
        label: &str,
        classes: impl IntoIterator<Item = String>,
        hidden: Vec<u32>,
        init_seed: u64,
    ) -> Self {
        Self {
            task: TaskKind::Classification,
            features: features
                .into_iter()
                .map(|name| Feature::numeric(name, 0.0, 1.0))
                .collect(),
            label: label.to_string(),
            label_aliases: Vec::new(),
            classes: classes.into_iter().collect(),
            target: TargetScale::default(),
            hidden,
            init_seed,
        }
    }

    /// Number of model inputs (masks and one-hot columns included).
    pub fn inputs(&self) -> usize {
        self.features.iter().map(|f| f.encoding.width()).sum()
    }

    /// Feature names, in input order.
    pub fn feature_names(&self) -> Vec<&str> {
        self.features.iter().map(|f| f.name.as_str()).collect()
    }

    /// Does a CSV column called `column` hold the label?
    pub fn is_label(&self, column: &str) -> bool {
        self.label == column || self.label_aliases.iter().any(|a| a == column)
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
        for f in &self.features {
            if let Encoding::Numeric { mean, std, .. } = &f.encoding
                && (!mean.is_finite() || !std.is_finite() || *std <= 0.0)
            {
                return Err(SpecError(format!(
                    "feature {:?}: normalisation needs a finite mean and a positive, finite scale",
                    f.name
                )));
            }
        }
        let target = &self.target;
        if !target.mean.is_finite() || !target.std.is_finite() || target.std <= 0.0 {
            return Err(SpecError("target scale must be finite and positive".into()));
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
    /// Largest L2 norm of each parameter's gradient in a step; larger ones
    /// are scaled down to it (0: no clipping).
    pub clip_norm: f32,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 0.05,
            batch_size: 32,
            clip_norm: 10.0,
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
            features: ["a", "b", "c"]
                .into_iter()
                .map(|n| Feature::numeric(n, 0.0, 1.0))
                .collect(),
            label: "y".into(),
            label_aliases: Vec::new(),
            classes: vec!["no".into(), "yes".into()],
            target: TargetScale::default(),
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
