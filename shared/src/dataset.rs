//! Tabular data: CSV text in, normalised feature matrices and targets out.
//!
//! Columns are matched by name against the model spec, so vehicles whose
//! CSVs order columns differently still feed the same model. A feature the
//! CSV lacks is imputed with its mean (zero after normalisation) and
//! reported, so a fleet with uneven sensors can still train together.
//! Readers are passed in; this module opens no files, and it hands out
//! plain numbers: turning them into tensors is the model's business.

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
    /// No usable rows.
    #[error("no usable rows ({skipped} skipped for unknown labels)")]
    Empty {
        /// rows skipped
        skipped: usize,
    },
}

/// A CSV held as one row-major `f32` matrix (4 bytes a cell, one
/// allocation, so a vehicle's data costs what its cells do), with the cells
/// of any column that holds something other than finite numbers kept as
/// text beside it.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// `len * headers.len()` cells, row after row; NaN in text columns.
    numbers: Vec<f32>,
    /// Per column: its cells as text, for columns that are not all numbers.
    text: Vec<Option<Vec<String>>>,
    len: usize,
}

impl Table {
    /// Reads a CSV with a header row.
    pub fn read(reader: impl Read) -> Result<Self, DataError> {
        let mut csv = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(reader);
        let headers: Vec<String> = csv.headers()?.iter().map(str::to_string).collect();
        let width = headers.len();
        let mut numbers = Vec::new();
        let mut text: Vec<Option<Vec<String>>> = vec![None; width];
        let mut record = csv::StringRecord::new();
        let mut len = 0;
        while csv.read_record(&mut record)? {
            for (c, column) in text.iter_mut().enumerate() {
                let cell = record.get(c).unwrap_or_default();
                match column {
                    Some(cells) => {
                        cells.push(cell.to_string());
                        numbers.push(f32::NAN);
                    }
                    None => match cell.parse::<f32>() {
                        Ok(v) if v.is_finite() => numbers.push(v),
                        _ => {
                            // The column turns out to be text: keep what it held so far.
                            let mut cells: Vec<String> = (0..len)
                                .map(|r| numbers[r * width + c].to_string())
                                .collect();
                            cells.push(cell.to_string());
                            *column = Some(cells);
                            numbers.push(f32::NAN);
                        }
                    },
                }
            }
            len += 1;
        }
        numbers.shrink_to_fit();
        Ok(Self {
            headers,
            numbers,
            text,
            len,
        })
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no data rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }

    /// A cell as text (numbers in their shortest form, e.g. `3` for `3.0`).
    pub fn text(&self, row: usize, col: usize) -> String {
        match &self.text[col] {
            Some(cells) => cells[row].clone(),
            None => self.numbers[row * self.headers.len() + col].to_string(),
        }
    }

    /// A cell as a finite number, or an error naming row and column.
    pub fn number(&self, row: usize, col: usize) -> Result<f32, DataError> {
        match &self.text[col] {
            Some(cells) => parse_cell(&cells[row], row, &self.headers[col]),
            None => Ok(self.numbers[row * self.headers.len() + col]),
        }
    }

    /// A whole row as text cells (for writing CSVs).
    pub fn row(&self, row: usize) -> Vec<String> {
        (0..self.headers.len()).map(|c| self.text(row, c)).collect()
    }

    /// Derives a spec from this table: every column but the label is a
    /// numeric feature, normalised by its mean and standard deviation; the
    /// classes are the label's distinct values, numerically sorted when
    /// they are numbers.
    pub fn derive_spec(
        &self,
        label: &str,
        task: TaskKind,
        hidden: Vec<u32>,
        init_seed: u64,
    ) -> Result<ModelSpec, DataError> {
        let label_col = self.column(label).ok_or_else(|| DataError::NoLabel {
            label: label.to_string(),
            columns: self.headers.clone(),
        })?;
        let feature_cols: Vec<usize> = (0..self.headers.len())
            .filter(|c| *c != label_col)
            .collect();
        let mut norm_mean = Vec::new();
        let mut norm_std = Vec::new();
        for &c in &feature_cols {
            let (mut count, mut sum, mut sum_sq) = (0f64, 0f64, 0f64);
            for r in 0..self.len {
                let v = self.number(r, c)? as f64;
                count += 1.0;
                sum += v;
                sum_sq += v * v;
            }
            let mean = if count > 0.0 { sum / count } else { 0.0 };
            let var = if count > 0.0 {
                (sum_sq / count - mean * mean).max(0.0)
            } else {
                0.0
            };
            norm_mean.push(mean as f32);
            // constant columns keep scale 1 so they normalise to zero, not NaN
            norm_std.push(if var > 1e-12 { var.sqrt() as f32 } else { 1.0 });
        }
        let classes = match task {
            TaskKind::Regression => Vec::new(),
            TaskKind::Classification => {
                let mut classes: Vec<String> =
                    (0..self.len).map(|r| self.text(r, label_col)).collect();
                classes.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
                    (Ok(x), Ok(y)) => x.total_cmp(&y),
                    _ => a.cmp(b),
                });
                classes.dedup();
                classes
            }
        };
        Ok(ModelSpec {
            task,
            features: feature_cols
                .iter()
                .map(|c| self.headers[*c].clone())
                .collect(),
            norm_mean,
            norm_std,
            label: label.to_string(),
            classes,
            hidden,
            init_seed,
        })
    }
}

fn parse_cell(cell: &str, row: usize, column: &str) -> Result<f32, DataError> {
    match cell.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(DataError::NotNumeric {
            row: row + 1,
            column: column.to_string(),
            value: cell.to_string(),
        }),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "b,a,y\n1,10,yes\n3,20,no\n5,30,yes\n7,40,maybe\n";

    #[test]
    fn derives_spec_and_matches_columns_by_name() {
        let table = Table::read(CSV.as_bytes()).unwrap();
        let mut spec = table
            .derive_spec("y", TaskKind::Classification, vec![4], 1)
            .unwrap();
        assert_eq!(spec.features, vec!["b", "a"]);
        assert_eq!(spec.classes, vec!["maybe", "no", "yes"]);
        assert!((spec.norm_mean[0] - 4.0).abs() < 1e-6);
        spec.classes.retain(|c| c != "maybe");
        // reordered columns and an extra one still line up by name
        let other = "extra,a,y,b\n0,25,no,4\n0,25,maybe,4\n";
        let data = Dataset::from_csv(other.as_bytes(), &spec).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data.skipped_rows, 1);
        assert_eq!(data.features, vec![0.0, 0.0]);
    }

    #[test]
    fn missing_feature_is_imputed_and_reported() {
        let table = Table::read(CSV.as_bytes()).unwrap();
        let spec = table
            .derive_spec("y", TaskKind::Classification, vec![], 1)
            .unwrap();
        let data = Dataset::from_csv("a,y\n20,no\n".as_bytes(), &spec).unwrap();
        assert_eq!(data.missing_features, vec!["b"]);
    }

    #[test]
    fn owned_table_gives_the_same_dataset_without_a_second_copy() {
        let spec = Table::read(CSV.as_bytes())
            .unwrap()
            .derive_spec("y", TaskKind::Classification, vec![4], 1)
            .unwrap();
        let mut spec = spec;
        spec.classes.retain(|c| c != "maybe");
        for csv in [
            // reordered, an extra column, a skipped row (in place)
            "extra,a,y,b\n0,25,no,4\n0,25,maybe,4\n9,10,yes,1\n1,30,yes,7\n",
            // a feature missing (copies)
            "a,y\n20,no\n30,yes\n",
            // a text column that is not a feature, and one that is (copies, then errors)
            "note,a,b,y\nx,10,1,yes\ny,20,3,no\n",
            "a,b,y\n10,1,yes\n20,oops,no\n",
        ] {
            let copied = Dataset::from_table(&Table::read(csv.as_bytes()).unwrap(), &spec);
            let owned = Dataset::from_owned_table(Table::read(csv.as_bytes()).unwrap(), &spec);
            match (copied, owned) {
                (Ok(c), Ok(o)) => {
                    assert_eq!(c.features, o.features, "{csv}");
                    assert_eq!(c.targets(), o.targets(), "{csv}");
                    assert_eq!(c.skipped_rows, o.skipped_rows);
                    assert_eq!(c.missing_features, o.missing_features);
                    assert_eq!(o.features.len(), o.len() * o.dims());
                }
                (Err(c), Err(o)) => assert_eq!(c.to_string(), o.to_string()),
                (c, o) => panic!("{csv}: {c:?} vs {o:?}"),
            }
        }
    }

    #[test]
    fn text_cells_survive_a_column_turning_to_text() {
        let table = Table::read("a,y\n1.5,yes\n2,no\nn/a,yes\n".as_bytes()).unwrap();
        assert_eq!(table.text(0, 0), "1.5");
        assert_eq!(table.text(2, 0), "n/a");
        assert_eq!(table.number(1, 0).unwrap(), 2.0);
        assert!(table.number(2, 0).is_err());
        assert_eq!(table.row(1), vec!["2", "no"]);
    }

    #[test]
    fn bad_cells_say_where() {
        let table = Table::read("a,y\n1,0\nx,1\n".as_bytes()).unwrap();
        let err = table
            .derive_spec("y", TaskKind::Regression, vec![], 1)
            .unwrap_err();
        assert!(err.to_string().contains("row 2"), "{err}");
        let err = table
            .derive_spec("label", TaskKind::Regression, vec![], 1)
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }
}
