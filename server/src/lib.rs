//! convoy-server: runs federated rounds for a fleet over MQTT, aggregates
//! updates in O(model) memory, versions every model and keeps a ledger of
//! bandwidth and retraining cost per round and per vehicle.
//!
//! [`run()`] is the whole server; the binary only parses flags and calls it.
//!
//! | module | holds |
//! |---|---|
//! | [`run`](mod@run) | the I/O loop around the coordinator |
//! | [`align`](mod@align) | the schema and statistics rounds (no I/O) |
//! | [`coordinator`] | the round state machine (no I/O) |
//! | [`aggregator`] | the streaming weighted sum |
//! | [`store`] | SQLite ledger and model versions |
//! | [`broker`] | the embedded MQTT broker, authenticated |
//! | [`identity`] | key pairs, the vehicle keyring, `provision` |
//! | [`http`] | `/metrics`, the JSON API, health, the dashboard |
//! | [`report`] | the `report` command |
//! | [`config`] | the TOML config |
//! | `tools` | demo, simulator, local fleets (feature `tools`) |
//! | `deploy` | SSH deploy (feature `tools`) |

#![forbid(unsafe_code)]

pub mod aggregator;
pub mod align;
pub mod broker;
pub mod config;
pub mod coordinator;
#[cfg(feature = "tools")]
pub mod deploy;
pub mod error;
pub mod http;
pub mod identity;
pub mod models;
pub mod plan;
pub mod publish;
pub mod report;
pub mod run;
pub mod store;
#[cfg(feature = "tools")]
pub mod tools;

pub use coordinator::RejectionCounts;
pub use error::ServerError;
pub use run::{Hooks, Prepared, RunSummary, run, run_observed, run_prepared, spec_from_config};
