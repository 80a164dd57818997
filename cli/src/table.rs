//! Output formats of the operator commands: aligned tables for people,
//! CSV and JSON for scripts.

use convoy_store::StoreError;
use serde::Serialize;
use std::fmt::Write as _;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Appends one `label  value` line per pair, indented two spaces, the
/// values in one column (the answers of `plan` and `models transfer`).
pub fn aligned_lines(out: &mut String, lines: &[(&str, String)]) {
    let width = lines
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    for (label, value) in lines {
        let _ = writeln!(out, "  {label:<width$}  {value}");
    }
}

/// A formatting failure, as the commands report store errors.
pub fn report_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Blob {
        path: "report".into(),
        message: e.to_string(),
    }
}

/// Rows as CSV with a header row.
pub fn to_csv<T: Serialize>(rows: &[T]) -> Result<String, StoreError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row).map_err(report_error)?;
    }
    let bytes = w.into_inner().map_err(report_error)?;
    String::from_utf8(bytes).map_err(report_error)
}

/// Rows as a pretty-printed JSON array of objects.
pub fn to_json<T: Serialize>(rows: &[T]) -> Result<String, StoreError> {
    serde_json::to_string_pretty(rows).map_err(report_error)
}

/// Aligned columns: every header sits over its values because both are
/// laid out from the same widths. Text columns (`left`) are left-aligned;
/// the last column is free text and not padded.
pub fn table(headers: &[&str], left: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, name)) in cells.zip(headers).enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let w = widths[i];
            if i + 1 == headers.len() {
                out.push_str(cell);
            } else if left.contains(name) {
                let _ = write!(out, "{cell:<w$}");
            } else {
                let _ = write!(out, "{cell:>w$}");
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(&mut headers.iter().copied());
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_lines_share_one_value_column() {
        let mut out = String::new();
        aligned_lines(
            &mut out,
            &[("sent", "1 B".into()), ("full model", "2 B".into())],
        );
        assert_eq!(out, "  sent        1 B\n  full model  2 B\n");
    }
}
