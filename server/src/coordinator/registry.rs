//! Which vehicles are online, which codec stages they can run and how many
//! rows they declare, from their signed status messages; and when each was
//! last heard from, so a vehicle that goes silent drops out by a timeout
//! rather than by anyone's say-so.
//!
//! Every agent process signs its statuses with a random session number and
//! a sequence number that only grows. A status older than the last one of
//! its session is a replay. The last one again is not: MQTT delivers at
//! least once, so a status may arrive twice (a retained copy and the live
//! one, or a redelivery after a reconnect); it changes nothing and is
//! dropped without a rejection. A last will (`Offline`) counts only for the
//! session that is current, so an old will replayed cannot take a vehicle
//! off the fleet. Two processes that share one vehicle's identity show up
//! as two sessions taking turns, which is reported.

use super::{Coordinator, Rejection};
use convoy_shared::messages::{AgentState, Status};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// What the coordinator knows of a client from its status messages.
#[derive(Debug, Clone)]
pub(super) struct ClientInfo {
    /// Its last status was not `Offline`.
    online: bool,
    pub(super) codecs: Vec<String>,
    /// Rows it declares (bounds the sample count it may claim).
    pub(super) samples: u64,
    /// The current session and its last sequence number.
    session: (u64, u64),
    /// The session before, while it may still speak (a crash leaves none).
    previous: Option<(u64, u64)>,
    /// Any signed message from it.
    last_heard: Instant,
    /// Its measured training speed (unknown when it sent nonsense).
    pub(super) throughput: convoy_shared::cost::Throughput,
    /// The model it holds (zeros: none).
    pub(super) model: convoy_shared::version::VersionId,
}

/// The clients seen, by id.
#[derive(Debug, Default)]
pub(super) struct Registry {
    clients: HashMap<String, ClientInfo>,
}

/// What one status message means.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Taken.
    Fresh,
    /// The last one of its session again (MQTT's at-least-once delivery):
    /// changes nothing, not even when the client was last heard.
    Repeat,
    /// Older than the last one of its session.
    Replayed,
    /// An older session spoke again after a newer one: two processes share
    /// the identity.
    Duplicate,
    /// A last will of a session that is no longer current.
    StaleWill,
    /// The current session's last will, set when it connected (so older
    /// than what it sent since): the vehicle is gone.
    Gone,
}

impl Registry {
    /// Online clients heard from within `offline_after` that can run every
    /// one of `stages`, sorted by id.
    pub(super) fn eligible(
        &self,
        stages: &[&str],
        now: Instant,
        offline_after: Duration,
    ) -> Vec<String> {
        let mut ids: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, info)| {
                info.online
                    && now.saturating_duration_since(info.last_heard) <= offline_after
                    && stages.iter().all(|s| info.codecs.iter().any(|c| c == s))
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// A signed message from `client` arrived.
    pub(super) fn heard(&mut self, client: &str, now: Instant) {
        if let Some(info) = self.clients.get_mut(client) {
            info.last_heard = now;
        }
    }

    /// What `client` declared it holds, if it has sent a status.
    pub(super) fn get(&self, client: &str) -> Option<&ClientInfo> {
        self.clients.get(client)
    }

    fn take(&mut self, client: &str, status: &Status, now: Instant) -> Verdict {
        let Some(info) = self.clients.get_mut(client) else {
            self.clients
                .insert(client.to_string(), ClientInfo::from_status(status, now));
            return Verdict::Fresh;
        };
        // What the session bookkeeping becomes; the rest is the status's own.
        let (verdict, previous) = if status.session == info.session.0 {
            if status.state == AgentState::Offline && status.seq < info.session.1 {
                info.online = false;
                return Verdict::Gone;
            }
            if let Some(stale) = not_newer(status.seq, info.session.1) {
                return stale;
            }
            (Verdict::Fresh, info.previous)
        } else if status.state == AgentState::Offline {
            // A will of another session: the current one is not gone.
            return Verdict::StaleWill;
        } else if let Some(previous) = info.previous.filter(|p| p.0 == status.session) {
            if let Some(stale) = not_newer(status.seq, previous.1) {
                return stale;
            }
            (Verdict::Duplicate, Some(info.session))
        } else {
            (Verdict::Fresh, Some(info.session))
        };
        *info = ClientInfo {
            previous,
            ..ClientInfo::from_status(status, now)
        };
        verdict
    }
}

/// A status whose `seq` is not past the last one `last` of its session: the
/// same one again, or an older one.
fn not_newer(seq: u64, last: u64) -> Option<Verdict> {
    match seq.cmp(&last) {
        std::cmp::Ordering::Equal => Some(Verdict::Repeat),
        std::cmp::Ordering::Less => Some(Verdict::Replayed),
        std::cmp::Ordering::Greater => None,
    }
}

impl ClientInfo {
    fn from_status(status: &Status, now: Instant) -> Self {
        Self {
            online: status.state != AgentState::Offline,
            codecs: status.codecs.iter().map(|c| c.to_string()).collect(),
            samples: status.samples,
            session: (status.session, status.seq),
            previous: None,
            last_heard: now,
            throughput: if status.throughput.is_known() && status.throughput.step_secs.is_finite() {
                status.throughput
            } else {
                Default::default()
            },
            model: status.model,
        }
    }
}

impl Coordinator {
    pub(super) fn on_status(&mut self, client: &str, status: Status) {
        let was_online = self.registry.get(client).is_some_and(|i| i.online);
        match self.registry.take(client, &status, self.clock.instant()) {
            Verdict::Fresh => {}
            Verdict::Repeat => {
                tracing::debug!(client, seq = status.seq, "status delivered again; ignored");
                return;
            }
            Verdict::Replayed => return self.reject(None, Some(client), &Rejection::Replayed),
            Verdict::StaleWill => {
                tracing::debug!(client, "last will of an ended session ignored");
                return;
            }
            Verdict::Gone => {
                tracing::info!(client, online = false, "client status: its last will");
                return;
            }
            Verdict::Duplicate => self.reject(None, Some(client), &Rejection::DuplicateIdentity),
        }
        let online = status.state != AgentState::Offline;
        if online && status.model != [0; 32] {
            let held = convoy_shared::version::hex(&status.model);
            if let Err(e) = self
                .store
                .record_holding(client, &held, self.clock.now_ms())
            {
                tracing::warn!(client, error = %e, "fleet inventory not updated");
            }
        }
        if online != was_online {
            tracing::info!(client, online, state = ?status.state, "client status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_shared::messages;

    fn status(session: u64, seq: u64, state: AgentState) -> Status {
        Status {
            codecs: vec![],
            samples: 10,
            ..Status::new(messages::id("car").unwrap(), state, (session, seq))
        }
    }

    #[test]
    fn sessions_replays_wills_and_twins() {
        use AgentState::{Idle, Offline, Training};
        use Verdict::*;
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let r = &mut Registry::default();
        let take = |r: &mut Registry, session, seq, state, at| {
            r.take("car", &status(session, seq, state), at)
        };
        assert_eq!(take(r, 1, 10, Idle, now), Fresh);
        // delivered twice (at least once): dropped, and it is not news
        assert_eq!(take(r, 1, 10, Idle, later), Repeat);
        assert_eq!(r.get("car").unwrap().last_heard, now);
        assert_eq!(take(r, 1, 11, Training, now), Fresh);
        // an older one is a replay
        assert_eq!(take(r, 1, 10, Idle, now), Replayed);
        // a restart: new session; the old one's will arrives late and is ignored
        assert_eq!(take(r, 2, 20, Idle, now), Fresh);
        assert_eq!(take(r, 1, 12, Offline, now), StaleWill);
        assert!(r.get("car").unwrap().online);
        // the old session speaks again: a twin
        assert_eq!(take(r, 1, 13, Idle, now), Duplicate);
        assert_eq!(take(r, 2, 21, Idle, now), Duplicate);
        // the current session's own will takes it offline
        assert_eq!(take(r, 2, 22, Offline, now), Fresh);
        assert!(!r.get("car").unwrap().online);
        // a will is made when the session connects, so it is older than
        // what the session sent since: gone, not a replay
        assert_eq!(take(r, 3, 30, Idle, now), Fresh);
        assert_eq!(take(r, 3, 31, Training, now), Fresh);
        assert_eq!(take(r, 3, 29, Offline, now), Gone);
        assert!(!r.get("car").unwrap().online);
    }

    #[test]
    fn silent_vehicles_drop_out_by_timeout() {
        let start = Instant::now();
        let mut r = Registry::default();
        r.take("car", &status(1, 1, AgentState::Idle), start);
        let limit = Duration::from_secs(60);
        assert_eq!(
            r.eligible(&[], start + Duration::from_secs(59), limit),
            vec!["car"]
        );
        assert!(
            r.eligible(&[], start + Duration::from_secs(61), limit)
                .is_empty()
        );
        r.heard("car", start + Duration::from_secs(61));
        assert_eq!(
            r.eligible(&[], start + Duration::from_secs(62), limit),
            vec!["car"]
        );
    }
}
