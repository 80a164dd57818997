//! IEEE half precision: halves the bytes at ~3 significant digits.

use super::{Codec, CodecError, decode_fixed};
use crate::params::ParamSet;
use half::f16;

/// Dense f16, 2 bytes per value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fp16;

impl Codec for Fp16 {
    fn name(&self) -> &'static str {
        "fp16"
    }

    fn encode(&self, update: &ParamSet) -> Vec<u8> {
        let mut out = Vec::with_capacity(update.numel() * 2);
        for v in update.values() {
            out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        out
    }

    fn decode_into(&self, bytes: &[u8], out: &mut ParamSet) -> Result<(), CodecError> {
        decode_fixed(self.name(), bytes, out, 2, |raw| {
            f16::from_le_bytes([raw[0], raw[1]]).to_f32()
        })
    }
}
