//! Value quantizers: how the kept values of a tensor become bytes.
//!
//! | stage | bits/value | how |
//! |---|---|---|
//! | `fp32` | 32 | exact |
//! | `fp16`, `bf16` | 16 | IEEE half / bfloat16, round to nearest |
//! | `q8`, `q4`, `q2` | 8, 4, 2 (+ a f32 scale per block of 128) | scale = max abs of the block; unbiased stochastic rounding to `2^(b-1)-1` levels each side |
//! | `sign` | 1 (+ one f32 scale) | sign, magnitude = mean abs (EF-signSGD) |
//! | `ternary` | 2 (+ one f32 scale) | {-mu, 0, +mu}: values above 0.7 mean abs keep their sign, mu = their mean abs (TWN / STC) |

use super::CodecError;
use half::{bf16, f16};
use rand::{Rng, rngs::StdRng};

/// Values per scale block of the `qN` quantizers.
pub const BLOCK: usize = 128;

/// A value quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// Exact f32.
    Fp32,
    /// IEEE half precision.
    Fp16,
    /// bfloat16.
    Bf16,
    /// Block-scaled integers of this many bits (8, 4 or 2), stochastic rounding.
    Int(u8),
    /// One bit per value plus a scale.
    Sign,
    /// {-mu, 0, +mu}, two bits per value plus a scale.
    Ternary,
}

impl Quant {
    /// Stage name.
    pub fn name(self) -> &'static str {
        match self {
            Quant::Fp32 => "fp32",
            Quant::Fp16 => "fp16",
            Quant::Bf16 => "bf16",
            Quant::Int(8) => "q8",
            Quant::Int(4) => "q4",
            Quant::Int(_) => "q2",
            Quant::Sign => "sign",
            Quant::Ternary => "ternary",
        }
    }

    /// Parses a stage name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "fp32" => Quant::Fp32,
            "fp16" => Quant::Fp16,
            "bf16" => Quant::Bf16,
            "q8" => Quant::Int(8),
            "q4" => Quant::Int(4),
            "q2" => Quant::Int(2),
            "sign" => Quant::Sign,
            "ternary" => Quant::Ternary,
            _ => return None,
        })
    }

    /// Exact encoded size of `n` values.
    pub fn encoded_len(self, n: usize) -> usize {
        match self {
            Quant::Fp32 => n * 4,
            Quant::Fp16 | Quant::Bf16 => n * 2,
            Quant::Int(bits) => n.div_ceil(BLOCK) * 4 + (n * bits as usize).div_ceil(8),
            Quant::Sign => 4 + n.div_ceil(8),
            Quant::Ternary => 4 + (n * 2).div_ceil(8),
        }
    }

    /// Appends the encoding of `values` to `out`.
    pub fn encode(self, values: &[f32], rng: &mut StdRng, out: &mut Vec<u8>) {
        match self {
            Quant::Fp32 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Quant::Fp16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            Quant::Bf16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            Quant::Int(bits) => {
                let levels = ((1u32 << (bits - 1)) - 1) as f32;
                for block in values.chunks(BLOCK) {
                    let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    out.extend_from_slice(&scale.to_le_bytes());
                    let mut packer = BitPacker::new(out, bits);
                    for v in block {
                        let x = if scale > 0.0 { v / scale * levels } else { 0.0 };
                        // unbiased: round up with probability equal to the fraction
                        let floor = x.floor();
                        let q = if rng.random::<f32>() < x - floor {
                            floor + 1.0
                        } else {
                            floor
                        };
                        packer.push((q.clamp(-levels, levels) + levels) as u32);
                    }
                    packer.finish();
                }
            }
            Quant::Sign => {
                let scale = mean_abs(values);
                out.extend_from_slice(&scale.to_le_bytes());
                let mut packer = BitPacker::new(out, 1);
                values
                    .iter()
                    .for_each(|v| packer.push(u32::from(*v >= 0.0)));
                packer.finish();
            }
            Quant::Ternary => {
                let threshold = 0.7 * mean_abs(values);
                let kept: Vec<f32> = values
                    .iter()
                    .filter(|v| v.abs() > threshold)
                    .map(|v| v.abs())
                    .collect();
                let mu = if kept.is_empty() {
                    0.0
                } else {
                    kept.iter().sum::<f32>() / kept.len() as f32
                };
                out.extend_from_slice(&mu.to_le_bytes());
                let mut packer = BitPacker::new(out, 2);
                for v in values {
                    packer.push(if v.abs() <= threshold {
                        1
                    } else if *v > 0.0 {
                        2
                    } else {
                        0
                    });
                }
                packer.finish();
            }
        }
    }

    /// Decodes exactly `out.len()` values from the front of `bytes`;
    /// returns the bytes consumed.
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) -> Result<usize, CodecError> {
        let need = self.encoded_len(out.len());
        if bytes.len() < need {
            return Err(CodecError::Truncated {
                needed: need,
                got: bytes.len(),
            });
        }
        let bytes = &bytes[..need];
        match self {
            Quant::Fp32 => fill(
                out,
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Quant::Fp16 => fill(
                out,
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Quant::Bf16 => fill(
                out,
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Quant::Int(bits) => {
                let levels = ((1u32 << (bits - 1)) - 1) as f32;
                let mut at = 0;
                for block in out.chunks_mut(BLOCK) {
                    let scale = read_scale(&bytes[at..])?;
                    at += 4;
                    let len = (block.len() * bits as usize).div_ceil(8);
                    let mut codes = BitReader::new(&bytes[at..at + len], bits);
                    for slot in block.iter_mut() {
                        let q = codes.next().min(2 * levels as u32) as f32 - levels;
                        *slot = q / levels * scale;
                    }
                    at += len;
                }
            }
            Quant::Sign => {
                let scale = read_scale(bytes)?;
                let mut codes = BitReader::new(&bytes[4..], 1);
                out.iter_mut()
                    .for_each(|v| *v = if codes.next() == 1 { scale } else { -scale });
            }
            Quant::Ternary => {
                let mu = read_scale(bytes)?;
                let mut codes = BitReader::new(&bytes[4..], 2);
                for v in out.iter_mut() {
                    *v = match codes.next() {
                        0 => -mu,
                        2 => mu,
                        _ => 0.0,
                    };
                }
            }
        }
        Ok(need)
    }
}

fn fill(out: &mut [f32], values: impl Iterator<Item = f32>) {
    out.iter_mut().zip(values).for_each(|(o, v)| *o = v);
}

fn mean_abs(values: &[f32]) -> f32 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().map(|v| v.abs()).sum::<f32>() / values.len() as f32
    }
}

fn read_scale(bytes: &[u8]) -> Result<f32, CodecError> {
    let scale = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if scale.is_finite() && scale >= 0.0 {
        Ok(scale)
    } else {
        Err(CodecError::Malformed(format!(
            "scale {scale} is not a finite non-negative number"
        )))
    }
}

/// Packs fixed-width codes LSB-first.
struct BitPacker<'a> {
    out: &'a mut Vec<u8>,
    bits: u8,
    acc: u32,
    filled: u8,
}

impl<'a> BitPacker<'a> {
    fn new(out: &'a mut Vec<u8>, bits: u8) -> Self {
        Self {
            out,
            bits,
            acc: 0,
            filled: 0,
        }
    }

    fn push(&mut self, code: u32) {
        self.acc |= (code & ((1 << self.bits) - 1)) << self.filled;
        self.filled += self.bits;
        while self.filled >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.filled -= 8;
        }
    }

    fn finish(self) {
        if self.filled > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

/// Reads fixed-width codes LSB-first; past the end it yields zeros (callers
/// size the slice exactly).
struct BitReader<'a> {
    bytes: &'a [u8],
    bits: u8,
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8], bits: u8) -> Self {
        Self {
            bytes,
            bits,
            pos: 0,
        }
    }

    fn next(&mut self) -> u32 {
        let mut code = 0;
        for i in 0..self.bits as usize {
            let bit = self.pos + i;
            let byte = self.bytes.get(bit / 8).copied().unwrap_or(0);
            code |= u32::from((byte >> (bit % 8)) & 1) << i;
        }
        self.pos += self.bits as usize;
        code
    }
}
