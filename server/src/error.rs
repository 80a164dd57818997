//! Why the server stopped.

use crate::{broker, config};
use convoy_store as store;
use thiserror::Error;

/// Why the server stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Bad configuration.
    #[error("config: {0}")]
    Config(String),
    /// Database or blob store.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Schema or test data.
    #[error("data {path}: {message}")]
    Data {
        /// file
        path: String,
        /// what is wrong
        message: String,
    },
    /// A message could not be serialised (a bug).
    #[error(transparent)]
    Wire(#[from] convoy_shared::wire::WireError),
    /// Embedded broker.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The fleet's schemas or statistics do not make one model.
    #[error("alignment: {0}")]
    Align(String),
    /// The database was written for another model.
    #[error(
        "database {db} holds models with a different spec than this config (features, classes, layers or recipe changed); use a new --db or restore the old config"
    )]
    SpecMismatch {
        /// database path
        db: String,
    },
}

impl From<config::ConfigError> for ServerError {
    fn from(e: config::ConfigError) -> Self {
        ServerError::Config(e.to_string())
    }
}
