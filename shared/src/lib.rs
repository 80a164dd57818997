//! convoy's pure core: everything the agent and the server must agree on.
//!
//! No I/O and no async runtime live here: the wire format, topic names,
//! update codecs, the flat parameter layout, the model spec and recipe, the
//! burn model and its evaluation, CSV datasets, model version hashing and
//! the cost model are plain types and functions, tested with plain unit and
//! property tests.

pub mod align;
pub mod chunk;
pub mod codec;
pub mod cost;
pub mod dataset;
pub mod eval;
pub mod identity;
pub mod messages;
pub mod model;
pub mod params;
pub mod spec;
pub mod strategy;
pub mod topics;
pub mod units;
pub mod version;
pub mod wire;

pub use params::{ParamSet, Tensor};
