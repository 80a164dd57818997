//! Update codecs: composable pipelines that turn a [`ParamSet`] of deltas
//! into few bytes and back.
//!
//! A pipeline is written as stages joined by `+`, in this order:
//! an optional sparsifier (`topk:<fraction>` or `randk:<fraction>`), one
//! quantizer (`fp32`, `fp16`, `bf16`, `q8`, `q4`, `q2`, `sign`, `ternary`;
//! default `fp32`), and an optional entropy coder (`zstd`, `deflate`).
//! Examples: `fp16`, `q8+zstd`, `topk:0.01+q8+zstd`, `topk:0.001+q4`.
//!
//! Encoded bytes carry only values (and kept positions): both sides know the
//! layout from the model spec, and decoding checks every count against it
//! before allocating. Lossy stages are meant to be used with error feedback:
//! the sender keeps `update - decode(encode(update))` and adds it next time.

mod entropy;
mod quant;
mod sparse;

use crate::params::{Layout, ParamSet};
use rand::{SeedableRng, rngs::StdRng};
use thiserror::Error;

pub use entropy::Entropy;
pub use quant::Quant;
pub use sparse::Sparsify;

/// Every stage name this build understands (what agents advertise).
pub const STAGES: &[&str] = &[
    "fp32", "fp16", "bf16", "q8", "q4", "q2", "sign", "ternary", "topk", "randk", "zstd", "deflate",
];

const SYNTAX: &str = "[topk:<f>|randk:<f>+](fp32|fp16|bf16|q8|q4|q2|sign|ternary)[+zstd|+deflate], \
with 0 < f <= 1, e.g. topk:0.01+q8+zstd";

/// Why a codec spec or encoded bytes were refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// A spec that does not parse.
    #[error("invalid codec {spec:?}: {why}; expected {SYNTAX}")]
    Spec {
        /// the spec
        spec: String,
        /// what is wrong
        why: String,
    },
    /// Byte count does not fit the layout.
    #[error("wrong shape: the model needs {expected} more bytes of encoded values, got {got}")]
    Length {
        /// bytes the layout implies
        expected: usize,
        /// bytes received
        got: usize,
    },
    /// Fewer bytes than a stage needs.
    #[error("wrong shape: encoded values truncated ({got} bytes where {needed} are needed)")]
    Truncated {
        /// bytes needed
        needed: usize,
        /// bytes present
        got: usize,
    },
    /// Decompressed size over the limit.
    #[error("oversized: decompressed update would be {declared} bytes, the limit is {limit}")]
    Oversized {
        /// declared size
        declared: u64,
        /// limit
        limit: usize,
    },
    /// Structurally invalid bytes.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}

impl CodecError {
    /// A short, stable label for counting rejections.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::Spec { .. } => "unknown_codec",
            CodecError::Length { .. } | CodecError::Truncated { .. } => "wrong_shape",
            CodecError::Oversized { .. } => "oversized",
            CodecError::Malformed(_) => "malformed",
        }
    }
}

/// A parsed codec pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pipeline {
    /// Which positions travel.
    pub sparsify: Sparsify,
    /// How values are coded.
    pub quant: Quant,
    /// Final general-purpose compression.
    pub entropy: Entropy,
}

// `parse` refuses fractions outside (0, 1], NaN included, so equality is
// reflexive and a pipeline can sit in types that derive `Eq`.
impl Eq for Pipeline {}

/// Dense fp32: what a model travels as when nothing else is said.
impl Default for Pipeline {
    fn default() -> Self {
        Pipeline::FP32
    }
}

impl std::str::FromStr for Pipeline {
    type Err = CodecError;

    fn from_str(spec: &str) -> Result<Self, CodecError> {
        Pipeline::parse(spec)
    }
}

impl std::fmt::Display for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

// Configs and messages name pipelines by their spec (the same bytes as the
// spec string on the wire), parsed once where they are read.
impl serde::Serialize for Pipeline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Pipeline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = String::deserialize(d)?;
        Pipeline::parse(&spec).map_err(serde::de::Error::custom)
    }
}

/// Looks a codec up by its spec (see the module docs for the syntax).
pub fn by_name(spec: &str) -> Result<Pipeline, CodecError> {
    Pipeline::parse(spec)
}

impl Pipeline {
    /// Lossless dense f32.
    pub const FP32: Pipeline = Pipeline {
        sparsify: Sparsify::Dense,
        quant: Quant::Fp32,
        entropy: Entropy::None,
    };

    /// Parses `spec`.
    pub fn parse(spec: &str) -> Result<Self, CodecError> {
        let err = |why: String| CodecError::Spec {
            spec: spec.to_string(),
            why,
        };
        let mut sparsify = Sparsify::Dense;
        let mut quant = None;
        let mut entropy = Entropy::None;
        for (i, stage) in spec.trim().split('+').map(str::trim).enumerate() {
            if let Some((kind, arg)) = stage.split_once(':') {
                if i != 0 {
                    return Err(err(format!("{stage} must come first")));
                }
                let f: f32 = arg
                    .parse()
                    .map_err(|_| err(format!("{arg:?} is not a number")))?;
                if !(f > 0.0 && f <= 1.0) {
                    return Err(err(format!("fraction {f} is not in (0, 1]")));
                }
                sparsify = match kind {
                    "topk" => Sparsify::TopK(f),
                    "randk" => Sparsify::RandK(f),
                    _ => return Err(err(format!("unknown sparsifier {kind:?}"))),
                };
            } else if let Some(q) = Quant::parse(stage) {
                if quant.is_some() || entropy != Entropy::None {
                    return Err(err(format!(
                        "{stage}: one quantizer, before the entropy stage"
                    )));
                }
                quant = Some(q);
            } else if let Some(e) = Entropy::parse(stage) {
                if entropy != Entropy::None {
                    return Err(err("only one entropy stage".into()));
                }
                entropy = e;
            } else {
                return Err(err(format!("unknown stage {stage:?}")));
            }
        }
        Ok(Self {
            sparsify,
            quant: quant.unwrap_or(Quant::Fp32),
            entropy,
        })
    }

    /// Canonical spec, e.g. `topk:0.01+q8+zstd`.
    pub fn name(&self) -> String {
        let mut parts = Vec::new();
        match self.sparsify {
            Sparsify::Dense => {}
            Sparsify::TopK(f) => parts.push(format!("topk:{f}")),
            Sparsify::RandK(f) => parts.push(format!("randk:{f}")),
        }
        parts.push(self.quant.name().to_string());
        parts.extend(self.entropy.name().map(str::to_string));
        parts.join("+")
    }

    /// Stage names a receiver must support.
    pub fn stages(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        match self.sparsify {
            Sparsify::Dense => {}
            Sparsify::TopK(_) => out.push("topk"),
            Sparsify::RandK(_) => out.push("randk"),
        }
        out.push(self.quant.name());
        out.extend(self.entropy.name());
        out
    }

    /// True when decoding gives back exactly what was encoded.
    pub fn is_lossless(&self) -> bool {
        self.sparsify == Sparsify::Dense && self.quant == Quant::Fp32
    }

    /// Upper bound of the pre-entropy size for `layout`: the decompression limit.
    pub fn max_raw_len(&self, layout: &Layout) -> usize {
        layout
            .tensors
            .iter()
            .map(|(_, shape)| {
                let n: usize = shape.iter().map(|d| *d as usize).product();
                let k = self.sparsify.keep(n);
                let indices = if self.sparsify == Sparsify::Dense {
                    0
                } else {
                    11 + n.div_ceil(8).max(5 * k)
                };
                indices + self.quant.encoded_len(k)
            })
            .sum::<usize>()
            + 16
    }

    /// Encodes `update`; `seed` drives stochastic rounding and `randk`.
    pub fn encode(&self, update: &ParamSet, seed: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut raw = Vec::new();
        for tensor in &update.tensors {
            let values = &tensor.data;
            if self.sparsify == Sparsify::Dense {
                self.quant.encode(values, &mut rng, &mut raw);
                continue;
            }
            let indices = self.sparsify.select(values, &mut rng);
            sparse::put_varint(&mut raw, indices.len() as u64);
            sparse::encode_indices(&indices, values.len(), &mut raw);
            let kept: Vec<f32> = indices.iter().map(|i| values[*i as usize]).collect();
            self.quant.encode(&kept, &mut rng, &mut raw);
        }
        self.entropy.compress(raw)
    }

    /// Decodes into `out`, whose layout says what to expect; positions not
    /// sent are zero. `out` is a caller-owned scratch buffer.
    pub fn decode_into(&self, bytes: &[u8], out: &mut ParamSet) -> Result<(), CodecError> {
        let raw = self
            .entropy
            .decompress(bytes, self.max_raw_len(&out.layout()))?;
        let mut at = 0;
        for tensor in &mut out.tensors {
            let n = tensor.data.len();
            if self.sparsify == Sparsify::Dense {
                at += self.quant.decode(&raw[at..], &mut tensor.data)?;
                continue;
            }
            let (k, used) = sparse::get_varint(&raw[at..])?;
            at += used;
            let k = usize::try_from(k).unwrap_or(usize::MAX);
            if k > n {
                return Err(CodecError::Malformed(format!(
                    "{k} kept values in a tensor of {n}"
                )));
            }
            let (indices, used) = sparse::decode_indices(&raw[at..], k, n)?;
            at += used;
            let mut kept = vec![0f32; k];
            at += self.quant.decode(&raw[at..], &mut kept)?;
            tensor.data.iter_mut().for_each(|v| *v = 0.0);
            for (i, v) in indices.iter().zip(kept) {
                tensor.data[*i as usize] = v;
            }
        }
        if at != raw.len() {
            return Err(CodecError::Length {
                expected: at,
                got: raw.len(),
            });
        }
        Ok(())
    }

    /// Decodes into a fresh set of `layout`.
    pub fn decode(&self, bytes: &[u8], layout: &Layout) -> Result<ParamSet, CodecError> {
        let mut out = ParamSet::zeros(layout);
        self.decode_into(bytes, &mut out)?;
        Ok(out)
    }

    /// Encodes and returns the bytes with what the receiver will decode from
    /// them: the basis of error feedback.
    pub fn round_trip(&self, update: &ParamSet, seed: u64) -> (Vec<u8>, ParamSet) {
        let bytes = self.encode(update, seed);
        let decoded = if self.is_lossless() {
            update.clone()
        } else {
            // Decoding our own fresh encoding cannot fail; fall back to
            // "nothing arrived" rather than panic if it ever did.
            self.decode(&bytes, &update.layout())
                .unwrap_or_else(|_| ParamSet::zeros(&update.layout()))
        };
        (bytes, decoded)
    }
}

#[cfg(test)]
mod tests;
