//! `models list`: every stored version, oldest first.

use super::*;

/// `models list`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Runs `models list` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(list(db, args.format)?)
}

/// Every stored version, oldest first.
pub fn list(db: &Path, format: Format) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows = store.versions()?;
    let text = match format {
        Format::Json => crate::table::to_json(&rows)?,
        Format::Csv => crate::table::to_csv(&rows)?,
        Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        short(&r.version).to_string(),
                        r.round.to_string(),
                        r.parent.as_deref().map_or("-", short).to_string(),
                        human_bytes(r.bytes),
                        metric(r),
                        r.created_at.clone(),
                    ]
                })
                .collect();
            let mut out = table(
                &["version", "round", "parent", "bytes", "test", "created"],
                &["version", "parent", "created"],
                &cells,
            );
            let _ = writeln!(out, "{} versions", rows.len());
            out
        }
    };
    Ok(text)
}
