//! Published models and how each is kept, the MISTIQUE idea applied to
//! weights: a **keyframe** (its 32 KiB parameter chunks in a
//! content-addressed table, shared by every version holding the same
//! chunk), a **delta** (the published delta from its parent), or
//! **replay** (nothing beyond its lineage: rebuilt by re-aggregating the
//! round's kept client updates on its parent). [`StorePolicy`] picks per
//! version from the measured bytes and rebuild seconds.
//!
//! Every version also gets its lineage: each contributing vehicle with its
//! sample count and the BLAKE3 hash of the update it sent.

use super::{Store, StoreError};
use crate::aggregator::PartialSum;
use crate::publish::{self, Delta};
use convoy_shared::codec::Pipeline;
use convoy_shared::eval::Evaluation;
use convoy_shared::messages::UpdateBody;
use convoy_shared::params::ParamSet;
use convoy_shared::spec::{ModelSpec, Recipe};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE, Manifest, VersionId};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// How versions are kept (`[store]` in the server config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorePolicy {
    /// Longest chain of deltas (or replays) from a keyframe (1 to 10,000);
    /// a version deeper than this is stored whole.
    pub max_chain_depth: u32,
    /// Longest estimated rebuild of any version, seconds (above 0); a
    /// version that would take longer from its keyframe is stored whole.
    pub max_rebuild_secs: f64,
    /// Storage budget for versions, MB (0: none). Past it, a version whose
    /// round's updates are kept is stored as nothing but its lineage.
    pub budget_mb: f64,
    /// Keep every accepted client update after its round (audit, and
    /// route (c): rebuilding any version from the recipe and the updates).
    pub keep_updates: bool,
}

impl Default for StorePolicy {
    fn default() -> Self {
        Self {
            max_chain_depth: 20,
            max_rebuild_secs: 5.0,
            budget_mb: 0.0,
            keep_updates: false,
        }
    }
}

impl StorePolicy {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.max_chain_depth) {
            return Err(format!(
                "store.max_chain_depth = {} is not in 1..=10000",
                self.max_chain_depth
            ));
        }
        if !(self.max_rebuild_secs > 0.0 && self.max_rebuild_secs.is_finite()) {
            return Err("store.max_rebuild_secs must be above 0".into());
        }
        if !(self.budget_mb >= 0.0 && self.budget_mb.is_finite()) {
            return Err("store.budget_mb must be 0 (no budget) or more".into());
        }
        Ok(())
    }
}

/// How one version is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Its parameter chunks (route a: weights + spec).
    Keyframe,
    /// The published delta from its parent (route b: keyframe + deltas).
    Delta,
    /// Nothing but its lineage: its round's kept updates are replayed.
    Replay,
}

impl StorageKind {
    /// Name in the versions table and in `models` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keyframe => "keyframe",
            Self::Delta => "delta",
            Self::Replay => "replay",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Keyframe, Self::Delta, Self::Replay]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A way to rebuild a version (the recoverability routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// However it is stored: the nearest keyframe, then deltas or replays.
    Stored,
    /// (a) Its own stored weights: only for a keyframe.
    Weights,
    /// (b) The nearest keyframe before it plus every delta after that.
    Deltas,
    /// (c) The seeded initial model of its line's first version plus every
    /// round's kept client updates, re-aggregated (needs `store.keep_updates`).
    Replay,
}

/// One row of the versions table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRow {
    /// Hex version id.
    pub version: String,
    /// Round that produced it (0: the initial model).
    pub round: u64,
    /// Hex id of the version it was aggregated from.
    pub parent: Option<String>,
    /// ISO-8601 UTC.
    pub created_at: String,
    /// Canonical parameter bytes.
    pub bytes: u64,
    /// How it is kept.
    pub kind: StorageKind,
    /// Bytes this version added to the store (new chunks, its delta, its
    /// description); kept client updates are counted apart.
    pub stored_bytes: u64,
    /// Steps from the nearest keyframe.
    pub depth: u32,
    /// Estimated seconds to rebuild it from the store (measured per step).
    pub rebuild_secs: f64,
    /// Server-side test loss, when evaluated.
    pub eval_loss: Option<f64>,
    /// Server-side test accuracy.
    pub accuracy: Option<f64>,
    /// Server-side test RMSE.
    pub rmse: Option<f64>,
}

/// A published model: weights plus everything needed to use them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// Round that produced it (0: initial model).
    pub round: u64,
    /// Version it was aggregated from.
    pub parent: Option<VersionId>,
    /// Manifest (id, chunk hashes, provenance).
    pub manifest: Manifest,
    /// Architecture, features, normalisation.
    pub spec: ModelSpec,
    /// Training recipe.
    pub task: Recipe,
    /// Weights.
    pub params: ParamSet,
}

/// What a version needs besides its weights.
#[derive(Debug, Clone, PartialEq)]
struct VersionMeta {
    /// What its row stores.
    row: RowMeta,
    /// Its model spec (features with their statistics, heads): the bulk of
    /// a description, and the same for every version of a run, so it is
    /// kept once in `specs`, under the BLAKE3 hash of its postcard
    /// encoding, and the row names it in `versions.spec`.
    spec: ModelSpec,
}

/// A version's description as its row stores it (postcard, in `meta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RowMeta {
    round: u64,
    manifest: Manifest,
    task: Recipe,
    /// The server learning rate its round applied.
    server_lr: f64,
    /// Its round published exactly (keyframe round or lossless downlink).
    exact: bool,
    /// No downlink residual entered its round.
    clean: bool,
}

/// A description as rows written before the shared specs hold it: the
/// spec inside, and no hash in `versions.spec`.
#[derive(Deserialize)]
struct LegacyMeta {
    round: u64,
    manifest: Manifest,
    spec: ModelSpec,
    task: Recipe,
    server_lr: f64,
    exact: bool,
    clean: bool,
}

impl From<LegacyMeta> for VersionMeta {
    fn from(m: LegacyMeta) -> Self {
        let row = RowMeta {
            round: m.round,
            manifest: m.manifest,
            task: m.task,
            server_lr: m.server_lr,
            exact: m.exact,
            clean: m.clean,
        };
        VersionMeta { row, spec: m.spec }
    }
}

/// A round's outcome, as the store is given it.
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a> {
    /// The new version.
    pub version: &'a StoredVersion,
    /// Its published delta from the parent (`None` for a first model).
    pub delta: Option<&'a Delta>,
    /// Server learning rate of the round.
    pub server_lr: f64,
    /// The round published exactly (no residual carried out).
    pub exact: bool,
    /// No downlink residual entered the round.
    pub clean: bool,
    /// Measured seconds the round spent decoding and folding its updates:
    /// what a replay costs.
    pub replay_secs: f64,
}

impl<'a> Publication<'a> {
    /// A version with no parent: the initial model or an imported one.
    pub fn root(version: &'a StoredVersion) -> Self {
        Self {
            version,
            delta: None,
            server_lr: 1.0,
            exact: true,
            clean: true,
            replay_secs: 0.0,
        }
    }
}

/// One contributor to a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageRow {
    /// Vehicle.
    pub client: String,
    /// Samples its update was weighted by.
    pub samples: u64,
    /// The task (head) it trained.
    pub head: Option<String>,
    /// BLAKE3 of the update body it sent, hex.
    pub update_hash: String,
    /// Factor its update was scaled by (the norm bound), 1 when not clipped.
    pub scale: f64,
}

/// Storage the store holds, by what it is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StorageTotals {
    /// Unique parameter chunks (keyframes).
    pub chunk_bytes: u64,
    /// Stored deltas.
    pub delta_bytes: u64,
    /// Version descriptions (spec, recipe, manifest).
    pub meta_bytes: u64,
    /// Kept client updates.
    pub update_bytes: u64,
}

impl StorageTotals {
    /// Bytes that keep versions (everything but the kept updates).
    pub fn versions(&self) -> u64 {
        self.chunk_bytes + self.delta_bytes + self.meta_bytes
    }
}

/// What [`Store::collect_garbage`] dropped (or would).
#[derive(Debug, Clone, PartialEq)]
pub struct GcReport {
    /// Versions removed, by hex id.
    pub versions_dropped: Vec<String>,
    /// Versions that remain.
    pub versions_kept: usize,
    /// Parameter chunks no remaining keyframe used.
    pub chunks_dropped: usize,
    /// Rounds whose kept updates no remaining version replays.
    pub update_rounds_dropped: usize,
    /// Storage before.
    pub before: StorageTotals,
    /// Storage after.
    pub after: StorageTotals,
}

const ROW_COLUMNS: &str = "version, round, parent, created_ms, bytes, kind, stored_bytes, depth, rebuild_secs, eval_loss, accuracy, rmse";

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    let kind: String = r.get(5)?;
    Ok(VersionRow {
        version: r.get(0)?,
        round: r.get::<_, i64>(1)? as u64,
        parent: r.get(2)?,
        created_at: super::iso8601(r.get::<_, i64>(3)? as u64),
        bytes: r.get::<_, i64>(4)? as u64,
        kind: StorageKind::parse(&kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                5,
                rusqlite::types::Type::Text,
                format!("unknown storage kind {kind:?}").into(),
            )
        })?,
        stored_bytes: r.get::<_, i64>(6)? as u64,
        depth: r.get::<_, i64>(7)? as u32,
        rebuild_secs: r.get(8)?,
        eval_loss: r.get(9)?,
        accuracy: r.get(10)?,
        rmse: r.get(11)?,
    })
}

impl Store {
    /// Sets how new versions are kept.
    pub fn set_policy(&mut self, policy: StorePolicy) {
        self.policy = policy;
    }

    /// How new versions are kept.
    pub fn policy(&self) -> &StorePolicy {
        &self.policy
    }

    fn corrupt(&self, what: &str, message: impl Into<String>) -> StoreError {
        StoreError::Blob {
            path: self.blobs.join(what),
            message: message.into(),
        }
    }

    /// Stores a version: its lineage (from the round's acknowledged
    /// updates, kept whole when `store.keep_updates`), its description, and
    /// its weights as the policy decides. Storing an id already stored
    /// changes nothing. Returns how it is kept.
    pub fn save_version(
        &self,
        p: &Publication<'_>,
        eval: Option<&Evaluation>,
        now_ms: u64,
    ) -> Result<StorageKind, StoreError> {
        let v = p.version;
        let hex = version::hex(&v.manifest.version);
        if let Some(row) = self.version_row(&hex)? {
            return Ok(row.kind);
        }
        let parent = match &v.parent {
            Some(id) => self.version_row(&version::hex(id))?,
            None => None,
        };
        let row_meta = RowMeta {
            round: v.round,
            manifest: v.manifest.clone(),
            task: v.task.clone(),
            server_lr: p.server_lr,
            exact: p.exact,
            clean: p.clean,
        };
        let encode =
            |e: postcard::Error| self.corrupt(&hex, format!("cannot serialise the version: {e}"));
        let meta = postcard::to_allocvec(&row_meta).map_err(encode)?;
        let spec = postcard::to_allocvec(&v.spec).map_err(encode)?;
        let spec_hash = blake3::hash(&spec);
        // What applying the delta costs, measured (on the child: same work).
        let link_secs = match p.delta {
            Some(d) => {
                let t = Instant::now();
                publish::apply(&v.params, d).map_err(|e| self.corrupt(&hex, e.to_string()))?;
                t.elapsed().as_secs_f64()
            }
            None => 0.0,
        };
        let tx = self.conn.unchecked_transaction()?;
        let lineage = lineage_of(&tx, v.round, p.delta.is_some())?;
        for (seq, (row, body)) in lineage.iter().enumerate() {
            tx.execute(
                "INSERT OR REPLACE INTO lineage (version, client, samples, head, update_hash, scale)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![hex, row.client, row.samples as i64, row.head, row.update_hash, row.scale],
            )?;
            if self.policy.keep_updates {
                tx.execute(
                    "INSERT OR REPLACE INTO kept_updates (round, seq, client, body, scale)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![v.round as i64, seq as i64, row.client, body, row.scale],
                )?;
            }
        }
        let kept = self.policy.keep_updates && !lineage.is_empty();
        let budget = (self.policy.budget_mb * 1e6) as u64;
        let over_budget = |extra: u64| -> Result<bool, StoreError> {
            Ok(budget > 0 && self.storage()?.versions() + extra > budget)
        };
        let kind = match (&parent, p.delta) {
            (Some(parent), Some(delta)) => {
                let depth = parent.depth + 1;
                let chain_secs = parent.rebuild_secs + link_secs;
                let replay_secs = parent.rebuild_secs + p.replay_secs;
                if depth > self.policy.max_chain_depth
                    || chain_secs.min(replay_secs) > self.policy.max_rebuild_secs
                {
                    StorageKind::Keyframe
                } else if kept
                    && p.clean
                    && replay_secs <= self.policy.max_rebuild_secs
                    && over_budget(delta.bytes.len() as u64)?
                {
                    StorageKind::Replay
                } else if chain_secs <= self.policy.max_rebuild_secs {
                    StorageKind::Delta
                } else {
                    StorageKind::Keyframe
                }
            }
            _ => StorageKind::Keyframe,
        };
        if over_budget(0)? {
            tracing::warn!(
                budget_mb = self.policy.budget_mb,
                "the model store is over its storage budget; raise store.budget_mb, lower store.max_chain_depth or turn on store.keep_updates"
            );
        }
        let (depth, rebuild_secs) = match (kind, &parent) {
            (StorageKind::Keyframe, _) | (_, None) => (0, 0.0),
            (StorageKind::Delta, Some(parent)) => {
                (parent.depth + 1, parent.rebuild_secs + link_secs)
            }
            (StorageKind::Replay, Some(parent)) => {
                (parent.depth + 1, parent.rebuild_secs + p.replay_secs)
            }
        };
        let spec_added = tx.execute(
            "INSERT OR IGNORE INTO specs (hash, spec) VALUES (?1, ?2)",
            params![spec_hash.as_bytes(), spec],
        )?;
        let mut stored = (meta.len() + spec_added * spec.len()) as u64;
        if kind == StorageKind::Keyframe {
            let bytes = v.params.canonical_bytes();
            for (i, piece) in bytes.chunks(MODEL_CHUNK_SIZE).enumerate() {
                let hash = version::chunk_hash(piece);
                let added = tx.execute(
                    "INSERT OR IGNORE INTO chunks (hash, bytes) VALUES (?1, ?2)",
                    params![&hash[..], piece],
                )?;
                stored += (added * piece.len()) as u64;
                tx.execute(
                    "INSERT OR REPLACE INTO version_chunks (version, idx, hash) VALUES (?1, ?2, ?3)",
                    params![hex, i as i64, &hash[..]],
                )?;
            }
        }
        // A delta is kept for every delta version, and for a keyframe when
        // it is small (a vehicle behind can still take the chain through it).
        if let (Some(delta), Some(parent)) = (p.delta, &v.parent) {
            let small = (delta.bytes.len() as u64) * 2 <= v.manifest.total_len as u64;
            if kind == StorageKind::Delta || (kind == StorageKind::Keyframe && small) {
                tx.execute(
                    "INSERT OR REPLACE INTO deltas (version, parent, codec, bytes) VALUES (?1, ?2, ?3, ?4)",
                    params![hex, version::hex(parent), delta.codec, delta.bytes],
                )?;
                stored += delta.bytes.len() as u64;
            }
        }
        tx.execute(
            &format!(
                "INSERT INTO versions ({ROW_COLUMNS}, meta, spec) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ),
            params![
                hex,
                v.round as i64,
                v.parent.as_ref().map(version::hex),
                now_ms as i64,
                v.manifest.total_len as i64,
                kind.as_str(),
                stored as i64,
                depth as i64,
                rebuild_secs,
                eval.map(|e| e.loss),
                eval.and_then(|e| e.accuracy),
                eval.and_then(|e| e.rmse),
                meta,
                spec_hash.as_bytes(),
            ],
        )?;
        tx.commit()?;
        Ok(kind)
    }

    /// One version's row.
    pub fn version_row(&self, hex: &str) -> Result<Option<VersionRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM versions WHERE version = ?1"),
                [hex],
                version_row,
            )
            .optional()?)
    }

    fn meta(&self, hex: &str) -> Result<VersionMeta, StoreError> {
        // a database opened read-only may predate the shared specs
        let sql = if self.has_table("specs")? {
            "SELECT v.meta, v.spec, s.spec FROM versions v LEFT JOIN specs s ON s.hash = v.spec
             WHERE v.version = ?1"
        } else {
            "SELECT meta, NULL, NULL FROM versions WHERE version = ?1"
        };
        let (bytes, spec_hash, spec): (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) = self
            .conn
            .query_row(sql, [hex], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .ok_or_else(|| self.corrupt(hex, "no such version"))?;
        let undecodable = |e: postcard::Error| {
            self.corrupt(hex, format!("version description does not decode: {e}"))
        };
        let Some(spec_hash) = spec_hash else {
            return postcard::from_bytes::<LegacyMeta>(&bytes)
                .map(VersionMeta::from)
                .map_err(undecodable);
        };
        let spec =
            spec.ok_or_else(|| self.corrupt(hex, "its model spec is missing from the store"))?;
        if blake3::hash(&spec).as_bytes()[..] != spec_hash[..] {
            return Err(self.corrupt(hex, "its stored model spec does not match its hash"));
        }
        Ok(VersionMeta {
            row: postcard::from_bytes(&bytes).map_err(undecodable)?,
            spec: postcard::from_bytes(&spec).map_err(undecodable)?,
        })
    }

    /// The contributors to a version, in the order they were folded.
    pub fn lineage(&self, hex: &str) -> Result<Vec<LineageRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT client, samples, head, update_hash, scale FROM lineage WHERE version = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([hex], |r| {
            Ok(LineageRow {
                client: r.get(0)?,
                samples: r.get::<_, i64>(1)? as u64,
                head: r.get(2)?,
                update_hash: r.get(3)?,
                scale: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The stored delta that turns `hex`'s parent into `hex`.
    pub fn delta(&self, hex: &str) -> Result<Option<Delta>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT codec, bytes FROM deltas WHERE version = ?1",
                [hex],
                |r| {
                    Ok(Delta {
                        codec: r.get(0)?,
                        bytes: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// The stored deltas from `from` to `to`, oldest first, when `to`
    /// descends from `from` within `max_steps` steps and every step has
    /// one.
    pub fn delta_chain(
        &self,
        from: &str,
        to: &str,
        max_steps: usize,
    ) -> Result<Option<Vec<Delta>>, StoreError> {
        let mut chain = Vec::new();
        let mut at = to.to_string();
        while at != from {
            if chain.len() >= max_steps {
                return Ok(None);
            }
            let Some(row) = self.version_row(&at)? else {
                return Ok(None);
            };
            let (Some(parent), Some(delta)) = (row.parent, self.delta(&at)?) else {
                return Ok(None);
            };
            chain.push(delta);
            at = parent;
        }
        chain.reverse();
        Ok(Some(chain))
    }

    /// Bytes held, by purpose.
    pub fn storage(&self) -> Result<StorageTotals, StoreError> {
        storage_totals(&self.conn)
    }

    /// Loads a version by hex id, however it is stored, checking it
    /// hashes to its id.
    pub fn load_version(&self, hex: &str) -> Result<StoredVersion, StoreError> {
        self.rebuild(hex, Route::Stored)
    }

    /// Rebuilds a version by `route`, checking it hashes to its id.
    pub fn rebuild(&self, hex: &str, route: Route) -> Result<StoredVersion, StoreError> {
        self.rebuild_cached(hex, route, &mut HashMap::new())
    }

    /// [`Store::rebuild`] reusing (and filling) `cache` of versions already
    /// rebuilt by the same route.
    pub fn rebuild_cached(
        &self,
        hex: &str,
        route: Route,
        cache: &mut HashMap<String, ParamSet>,
    ) -> Result<StoredVersion, StoreError> {
        let meta = self.meta(hex)?;
        let params = match route {
            Route::Replay => self.replay_line(hex, cache)?,
            _ => self.materialise(hex, route, cache)?,
        };
        if !meta
            .row
            .manifest
            .verifies(&params, &meta.spec, &meta.row.task)
        {
            let got = version::manifest_of(
                &params,
                &meta.spec,
                &meta.row.task,
                &meta.row.manifest.provenance,
            );
            let chunk = got
                .chunks
                .iter()
                .zip(&meta.row.manifest.chunks)
                .position(|(a, b)| a != b);
            return Err(self.corrupt(
                hex,
                match chunk {
                    Some(i) => format!("rebuilt weights differ from the version in chunk {i}"),
                    None => "rebuilt weights do not hash to the version id".into(),
                },
            ));
        }
        cache.insert(hex.to_string(), params.clone());
        Ok(StoredVersion {
            round: meta.row.round,
            parent: meta.row.manifest.provenance.parent,
            manifest: meta.row.manifest,
            spec: meta.spec,
            task: meta.row.task,
            params,
        })
    }

    /// A keyframe's weights from its chunks, each checked against its hash.
    fn keyframe_weights(&self, hex: &str, meta: &VersionMeta) -> Result<ParamSet, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT vc.idx, vc.hash, c.bytes FROM version_chunks vc LEFT JOIN chunks c ON c.hash = vc.hash
             WHERE vc.version = ?1 ORDER BY vc.idx",
        )?;
        let rows = stmt.query_map([hex], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        })?;
        let mut bytes = Vec::with_capacity(meta.row.manifest.total_len as usize);
        let mut count = 0;
        for row in rows {
            let (idx, hash, data) = row?;
            let data = data.ok_or_else(|| self.corrupt(hex, format!("chunk {idx} is missing")))?;
            if version::chunk_hash(&data)[..] != hash[..]
                || meta.row.manifest.chunks.get(idx as usize).map(|h| &h[..]) != Some(&hash[..])
            {
                return Err(self.corrupt(hex, format!("chunk {idx} does not match its hash")));
            }
            bytes.extend_from_slice(&data);
            count += 1;
        }
        if count != meta.row.manifest.chunks.len() {
            return Err(self.corrupt(
                hex,
                format!(
                    "{count} of {} chunks are stored",
                    meta.row.manifest.chunks.len()
                ),
            ));
        }
        Pipeline::FP32
            .decode(&bytes, &meta.spec.layout())
            .map_err(|e| self.corrupt(hex, format!("weights do not decode: {e}")))
    }

    /// Weights of `hex` by the stored route, or by (a)/(b) when forced.
    fn materialise(
        &self,
        hex: &str,
        route: Route,
        cache: &mut HashMap<String, ParamSet>,
    ) -> Result<ParamSet, StoreError> {
        // walk back to something we can start from
        let mut path = Vec::new();
        let mut at = hex.to_string();
        let mut start = loop {
            if let Some(p) = cache
                .get(&at)
                .filter(|_| at != hex || route != Route::Weights)
            {
                break p.clone();
            }
            let row = self
                .version_row(&at)?
                .ok_or_else(|| self.corrupt(&at, "no such version (a parent was removed?)"))?;
            if row.kind == StorageKind::Keyframe {
                break self.keyframe_weights(&at, &self.meta(&at)?)?;
            }
            if route == Route::Weights {
                return Err(self.corrupt(
                    hex,
                    format!("stored as a {}, not as weights", row.kind.as_str()),
                ));
            }
            let parent = row.parent.clone().ok_or_else(|| {
                self.corrupt(
                    &at,
                    "not a keyframe and has no parent: nothing to rebuild it from",
                )
            })?;
            path.push(row);
            at = parent;
        };
        for row in path.into_iter().rev() {
            start = match (self.delta(&row.version)?, route) {
                (Some(delta), _) => publish::apply(&start, &delta)
                    .map_err(|e| self.corrupt(&row.version, e.to_string()))?,
                (None, Route::Deltas) => {
                    return Err(self.corrupt(
                        &row.version,
                        "has no stored delta (it is kept for replay only)",
                    ));
                }
                (None, _) => {
                    let meta = self.meta(&row.version)?;
                    if !meta.row.clean {
                        return Err(self.corrupt(
                            &row.version,
                            "a downlink residual entered its round: rebuild it by --route replay",
                        ));
                    }
                    let mut residual = ParamSet::zeros(&start.layout());
                    self.replay_step(&start, &meta, &mut residual)?
                }
            };
            cache.insert(row.version, start.clone());
        }
        Ok(start)
    }

    /// Route (c): the seeded initial model of the first version of `hex`'s
    /// line, then every round after it re-aggregated from its kept updates,
    /// carrying the downlink residual exactly as the live server did.
    fn replay_line(
        &self,
        hex: &str,
        cache: &mut HashMap<String, ParamSet>,
    ) -> Result<ParamSet, StoreError> {
        let mut line = Vec::new();
        let mut at = Some(hex.to_string());
        while let Some(h) = at {
            let meta = self.meta(&h)?;
            at = meta
                .row
                .manifest
                .provenance
                .parent
                .as_ref()
                .map(version::hex);
            line.push((h, meta));
        }
        let (root_hex, root) = line.pop().ok_or_else(|| self.corrupt(hex, "empty line"))?;
        let mut params = root.spec.init_params();
        if !root
            .row
            .manifest
            .verifies(&params, &root.spec, &root.row.task)
        {
            return Err(self.corrupt(
                &root_hex,
                "the line's first version is not its spec's seeded initial model (imported?): route replay cannot start there",
            ));
        }
        cache.insert(root_hex, params.clone());
        let mut residual = ParamSet::zeros(&params.layout());
        for (h, meta) in line.into_iter().rev() {
            params = self.replay_step(&params, &meta, &mut residual)?;
            cache.insert(h, params.clone());
        }
        Ok(params)
    }

    /// Re-aggregates one round's kept updates on `parent` and publishes the
    /// result as the live round did.
    fn replay_step(
        &self,
        parent: &ParamSet,
        meta: &VersionMeta,
        residual: &mut ParamSet,
    ) -> Result<ParamSet, StoreError> {
        let hex = version::hex(&meta.row.manifest.version);
        let err = |m: String| self.corrupt(&hex, m);
        let provenance = &meta.row.manifest.provenance;
        let codec = Pipeline::parse(&provenance.codec).map_err(|e| err(e.to_string()))?;
        let downlink =
            Pipeline::parse(&provenance.downlink_codec).map_err(|e| err(e.to_string()))?;
        let mut stmt = self
            .conn
            .prepare("SELECT body, scale FROM kept_updates WHERE round = ?1 ORDER BY seq")?;
        let updates = stmt
            .query_map([meta.row.round as i64], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, f64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if updates.is_empty() {
            return Err(err(format!(
                "round {}'s client updates were not kept (turn on store.keep_updates)",
                meta.row.round
            )));
        }
        let mut sum = PartialSum::for_spec(&meta.spec);
        let mut scratch = ParamSet::zeros(&meta.spec.layout());
        for (body, scale) in updates {
            let update: UpdateBody = postcard::from_bytes(&body)
                .map_err(|e| err(format!("a kept update does not decode: {e}")))?;
            codec
                .decode_into(&update.encoded, &mut scratch)
                .map_err(|e| err(format!("a kept update does not decode: {e}")))?;
            fold_scaled(
                &mut sum,
                &mut scratch,
                update.head as usize,
                update.samples,
                scale,
            );
        }
        let target = sum
            .apply(parent, meta.row.server_lr)
            .ok_or_else(|| err("its kept updates carry no weight".into()))?;
        if meta.row.clean {
            *residual = ParamSet::zeros(&parent.layout());
        }
        let published = publish::publish(
            parent,
            &target,
            residual,
            &downlink,
            meta.row.exact,
            meta.row.round,
        )
        .map_err(|e| err(e.to_string()))?;
        Ok(published.params)
    }

    /// Drops what no retained version needs. With `keep_newest`, versions
    /// older than the newest that many are dropped too, except the fleet's
    /// current model, any version a vehicle holds, and whatever a retained
    /// version is rebuilt from (its parents back to a keyframe). Chunks no
    /// remaining keyframe refers to go, as do deltas and kept updates of
    /// versions that are gone (kept updates stay while a retained version
    /// descends from their round, for route (c)). `dry_run` reports
    /// without changing anything.
    pub fn collect_garbage(
        &self,
        keep_newest: Option<usize>,
        dry_run: bool,
    ) -> Result<GcReport, StoreError> {
        let rows = self.versions()?;
        let by_id: HashMap<&str, &VersionRow> =
            rows.iter().map(|r| (r.version.as_str(), r)).collect();
        let mut retained: std::collections::BTreeSet<String> = match keep_newest {
            None => rows.iter().map(|r| r.version.clone()).collect(),
            Some(n) => {
                let mut keep: std::collections::BTreeSet<String> = rows
                    .iter()
                    .rev()
                    .take(n)
                    .map(|r| r.version.clone())
                    .collect();
                keep.extend(self.current_version()?);
                keep.extend(self.inventory()?.into_iter().map(|(_, v, _, _)| v));
                keep
            }
        };
        let mut stack: Vec<String> = retained.iter().cloned().collect();
        while let Some(v) = stack.pop() {
            let Some(row) = by_id.get(v.as_str()) else {
                continue;
            };
            if row.kind == StorageKind::Keyframe {
                continue;
            }
            if let Some(p) = &row.parent
                && retained.insert(p.clone())
            {
                stack.push(p.clone());
            }
        }
        // rounds whose kept updates a retained version's line replays
        let mut replayed = std::collections::BTreeSet::new();
        for v in &retained {
            let mut at = by_id.get(v.as_str()).copied();
            while let Some(row) = at {
                if !replayed.insert(row.round) {
                    break;
                }
                at = row.parent.as_deref().and_then(|p| by_id.get(p).copied());
            }
        }
        let before = self.storage()?;
        let tx = self.conn.unchecked_transaction()?;
        let mut dropped = Vec::new();
        for row in rows.iter().filter(|r| !retained.contains(&r.version)) {
            for table in ["versions", "version_chunks", "deltas", "lineage"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE version = ?1"),
                    [&row.version],
                )?;
            }
            dropped.push(row.version.clone());
        }
        tx.execute(
            "DELETE FROM deltas WHERE parent NOT IN (SELECT version FROM versions)",
            [],
        )?;
        let chunks = tx.execute(
            "DELETE FROM chunks WHERE hash NOT IN (SELECT hash FROM version_chunks)",
            [],
        )?;
        tx.execute(
            "DELETE FROM specs WHERE hash NOT IN (SELECT spec FROM versions WHERE spec IS NOT NULL)",
            [],
        )?;
        let mut stmt = tx.prepare("SELECT DISTINCT round FROM kept_updates")?;
        let kept_rounds = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        let mut update_rounds = 0;
        for round in kept_rounds {
            if !replayed.contains(&(round as u64)) {
                tx.execute("DELETE FROM kept_updates WHERE round = ?1", [round])?;
                update_rounds += 1;
            }
        }
        let after = storage_totals(&tx)?;
        if dry_run {
            tx.rollback()?;
        } else {
            tx.commit()?;
        }
        Ok(GcReport {
            versions_dropped: dropped,
            versions_kept: retained.len(),
            chunks_dropped: chunks,
            update_rounds_dropped: update_rounds,
            before,
            after,
        })
    }

    /// Every stored version's row, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ROW_COLUMNS} FROM versions ORDER BY round, created_ms"
        ))?;
        let rows = stmt.query_map([], version_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The one stored version whose hex id starts with `prefix` (at least
    /// 4 characters), or an error saying why not.
    pub fn resolve_version(&self, prefix: &str) -> Result<String, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        let bad = |message: String| StoreError::Blob {
            path: self.blobs.clone(),
            message,
        };
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "{prefix:?} is not a version id: give 4 or more of its hex digits (models list shows them)"
            )));
        }
        let matches: Vec<String> = self
            .versions()?
            .into_iter()
            .map(|v| v.version)
            .filter(|v| v.starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(bad(format!("no stored version starts with {prefix}"))),
            many => Err(bad(format!(
                "{prefix} names {} versions; give more digits",
                many.len()
            ))),
        }
    }

    /// The folder beside the database that older releases kept model
    /// files in (`models gc` clears what is left there).
    pub fn blob_dir(&self) -> &std::path::Path {
        &self.blobs
    }

    /// Makes stored version `hex` the fleet's current model from now on: a
    /// server starting after this announces it as the base of its next
    /// round (and the rounds after build on it).
    pub fn rollback_to(&self, hex: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO rollbacks (at_ms, version) VALUES (?1, ?2)",
            params![now_ms as i64, hex],
        )?;
        Ok(())
    }

    /// The fleet's current model: the version of the newest rollback when
    /// no version was stored after it, else the newest version.
    pub fn current_version(&self) -> Result<Option<String>, StoreError> {
        let newest: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT version, created_ms FROM versions ORDER BY round DESC, created_ms DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        // a database from before rollbacks existed, opened read-only, has none
        if !self.has_table("rollbacks")? {
            return Ok(newest.map(|(v, _)| v));
        }
        let rollback: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT version, at_ms FROM rollbacks ORDER BY at_ms DESC, id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match (newest, rollback) {
            (Some((_, created)), Some((back, at))) if at >= created => Some(back),
            (newest, _) => newest.map(|(v, _)| v),
        })
    }

    /// Records that `client` holds model `version` (from its status).
    pub fn record_holding(
        &self,
        client: &str,
        version: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO inventory (client, version, since_ms, seen_ms) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (client) DO UPDATE SET
                since_ms = CASE WHEN version = excluded.version THEN since_ms ELSE excluded.since_ms END,
                version = excluded.version, seen_ms = excluded.seen_ms",
            params![client, version, now_ms as i64],
        )?;
        Ok(())
    }

    /// The fleet inventory: (client, version held, since ms, last seen ms).
    pub fn inventory(&self) -> Result<Vec<(String, String, u64, u64)>, StoreError> {
        if !self.has_table("inventory")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT client, version, since_ms, seen_ms FROM inventory ORDER BY client")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether the database has `table` (one opened read-only may predate it).
    fn has_table(&self, table: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Newest version (highest round), if any.
    pub fn latest_version(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT version FROM versions ORDER BY round DESC, created_ms DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }
}

/// Folds one decoded update scaled by its norm-bound factor, exactly as the
/// live round does (the factor is applied in f32; 1 leaves it unchanged).
pub(crate) fn fold_scaled(
    sum: &mut PartialSum,
    update: &mut ParamSet,
    head: usize,
    samples: u64,
    scale: f64,
) {
    let factor = scale as f32;
    if factor != 1.0 {
        update.values_mut().for_each(|v| *v *= factor);
    }
    sum.fold(update, head, samples as f64);
}

/// Lineage rows of `round`'s acknowledged updates (with their bodies), in
/// the order they were folded; none for a version with no parent.
fn lineage_of(
    conn: &rusqlite::Connection,
    round: u64,
    has_parent: bool,
) -> Result<Vec<(LineageRow, Vec<u8>)>, StoreError> {
    if !has_parent {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT u.client, u.body, u.scale, l.head FROM round_updates u
         LEFT JOIN ledger l ON l.round = u.round AND l.client = u.client
         WHERE u.round = ?1 ORDER BY u.rowid",
    )?;
    let rows = stmt.query_map([round as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, f64>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (client, body, scale, head) = row?;
        let samples = postcard::from_bytes::<UpdateBody>(&body).map_or(0, |u| u.samples);
        out.push((
            LineageRow {
                client,
                samples,
                head,
                update_hash: blake3::hash(&body).to_hex().to_string(),
                scale,
            },
            body,
        ));
    }
    Ok(out)
}

/// Bytes held, by purpose, as `conn` (or a transaction on it) sees them.
fn storage_totals(conn: &rusqlite::Connection) -> Result<StorageTotals, StoreError> {
    let sum = |sql: &str| -> Result<u64, StoreError> {
        Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
    };
    // a database opened read-only may predate the shared specs
    let has_specs =
        sum("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'specs'")? > 0;
    Ok(StorageTotals {
        chunk_bytes: sum("SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM chunks")?,
        delta_bytes: sum("SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM deltas")?,
        meta_bytes: sum("SELECT COALESCE(SUM(LENGTH(meta)), 0) FROM versions")?
            + if has_specs {
                sum("SELECT COALESCE(SUM(LENGTH(spec)), 0) FROM specs")?
            } else {
                0
            },
        update_bytes: sum("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM kept_updates")?,
    })
}
