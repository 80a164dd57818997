//! The model: a burn MLP trunk with one output layer per head, whose
//! parameters convert to and from [`ParamSet`] here and nowhere else, and
//! the one place plain batches become tensors.

use crate::dataset::{Batch, Targets};
use crate::params::{ParamError, ParamSet, Tensor as FlatTensor};
use crate::spec::ModelSpec;
use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

/// A multi-layer perceptron: a trunk of linear layers each followed by a
/// ReLU, shared by every head, then one linear output layer per head.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    heads: Vec<Linear>,
    activation: Relu,
}

impl Mlp {
    /// Builds the module on `device` from a parameter set of `spec.layout()`.
    pub fn from_params(
        spec: &ModelSpec,
        params: &ParamSet,
        device: &Device,
    ) -> Result<Self, ParamError> {
        params.check_layout(&spec.layout())?;
        let mut layers: Vec<Linear> = params
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
        let heads = layers.split_off(spec.trunk_layers());
        Ok(Self {
            layers,
            heads,
            activation: Relu::new(),
        })
    }

    /// The same model with the trunk frozen: training moves only the
    /// output head (a vehicle's personalised head).
    pub fn freeze_trunk(mut self) -> Self {
        for layer in &mut self.layers {
            *layer = layer.clone().no_grad();
        }
        self
    }

    /// Reads the parameters back into a flat set.
    pub fn to_params(&self) -> ParamSet {
        let mut tensors = Vec::with_capacity((self.layers.len() + self.heads.len()) * 2);
        for (i, layer) in self.layers.iter().chain(&self.heads).enumerate() {
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

    /// Logits (classification) or predictions (regression) of head
    /// `head`, `[batch, outputs]`.
    ///
    /// # Panics
    /// When the model has no head `head`; callers take it from a dataset
    /// built for this model's spec.
    pub fn forward(&self, input: Tensor<2>, head: usize) -> Tensor<2> {
        let mut x = input;
        for layer in &self.layers {
            x = self.activation.forward(layer.forward(x));
        }
        self.heads[head].forward(x)
    }

    /// Mean loss of a batch through head `head`: cross-entropy for
    /// classes, MSE for values.
    pub fn loss(
        &self,
        input: Tensor<2>,
        head: usize,
        targets: &Targets,
        device: &Device,
    ) -> Tensor<1> {
        loss_of(self.forward(input, head), targets, device)
    }

    /// `Σ ‖w − a‖²` over every weight and bias, `a` the same parameter of
    /// `anchor`, which takes no gradient: FedProx's proximal term before
    /// its factor μ/2.
    pub fn distance_squared(&self, anchor: &Mlp) -> Tensor<1> {
        self.pairwise(anchor, |own, other| (own - other).powf_scalar(2.0).sum())
    }

    /// `Σ ⟨w, g⟩` over every weight and bias, `g` the same parameter of
    /// `other`, which takes no gradient: a linear term whose gradient is
    /// `g`, SCAFFOLD's correction `c − cᵢ` when `other` holds it.
    pub fn dot(&self, other: &Mlp) -> Tensor<1> {
        self.pairwise(other, |own, other| (own * other).sum())
    }

    /// `Σ term(w, o)` over every weight and bias `w` and the same
    /// parameter `o` of `other` (detached).
    fn pairwise(&self, other: &Mlp, term: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<1>) -> Tensor<1> {
        let pairs = self
            .layers
            .iter()
            .chain(&self.heads)
            .zip(other.layers.iter().chain(&other.heads));
        let mut total: Option<Tensor<1>> = None;
        for (own, that) in pairs {
            let mut sum = term(own.weight.val(), that.weight.val().detach());
            if let (Some(b), Some(a)) = (&own.bias, &that.bias) {
                sum = sum + term(b.val().unsqueeze(), a.val().detach().unsqueeze());
            }
            total = Some(match total {
                Some(t) => t + sum,
                None => sum,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros([1], &self.devices()[0]))
    }
}

/// Mean loss of model outputs `out` against `targets`, so a caller that
/// also needs the outputs runs the forward pass once.
pub fn loss_of(out: Tensor<2>, targets: &Targets, device: &Device) -> Tensor<1> {
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
            let target =
                Tensor::<2>::from_data(TensorData::new(values.clone(), [values.len(), 1]), device);
            (out - target).powf_scalar(2.0).mean()
        }
    }
}

/// A batch's features as a `[rows, dims]` tensor on `device`, with its targets.
pub fn to_tensors(batch: Batch, device: &Device) -> (Tensor<2>, Targets) {
    let rows = batch.targets.len();
    let x = Tensor::<2>::from_data(TensorData::new(batch.features, [rows, batch.dims]), device);
    (x, batch.targets)
}

fn flat(name: String, data: TensorData) -> FlatTensor {
    let shape = data.shape().iter().map(|d| *d as u32).collect();
    FlatTensor {
        name,
        shape,
        data: data.try_into_vec::<f32>().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::spec;

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
    fn each_head_reads_the_shared_trunk() {
        let spec = crate::spec::tests::two_heads();
        let params = spec.init_params();
        let device = Device::flex();
        let model = Mlp::from_params(&spec, &params, &device).unwrap();
        assert_eq!(model.to_params(), params);
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0], [1, 3]), &device);
        assert_eq!(model.forward(x.clone(), 0).dims(), [1, 2]);
        assert_eq!(model.forward(x, 1).dims(), [1, 1]);
    }

    #[test]
    fn wrong_layout_is_refused() {
        let spec = spec();
        let mut params = spec.init_params();
        params.tensors.pop();
        assert!(Mlp::from_params(&spec, &params, &Device::flex()).is_err());
    }
}
