//! `models import`: a bundle's version added under its own id.

use super::*;

/// `models import`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Bundle written by `models export`.
    pub file: PathBuf,
}

/// Runs `models import` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(import(db, &args.file)?)
}

/// Adds the version in bundle `file` to the store under its own id.
pub fn import(db: &Path, file: &Path) -> Result<String, StoreError> {
    let bytes = std::fs::read(file).map_err(|e| blob_error(file, e.to_string()))?;
    let v = read_bundle(&bytes).map_err(|e| blob_error(file, e))?;
    let store = Store::open(db)?;
    let hex = version::hex(&v.manifest.version);
    let known = store.version_row(&hex)?.is_some();
    if !known {
        let now = convoy_runtime::clock::now_ms();
        // stored whole: nothing of its line need be here
        store.save_version(&Publication::root(&v), None, now)?;
    }
    Ok(format!(
        "{} {hex} (round {}, {} parameters)\n",
        if known { "already stored:" } else { "imported" },
        v.round,
        v.spec.layout().numel()
    ))
}
