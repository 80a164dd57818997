//! Writing a table's rows back out as CSV: how a split data set becomes
//! the per-vehicle files real agents read.

use convoy_shared::dataset::Table;
use std::path::Path;

/// Writes the given rows of `table` as a CSV with its header.
pub fn write_rows(path: &Path, table: &Table, rows: &[usize]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(&table.headers)?;
    for row in rows {
        w.write_record(table.row(*row))?;
    }
    w.flush()
}
