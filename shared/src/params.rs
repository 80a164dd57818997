//! The one parameter layout: a model as a flat list of named f32 tensors.
//!
//! Burn modules convert to and from [`ParamSet`] in [`crate::model`]; codecs,
//! aggregation, hashing and storage only ever see `ParamSet`s.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One named tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Stable name, e.g. `layers.0.weight`.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<u32>,
    /// Row-major values; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

/// Names and shapes of a [`ParamSet`] without the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// `(name, shape)` per tensor, in order.
    pub tensors: Vec<(String, Vec<u32>)>,
}

impl Layout {
    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|(_, s)| numel(s)).sum()
    }
}

/// A model's parameters, in a fixed order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ParamSet {
    /// Tensors in canonical order.
    pub tensors: Vec<Tensor>,
}

/// Why two parameter sets cannot be combined.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamError {
    /// Layouts differ.
    #[error("wrong shape: expected {expected}, got {got}")]
    Shape {
        /// expected layout, summarised
        expected: String,
        /// received layout, summarised
        got: String,
    },
    /// A value is NaN or infinite.
    #[error("non-finite value in tensor {name} at index {index}")]
    NonFinite {
        /// tensor name
        name: String,
        /// flat index
        index: usize,
    },
}

impl ParamError {
    /// A short, stable label for counting rejections.
    pub fn reason(&self) -> &'static str {
        match self {
            ParamError::Shape { .. } => "wrong_shape",
            ParamError::NonFinite { .. } => "non_finite",
        }
    }
}

fn numel(shape: &[u32]) -> usize {
    shape.iter().map(|d| *d as usize).product()
}

impl ParamSet {
    /// One tensor `w` of shape `[n]` holding `values` (tests, examples).
    pub fn vector(values: &[f32]) -> Self {
        Self {
            tensors: vec![Tensor {
                name: "w".into(),
                shape: vec![values.len() as u32],
                data: values.to_vec(),
            }],
        }
    }

    /// A zero-filled set with the given layout.
    pub fn zeros(layout: &Layout) -> Self {
        Self {
            tensors: layout
                .tensors
                .iter()
                .map(|(name, shape)| Tensor {
                    name: name.clone(),
                    shape: shape.clone(),
                    data: vec![0.0; numel(shape)],
                })
                .collect(),
        }
    }

    /// Names and shapes.
    pub fn layout(&self) -> Layout {
        Layout {
            tensors: self
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect(),
        }
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }

    /// Every value, tensor after tensor.
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.tensors.iter().flat_map(|t| t.data.iter().copied())
    }

    /// Every value, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut f32> + '_ {
        self.tensors.iter_mut().flat_map(|t| t.data.iter_mut())
    }

    /// Checks that `self` has exactly `layout`, and that each tensor's data
    /// length matches its shape.
    pub fn check_layout(&self, layout: &Layout) -> Result<(), ParamError> {
        let consistent = self.tensors.iter().all(|t| t.data.len() == numel(&t.shape));
        if !consistent
            || self.tensors.len() != layout.tensors.len()
            || self
                .tensors
                .iter()
                .zip(&layout.tensors)
                .any(|(t, (name, shape))| &t.name != name || &t.shape != shape)
        {
            return Err(ParamError::Shape {
                expected: summarise(layout),
                got: summarise(&self.layout()),
            });
        }
        Ok(())
    }

    /// First NaN or infinity, if any.
    pub fn check_finite(&self) -> Result<(), ParamError> {
        for t in &self.tensors {
            if let Some(index) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(ParamError::NonFinite {
                    name: t.name.clone(),
                    index,
                });
            }
        }
        Ok(())
    }

    /// `self - other`, element-wise; layouts must match.
    pub fn sub(&self, other: &ParamSet) -> Result<ParamSet, ParamError> {
        other.check_layout(&self.layout())?;
        let mut out = self.clone();
        for (a, b) in out.values_mut().zip(other.values()) {
            *a -= b;
        }
        Ok(out)
    }

    /// `self += scale * other`, element-wise; layouts must match.
    pub fn add_scaled(&mut self, other: &ParamSet, scale: f32) -> Result<(), ParamError> {
        other.check_layout(&self.layout())?;
        for (a, b) in self.values_mut().zip(other.values()) {
            *a += scale * b;
        }
        Ok(())
    }

    /// Euclidean norm of all values.
    pub fn l2_norm(&self) -> f64 {
        self.values()
            .map(|v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt()
    }

    /// The set [`canonical_bytes`](Self::canonical_bytes) wrote for
    /// `layout`: how a stored or fetched model is read back.
    pub fn from_canonical_bytes(layout: &Layout, bytes: &[u8]) -> Result<Self, ParamError> {
        let mut set = ParamSet::zeros(layout);
        if bytes.len() != set.numel() * 4 {
            return Err(ParamError::Shape {
                expected: summarise(layout),
                got: format!("{} bytes of weights", bytes.len()),
            });
        }
        for (v, b) in set.values_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(set)
    }

    /// Canonical little-endian bytes: what versions are hashed over.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.numel() * 4);
        for v in self.values() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

fn summarise(layout: &Layout) -> String {
    let parts: Vec<String> = layout
        .tensors
        .iter()
        .map(|(n, s)| format!("{n}{s:?}"))
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[f32]) -> ParamSet {
        ParamSet::vector(values)
    }

    #[test]
    fn canonical_bytes_read_back_and_a_wrong_length_is_refused() {
        let set = ParamSet::vector(&[1.5, -2.0, f32::MIN_POSITIVE]);
        let bytes = set.canonical_bytes();
        assert_eq!(
            ParamSet::from_canonical_bytes(&set.layout(), &bytes),
            Ok(set.clone())
        );
        assert!(ParamSet::from_canonical_bytes(&set.layout(), &bytes[1..]).is_err());
    }

    #[test]
    fn sub_and_add_scaled_are_inverse() {
        let a = set(&[1.0, 2.0, 3.0]);
        let b = set(&[0.5, 0.5, 0.5]);
        let mut d = a.sub(&b).unwrap();
        assert_eq!(d.tensors[0].data, vec![0.5, 1.5, 2.5]);
        d.add_scaled(&b, 1.0).unwrap();
        assert_eq!(d, a);
    }

    #[test]
    fn layout_mismatch_and_nan_are_reported() {
        let a = set(&[1.0, 2.0]);
        let b = set(&[1.0, 2.0, 3.0]);
        assert_eq!(a.sub(&b).unwrap_err().reason(), "wrong_shape");
        assert_eq!(
            set(&[1.0, f32::NAN]).check_finite().unwrap_err().reason(),
            "non_finite"
        );
        let mut lying = set(&[1.0]);
        lying.tensors[0].shape = vec![5];
        assert!(lying.check_layout(&a.layout()).is_err());
    }
}
