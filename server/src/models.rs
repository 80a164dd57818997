//! `convoy-server models`: what the store holds and what can be proven
//! about it. `list` and `show` say what each version is and where it came
//! from; `verify` recomputes every stored version's Merkle root and names
//! the chunk that no longer matches; `diff` compares two versions tensor by
//! tensor, chunk by chunk and in their pipeline specs; `export` writes a
//! self-contained bundle (weights + spec + recipe, checksummed) that
//! `import` takes back under the same id.

use crate::report::{Format, human_bytes, table};
use crate::store::{Store, StoreError, StoredVersion, VersionRow};
use convoy_shared::spec::{Encoding, ModelSpec};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE};
use std::fmt::Write as _;
use std::path::Path;

/// First bytes of an exported bundle.
pub const BUNDLE_MAGIC: &[u8; 12] = b"convoy-model";
/// Bundle layout version, after the magic.
const BUNDLE_VERSION: u8 = 1;

fn blob_error(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Blob {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The first 12 hex digits of an id, as tables show it.
fn short(hex: &str) -> &str {
    &hex[..12.min(hex.len())]
}

fn metric(row: &VersionRow) -> String {
    match (row.accuracy, row.rmse) {
        (Some(a), _) => format!("{:.2}%", a * 100.0),
        (None, Some(r)) => format!("rmse {r:.4}"),
        _ => "-".into(),
    }
}

/// Every stored version, oldest first.
pub fn list(db: &Path, format: Format) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows = store.versions()?;
    let text = match format {
        Format::Json => crate::report::to_json(&rows)?,
        Format::Csv => crate::report::to_csv(&rows)?,
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
    let on_disk = std::fs::metadata(store.blob_path(row)).map_or(0, |m| m.len());
    let _ = writeln!(
        out,
        "storage    keyframe: weights + spec in one blob, {} on disk ({} parameter bytes, {} chunks of {})",
        human_bytes(on_disk),
        human_bytes(row.bytes),
        v.manifest.chunks.len(),
        human_bytes(MODEL_CHUNK_SIZE as u64)
    );
    if row.round > 0 {
        let contributors: Vec<String> = store
            .clients(row.round)?
            .into_iter()
            .filter(|c| c.status == crate::store::ClientStatus::Accepted)
            .map(|c| {
                format!(
                    "{} ({} samples{})",
                    c.client,
                    c.samples,
                    c.head.map(|h| format!(", {h}")).unwrap_or_default()
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "trained by {} vehicle(s): {}",
            contributors.len(),
            contributors.join(", ")
        );
    }
    Ok(out)
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Versions checked.
    pub checked: usize,
    /// One line per version that does not hold up.
    pub problems: Vec<String>,
}

/// Checks one stored version: its blob reads, decodes and hashes to its
/// id; otherwise says which chunk (or the spec) no longer matches.
fn verify_one(store: &Store, row: &VersionRow) -> Result<(), String> {
    let path = store.blob_path(row);
    let bytes = std::fs::read(&path).map_err(|e| format!("blob {}: {e}", path.display()))?;
    let v: StoredVersion = postcard::from_bytes(&bytes)
        .map_err(|e| format!("blob {} does not decode: {e}", path.display()))?;
    let recomputed = version::manifest_of(&v.params, &v.spec, &v.task);
    if version::hex(&recomputed.version) == row.version {
        return Ok(());
    }
    let recorded = &v.manifest;
    if version::hex(&recorded.version) != row.version {
        return Err(format!(
            "the blob's manifest is version {}, not this one",
            version::short(&recorded.version)
        ));
    }
    if recomputed.total_len != recorded.total_len {
        return Err(format!(
            "parameters are {} bytes, the manifest says {}",
            recomputed.total_len, recorded.total_len
        ));
    }
    let bad: Vec<String> = recomputed
        .chunks
        .iter()
        .zip(&recorded.chunks)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| {
            let start = i * MODEL_CHUNK_SIZE;
            let end = (start + MODEL_CHUNK_SIZE).min(recorded.total_len as usize);
            format!("chunk {i} (bytes {start}..{end})")
        })
        .collect();
    if !bad.is_empty() {
        return Err(format!(
            "{} of {} chunks do not match their hash: {}",
            bad.len(),
            recorded.chunks.len(),
            bad.join(", ")
        ));
    }
    Err("the spec or recipe differs from the one the id was made under".into())
}

/// Recomputes every stored version's root.
pub fn verify(db: &Path) -> Result<Verification, StoreError> {
    let store = Store::open_existing(db)?;
    let mut found = Verification::default();
    for row in store.versions()? {
        found.checked += 1;
        if let Err(why) = verify_one(&store, &row) {
            found
                .problems
                .push(format!("{} (round {}): {why}", row.version, row.round));
        }
    }
    Ok(found)
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

/// Makes version `id` the fleet's current model: the server announces it
/// when it next starts, every vehicle fetches it, and later rounds build on
/// it (the rollback is recorded; no version is deleted).
pub fn rollback(db: &Path, id: &str) -> Result<String, StoreError> {
    let store = Store::open(db)?;
    let hex = store.resolve_version(id)?;
    let v = store.load_version(&hex)?;
    let now = convoy_runtime::clock::now_ms();
    let before = store.current_version()?;
    store.rollback_to(&hex, now)?;
    Ok(format!(
        "the fleet's current model is now {hex} (round {}; was {}); a running server switches when it next starts (systemctl restart convoy-server)\n",
        v.round,
        before.as_deref().map_or("none", short)
    ))
}

/// One vehicle in the fleet inventory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Holding {
    /// Vehicle id.
    pub client: String,
    /// Model version it holds (hex).
    pub version: String,
    /// Round that produced that version, if the store has it.
    pub round: Option<u64>,
    /// How many versions behind the fleet's current model it is, along
    /// the current model's lineage; none when its version is not an
    /// ancestor of the current one (after a rollback, say).
    pub behind: Option<u64>,
    /// Since when it holds it (ISO-8601 UTC).
    pub since: String,
    /// When it last said so.
    pub last_seen: String,
}

/// Which model every vehicle runs, from their statuses.
pub fn fleet(db: &Path, format: Format) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows = store.versions()?;
    // the current model's lineage, newest first
    let mut chain = Vec::new();
    let mut at = store.current_version()?;
    while let Some(v) = at.take() {
        if chain.contains(&v) {
            break;
        }
        at = rows
            .iter()
            .find(|r| r.version == v)
            .and_then(|r| r.parent.clone());
        chain.push(v);
    }
    let holdings: Vec<Holding> = store
        .inventory()?
        .into_iter()
        .map(|(client, version, since, seen)| Holding {
            round: rows.iter().find(|r| r.version == version).map(|r| r.round),
            behind: chain.iter().position(|v| *v == version).map(|p| p as u64),
            client,
            version,
            since: crate::store::iso8601(since),
            last_seen: crate::store::iso8601(seen),
        })
        .collect();
    Ok(match format {
        Format::Json => crate::report::to_json(&holdings)?,
        Format::Csv => crate::report::to_csv(&holdings)?,
        Format::Table => {
            let cells: Vec<Vec<String>> = holdings
                .iter()
                .map(|h| {
                    vec![
                        h.client.clone(),
                        short(&h.version).to_string(),
                        h.round.map_or("?".into(), |r| r.to_string()),
                        h.behind.map_or("-".into(), |b| b.to_string()),
                        h.since.clone(),
                        h.last_seen.clone(),
                    ]
                })
                .collect();
            let mut out = table(
                &[
                    "vehicle",
                    "version",
                    "round",
                    "behind",
                    "since",
                    "last_seen",
                ],
                &["vehicle", "version", "since", "last_seen"],
                &cells,
            );
            let _ = writeln!(
                out,
                "{} vehicles; current model {}",
                holdings.len(),
                chain.first().map_or("none", |c| short(c))
            );
            out
        }
    })
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

/// Files younger than this are never collected: a running server writes a
/// version's blob just before its row.
pub const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes files in the model folder that no stored version refers to
/// (blobs of versions whose rows are gone, temp files a crash left) and
/// that are older than [`GC_GRACE`]; every version's blob is kept.
pub fn gc(db: &Path, dry_run: bool) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let keep: std::collections::BTreeSet<String> =
        store.versions()?.into_iter().map(|r| r.blob).collect();
    let dir = store.blob_dir();
    let entries = std::fs::read_dir(dir).map_err(|e| blob_error(dir, e.to_string()))?;
    let (mut removed, mut bytes, mut young) = (Vec::new(), 0u64, 0usize);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || keep.contains(&name) {
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
        removed.push(name);
    }
    let mut out = format!(
        "{} {} unreferenced file(s), {}; {} version blob(s) kept",
        if dry_run { "would remove" } else { "removed" },
        removed.len(),
        human_bytes(bytes),
        keep.len()
    );
    if young > 0 {
        let _ = write!(
            out,
            "; {young} unreferenced file(s) younger than {} min left (a server may be writing them)",
            GC_GRACE.as_secs() / 60
        );
    }
    out.push('\n');
    for name in removed {
        let _ = writeln!(out, "  {name}");
    }
    Ok(out)
}

/// A version as a self-contained, checksummed bundle.
pub fn bundle(v: &StoredVersion) -> Result<Vec<u8>, String> {
    let mut out = BUNDLE_MAGIC.to_vec();
    out.push(BUNDLE_VERSION);
    out.extend(postcard::to_allocvec(v).map_err(|e| e.to_string())?);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// Reads a bundle back, checking its checksum and that its weights and
/// spec hash to the id it carries.
pub fn read_bundle(bytes: &[u8]) -> Result<StoredVersion, String> {
    let head = BUNDLE_MAGIC.len() + 1;
    if bytes.len() < head + 32 || &bytes[..BUNDLE_MAGIC.len()] != BUNDLE_MAGIC {
        return Err("not a convoy model bundle (models export writes them)".into());
    }
    if bytes[BUNDLE_MAGIC.len()] != BUNDLE_VERSION {
        return Err(format!(
            "bundle layout {} is not the {BUNDLE_VERSION} this build reads",
            bytes[BUNDLE_MAGIC.len()]
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch: the bundle is truncated or corrupt".into());
    }
    let v: StoredVersion =
        postcard::from_bytes(&body[head..]).map_err(|e| format!("bundle does not decode: {e}"))?;
    let recomputed = version::manifest_of(&v.params, &v.spec, &v.task);
    if recomputed.version != v.manifest.version {
        return Err("the bundle's weights and spec do not hash to its version id".into());
    }
    v.spec.validate().map_err(|e| e.to_string())?;
    Ok(v)
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

/// Adds the version in bundle `file` to the store under its own id.
pub fn import(db: &Path, file: &Path) -> Result<String, StoreError> {
    let bytes = std::fs::read(file).map_err(|e| blob_error(file, e.to_string()))?;
    let v = read_bundle(&bytes).map_err(|e| blob_error(file, e))?;
    let store = Store::open(db)?;
    let hex = version::hex(&v.manifest.version);
    let known = store.versions()?.iter().any(|r| r.version == hex);
    if !known {
        let now = convoy_runtime::clock::now_ms();
        store.save_version(&v, None, now)?;
    }
    Ok(format!(
        "{} {hex} (round {}, {} parameters)\n",
        if known { "already stored:" } else { "imported" },
        v.round,
        v.spec.layout().numel()
    ))
}

#[cfg(test)]
mod tests;
