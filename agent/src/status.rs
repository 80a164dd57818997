//! The agent's retained status message: what it is doing, for the server
//! (online, codecs it can run) and for operators (deployment, version).

use crate::config::AgentConfig;
use convoy_shared::codec;
use convoy_shared::messages::{self, AgentState, Status};
use convoy_shared::wire::{self, Kind, WireError};

/// An encoded status message.
pub fn payload(
    config: &AgentConfig,
    state: AgentState,
    round: u64,
    samples: usize,
    detail: &str,
) -> Result<Vec<u8>, WireError> {
    // Ids were validated with the config, so they always fit.
    let status = Status {
        client: messages::id(&config.client_id).unwrap_or_default(),
        state,
        round,
        codecs: codec::STAGES
            .iter()
            .filter_map(|c| heapless::String::try_from(*c).ok())
            .collect(),
        samples: samples as u64,
        detail: messages::detail(detail),
        version: heapless::String::try_from(env!("CARGO_PKG_VERSION")).unwrap_or_default(),
        deployment: config
            .deployment
            .as_deref()
            .and_then(messages::id)
            .unwrap_or_default(),
    };
    wire::encode(Kind::Status, &status)
}
