//! Tabular data: CSV text in, normalised feature matrices and targets out.
//!
//! Columns are matched by name (or alias) against the model spec, so
//! vehicles whose CSVs order columns differently still feed the same model.
//! Each feature is encoded as its spec says: a numeric cell standardised,
//! followed by a presence input (1 present, 0 missing) when the fleet has
//! gaps; a categorical cell one-hot over the fleet's vocabulary, with an
//! "other" input and all zeros for a missing cell. A feature the CSV lacks
//! altogether is encoded as missing and reported. Readers are passed in;
//! this module opens no files, and it hands out plain numbers: turning them
//! into tensors is the model's business.

mod table;

#[cfg(test)]
mod tests;

pub use table::{Cell, Table, is_missing};

use crate::spec::{Encoding, ModelSpec, TaskKind};
use std::io::Read;
use thiserror::Error;

/// Training targets of a batch or a dataset.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Class indices.
    Classes(Vec<u32>),
    /// Regression values.
    Values(Vec<f32>),
}

impl Targets {
    /// Number of targets.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Values(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The targets at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Targets {
        match self {
            Targets::Classes(c) => Targets::Classes(indices.iter().map(|i| c[*i]).collect()),
            Targets::Values(v) => Targets::Values(indices.iter().map(|i| v[*i]).collect()),
        }
    }
}

/// Some rows of a dataset: row-major features and their targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `dims` normalised features per row, row after row.
    pub features: Vec<f32>,
    /// Features per row.
    pub dims: usize,
    /// One target per row.
    pub targets: Targets,
}

/// Why a CSV could not become a dataset.
#[derive(Debug, Error)]
pub enum DataError {
    /// The CSV itself is malformed.
    #[error("CSV: {0}")]
    Csv(#[from] csv::Error),
    /// The label column is absent.
    #[error("label column {label:?} not found; columns are {columns:?}")]
    NoLabel {
        /// configured label
        label: String,
        /// columns present
        columns: Vec<String>,
    },
    /// A cell is not a number where one is needed.
    #[error(
        "row {row}, column {column:?}: {value:?} is not a number, but the model's spec says the column is numeric"
    )]
    NotNumeric {
        /// 1-based data row
        row: usize,
        /// column name
        column: String,
        /// cell text
        value: String,
    },
    /// Two columns share a name, so matching by name would be ambiguous.
    #[error("column {0:?} appears more than once in the header")]
    DuplicateColumn(String),
    /// No usable rows.
    #[error("no usable rows ({skipped} skipped for missing or unknown labels)")]
    Empty {
        /// rows skipped
        skipped: usize,
    },
}

/// How a table's columns and rows map onto a spec: the column of each
/// feature, the rows kept (their label is present and, for
/// classification, one of the spec's classes) and their targets.
struct Source {
    head: usize,
    cols: Vec<Option<usize>>,
    kept: Vec<usize>,
    targets: Targets,
    missing_features: Vec<String>,
    skipped_rows: usize,
}

impl Source {
    fn match_spec(table: &Table, spec: &ModelSpec, head: Option<usize>) -> Result<Self, DataError> {
        let no_label = || DataError::NoLabel {
            label: match head.and_then(|h| spec.heads.get(h)) {
                Some(h) => h.label.clone(),
                None => spec
                    .heads
                    .iter()
                    .map(|h| h.label.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
            },
            columns: table.headers.clone(),
        };
        let head = match head {
            Some(h) if h < spec.heads.len() => h,
            Some(_) => return Err(no_label()),
            None => spec.head_in(&table.headers).ok_or_else(no_label)?,
        };
        let task = &spec.heads[head];
        let label_col = table
            .headers
            .iter()
            .position(|h| task.matches(h))
            .ok_or_else(no_label)?;
        let cols: Vec<Option<usize>> = spec
            .features
            .iter()
            .map(|f| table.headers.iter().position(|h| f.matches(h)))
            .collect();
        let missing_features = spec
            .features
            .iter()
            .zip(&cols)
            .filter(|(_, c)| c.is_none())
            .map(|(f, _)| f.name.clone())
            .collect();
        let mut kept = Vec::with_capacity(table.len());
        let mut classes = Vec::new();
        let mut values = Vec::new();
        for r in 0..table.len() {
            let cell = table.cell(r, label_col);
            match (task.task, cell.number()) {
                (_, None) => continue,
                (TaskKind::Classification, _) => {
                    let label = table.text(r, label_col);
                    match task.classes.iter().position(|c| *c == label) {
                        Some(class) => classes.push(class as u32),
                        None => continue,
                    }
                }
                (TaskKind::Regression, Some(Ok(v))) => {
                    values.push((v - task.target.mean) / task.target.std)
                }
                (TaskKind::Regression, Some(Err(t))) => {
                    return Err(DataError::NotNumeric {
                        row: r + 1,
                        column: table.headers[label_col].clone(),
                        value: t.to_string(),
                    });
                }
            }
            kept.push(r);
        }
        let skipped_rows = table.len() - kept.len();
        let targets = match task.task {
            TaskKind::Classification => Targets::Classes(classes),
            TaskKind::Regression => Targets::Values(values),
        };
        if targets.is_empty() {
            return Err(DataError::Empty {
                skipped: skipped_rows,
            });
        }
        Ok(Self {
            head,
            cols,
            kept,
            targets,
            missing_features,
            skipped_rows,
        })
    }

    fn into_dataset(self, features: Vec<f32>, dims: usize) -> Dataset {
        Dataset {
            features,
            dims,
            head: self.head,
            targets: self.targets,
            missing_features: self.missing_features,
            skipped_rows: self.skipped_rows,
        }
    }
}

/// SplitMix64: a well-mixed hash of a counter.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends the inputs of one cell (`None`: the column is absent) encoded as
/// `encoding` says.
fn encode_cell(
    out: &mut Vec<f32>,
    encoding: &Encoding,
    cell: Option<Cell<'_>>,
    table: &Table,
    (row, col): (usize, usize),
) -> Result<(), DataError> {
    match encoding {
        Encoding::Numeric { mean, std, mask } => {
            let value = match cell.and_then(|c| c.number()) {
                Some(Ok(v)) => Some((v - mean) / std),
                Some(Err(t)) => {
                    return Err(DataError::NotNumeric {
                        row: row + 1,
                        column: table.headers[col].clone(),
                        value: t.to_string(),
                    });
                }
                None => None,
            };
            out.push(value.unwrap_or(0.0));
            if *mask {
                out.push(if value.is_some() { 1.0 } else { 0.0 });
            }
        }
        Encoding::Categorical { vocabulary } => {
            let start = out.len();
            out.resize(start + vocabulary.len() + 1, 0.0);
            let category = match cell {
                Some(Cell::Missing) | None => None,
                Some(Cell::Text(t)) => Some(vocabulary.iter().position(|v| v == t)),
                Some(Cell::Number(_)) => {
                    let text = table.text(row, col);
                    Some(vocabulary.iter().position(|v| *v == text))
                }
            };
            if let Some(index) = category {
                out[start + index.unwrap_or(vocabulary.len())] = 1.0;
            }
        }
    }
    Ok(())
}

/// Encoded features and targets, ready for batching.
#[derive(Debug, Clone)]
pub struct Dataset {
    features: Vec<f32>,
    dims: usize,
    /// The spec's head whose label the targets are.
    head: usize,
    targets: Targets,
    /// Spec features the source lacked (encoded as missing).
    pub missing_features: Vec<String>,
    /// Rows dropped because their label is missing or not one of the spec's classes.
    pub skipped_rows: usize,
}

impl Dataset {
    /// Builds a dataset from a table, matching columns to `spec` by name;
    /// the targets are those of the first head whose label the table has.
    pub fn from_table(table: &Table, spec: &ModelSpec) -> Result<Self, DataError> {
        Self::from_table_for(table, spec, None)
    }

    /// [`Dataset::from_table`] for head `head` (`None`: the first head whose
    /// label the table has), for a vehicle that logs several labels.
    pub fn from_table_for(
        table: &Table,
        spec: &ModelSpec,
        head: Option<usize>,
    ) -> Result<Self, DataError> {
        let source = Source::match_spec(table, spec, head)?;
        let dims = spec.inputs();
        let mut features = Vec::with_capacity(source.kept.len() * dims);
        for &r in &source.kept {
            for (feature, col) in spec.features.iter().zip(&source.cols) {
                let cell = col.map(|c| table.cell(r, c));
                encode_cell(
                    &mut features,
                    &feature.encoding,
                    cell,
                    table,
                    (r, col.unwrap_or(0)),
                )?;
            }
        }
        Ok(source.into_dataset(features, dims))
    }

    /// [`Dataset::from_table`] that reuses the table's memory for the
    /// features when every feature is a plain numeric column the table
    /// holds as numbers (the usual case for sensor logs), so the data is
    /// never held twice; otherwise it copies.
    pub fn from_owned_table(
        table: Table,
        spec: &ModelSpec,
        head: Option<usize>,
    ) -> Result<Self, DataError> {
        let source = Source::match_spec(&table, spec, head)?;
        let dims = spec.inputs();
        let width = table.headers.len();
        let plain: Option<Vec<(usize, f32, f32)>> = spec
            .features
            .iter()
            .zip(&source.cols)
            .map(|(f, c)| match (&f.encoding, c) {
                (
                    Encoding::Numeric {
                        mean,
                        std,
                        mask: false,
                    },
                    Some(c),
                ) if table.is_numeric(*c) => Some((*c, *mean, *std)),
                _ => None,
            })
            .collect();
        let (Some(plain), true) = (plain, dims <= width) else {
            return Self::from_table_for(&table, spec, Some(source.head));
        };
        let mut cells = table.numbers;
        let mut row = vec![0f32; dims];
        // Row `out` lands at or before where source row `r >= out` starts and
        // ends before the next source row begins (dims <= width), so every
        // cell is read before it is overwritten.
        for (out, &r) in source.kept.iter().enumerate() {
            for (i, &(c, mean, std)) in plain.iter().enumerate() {
                let v = cells[r * width + c];
                // without a presence input a missing cell is the mean
                row[i] = if v.is_nan() { 0.0 } else { (v - mean) / std };
            }
            cells[out * dims..(out + 1) * dims].copy_from_slice(&row);
        }
        cells.truncate(source.kept.len() * dims);
        cells.shrink_to_fit();
        Ok(source.into_dataset(cells, dims))
    }

    /// A dataset from already-normalised row-major features (`dims` per
    /// row) and their targets; `None` when the sizes disagree.
    pub fn from_arrays(features: Vec<f32>, dims: usize, targets: Targets) -> Option<Self> {
        (dims > 0 && features.len() == targets.len() * dims).then_some(Self {
            features,
            dims,
            targets,
            head: 0,
            missing_features: Vec::new(),
            skipped_rows: 0,
        })
    }

    /// The rows at `indices` as a new dataset.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut features = Vec::with_capacity(indices.len() * self.dims);
        for &i in indices {
            features.extend_from_slice(&self.features[i * self.dims..(i + 1) * self.dims]);
        }
        Self {
            features,
            dims: self.dims,
            head: self.head,
            targets: self.targets.select(indices),
            missing_features: self.missing_features.clone(),
            skipped_rows: 0,
        }
    }

    /// Splits off about `share` of the rows (each row by a hash of its index
    /// and `seed`, so the same rows every time) as a held-out set; `None`
    /// when that would leave either side empty.
    pub fn split_holdout(self, share: f64, seed: u64) -> (Self, Option<Self>) {
        if !(share > 0.0 && share < 1.0) || self.len() < 2 {
            return (self, None);
        }
        let cut = (share * u32::MAX as f64) as u64;
        let (held, kept): (Vec<usize>, Vec<usize>) =
            (0..self.len()).partition(|i| (splitmix(seed ^ *i as u64) >> 32) < cut);
        if held.is_empty() || kept.is_empty() {
            return (self, None);
        }
        let holdout = self.subset(&held);
        let mut train = self.subset(&kept);
        train.skipped_rows = self.skipped_rows;
        (train, Some(holdout))
    }

    /// Holds out the last `share` of the rows (at least one, and at least
    /// one left to train on): for rows in time order, the newest.
    pub fn split_holdout_tail(self, share: f64) -> (Self, Option<Self>) {
        if !(share > 0.0 && share < 1.0) || self.len() < 2 {
            return (self, None);
        }
        let n = self.len();
        let held = ((share * n as f64).round() as usize).clamp(1, n - 1);
        let (kept, held): (Vec<usize>, Vec<usize>) =
            ((0..n - held).collect(), (n - held..n).collect());
        let holdout = self.subset(&held);
        let mut train = self.subset(&kept);
        train.skipped_rows = self.skipped_rows;
        (train, Some(holdout))
    }

    /// Reads a CSV and builds a dataset for `spec`.
    pub fn from_csv(reader: impl Read, spec: &ModelSpec) -> Result<Self, DataError> {
        Self::from_table(&Table::read(reader)?, spec)
    }

    /// The spec's head the targets belong to.
    pub fn head(&self) -> usize {
        self.head
    }

    /// The same rows as targets of head `head` (prepared data whose
    /// targets belong to another head than the first).
    pub fn with_head(mut self, head: usize) -> Self {
        self.head = head;
        self
    }

    /// Input features per row.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All targets.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The rows at `indices`, in that order.
    pub fn batch(&self, indices: &[usize]) -> Batch {
        let mut features = Vec::with_capacity(indices.len() * self.dims);
        for &i in indices {
            features.extend_from_slice(&self.features[i * self.dims..(i + 1) * self.dims]);
        }
        Batch {
            features,
            dims: self.dims,
            targets: self.targets.select(indices),
        }
    }
}
