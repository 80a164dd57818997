//! Streaming FedAvg: a running, sample-weighted sum of decoded updates,
//! kept per parameter group.
//!
//! A model has a shared trunk and one head per task; a vehicle trains the
//! trunk and its own head. Each group is averaged only over the vehicles
//! that trained it: the trunk over all of them, a head over those of its
//! task, so a head no one trained this round stays as it was, and a task
//! with few vehicles is not diluted by the others' zeros.
//!
//! Memory is O(model) whatever the number of clients: each update is folded
//! in as it completes and then dropped. The partial sum is plain data, so
//! several workers can each keep one and merge them.

use crate::params::{Layout, ParamSet};
use crate::spec::ModelSpec;
use serde::{Deserialize, Serialize};

/// The group of each of `spec`'s tensors: 0 the trunk, `k + 1` head k.
pub fn tensor_groups(spec: &ModelSpec) -> Vec<usize> {
    (0..spec.layout().tensors.len())
        .map(|i| spec.tensor_head(i).map_or(0, |h| h + 1))
        .collect()
}

/// A weighted sum of updates with the same layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialSum {
    layout: Layout,
    sum: Vec<f64>,
    /// Group of each tensor: 0 the trunk, `k + 1` head k.
    groups: Vec<usize>,
    /// Weight folded into each group.
    weights: Vec<f64>,
    updates: u64,
}

impl PartialSum {
    /// An empty sum for the parameters of `spec`.
    pub fn for_spec(spec: &ModelSpec) -> Self {
        Self::grouped(spec.layout(), tensor_groups(spec), spec.heads.len() + 1)
    }

    /// An empty sum for `layout`, every tensor in one group.
    pub fn new(layout: Layout) -> Self {
        let groups = vec![0; layout.tensors.len()];
        Self::grouped(layout, groups, 1)
    }

    fn grouped(layout: Layout, groups: Vec<usize>, count: usize) -> Self {
        let n = layout.numel();
        Self {
            layout,
            sum: vec![0.0; n],
            groups,
            weights: vec![0.0; count],
            updates: 0,
        }
    }

    /// Adds `weight * update` from a vehicle that trained head `head`: the
    /// trunk and that head take it; other heads' values are not its to
    /// move and are left out. The caller has already validated the layout
    /// and finiteness of `update`.
    pub fn fold(&mut self, update: &ParamSet, head: usize, weight: f64) {
        self.fold_scaled(update, head, weight, weight);
    }

    /// Adds `factor * update` to the sum of the trunk and head `head`, and
    /// `weight` to their weights (what [`Self::apply`] divides by).
    pub(crate) fn fold_scaled(&mut self, update: &ParamSet, head: usize, factor: f64, weight: f64) {
        let own = head + 1;
        let mut at = 0;
        for (tensor, group) in update.tensors.iter().zip(&self.groups) {
            let n = tensor.data.len();
            if *group == 0 || *group == own {
                for (acc, v) in self.sum[at..at + n].iter_mut().zip(&tensor.data) {
                    *acc += factor * *v as f64;
                }
            }
            at += n;
        }
        self.weights[0] += weight;
        if let Some(w) = self.weights.get_mut(own) {
            *w += weight;
        }
        self.updates += 1;
    }

    /// `f(value, sum, weight)` for every value of `base`, with its sum and
    /// its group's weight; a group with no weight keeps `base`'s values.
    pub(crate) fn map_groups(&self, base: &ParamSet, f: impl Fn(f32, f64, f64) -> f32) -> ParamSet {
        let mut out = base.clone();
        let mut at = 0;
        for (tensor, group) in out.tensors.iter_mut().zip(&self.groups) {
            let n = tensor.data.len();
            let weight = self.weights[*group];
            if weight > 0.0 {
                for (v, s) in tensor.data.iter_mut().zip(&self.sum[at..at + n]) {
                    *v = f(*v, *s, weight);
                }
            }
            at += n;
        }
        out
    }

    /// Weight folded into the trunk and into each head, in that order.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Merges another worker's partial sum of the same layout.
    pub fn merge(&mut self, other: &PartialSum) -> bool {
        if other.layout != self.layout {
            return false;
        }
        if other.groups != self.groups {
            return false;
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.weights.iter_mut().zip(&other.weights) {
            *a += b;
        }
        self.updates += other.updates;
        true
    }

    /// Updates folded in.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// `base + server_lr * sum / weight` per group (FedAvg; `server_lr` 1
    /// is plain FedAvg), a group nobody trained left as it was; `None` when
    /// nothing was folded in.
    pub fn apply(&self, base: &ParamSet, server_lr: f64) -> Option<ParamSet> {
        if self.weights[0] <= 0.0 {
            return None;
        }
        Some(self.map_groups(base, |v, s, weight| v + (server_lr * s / weight) as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[f32]) -> ParamSet {
        ParamSet::vector(values)
    }

    #[test]
    fn weighted_mean_of_deltas_and_merge_agree() {
        let base = set(&[1.0, 1.0]);
        let mut a = PartialSum::new(base.layout());
        a.fold(&set(&[1.0, 0.0]), 0, 1.0);
        let mut b = PartialSum::new(base.layout());
        b.fold(&set(&[4.0, 3.0]), 0, 2.0);
        let mut whole = PartialSum::new(base.layout());
        whole.fold(&set(&[1.0, 0.0]), 0, 1.0);
        whole.fold(&set(&[4.0, 3.0]), 0, 2.0);
        assert!(a.merge(&b));
        assert_eq!(a, whole);
        assert_eq!(a.apply(&base, 1.0).unwrap().tensors[0].data, vec![4.0, 3.0]);
        assert_eq!(a.apply(&base, 0.5).unwrap().tensors[0].data, vec![2.5, 2.0]);
        assert!(PartialSum::new(base.layout()).apply(&base, 1.0).is_none());
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;
    use crate::spec::{Feature, Head, TargetScale};

    /// Trunk 2 -> 1, a classification head (1 -> 2) and a regression
    /// head (1 -> 1).
    fn spec() -> ModelSpec {
        ModelSpec {
            features: vec![
                Feature::numeric("a", 0.0, 1.0),
                Feature::numeric("b", 0.0, 1.0),
            ],
            heads: vec![
                Head::classification("tip", ["no".into(), "yes".into()]),
                Head::regression("distance", TargetScale::default()),
            ],
            hidden: vec![1],
            init_seed: 1,
        }
    }

    fn filled(spec: &ModelSpec, value: f32) -> ParamSet {
        let mut p = ParamSet::zeros(&spec.layout());
        p.values_mut().for_each(|v| *v = value);
        p
    }

    #[test]
    fn each_group_is_averaged_over_the_vehicles_that_trained_it() {
        let spec = spec();
        let base = ParamSet::zeros(&spec.layout());
        let mut sum = PartialSum::for_spec(&spec);
        // two tip vehicles (100 and 300 samples), one distance vehicle (600)
        sum.fold(&filled(&spec, 1.0), 0, 100.0);
        sum.fold(&filled(&spec, 2.0), 0, 300.0);
        sum.fold(&filled(&spec, 10.0), 1, 600.0);
        assert_eq!(sum.weights(), [1000.0, 400.0, 600.0]);
        let out = sum.apply(&base, 1.0).unwrap();
        let by_name = |name: &str| {
            out.tensors
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.data.clone())
                .unwrap()
        };
        // trunk: (100 * 1 + 300 * 2 + 600 * 10) / 1000
        assert_eq!(by_name("layers.0.weight"), [6.7, 6.7]);
        // tip head: (100 * 1 + 300 * 2) / 400, the distance vehicle left out
        assert_eq!(by_name("layers.1.weight"), [1.75, 1.75]);
        // distance head: its one vehicle's update, undiluted
        assert_eq!(by_name("layers.2.bias"), [10.0]);
    }

    #[test]
    fn a_head_nobody_trained_stays_as_it_was() {
        let spec = spec();
        let base = filled(&spec, 0.5);
        let mut sum = PartialSum::for_spec(&spec);
        sum.fold(&filled(&spec, 1.0), 1, 10.0);
        let out = sum.apply(&base, 1.0).unwrap();
        let head0: Vec<f32> = out.tensors[2..4]
            .iter()
            .flat_map(|t| t.data.clone())
            .collect();
        assert!(head0.iter().all(|v| *v == 0.5), "{head0:?}");
        assert!(out.tensors[0].data.iter().all(|v| *v == 1.5));
        // merging keeps the per-group weights
        let mut other = PartialSum::for_spec(&spec);
        other.fold(&filled(&spec, 3.0), 0, 10.0);
        assert!(sum.merge(&other));
        assert_eq!(sum.weights(), [20.0, 10.0, 10.0]);
        assert!(
            !sum.merge(&PartialSum::new(spec.layout())),
            "other grouping"
        );
    }
}
