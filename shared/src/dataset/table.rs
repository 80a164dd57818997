//! The CSV table: one row-major `f32` matrix with text kept for the columns
//! that are not all numbers, and missing cells known as missing.

use super::DataError;

use std::io::Read;

/// Is this cell text a missing value: empty, `NA`, `N/A`, `NaN` or `null`
/// (any case)? An infinite number counts as missing too: no sensor reads it.
pub fn is_missing(cell: &str) -> bool {
    cell.is_empty()
        || ["na", "n/a", "nan", "null"]
            .iter()
            .any(|m| cell.eq_ignore_ascii_case(m))
}

/// One cell of a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// Empty or a missing-value marker.
    Missing,
    /// A finite number in a numeric column.
    Number(f32),
    /// A cell of a column that is not all numbers.
    Text(&'a str),
}

impl<'a> Cell<'a> {
    /// The cell as a number: `None` when missing, `Err(text)` when it is
    /// text that is not a finite number.
    pub fn number(self) -> Option<Result<f32, &'a str>> {
        match self {
            Cell::Missing => None,
            Cell::Number(v) => Some(Ok(v)),
            Cell::Text(t) => Some(match t.parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(t),
            }),
        }
    }
}

/// A CSV held as one row-major `f32` matrix (4 bytes a cell, one
/// allocation, so a vehicle's data costs what its cells do; NaN where a
/// cell is missing), with the cells of any column that holds something
/// other than numbers and missing markers kept as text beside it.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// `len * headers.len()` cells, row after row; NaN in text columns and
    /// for missing cells.
    pub(super) numbers: Vec<f32>,
    /// Per column: its cells as text (missing ones empty), for columns that
    /// are not all numbers.
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
                let missing = is_missing(cell);
                match column {
                    Some(cells) => {
                        cells.push(if missing {
                            String::new()
                        } else {
                            cell.to_string()
                        });
                        numbers.push(f32::NAN);
                    }
                    None if missing => numbers.push(f32::NAN),
                    None => match cell.parse::<f32>() {
                        Ok(v) if v.is_finite() => numbers.push(v),
                        Ok(_) => numbers.push(f32::NAN),
                        Err(_) => {
                            // The column turns out to be text: keep what it held so far.
                            let mut cells: Vec<String> = (0..len)
                                .map(|r| {
                                    let v = numbers[r * width + c];
                                    if v.is_nan() {
                                        String::new()
                                    } else {
                                        v.to_string()
                                    }
                                })
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

    /// Is column `col` all numbers (and missing cells)?
    pub fn is_numeric(&self, col: usize) -> bool {
        self.text[col].is_none()
    }

    /// A cell.
    pub fn cell(&self, row: usize, col: usize) -> Cell<'_> {
        match &self.text[col] {
            Some(cells) if cells[row].is_empty() => Cell::Missing,
            Some(cells) => Cell::Text(&cells[row]),
            None => {
                let v = self.numbers[row * self.headers.len() + col];
                if v.is_nan() {
                    Cell::Missing
                } else {
                    Cell::Number(v)
                }
            }
        }
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

    /// A cell as text (numbers in their shortest form, e.g. `3` for `3.0`;
    /// missing cells empty).
    pub fn text(&self, row: usize, col: usize) -> String {
        match self.cell(row, col) {
            Cell::Missing => String::new(),
            Cell::Number(v) => v.to_string(),
            Cell::Text(t) => t.to_string(),
        }
    }

    /// A whole row as text cells (for writing CSVs).
    pub fn row(&self, row: usize) -> Vec<String> {
        (0..self.headers.len()).map(|c| self.text(row, c)).collect()
    }

    /// The rows in ascending order of column `name` (numbers by value,
    /// text such as ISO 8601 timestamps by its characters; rows missing it
    /// first, ties in file order), without that column: a time-ordered
    /// table whose clock is not a model input. `None` when there is no
    /// such column.
    pub fn ordered_by(&self, name: &str) -> Option<Table> {
        let key = self.column(name)?;
        let mut order: Vec<usize> = (0..self.len).collect();
        match &self.text[key] {
            Some(cells) => order.sort_by(|a, b| cells[*a].cmp(&cells[*b])),
            None => {
                let width = self.headers.len();
                let at = |r: usize| self.numbers[r * width + key];
                order.sort_by(|a, b| match (at(*a).is_nan(), at(*b).is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Less,
                    (false, true) => std::cmp::Ordering::Greater,
                    (false, false) => at(*a).total_cmp(&at(*b)),
                });
            }
        }
        let width = self.headers.len();
        let kept: Vec<usize> = (0..width).filter(|c| *c != key).collect();
        let mut numbers = Vec::with_capacity(self.len * kept.len());
        for r in &order {
            numbers.extend(kept.iter().map(|c| self.numbers[r * width + c]));
        }
        Some(Table {
            headers: kept.iter().map(|c| self.headers[*c].clone()).collect(),
            numbers,
            text: kept
                .iter()
                .map(|c| {
                    self.text[*c]
                        .as_ref()
                        .map(|cells| order.iter().map(|r| cells[*r].clone()).collect())
                })
                .collect(),
            len: self.len,
        })
    }
}
