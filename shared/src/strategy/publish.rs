//! What the fleet holds after a round: the parent plus the delta as the
//! downlink codec renders it, so the server, every agent and every later
//! rebuild reach bit-identical weights from the same bytes.
//!
//! The live round and the store's replay route both publish through
//! [`publish`]; that shared path is what makes a replayed version hash to
//! the id the fleet was sent.

use crate::codec::{CodecError, Pipeline, Quant, Sparsify};
use crate::params::{ParamError, ParamSet};

pub use crate::messages::Delta;

/// The outcome of publishing one round.
#[derive(Debug, Clone)]
pub struct Published {
    /// The weights the fleet will hold.
    pub params: ParamSet,
    /// The delta from the parent that gives exactly `params`.
    pub delta: Delta,
}

/// Why a round could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Parent, target and residual do not share a layout.
    #[error("cannot publish: {0}")]
    Shape(#[from] ParamError),
    /// The delta does not decode (only possible for a stored one).
    #[error("cannot decode the delta: {0}")]
    Codec(#[from] CodecError),
}

/// The seed the downlink codec's stochastic stages use in `round`.
pub fn seed(round: u64) -> u64 {
    round.wrapping_mul(0x5851_f42d_4c95_7f2d)
}

/// The lossless codec an exact round's delta travels in: dense f32 with
/// the downlink's entropy stage.
pub fn exact_codec(downlink: &Pipeline) -> Pipeline {
    Pipeline {
        sparsify: Sparsify::Dense,
        quant: Quant::Fp32,
        entropy: downlink.entropy,
    }
}

/// Publishes `target` on top of `parent`.
///
/// An exact round (a keyframe round, or a lossless downlink) publishes
/// `parent + (target - parent)` and clears `residual`. Otherwise the delta
/// plus the carried `residual` goes through `downlink`, the fleet gets
/// `parent + decoded`, and what the codec dropped is carried to the next
/// round in `residual` (error feedback).
pub fn publish(
    parent: &ParamSet,
    target: &ParamSet,
    residual: &mut ParamSet,
    downlink: &Pipeline,
    exact: bool,
    round: u64,
) -> Result<Published, PublishError> {
    let mut delta = target.sub(parent)?;
    let (codec, bytes, decoded) = if exact || downlink.is_lossless() {
        let codec = if downlink.is_lossless() {
            *downlink
        } else {
            exact_codec(downlink)
        };
        let bytes = codec.encode(&delta, seed(round));
        *residual = ParamSet::zeros(&parent.layout());
        (codec, bytes, delta)
    } else {
        delta.add_scaled(residual, 1.0)?;
        let (bytes, decoded) = downlink.round_trip(&delta, seed(round));
        *residual = delta.sub(&decoded)?;
        (*downlink, bytes, decoded)
    };
    let mut params = parent.clone();
    params.add_scaled(&decoded, 1.0)?;
    Ok(Published {
        params,
        delta: Delta { codec, bytes },
    })
}

/// Applies a stored delta to its parent, as an agent does.
pub fn apply(parent: &ParamSet, delta: &Delta) -> Result<ParamSet, PublishError> {
    let decoded = delta.codec.decode(&delta.bytes, &parent.layout())?;
    let mut params = parent.clone();
    params.add_scaled(&decoded, 1.0)?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[f32]) -> ParamSet {
        ParamSet::vector(values)
    }

    #[test]
    fn applying_the_published_delta_gives_the_published_weights() {
        let parent = set(&[0.1, -0.2, 0.3, 0.25, 1e-3, 7.0, -3.5, 0.0]);
        let target = set(&[0.15, -0.1, 0.31, 0.2, 2e-3, 7.5, -3.0, 0.01]);
        for (codec, exact) in [
            ("fp32", false),
            ("q8", false),
            ("q4+zstd", true),
            ("topk:0.25+q8", false),
        ] {
            let downlink = Pipeline::parse(codec).unwrap();
            let mut residual = ParamSet::zeros(&parent.layout());
            let p = publish(&parent, &target, &mut residual, &downlink, exact, 3).unwrap();
            let applied = apply(&parent, &p.delta).unwrap();
            assert_eq!(
                applied.canonical_bytes(),
                p.params.canonical_bytes(),
                "{codec}"
            );
            // the residual is what the fleet did not get of the target
            let mut back = p.params.clone();
            back.add_scaled(&residual, 1.0).unwrap();
            for (a, b) in back.tensors[0].data.iter().zip(&target.tensors[0].data) {
                assert!((a - b).abs() < 1e-5, "{codec}: {a} vs {b}");
            }
            if exact || downlink.is_lossless() {
                assert!(residual.values().all(|v| v == 0.0), "{codec}");
            }
        }
    }
}
