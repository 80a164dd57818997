//! Tabular data: CSV text in, normalised feature matrices and targets out.
//!
//! Columns are matched by name against the model spec, so vehicles whose
//! CSVs order columns differently still feed the same model. A feature the
//! CSV lacks is imputed with its mean (zero after normalisation) and
//! reported, so a fleet with uneven sensors can still train together.
//! Readers are passed in; this module opens no files, and it hands out
//! plain numbers: turning them into tensors is the model's business.

mod table;

#[cfg(test)]
mod tests;

pub use table::Table;

use crate::spec::{ModelSpec, TaskKind};
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
    #[error("row {row}, column {column:?}: {value:?} is not a number")]
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
    #[error("no usable rows ({skipped} skipped for unknown labels)")]
    Empty {
        /// rows skipped
        skipped: usize,
    },
}

/// How a table's columns and rows map onto a spec: the column of each
/// feature, the rows kept (their label is one of the spec's classes) and
/// their targets.
struct Source {
    cols: Vec<Option<usize>>,
    kept: Vec<usize>,
    targets: Targets,
    missing_features: Vec<String>,
    skipped_rows: usize,
}

impl Source {
    fn match_spec(table: &Table, spec: &ModelSpec) -> Result<Self, DataError> {
        let label_col = table
            .column(&spec.label)
            .ok_or_else(|| DataError::NoLabel {
                label: spec.label.clone(),
                columns: table.headers.clone(),
            })?;
        let cols: Vec<Option<usize>> = spec.features.iter().map(|f| table.column(f)).collect();
        let missing_features = spec
            .features
            .iter()
            .zip(&cols)
            .filter(|(_, c)| c.is_none())
            .map(|(f, _)| f.clone())
            .collect();
        let mut kept = Vec::with_capacity(table.len());
        let mut classes = Vec::new();
        let mut values = Vec::new();
        for r in 0..table.len() {
            match spec.task {
                TaskKind::Classification => {
                    let label = table.text(r, label_col);
                    match spec.classes.iter().position(|c| *c == label) {
                        Some(class) => classes.push(class as u32),
                        None => continue,
                    }
                }
                TaskKind::Regression => values.push(table.number(r, label_col)?),
            }
            kept.push(r);
        }
        let skipped_rows = table.len() - kept.len();
        let targets = match spec.task {
            TaskKind::Classification => Targets::Classes(classes),
            TaskKind::Regression => Targets::Values(values),
        };
        if targets.is_empty() {
            return Err(DataError::Empty {
                skipped: skipped_rows,
            });
        }
        Ok(Self {
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
            targets: self.targets,
            missing_features: self.missing_features,
            skipped_rows: self.skipped_rows,
        }
    }
}

/// Normalised features and targets, ready for batching.
#[derive(Debug, Clone)]
pub struct Dataset {
    features: Vec<f32>,
    dims: usize,
    targets: Targets,
    /// Spec features the source lacked (imputed with their mean).
    pub missing_features: Vec<String>,
    /// Rows dropped because their label is not one of the spec's classes.
    pub skipped_rows: usize,
}

impl Dataset {
    /// Builds a dataset from a table, matching columns to `spec` by name.
    pub fn from_table(table: &Table, spec: &ModelSpec) -> Result<Self, DataError> {
        let source = Source::match_spec(table, spec)?;
        let dims = spec.inputs();
        let mut features = Vec::with_capacity(source.kept.len() * dims);
        for &r in &source.kept {
            for (i, col) in source.cols.iter().enumerate() {
                let normalised = match col {
                    Some(c) => (table.number(r, *c)? - spec.norm_mean[i]) / spec.norm_std[i],
                    None => 0.0,
                };
                features.push(normalised);
            }
        }
        Ok(source.into_dataset(features, dims))
    }

    /// [`Dataset::from_table`] that reuses the table's memory for the
    /// features when every feature is a numeric column (the usual case), so
    /// the data is never held twice; otherwise it copies.
    pub fn from_owned_table(table: Table, spec: &ModelSpec) -> Result<Self, DataError> {
        let source = Source::match_spec(&table, spec)?;
        let dims = spec.inputs();
        let width = table.headers.len();
        let numeric: Option<Vec<usize>> = source
            .cols
            .iter()
            .map(|c| c.filter(|c| table.text[*c].is_none()))
            .collect();
        let (Some(numeric), true) = (numeric, dims <= width) else {
            return Self::from_table(&table, spec);
        };
        let mut cells = table.numbers;
        let mut row = vec![0f32; dims];
        // Row `out` lands at or before where source row `r >= out` starts and
        // ends before the next source row begins (dims <= width), so every
        // cell is read before it is overwritten.
        for (out, &r) in source.kept.iter().enumerate() {
            for (i, &c) in numeric.iter().enumerate() {
                row[i] = (cells[r * width + c] - spec.norm_mean[i]) / spec.norm_std[i];
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
            targets: self.targets.select(indices),
            missing_features: self.missing_features.clone(),
            skipped_rows: 0,
        }
    }

    /// Reads a CSV and builds a dataset for `spec`.
    pub fn from_csv(reader: impl Read, spec: &ModelSpec) -> Result<Self, DataError> {
        Self::from_table(&Table::read(reader)?, spec)
    }

    /// Features per row.
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
