//! Streaming FedAvg: a running, sample-weighted sum of decoded updates.
//!
//! Memory is O(model) whatever the number of clients: each update is folded
//! in as it completes and then dropped. The partial sum is plain data, so
//! several workers can each keep one and merge them.

use convoy_shared::params::{Layout, ParamSet};
use serde::{Deserialize, Serialize};

/// A weighted sum of updates with the same layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialSum {
    layout: Layout,
    sum: Vec<f64>,
    weight: f64,
    updates: u64,
}

impl PartialSum {
    /// An empty sum for `layout`.
    pub fn new(layout: Layout) -> Self {
        let n = layout.numel();
        Self {
            layout,
            sum: vec![0.0; n],
            weight: 0.0,
            updates: 0,
        }
    }

    /// Adds `weight * update`. The caller has already validated the layout
    /// and finiteness of `update`.
    pub fn fold(&mut self, update: &ParamSet, weight: f64) {
        for (acc, v) in self.sum.iter_mut().zip(update.values()) {
            *acc += weight * v as f64;
        }
        self.weight += weight;
        self.updates += 1;
    }

    /// Merges another worker's partial sum of the same layout.
    pub fn merge(&mut self, other: &PartialSum) -> bool {
        if other.layout != self.layout {
            return false;
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        self.weight += other.weight;
        self.updates += other.updates;
        true
    }

    /// Updates folded in.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// `base + server_lr * sum / weight` (FedAvg; `server_lr` 1 is plain
    /// FedAvg), or `None` when nothing was folded in.
    pub fn apply(&self, base: &ParamSet, server_lr: f64) -> Option<ParamSet> {
        if self.weight <= 0.0 {
            return None;
        }
        let mut out = base.clone();
        for (v, s) in out.values_mut().zip(&self.sum) {
            *v += (server_lr * s / self.weight) as f32;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_shared::params::Tensor;

    fn set(values: &[f32]) -> ParamSet {
        ParamSet {
            tensors: vec![Tensor {
                name: "w".into(),
                shape: vec![values.len() as u32],
                data: values.to_vec(),
            }],
        }
    }

    #[test]
    fn weighted_mean_of_deltas_and_merge_agree() {
        let base = set(&[1.0, 1.0]);
        let mut a = PartialSum::new(base.layout());
        a.fold(&set(&[1.0, 0.0]), 1.0);
        let mut b = PartialSum::new(base.layout());
        b.fold(&set(&[4.0, 3.0]), 2.0);
        let mut whole = PartialSum::new(base.layout());
        whole.fold(&set(&[1.0, 0.0]), 1.0);
        whole.fold(&set(&[4.0, 3.0]), 2.0);
        assert!(a.merge(&b));
        assert_eq!(a, whole);
        assert_eq!(a.apply(&base, 1.0).unwrap().tensors[0].data, vec![4.0, 3.0]);
        assert_eq!(a.apply(&base, 0.5).unwrap().tensors[0].data, vec![2.5, 2.0]);
        assert!(PartialSum::new(base.layout()).apply(&base, 1.0).is_none());
    }
}
