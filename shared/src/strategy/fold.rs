//! One update into a round's sum. The live round (as each update arrives),
//! a server resuming an open round after a restart, and the store's replay
//! route all fold through here, so the three reach bit-identical sums.

use super::sum::PartialSum;
use crate::codec::{CodecError, Pipeline};
use crate::messages::UpdateBody;
use crate::params::ParamSet;

/// Why a kept update could not be folded again.
#[derive(Debug, thiserror::Error)]
pub enum KeptUpdateError {
    /// The stored body is not an [`UpdateBody`].
    #[error("a kept update does not decode: {0}")]
    Body(#[from] postcard::Error),
    /// Its encoded weights do not decode under the round's codec.
    #[error("a kept update does not decode: {0}")]
    Codec(#[from] CodecError),
    /// It names a head the model does not have.
    #[error("a kept update names head {head} of a model with {heads}")]
    Head {
        /// The head it names.
        head: u32,
        /// Heads the model has.
        heads: usize,
    },
}

/// An accepted update as the store kept it (its postcard [`UpdateBody`]),
/// its weights still encoded; checked to name a head the model has.
pub fn kept_header(body: &[u8], heads: usize) -> Result<UpdateBody, KeptUpdateError> {
    let update: UpdateBody = postcard::from_bytes(body)?;
    if update.head as usize >= heads {
        return Err(KeptUpdateError::Head {
            head: update.head,
            heads,
        });
    }
    Ok(update)
}

/// Decodes an accepted update as the store kept it into `scratch`; the
/// body's head and samples come back.
pub fn decode_kept(
    body: &[u8],
    codec: &Pipeline,
    heads: usize,
    scratch: &mut ParamSet,
) -> Result<UpdateBody, KeptUpdateError> {
    let update = kept_header(body, heads)?;
    codec.decode_into(&update.encoded, scratch)?;
    Ok(update)
}

/// Folds one decoded update into `sum` with `weight`, first scaled by its
/// norm-bound factor `scale` (applied in f32; 1 leaves it as it is), as
/// [`super::robust::aggregate`] folds under FedAvg.
pub fn fold_update(
    sum: &mut PartialSum,
    update: &mut ParamSet,
    head: usize,
    weight: f64,
    scale: f64,
) {
    let factor = scale as f32;
    if factor != 1.0 {
        update.values_mut().for_each(|v| *v *= factor);
    }
    sum.fold(update, head, weight);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::TrainStats;
    use crate::params::Layout;

    fn body(head: u32, values: &[f32]) -> (Vec<u8>, Layout) {
        let set = ParamSet::vector(values);
        let encoded = Pipeline::FP32.encode(&set, 0);
        let update = UpdateBody {
            samples: 7,
            head,
            stats: TrainStats::default(),
            codec: Pipeline::FP32,
            encoded,
        };
        (postcard::to_allocvec(&update).unwrap(), set.layout())
    }

    #[test]
    fn a_kept_update_decodes_and_folds_scaled() {
        let (bytes, layout) = body(0, &[2.0, -4.0]);
        let mut scratch = ParamSet::zeros(&layout);
        let update = decode_kept(&bytes, &Pipeline::FP32, 1, &mut scratch).unwrap();
        assert_eq!(update.samples, 7);
        let mut sum = PartialSum::new(layout.clone());
        fold_update(&mut sum, &mut scratch, 0, update.samples as f64, 0.5);
        let mean = sum.apply(&ParamSet::zeros(&layout), 1.0).unwrap();
        assert_eq!(mean.values().collect::<Vec<_>>(), vec![1.0, -2.0]);
    }

    #[test]
    fn a_head_the_model_lacks_and_garbage_are_refused() {
        let (bytes, layout) = body(3, &[1.0]);
        let mut scratch = ParamSet::zeros(&layout);
        assert!(matches!(
            decode_kept(&bytes, &Pipeline::FP32, 2, &mut scratch),
            Err(KeptUpdateError::Head { head: 3, heads: 2 })
        ));
        assert!(matches!(
            decode_kept(&[0xff; 3], &Pipeline::FP32, 2, &mut scratch),
            Err(KeptUpdateError::Body(_))
        ));
    }
}
