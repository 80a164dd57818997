//! The keys an agent signs and verifies with.

use crate::config::IdentityConfig;
use crate::error::AgentError;
use convoy_shared::identity::{SecretKey, Trusted};

/// This vehicle's secret key and the server's public key.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs everything this vehicle publishes.
    pub vehicle: SecretKey,
    /// Verifies everything the server publishes: its key and, during a
    /// rotation's overlap, its previous one (a second line in
    /// `server_key_file`).
    pub server: Trusted,
}

impl Keys {
    /// Reads both key files.
    pub fn load(config: &IdentityConfig) -> Result<Self, AgentError> {
        Ok(Self {
            vehicle: SecretKey::read(&config.key_file)?,
            server: Trusted::read(&config.server_key_file)?,
        })
    }
}
