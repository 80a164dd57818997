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
use convoy_shared::eval::Evaluation;
use convoy_shared::messages::UpdateBody;
use convoy_shared::params::ParamSet;
use convoy_shared::spec::{ModelSpec, Recipe};
use convoy_shared::strategy::publish::{self, Delta};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE, Manifest, VersionId};
mod fleet;
mod gc;
mod read;
mod rebuild;
mod save;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl Route {
    /// Every route, by its name on the command line.
    pub const ALL: [(&'static str, Route); 4] = [
        ("stored", Route::Stored),
        ("weights", Route::Weights),
        ("deltas", Route::Deltas),
        ("replay", Route::Replay),
    ];
}

impl std::str::FromStr for Route {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Route::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                let names: Vec<&str> = Route::ALL.iter().map(|(n, _)| *n).collect();
                format!("no route {name:?}; one of {}", names.join(", "))
            })
    }
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
    /// The server optimiser's state after the round (postcard), kept with
    /// the version so a restart and a replay continue from it.
    pub optimizer_state: Option<&'a [u8]>,
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
            optimizer_state: None,
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
    /// The weight it counted with (its samples, capped; 1 under equal weights).
    pub weight: f64,
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
}
