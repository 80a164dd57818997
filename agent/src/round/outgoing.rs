//! What the agent sends on its own account: its retained status (and the
//! heartbeat that repeats it), failure reports, and every message signed
//! with the vehicle's key.

use super::{Action, Agent};
use crate::status;
use convoy_runtime::link::Outgoing;
use convoy_shared::messages::{self, AgentState, FailureReport};
use convoy_shared::wire::{self, Kind, WireError};
use serde::Serialize;

/// How often an agent repeats its status when nothing else happens.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);

/// An encoded message, or `None` with the reason logged: serialising plain
/// data cannot fail, so this is a bug report, never a silent empty payload.
fn encoded(payload: Result<Vec<u8>, WireError>) -> Option<Vec<u8>> {
    payload
        .map_err(|e| tracing::error!(error = %e, "message not sent"))
        .ok()
}

/// `message` signed by `key` for `topic`, ready to publish.
pub(super) fn sealed<T: Serialize>(
    key: &convoy_shared::identity::SecretKey,
    kind: Kind,
    topic: &str,
    message: &T,
) -> Option<Outgoing> {
    let payload = encoded(wire::encode(kind, message, topic, key))?;
    Some(Outgoing::new(topic, payload))
}

impl Agent {
    /// The status the broker publishes if this agent vanishes, and the one
    /// it publishes itself when it stops.
    pub fn offline_status(&self) -> Option<Outgoing> {
        self.status_message(AgentState::Offline, 0, "offline")
    }

    /// A signed status message, retained.
    pub(super) fn status_message(
        &self,
        state: AgentState,
        round: u64,
        detail: &str,
    ) -> Option<Outgoing> {
        let seq = self.seq.get().saturating_add(1).max(self.clock.now_ms());
        self.seq.set(seq);
        let status = status::status(
            &self.config,
            state,
            round,
            self.data.rows(),
            detail,
            (self.session, seq),
            (self.held.get(), self.throughput.get()),
        );
        let mut message = self.seal(Kind::Status, self.topics.status.as_str(), &status)?;
        message.retain = true;
        Some(message)
    }

    pub(super) fn publish(&self, out: &mut Vec<Action>, message: Outgoing) {
        out.push(Action::Publish(message));
    }

    pub(super) fn status(
        &self,
        out: &mut Vec<Action>,
        state: AgentState,
        round: u64,
        detail: &str,
    ) {
        if let Some(message) = self.status_message(state, round, detail) {
            self.publish(out, message);
            *self.last_status.borrow_mut() = Some((state, round, detail.to_string()));
            self.status_at.set(Some(self.clock.instant()));
        }
    }

    /// Repeats the last status once it is [`HEARTBEAT`] old.
    pub(super) fn heartbeat(&self, out: &mut Vec<Action>) {
        let due = self
            .status_at
            .get()
            .is_some_and(|at| self.clock.instant().saturating_duration_since(at) >= HEARTBEAT);
        let last = self.last_status.borrow().clone();
        if let (true, Some((state, round, detail))) = (due, last) {
            self.status(out, state, round, &detail);
        }
    }

    /// This vehicle cannot serve `round`: says so in its status and in a
    /// signed failure report, so the server stops waiting for it.
    pub(super) fn fail(&self, out: &mut Vec<Action>, round: u64, reason: &str, detail: &str) {
        self.status(out, AgentState::Skipped, round, detail);
        let report = FailureReport {
            client: messages::id(&self.config.client_id).unwrap_or_default(),
            round,
            reason: messages::detail(reason),
            detail: messages::detail(detail),
        };
        self.send_signed(out, Kind::Failure, self.topics.failure.as_str(), &report);
    }

    /// Publishes `message`, signed by this vehicle for `topic`.
    pub(super) fn send_signed<T: Serialize>(
        &self,
        out: &mut Vec<Action>,
        kind: Kind,
        topic: &str,
        message: &T,
    ) {
        if let Some(m) = self.seal(kind, topic, message) {
            self.publish(out, m);
        }
    }

    /// `message` signed by this vehicle for `topic`.
    pub(super) fn seal<T: Serialize>(
        &self,
        kind: Kind,
        topic: &str,
        message: &T,
    ) -> Option<Outgoing> {
        sealed(&self.keys.vehicle, kind, topic, message)
    }
}
