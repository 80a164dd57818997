//! Writing a table's rows back out as CSV: how a split data set becomes
//! the per-vehicle files real agents read.

use convoy_shared::dataset::Table;
use std::path::Path;

/// Writes the given rows of `table` as a CSV with its header.
pub fn write_rows(path: &Path, table: &Table, rows: &[usize]) -> std::io::Result<()> {
    let all: Vec<usize> = (0..table.headers.len()).collect();
    write_columns(path, table, rows, &all)
}

/// Writes the given rows and columns of `table` as a CSV with their header.
pub fn write_columns(
    path: &Path,
    table: &Table,
    rows: &[usize],
    columns: &[usize],
) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(columns.iter().map(|c| &table.headers[*c]))?;
    for row in rows {
        w.write_record(columns.iter().map(|c| table.text(*row, *c)))?;
    }
    w.flush()
}
