//! The cost model: what a round should cost before it runs, so the ledger
//! can put prediction beside measurement.

use crate::model::ModelSpec;
use serde::{Deserialize, Serialize};

/// FLOPs of training `samples` for `epochs` epochs: forward is 2 FLOPs per
/// multiply-accumulate, backward twice the forward.
pub fn training_flops(spec: &ModelSpec, samples: u64, epochs: u32) -> u64 {
    6 * spec.forward_macs() * samples * epochs as u64
}

/// Bytes per value of a dense codec, if it is one.
pub fn bytes_per_value(codec: &str) -> Option<f64> {
    match codec {
        "fp32" => Some(4.0),
        "fp16" | "bf16" => Some(2.0),
        _ => None,
    }
}

/// A round's predicted cost for one client.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Update payload bytes.
    pub bytes_up: u64,
    /// Training FLOPs.
    pub flops: u64,
}

/// Predicts one client's round cost.
pub fn predict(spec: &ModelSpec, codec: &str, samples: u64, epochs: u32) -> Prediction {
    let numel = spec.layout().numel() as f64;
    let per_value = bytes_per_value(codec).unwrap_or(4.0);
    Prediction {
        bytes_up: (numel * per_value) as u64,
        flops: training_flops(spec, samples, epochs),
    }
}
