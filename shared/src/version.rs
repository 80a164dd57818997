//! Model versions: BLAKE3 Merkle roots over fixed-size chunks of the
//! canonical parameters, bound to the pipeline spec that gives them meaning.
//!
//! Weights alone are not recoverable, weights plus spec are: the version id
//! commits to both, and an agent that fetched every chunk can check it holds
//! exactly the announced model.

use crate::codec::Pipeline;
use crate::params::ParamSet;
use crate::spec::{ModelSpec, Recipe};
use serde::{Deserialize, Serialize};

/// A version id: 32-byte BLAKE3 root.
pub type VersionId = [u8; 32];

/// Size of the content-addressed chunks a model is split into.
pub const MODEL_CHUNK_SIZE: usize = 32 * 1024;

/// What an agent needs to fetch and verify a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The version id (Merkle root bound to the spec hash).
    pub version: VersionId,
    /// Hash of the pipeline spec.
    pub spec_hash: [u8; 32],
    /// Length of the canonical parameter bytes.
    pub total_len: u32,
    /// BLAKE3 of each [`MODEL_CHUNK_SIZE`] chunk, in order.
    pub chunks: Vec<[u8; 32]>,
    /// How the weights came to be: parent, strategy, codecs.
    pub provenance: Provenance,
}

impl Manifest {
    /// True when `params` under `spec` and `recipe` give exactly this
    /// manifest (with its own provenance).
    pub fn verifies(&self, params: &ParamSet, spec: &ModelSpec, recipe: &Recipe) -> bool {
        manifest_of(params, spec, recipe, &self.provenance) == *self
    }
}

/// The part of a version's identity that is neither weights nor model
/// spec: where it came from and how it was made. Two runs that reach the
/// same weights by different strategies or codecs are different versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The version it was aggregated from; `None` for an initial model.
    pub parent: Option<VersionId>,
    /// Aggregation strategy and its parameters, e.g. `fedavg:lr=1`.
    pub strategy: String,
    /// Update codec of the round that made it.
    pub codec: Pipeline,
    /// Codec of the published delta from its parent.
    pub downlink_codec: Pipeline,
}

/// Hash of everything besides the weights that defines a model.
pub fn spec_hash(spec: &ModelSpec, recipe: &Recipe) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"convoy-spec-v3");
    h.update(&postcard::to_allocvec(spec).unwrap_or_default());
    h.update(&postcard::to_allocvec(recipe).unwrap_or_default());
    *h.finalize().as_bytes()
}

/// Merkle root of leaf hashes: pairs hashed upward, an odd last node is
/// carried up unchanged; the empty tree hashes to BLAKE3 of nothing.
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return *blake3::hash(b"").as_bytes();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => {
                    let mut h = blake3::Hasher::new();
                    h.update(&[1]);
                    h.update(a);
                    h.update(b);
                    *h.finalize().as_bytes()
                }
                [a] => *a,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    level[0]
}

/// Hash of one model chunk (domain separated from inner Merkle nodes).
pub fn chunk_hash(bytes: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[0]);
    h.update(bytes);
    *h.finalize().as_bytes()
}

/// Builds the manifest of `params_bytes` under `spec_hash` and `provenance`.
pub fn manifest(params_bytes: &[u8], spec_hash: [u8; 32], provenance: &Provenance) -> Manifest {
    let chunks: Vec<[u8; 32]> = params_bytes
        .chunks(MODEL_CHUNK_SIZE)
        .map(chunk_hash)
        .collect();
    let mut h = blake3::Hasher::new();
    h.update(b"convoy-version-v2");
    h.update(&spec_hash);
    h.update(&postcard::to_allocvec(provenance).unwrap_or_default());
    h.update(&merkle_root(&chunks));
    Manifest {
        version: *h.finalize().as_bytes(),
        spec_hash,
        total_len: params_bytes.len() as u32,
        chunks,
        provenance: provenance.clone(),
    }
}

/// Manifest of a parameter set under a spec, recipe and provenance.
pub fn manifest_of(
    params: &ParamSet,
    spec: &ModelSpec,
    recipe: &Recipe,
    provenance: &Provenance,
) -> Manifest {
    manifest(
        &params.canonical_bytes(),
        spec_hash(spec, recipe),
        provenance,
    )
}

/// Lower-case hex of a version id.
pub fn hex(id: &VersionId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Short hex prefix for logs and tables.
pub fn short(id: &VersionId) -> String {
    hex(id)[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_changes_with_weights_and_spec() {
        let bytes = vec![7u8; MODEL_CHUNK_SIZE * 2 + 5];
        let p = Provenance::default();
        let a = manifest(&bytes, [0; 32], &p);
        assert_eq!(a.chunks.len(), 3);
        assert_eq!(a, manifest(&bytes, [0; 32], &p));
        assert_ne!(a.version, manifest(&bytes, [1; 32], &p).version);
        for other in [
            Provenance {
                parent: Some([3; 32]),
                ..p.clone()
            },
            Provenance {
                strategy: "fedavg:lr=2".into(),
                ..p.clone()
            },
            Provenance {
                codec: "q8".parse().unwrap(),
                ..p.clone()
            },
            Provenance {
                downlink_codec: "q8".parse().unwrap(),
                ..p.clone()
            },
        ] {
            assert_ne!(a.version, manifest(&bytes, [0; 32], &other).version);
        }
        let mut changed = bytes.clone();
        changed[MODEL_CHUNK_SIZE * 2] ^= 1;
        let b = manifest(&changed, [0; 32], &p);
        assert_ne!(a.version, b.version);
        // only the touched chunk differs: the rest can be reused
        assert_eq!(a.chunks[..2], b.chunks[..2]);
        assert_eq!(hex(&a.version).len(), 64);
    }

    /// Ids stored in ledgers and announced on the wire must stay the same
    /// across refactors: this one was computed when provenance joined the id
    /// (spec v3: a shared trunk and one head per label; version v2).
    #[test]
    fn version_id_is_stable() {
        let spec = ModelSpec {
            features: vec![
                crate::spec::Feature::numeric("speed", 50.0, 10.0),
                crate::spec::Feature::numeric("rpm", 2000.0, 500.0),
                crate::spec::Feature::numeric("temp", 80.0, 5.0),
            ],
            heads: vec![crate::spec::Head::classification(
                "fault",
                ["no".into(), "yes".into()],
            )],
            hidden: vec![4],
            init_seed: 7,
        };
        let recipe = Recipe {
            epochs: 2,
            lr: 0.05,
            batch_size: 16,
            clip_norm: 10.0,
        };
        let provenance = Provenance {
            parent: None,
            strategy: "fedavg:lr=1".into(),
            codec: Pipeline::FP32,
            downlink_codec: Pipeline::FP32,
        };
        let id = manifest_of(&spec.init_params(), &spec, &recipe, &provenance).version;
        assert_eq!(
            hex(&id),
            "9d49ef8b61e8a176f7a52f49360a059bf9f9f4242dc3179fc7aa69403f4b31db"
        );
    }
}
