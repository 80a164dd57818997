//! The MQTT link both binaries use: options from config, and an event-loop
//! pump that hands incoming messages over a bounded channel.
//!
//! Publishing from the task that polls rumqttc's event loop can deadlock
//! (the request queue waits on the poller), so the pump only polls and
//! forwards; everything else publishes through the [`AsyncClient`].

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where and how to reach the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://host:port` (or `host:port`); `memory://<name>` is the
    /// simulator's in-process broker. Env: `CONVOY_BROKER_URL`.
    pub url: String,
    /// Optional user name. Env: `CONVOY_BROKER_USERNAME`.
    pub username: Option<String>,
    /// Optional password. Env: `CONVOY_BROKER_PASSWORD`.
    pub password: Option<String>,
    /// File holding the password (first line), when `password` is unset.
    /// Without either, a systemd credential named `broker-password`
    /// (`LoadCredential=`) is used when present.
    pub password_file: Option<std::path::PathBuf>,
    /// Largest MQTT packet accepted or sent, bytes (rumqttc's own default is 10 KiB).
    pub max_packet_size: usize,
    /// MQTT keep-alive, seconds.
    pub keep_alive_secs: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            username: None,
            password: None,
            password_file: None,
            max_packet_size: 256 * 1024,
            keep_alive_secs: 30,
        }
    }
}

/// A broker setting that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    /// The URL is not `mqtt://host:port`.
    #[error(
        "broker url {0:?} is not of the form mqtt://host:port (tls is not supported in this build)"
    )]
    BadUrl(String),
}

impl BrokerConfig {
    /// Applies `CONVOY_BROKER_*` environment overrides.
    pub fn apply_env(&mut self) {
        if let Ok(url) = std::env::var("CONVOY_BROKER_URL") {
            self.url = url;
        }
        if let Ok(user) = std::env::var("CONVOY_BROKER_USERNAME") {
            self.username = Some(user);
        }
        if let Ok(pass) = std::env::var("CONVOY_BROKER_PASSWORD") {
            self.password = Some(pass);
        }
    }

    /// Fills `password` from `password_file` or the systemd credential
    /// `broker-password` when it is not set directly.
    pub fn load_password(&mut self) -> Result<(), String> {
        if self.password.is_some() {
            return Ok(());
        }
        let file = match (
            &self.password_file,
            std::env::var_os("CREDENTIALS_DIRECTORY"),
        ) {
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => {
                let file = std::path::Path::new(&dir).join("broker-password");
                if !file.exists() {
                    return Ok(());
                }
                file
            }
            (None, None) => return Ok(()),
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read broker password file {}: {e}", file.display()))?;
        self.password = Some(text.lines().next().unwrap_or_default().to_string());
        Ok(())
    }

    /// The in-process broker's name for `memory://<name>` URLs.
    pub fn memory_name(&self) -> Option<&str> {
        self.url.strip_prefix("memory://").filter(|n| !n.is_empty())
    }

    /// Checks the URL names a broker this build can reach.
    pub fn check_url(&self) -> Result<(), LinkError> {
        match self.memory_name() {
            Some(_) => Ok(()),
            None => self.host_port().map(|_| ()),
        }
    }

    /// Host and port from the URL.
    pub fn host_port(&self) -> Result<(String, u16), LinkError> {
        let bad = || LinkError::BadUrl(self.url.clone());
        let rest = match self.url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => rest,
            Some(_) => return Err(bad()),
            None => self.url.as_str(),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok((
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        ))
    }

    /// rumqttc options for `client_id`.
    pub fn options(
        &self,
        client_id: &str,
        will: Option<LastWill>,
    ) -> Result<MqttOptions, LinkError> {
        let (host, port) = self.host_port()?;
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(self.keep_alive_secs.max(5)));
        opts.set_max_packet_size(self.max_packet_size, self.max_packet_size);
        opts.set_clean_session(true);
        opts.set_request_channel_capacity(1024);
        if let (Some(user), pass) = (&self.username, &self.password) {
            opts.set_credentials(user.clone(), pass.clone().unwrap_or_default());
        }
        if let Some(will) = will {
            opts.set_last_will(will);
        }
        Ok(opts)
    }
}

/// What the pump hands over.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// (Re)connected: subscribe and announce yourself again.
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

/// A connected client plus the stream of what arrives.
#[derive(Debug)]
pub struct Link {
    /// For subscribing and publishing.
    pub client: LinkClient,
    /// Incoming events.
    pub events: Events,
}

/// Publishes and subscribes over MQTT, or in memory (`memory://` URLs).
#[derive(Debug, Clone)]
pub enum LinkClient {
    /// A real broker through rumqttc.
    Mqtt(AsyncClient),
    /// The in-process broker of the simulator.
    Memory(crate::memory::MemoryClient),
}

/// The client could not queue a request (the link is shutting down).
#[derive(Debug, Error)]
#[error("cannot queue MQTT request: {0}")]
pub struct RequestError(String);

impl LinkClient {
    /// Publishes at QoS 1.
    pub async fn publish(
        &self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), RequestError> {
        match self {
            LinkClient::Mqtt(c) => c
                .publish(topic, QOS, retain, payload)
                .await
                .map_err(|e| RequestError(e.to_string())),
            LinkClient::Memory(c) => {
                c.publish(topic, retain, payload);
                Ok(())
            }
        }
    }

    /// Subscribes at QoS 1.
    pub async fn subscribe(&self, filter: &str) -> Result<(), RequestError> {
        match self {
            LinkClient::Mqtt(c) => c
                .subscribe(filter, QOS)
                .await
                .map_err(|e| RequestError(e.to_string())),
            LinkClient::Memory(c) => {
                c.subscribe(filter);
                Ok(())
            }
        }
    }

    /// Disconnects cleanly (no last will).
    pub async fn disconnect(&self) -> Result<(), RequestError> {
        match self {
            LinkClient::Mqtt(c) => c
                .disconnect()
                .await
                .map_err(|e| RequestError(e.to_string())),
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

/// Connects as `client_id` to the broker `config` names: an MQTT broker, or
/// the in-process one for `memory://<name>`. The MQTT event-loop pump runs
/// on `tracker` and stops on `shutdown` (after a short grace period so a
/// final DISCONNECT can leave).
pub fn open(
    config: &BrokerConfig,
    client_id: &str,
    will: Option<LastWill>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Link, LinkError> {
    if let Some(name) = config.memory_name() {
        let (client, events) = crate::memory::broker(name).connect(client_id);
        return Ok(Link {
            client: LinkClient::Memory(client),
            events: Events::Memory(events),
        });
    }
    let (client, eventloop) = AsyncClient::new(config.options(client_id, will)?, 1024);
    let (tx, events) = mpsc::channel(1024);
    tracker.spawn(pump(eventloop, tx, shutdown));
    Ok(Link {
        client: LinkClient::Mqtt(client),
        events: Events::Mqtt(events),
    })
}

async fn pump(mut eventloop: EventLoop, tx: mpsc::Sender<LinkEvent>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                tracing::debug!("connected to broker");
                LinkEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Message {
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
            },
            Ok(_) => continue,
            Err(e) => {
                if tx.is_closed() {
                    break; // nobody listens any more: do not reconnect
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker link down");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            sent = tx.send(event) => if sent.is_err() { break },
        }
    }
    // Let queued publishes and a DISCONNECT go out.
    let grace = tokio::time::sleep(Duration::from_millis(300));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => break,
            polled = eventloop.poll() => match polled {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
}

/// At-least-once QoS used for all convoy traffic.
pub const QOS: QoS = QoS::AtLeastOnce;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let mut c = BrokerConfig::default();
        assert_eq!(c.host_port().unwrap(), ("127.0.0.1".into(), 1883));
        c.url = "broker.local:8883".into();
        assert_eq!(c.host_port().unwrap(), ("broker.local".into(), 8883));
        for bad in [
            "mqtts://x:1",
            "x",
            "mqtt://:1",
            "mqtt://x:0",
            "mqtt://x:abc",
        ] {
            c.url = bad.into();
            assert!(c.host_port().is_err(), "{bad}");
        }
    }
}
