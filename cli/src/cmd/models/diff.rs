//! `models diff`: what changed between two versions.

use super::*;

/// `models diff`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// From this version.
    pub a: String,
    /// To this one.
    pub b: String,
}

/// Runs `models diff` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(diff(db, &args.a, &args.b)?)
}

/// Two versions compared: spec differences, changed chunks and each
/// tensor's L2 and largest absolute change.
pub fn diff(db: &Path, a: &str, b: &str) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let (ha, hb) = (store.resolve_version(a)?, store.resolve_version(b)?);
    let (va, vb) = (store.load_version(&ha)?, store.load_version(&hb)?);
    let mut out = format!("{} -> {}\n", short(&ha), short(&hb));
    let mut spec = Vec::new();
    let features =
        |s: &ModelSpec| -> Vec<String> { s.features.iter().map(|f| f.name.clone()).collect() };
    let (fa, fb) = (features(&va.spec), features(&vb.spec));
    for f in fb.iter().filter(|f| !fa.contains(f)) {
        spec.push(format!("feature {f} added"));
    }
    for f in fa.iter().filter(|f| !fb.contains(f)) {
        spec.push(format!("feature {f} removed"));
    }
    for (x, y) in va.spec.features.iter().filter_map(|x| {
        vb.spec
            .features
            .iter()
            .find(|y| y.name == x.name)
            .map(|y| (x, y))
    }) {
        if x.encoding != y.encoding {
            spec.push(format!("feature {} re-encoded", x.name));
        }
    }
    let heads = |s: &ModelSpec| -> Vec<String> { s.heads.iter().map(|h| h.name()).collect() };
    if heads(&va.spec) != heads(&vb.spec) {
        spec.push(format!(
            "heads {:?} -> {:?}",
            heads(&va.spec),
            heads(&vb.spec)
        ));
    } else if va.spec.heads != vb.spec.heads {
        spec.push("a head's classes or target scale changed".into());
    }
    if va.spec.hidden != vb.spec.hidden {
        spec.push(format!(
            "trunk {:?} -> {:?}",
            va.spec.hidden, vb.spec.hidden
        ));
    }
    if va.task != vb.task {
        spec.push(format!("recipe {:?} -> {:?}", va.task, vb.task));
    }
    let _ = writeln!(
        out,
        "spec       {}",
        if spec.is_empty() {
            "same".to_string()
        } else {
            spec.join("; ")
        }
    );
    let (ca, cb) = (&va.manifest.chunks, &vb.manifest.chunks);
    let changed = ca.iter().zip(cb).filter(|(x, y)| x != y).count() + ca.len().abs_diff(cb.len());
    let _ = writeln!(
        out,
        "chunks     {changed} of {} differ (what a chunk-wise transfer from one to the other would move: {})",
        cb.len(),
        human_bytes((changed * MODEL_CHUNK_SIZE).min(vb.manifest.total_len as usize) as u64)
    );
    let _ = writeln!(
        out,
        "{:<20} {:>14} {:>12} {:>12}",
        "tensor", "shape", "l2 change", "max |change|"
    );
    for tb in &vb.params.tensors {
        let shape = format!("{:?}", tb.shape);
        match va
            .params
            .tensors
            .iter()
            .find(|ta| ta.name == tb.name && ta.shape == tb.shape)
        {
            Some(ta) => {
                let (mut sq, mut max) = (0f64, 0f64);
                for (x, y) in ta.data.iter().zip(&tb.data) {
                    let d = (*y as f64 - *x as f64).abs();
                    sq += d * d;
                    max = max.max(d);
                }
                let _ = writeln!(
                    out,
                    "{:<20} {shape:>14} {:>12.4e} {max:>12.4e}",
                    tb.name,
                    sq.sqrt()
                );
            }
            None => {
                let _ = writeln!(out, "{:<20} {shape:>14} {:>12} {:>12}", tb.name, "new", "-");
            }
        }
    }
    Ok(out)
}
