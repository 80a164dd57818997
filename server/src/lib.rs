//! convoy-server: runs federated rounds for a fleet over MQTT, aggregates
//! updates in O(model) memory, versions every model and keeps a ledger of
//! bandwidth and retraining cost per round and per vehicle.
//!
//! [`run()`] is the whole server; the binary only parses flags and calls it.
//! The database is `convoy-store`, the aggregation maths
//! `convoy_shared::strategy`; the operator commands live in `convoy-cli`
//! and the demo, simulator and deploy in `convoy-tools`.
//!
//! | module | holds |
//! |---|---|
//! | [`run`](mod@run) | the I/O loop around the coordinator |
//! | [`align`](mod@align) | the schema and statistics rounds (no I/O) |
//! | [`coordinator`] | the round state machine (no I/O) |
//! | [`broker`] | the embedded MQTT broker, authenticated |
//! | [`credentials`] | broker passwords: made, hashed, compared |
//! | [`identity`] | key pairs, the vehicle keyring, `provision` |
//! | [`inbound`] | every inbound message decoded once: topic, size, signature, sender |
//! | [`rejection`] | every refusal: typed, counted, recorded, rate-limited logs |
//! | [`http`] | `/metrics`, the JSON API, health, the dashboard |
//! | [`config`] | the TOML config |

#![forbid(unsafe_code)]

pub mod align;
pub mod broker;
pub mod config;
pub mod coordinator;
pub mod credentials;
pub mod error;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod mosquitto;
pub mod rejection;
pub mod run;
pub mod tls;

pub use error::ServerError;
pub use rejection::RejectionCounts;
pub use run::{Hooks, Prepared, RunSummary, run, run_observed, run_prepared, spec_from_config};
