//! How well a model does on a dataset: loss and accuracy or RMSE, from one
//! forward pass per batch.

use crate::dataset::{Dataset, Targets};
use crate::model::{Mlp, loss_of, to_tensors};
use crate::params::{ParamError, ParamSet};
use crate::spec::{ModelSpec, TaskKind};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Rows per evaluation batch: large enough to amortise per-call overhead,
/// small enough that the activations stay a few MiB.
const EVAL_BATCH: usize = 512;

/// How well a model does on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Share correct (classification).
    pub accuracy: Option<f64>,
    /// Root mean squared error (regression), in the target's own units.
    pub rmse: Option<f64>,
    /// Mean absolute error (regression), in the target's own units.
    #[serde(default)]
    pub mae: Option<f64>,
    /// Samples evaluated.
    pub samples: u64,
}

/// Evaluates `params` on `data` in batches.
pub fn evaluate(
    spec: &ModelSpec,
    params: &ParamSet,
    data: &Dataset,
    device: &Device,
) -> Result<Evaluation, ParamError> {
    let model = Mlp::from_params(spec, params, device)?;
    let head = data.head();
    let Some(task) = spec.heads.get(head) else {
        return Err(ParamError::Shape {
            expected: format!("a model with head {head}"),
            got: format!("{} head(s)", spec.heads.len()),
        });
    };
    let (mut loss_sum, mut correct, mut sq_sum, mut abs_sum) = (0.0f64, 0u64, 0.0f64, 0.0f64);
    let n = data.len();
    let mut start = 0;
    while start < n {
        let end = (start + EVAL_BATCH).min(n);
        let indices: Vec<usize> = (start..end).collect();
        let (x, y) = to_tensors(data.batch(&indices), device);
        let out = model.forward(x, head);
        let count = (end - start) as f64;
        loss_sum += loss_of(out.clone(), &y, device).into_scalar::<f32>() as f64 * count;
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
                // targets are standardised: errors scale back by the target's std
                let scale = task.target.std as f64;
                for (p, v) in predicted.iter().zip(values) {
                    let error = (p - v) as f64 * scale;
                    sq_sum += error * error;
                    abs_sum += error.abs();
                }
            }
        }
        start = end;
    }
    let samples = n as u64;
    let denom = samples.max(1) as f64;
    Ok(Evaluation {
        loss: loss_sum / denom,
        accuracy: matches!(task.task, TaskKind::Classification).then(|| correct as f64 / denom),
        rmse: matches!(task.task, TaskKind::Regression).then(|| (sq_sum / denom).sqrt()),
        mae: matches!(task.task, TaskKind::Regression).then(|| abs_sum / denom),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::spec;

    #[test]
    fn loss_and_accuracy_agree_with_the_model() {
        let spec = spec();
        let params = spec.init_params();
        let features = vec![0.5, -1.0, 2.0, 1.5, 0.0, -0.5, -2.0, 1.0, 0.25];
        let targets = Targets::Classes(vec![1, 0, 1]);
        let data = Dataset::from_arrays(features, 3, targets).unwrap();
        let device = Device::flex();
        let eval = evaluate(&spec, &params, &data, &device).unwrap();

        let model = Mlp::from_params(&spec, &params, &device).unwrap();
        let (x, y) = to_tensors(data.batch(&[0, 1, 2]), &device);
        let loss = model.loss(x.clone(), 0, &y, &device).into_scalar::<f32>() as f64;
        let predicted = model.forward(x, 0).argmax(1).into_data().convert::<i64>();
        let Targets::Classes(classes) = &y else {
            unreachable!("built as classes")
        };
        let correct = predicted
            .as_slice::<i64>()
            .unwrap()
            .iter()
            .zip(classes)
            .filter(|(p, c)| **p == **c as i64)
            .count();
        assert_eq!(eval.samples, 3);
        assert!((eval.loss - loss).abs() < 1e-6, "{} vs {loss}", eval.loss);
        assert_eq!(eval.accuracy, Some(correct as f64 / 3.0));
        assert_eq!(eval.rmse, None);
    }
}
