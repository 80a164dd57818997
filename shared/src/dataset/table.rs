//! The CSV table: one row-major `f32` matrix with text kept for the columns
//! that are not all numbers.

use super::DataError;
use crate::spec::{ModelSpec, TaskKind};
use std::io::Read;

/// A CSV held as one row-major `f32` matrix (4 bytes a cell, one
/// allocation, so a vehicle's data costs what its cells do), with the cells
/// of any column that holds something other than finite numbers kept as
/// text beside it.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// `len * headers.len()` cells, row after row; NaN in text columns.
    pub(super) numbers: Vec<f32>,
    /// Per column: its cells as text, for columns that are not all numbers.
    pub(super) text: Vec<Option<Vec<String>>>,
    pub(super) len: usize,
}

impl Table {
    /// Reads a CSV with a header row.
    pub fn read(reader: impl Read) -> Result<Self, DataError> {
        let mut csv = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(reader);
        let headers: Vec<String> = csv.headers()?.iter().map(str::to_string).collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = headers.iter().find(|h| !seen.insert(h.as_str())) {
            return Err(DataError::DuplicateColumn(twice.clone()));
        }
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

pub(super) fn parse_cell(cell: &str, row: usize, column: &str) -> Result<f32, DataError> {
    match cell.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(DataError::NotNumeric {
            row: row + 1,
            column: column.to_string(),
            value: cell.to_string(),
        }),
    }
}
