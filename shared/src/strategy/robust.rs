//! Aggregation rules that a few dishonest vehicles cannot steer, and the
//! weighting and norm bounds every rule shares.
//!
//! FedAvg ([`Rule::FedAvg`]) folds each update into an O(model) running sum
//! as it arrives. The robust rules need all of a round's updates at once:
//! coordinate-wise trimmed mean ([`Rule::TrimmedMean`]) and median
//! ([`Rule::Median`]) look at every vehicle's value of each parameter;
//! multi-Krum ([`Rule::Krum`]) scores whole updates by their distance to
//! their nearest neighbours and averages the best; [`Rule::Cosine`] keeps
//! the updates that point the way of the coordinate-wise trimmed mean and
//! averages those as FedAvg would, which holds with sparsifying codecs too. Their memory is bounded:
//! [`aggregate`] works through the parameters in blocks of at most
//! `memory_bytes` (every update's values of one block), loading each
//! update again per block, so a round of any size aggregates in bounded
//! memory at the cost of decoding each update once per block.
//!
//! Each parameter group (the trunk, each task's head) is combined over the
//! vehicles that trained it, as [`super::sum`] does for FedAvg.

use super::sum::{PartialSum, tensor_groups};
use crate::params::ParamSet;
use crate::spec::ModelSpec;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a round's updates are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Rule {
    /// Sample-weighted mean, streamed in O(model) memory.
    FedAvg,
    /// Per parameter: drop the `trim` share of the lowest and of the
    /// highest values, average the rest by weight.
    TrimmedMean {
        /// Share dropped at each end, in [0, 0.5).
        trim: f64,
    },
    /// Per parameter: the median of the vehicles' values.
    Median,
    /// Multi-Krum: each update is scored by its squared distances to its
    /// `n - f - 2` nearest others; the `n - f` best are averaged by weight.
    Krum {
        /// Dishonest vehicles assumed per round (0: a quarter, rounded up).
        byzantine: usize,
    },
    /// FedAvg over the updates whose cosine with the round's robust centre
    /// (the coordinate-wise trimmed mean, a quarter trimmed at each end) is
    /// at least `floor`: a clean round is plain FedAvg, and an update that
    /// pulls against the fleet is left out whole, whatever its codec.
    Cosine {
        /// Lowest cosine an update may have, in [-1, 1).
        floor: f64,
    },
}

/// The trimmed share of the [`Rule::Cosine`] centre.
const CENTRE_TRIM: f64 = 0.25;

impl Rule {
    /// True for the rules that need every update of a round at once.
    pub fn buffers(&self) -> bool {
        !matches!(self, Rule::FedAvg)
    }

    /// The strategy string a version's provenance records: `fedavg:lr=1`,
    /// `trimmed_mean:0.25:lr=1`, `median:lr=1`, `krum:1:lr=1`.
    pub fn strategy(&self, server_lr: f64) -> String {
        format!("{self}:lr={server_lr}")
    }

    /// The rule a provenance's strategy string names (see [`Rule::strategy`];
    /// a string of [`super::describe`] ends with it).
    pub fn of_strategy(strategy: &str) -> Option<Rule> {
        let last = strategy.rsplit('+').next()?;
        let (rule, _lr) = last.rsplit_once(":lr=")?;
        rule.parse().ok()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::FedAvg => write!(f, "fedavg"),
            Rule::TrimmedMean { trim } => write!(f, "trimmed_mean:{trim}"),
            Rule::Median => write!(f, "median"),
            Rule::Krum { byzantine } => write!(f, "krum:{byzantine}"),
            Rule::Cosine { floor } => write!(f, "cosine:{floor}"),
        }
    }
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let bad = || {
            format!(
                "unknown aggregation rule {s:?}: use fedavg, cosine[:FLOOR] (FLOOR in [-1, 1), default 0), trimmed_mean[:SHARE] (SHARE in [0, 0.5), default 0.25), median, or krum[:F] (F dishonest vehicles assumed, default a quarter of the round)"
            )
        };
        match (name, arg) {
            ("fedavg", None) => Ok(Rule::FedAvg),
            ("median", None) => Ok(Rule::Median),
            ("trimmed_mean", None) => Ok(Rule::TrimmedMean { trim: 0.25 }),
            ("trimmed_mean", Some(a)) => match a.parse::<f64>() {
                Ok(trim) if (0.0..0.5).contains(&trim) => Ok(Rule::TrimmedMean { trim }),
                _ => Err(bad()),
            },
            ("cosine", None) => Ok(Rule::Cosine { floor: 0.0 }),
            ("cosine", Some(a)) => match a.parse::<f64>() {
                Ok(floor) if (-1.0..1.0).contains(&floor) => Ok(Rule::Cosine { floor }),
                _ => Err(bad()),
            },
            ("krum", None) => Ok(Rule::Krum { byzantine: 0 }),
            ("krum", Some(a)) => a
                .parse()
                .map(|byzantine| Rule::Krum { byzantine })
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

text_setting!(Rule);

/// One accepted update as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    /// The head it trained.
    pub head: usize,
    /// Its weight (its samples, capped; or 1 under equal weights).
    pub weight: f64,
    /// The factor its update is scaled by first (the norm bound; 1: none).
    pub scale: f64,
}

/// What the rule made of each member, besides the model.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Verdict {
    /// False when the rule left it out (multi-Krum).
    pub kept: bool,
    /// Cosine between its (scaled) update and the round's aggregate, over
    /// the parameters it trained; 0 when either is zero.
    pub cosine: f64,
    /// L2 distance from its (scaled) update to the aggregate.
    pub distance: f64,
}

/// A round's aggregate.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `base + server_lr * aggregate`.
    pub target: ParamSet,
    /// One per member, in order.
    pub verdicts: Vec<Verdict>,
    /// Largest buffer of update values held at once, bytes.
    pub peak_bytes: usize,
}

/// Combines `members` (update `i` is loaded into the buffer by
/// `load(i, buffer)`, unscaled) on `base` by `rule`, holding at most about
/// `memory_bytes` of update values at once. `None` when no member carries
/// weight.
pub fn aggregate<E>(
    rule: &Rule,
    spec: &ModelSpec,
    base: &ParamSet,
    server_lr: f64,
    members: &[Member],
    memory_bytes: usize,
    load: impl FnMut(usize, &mut ParamSet) -> Result<(), E>,
) -> Result<Option<Outcome>, E> {
    if members.iter().all(|m| m.weight <= 0.0) {
        return Ok(None);
    }
    let layout = spec.layout();
    let (n, d) = (members.len(), layout.numel());
    let block = (memory_bytes / (4 * n.max(1))).clamp(1, d.max(1));
    let mut pass = Passes {
        groups: Coverage::new(spec),
        members,
        d,
        block,
        scratch: ParamSet::zeros(&layout),
        load,
    };
    let mut verdicts = vec![
        Verdict {
            kept: true,
            ..Verdict::default()
        };
        n
    ];
    let (target, delta) = match rule {
        Rule::FedAvg | Rule::Krum { .. } | Rule::Cosine { .. } => {
            if let Rule::Krum { byzantine } = rule {
                let distances = pass.pairwise()?;
                for (v, kept) in verdicts.iter_mut().zip(krum(&distances, *byzantine)) {
                    v.kept = kept;
                }
            }
            if let Rule::Cosine { floor } = rule {
                let centre =
                    pass.coordinatewise(&Rule::TrimmedMean { trim: CENTRE_TRIM }, false)?;
                let mut to_centre = verdicts.clone();
                pass.score(&centre, &mut to_centre)?;
                for (v, c) in verdicts.iter_mut().zip(&to_centre) {
                    v.kept = c.cosine >= *floor;
                }
            }
            let Some(target) = pass.fedavg(spec, base, server_lr, &verdicts)? else {
                return Ok(None);
            };
            let delta = target
                .values()
                .zip(base.values())
                .map(|(t, b)| ((t - b) as f64 / server_lr) as f32)
                .collect::<Vec<f32>>();
            (target, delta)
        }
        Rule::TrimmedMean { .. } | Rule::Median => {
            let delta = pass.coordinatewise(rule, true)?;
            let mut target = base.clone();
            for (v, dv) in target.values_mut().zip(&delta) {
                *v += (server_lr * *dv as f64) as f32;
            }
            (target, delta)
        }
    };
    pass.score(&delta, &mut verdicts)?;
    Ok(Some(Outcome {
        target,
        verdicts,
        peak_bytes: block * n * 4,
    }))
}

/// Which parameters each member trained: the flat coordinates' groups.
struct Coverage {
    /// Group of each tensor, with its flat start and length.
    tensors: Vec<(usize, usize, usize)>,
}

impl Coverage {
    fn new(spec: &ModelSpec) -> Self {
        let layout = spec.layout();
        let mut at = 0;
        let tensors = tensor_groups(spec)
            .into_iter()
            .zip(&layout.tensors)
            .map(|(g, (_, shape))| {
                let len = shape.iter().map(|s| *s as usize).product::<usize>();
                let t = (g, at, len);
                at += len;
                t
            })
            .collect();
        Self { tensors }
    }

    /// `(group, from, to)` segments of the flat range `a..b`.
    fn segments(&self, a: usize, b: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.tensors.iter().filter_map(move |(g, start, len)| {
            let (from, to) = ((*start).max(a), (start + len).min(b));
            (from < to).then_some((*g, from, to))
        })
    }
}

/// True when a member that trained `head` trained group `group`.
fn covers(group: usize, head: usize) -> bool {
    group == 0 || group == head + 1
}

fn scale(p: &mut ParamSet, factor: f64) {
    let f = factor as f32;
    if f != 1.0 {
        p.values_mut().for_each(|v| *v *= f);
    }
}

/// Copies the flat range `a..b` of `p` into `out`.
fn copy_range(p: &ParamSet, a: usize, b: usize, out: &mut [f32]) {
    let mut at = 0;
    for t in &p.tensors {
        let len = t.data.len();
        let (from, to) = (a.max(at), b.min(at + len));
        if from < to {
            out[from - a..to - a].copy_from_slice(&t.data[from - at..to - at]);
        }
        at += len;
    }
}

/// What every pass over a round's updates works with: which parameters
/// each member trained, the members, how many parameters there are and how
/// many a block holds, a decode buffer, and the loader.
struct Passes<'m, L> {
    groups: Coverage,
    members: &'m [Member],
    d: usize,
    block: usize,
    scratch: ParamSet,
    load: L,
}

/// A run `from..to` of one group's parameters inside the block that
/// starts at `at`, with every member's scaled values of that block.
struct Segment<'r> {
    group: usize,
    from: usize,
    to: usize,
    at: usize,
    width: usize,
    /// Member-major: `width` values per member.
    rows: &'r [f32],
}

impl Segment<'_> {
    /// Member `member`'s value of parameter `c`.
    fn value(&self, member: usize, c: usize) -> f32 {
        self.rows[member * self.width + c - self.at]
    }
}

impl<L> Passes<'_, L> {
    /// Works through the parameters in blocks, loading every member once
    /// per block, and hands each group's run of each block to `visit`.
    fn each_segment<E>(&mut self, mut visit: impl FnMut(&Segment<'_>)) -> Result<(), E>
    where
        L: FnMut(usize, &mut ParamSet) -> Result<(), E>,
    {
        let mut rows = Vec::new();
        let mut at = 0;
        while at < self.d {
            let end = (at + self.block).min(self.d);
            let width = end - at;
            // every member's scaled values of the block, member-major
            rows.clear();
            rows.resize(self.members.len() * width, 0.0);
            for (i, m) in self.members.iter().enumerate() {
                (self.load)(i, &mut self.scratch)?;
                let row = &mut rows[i * width..(i + 1) * width];
                copy_range(&self.scratch, at, end, row);
                let f = m.scale as f32;
                if f != 1.0 {
                    row.iter_mut().for_each(|v| *v *= f);
                }
            }
            for (group, from, to) in self.groups.segments(at, end) {
                visit(&Segment {
                    group,
                    from,
                    to,
                    at,
                    width,
                    rows: &rows,
                });
            }
            at = end;
        }
        Ok(())
    }

    /// `rule`'s value of every parameter; `zeros_abstain`: see [`combine`].
    fn coordinatewise<E>(&mut self, rule: &Rule, zeros_abstain: bool) -> Result<Vec<f32>, E>
    where
        L: FnMut(usize, &mut ParamSet) -> Result<(), E>,
    {
        let members = self.members;
        let mut out = vec![0f32; self.d];
        let mut column: Vec<(f32, f64)> = Vec::with_capacity(members.len());
        self.each_segment(|s| {
            let who: Vec<usize> = (0..members.len())
                .filter(|i| covers(s.group, members[*i].head) && members[*i].weight > 0.0)
                .collect();
            if who.is_empty() {
                return;
            }
            for (c, slot) in out.iter_mut().enumerate().take(s.to).skip(s.from) {
                column.clear();
                column.extend(who.iter().map(|i| (s.value(*i, c), members[*i].weight)));
                *slot = combine(rule, &mut column, zeros_abstain);
            }
        })?;
        Ok(out)
    }

    /// Squared L2 distances between every pair of members over the trunk.
    fn pairwise<E>(&mut self) -> Result<Vec<Vec<f64>>, E>
    where
        L: FnMut(usize, &mut ParamSet) -> Result<(), E>,
    {
        let n = self.members.len();
        // row-major n x n, each pair computed once
        let mut flat = vec![0f64; n * n];
        self.each_segment(|s| {
            if s.group != 0 {
                return;
            }
            for i in 0..n {
                for j in i + 1..n {
                    let sum: f64 = (s.from..s.to)
                        .map(|c| {
                            let x = s.value(i, c) as f64 - s.value(j, c) as f64;
                            x * x
                        })
                        .sum();
                    flat[i * n + j] += sum;
                    flat[j * n + i] += sum;
                }
            }
        })?;
        Ok(flat.chunks(n.max(1)).map(<[f64]>::to_vec).collect())
    }

    /// Each member's cosine with and distance to `delta`, into `verdicts`.
    fn score<E>(&mut self, delta: &[f32], verdicts: &mut [Verdict]) -> Result<(), E>
    where
        L: FnMut(usize, &mut ParamSet) -> Result<(), E>,
    {
        let members = self.members;
        let n = members.len();
        let (mut dot, mut own, mut centre, mut dist) =
            (vec![0f64; n], vec![0f64; n], vec![0f64; n], vec![0f64; n]);
        self.each_segment(|s| {
            for (i, m) in members.iter().enumerate() {
                if !covers(s.group, m.head) {
                    continue;
                }
                for (c, g) in delta.iter().enumerate().take(s.to).skip(s.from) {
                    let (u, g) = (s.value(i, c) as f64, *g as f64);
                    dot[i] += u * g;
                    own[i] += u * u;
                    centre[i] += g * g;
                    dist[i] += (u - g) * (u - g);
                }
            }
        })?;
        for (i, v) in verdicts.iter_mut().enumerate() {
            let norms = (own[i] * centre[i]).sqrt();
            v.cosine = if norms > 0.0 { dot[i] / norms } else { 0.0 };
            v.distance = dist[i].sqrt();
        }
        Ok(())
    }

    /// FedAvg of the members `verdicts` keep: folded in the members' order
    /// and applied as the live round's streaming sum is, so both reach
    /// bit-identical weights.
    fn fedavg<E>(
        &mut self,
        spec: &ModelSpec,
        base: &ParamSet,
        server_lr: f64,
        verdicts: &[Verdict],
    ) -> Result<Option<ParamSet>, E>
    where
        L: FnMut(usize, &mut ParamSet) -> Result<(), E>,
    {
        let mut sum = PartialSum::for_spec(spec);
        for (i, m) in self.members.iter().enumerate() {
            if verdicts[i].kept && m.weight > 0.0 {
                (self.load)(i, &mut self.scratch)?;
                scale(&mut self.scratch, m.scale);
                sum.fold(&self.scratch, m.head, m.weight);
            }
        }
        Ok(sum.apply(base, server_lr))
    }
}

/// One parameter's value from the members' `(value, weight)`. With
/// `zeros_abstain`, a zero is a value the vehicle did not send (what a
/// sparse codec leaves out decodes to zero) and abstains: the rule runs
/// over the values sent, and its result is scaled by the share of the
/// weight (the median: of the vehicles) that sent one. With nothing trimmed
/// that is exactly FedAvg's weighted mean, so sparse updates are not
/// trimmed away as outliers (but where few vehicles sent a value, little
/// is trimmed). Without it every zero counts: the robust centre of
/// [`Rule::Cosine`], where a value only one vehicle sent is an outlier.
fn combine(rule: &Rule, column: &mut Vec<(f32, f64)>, zeros_abstain: bool) -> f32 {
    let (all, all_weight) = (column.len(), column.iter().map(|(_, w)| w).sum::<f64>());
    if zeros_abstain {
        column.retain(|(v, _)| *v != 0.0);
    }
    if column.is_empty() {
        return 0.0;
    }
    // by value, then weight: which of several equal values is trimmed never
    // depends on the order the updates arrived in
    column.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.total_cmp(&y.1)));
    let m = column.len();
    let value = match rule {
        Rule::Median => {
            let middle = if m % 2 == 1 {
                column[m / 2].0 as f64
            } else {
                (column[m / 2 - 1].0 as f64 + column[m / 2].0 as f64) / 2.0
            };
            middle * m as f64 / all as f64
        }
        Rule::TrimmedMean { trim } => {
            let mut k = (trim * m as f64).floor() as usize;
            if m <= 2 * k {
                k = (m - 1) / 2;
            }
            let kept = &column[k..m - k];
            let kept_weight: f64 = kept.iter().map(|(_, w)| w).sum();
            let sent_weight: f64 = column.iter().map(|(_, w)| w).sum();
            if kept_weight > 0.0 && all_weight > 0.0 {
                let mean = kept.iter().map(|(v, w)| *v as f64 * w).sum::<f64>() / kept_weight;
                mean * sent_weight / all_weight
            } else {
                let mean = kept.iter().map(|(v, _)| *v as f64).sum::<f64>() / kept.len() as f64;
                mean * m as f64 / all as f64
            }
        }
        Rule::FedAvg | Rule::Krum { .. } | Rule::Cosine { .. } => {
            unreachable!("not a coordinate-wise rule")
        }
    };
    value as f32
}

/// Which members multi-Krum keeps, from their pairwise squared distances,
/// assuming `byzantine` dishonest members (0: a quarter, rounded up).
pub fn krum(distances: &[Vec<f64>], byzantine: usize) -> Vec<bool> {
    let n = distances.len();
    if n <= 2 {
        return vec![true; n];
    }
    let f = if byzantine == 0 {
        n.div_ceil(4)
    } else {
        byzantine
    }
    .min(n - 2);
    let neighbours = n.saturating_sub(f + 2).max(1);
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            let mut others: Vec<f64> = (0..n)
                .filter(|j| *j != i)
                .map(|j| distances[i][j])
                .collect();
            others.sort_by(f64::total_cmp);
            others.iter().take(neighbours).sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b)));
    let mut kept = vec![false; n];
    for i in order.into_iter().take(n - f) {
        kept[i] = true;
    }
    kept
}

/// How much each vehicle's claimed row count may weigh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weighting {
    /// Every accepted update weighs 1 (claims are ignored).
    pub equal: bool,
    /// A weight is at most this multiple of the round's median claim (0: no cap).
    pub median_cap: f64,
    /// A weight is at most this multiple of the vehicle's largest weight
    /// in earlier rounds (0: no cap; a vehicle with no history is not capped).
    pub growth_cap: f64,
}

/// One update's weight from its `claimed` rows, the round's `median` claim
/// and the vehicle's largest earlier weight, with the reason when it was
/// capped.
pub fn weigh(
    rules: &Weighting,
    claimed: u64,
    median: Option<f64>,
    history: Option<f64>,
) -> (f64, Option<String>) {
    if rules.equal {
        return (1.0, None);
    }
    let claimed = claimed as f64;
    let mut weight = claimed;
    let mut why = None;
    if let Some(past) = history.filter(|p| *p > 0.0 && rules.growth_cap > 0.0) {
        let cap = rules.growth_cap * past;
        if weight > cap {
            weight = cap;
            why = Some(format!(
                "claimed {claimed} rows, more than {}x its largest earlier weight {past}; weighed {cap}",
                rules.growth_cap
            ));
        }
    }
    if let Some(m) = median.filter(|m| *m > 0.0 && rules.median_cap > 0.0) {
        let cap = rules.median_cap * m;
        if weight > cap {
            weight = cap;
            why = Some(format!(
                "claimed {claimed} rows, more than {}x the round's median claim {m}; weighed {cap}",
                rules.median_cap
            ));
        }
    }
    (weight, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Feature, Head};

    fn spec() -> ModelSpec {
        ModelSpec {
            features: vec![Feature::numeric("a", 0.0, 1.0)],
            heads: vec![Head::classification("y", ["0".into(), "1".into()])],
            hidden: vec![],
            init_seed: 1,
        }
    }

    fn filled(spec: &ModelSpec, value: f32) -> ParamSet {
        let mut p = ParamSet::zeros(&spec.layout());
        p.values_mut().for_each(|v| *v = value);
        p
    }

    fn run(rule: Rule, values: &[f32], weights: &[f64], memory: usize) -> Outcome {
        let spec = spec();
        let updates: Vec<ParamSet> = values.iter().map(|v| filled(&spec, *v)).collect();
        let members: Vec<Member> = weights
            .iter()
            .map(|w| Member {
                head: 0,
                weight: *w,
                scale: 1.0,
            })
            .collect();
        let base = ParamSet::zeros(&spec.layout());
        aggregate::<()>(&rule, &spec, &base, 1.0, &members, memory, |i, into| {
            *into = updates[i].clone();
            Ok(())
        })
        .unwrap()
        .unwrap()
    }

    fn first(o: &Outcome) -> f32 {
        o.target.values().next().unwrap()
    }

    #[test]
    fn one_outlier_moves_the_robust_rules_little_and_fedavg_far() {
        let values = [1.0, 1.2, 0.8, -1000.0];
        let w = [1.0; 4];
        assert!(first(&run(Rule::FedAvg, &values, &w, 1 << 20)) < -200.0);
        for rule in [
            Rule::Median,
            Rule::TrimmedMean { trim: 0.25 },
            Rule::Krum { byzantine: 1 },
            Rule::Cosine { floor: 0.0 },
        ] {
            let got = first(&run(rule, &values, &w, 1 << 20));
            assert!((0.8..=1.2).contains(&got), "{rule}: {got}");
        }
        let krum = run(Rule::Krum { byzantine: 1 }, &values, &w, 1 << 20);
        assert_eq!(
            krum.verdicts.iter().map(|v| v.kept).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert!(krum.verdicts[3].cosine < 0.0 && krum.verdicts[0].cosine > 0.9);
    }

    #[test]
    fn blocks_of_any_size_give_the_same_aggregate() {
        let values = [0.5, 2.0, -1.0, 3.0, 0.25];
        let w = [1.0, 2.0, 3.0, 1.0, 5.0];
        for rule in [
            Rule::FedAvg,
            Rule::Median,
            Rule::TrimmedMean { trim: 0.2 },
            Rule::Krum { byzantine: 0 },
            Rule::Cosine { floor: 0.0 },
        ] {
            let whole = run(rule, &values, &w, 1 << 20);
            let small = run(rule, &values, &w, 4 * values.len());
            assert_eq!(whole.target, small.target, "{rule}");
            assert!(small.peak_bytes <= 4 * values.len());
        }
    }

    #[test]
    fn the_order_updates_arrive_in_changes_nothing() {
        // ties at the trimmed edge with different weights
        let values = [1.0, 1.0, 2.0, 5.0, 5.0];
        let weights = [1.0, 5.0, 1.0, 1.0, 3.0];
        let rule = Rule::TrimmedMean { trim: 0.25 };
        let forward = run(rule, &values, &weights, 1 << 20);
        let (mut v, mut w) = (values, weights);
        v.reverse();
        w.reverse();
        assert_eq!(forward.target, run(rule, &v, &w, 1 << 20).target);
        // the lighter 1 and the heavier 5 are trimmed: (1 x 5 + 2 + 5) / 7
        assert!((first(&forward) - 12.0 / 7.0).abs() < 1e-6);
    }

    #[test]
    fn values_a_sparse_codec_did_not_send_abstain() {
        // two of four sent this parameter: nothing to trim, so FedAvg's
        // weighted mean over all four
        let values = [0.0, 2.0, 0.0, 4.0];
        let weights = [1.0, 1.0, 1.0, 1.0];
        let fedavg = first(&run(Rule::FedAvg, &values, &weights, 1 << 20));
        let trimmed = first(&run(
            Rule::TrimmedMean { trim: 0.25 },
            &values,
            &weights,
            1 << 20,
        ));
        assert!((fedavg - 1.5).abs() < 1e-6 && (trimmed - 1.5).abs() < 1e-6);
        // the median of what was sent, scaled by the share that sent it
        assert_eq!(first(&run(Rule::Median, &values, &weights, 1 << 20)), 1.5);
        // nobody sent it: it stays
        assert_eq!(
            first(&run(Rule::Median, &[0.0; 3], &[1.0; 3], 1 << 20)),
            0.0
        );
    }

    #[test]
    fn trimmed_mean_weighs_what_it_keeps_and_median_is_the_middle() {
        // sorted 0.25, 0.5, 2, 3 | -1 dropped low, 3 dropped high
        let values = [0.5, 2.0, -1.0, 3.0, 0.25];
        let w = [1.0, 2.0, 3.0, 1.0, 5.0];
        let t = first(&run(Rule::TrimmedMean { trim: 0.2 }, &values, &w, 1 << 20));
        let want = (0.5 * 1.0 + 2.0 * 2.0 + 0.25 * 5.0) / 8.0;
        assert!((t - want as f32).abs() < 1e-6, "{t} vs {want}");
        assert_eq!(first(&run(Rule::Median, &values, &w, 1 << 20)), 0.5);
        assert_eq!(first(&run(Rule::Median, &values[..4], &w[..4], 64)), 1.25);
    }

    #[test]
    fn rules_round_trip_as_strings_and_bad_ones_say_what_works() {
        for s in [
            "fedavg",
            "median",
            "trimmed_mean:0.25",
            "krum:2",
            "krum:0",
            "cosine:0",
            "cosine:0.2",
        ] {
            let rule: Rule = s.parse().unwrap();
            assert_eq!(rule.to_string(), s);
            assert_eq!(Rule::of_strategy(&rule.strategy(0.5)), Some(rule));
        }
        assert_eq!(Rule::of_strategy("fedavg:lr=1"), Some(Rule::FedAvg));
        for bad in ["trimmed_mean:0.5", "krum:x", "mean", "median:1", "cosine:1"] {
            let err = bad.parse::<Rule>().unwrap_err();
            assert!(err.contains("trimmed_mean"), "{err}");
        }
    }

    #[test]
    fn weights_are_capped_by_the_round_and_by_history() {
        let rules = Weighting {
            equal: false,
            median_cap: 3.0,
            growth_cap: 2.0,
        };
        assert_eq!(weigh(&rules, 100, Some(100.0), None), (100.0, None));
        let (w, why) = weigh(&rules, 1_000_000, Some(100.0), None);
        assert_eq!(w, 300.0);
        assert!(why.unwrap().contains("median"));
        let (w, why) = weigh(&rules, 250, Some(100.0), Some(100.0));
        assert_eq!(w, 200.0);
        assert!(why.unwrap().contains("earlier"));
        let equal = Weighting {
            equal: true,
            ..rules
        };
        assert_eq!(weigh(&equal, 1_000_000, Some(1.0), None), (1.0, None));
    }
}
