//! The model: a burn MLP whose parameters convert to and from [`ParamSet`]
//! here and nowhere else, and the one place plain batches become tensors.

use crate::dataset::{Batch, Targets};
use crate::params::{ParamError, ParamSet, Tensor as FlatTensor};
use crate::spec::ModelSpec;
use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

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
    ) -> Result<Self, ParamError> {
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

    /// The same model with every layer but the last frozen: training moves
    /// only the output head (a vehicle's personalised head).
    pub fn freeze_trunk(mut self) -> Self {
        let last = self.layers.len().saturating_sub(1);
        for layer in &mut self.layers[..last] {
            *layer = layer.clone().no_grad();
        }
        self
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
        loss_of(self.forward(input), targets, device)
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
    fn wrong_layout_is_refused() {
        let spec = spec();
        let mut params = spec.init_params();
        params.tensors.pop();
        assert!(Mlp::from_params(&spec, &params, &Device::flex()).is_err());
    }
}
