//! What the vehicle receives, decoded once. [`Inbox::decode`] takes every
//! message through the same gate (topic → kind → size limit → the server's
//! signature for that topic) and hands the round a typed [`Inbound`]; what
//! fails goes to [`crate::rejection`]. Nothing unsigned is acted on, not
//! even with a status in reply.

use convoy_shared::identity::Trusted;
use convoy_shared::messages::{AlignRequest, Announce, ModelChunk, UpdateAck};
use convoy_shared::topics::{self, ClientTopic, TopicId};
use convoy_shared::wire::{self, Kind, WireError};
use serde::de::DeserializeOwned;

/// Largest receipt decoded.
pub const MAX_ACK: usize = 4096;

/// A message from the server that passed the gate.
#[derive(Debug)]
pub enum Inbound {
    /// A round announcement (boxed: it carries the model's spec).
    Announce(Box<Announce>),
    /// An alignment request (schema or statistics).
    Align(AlignRequest),
    /// A chunk of a model or delta chain this vehicle asked for.
    ModelChunk(ModelChunk),
    /// The server's receipt for an update.
    Ack(UpdateAck),
}

/// A message the gate refused.
#[derive(Debug)]
pub struct Refused {
    /// What it claimed to be, for the log: `announcement`, `receipt`, ….
    pub what: &'static str,
    /// Why.
    pub error: WireError,
}

/// The gate: this vehicle's inbound topics, the server's key, the limits.
#[derive(Debug)]
pub struct Inbox {
    round: String,
    align: String,
    model: String,
    ack: String,
    server: Trusted,
    max_packet: usize,
}

impl Inbox {
    /// The gate for vehicle `me` of `fleet`.
    pub fn new(fleet: &TopicId, me: &TopicId, server: Trusted, max_packet: usize) -> Self {
        Self {
            round: topics::round(fleet).as_str().to_string(),
            align: topics::align(fleet).as_str().to_string(),
            model: topics::client(fleet, ClientTopic::Model, me)
                .as_str()
                .to_string(),
            ack: topics::client(fleet, ClientTopic::Ack, me)
                .as_str()
                .to_string(),
            server,
            max_packet,
        }
    }

    /// The topic filters the link must hold.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![
            self.round.clone(),
            self.align.clone(),
            self.model.clone(),
            self.ack.clone(),
        ]
    }

    /// `Ok(None)` for what is not this vehicle's (another vehicle's
    /// topics) and for cleared retained messages.
    pub fn decode(&self, topic: &str, payload: &[u8]) -> Result<Option<Inbound>, Refused> {
        let max = self.max_packet;
        let inbound = if topic == self.round {
            if payload.is_empty() {
                return Ok(None); // the retained announcement was cleared
            }
            Inbound::Announce(Box::new(self.signed(
                topic,
                payload,
                Kind::Announce,
                max,
                "announcement",
            )?))
        } else if topic == self.align {
            if payload.is_empty() {
                return Ok(None); // alignment finished and the request was cleared
            }
            let what = "alignment request";
            Inbound::Align(self.signed(topic, payload, Kind::AlignRequest, max, what)?)
        } else if topic == self.model {
            Inbound::ModelChunk(self.signed(
                topic,
                payload,
                Kind::ModelChunk,
                max,
                "model chunk",
            )?)
        } else if topic == self.ack {
            Inbound::Ack(self.signed(topic, payload, Kind::UpdateAck, MAX_ACK, "receipt")?)
        } else {
            return Ok(None);
        };
        Ok(Some(inbound))
    }

    fn signed<T: DeserializeOwned>(
        &self,
        topic: &str,
        payload: &[u8],
        kind: Kind,
        max: usize,
        what: &'static str,
    ) -> Result<T, Refused> {
        let now = convoy_runtime::clock::now_ms();
        wire::decode_trusted(payload, kind, max, topic, &self.server, now, "the server")
            .map_err(|error| Refused { what, error })
    }
}
