//! The broker link both binaries use: a client to publish through, and a
//! stream of what arrives.
//!
//! The link owns its subscriptions and renews them on every (re)connect,
//! before it reports [`LinkEvent::Connected`], so no caller can forget to.
//! Publishing from the task that polls rumqttc's event loop can deadlock
//! (the request queue waits on the poller), so the pump only polls and
//! forwards; callers publish through the [`LinkClient`].

mod config;
pub mod memory;
mod mqtt;
mod tls;

pub use config::{BadUrl, BrokerConfig, BrokerUrl, MIN_PACKET_SIZE, is_loopback};
pub use tls::client_config as tls_client_config;

use bytes::Bytes;
use rumqttc::QoS;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// At-least-once QoS used for all convoy traffic.
pub const QOS: QoS = QoS::AtLeastOnce;

/// What the link hands over.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// (Re)connected and re-subscribed: announce yourself again.
    Connected,
    /// An incoming publish.
    Message {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
        /// Whether it was a retained message.
        retain: bool,
    },
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Topic.
    pub topic: String,
    /// Whether the broker keeps it for later subscribers.
    pub retain: bool,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// A message that is not retained.
    pub fn new(topic: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            retain: false,
            payload,
        }
    }

    /// A retained message.
    pub fn retained(topic: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            retain: true,
            payload,
        }
    }
}

/// What a client asks of the link when it opens it.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// MQTT client id.
    pub client_id: String,
    /// Topic filters, subscribed on every connect.
    pub subscriptions: Vec<String>,
    /// Published by the broker if the client vanishes (MQTT only).
    pub will: Option<Outgoing>,
}

/// A connected client plus the stream of what arrives.
#[derive(Debug)]
pub struct Link {
    /// For publishing.
    pub client: LinkClient,
    /// Incoming events.
    pub events: Events,
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
    /// Cancelled once every publish queued before a disconnect went to
    /// the MQTT client (at once for the in-memory broker).
    flushed: CancellationToken,
    tasks: TaskTracker,
    failure: Arc<Mutex<Option<String>>>,
}

impl Link {
    /// Why the link gave up, once its events have ended on their own: the
    /// broker kept refusing this client id because another client holds it.
    /// `None` while it runs, and after an ordinary close.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the link holds a broker connection now (updated as it
    /// connects and drops; the in-memory broker is always connected).
    pub fn connection(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Disconnects cleanly (no last will) after every publish queued so far
    /// (a vehicle's goodbye status among them), and waits for the pump to
    /// end, after a short grace period in which they still leave.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.flushed.cancelled()).await;
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // A link dropped without `close` still stops its pump.
        self.stop.cancel();
    }
}

/// Publishes over MQTT, or in memory (`memory://` URLs).
#[derive(Debug, Clone)]
pub enum LinkClient {
    /// A real broker through rumqttc.
    Mqtt(MqttClient),
    /// The in-process broker of the simulator.
    Memory(memory::MemoryClient),
}

/// The queue the writer task drains into the rumqttc client.
#[derive(Debug, Clone)]
pub struct MqttClient {
    queue: tokio::sync::mpsc::UnboundedSender<mqtt::Request>,
}

/// The client could not queue a request (the link is shutting down).
#[derive(Debug, Error)]
#[error("cannot queue MQTT request: {0}")]
pub struct RequestError(String);

impl LinkClient {
    /// Publishes at QoS 1: queued at once, in order, never waiting on the
    /// broker (see `mqtt.rs` for why).
    pub async fn publish(&self, message: Outgoing) -> Result<(), RequestError> {
        match self {
            LinkClient::Mqtt(c) => c
                .queue
                .send(mqtt::Request::Publish(message))
                .map_err(|_| RequestError("the link is closed".into())),
            LinkClient::Memory(c) => {
                c.publish(&message.topic, message.retain, message.payload);
                Ok(())
            }
        }
    }

    /// Publishes every message in order, logging (not failing on) a refusal:
    /// the loop that calls this keeps running, and QoS 1 plus the state
    /// machines' own retries cover a lost message.
    pub async fn publish_all(&self, messages: impl IntoIterator<Item = Outgoing>) {
        for message in messages {
            let topic = message.topic.clone();
            if let Err(e) = self.publish(message).await {
                tracing::warn!(topic, error = %e, "publish failed");
            }
        }
    }

    /// Disconnects cleanly (no last will), after every publish queued before.
    pub async fn disconnect(&self) -> Result<(), RequestError> {
        match self {
            LinkClient::Mqtt(c) => c
                .queue
                .send(mqtt::Request::Disconnect)
                .map_err(|_| RequestError("the link is closed".into())),
            LinkClient::Memory(c) => {
                c.disconnect();
                Ok(())
            }
        }
    }
}

/// Incoming events of either transport.
#[derive(Debug)]
pub enum Events {
    /// From the MQTT pump (bounded: back-pressure on the broker link).
    Mqtt(mpsc::Receiver<LinkEvent>),
    /// From the in-memory broker.
    Memory(mpsc::UnboundedReceiver<LinkEvent>),
}

impl Events {
    /// The next event; `None` once the link is gone.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        match self {
            Events::Mqtt(rx) => rx.recv().await,
            Events::Memory(rx) => rx.recv().await,
        }
    }
}

/// Connects `session` to the broker `config` names: an MQTT broker, or the
/// in-process one for `memory://<name>`. The MQTT event-loop pump runs as a
/// task of its own until [`Link::close`] (or the link is dropped).
///
/// Fails only on TLS files that cannot be used (`mqtts://`); a plain link to
/// another machine without `allow_plaintext` is refused by
/// [`BrokerConfig::validate`], and logs a warning here when allowed.
pub fn open(config: &BrokerConfig, session: Session) -> Result<Link, crate::config::ConfigError> {
    if let Some(warning) = config.plaintext_warning() {
        tracing::warn!("{warning}");
    }
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    match config.url_or_local() {
        BrokerUrl::Memory(name) => {
            let (client, events) = memory::broker(&name).connect(&session.client_id);
            for filter in &session.subscriptions {
                client.subscribe(filter);
            }
            let flushed = CancellationToken::new();
            flushed.cancel();
            Ok(Link {
                client: LinkClient::Memory(client),
                events: Events::Memory(events),
                connected: Arc::new(AtomicBool::new(true)),
                stop,
                flushed,
                tasks,
                failure: Arc::default(),
            })
        }
        BrokerUrl::Tcp { host, port, tls } => {
            let tls = if tls {
                Some(tls::client_config(config)?)
            } else {
                None
            };
            let connected = Arc::new(AtomicBool::new(false));
            let failure = Arc::default();
            let (client, events, flushed) = mqtt::open(
                config,
                (&host, port, tls),
                session,
                &tasks,
                stop.clone(),
                connected.clone(),
                Arc::clone(&failure),
            );
            Ok(Link {
                client,
                events,
                connected,
                stop,
                flushed,
                tasks,
                failure,
            })
        }
    }
}
