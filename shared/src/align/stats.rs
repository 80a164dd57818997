//! The statistics round: what a vehicle reports about its columns (never a
//! row), how reports merge, and how merged statistics become the model's
//! input pipeline.

use super::{AlignError, AlignSettings, ColumnKind, ExactSum, MAX_LOCAL_CATEGORIES, Schema};
use crate::dataset::{Cell, Table};
use crate::spec::{Encoding, Feature, Head, ModelSpec, TargetScale, TaskKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Sufficient statistics of a numeric column.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    /// Present cells.
    pub count: u64,
    /// Missing cells.
    pub missing: u64,
    /// Exact sum of the present cells.
    pub sum: ExactSum,
    /// Exact sum of their squares.
    pub sum_sq: ExactSum,
    /// Smallest present value (+inf when none).
    pub min: f32,
    /// Largest present value (-inf when none).
    pub max: f32,
}

impl Default for NumericStats {
    fn default() -> Self {
        Self {
            count: 0,
            missing: 0,
            sum: ExactSum::default(),
            sum_sq: ExactSum::default(),
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }
}

impl NumericStats {
    fn add(&mut self, v: f32) {
        let x = v as f64;
        self.count += 1;
        self.sum.add(x);
        // the square of an f32 is exact in an f64
        self.sum_sq.add(x * x);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &NumericStats) {
        self.count += other.count;
        self.missing += other.missing;
        self.sum.merge(&other.sum);
        self.sum_sq.merge(&other.sum_sq);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Mean of the present cells (0 when none).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum.value() / self.count as f64
        }
    }

    /// Population standard deviation of the present cells (0 when none).
    pub fn std(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let mean = self.mean();
        (self.sum_sq.value() / self.count as f64 - mean * mean)
            .max(0.0)
            .sqrt()
    }

    /// Mean and a scale that is never zero (constant columns keep 1, so they
    /// standardise to zero, not NaN).
    fn scale(&self) -> (f32, f32) {
        let std = self.std();
        let scale = if std > 1e-6 * (1.0 + self.mean().abs()) && std.is_finite() {
            std as f32
        } else {
            1.0
        };
        (self.mean() as f32, scale)
    }
}

/// Category counts of a categorical column.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CategoryStats {
    /// Missing cells.
    pub missing: u64,
    /// Cells per category (at most [`MAX_LOCAL_CATEGORIES`] from one vehicle).
    pub counts: BTreeMap<String, u64>,
    /// Cells of categories beyond that cap.
    pub other: u64,
}

impl CategoryStats {
    fn merge(&mut self, other: &CategoryStats) {
        self.missing += other.missing;
        self.other += other.other;
        for (k, v) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += v;
        }
    }

    /// Keeps the `cap` most frequent categories (ties by name) and counts
    /// the rest as other.
    fn cap(&mut self, cap: usize) {
        if self.counts.len() <= cap {
            return;
        }
        let kept: Vec<String> = ranked(&self.counts)
            .into_iter()
            .take(cap)
            .map(str::to_string)
            .collect();
        let mut counts = BTreeMap::new();
        for name in kept {
            if let Some(n) = self.counts.remove(&name) {
                counts.insert(name, n);
            }
        }
        self.other += self.counts.values().sum::<u64>();
        self.counts = counts;
    }
}

/// Most frequent first, ties by name.
fn ranked(counts: &BTreeMap<String, u64>) -> Vec<&str> {
    let mut order: Vec<(&String, &u64)> = counts.iter().collect();
    order.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    order.into_iter().map(|(k, _)| k.as_str()).collect()
}

/// What one vehicle knows about one column of the fleet's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ColumnStats {
    /// The vehicle does not log this column.
    Absent,
    /// A numeric column (boxed: its exact sums are 320 bytes).
    Numeric(Box<NumericStats>),
    /// A categorical column.
    Categorical(CategoryStats),
}

impl ColumnStats {
    fn kind(&self) -> Option<ColumnKind> {
        match self {
            ColumnStats::Absent => None,
            ColumnStats::Numeric(_) => Some(ColumnKind::Numeric),
            ColumnStats::Categorical(_) => Some(ColumnKind::Categorical),
        }
    }

    /// Adds `other` (same kind, or absent on either side).
    fn merge(&mut self, other: &ColumnStats) {
        match (&mut *self, other) {
            (_, ColumnStats::Absent) => {}
            (ColumnStats::Absent, o) => *self = o.clone(),
            (ColumnStats::Numeric(a), ColumnStats::Numeric(b)) => a.merge(b),
            (ColumnStats::Categorical(a), ColumnStats::Categorical(b)) => a.merge(b),
            // kinds were checked against the schema before merging
            _ => {}
        }
    }

    /// Statistics of table column `col` as `kind`.
    fn of_column(
        table: &Table,
        col: usize,
        kind: ColumnKind,
        name: &str,
    ) -> Result<Self, AlignError> {
        match kind {
            ColumnKind::Numeric => {
                let mut stats = NumericStats::default();
                for r in 0..table.len() {
                    match table.cell(r, col).number() {
                        None => stats.missing += 1,
                        Some(Ok(v)) => stats.add(v),
                        Some(Err(t)) => {
                            return Err(AlignError::Mismatch {
                                column: name.to_string(),
                                message: format!(
                                    "the fleet's schema says numeric, but data row {} holds {t:?}; fix the data or have the server list the column in align.categorical",
                                    r + 1
                                ),
                            });
                        }
                    }
                }
                Ok(ColumnStats::Numeric(Box::new(stats)))
            }
            ColumnKind::Categorical => {
                let mut stats = CategoryStats::default();
                for r in 0..table.len() {
                    match table.cell(r, col) {
                        Cell::Missing => stats.missing += 1,
                        _ => *stats.counts.entry(table.text(r, col)).or_default() += 1,
                    }
                }
                stats.cap(MAX_LOCAL_CATEGORIES);
                Ok(ColumnStats::Categorical(stats))
            }
        }
    }
}

/// One vehicle's statistics under a schema, on `stats/<client>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    /// [`Schema::id`] of the schema they were computed under.
    pub schema: [u8; 32],
    /// Data rows.
    pub rows: u64,
    /// One entry per schema column, in schema order.
    pub columns: Vec<ColumnStats>,
    /// The schema's head this vehicle labels.
    pub head: u32,
    /// Its label column: categories for classification, numbers for regression.
    pub label: ColumnStats,
}

impl Statistics {
    /// Computes a table's statistics under `schema` (columns matched by name
    /// or alias), for the head of the vehicle's label column `label` in its
    /// model line `line`.
    pub fn collect(
        table: &Table,
        schema: &Schema,
        label: &str,
        line: Option<&str>,
    ) -> Result<Self, AlignError> {
        let no_label = || AlignError::NoLabel {
            label: label.to_string(),
            columns: table.headers.clone(),
        };
        let head = schema.head_for(label, line).ok_or_else(no_label)?;
        let task = &schema.heads[head];
        let columns = schema
            .columns
            .iter()
            .map(|c| match table.headers.iter().position(|h| c.matches(h)) {
                None => Ok(ColumnStats::Absent),
                Some(col) => ColumnStats::of_column(table, col, c.kind, &c.name),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let label_col = table.column(label).ok_or_else(no_label)?;
        let label = ColumnStats::of_column(table, label_col, task.label_kind(), &task.label)?;
        Ok(Self {
            schema: schema.id(),
            rows: table.len() as u64,
            columns,
            head: head as u32,
            label,
        })
    }

    /// Checks a report from the network fits `schema`.
    pub fn check(&self, schema: &Schema) -> Result<(), AlignError> {
        let bad = |message: String| AlignError::Malformed {
            what: "statistics",
            message,
        };
        if self.schema != schema.id() {
            return Err(bad("computed under another schema".into()));
        }
        if self.columns.len() != schema.columns.len() {
            return Err(bad(format!(
                "{} columns, the schema has {}",
                self.columns.len(),
                schema.columns.len()
            )));
        }
        for (stats, column) in self.columns.iter().zip(&schema.columns) {
            if stats.kind().is_some_and(|k| k != column.kind) {
                return Err(bad(format!("column {:?} has the wrong type", column.name)));
            }
            stats_bounds(stats, self.rows)
                .map_err(|m| bad(format!("column {:?}: {m}", column.name)))?;
        }
        let Some(head) = schema.heads.get(self.head as usize) else {
            return Err(bad(format!(
                "head {}, the schema has {}",
                self.head,
                schema.heads.len()
            )));
        };
        if self.label.kind() != Some(head.label_kind()) {
            return Err(bad("label statistics of the wrong type".into()));
        }
        stats_bounds(&self.label, self.rows).map_err(|m| bad(format!("label: {m}")))
    }
}

fn stats_bounds(stats: &ColumnStats, rows: u64) -> Result<(), String> {
    match stats {
        ColumnStats::Absent => Ok(()),
        ColumnStats::Numeric(n) => {
            if n.count.checked_add(n.missing) != Some(rows) {
                return Err(format!("{} + {} cells in {rows} rows", n.count, n.missing));
            }
            if n.count > 0 && !(n.min.is_finite() && n.max.is_finite() && n.min <= n.max) {
                return Err("min/max not finite".into());
            }
            Ok(())
        }
        ColumnStats::Categorical(c) => {
            if c.counts.len() > MAX_LOCAL_CATEGORIES {
                return Err(format!(
                    "{} categories, at most {MAX_LOCAL_CATEGORIES}",
                    c.counts.len()
                ));
            }
            if c.counts
                .keys()
                .any(|k| k.is_empty() || k.len() > super::MAX_NAME)
            {
                return Err(format!(
                    "a category name must be 1 to {} bytes",
                    super::MAX_NAME
                ));
            }
            let total = c.missing.checked_add(c.other).and_then(|start| {
                c.counts
                    .values()
                    .try_fold(start, |acc, v| acc.checked_add(*v))
            });
            if total != Some(rows) {
                return Err(format!("category counts do not add up to {rows} rows"));
            }
            Ok(())
        }
    }
}

/// The merged statistics of every report, column by column (what the
/// pooled data would give: the sums are exact), with each column's count
/// of vehicles lacking it, and each head's label statistics.
pub fn merged<'a>(
    schema: &Schema,
    reports: impl IntoIterator<Item = &'a Statistics>,
) -> (Vec<(ColumnStats, usize)>, Vec<ColumnStats>) {
    let mut columns: Vec<(ColumnStats, usize)> =
        vec![(ColumnStats::Absent, 0); schema.columns.len()];
    let mut labels = vec![ColumnStats::Absent; schema.heads.len()];
    for report in reports {
        for ((merged, absent), stats) in columns.iter_mut().zip(&report.columns) {
            if *stats == ColumnStats::Absent {
                *absent += 1;
            }
            merged.merge(stats);
        }
        if let Some(label) = labels.get_mut(report.head as usize) {
            label.merge(&report.label);
        }
    }
    (columns, labels)
}

/// Turns the fleet's statistics into the model's spec: each numeric
/// feature standardised by the pooled mean and deviation, with a presence
/// input when any cell anywhere is missing or any vehicle lacks it; each
/// categorical feature one-hot over its `max_categories` most frequent
/// categories plus "other"; the classes, or the regression target's scale.
pub fn finish<'a>(
    schema: &Schema,
    reports: impl IntoIterator<Item = &'a Statistics>,
    settings: &AlignSettings,
    hidden: Vec<u32>,
    init_seed: u64,
) -> Result<ModelSpec, AlignError> {
    let (columns, labels) = merged(schema, reports);
    let features = schema
        .columns
        .iter()
        .zip(&columns)
        .map(|(column, (stats, absent))| {
            let encoding = match stats {
                ColumnStats::Numeric(n) => {
                    let (mean, std) = n.scale();
                    Encoding::Numeric {
                        mean,
                        std,
                        mask: n.missing > 0 || *absent > 0,
                    }
                }
                ColumnStats::Categorical(c) => {
                    let mut capped = c.clone();
                    capped.cap(settings.max_categories);
                    Encoding::Categorical {
                        vocabulary: ranked(&capped.counts)
                            .into_iter()
                            .map(str::to_string)
                            .collect(),
                    }
                }
                ColumnStats::Absent => match column.kind {
                    ColumnKind::Numeric => Encoding::Numeric {
                        mean: 0.0,
                        std: 1.0,
                        mask: true,
                    },
                    ColumnKind::Categorical => Encoding::Categorical {
                        vocabulary: Vec::new(),
                    },
                },
            };
            Feature {
                name: column.name.clone(),
                aliases: column.aliases.clone(),
                encoding,
            }
        })
        .collect();
    let heads = schema
        .heads
        .iter()
        .zip(&labels)
        .map(|(head, label)| finish_head(head, label))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = ModelSpec {
        features,
        heads,
        hidden,
        init_seed,
    };
    spec.validate()
        .map_err(|e| AlignError::Empty(e.to_string()))?;
    Ok(spec)
}

/// A head from its label's merged statistics: the classes, or the
/// regression target's scale.
fn finish_head(head: &super::SchemaHead, label: &ColumnStats) -> Result<Head, AlignError> {
    let (classes, target) = match (label, head.task) {
        (ColumnStats::Categorical(c), TaskKind::Classification) => {
            let mut classes: Vec<String> = c.counts.keys().cloned().collect();
            classes.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => x.total_cmp(&y),
                _ => a.cmp(b),
            });
            if classes.len() < 2 {
                return Err(AlignError::Empty(format!(
                    "label {:?} holds {} class(es) across the fleet; classification needs at least two",
                    head.label,
                    classes.len()
                )));
            }
            (classes, TargetScale::default())
        }
        (ColumnStats::Numeric(n), TaskKind::Regression) => {
            if n.count == 0 {
                return Err(AlignError::Empty(format!(
                    "regression label {:?} has no values anywhere in the fleet",
                    head.label
                )));
            }
            let (mean, std) = n.scale();
            (Vec::new(), TargetScale { mean, std })
        }
        _ => {
            return Err(AlignError::Empty(format!(
                "no vehicle reported statistics of label {:?}",
                head.label
            )));
        }
    };
    Ok(Head {
        label: head.label.clone(),
        label_aliases: head.aliases.clone(),
        task: head.task,
        classes,
        target,
        line: head.line.clone(),
    })
}
