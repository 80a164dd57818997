//! `models export`: a version written as a self-contained bundle.

use super::*;

/// `models export`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Version id or prefix.
    pub id: String,
    /// Bundle file to write.
    pub file: PathBuf,
}

/// Runs `models export` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(export(db, &args.id, &args.file)?)
}

/// Writes version `id` to `file` as a bundle.
pub fn export(db: &Path, id: &str, file: &Path) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let hex = store.resolve_version(id)?;
    let v = store.load_version(&hex)?;
    let bytes = bundle(&v).map_err(|e| blob_error(file, e))?;
    convoy_runtime::fs::write_atomic(file, &bytes).map_err(|e| blob_error(file, e.to_string()))?;
    Ok(format!(
        "exported {hex} (round {}) to {}: {}\n",
        v.round,
        file.display(),
        human_bytes(bytes.len() as u64)
    ))
}
