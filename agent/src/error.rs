//! Why the agent stopped.

use crate::state::StateError;
use convoy_runtime::ConfigError;
use thiserror::Error;

/// A condition the agent cannot run through.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// State directory trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// Local data unusable.
    #[error("data {path}: {message}")]
    Data {
        /// file
        path: String,
        /// what is wrong
        message: String,
    },
    /// The vehicle's key or the server's public key is missing or unreadable.
    #[error(
        "identity: {0} (create the keys with `convoy-server provision <client_id>` and install vehicle.key and server.pub as [identity] names them)"
    )]
    Identity(#[from] convoy_shared::identity::KeyError),
    /// The broker link gave up (another client holds this client id).
    #[error("broker: {0}")]
    Link(String),
    /// A configured fault fired (tests only).
    #[error("fault injected: {0}")]
    FaultInjected(&'static str),
}
