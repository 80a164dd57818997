//! Update codecs: how a [`ParamSet`] of deltas becomes bytes and back.
//!
//! The server chooses a codec per round and names it in the announcement;
//! agents advertise the names they support. Encoded bytes carry only values:
//! both sides already know the layout from the model spec, and decoding
//! checks the byte count against it before touching anything.

mod fp16;
mod fp32;

use crate::params::{Layout, ParamSet};
use thiserror::Error;

pub use fp16::Fp16;
pub use fp32::Fp32;

/// Codec names this build can encode and decode.
pub const SUPPORTED: &[&str] = &["fp32", "fp16"];

/// Why encoded bytes could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// Unknown codec name.
    #[error("unknown codec {0:?}; supported: {SUPPORTED:?}")]
    Unknown(String),
    /// Byte count does not fit the layout.
    #[error("wrong shape: codec {codec} needs {expected} bytes for this model, got {got}")]
    Length {
        /// codec name
        codec: &'static str,
        /// bytes the layout implies
        expected: usize,
        /// bytes received
        got: usize,
    },
}

impl CodecError {
    /// A short, stable label for counting rejections.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::Unknown(_) => "unknown_codec",
            CodecError::Length { .. } => "wrong_shape",
        }
    }
}

/// Turns an update into bytes and back.
pub trait Codec: Send + Sync + std::fmt::Debug {
    /// The name used in announcements and the ledger.
    fn name(&self) -> &'static str;
    /// Encodes `update`.
    fn encode(&self, update: &ParamSet) -> Vec<u8>;
    /// Decodes `bytes` into `out`, whose layout says what to expect. `out`
    /// is a caller-owned scratch buffer so the server reuses one per model
    /// instead of allocating one per client.
    fn decode_into(&self, bytes: &[u8], out: &mut ParamSet) -> Result<(), CodecError>;

    /// Decodes into a fresh zero-filled set of `layout`.
    fn decode(&self, bytes: &[u8], layout: &Layout) -> Result<ParamSet, CodecError> {
        let mut out = ParamSet::zeros(layout);
        self.decode_into(bytes, &mut out)?;
        Ok(out)
    }
}

/// Looks a codec up by name.
pub fn by_name(name: &str) -> Result<Box<dyn Codec>, CodecError> {
    match name.trim() {
        "fp32" => Ok(Box::new(Fp32)),
        "fp16" => Ok(Box::new(Fp16)),
        other => Err(CodecError::Unknown(other.to_string())),
    }
}

/// Decodes fixed-width little-endian values, `width` bytes each.
fn decode_fixed(
    codec: &'static str,
    bytes: &[u8],
    out: &mut ParamSet,
    width: usize,
    read: impl Fn(&[u8]) -> f32,
) -> Result<(), CodecError> {
    let expected = out.numel() * width;
    if bytes.len() != expected {
        return Err(CodecError::Length {
            codec,
            expected,
            got: bytes.len(),
        });
    }
    for (slot, raw) in out.values_mut().zip(bytes.chunks_exact(width)) {
        *slot = read(raw);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Tensor;
    use proptest::prelude::*;

    fn set(values: Vec<f32>) -> ParamSet {
        ParamSet {
            tensors: vec![Tensor {
                name: "w".into(),
                shape: vec![values.len() as u32],
                data: values,
            }],
        }
    }

    proptest! {
        #[test]
        fn fp32_round_trips_exactly(values in proptest::collection::vec(-1e6f32..1e6, 0..300)) {
            let update = set(values);
            let codec = by_name("fp32").unwrap();
            let bytes = codec.encode(&update);
            prop_assert_eq!(codec.decode(&bytes, &update.layout()).unwrap(), update);
        }

        #[test]
        fn fp16_error_is_bounded(values in proptest::collection::vec(-1000f32..1000.0, 0..300)) {
            let update = set(values);
            let codec = by_name("fp16").unwrap();
            let bytes = codec.encode(&update);
            prop_assert_eq!(bytes.len(), update.numel() * 2);
            let back = codec.decode(&bytes, &update.layout()).unwrap();
            for (a, b) in update.values().zip(back.values()) {
                // half precision: 11 significant bits, plus subnormal floor
                prop_assert!((a - b).abs() <= a.abs() / 1024.0 + 1e-7, "{a} vs {b}");
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), n in 0usize..60) {
            let layout = set(vec![0.0; n]).layout();
            for name in SUPPORTED {
                let _ = by_name(name).unwrap().decode(&bytes, &layout);
            }
        }
    }

    #[test]
    fn unknown_codec_lists_supported() {
        let err = by_name("zip9").unwrap_err();
        assert!(err.to_string().contains("fp16"));
    }
}
