//! The embedded MQTT broker (the `mqtt5` crate's) on a thread and runtime
//! of its own: plain TCP for this machine, TLS for the fleet, and every
//! login and topic checked.
//!
//! Who may connect ([`Access::Credentials`]): the server, with the token it
//! made at start, under its own client id; and each provisioned vehicle with
//! user name = client id and the password `provision` wrote. So no client
//! can take the server's id or another vehicle's, and nobody without
//! credentials reads or publishes anything. A client id that is already
//! connected is refused (MQTT 3.1.1 return code 2, "identifier rejected"),
//! so a second process with a vehicle's id cannot knock the first one off.
//!
//! What each may do: a vehicle publishes only on its own update, status,
//! fetch, failure, schema and stats topics and subscribes only to the
//! fleet's round and align topics and its own model and receipt topics
//! ([`convoy_shared::topics::vehicle_may_publish`]); the server alone
//! publishes announcements and models.

use crate::credentials::{password_hash, same_digest};
use crate::tls::TlsFiles;
use convoy_shared::topics;
use convoy_store::Store;
use mqtt5::broker::router::MessageRouter;
use mqtt5::broker::{AuthProvider, AuthResult, MqttBroker};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use thiserror::Error;

/// Who the embedded broker lets in.
#[derive(Debug, Clone)]
pub enum Access {
    /// Anyone, on any topic (`broker.allow_anonymous = true`).
    Anonymous,
    /// The server and provisioned vehicles only, each on its own topics.
    Credentials(Credentials),
}

/// What [`Access::Credentials`] checks a login against.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The server's database, whose `vehicles` table holds password hashes
    /// (read on each connect, so `provision` takes effect at once).
    pub db: PathBuf,
    /// The fleet whose topics vehicles may use.
    pub fleet: String,
    /// The server's client id, reserved for it.
    pub server_id: String,
    /// The server's own password for this run.
    pub server_password: String,
    /// Provisioned ids that may read the vehicles' status topics and nothing
    /// else (`broker.status_readers`: `deploy`'s check that an agent came
    /// up, a monitoring account).
    pub status_readers: Vec<String>,
}

/// Where the embedded broker listens.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// Plain TCP (`broker.listen`); `None`: none.
    pub plain: Option<SocketAddr>,
    /// TLS (`broker.tls_listen`), with its certificate and key.
    pub tls: Option<TlsListen>,
    /// Require a client certificate signed by this CA on the TLS listener
    /// (`broker.tls_client_ca`): mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// The embedded broker's TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate chain (PEM).
    pub cert: PathBuf,
    /// The certificate's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// A TLS listener on `addr` serving these files' certificate.
    pub fn listen(&self, addr: SocketAddr) -> TlsListen {
        TlsListen {
            addr,
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// The addresses the embedded broker listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// Plain TCP, when asked for.
    pub plain: Option<SocketAddr>,
    /// TLS, when asked for.
    pub tls: Option<SocketAddr>,
}

impl Started {
    /// How the server reaches this broker from its own machine: the plain
    /// listener when there is one, else TLS, with an unspecified address
    /// (`0.0.0.0`, `::`) taken as loopback.
    pub fn url(&self) -> Option<convoy_runtime::link::BrokerUrl> {
        use convoy_runtime::link::BrokerUrl;
        let here = |addr: SocketAddr| {
            if addr.ip().is_unspecified() {
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
            } else {
                addr
            }
        };
        match (self.plain, self.tls) {
            (Some(addr), _) => Some(BrokerUrl::tcp(here(addr))),
            (None, Some(addr)) => Some(BrokerUrl::tls(here(addr))),
            (None, None) => None,
        }
    }
}

/// Why a login was refused, for the log.
fn refusal(
    creds: &Credentials,
    store: &mut Option<Store>,
    client: &str,
    user: &str,
    pass: &str,
) -> Option<&'static str> {
    if client != user {
        return Some("the user name must equal the client id");
    }
    if client == creds.server_id {
        return (!same_digest(pass, &creds.server_password))
            .then_some("the server's id is reserved for the server");
    }
    if store.is_none() {
        *store = Store::open_existing(&creds.db).ok();
    }
    let Some(db) = store.as_ref() else {
        return Some("no vehicle is provisioned yet");
    };
    match db.vehicle_password_hash(client) {
        Ok(Some(hash)) if same_digest(&password_hash(pass), &hash) => None,
        Ok(Some(_)) => Some("wrong password"),
        Ok(None) => Some(
            "not provisioned (convoy-server provision), or blocked (convoy-server vehicles list)",
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot read vehicle credentials");
            *store = None;
            Some("credentials unreadable")
        }
    }
}

/// The embedded broker's gate: logins, live client ids and topics.
struct Gate {
    access: Access,
    store: Mutex<Option<Store>>,
    router: OnceLock<Arc<MessageRouter>>,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Gate {
    fn refuse(client: &str, user: &str, why: &str, code: ReasonCode) -> AuthResult {
        tracing::warn!(client, user, why, "broker login refused");
        AuthResult::fail_with_reason(code, why)
    }

    /// The server may use all of the fleet's topics; a status reader may
    /// subscribe to the vehicles' status topics; a vehicle only its own.
    fn may(&self, client: &str, topic: &str, act: Act) -> bool {
        let Access::Credentials(c) = &self.access else {
            return true;
        };
        if client == c.server_id {
            return topic.starts_with(&format!("convoy/v1/{}/", c.fleet));
        }
        if c.status_readers.iter().any(|r| r == client) {
            return act == Act::Subscribe
                && matches!(
                    topics::parse_client(&c.fleet, topic),
                    Some((topics::ClientTopic::Status, _))
                );
        }
        match act {
            Act::Publish => topics::vehicle_may_publish(&c.fleet, client, topic),
            Act::Subscribe => topics::vehicle_may_subscribe(&c.fleet, client, topic),
        }
    }
}

/// What a client asks to do on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Publish,
    Subscribe,
}

impl AuthProvider for Gate {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _client_addr: SocketAddr,
    ) -> Boxed<'a, mqtt5::Result<AuthResult>> {
        Box::pin(async move {
            let client = connect.client_id.as_str();
            let user = connect.username.as_deref().unwrap_or("");
            if let Access::Credentials(creds) = &self.access {
                let pass = connect
                    .password
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let why = {
                    let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
                    refusal(creds, &mut store, client, user, &pass)
                };
                if let Some(why) = why {
                    return Ok(Self::refuse(client, user, why, ReasonCode::NotAuthorized));
                }
            }
            if let Some(router) = self.router.get()
                && router.is_connected(client).await
            {
                // A second process with this id (a cloned vehicle, a
                // second agent on one machine) would otherwise take the
                // session over, and the two would knock each other off in
                // turn. A vehicle whose old connection is half-open gets in
                // once the broker drops it (1.5 keep-alives).
                return Ok(Self::refuse(
                    client,
                    user,
                    "a client with this id is already connected",
                    ReasonCode::ClientIdentifierNotValid,
                ));
            }
            Ok(AuthResult::success_with_user(client))
        })
    }

    fn authorize_publish<'a>(
        &'a self,
        client_id: &str,
        _user_id: Option<&'a str>,
        topic: &'a str,
    ) -> Boxed<'a, bool> {
        let ok = self.may(client_id, topic, Act::Publish);
        if !ok {
            tracing::debug!(client_id, topic, "broker refused a publish");
        }
        Box::pin(std::future::ready(ok))
    }

    fn authorize_subscribe<'a>(
        &'a self,
        client_id: &str,
        _user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> Boxed<'a, bool> {
        let ok = self.may(client_id, topic_filter, Act::Subscribe);
        if !ok {
            tracing::debug!(client_id, topic_filter, "broker refused a subscription");
        }
        Box::pin(std::future::ready(ok))
    }
}

/// The embedded broker could not start.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// Bad listen address.
    #[error("broker listen address {0:?} is invalid")]
    Listen(String),
    /// Port taken.
    #[error(
        "cannot listen on {0}: {1} (is another broker running? set broker.listen or broker.url)"
    )]
    InUse(SocketAddr, std::io::Error),
    /// Did not come up.
    #[error("embedded broker did not start listening on {0} within 10 s (port in use?)")]
    NotListening(SocketAddr),
    /// The broker refused its settings or files.
    #[error("embedded broker: {0}")]
    Refused(String),
    /// Thread failed to spawn.
    #[error("cannot start broker thread: {0}")]
    Thread(std::io::Error),
}

/// Picks a free port on 127.0.0.1 (for tests and the demo).
pub fn free_local_addr() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

/// Starts the embedded broker with a plain listener on `listen` only (a
/// broker for this machine: tests and benchmarks).
pub fn start_embedded(
    listen: &str,
    max_payload: usize,
    access: Access,
) -> Result<SocketAddr, BrokerError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| BrokerError::Listen(listen.to_string()))?;
    let listen = Listen {
        plain: Some(addr),
        ..Listen::default()
    };
    let started = start(&listen, max_payload, access)?;
    started.plain.ok_or(BrokerError::NotListening(addr))
}

/// Starts the embedded broker on the listeners `listen` asks for and waits
/// until it accepts connections. It runs on a thread and runtime of its
/// own, detached: it ends with the process.
pub fn start(listen: &Listen, max_payload: usize, access: Access) -> Result<Started, BrokerError> {
    // Probe first, for a clear error when something else holds a port.
    for addr in listen
        .plain
        .iter()
        .chain(listen.tls.iter().map(|t| &t.addr))
    {
        drop(std::net::TcpListener::bind(addr).map_err(|e| BrokerError::InUse(*addr, e))?);
    }
    let mut config = mqtt5::broker::BrokerConfig::default()
        .with_bind_addresses(listen.plain.into_iter().collect())
        .with_max_clients(10_010)
        // the payload limit plus the MQTT header and topic
        .with_max_packet_size(max_payload + 1024)
        .with_max_retained_message_size(max_payload + 1024)
        .with_storage(mqtt5::broker::StorageConfig {
            enable_persistence: false,
            backend: mqtt5::broker::StorageBackendType::Memory,
            // what waits for a subscriber that falls behind, beyond its
            // channel; past this the oldest is dropped, and the
            // at-least-once receipts cover it (an update without a receipt
            // is sent again, a status repeats)
            max_queued_messages_per_client: 1_000,
            max_queued_bytes_per_client: 32 << 20,
            ..Default::default()
        })
        .with_sys_topics_enabled(false)
        .with_client_channel_capacity(256);
    if let Some(listener) = &listen.tls {
        let mut tls =
            mqtt5::broker::config::TlsConfig::new(listener.cert.clone(), listener.key.clone())
                .with_bind_address(listener.addr);
        if let Some(ca) = &listen.client_ca {
            tls = tls.with_ca_file(ca.clone()).with_require_client_cert(true);
        }
        config = config.with_tls(tls);
    }
    let wanted = (listen.plain, listen.tls.as_ref().map(|t| t.addr));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("convoy-broker".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("convoy-broker")
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(BrokerError::Thread(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let broker = match MqttBroker::with_config(config).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(BrokerError::Refused(e.to_string())));
                        return;
                    }
                };
                let gate = Arc::new(Gate {
                    access,
                    store: Mutex::new(None),
                    router: OnceLock::new(),
                });
                let _ = gate.router.set(broker.router());
                let mut broker = broker.with_auth_provider(gate);
                let started = Started {
                    plain: broker.local_addr(),
                    tls: broker.tls_local_addr(),
                };
                if wanted.1.is_some() && started.tls.is_none() {
                    let _ = tx.send(Err(BrokerError::Refused(
                        "the TLS listener did not start (see the log above)".into(),
                    )));
                    return;
                }
                let _ = tx.send(Ok(started));
                if let Err(e) = broker.run().await {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            });
        })
        .map_err(BrokerError::Thread)?;
    let timeout = wanted
        .0
        .or(wanted.1)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    let started = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| BrokerError::NotListening(timeout))??;
    for addr in started.plain.iter().chain(started.tls.iter()) {
        tracing::info!(%addr, "embedded broker listening");
    }
    Ok(started)
}
