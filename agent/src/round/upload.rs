//! Sending a stored update in chunks, and the server's receipt for it.

use super::{Action, Agent, Outbox};
use crate::error::AgentError;
use crate::state::PendingUpdate;
use convoy_runtime::link::Outgoing;
use convoy_shared::chunk;
use convoy_shared::identity::SecretKey;
use convoy_shared::messages::{self, AgentState, UpdateAck, UpdateChunk};
use convoy_shared::wire::Kind;

/// The messages that carry `pending` from `client` on `topic`, signed by `key`.
pub fn update_messages(
    pending: &PendingUpdate,
    client: &str,
    topic: &str,
    key: &SecretKey,
) -> Vec<Outgoing> {
    // The id was validated with the config, so it always fits.
    let client = messages::id(client).unwrap_or_default();
    chunk::split(&pending.body, pending.chunk_size as usize)
        .filter_map(|(pos, data)| {
            let message = UpdateChunk {
                client: client.clone(),
                round: pending.round,
                base_version: pending.base_version,
                pos,
                data: data.to_vec(),
            };
            super::outgoing::sealed(key, Kind::UpdateChunk, topic, &message)
        })
        .collect()
}

impl Agent {
    /// Sends `pending` and waits for its receipt.
    pub(super) fn upload(&mut self, pending: &PendingUpdate, out: &mut Vec<Action>) {
        let messages = update_messages(
            pending,
            &self.config.client_id,
            self.topics.update.as_str(),
            &self.keys.vehicle,
        );
        tracing::debug!(
            round = pending.round,
            chunks = messages.len(),
            "update sent"
        );
        out.extend(messages.into_iter().map(Action::Publish));
        self.outbox = Some(Outbox {
            round: pending.round,
            sent: self.clock.instant(),
        });
        self.status(
            out,
            AgentState::Uploading,
            pending.round,
            "awaiting receipt",
        );
    }

    pub(super) fn on_ack(
        &mut self,
        ack: UpdateAck,
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        let Some(pending) = self.state.pending()? else {
            return Ok(());
        };
        if pending.round != ack.round {
            return Ok(());
        }
        if ack.accepted {
            self.state.acknowledge(ack.round)?;
            tracing::info!(round = ack.round, "update acknowledged");
        } else {
            self.state.discard_pending()?;
            tracing::warn!(round = ack.round, reason = %ack.reason, "update refused by server; dropped");
            // The round refused may be one the server never opened: forget
            // it, so a real round below it is taken.
            if self.announce.as_ref().is_some_and(|a| a.round == ack.round) {
                self.announce = None;
            }
        }
        self.outbox = None;
        let detail = if ack.accepted {
            "update counted"
        } else {
            "update refused"
        };
        self.status(out, AgentState::Idle, ack.round, detail);
        self.take_up_newer(ack.round, out)
    }
}
