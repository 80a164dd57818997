//! `convoy-server models`: what the store holds and what can be proven
//! about it. `list` and `show` say what each version is and where it came
//! from; `verify` recomputes every stored version's Merkle root and names
//! the chunk that no longer matches; `diff` compares two versions tensor by
//! tensor, chunk by chunk and in their pipeline specs; `export` writes a
//! self-contained bundle (weights + spec + recipe, checksummed) that
//! `import` takes back under the same id.

use crate::report::{Format, aligned_lines, human_bytes, table};
use crate::store::{Publication, Route, Store, StoreError, StoredVersion, VersionRow};
use convoy_shared::spec::{Encoding, ModelSpec};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE};
use std::fmt::Write as _;
use std::path::Path;

/// First bytes of an exported bundle.
pub const BUNDLE_MAGIC: &[u8; 12] = b"convoy-model";
/// Bundle layout version, after the magic.
const BUNDLE_VERSION: u8 = 2;

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

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Versions checked.
    pub checked: usize,
    /// One line per version that does not hold up.
    pub problems: Vec<String>,
}

/// Rebuilds every stored version (oldest first, each from its stored
/// keyframe, deltas or replayed updates) and checks it hashes to its id;
/// a mismatch names the chunk.
pub fn verify(db: &Path) -> Result<Verification, StoreError> {
    let store = Store::open_existing(db)?;
    let mut found = Verification::default();
    let mut cache = std::collections::HashMap::new();
    for row in store.versions()? {
        found.checked += 1;
        if let Err(why) = store.rebuild_cached(&row.version, Route::Stored, &mut cache) {
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

/// Rebuilds version `id` by `route`, timed, and checks it hashes to its id.
pub fn rebuild(db: &Path, id: &str, route: Route) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let hex = store.resolve_version(id)?;
    let row = store
        .version_row(&hex)?
        .ok_or_else(|| blob_error(db, format!("version {hex} has no row")))?;
    let started = std::time::Instant::now();
    let v = store.rebuild(&hex, route)?;
    let secs = started.elapsed().as_secs_f64();
    let steps = match route {
        Route::Weights => 0,
        Route::Replay => v.round,
        Route::Stored | Route::Deltas => row.depth as u64,
    };
    Ok(format!(
        "rebuilt {hex} (round {}) by route {} in {secs:.4} s ({steps} step(s)): it hashes to its id\n",
        v.round,
        route_name(route)
    ))
}

fn route_name(route: Route) -> &'static str {
    match route {
        Route::Stored => "stored",
        Route::Weights => "weights",
        Route::Deltas => "deltas",
        Route::Replay => "replay",
    }
}

/// Bytes of each way to bring a vehicle from version `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TransferCost {
    /// Versions between them along the lineage (`None`: not an ancestor).
    pub behind: Option<usize>,
    /// The whole model.
    pub full: u64,
    /// The chunks of `to` whose content `from` lacks.
    pub missing_chunks: u64,
    /// The chain of stored deltas, when every step has one.
    pub delta_chain: Option<u64>,
    /// What the server sends: the fewest of the above.
    pub cheapest: u64,
    /// What it sent before chains: a one-step delta, else the missing chunks.
    pub one_step_or_chunks: u64,
}

/// What moving a vehicle from `from` to `to` costs by each route, as the
/// server's planner counts it (model payload bytes).
pub fn transfer_cost(store: &Store, from: &str, to: &str) -> Result<TransferCost, StoreError> {
    let a = store.load_version(from)?;
    let b = store.load_version(to)?;
    let held: std::collections::HashSet<[u8; 32]> = a.manifest.chunks.iter().copied().collect();
    let missing_chunks: u64 = b
        .manifest
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, h)| !held.contains(*h))
        .map(|(i, _)| {
            let start = i * MODEL_CHUNK_SIZE;
            ((start + MODEL_CHUNK_SIZE).min(b.manifest.total_len as usize) - start) as u64
        })
        .sum();
    let chain = store.delta_chain(from, to, 10_000)?;
    let behind = match &chain {
        Some(c) => Some(c.len()),
        None => lineage_distance(store, from, to)?,
    };
    let delta_chain = chain
        .as_ref()
        .and_then(|c| postcard::to_allocvec(c).ok())
        .map(|b| b.len() as u64);
    let cheapest = delta_chain.map_or(missing_chunks, |d| d.min(missing_chunks));
    let one_step_or_chunks = match (behind, delta_chain) {
        (Some(1), Some(d)) => d,
        _ => missing_chunks,
    };
    Ok(TransferCost {
        behind,
        full: b.manifest.total_len as u64,
        missing_chunks,
        delta_chain,
        cheapest,
        one_step_or_chunks,
    })
}

fn lineage_distance(store: &Store, from: &str, to: &str) -> Result<Option<usize>, StoreError> {
    let mut at = Some(to.to_string());
    let mut steps = 0;
    while let Some(v) = at {
        if v == from {
            return Ok(Some(steps));
        }
        at = store.version_row(&v)?.and_then(|r| r.parent);
        steps += 1;
    }
    Ok(None)
}

/// `models transfer FROM [TO]`: the bytes of each route from one version
/// to another (default: the fleet's current model).
pub fn transfer(db: &Path, from: &str, to: Option<&str>) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let from = store.resolve_version(from)?;
    let to = match to {
        Some(t) => store.resolve_version(t)?,
        None => store
            .current_version()?
            .ok_or_else(|| blob_error(db, "the database holds no version"))?,
    };
    let c = transfer_cost(&store, &from, &to)?;
    let mut out = format!(
        "{} -> {} ({})\n",
        short(&from),
        short(&to),
        c.behind
            .map_or("not on its lineage".to_string(), |n| format!(
                "{n} version(s) behind"
            ))
    );
    aligned_lines(
        &mut out,
        &[
            ("full model", human_bytes(c.full)),
            ("missing chunks", human_bytes(c.missing_chunks)),
            (
                "delta chain",
                c.delta_chain
                    .map_or("- (a step has no stored delta)".into(), human_bytes),
            ),
            ("sent", format!("{} (the fewest)", human_bytes(c.cheapest))),
            (
                "without chains",
                format!(
                    "{} (a one-step delta, else the missing chunks)",
                    human_bytes(c.one_step_or_chunks)
                ),
            ),
        ],
    );
    Ok(out)
}

/// What keeping every version by each recoverability route costs, bytes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RouteStorage {
    /// Versions.
    pub versions: usize,
    /// (a) Every version's weights (unique chunks) and description.
    pub weights: u64,
    /// (b) Each line's first keyframe, every delta, every description
    /// (`None` when a version lacks a delta).
    pub deltas: Option<u64>,
    /// (c) Every description and every round's kept updates (`None` when
    /// a round's updates were not kept).
    pub replay: Option<u64>,
    /// What the store actually holds for versions under its policy.
    pub stored: u64,
    /// Kept updates (audit; route c).
    pub kept_updates: u64,
}

/// Storage of each recoverability route for the versions in `store`.
pub fn route_storage(store: &Store) -> Result<RouteStorage, StoreError> {
    let rows = store.versions()?;
    let totals = store.storage()?;
    let mut unique = std::collections::HashMap::new();
    let (mut deltas, mut missing_delta, mut missing_updates) = (0u64, false, false);
    let mut roots = 0u64;
    for row in &rows {
        let v = store.load_version(&row.version)?;
        for (i, h) in v.manifest.chunks.iter().enumerate() {
            let start = i * MODEL_CHUNK_SIZE;
            let len = (start + MODEL_CHUNK_SIZE).min(v.manifest.total_len as usize) - start;
            unique.insert(*h, len as u64);
        }
        match (&row.parent, store.delta(&row.version)?) {
            (None, _) => roots += row.bytes,
            (Some(_), Some(d)) => deltas += d.bytes.len() as u64,
            (Some(_), None) => missing_delta = true,
        }
        if row.parent.is_some() && store.lineage(&row.version)?.is_empty() {
            missing_updates = true;
        }
    }
    let meta = totals.meta_bytes;
    let replay_ok = !missing_updates && totals.update_bytes > 0;
    Ok(RouteStorage {
        versions: rows.len(),
        weights: unique.values().sum::<u64>() + meta,
        deltas: (!missing_delta).then_some(roots + deltas + meta),
        replay: replay_ok.then_some(totals.update_bytes + meta),
        stored: totals.versions(),
        kept_updates: totals.update_bytes,
    })
}

/// `models storage`: what the store holds and what each route would take.
pub fn storage(db: &Path) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let r = route_storage(&store)?;
    let t = store.storage()?;
    let kinds = store
        .versions()?
        .into_iter()
        .fold([0usize; 3], |mut k, row| {
            k[row.kind as usize] += 1;
            k
        });
    let opt = |v: Option<u64>, why: &str| v.map_or(format!("- ({why})"), human_bytes);
    let mut out = format!(
        "{} version(s): {} keyframe(s), {} delta(s), {} replay(s)\n",
        r.versions, kinds[0], kinds[1], kinds[2]
    );
    let _ = writeln!(
        out,
        "stored     {} (chunks {}, deltas {}, descriptions {}) + kept updates {}",
        human_bytes(r.stored),
        human_bytes(t.chunk_bytes),
        human_bytes(t.delta_bytes),
        human_bytes(t.meta_bytes),
        human_bytes(r.kept_updates)
    );
    let _ = writeln!(
        out,
        "route (a)  weights + spec of every version:     {}",
        human_bytes(r.weights)
    );
    let _ = writeln!(
        out,
        "route (b)  first keyframe + every delta:        {}",
        opt(r.deltas, "a version has no stored delta")
    );
    let _ = writeln!(
        out,
        "route (c)  recipe + every round's updates:      {}",
        opt(r.replay, "updates not kept: store.keep_updates")
    );
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
    if !v.manifest.verifies(&v.params, &v.spec, &v.task) {
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

#[cfg(test)]
mod tests;
