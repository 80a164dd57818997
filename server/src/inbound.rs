//! One inbound MQTT message, decoded once. [`Inbox::decode`] walks every
//! message through the same gate (topic → kind → size limit → signature
//! by the provisioned vehicle → sender named in the message matches its
//! topic) and hands the aligner and the coordinator a typed [`Inbound`]
//! or a [`Refused`] with its [`Rejection`]; no handler decodes bytes.

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::identity::{Keyring, own_or_empty};
use crate::rejection::Rejection;
use convoy_shared::identity::SecretKey;
use convoy_shared::messages::{
    AlignRequest, Announce, FailureReport, FetchRequest, SchemaReport, StatsReport, Status,
    UpdateChunk,
};
use convoy_shared::topics::{self, ClientTopic, TopicId};
use convoy_shared::wire::Kind;
use convoy_store::Store;
use serde::de::DeserializeOwned;

/// Largest fetch request decoded.
pub const MAX_FETCH: usize = 64 * 1024;
/// Largest status decoded.
pub const MAX_STATUS: usize = 4096;
/// Largest failure report decoded.
pub const MAX_FAILURE: usize = 4096;

/// A message from the broker that passed the gate.
#[derive(Debug)]
pub enum Inbound {
    /// Something on the round topic that the server did not sign (its own
    /// announcements and cleared messages are not reported).
    ForeignOnRound,
    /// The round topic's retained message cleared (an empty payload).
    RoundCleared,
    /// The same on the align topic.
    ForeignOnAlign,
    /// One chunk of a vehicle's update.
    Update {
        /// The vehicle, as its topic and the chunk both name it.
        client: String,
        /// The chunk.
        chunk: UpdateChunk,
    },
    /// A vehicle asks for the current model.
    Fetch {
        /// The vehicle.
        client: String,
        /// What it holds and wants.
        request: FetchRequest,
    },
    /// A vehicle's status.
    Status {
        /// The vehicle.
        client: String,
        /// Its status.
        status: Status,
    },
    /// A vehicle cannot serve a round (or an alignment: round 0).
    Failure {
        /// The vehicle.
        client: String,
        /// Why.
        report: FailureReport,
    },
    /// A vehicle's local schema.
    Schema {
        /// The vehicle.
        client: String,
        /// Its schema.
        report: SchemaReport,
    },
    /// A vehicle's column statistics.
    Stats {
        /// The vehicle.
        client: String,
        /// Its statistics.
        report: StatsReport,
    },
}

impl Inbound {
    /// The vehicle a message came from, if it came from one.
    pub fn client(&self) -> Option<&str> {
        match self {
            Inbound::ForeignOnRound | Inbound::RoundCleared | Inbound::ForeignOnAlign => None,
            Inbound::Update { client, .. }
            | Inbound::Fetch { client, .. }
            | Inbound::Status { client, .. }
            | Inbound::Failure { client, .. }
            | Inbound::Schema { client, .. }
            | Inbound::Stats { client, .. } => Some(client),
        }
    }
}

/// A message the gate refused.
#[derive(Debug)]
pub struct Refused {
    /// The vehicle its topic names.
    pub client: String,
    /// The kind of topic it came on.
    pub kind: ClientTopic,
    /// Why.
    pub why: Rejection,
}

/// The gate: the fleet's topics, the keys that may sign on them and the
/// size limits.
#[derive(Debug)]
pub struct Inbox {
    fleet: TopicId,
    round_topic: String,
    align_topic: String,
    /// Verifies what the server itself published (echoes of its own
    /// retained messages).
    server: SecretKey,
    keyring: Keyring,
    /// Largest update chunk, schema or statistics message.
    max_packet: usize,
}

impl Inbox {
    /// The gate for `config`'s fleet and packet size, trusting the
    /// vehicles provisioned in `store`; `server` signs the server's own.
    pub fn new(
        config: &ServerConfig,
        server: &SecretKey,
        store: &Store,
    ) -> Result<Self, ServerError> {
        let fleet = &config.fleet;
        Ok(Self {
            fleet: fleet.clone(),
            round_topic: topics::round(fleet).as_str().to_string(),
            align_topic: topics::align(fleet).as_str().to_string(),
            server: server.clone(),
            keyring: Keyring::load(store)?,
            max_packet: config.broker.link.max_packet_size,
        })
    }

    /// True when `client`'s key is trusted now: provisioned, not blocked.
    pub fn trusts(&mut self, client: &str, store: &Store) -> bool {
        self.keyring.get(client, store).is_some()
    }

    /// The trusted vehicles' ids (when the keyring was last loaded).
    pub fn vehicle_ids(&self) -> Vec<String> {
        self.keyring.ids()
    }

    /// Vehicles provisioned (when the keyring was last loaded).
    pub fn vehicles(&self) -> usize {
        self.keyring.len()
    }

    /// `Ok(None)` for what is no one's business (another fleet's topics,
    /// the server's own messages coming back, a cleared status).
    pub fn decode(
        &mut self,
        store: &Store,
        topic: &str,
        payload: &[u8],
    ) -> Result<Option<Inbound>, Refused> {
        if topic == self.round_topic {
            if payload.is_empty() {
                return Ok(Some(Inbound::RoundCleared));
            }
            let own = own_or_empty::<Announce>(&self.server, Kind::Announce, topic, payload);
            return Ok((!own).then_some(Inbound::ForeignOnRound));
        }
        if topic == self.align_topic {
            let own =
                own_or_empty::<AlignRequest>(&self.server, Kind::AlignRequest, topic, payload);
            return Ok((!own).then_some(Inbound::ForeignOnAlign));
        }
        let Some((kind, client)) = topics::parse_client(&self.fleet, topic) else {
            return Ok(None);
        };
        let refused = |why| Refused {
            client: client.to_string(),
            kind,
            why,
        };
        let mut gate = Gate {
            keyring: &mut self.keyring,
            store,
            client,
            topic,
            payload,
        };
        let max = self.max_packet;
        let inbound = match kind {
            ClientTopic::Update => {
                let chunk: UpdateChunk = gate.signed(Kind::UpdateChunk, max).map_err(refused)?;
                same_client(
                    &chunk.client,
                    client,
                    "chunk names another client than its topic",
                )
                .map_err(refused)?;
                Inbound::Update {
                    client: client.to_string(),
                    chunk,
                }
            }
            ClientTopic::Fetch => Inbound::Fetch {
                client: client.to_string(),
                request: gate
                    .signed(Kind::FetchRequest, MAX_FETCH)
                    .map_err(refused)?,
            },
            // a retained status cleared: nobody's word takes a vehicle off
            ClientTopic::Status if payload.is_empty() => return Ok(None),
            ClientTopic::Status => {
                let status: Status = gate.signed(Kind::Status, MAX_STATUS).map_err(refused)?;
                same_client(&status.client, client, "status names another client")
                    .map_err(refused)?;
                Inbound::Status {
                    client: client.to_string(),
                    status,
                }
            }
            ClientTopic::Failure => {
                let report: FailureReport =
                    gate.signed(Kind::Failure, MAX_FAILURE).map_err(refused)?;
                same_client(
                    &report.client,
                    client,
                    "failure report names another client",
                )
                .map_err(refused)?;
                Inbound::Failure {
                    client: client.to_string(),
                    report,
                }
            }
            ClientTopic::Schema => {
                let report: SchemaReport = gate.signed(Kind::SchemaReport, max).map_err(refused)?;
                same_client(
                    &report.client,
                    client,
                    "the message names another vehicle than its topic",
                )
                .map_err(refused)?;
                Inbound::Schema {
                    client: client.to_string(),
                    report,
                }
            }
            ClientTopic::Stats => {
                let report: StatsReport = gate.signed(Kind::StatsReport, max).map_err(refused)?;
                same_client(
                    &report.client,
                    client,
                    "the message names another vehicle than its topic",
                )
                .map_err(refused)?;
                Inbound::Stats {
                    client: client.to_string(),
                    report,
                }
            }
            // the server's own topics towards a vehicle
            _ => return Ok(None),
        };
        Ok(Some(inbound))
    }
}

/// One message on its way through the gate.
struct Gate<'a> {
    keyring: &'a mut Keyring,
    store: &'a Store,
    client: &'a str,
    topic: &'a str,
    payload: &'a [u8],
}

impl Gate<'_> {
    /// Decodes what the vehicle must have signed for this topic, at most
    /// `max` bytes; a vehicle never provisioned is refused before its
    /// bytes are looked at further.
    fn signed<T: DeserializeOwned>(&mut self, kind: Kind, max: usize) -> Result<T, Rejection> {
        self.keyring.decode(
            self.store,
            self.client,
            self.topic,
            self.payload,
            (kind, max),
        )
    }
}

fn same_client(named: &str, topic_client: &str, what: &'static str) -> Result<(), Rejection> {
    if named == topic_client {
        Ok(())
    } else {
        Err(Rejection::ClientMismatch(what))
    }
}
