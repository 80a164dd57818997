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

impl std::str::FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "classification" => Ok(TaskKind::Classification),
            "regression" => Ok(TaskKind::Regression),
            other => Err(format!(
                "unknown task {other:?}: use classification or regression"
            )),
        }
    }
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

/// Most heads one model may have.
pub const MAX_HEADS: usize = 256;

/// One output head: a task the fleet learns on the shared trunk. A vehicle
/// trains the trunk and the head of the label it logs; the others stay as
/// they are in its update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Label column name.
    pub label: String,
    /// Other local names of the label column.
    pub label_aliases: Vec<String>,
    /// Classification or regression.
    pub task: TaskKind,
    /// Class names for classification, in output order; empty for regression.
    pub classes: Vec<String>,
    /// Regression target standardisation (identity for classification).
    pub target: TargetScale,
    /// The model line (a vehicle group, e.g. a car model) whose vehicles
    /// train this head; `None` for the fleet's own head of the label.
    pub line: Option<String>,
}

impl Head {
    /// How reports name the head: its label, and `@line` for a line's.
    pub fn name(&self) -> String {
        match &self.line {
            Some(line) => format!("{}@{line}", self.label),
            None => self.label.clone(),
        }
    }

    /// A classification head over `classes`.
    pub fn classification(label: &str, classes: impl IntoIterator<Item = String>) -> Self {
        Self {
            label: label.to_string(),
            label_aliases: Vec::new(),
            task: TaskKind::Classification,
            classes: classes.into_iter().collect(),
            target: TargetScale::default(),
            line: None,
        }
    }

    /// A regression head predicting `(y - target.mean) / target.std`.
    pub fn regression(label: &str, target: TargetScale) -> Self {
        Self {
            label: label.to_string(),
            label_aliases: Vec::new(),
            task: TaskKind::Regression,
            classes: Vec::new(),
            target,
            line: None,
        }
    }

    /// Does a CSV column called `column` hold this head's label?
    pub fn matches(&self, column: &str) -> bool {
        self.label == column || self.label_aliases.iter().any(|a| a == column)
    }

    /// Number of outputs: one per class, or one for regression.
    pub fn outputs(&self) -> usize {
        match self.task {
            TaskKind::Classification => self.classes.len(),
            TaskKind::Regression => 1,
        }
    }
}

/// The most parameters a model may have: 64 Mi (256 MiB as f32). A server
/// holds several copies (the model, its residual, the running sum), so a
/// config asking for more is refused before anything is allocated.
pub const MAX_PARAMS: u64 = 1 << 26;

/// Everything needed to rebuild a model from its parameters: the "spec" half
/// of a recoverable version. It is the model's whole pipeline: the aligned
/// feature schema with its statistics and vocabularies, the heads with
/// their targets, and the architecture: a trunk of `hidden` layers shared
/// by every head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Input columns, in model input order; CSV columns match by name or alias.
    pub features: Vec<Feature>,
    /// Output heads, one per label the fleet learns (at least one).
    pub heads: Vec<Head>,
    /// Hidden layer widths of the shared trunk.
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
            features: features
                .into_iter()
                .map(|name| Feature::numeric(name, 0.0, 1.0))
                .collect(),
            heads: vec![Head::classification(label, classes)],
            hidden,
            init_seed,
        }
    }

    /// The first head (the only one in a one-task fleet).
    pub fn primary(&self) -> &Head {
        &self.heads[0]
    }

    /// Number of model inputs (masks and one-hot columns included).
    pub fn inputs(&self) -> usize {
        self.features.iter().map(|f| f.encoding.width()).sum()
    }

    /// Feature names, in input order.
    pub fn feature_names(&self) -> Vec<&str> {
        self.features.iter().map(|f| f.name.as_str()).collect()
    }

    /// Does a CSV column called `column` hold some head's label?
    pub fn is_label(&self, column: &str) -> bool {
        self.heads.iter().any(|h| h.matches(column))
    }

    /// The first head whose label column is called `column`.
    pub fn head_for(&self, column: &str) -> Option<usize> {
        self.heads.iter().position(|h| h.matches(column))
    }

    /// The head a vehicle trains: that of its label column `column` and its
    /// model line (`None`: the fleet's own head of the label).
    pub fn head_of(&self, column: &str, line: Option<&str>) -> Option<usize> {
        self.heads
            .iter()
            .position(|h| h.matches(column) && h.line.as_deref() == line)
    }

    /// The first head whose label is among `headers` (a CSV's columns).
    pub fn head_in(&self, headers: &[String]) -> Option<usize> {
        self.heads
            .iter()
            .position(|h| headers.iter().any(|c| h.matches(c)))
    }

    /// Number of outputs of head `head` (0 for no such head).
    pub fn outputs(&self, head: usize) -> usize {
        self.heads.get(head).map_or(0, Head::outputs)
    }

    /// Layers of the shared trunk (each followed by a ReLU).
    pub fn trunk_layers(&self) -> usize {
        self.hidden.len()
    }

    /// Which head tensor `index` of [`ModelSpec::layout`] belongs to, or
    /// `None` for the shared trunk (and past the end).
    pub fn tensor_head(&self, index: usize) -> Option<usize> {
        let layer = index / 2;
        let head = layer.checked_sub(self.trunk_layers())?;
        (head < self.heads.len()).then_some(head)
    }

    /// Checks the spec is internally consistent.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.features.is_empty() {
            return Err(SpecError("no input features".into()));
        }
        if self.heads.is_empty() || self.heads.len() > MAX_HEADS {
            return Err(SpecError(format!(
                "{} output heads; a model has 1 to {MAX_HEADS}",
                self.heads.len()
            )));
        }
        let mut labels = std::collections::BTreeSet::new();
        for head in &self.heads {
            if !labels.insert((head.label.as_str(), head.line.as_deref())) {
                return Err(SpecError(format!("two heads are {:?}", head.name())));
            }
            if self.features.iter().any(|f| head.matches(&f.name)) {
                return Err(SpecError(format!(
                    "label {:?} is also an input feature",
                    head.label
                )));
            }
            let target = &head.target;
            if !target.mean.is_finite() || !target.std.is_finite() || target.std <= 0.0 {
                return Err(SpecError(format!(
                    "head {:?}: target scale must be finite and positive",
                    head.label
                )));
            }
            if head.task == TaskKind::Classification && head.classes.len() < 2 {
                return Err(SpecError(format!(
                    "head {:?}: classification needs at least two classes",
                    head.label
                )));
            }
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
        if self.hidden.contains(&0) {
            return Err(SpecError("hidden layer widths must be positive".into()));
        }
        let params = self.param_count();
        if params > MAX_PARAMS as u128 {
            return Err(SpecError(format!(
                "the model would have {params} parameters ({} MiB as f32), more than the {MAX_PARAMS} convoy builds; use fewer or narrower hidden layers",
                (params * 4) >> 20
            )));
        }
        Ok(())
    }

    /// Parameters of the whole model (trunk and every head), counted
    /// without overflow whatever the widths say.
    pub fn param_count(&self) -> u128 {
        self.layout()
            .tensors
            .iter()
            .map(|(_, shape)| shape.iter().map(|d| u128::from(*d)).product::<u128>())
            .sum()
    }

    /// Layer widths from input to the output of head `head`.
    pub fn widths(&self, head: usize) -> Vec<usize> {
        let mut widths = vec![self.inputs()];
        widths.extend(self.hidden.iter().map(|h| *h as usize));
        widths.push(self.outputs(head));
        widths
    }

    /// Width of the trunk's output, the input of every head.
    pub fn trunk_width(&self) -> usize {
        self.hidden.last().map_or(self.inputs(), |h| *h as usize)
    }

    /// Widest layer of any head's path (activation memory per sample).
    pub fn widest(&self) -> usize {
        (0..self.heads.len())
            .flat_map(|h| self.widths(h))
            .max()
            .unwrap_or(1)
    }

    /// The parameter layout this spec implies: the trunk's layers
    /// `layers.0 .. layers.{L-1}`, then one output layer per head,
    /// `layers.{L+k}` for head k (so a one-head model is a plain MLP).
    pub fn layout(&self) -> Layout {
        let mut widths = vec![self.inputs()];
        widths.extend(self.hidden.iter().map(|h| *h as usize));
        let mut tensors = Vec::new();
        let mut push = |i: usize, from: usize, to: usize| {
            tensors.push((format!("layers.{i}.weight"), vec![from as u32, to as u32]));
            tensors.push((format!("layers.{i}.bias"), vec![to as u32]));
        };
        for (i, pair) in widths.windows(2).enumerate() {
            push(i, pair[0], pair[1]);
        }
        for (k, head) in self.heads.iter().enumerate() {
            push(self.trunk_layers() + k, self.trunk_width(), head.outputs());
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

    /// Multiply-accumulate count of one forward pass for one sample
    /// through the trunk and head `head`.
    pub fn forward_macs(&self, head: usize) -> u64 {
        self.widths(head)
            .windows(2)
            .map(|p| (p[0] * p[1]) as u64)
            .sum()
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
pub(crate) mod tests;
