//! Turning a finished training run into the update that is sent: `local −
//! base`, plus the residual earlier rounds' lossy codecs left behind (error
//! feedback), encoded by the round's codec pipeline. Runs on the training
//! thread, off the MQTT loop.

use crate::state::PendingUpdate;
use crate::trainer::{TrainError, Trained};
use convoy_shared::codec::Pipeline;
use convoy_shared::messages::UpdateBody;
use convoy_shared::params::ParamSet;
use convoy_shared::version::VersionId;
use std::time::Instant;

/// How one round's update is encoded.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// Round the update answers.
    pub round: u64,
    /// Model version it is relative to.
    pub base_version: VersionId,
    /// The round's codec pipeline.
    pub codec: Pipeline,
    /// Seed of randomised codec stages (the same as training's).
    pub seed: u64,
    /// Chunk size the update is sent with.
    pub chunk_size: u32,
    /// What earlier lossy rounds have not delivered yet.
    pub residual: Option<ParamSet>,
    /// The spec's head the vehicle trained.
    pub head: u32,
    /// A dishonest vehicle's attack (fault injection).
    pub attack: Option<crate::config::Attack>,
}

/// Encodes `trained` (from `base`, on `samples` rows) into the update to
/// persist and send, with the residual it leaves; also returns the encode
/// seconds and the update as the server will decode it.
pub fn encode(
    trained: Trained,
    base: &ParamSet,
    samples: u64,
    encoding: &Encoding,
) -> Result<(PendingUpdate, f64, ParamSet), TrainError> {
    let started = Instant::now();
    let mut update = trained.params.sub(base)?;
    let mut samples = samples;
    if let Some(attack) = &encoding.attack {
        attack.apply(&mut update);
        samples = attack.rows(samples);
    }
    if let Some(residual) = &encoding.residual {
        update.add_scaled(residual, 1.0)?;
    }
    let codec = encoding.codec;
    let (encoded, decoded) = codec.round_trip(&update, encoding.seed);
    let residual = (!codec.is_lossless())
        .then(|| update.sub(&decoded))
        .transpose()?;
    let mut stats = trained.stats;
    stats.encode_seconds = started.elapsed().as_secs_f64();
    stats.residual_norm = residual.as_ref().map_or(0.0, ParamSet::l2_norm);
    let body = UpdateBody {
        samples,
        head: encoding.head,
        stats,
        codec,
        encoded,
    };
    let body = postcard::to_allocvec(&body).map_err(|e| TrainError::Encode(e.to_string()))?;
    let pending = PendingUpdate {
        round: encoding.round,
        base_version: encoding.base_version,
        body,
        chunk_size: encoding.chunk_size,
        residual,
    };
    Ok((pending, started.elapsed().as_secs_f64(), decoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_shared::codec;
    use convoy_shared::messages::TrainStats;
    use convoy_shared::params::Tensor;

    fn params(values: Vec<f32>) -> ParamSet {
        ParamSet {
            tensors: vec![Tensor {
                name: "w".into(),
                shape: vec![values.len() as u32],
                data: values,
            }],
        }
    }

    fn encoding(codec: &str, residual: Option<ParamSet>) -> Encoding {
        Encoding {
            round: 4,
            base_version: [9; 32],
            codec: codec::by_name(codec).unwrap(),
            seed: 1,
            chunk_size: 1024,
            residual,
            head: 0,
            attack: None,
        }
    }

    fn decoded(pending: &PendingUpdate, layout_of: &ParamSet) -> ParamSet {
        let body: UpdateBody = postcard::from_bytes(&pending.body).unwrap();
        body.codec
            .decode(&body.encoded, &layout_of.layout())
            .unwrap()
    }

    #[test]
    fn lossless_update_is_exact_and_leaves_no_residual() {
        let base = params(vec![1.0, 2.0, 3.0]);
        let trained = Trained {
            params: params(vec![1.5, 2.0, 2.0]),
            stats: TrainStats::default(),
        };
        let (pending, _, sent) = encode(trained, &base, 7, &encoding("fp32", None)).unwrap();
        assert_eq!(pending.round, 4);
        assert_eq!(pending.residual, None);
        assert_eq!(
            decoded(&pending, &base).tensors[0].data,
            vec![0.5, 0.0, -1.0]
        );
        assert_eq!(sent.tensors[0].data, vec![0.5, 0.0, -1.0]);
    }

    #[test]
    fn residual_carries_over_into_the_next_update() {
        // top-k keeps one of four values; what it drops must come back later
        let base = params(vec![0.0; 4]);
        let trained = |v: Vec<f32>| Trained {
            params: params(v),
            stats: TrainStats::default(),
        };
        let (first, _, _) = encode(
            trained(vec![4.0, 3.0, 0.0, 0.0]),
            &base,
            1,
            &encoding("topk:0.25", None),
        )
        .unwrap();
        let residual = first.residual.clone().unwrap();
        assert_eq!(
            decoded(&first, &base).tensors[0].data,
            vec![4.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(residual.tensors[0].data, vec![0.0, 3.0, 0.0, 0.0]);
        // next round trains nothing new: the residual alone is sent
        let (second, _, _) = encode(
            trained(vec![0.0; 4]),
            &base,
            1,
            &encoding("topk:0.25", Some(residual)),
        )
        .unwrap();
        assert_eq!(
            decoded(&second, &base).tensors[0].data,
            vec![0.0, 3.0, 0.0, 0.0]
        );
        assert_eq!(second.residual.unwrap().l2_norm(), 0.0);
    }
}
