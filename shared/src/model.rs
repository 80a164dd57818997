//! The model: a burn MLP whose parameters convert to and from [`ParamSet`]
//! here and nowhere else.

use crate::params::{Layout, ParamSet, Tensor as FlatTensor};
use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
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
            out.push(FlatTensor { name, shape, data });
        }
        ParamSet { tensors: out }
    }

    /// Multiply-accumulate count of one forward pass for one sample.
    pub fn forward_macs(&self) -> u64 {
        self.widths().windows(2).map(|p| (p[0] * p[1]) as u64).sum()
    }
}

/// A multi-layer perceptron with ReLU between layers.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    activation: Relu,
}

impl Mlp {
    /// Builds the module on `device` from a parameter set of `spec.layout()`.
    pub fn from_params(
        spec: &ModelSpec,
        params: &ParamSet,
        device: &Device,
    ) -> Result<Self, crate::params::ParamError> {
        params.check_layout(&spec.layout())?;
        let layers = params
            .tensors
            .chunks_exact(2)
            .map(|pair| {
                let (w, b) = (&pair[0], &pair[1]);
                let mut linear =
                    LinearConfig::new(w.shape[0] as usize, w.shape[1] as usize).init(device);
                linear.weight = Param::from_tensor(Tensor::<2>::from_data(
                    TensorData::new(w.data.clone(), [w.shape[0] as usize, w.shape[1] as usize]),
                    device,
                ));
                linear.bias = Some(Param::from_tensor(Tensor::<1>::from_data(
                    TensorData::new(b.data.clone(), [b.shape[0] as usize]),
                    device,
                )));
                linear
            })
            .collect();
        Ok(Self {
            layers,
            activation: Relu::new(),
        })
    }

    /// Reads the parameters back into a flat set.
    pub fn to_params(&self) -> ParamSet {
        let mut tensors = Vec::with_capacity(self.layers.len() * 2);
        for (i, layer) in self.layers.iter().enumerate() {
            tensors.push(flat(
                format!("layers.{i}.weight"),
                layer.weight.val().into_data(),
            ));
            if let Some(bias) = &layer.bias {
                tensors.push(flat(format!("layers.{i}.bias"), bias.val().into_data()));
            }
        }
        ParamSet { tensors }
    }

    /// Logits (classification) or predictions (regression), `[batch, outputs]`.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut x = input;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.activation.forward(x);
            }
        }
        x
    }

    /// Mean loss of a batch: cross-entropy for classes, MSE for values.
    pub fn loss(&self, input: Tensor<2>, targets: &Targets, device: &Device) -> Tensor<1> {
        let out = self.forward(input);
        match targets {
            Targets::Classes(classes) => {
                let labels = Tensor::<1, Int>::from_data(
                    TensorData::new(
                        classes.iter().map(|c| *c as i64).collect::<Vec<_>>(),
                        [classes.len()],
                    ),
                    device,
                );
                CrossEntropyLossConfig::new()
                    .init(device)
                    .forward(out, labels)
            }
            Targets::Values(values) => {
                let target = Tensor::<2>::from_data(
                    TensorData::new(values.clone(), [values.len(), 1]),
                    device,
                );
                (out - target).powf_scalar(2.0).mean()
            }
        }
    }
}

fn flat(name: String, data: TensorData) -> FlatTensor {
    let shape = data.shape().iter().map(|d| *d as u32).collect();
    FlatTensor {
        name,
        shape,
        data: data.try_into_vec::<f32>().unwrap_or_default(),
    }
}

/// Training targets of a batch or a dataset.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Class indices.
    Classes(Vec<u32>),
    /// Regression values.
    Values(Vec<f32>),
}

impl Targets {
    /// Number of targets.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Values(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The targets at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Targets {
        match self {
            Targets::Classes(c) => Targets::Classes(indices.iter().map(|i| c[*i]).collect()),
            Targets::Values(v) => Targets::Values(indices.iter().map(|i| v[*i]).collect()),
        }
    }
}

/// How well a model does on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Share correct (classification).
    pub accuracy: Option<f64>,
    /// Root mean squared error (regression).
    pub rmse: Option<f64>,
    /// Samples evaluated.
    pub samples: u64,
}

/// Evaluates `params` on `data` in batches.
pub fn evaluate(
    spec: &ModelSpec,
    params: &ParamSet,
    data: &crate::dataset::Dataset,
    device: &Device,
) -> Result<Evaluation, crate::params::ParamError> {
    let model = Mlp::from_params(spec, params, device)?;
    let batch = 512;
    let (mut loss_sum, mut correct, mut sq_sum) = (0.0f64, 0u64, 0.0f64);
    let n = data.len();
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let indices: Vec<usize> = (start..end).collect();
        let (x, y) = data.batch(&indices, device);
        let out = model.forward(x.clone());
        let count = (end - start) as f64;
        loss_sum += model.loss(x, &y, device).into_scalar::<f32>() as f64 * count;
        match &y {
            Targets::Classes(classes) => {
                let predicted = out.argmax(1).into_data().convert::<i64>();
                let predicted = predicted.as_slice::<i64>().unwrap_or(&[]);
                correct += predicted
                    .iter()
                    .zip(classes)
                    .filter(|(p, c)| **p == **c as i64)
                    .count() as u64;
            }
            Targets::Values(values) => {
                let predicted = out.into_data().convert::<f32>();
                let predicted = predicted.as_slice::<f32>().unwrap_or(&[]);
                sq_sum += predicted
                    .iter()
                    .zip(values)
                    .map(|(p, v)| ((p - v) as f64).powi(2))
                    .sum::<f64>();
            }
        }
        start = end;
    }
    let samples = n as u64;
    let denom = samples.max(1) as f64;
    Ok(Evaluation {
        loss: loss_sum / denom,
        accuracy: matches!(spec.task, TaskKind::Classification).then(|| correct as f64 / denom),
        rmse: matches!(spec.task, TaskKind::Regression).then(|| (sq_sum / denom).sqrt()),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn params_round_trip_through_burn() {
        let spec = spec();
        let params = spec.init_params();
        assert_eq!(params.numel(), 3 * 4 + 4 + 4 * 2 + 2);
        let device = Device::flex();
        let model = Mlp::from_params(&spec, &params, &device).unwrap();
        assert_eq!(model.to_params(), params);
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

    #[test]
    fn wrong_layout_is_refused() {
        let spec = spec();
        let mut params = spec.init_params();
        params.tensors.pop();
        assert!(Mlp::from_params(&spec, &params, &Device::flex()).is_err());
    }
}
