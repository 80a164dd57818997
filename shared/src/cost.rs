//! The cost model: what a round should cost before it runs, so the ledger
//! can put prediction beside measurement.

use crate::codec::{Pipeline, Sparsify};
use crate::spec::ModelSpec;
use serde::{Deserialize, Serialize};

/// FLOPs of training `samples` for `epochs` epochs through the trunk and
/// head `head`: forward is 2 FLOPs per multiply-accumulate, backward twice
/// the forward.
pub fn training_flops(spec: &ModelSpec, head: usize, samples: u64, epochs: u32) -> u64 {
    6 * spec.forward_macs(head) * samples * epochs as u64
}

/// Predicted encoded bytes of one update under `codec` (before the entropy
/// stage, so an upper estimate when one is used): kept values times their
/// width, plus index coding estimated at the varint size of the mean gap.
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

/// A round's predicted cost for one client.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Update payload bytes.
    pub bytes_up: u64,
    /// Training FLOPs.
    pub flops: u64,
}

/// Predicts the round cost of one client that trains head `head`.
pub fn predict(
    spec: &ModelSpec,
    head: usize,
    codec: &str,
    samples: u64,
    epochs: u32,
) -> Prediction {
    let pipeline = crate::codec::by_name(codec).unwrap_or(crate::codec::Pipeline::FP32);
    Prediction {
        bytes_up: update_bytes(spec, &pipeline),
        flops: training_flops(spec, head, samples, epochs),
    }
}
