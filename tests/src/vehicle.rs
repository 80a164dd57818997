//! A vehicle played by hand over a raw connection, for tests that need one
//! to say exactly what it sends.

use crate::api::{
    AgentState, Announce, ChunkPos, ClientTopic, Kind, Status, TrainStats, UpdateBody, UpdateChunk,
    messages, wire,
};
use crate::fleet::Fleet;
use crate::wire::Wire;
use convoy_shared::identity::{PublicKey, SecretKey};

/// A hand-played vehicle, provisioned like any other: online with a signed
/// retained status, listening for rounds.
#[derive(Debug)]
pub struct FakeVehicle {
    id: String,
    update_topic: String,
    /// Its signing key.
    pub key: SecretKey,
    server: PublicKey,
    /// Its connection, subscribed to the round topic.
    pub wire: Wire,
}

impl FakeVehicle {
    /// Connects to `fleet` as `id`, listens for rounds and announces itself
    /// idle and online with the given codec stages.
    pub async fn join(fleet: &Fleet, id: &str, codecs: &[&str]) -> anyhow::Result<Self> {
        let key = fleet.provision(id)?;
        let server = fleet.server_public()?;
        let mut link = fleet.wire(id).await?;
        link.subscribe(&fleet.round_topic()).await?;
        let status = Status {
            codecs: codecs
                .iter()
                .map(|c| heapless::String::try_from(*c).expect("fits"))
                .collect(),
            samples: 1,
            detail: messages::detail("played by the test"),
            ..Status::new(
                messages::id(id).expect("valid id"),
                AgentState::Idle,
                (rand::random(), 1),
            )
        };
        let status_topic = fleet.topic(ClientTopic::Status, id);
        link.publish(
            &status_topic,
            wire::encode(Kind::Status, &status, &status_topic, &key).expect("test messages encode"),
            true,
        )
        .await?;
        link.flush().await?;
        Ok(Self {
            id: id.into(),
            update_topic: fleet.topic(ClientTopic::Update, id),
            key,
            server,
            wire: link,
        })
    }

    /// The next round announcement it receives.
    pub async fn next_announce(&mut self) -> anyhow::Result<Announce> {
        loop {
            let p = self.wire.next(30).await?;
            let decoded = wire::decode::<Announce>(
                &p.payload,
                Kind::Announce,
                1 << 20,
                &p.topic,
                &self.server,
                "server",
            );
            if let Ok(a) = decoded {
                return Ok(a);
            }
        }
    }

    /// One update chunk from this vehicle, as it would go on the wire.
    pub fn chunk(&self, announce: &Announce, round: u64, pos: ChunkPos, data: Vec<u8>) -> Vec<u8> {
        let message = UpdateChunk {
            client: messages::id(&self.id).expect("valid id"),
            round,
            base_version: announce.base_version(),
            pos,
            data,
        };
        wire::encode(Kind::UpdateChunk, &message, &self.update_topic, &self.key)
            .expect("test messages encode")
    }

    /// A whole one-sample update for `announce`'s round in a single chunk,
    /// with `encoded` as its codec payload.
    pub fn whole_update(&self, announce: &Announce, encoded: Vec<u8>) -> Vec<u8> {
        let body = UpdateBody {
            samples: 1,
            head: 0,
            stats: TrainStats {
                device: "test".into(),
                ..Default::default()
            },
            codec: convoy_shared::codec::Pipeline::FP32,
            encoded,
        };
        let body = postcard::to_allocvec(&body).expect("serialisable");
        let pos = ChunkPos {
            index: 0,
            count: 1,
            total_len: body.len() as u32,
        };
        self.chunk(announce, announce.round, pos, body)
    }

    /// Publishes `payloads` on its update topic, in order, and waits until
    /// the broker has them all.
    pub async fn send_updates(&mut self, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
        self.wire.publish_all(&self.update_topic, payloads).await
    }
}
