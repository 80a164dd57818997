//! What a vehicle is willing to build: every announced model spec is
//! checked against these bounds before a single parameter is allocated, so
//! a forged or mistaken announcement cannot make the agent allocate without
//! bound.

use convoy_shared::spec::ModelSpec;
use serde::{Deserialize, Serialize};

/// The `[limits]` section of the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most parameters a model may have (default 20 million: 80 MB of f32).
    pub max_params: u64,
    /// Widest layer accepted (input, hidden or output).
    pub max_layer_width: u64,
    /// Most hidden layers.
    pub max_hidden_layers: usize,
    /// Most classes of a classification head.
    pub max_classes: usize,
    /// Most input features.
    pub max_features: usize,
    /// Most bytes the model's weights, gradients, base and update may take
    /// together, MiB (four f32 copies of every parameter).
    pub max_model_memory_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_params: 20_000_000,
            max_layer_width: 65_536,
            max_hidden_layers: 16,
            max_classes: 10_000,
            max_features: 100_000,
            max_model_memory_mb: 512,
        }
    }
}

impl Limits {
    /// Checks the bounds themselves: each must be at least 1.
    pub fn validate(&self) -> Result<(), String> {
        let bounds = [
            ("max_params", self.max_params),
            ("max_layer_width", self.max_layer_width),
            ("max_hidden_layers", self.max_hidden_layers as u64),
            ("max_classes", self.max_classes as u64),
            ("max_features", self.max_features as u64),
            ("max_model_memory_mb", self.max_model_memory_mb),
        ];
        match bounds.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("limits.{name} must be at least 1")),
            None => Ok(()),
        }
    }

    /// Checks `spec` is consistent and within bounds; the error says which
    /// bound and by how much. Uses no allocation proportional to the model.
    pub fn check(&self, spec: &ModelSpec) -> Result<(), String> {
        // inputs count one-hot categories and presence inputs too
        if spec.inputs() > self.max_features {
            return Err(format!(
                "{} model inputs ({} columns), over limits.max_features {}",
                spec.inputs(),
                spec.features.len(),
                self.max_features
            ));
        }
        let classes = spec
            .heads
            .iter()
            .map(|h| h.classes.len())
            .max()
            .unwrap_or(0);
        if classes > self.max_classes {
            return Err(format!(
                "{classes} classes, over limits.max_classes {}",
                self.max_classes
            ));
        }
        if spec.hidden.len() > self.max_hidden_layers {
            return Err(format!(
                "{} hidden layers, over limits.max_hidden_layers {}",
                spec.hidden.len(),
                self.max_hidden_layers
            ));
        }
        let widths: Vec<u64> = std::iter::once(spec.inputs() as u64)
            .chain(spec.hidden.iter().map(|h| u64::from(*h)))
            .collect();
        let outputs: Vec<u64> = spec.heads.iter().map(|h| h.outputs() as u64).collect();
        if let Some(w) = widths
            .iter()
            .chain(&outputs)
            .find(|w| **w > self.max_layer_width)
        {
            return Err(format!(
                "a layer {w} wide, over limits.max_layer_width {}",
                self.max_layer_width
            ));
        }
        // weights plus biases of each layer, in u128 so no spec overflows it
        let layer = |from: u64, to: u64| u128::from(from) * u128::from(to) + u128::from(to);
        let trunk_out = widths.last().copied().unwrap_or(0);
        let params: u128 = widths.windows(2).map(|p| layer(p[0], p[1])).sum::<u128>()
            + outputs.iter().map(|o| layer(trunk_out, *o)).sum::<u128>();
        if params > u128::from(self.max_params) {
            return Err(format!(
                "{params} parameters, over limits.max_params {}",
                self.max_params
            ));
        }
        let memory = params * 4 * 4;
        if memory > u128::from(self.max_model_memory_mb) << 20 {
            return Err(format!(
                "~{} MiB for the model, over limits.max_model_memory_mb {}",
                memory >> 20,
                self.max_model_memory_mb
            ));
        }
        spec.validate().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hidden: Vec<u32>) -> ModelSpec {
        ModelSpec::classifier(
            ["a".to_string(), "b".to_string()],
            "y",
            ["0".to_string(), "1".to_string()],
            hidden,
            1,
        )
    }

    #[test]
    fn sane_specs_pass_and_absurd_ones_say_which_bound() {
        let limits = Limits::default();
        assert_eq!(limits.check(&spec(vec![128])), Ok(()));
        let err = limits.check(&spec(vec![u32::MAX])).unwrap_err();
        assert!(err.contains("max_layer_width"), "{err}");
        let err = limits.check(&spec(vec![60_000, 60_000])).unwrap_err();
        assert!(err.contains("max_params"), "{err}");
        let err = limits.check(&spec(vec![8; 40])).unwrap_err();
        assert!(err.contains("max_hidden_layers"), "{err}");
        let mut broken = spec(vec![4]);
        broken.features[0] = convoy_shared::spec::Feature::numeric("a", 0.0, 0.0);
        assert!(
            limits
                .check(&broken)
                .unwrap_err()
                .contains("positive, finite scale")
        );
    }
}
