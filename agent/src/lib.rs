//! convoy-agent: trains on a vehicle's own data and syncs model updates
//! with the fleet's server over MQTT.
//!
//! [`run()`] is the whole agent; the binary only parses flags and calls it.
//! One round, from the agent's side: a retained announcement arrives; the
//! agent fetches the base model's missing chunks; trains on a thread of its
//! own; encodes `local - base`; persists the update; uploads it in chunks;
//! and forgets it only once the server's receipt arrives. A restart in
//! between re-sends the stored update, which the server counts once.
//!
//! | module | holds |
//! |---|---|
//! | [`run`](mod@run) | the I/O loop: link, ticks, training threads |
//! | [`round`] | the round state machine (no I/O): announce, fetch, train, upload, receipt |
//! | [`inbound`] | every message from the server decoded once: topic, size, signature |
//! | [`rejection`] | what the vehicle refuses: counted, rate-limited warnings |
//! | [`encode`] | update encoding with the error-feedback residual |
//! | [`data`] | the vehicle's CSV and how it becomes a training set |
//! | [`trainer`] | the training loop (burn) with pause and resume |
//! | [`calibrate`] | this device's training speed, measured at start-up |
//! | [`cpu_time`] | training seconds as the CPU time training threads ran |
//! | [`limits`] | the largest model a vehicle will build |
//! | [`policy`] | when the vehicle allows training |
//! | [`state`] | the state directory that survives power loss |
//! | [`status`] | the retained status message |
//! | [`keys`] | the vehicle's signing key and the server's public key |
//! | [`backend`] | CPU or GPU (wgpu) |
//! | [`config`] | the TOML config |

#![forbid(unsafe_code)]

pub mod backend;
pub mod calibrate;
pub mod config;
pub mod cpu_time;
pub mod data;
pub mod encode;
pub mod error;
pub mod inbound;
pub mod keys;
pub mod limits;
pub mod policy;
pub mod rejection;
pub mod round;
pub mod run;
pub mod state;
pub mod status;
pub mod trainer;

pub use convoy_runtime::ConfigError;
pub use data::LocalData;
pub use error::AgentError;
pub use keys::Keys;
pub use run::{preflight, run, run_with_data};
