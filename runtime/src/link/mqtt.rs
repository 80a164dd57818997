//! The rumqttc transport: options from config, an event-loop pump that
//! renews subscriptions on every connect and hands incoming messages over a
//! bounded channel, and a writer that feeds publishes to rumqttc from a
//! queue of their own.
//!
//! The writer is what keeps the link from locking up under load: if the
//! caller published straight into rumqttc's request channel, a caller busy
//! publishing (a server answering a thousand vehicles) would stop reading
//! events, the pump would wait to hand one over and stop polling, rumqttc
//! would stop taking requests, and the caller's publish would wait forever.

use super::{BrokerConfig, Events, LinkClient, LinkEvent, Outgoing, QOS, Session};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Packet, StateError,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(super) fn open(
    config: &BrokerConfig,
    (host, port, tls): (&str, u16, Option<Arc<rustls::ClientConfig>>),
    session: Session,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    connected: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
) -> (LinkClient, Events, CancellationToken) {
    let client_id = session.client_id.clone();
    let mut opts = MqttOptions::new(session.client_id.clone(), host, port);
    opts.set_keep_alive(config.keep_alive());
    opts.set_max_packet_size(config.max_packet_size, config.max_packet_size);
    opts.set_clean_session(true);
    opts.set_request_channel_capacity(1024);
    if let Some(tls) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    if let Some(user) = &config.username {
        opts.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    if let Some(will) = session.will {
        opts.set_last_will(LastWill::new(will.topic, will.payload, QOS, will.retain));
    }
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let (tx, events) = mpsc::channel(1024);
    let (queue, outgoing) = mpsc::unbounded_channel();
    let flushed = CancellationToken::new();
    tracker.spawn(pump(
        eventloop,
        client.clone(),
        session.subscriptions,
        tx,
        shutdown.clone(),
        connected,
        Refusals {
            with_login: config.username.is_some(),
            client_id,
            // a half-open connection of this client's is dropped by the
            // broker after 1.5 keep-alives; beyond that, the id is another's
            patience: config.keep_alive() * 2,
            failure,
        },
    ));
    tracker.spawn(writer(client.clone(), outgoing, shutdown, flushed.clone()));
    (
        LinkClient::Mqtt(super::MqttClient { queue }),
        Events::Mqtt(events),
        flushed,
    )
}

/// What the writer hands to rumqttc, in the order it was asked.
#[derive(Debug)]
pub(super) enum Request {
    /// A QoS 1 publish.
    Publish(Outgoing),
    /// A clean DISCONNECT, after every publish queued before it.
    Disconnect,
}

/// Hands queued publishes to rumqttc in order; on shutdown, queues what is
/// left without waiting (the pump's grace period sends it). A disconnect
/// ends it, after what was queued before; `flushed` is cancelled as it ends.
async fn writer(
    client: AsyncClient,
    mut outgoing: mpsc::UnboundedReceiver<Request>,
    shutdown: CancellationToken,
    flushed: CancellationToken,
) {
    let _flushed = flushed.drop_guard();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = outgoing.recv() => match m {
                Some(Request::Publish(m)) => m,
                Some(Request::Disconnect) => {
                    let _ = client.disconnect().await;
                    return;
                }
                None => return,
            },
        };
        let topic = message.topic.clone();
        // Cancelling a publish that waits for room loses nothing: rumqttc
        // takes a request whole or not at all.
        let publish = client.publish(message.topic, QOS, message.retain, message.payload.clone());
        let sent = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = client.try_publish(topic, QOS, message.retain, message.payload);
                break;
            }
            sent = publish => sent,
        };
        if let Err(e) = sent {
            // Only a gone event loop refuses a request: the link is closing.
            tracing::debug!(topic, error = %e, "publish not queued; link closing");
            return;
        }
    }
    while let Ok(request) = outgoing.try_recv() {
        match request {
            Request::Publish(m) => {
                let _ = client.try_publish(m.topic, QOS, m.retain, m.payload);
            }
            Request::Disconnect => {
                let _ = client.try_disconnect();
            }
        }
    }
}

/// How the pump treats a broker that will not let this client in.
#[derive(Debug)]
struct Refusals {
    /// Whether the client logs in (for the hint).
    with_login: bool,
    client_id: String,
    /// How long a refused client id may stay refused, on a link that was
    /// never accepted, before the link gives up ([`super::Link::failure`]).
    patience: Duration,
    failure: Arc<Mutex<Option<String>>>,
}

/// What to check when a connection ends before the broker accepted it
/// (`accepted`): a refused CONNACK, or a broker that hangs up on the login.
fn refusal_hint(e: &ConnectionError, accepted: bool, with_login: bool) -> Option<&'static str> {
    const LOGIN: &str = "check broker.username (a vehicle's is its client_id) and its password (the broker-password file `convoy-server provision` wrote); a vehicle that is not provisioned, or was blocked with `convoy-server vehicles block`, is refused too";
    const NO_LOGIN: &str = "the broker may require a login: set broker.username (a vehicle's is its client_id) and broker.password_file";
    const TWIN: &str = "another client is connected with this client_id (a second agent with the same id, or this one's previous connection, which the broker drops after 1.5 keep-alives)";
    const TLS: &str = "the TLS handshake failed: check that broker.ca_file holds the CA that signed the broker's certificate, that the URL's host is named in that certificate, and, for mutual TLS, broker.cert_file and broker.key_file";
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => Some(TWIN),
        ConnectionError::Tls(_) => Some(TLS),
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => Some(if with_login { LOGIN } else { NO_LOGIN }),
        ConnectionError::MqttState(StateError::ConnectionAborted) if !accepted => {
            Some(if with_login { LOGIN } else { NO_LOGIN })
        }
        _ => None,
    }
}

async fn pump(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    tx: mpsc::Sender<LinkEvent>,
    shutdown: CancellationToken,
    connected: Arc<AtomicBool>,
    refusals: Refusals,
) {
    let mut backoff = Duration::from_millis(200);
    let mut ever_accepted = false;
    let mut refused_since: Option<Instant> = None;
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                ever_accepted = true;
                connected.store(true, Ordering::Relaxed);
                tracing::debug!("connected to broker");
                // A clean session forgets subscriptions: renew them all.
                // try_subscribe never waits on this task's own poller.
                for filter in &subscriptions {
                    if let Err(e) = client.try_subscribe(filter.as_str(), QOS) {
                        tracing::warn!(filter, error = %e, "subscribe failed");
                    }
                }
                LinkEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Message {
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
            },
            Ok(_) => continue,
            Err(e) => {
                let accepted = connected.swap(false, Ordering::Relaxed);
                if tx.is_closed() {
                    break; // nobody listens any more: do not reconnect
                }
                let retry_in_ms = backoff.as_millis() as u64;
                if matches!(
                    e,
                    ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId)
                ) && !ever_accepted
                {
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= refusals.patience {
                        let why = format!(
                            "the broker refuses client id {:?} because another client is connected with it (for {} s now): another agent runs with this client_id; stop it, or give this one a client_id of its own",
                            refusals.client_id,
                            since.elapsed().as_secs()
                        );
                        tracing::error!("{why}");
                        *refusals.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                        break;
                    }
                } else {
                    // only an unbroken run of such refusals counts
                    refused_since = None;
                }
                match refusal_hint(&e, accepted, refusals.with_login) {
                    Some(hint) => {
                        tracing::warn!(error = %e, retry_in_ms, "broker refused the connection: {hint}")
                    }
                    None => tracing::warn!(error = %e, retry_in_ms, "broker link down"),
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_login_says_what_to_check() {
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert!(
            refusal_hint(&refused, false, true)
                .unwrap()
                .contains("broker.username")
        );
        // a broker that hangs up on the login, before any CONNACK
        let hung_up = ConnectionError::MqttState(StateError::ConnectionAborted);
        assert!(
            refusal_hint(&hung_up, false, true)
                .unwrap()
                .contains("password")
        );
        assert!(
            refusal_hint(&hung_up, false, false)
                .unwrap()
                .contains("require a login")
        );
        let twin = ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId);
        assert!(
            refusal_hint(&twin, false, true)
                .unwrap()
                .contains("another client")
        );
        // after it was accepted, a drop is a drop
        assert_eq!(refusal_hint(&hung_up, true, true), None);
        let down = ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(refusal_hint(&down, false, true), None);
    }
}
