//! An in-process MQTT stand-in for the fleet simulator: `memory://<name>`
//! broker URLs route messages between clients of one process through
//! channels, with the same topics, retained messages and payloads as the
//! real broker, so bytes are counted the same way. Last wills and QoS
//! acknowledgements are not modelled; deployments always use MQTT.

use super::LinkEvent;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Session>,
    retained: BTreeMap<String, Bytes>,
}

#[derive(Debug)]
struct Session {
    filters: Vec<String>,
    tx: mpsc::UnboundedSender<LinkEvent>,
}

/// One named in-memory broker.
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
}

/// The broker registered under `name`, created on first use.
pub fn broker(name: &str) -> MemoryBroker {
    static BROKERS: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
    let mut brokers = BROKERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    brokers.entry(name.to_string()).or_default().clone()
}

/// MQTT topic filter matching with `+` and `#`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

impl MemoryBroker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `client_id` (replacing an older one, as MQTT
    /// does); the receiver gets `Connected` at once.
    pub fn connect(&self, client_id: &str) -> (MemoryClient, mpsc::UnboundedReceiver<LinkEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(LinkEvent::Connected);
        self.state().sessions.insert(
            client_id.to_string(),
            Session {
                filters: Vec::new(),
                tx,
            },
        );
        let client = MemoryClient {
            broker: self.clone(),
            id: client_id.to_string(),
        };
        (client, rx)
    }
}

/// A client of a [`MemoryBroker`].
#[derive(Debug, Clone)]
pub struct MemoryClient {
    broker: MemoryBroker,
    id: String,
}

impl MemoryClient {
    /// Delivers to every matching subscription; keeps it if `retain`.
    pub fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        let payload = Bytes::from(payload);
        let mut state = self.broker.state();
        if retain {
            if payload.is_empty() {
                state.retained.remove(topic);
            } else {
                state.retained.insert(topic.to_string(), payload.clone());
            }
        }
        for session in state.sessions.values() {
            if session.filters.iter().any(|f| matches(f, topic)) {
                let _ = session.tx.send(LinkEvent::Message {
                    topic: topic.to_string(),
                    payload: payload.clone(),
                    retain: false,
                });
            }
        }
    }

    /// Adds a subscription and delivers the retained messages it matches.
    pub fn subscribe(&self, filter: &str) {
        let mut state = self.broker.state();
        let retained: Vec<(String, Bytes)> = state
            .retained
            .iter()
            .filter(|(t, _)| matches(filter, t))
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        if let Some(session) = state.sessions.get_mut(&self.id) {
            session.filters.push(filter.to_string());
            for (topic, payload) in retained {
                let _ = session.tx.send(LinkEvent::Message {
                    topic,
                    payload,
                    retain: true,
                });
            }
        }
    }

    /// Ends the session.
    pub fn disconnect(&self) {
        self.broker.state().sessions.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(matches("convoy/v1/f/update/+", "convoy/v1/f/update/car-1"));
        assert!(!matches(
            "convoy/v1/f/update/+",
            "convoy/v1/f/update/car-1/x"
        ));
        assert!(matches("convoy/#", "convoy/v1/f/round"));
        assert!(!matches("convoy/v1/f/round", "convoy/v1/g/round"));
    }

    #[tokio::test]
    async fn routes_and_retains() {
        let broker = broker("unit-test");
        let (a, mut a_rx) = broker.connect("a");
        let (b, mut b_rx) = broker.connect("b");
        assert!(matches!(a_rx.recv().await, Some(LinkEvent::Connected)));
        assert!(matches!(b_rx.recv().await, Some(LinkEvent::Connected)));
        b.publish("t/retained", true, vec![1]);
        a.subscribe("t/+");
        b.publish("t/live", false, vec![2]);
        b.publish("other", false, vec![3]);
        let got: Vec<_> = [a_rx.recv().await, a_rx.recv().await]
            .into_iter()
            .map(|e| match e {
                Some(LinkEvent::Message { topic, retain, .. }) => (topic, retain),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("t/retained".to_string(), true),
                ("t/live".to_string(), false)
            ]
        );
        assert!(a_rx.try_recv().is_err());
    }
}
