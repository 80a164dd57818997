//! The agent's retained status message: what it is doing, for the server
//! (online, codecs it can run, rows it declares) and for operators
//! (deployment, version).

use crate::config::AgentConfig;
use convoy_shared::messages::{self, AgentState, Status};

/// A status message; `session` and `seq` come from the agent, as do the
/// model it holds and its measured training speed.
pub fn status(
    config: &AgentConfig,
    state: AgentState,
    round: u64,
    samples: usize,
    detail: &str,
    (session, seq): (u64, u64),
    (model, throughput): (
        convoy_shared::version::VersionId,
        convoy_shared::cost::Throughput,
    ),
) -> Status {
    // Ids were validated with the config, so they always fit.
    let client = messages::id(&config.client_id).unwrap_or_default();
    Status {
        round,
        // a dishonest vehicle (fault injection) declares what it will claim
        samples: config
            .faults
            .attack
            .map_or(samples as u64, |a| a.rows(samples as u64)),
        detail: messages::detail(detail),
        model,
        throughput,
        deployment: config
            .deployment
            .as_deref()
            .and_then(messages::id)
            .unwrap_or_default(),
        ..Status::new(client, state, (session, seq))
    }
}
