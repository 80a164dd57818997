//! SCAFFOLD (Karimireddy et al., ICML 2020): control variates that correct
//! each vehicle's drift toward its own data.
//!
//! The server keeps a control `c`, each vehicle its own `cᵢ` (zeros at
//! first). A vehicle trains on `∇fᵢ(w) + c − cᵢ` (the correction is a
//! linear term added to its loss, see `convoy_shared::model::Mlp::dot`),
//! then takes the paper's "option II" step `cᵢ⁺ = cᵢ − c − Δyᵢ / (K·η_l)`,
//! `Δyᵢ` the update it sent, `K` its local steps, `η_l` the recipe's rate.
//!
//! The vehicle's `Δcᵢ = cᵢ⁺ − cᵢ = −c − Δyᵢ / (K·η_l)` is a function of what
//! the server already has (`c`, the decoded update, the steps it reports),
//! so it is never sent: SCAFFOLD costs no uplink byte. The vehicle computes
//! its step from the *decoded* update (what the codec delivered, error
//! feedback included), so both sides compute the same `Δcᵢ` to the bit.
//!
//! The server's step, per parameter group over the `n_g` vehicles that
//! trained it, with `q` the round's share of the fleet that reported:
//! `c⁺ = c + q · mean(Δcᵢ) = (1 − q)·c − q · mean(Δyᵢ / (K·η_l))`.
//!
//! The downlink is the new `c`, encoded once by the downlink codec's
//! quantiser and entropy stages (not its sparsifier: `c` is no delta, and
//! a sparse `c` would correct only a few weights); the server keeps exactly
//! what it published, decoded, as its `c`, so vehicle and server agree.
//! Vehicles fetch it by its id ([`Control::id`]) and the bytes are
//! counted in the ledger like any model byte.

use super::sum::PartialSum;
use crate::codec::{CodecError, Pipeline, Sparsify};
use crate::messages::Delta;
use crate::params::{Layout, ParamError, ParamSet};
use crate::spec::ModelSpec;

/// The codec the server control travels in: the downlink codec without its
/// sparsifier.
pub fn control_codec(downlink: Pipeline) -> Pipeline {
    Pipeline {
        sparsify: Sparsify::Dense,
        ..downlink
    }
}

/// The server control as published: encoded bytes, their codec, and the
/// decoded values both sides use.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// What is published and stored (postcard of `{codec, bytes}`).
    pub published: Delta,
    /// `published` decoded: the control every vehicle and the server use.
    pub values: ParamSet,
}

impl Control {
    /// Publishes `c` under `codec` (the control codec of the downlink).
    pub fn publish(c: &ParamSet, codec: Pipeline) -> Self {
        let (bytes, values) = codec.round_trip(c, 0);
        Self {
            published: Delta { codec, bytes },
            values,
        }
    }

    /// The all-zero control a fleet starts from.
    pub fn zeros(spec: &ModelSpec, codec: Pipeline) -> Self {
        Self::publish(&ParamSet::zeros(&spec.layout()), codec)
    }

    /// A stored control back, checked against the model's layout.
    pub fn from_published(published: Delta, spec: &ModelSpec) -> Result<Self, CodecError> {
        let values = published.codec.decode(&published.bytes, &spec.layout())?;
        Ok(Self { published, values })
    }

    /// The bytes vehicles fetch: the postcard encoding of [`Self::published`].
    pub fn payload(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.published).unwrap_or_default()
    }

    /// The id it is announced and fetched by: the BLAKE3 hash of
    /// [`Self::payload`].
    pub fn id(&self) -> [u8; 32] {
        payload_id(&self.payload())
    }
}

/// The id of a control payload, as [`Control::id`] computes it.
pub fn payload_id(payload: &[u8]) -> [u8; 32] {
    *blake3::hash(payload).as_bytes()
}

/// A fetched payload back into a control, refused unless it hashes to
/// `id` and fits `spec`.
pub fn receive(payload: &[u8], id: &[u8; 32], spec: &ModelSpec) -> Option<ParamSet> {
    if payload_id(payload) != *id {
        return None;
    }
    let published: Delta = postcard::from_bytes(payload).ok()?;
    let values = published
        .codec
        .decode(&published.bytes, &spec.layout())
        .ok()?;
    values.check_finite().ok()?;
    Some(values)
}

/// The correction a vehicle adds to its gradient, `c − cᵢ`, on the
/// tensors it trains (`trains(i)`), zero elsewhere.
pub fn correction(
    c: &ParamSet,
    own: &ParamSet,
    trains: impl Fn(usize) -> bool,
) -> Result<ParamSet, ParamError> {
    let mut out = c.sub(own)?;
    for (i, tensor) in out.tensors.iter_mut().enumerate() {
        if !trains(i) {
            tensor.data.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    Ok(out)
}

/// The vehicle's step `cᵢ⁺ = cᵢ − c − sent / (K·η_l)` on the tensors it
/// trained; the others keep `cᵢ`.
pub fn client_step(
    own: &ParamSet,
    c: &ParamSet,
    sent: &ParamSet,
    steps: u64,
    lr: f32,
    trains: impl Fn(usize) -> bool,
) -> Result<ParamSet, ParamError> {
    own.check_layout(&c.layout())?;
    own.check_layout(&sent.layout())?;
    let inv = 1.0 / (steps.max(1) as f64 * lr.max(f32::MIN_POSITIVE) as f64);
    let mut out = own.clone();
    for (i, ((o, c), s)) in out
        .tensors
        .iter_mut()
        .zip(&c.tensors)
        .zip(&sent.tensors)
        .enumerate()
    {
        if !trains(i) {
            continue;
        }
        for ((o, c), s) in o.data.iter_mut().zip(&c.data).zip(&s.data) {
            *o = (*o as f64 - *c as f64 - *s as f64 * inv) as f32;
        }
    }
    Ok(out)
}

/// The server's running sum of `Δyᵢ / (K·η_l)` over a round's kept
/// updates, per parameter group.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSum(PartialSum);

impl ControlSum {
    /// An empty sum for `spec`'s parameters.
    pub fn for_spec(spec: &ModelSpec) -> Self {
        Self(PartialSum::for_spec(spec))
    }

    /// An empty sum for `layout`, every tensor in one group.
    pub fn new(layout: Layout) -> Self {
        Self(PartialSum::new(layout))
    }

    /// Adds one decoded update of a vehicle that trained head `head` for
    /// `steps` steps at rate `lr`, first scaled by its norm-bound factor
    /// `scale` (as the model's sum took it).
    pub fn fold(&mut self, update: &ParamSet, head: usize, steps: u64, lr: f32, scale: f64) {
        let inv = scale / (steps.max(1) as f64 * lr.max(f32::MIN_POSITIVE) as f64);
        // weight 1 each: the step takes the mean over the vehicles
        self.0.fold_scaled(update, head, inv, 1.0);
    }

    /// Updates folded in.
    pub fn updates(&self) -> u64 {
        self.0.updates()
    }

    /// The server's step `(1 − q)·c − q · mean(Δyᵢ / (K·η_l))` per group,
    /// `q` in [0, 1] the share of the fleet that reported; a group nobody
    /// trained keeps its control.
    pub fn step(&self, c: &ParamSet, q: f64) -> ParamSet {
        let q = q.clamp(0.0, 1.0);
        self.0.map_groups(c, |value, sum, count| {
            ((1.0 - q) * value as f64 - q * sum / count) as f32
        })
    }
}

#[cfg(test)]
#[path = "scaffold_tests.rs"]
mod tests;
