//! `models eval`: a version scored on a CSV through its own pipeline.

use super::*;

/// `models eval`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Version id or prefix.
    pub id: String,
    /// CSV with a header row.
    #[arg(long)]
    pub csv: PathBuf,
}

/// Runs `models eval` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(eval(db, &args.id, &args.csv)?)
}

/// Scores version `id` on a CSV through the model's own pipeline (columns
/// matched by name, missing ones encoded as missing), once per head whose
/// label the CSV has.
pub fn eval(db: &Path, id: &str, csv: &Path) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let hex = store.resolve_version(id)?;
    let v = store.load_version(&hex)?;
    let file = std::fs::File::open(csv).map_err(|e| blob_error(csv, e.to_string()))?;
    let table = convoy_shared::dataset::Table::read(std::io::BufReader::new(file))
        .map_err(|e| blob_error(csv, e.to_string()))?;
    let mut out = format!("version {} on {}\n", short(&hex), csv.display());
    let mut scored = 0;
    for (k, head) in v.spec.heads.iter().enumerate() {
        if !table.headers.iter().any(|h| head.matches(h)) {
            continue;
        }
        let data = convoy_shared::dataset::Dataset::from_table_for(&table, &v.spec, Some(k))
            .map_err(|e| blob_error(csv, e.to_string()))?;
        let e = convoy_shared::eval::evaluate(
            &v.spec,
            &v.params,
            &data,
            &burn::prelude::Device::flex(),
        )
        .map_err(|e| blob_error(csv, e.to_string()))?;
        let metric = match (e.accuracy, e.rmse, e.mae) {
            (Some(a), _, _) => format!("accuracy {:.2}%", a * 100.0),
            (None, Some(r), Some(m)) => format!("rmse {r:.4}, mae {m:.4}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:<24} {} rows: {metric}, loss {:.4}{}{}",
            head.name(),
            e.samples,
            e.loss,
            if data.skipped_rows > 0 {
                format!("; {} rows skipped (no or unknown label)", data.skipped_rows)
            } else {
                String::new()
            },
            if data.missing_features.is_empty() {
                String::new()
            } else {
                format!(
                    "; columns absent, encoded as missing: {}",
                    data.missing_features.join(", ")
                )
            }
        );
        scored += 1;
    }
    if scored == 0 {
        return Err(blob_error(
            csv,
            format!(
                "the CSV has no label of this model ({}); columns are {:?}",
                v.spec
                    .heads
                    .iter()
                    .map(|h| h.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                table.headers
            ),
        ));
    }
    Ok(out)
}
