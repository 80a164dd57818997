//! Which vehicles are online and which codec stages they can run, from their
//! retained status messages.

use super::{Coordinator, Rejection};
use convoy_shared::messages::{AgentState, Status};
use convoy_shared::wire::{self, Kind};
use std::collections::HashMap;

/// Largest status message decoded.
const MAX_STATUS: usize = 4096;

/// What the coordinator knows of a client from its status messages.
#[derive(Debug, Clone, Default)]
pub(super) struct ClientInfo {
    pub(super) online: bool,
    pub(super) codecs: Vec<String>,
}

/// The clients seen, by id.
#[derive(Debug, Default)]
pub(super) struct Registry {
    clients: HashMap<String, ClientInfo>,
}

impl Registry {
    /// Online clients that can run every one of `stages`, sorted by id.
    pub(super) fn eligible(&self, stages: &[&str]) -> Vec<String> {
        let mut ids: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, info)| {
                info.online && stages.iter().all(|s| info.codecs.iter().any(|c| c == s))
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

impl Coordinator {
    pub(super) fn on_status(&mut self, client: &str, payload: &[u8]) {
        if payload.is_empty() {
            self.registry.clients.remove(client); // retained status cleared
            return;
        }
        match wire::decode::<Status>(payload, Kind::Status, MAX_STATUS) {
            Ok(status) if status.client.as_str() == client => {
                let info = self.registry.clients.entry(client.to_string()).or_default();
                let was_online = info.online;
                info.online = status.state != AgentState::Offline;
                info.codecs = status.codecs.iter().map(|c| c.to_string()).collect();
                if info.online != was_online {
                    tracing::info!(client, online = info.online, state = ?status.state, "client status");
                }
            }
            Ok(_) => self.reject(
                None,
                Some(client),
                &Rejection::ClientMismatch("status names another client"),
            ),
            Err(e) => self.reject(None, Some(client), &Rejection::decode(e.reason(), e)),
        }
    }
}
