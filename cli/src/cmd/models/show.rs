//! `models show`: one version with its spec, recipe, lineage and contributors.

use super::*;

/// `models show`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Version id or a unique prefix of 4+ hex digits.
    pub id: String,
}

/// Runs `models show` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(show(db, &args.id)?)
}

fn describe_spec(out: &mut String, spec: &ModelSpec) {
    let _ = writeln!(
        out,
        "model      {} inputs from {} columns, trunk {:?}, {} head(s), {} parameters",
        spec.inputs(),
        spec.features.len(),
        spec.hidden,
        spec.heads.len(),
        spec.layout().numel()
    );
    const SHOWN: usize = 16;
    if spec.features.len() > SHOWN {
        let _ = writeln!(
            out,
            "  (the first {SHOWN} of {} features)",
            spec.features.len()
        );
    }
    for f in spec.features.iter().take(SHOWN) {
        let encoding = match &f.encoding {
            Encoding::Numeric { mean, std, mask } => format!(
                "numeric, mean {mean:.4}, sd {std:.4}{}",
                if *mask { ", presence input" } else { "" }
            ),
            Encoding::Categorical { vocabulary } => {
                format!("categorical, {} categories + other", vocabulary.len())
            }
        };
        let _ = writeln!(out, "  feature  {:<24} {encoding}", f.name);
    }
    for h in &spec.heads {
        let what = if h.classes.is_empty() {
            format!(
                "regression, target mean {:.4}, sd {:.4}",
                h.target.mean, h.target.std
            )
        } else {
            format!("classification, classes {:?}", h.classes)
        };
        let _ = writeln!(out, "  head     {:<24} {what}", h.name());
    }
}

/// One version: spec, recipe, lineage, metrics, storage and the vehicles
/// whose updates made it.
pub fn show(db: &Path, id: &str) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let hex = store.resolve_version(id)?;
    let rows = store.versions()?;
    let row = rows
        .iter()
        .find(|r| r.version == hex)
        .ok_or_else(|| blob_error(db, format!("version {hex} has no row")))?;
    let v = store.load_version(&hex)?;
    let mut out = String::new();
    let _ = writeln!(out, "version    {hex}");
    let _ = writeln!(out, "round      {} (created {})", row.round, row.created_at);
    let mut lineage = Vec::new();
    let mut parent = row.parent.clone();
    while let Some(p) = parent.take() {
        if lineage.len() == 8 {
            lineage.push("…".to_string());
            break;
        }
        let up = rows.iter().find(|r| r.version == p);
        lineage.push(format!(
            "{} (round {})",
            short(&p),
            up.map_or("?".into(), |r| r.round.to_string())
        ));
        parent = up.and_then(|r| r.parent.clone());
    }
    let _ = writeln!(
        out,
        "lineage    {}",
        if lineage.is_empty() {
            "- (an initial model)".to_string()
        } else {
            lineage.join(" <- ")
        }
    );
    describe_spec(&mut out, &v.spec);
    let t = &v.task;
    let _ = writeln!(
        out,
        "recipe     {} epoch(s), lr {}, batch {}, clip norm {}",
        t.epochs, t.lr, t.batch_size, t.clip_norm
    );
    let _ = writeln!(
        out,
        "metrics    test {} (loss {})",
        metric(row),
        row.eval_loss.map_or("-".into(), |l| format!("{l:.4}"))
    );
    let p = &v.manifest.provenance;
    let _ = writeln!(
        out,
        "made by    {}, update codec {}, published as {}",
        p.strategy, p.codec, p.downlink_codec
    );
    let _ = writeln!(
        out,
        "storage    {}: {} added to the store ({} parameter bytes, {} chunks of {}), depth {} from a keyframe, rebuilt in ~{:.3} s",
        row.kind.as_str(),
        human_bytes(row.stored_bytes),
        human_bytes(row.bytes),
        v.manifest.chunks.len(),
        human_bytes(MODEL_CHUNK_SIZE as u64),
        row.depth,
        row.rebuild_secs
    );
    let contributors = store.lineage(&hex)?;
    if !contributors.is_empty() {
        let _ = writeln!(out, "trained by {} vehicle(s):", contributors.len());
        for c in contributors {
            let _ = writeln!(
                out,
                "  {:<20} {:>8} samples  {:<16} update {}{}",
                c.client,
                c.samples,
                c.head.unwrap_or_else(|| "-".into()),
                &c.update_hash[..16],
                if c.scale == 1.0 {
                    String::new()
                } else {
                    format!("  (scaled by {:.3})", c.scale)
                }
            );
        }
    }
    Ok(out)
}
