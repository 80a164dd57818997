//! The embedded MQTT broker (rumqttd) on a thread of its own, refusing
//! anonymous clients unless told otherwise.
//!
//! Who may connect ([`Access::Credentials`]): the server, with the token it
//! made at start, under its own client id; and each provisioned vehicle with
//! user name = client id and the password `provision` wrote. So no client
//! can take the server's id or another vehicle's, and nobody without
//! credentials reads or publishes anything.

use crate::credentials::{password_hash, same_digest};
use convoy_store::Store;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Who the embedded broker lets in.
#[derive(Debug, Clone)]
pub enum Access {
    /// Anyone (`broker.allow_anonymous = true`).
    Anonymous,
    /// The server and provisioned vehicles only.
    Credentials(Credentials),
}

/// What [`Access::Credentials`] checks a login against.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The server's database, whose `vehicles` table holds password hashes
    /// (read on each connect, so `provision` takes effect at once).
    pub db: PathBuf,
    /// The server's client id, reserved for it.
    pub server_id: String,
    /// The server's own password for this run.
    pub server_password: String,
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
    /// Thread failed to spawn.
    #[error("cannot start broker thread: {0}")]
    Thread(std::io::Error),
}

/// Segments each topic filter's log keeps. Logs are bounded by bytes, and
/// each message held pins its read buffer, so the default log is short:
/// at least 32 messages. The server's own wildcard filters, where a whole
/// fleet's messages meet in one burst, get longer logs ([`server_logs`]).
const SEGMENTS: usize = 32;

/// The logs behind the server's subscriptions, for any fleet: update chunks
/// (16 x 128 KiB, at least 16 chunks), statuses, fetches and failure
/// reports (16 x 8 KiB, some hundreds of messages) and the alignment
/// answers (16 x 64 KiB). A burst beyond that is
/// delivered in part; what is lost comes again (an update without its
/// receipt is re-sent, a status repeats every 30 s). Memory stays within a
/// few MiB per filter however long the server runs.
fn server_logs() -> HashMap<String, rumqttd::SegmentConfig> {
    let log = |size: usize| rumqttd::SegmentConfig {
        max_segment_size: size,
        max_segment_count: 16,
    };
    HashMap::from([
        ("convoy/v1/+/update/+".to_string(), log(128 << 10)),
        ("convoy/v1/+/status/+".to_string(), log(8 << 10)),
        ("convoy/v1/+/fetch/+".to_string(), log(8 << 10)),
        ("convoy/v1/+/failure/+".to_string(), log(8 << 10)),
        // alignment answers: once per fleet, the whole fleet at once
        ("convoy/v1/+/schema/+".to_string(), log(64 << 10)),
        ("convoy/v1/+/stats/+".to_string(), log(64 << 10)),
    ])
}

/// Bytes of one log segment. A segment takes one more packet once over
/// this, so a filter holds at most SEGMENTS x (this + one packet).
const SEGMENT_BYTES: usize = 1024;

/// Picks a free port on 127.0.0.1 (for tests and the demo).
pub fn free_local_addr() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

/// Starts rumqttd on `listen` and waits until it accepts connections.
/// `Broker::start` blocks forever, so the thread is detached; it ends with
/// the process.
pub fn start_embedded(
    listen: &str,
    max_payload: usize,
    access: Access,
) -> Result<SocketAddr, BrokerError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| BrokerError::Listen(listen.to_string()))?;
    // Probe first: if something else holds the port we would otherwise
    // mistake it for our broker.
    drop(std::net::TcpListener::bind(addr).map_err(|e| BrokerError::InUse(addr, e))?);
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_payload,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    if let Access::Credentials(creds) = access {
        let store: Arc<Mutex<Option<Store>>> = Arc::new(Mutex::new(None));
        connections.set_auth_handler(move |client: String, user: String, pass: String| {
            let mut store = store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let why = refusal(&creds, &mut store, &client, &user, &pass);
            if let Some(why) = why {
                tracing::warn!(client, user, why, "broker login refused");
            }
            std::future::ready(why.is_none())
        });
    }
    let server = rumqttd::ServerSettings {
        name: "convoy-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 1024,
            // rumqttd keeps a log per topic filter, and every topic that
            // matches no subscription gets a filter of its own: bound each
            // log, or memory grows with every round and every junk message.
            // A subscriber that falls further behind loses the oldest
            // messages, which the at-least-once receipts cover (an update
            // without a receipt is sent again).
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENTS,
            custom_segment: Some(server_logs()),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("convoy-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            tracing::info!(%addr, "embedded broker listening");
            return Ok(addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(addr))
}
