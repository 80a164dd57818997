//! Dense little-endian f32: the lossless baseline.

use super::{Codec, CodecError, decode_fixed};
use crate::params::ParamSet;

/// Dense f32, 4 bytes per value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fp32;

impl Codec for Fp32 {
    fn name(&self) -> &'static str {
        "fp32"
    }

    fn encode(&self, update: &ParamSet) -> Vec<u8> {
        update.canonical_bytes()
    }

    fn decode_into(&self, bytes: &[u8], out: &mut ParamSet) -> Result<(), CodecError> {
        decode_fixed(self.name(), bytes, out, 4, |raw| {
            f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])
        })
    }
}
