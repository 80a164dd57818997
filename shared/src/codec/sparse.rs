//! Sparsifiers and compact index coding.
//!
//! `topk:F` keeps the `ceil(F * n)` largest-magnitude values of each tensor,
//! `randk:F` as many chosen at random. Kept positions are coded per tensor
//! either as delta varints or as a bitmap, whichever is smaller.

use super::CodecError;
use rand::{rngs::StdRng, seq::index};

/// Which positions of a tensor travel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sparsify {
    /// All of them.
    Dense,
    /// The largest by magnitude.
    TopK(f32),
    /// Uniformly at random.
    RandK(f32),
}

impl Sparsify {
    /// Kept count for a tensor of `n` values.
    pub fn keep(self, n: usize) -> usize {
        match self {
            Sparsify::Dense => n,
            Sparsify::TopK(f) | Sparsify::RandK(f) => {
                ((f as f64 * n as f64).ceil() as usize).clamp(n.min(1), n)
            }
        }
    }

    /// Sorted positions to keep.
    pub fn select(self, values: &[f32], rng: &mut StdRng) -> Vec<u32> {
        let n = values.len();
        let k = self.keep(n);
        let mut picked: Vec<u32> = match self {
            Sparsify::Dense => return (0..n as u32).collect(),
            Sparsify::TopK(_) => {
                let mut order: Vec<u32> = (0..n as u32).collect();
                if k < n {
                    order.select_nth_unstable_by(k, |a, b| {
                        values[*b as usize]
                            .abs()
                            .total_cmp(&values[*a as usize].abs())
                    });
                    order.truncate(k);
                }
                order
            }
            Sparsify::RandK(_) => index::sample(rng, n, k)
                .into_iter()
                .map(|i| i as u32)
                .collect(),
        };
        picked.sort_unstable();
        picked
    }
}

/// Appends `v` as LEB128.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 value; returns it and the bytes used.
pub fn get_varint(bytes: &[u8]) -> Result<(u64, usize), CodecError> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(CodecError::Malformed("varint runs past its end".into()))
}

const DELTAS: u8 = 0;
const BITMAP: u8 = 1;

/// Appends the coding of sorted `indices` of a tensor of `n` values.
pub fn encode_indices(indices: &[u32], n: usize, out: &mut Vec<u8>) {
    let mut deltas = Vec::new();
    let mut prev: Option<u32> = None;
    for &i in indices {
        put_varint(&mut deltas, u64::from(prev.map_or(i, |p| i - p - 1)));
        prev = Some(i);
    }
    let bitmap_len = n.div_ceil(8);
    if deltas.len() <= bitmap_len {
        out.push(DELTAS);
        out.extend_from_slice(&deltas);
    } else {
        out.push(BITMAP);
        let start = out.len();
        out.resize(start + bitmap_len, 0);
        for &i in indices {
            out[start + i as usize / 8] |= 1 << (i % 8);
        }
    }
}

/// Decodes `k` sorted indices of a tensor of `n` values; returns them and
/// the bytes used. Rejects anything out of range or out of order.
pub fn decode_indices(bytes: &[u8], k: usize, n: usize) -> Result<(Vec<u32>, usize), CodecError> {
    let bad = |m: &str| CodecError::Malformed(format!("index coding: {m}"));
    let (&mode, rest) = bytes
        .split_first()
        .ok_or_else(|| bad("missing mode byte"))?;
    let mut indices = Vec::with_capacity(k.min(n));
    match mode {
        DELTAS => {
            let mut at = 0;
            let mut next = 0u64;
            for _ in 0..k {
                let (gap, used) = get_varint(&rest[at..])?;
                at += used;
                let i = next.checked_add(gap).ok_or_else(|| bad("overflow"))?;
                if i >= n as u64 {
                    return Err(bad("index past the tensor"));
                }
                indices.push(i as u32);
                next = i + 1;
            }
            Ok((indices, 1 + at))
        }
        BITMAP => {
            let len = n.div_ceil(8);
            let map = rest.get(..len).ok_or_else(|| bad("bitmap truncated"))?;
            for i in 0..n {
                if map[i / 8] >> (i % 8) & 1 == 1 {
                    indices.push(i as u32);
                }
            }
            if indices.len() != k {
                return Err(bad("bitmap count disagrees with its header"));
            }
            Ok((indices, 1 + len))
        }
        _ => Err(bad("unknown mode")),
    }
}
