//! Splitting one CSV into a fleet of per-vehicle CSV files (`simulate
//! --csv`): equal shares, condition skew (each vehicle holds mostly rows
//! of one range or value of a column, as vehicles that drive mostly at
//! night or mostly in one region do) or feature skew (vehicles log
//! different columns). The files then go through the real agents' path,
//! schema and statistics rounds included.

use crate::csv_file;
use anyhow::Context;
use convoy_shared::dataset::{Cell, Table};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::path::{Path, PathBuf};

/// How `--csv` is spread over vehicles (`--csv-split`).
#[derive(Debug, Clone, PartialEq)]
pub enum CsvSplit {
    /// Shuffled, equal shares, every column.
    Iid,
    /// Condition skew: the rows sorted by `column` are cut into one range
    /// per vehicle; then each vehicle keeps `share` of its range and the
    /// rest of its rows are drawn from everyone's.
    Condition {
        /// The column (numbers by value, text by its characters).
        column: String,
        /// Share of each vehicle's rows from its own range, (0, 1].
        share: f64,
    },
    /// Feature skew: the columns other than the label fall into `groups`
    /// groups (round robin); vehicle i does not log group i mod `groups`.
    Features {
        /// Column groups, at least 2.
        groups: usize,
    },
}

impl std::str::FromStr for CsvSplit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            format!(
                "{s:?}: want iid, condition:COLUMN[:SHARE] (share in (0, 1]) or features:GROUPS (at least 2)"
            )
        };
        match parts[..] {
            ["iid"] => Ok(CsvSplit::Iid),
            ["condition", column] | ["condition", column, _] if !column.is_empty() => {
                let share = match parts.get(2) {
                    Some(v) => v.parse::<f64>().map_err(|_| bad())?,
                    None => 0.8,
                };
                if !(share > 0.0 && share <= 1.0) {
                    return Err(bad());
                }
                Ok(CsvSplit::Condition {
                    column: column.to_string(),
                    share,
                })
            }
            ["features", groups] => match groups.parse::<usize>() {
                Ok(g) if g >= 2 => Ok(CsvSplit::Features { groups: g }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for CsvSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CsvSplit::Iid => write!(f, "iid"),
            CsvSplit::Condition { column, share } => write!(f, "condition:{column}:{share}"),
            CsvSplit::Features { groups } => write!(f, "features:{groups}"),
        }
    }
}

/// Row indices per vehicle, and the columns each one logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// Rows of each vehicle.
    pub rows: Vec<Vec<usize>>,
    /// Columns each vehicle logs, in the table's order.
    pub columns: Vec<Vec<usize>>,
}

/// Splits `table` over `vehicles` by `how`, from `seed`; `label` is never
/// dropped.
pub fn split(
    table: &Table,
    label: &str,
    vehicles: usize,
    how: &CsvSplit,
    seed: u64,
) -> anyhow::Result<Fleet> {
    anyhow::ensure!(vehicles >= 1, "--clients must be at least 1");
    let label_col = table
        .column(label)
        .with_context(|| format!("--label {label}: the CSV has no such column"))?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc5f_5917);
    let n = table.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let all: Vec<usize> = (0..table.headers.len()).collect();
    let deal = |order: &[usize]| -> Vec<Vec<usize>> {
        (0..vehicles)
            .map(|v| order.iter().skip(v).step_by(vehicles).copied().collect())
            .collect()
    };
    match how {
        CsvSplit::Iid => Ok(Fleet {
            rows: deal(&order),
            columns: vec![all; vehicles],
        }),
        CsvSplit::Features { groups } => {
            let columns = (0..vehicles)
                .map(|v| {
                    all.iter()
                        .copied()
                        .enumerate()
                        .filter(|(k, c)| {
                            *c == label_col
                                || (k - usize::from(*c > label_col)) % groups != v % groups
                        })
                        .map(|(_, c)| c)
                        .collect()
                })
                .collect();
            Ok(Fleet {
                rows: deal(&order),
                columns,
            })
        }
        CsvSplit::Condition { column, share } => {
            let key = table
                .column(column)
                .with_context(|| format!("--csv-split condition:{column}: no such column"))?;
            // shuffled first, so ties are in random order
            order.sort_by(|a, b| compare(table.cell(*a, key), table.cell(*b, key)));
            let mut rows: Vec<Vec<usize>> = (0..vehicles)
                .map(|v| order[v * n / vehicles..(v + 1) * n / vehicles].to_vec())
                .collect();
            // each vehicle gives 1 - share of its rows to a common pool,
            // dealt back out at random
            let mut pool = Vec::new();
            for own in &mut rows {
                own.shuffle(&mut rng);
                let keep = ((own.len() as f64) * share).round() as usize;
                pool.extend(own.drain(keep.min(own.len())..));
            }
            pool.shuffle(&mut rng);
            for row in pool {
                let v = rng.random_range(0..vehicles);
                rows[v].push(row);
            }
            Ok(Fleet {
                rows,
                columns: vec![all; vehicles],
            })
        }
    }
}

/// Missing first, then numbers by value, then text by its characters.
fn compare(a: Cell<'_>, b: Cell<'_>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let rank = |c: &Cell<'_>| match c {
        Cell::Missing => 0,
        Cell::Number(_) => 1,
        Cell::Text(_) => 2,
    };
    match (a, b) {
        (Cell::Number(x), Cell::Number(y)) => x.total_cmp(&y),
        (Cell::Text(x), Cell::Text(y)) => x.cmp(y),
        (a, b) => rank(&a).cmp(&rank(&b)).then(Ordering::Equal),
    }
}

/// Writes each vehicle's rows and columns of `table` to `dir/vehicle-NNN.csv`
/// (vehicles without rows get no file); returns the files.
pub fn write(table: &Table, fleet: &Fleet, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    for (v, (rows, columns)) in fleet.rows.iter().zip(&fleet.columns).enumerate() {
        if rows.is_empty() {
            continue;
        }
        let path = dir.join(format!("vehicle-{v:03}.csv"));
        csv_file::write_columns(&path, table, rows, columns)
            .with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut text = String::from("hour,speed,rain,label\n");
        for i in 0..240 {
            text.push_str(&format!("{},{},{},{}\n", i % 24, i % 7, i % 2, i % 3));
        }
        Table::read(text.as_bytes()).unwrap()
    }

    #[test]
    fn condition_skew_gives_each_vehicle_mostly_one_range() {
        let t = table();
        let how: CsvSplit = "condition:hour:0.9".parse().unwrap();
        let fleet = split(&t, "label", 4, &how, 7).unwrap();
        let mut seen: Vec<usize> = fleet.rows.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..240).collect::<Vec<_>>(), "every row once");
        let hour = t.column("hour").unwrap();
        for (v, rows) in fleet.rows.iter().enumerate() {
            // vehicle v's own range is hours 6v to 6v + 5
            let own = rows
                .iter()
                .filter(|r| match t.cell(**r, hour) {
                    Cell::Number(h) => (6 * v..6 * v + 6).contains(&(h as usize)),
                    _ => false,
                })
                .count();
            assert!(
                own as f64 >= 0.8 * rows.len() as f64,
                "vehicle {v}: {own}/{}",
                rows.len()
            );
        }
        let iid = split(&t, "label", 4, &CsvSplit::Iid, 7).unwrap();
        assert!(iid.rows.iter().all(|r| r.len() == 60));
    }

    #[test]
    fn feature_skew_drops_a_different_group_per_vehicle_never_the_label() {
        let t = table();
        let fleet = split(&t, "label", 3, &"features:3".parse().unwrap(), 1).unwrap();
        let names = |v: usize| -> Vec<&str> {
            fleet.columns[v]
                .iter()
                .map(|c| t.headers[*c].as_str())
                .collect()
        };
        assert_eq!(names(0), vec!["speed", "rain", "label"]);
        assert_eq!(names(1), vec!["hour", "rain", "label"]);
        assert_eq!(names(2), vec!["hour", "speed", "label"]);
        let dir = tempfile::tempdir().unwrap();
        let files = write(&t, &fleet, dir.path()).unwrap();
        let back = Table::read(std::fs::File::open(&files[1]).unwrap()).unwrap();
        assert_eq!(back.headers, vec!["hour", "rain", "label"]);
        assert_eq!(back.len(), 80);
    }

    #[test]
    fn bad_splits_say_what_is_wanted() {
        for bad in [
            "",
            "condition",
            "condition:hour:0",
            "condition:hour:2",
            "features:1",
            "zip",
        ] {
            let e = bad.parse::<CsvSplit>().unwrap_err();
            assert!(e.contains("condition:COLUMN"), "{e}");
        }
        assert!(split(&table(), "nope", 2, &CsvSplit::Iid, 1).is_err());
        let e = split(&table(), "label", 2, &"condition:nope".parse().unwrap(), 1).unwrap_err();
        assert!(e.to_string().contains("no such column"), "{e}");
    }
}
