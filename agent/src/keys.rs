//! The keys an agent signs and verifies with.

use crate::config::IdentityConfig;
use crate::error::AgentError;
use convoy_shared::identity::{PublicKey, SecretKey};

/// This vehicle's secret key and the server's public key.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs everything this vehicle publishes.
    pub vehicle: SecretKey,
    /// Verifies everything the server publishes.
    pub server: PublicKey,
}

impl Keys {
    /// Reads both key files.
    pub fn load(config: &IdentityConfig) -> Result<Self, AgentError> {
        Ok(Self {
            vehicle: SecretKey::read(&config.key_file)?,
            server: PublicKey::read(&config.server_key_file)?,
        })
    }
}
