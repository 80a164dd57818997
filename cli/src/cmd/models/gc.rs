//! `models gc`: what no retained version needs, dropped.

use super::*;

/// `models gc`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Keep only the newest N versions (and what they need).
    #[arg(long)]
    pub keep: Option<usize>,
    /// Only say what would be dropped.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `models gc` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(gc(db, args.keep, args.dry_run)?)
}

/// Files younger than this are never collected from the folder older
/// releases kept model files in.
pub const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Drops what no retained version needs (see [`Store::collect_garbage`]),
/// and the files older releases left in the model folder.
pub fn gc(db: &Path, keep: Option<usize>, dry_run: bool) -> Result<String, StoreError> {
    let store = Store::open(db)?;
    let report = store.collect_garbage(keep, dry_run)?;
    let verb = if dry_run { "would drop" } else { "dropped" };
    let mut out = format!(
        "{verb} {} version(s), {} chunk(s) and {} round(s) of kept updates; {} version(s) kept\n",
        report.versions_dropped.len(),
        report.chunks_dropped,
        report.update_rounds_dropped,
        report.versions_kept
    );
    let (b, a) = (report.before, report.after);
    let _ = writeln!(
        out,
        "storage    {} -> {} (chunks {} -> {}, deltas {} -> {}, kept updates {} -> {})",
        human_bytes(b.versions() + b.update_bytes),
        human_bytes(a.versions() + a.update_bytes),
        human_bytes(b.chunk_bytes),
        human_bytes(a.chunk_bytes),
        human_bytes(b.delta_bytes),
        human_bytes(a.delta_bytes),
        human_bytes(b.update_bytes),
        human_bytes(a.update_bytes)
    );
    for v in &report.versions_dropped {
        let _ = writeln!(out, "  {v}");
    }
    let (files, bytes, young) = old_model_files(store.blob_dir(), dry_run)?;
    if files > 0 {
        let _ = writeln!(
            out,
            "{} {files} file(s) an older release left in {}, {}",
            if dry_run { "would remove" } else { "removed" },
            store.blob_dir().display(),
            human_bytes(bytes)
        );
    }
    if young > 0 {
        let _ = writeln!(
            out,
            "{young} file(s) younger than {} min left in the model folder",
            GC_GRACE.as_secs() / 60
        );
    }
    Ok(out)
}

/// Removes files older than [`GC_GRACE`] from `dir` (nothing there is read
/// any more): (removed, bytes, left because young).
fn old_model_files(dir: &Path, dry_run: bool) -> Result<(usize, u64, usize), StoreError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok((0, 0, 0));
    };
    let (mut removed, mut bytes, mut young) = (0, 0u64, 0);
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let age = meta.modified().ok().and_then(|t| t.elapsed().ok());
        if age.is_none_or(|a| a < GC_GRACE) {
            young += 1;
            continue;
        }
        if !dry_run {
            std::fs::remove_file(entry.path())
                .map_err(|e| blob_error(&entry.path(), e.to_string()))?;
        }
        bytes += meta.len();
        removed += 1;
    }
    Ok((removed, bytes, young))
}
