//! The coordinator driven input by input: a real SQLite ledger in a temp
//! folder, no broker, and a clock that moves only when told.

use super::*;
use crate::config::{ModelConfig, RoundConfig, ServerConfig};
use convoy_runtime::clock::{Clock, ManualClock};
use convoy_shared::chunk;
use convoy_shared::codec;
use convoy_shared::codec::STAGES;
use convoy_shared::dataset::Table;
use convoy_shared::identity::SecretKey;
use convoy_shared::messages::{
    AgentState, FetchRequest, ModelChunk, Status, TrainStats, UpdateAck, UpdateBody, UpdateChunk,
};
use convoy_shared::spec::{ModelSpec, TaskKind};
use convoy_shared::strategy::robust::Rule;
use convoy_shared::version;
use convoy_store::{ClientStatus, Publication};
use std::time::Duration;

const FLEET: &str = "unit";
const START_MS: u64 = 1_700_000_000_000;

struct Rig {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    coordinator: Coordinator,
    spec: ModelSpec,
    /// The head the rig's vehicles say they trained.
    head: u32,
}

fn table() -> Table {
    let mut text = String::from("a,b,y\n");
    for i in 0..30 {
        text.push_str(&format!("{},{},{}\n", i as f32 / 3.0, i % 5, i % 3));
    }
    Table::read(text.as_bytes()).unwrap()
}

fn rig_with(tweak: impl FnOnce(&mut ServerConfig), test: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        fleet: FLEET.parse().unwrap(),
        db: dir.path().join("unit.db"),
        rounds: RoundConfig {
            min_clients: 2,
            deadline_secs: 30,
            ..Default::default()
        },
        model: ModelConfig {
            hidden: vec![4],
            init_seed: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    tweak(&mut config);
    let table = table();
    let spec = table
        .derive_spec("y", TaskKind::Classification, vec![4], 1)
        .unwrap();
    let store = Store::open(&config.db).unwrap();
    for client in VEHICLES {
        let row = convoy_store::VehicleRow {
            client: client.to_string(),
            public_key: vehicle_key(client).public().to_string(),
            password_hash: String::new(),
            created_ms: 0,
            previous_key: None,
        };
        store.add_vehicle(&row, true).unwrap();
    }
    let task = config.training.clone();
    let params = spec.init_params();
    let current = StoredVersion {
        round: 0,
        parent: None,
        manifest: version::manifest_of(
            &params,
            &spec,
            &task,
            &version::Provenance {
                parent: None,
                strategy: config.aggregation.rule.strategy(config.rounds.server_lr),
                codec: config.rounds.codec,
                downlink_codec: config.rounds.downlink_codec,
            },
        ),
        spec: spec.clone(),
        task,
        params,
    };
    let clock = ManualClock::new(START_MS);
    store
        .save_version(&Publication::root(&current), None, clock.now_ms())
        .unwrap();
    let test = test.then(|| Arc::new(Dataset::from_table(&table, &spec).unwrap()));
    let coordinator = Coordinator::new(
        config,
        server_key(),
        store,
        clock.clone(),
        spec.clone(),
        test,
        current,
    )
    .unwrap();
    Rig {
        _dir: dir,
        clock,
        coordinator,
        spec,
        head: 0,
    }
}

/// The vehicles the rig provisions.
const VEHICLES: [&str; 5] = ["car-1", "car-2", "car-3", "visitor", "old-car"];

fn server_key() -> SecretKey {
    SecretKey::from_seed([9; 32])
}

/// Each vehicle's key, derived from its id.
fn vehicle_key(client: &str) -> SecretKey {
    SecretKey::from_seed(*blake3::hash(client.as_bytes()).as_bytes())
}

/// `message` as `client` signs it for `topic`.
fn signed<T: serde::Serialize>(kind: Kind, topic: &str, client: &str, message: &T) -> Vec<u8> {
    wire::encode(kind, message, topic, &vehicle_key(client)).unwrap()
}

/// Decodes what the server signed.
fn from_server<T: serde::de::DeserializeOwned>(m: &Outgoing, kind: Kind) -> T {
    wire::decode(
        &m.payload,
        kind,
        1 << 20,
        &m.topic,
        &server_key().public(),
        "server",
    )
    .unwrap()
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn rig() -> Rig {
    rig_with(|_| {}, false)
}

fn message(topic: &str, payload: Vec<u8>) -> Input {
    Input::Link(LinkEvent::Message {
        topic: topic.to_string(),
        payload: payload.into(),
        retain: false,
    })
}

fn status(client: &str, state: AgentState, codecs: &[&str]) -> Input {
    let status = Status {
        codecs: codecs
            .iter()
            .map(|c| heapless::String::try_from(*c).unwrap())
            .collect(),
        samples: 100,
        detail: messages::detail("idle"),
        ..Status::new(
            messages::id(client).unwrap(),
            state,
            (1, SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        )
    };
    let topic = topics::client(FLEET, ClientTopic::Status, client);
    message(
        topic.as_str(),
        signed(Kind::Status, &topic, client, &status),
    )
}

use convoy_shared::messages;

impl Rig {
    /// A new coordinator on the same database, as after `kill -9`: nothing
    /// of the old one's memory survives.
    fn restart(self) -> Rig {
        let config = self.coordinator.config.clone();
        drop(self.coordinator);
        let store = Store::open(&config.db).unwrap();
        let latest = store.latest_version().unwrap().unwrap();
        let current = store.load_version(&latest).unwrap();
        let coordinator = Coordinator::new(
            config,
            server_key(),
            store,
            self.clock.clone(),
            self.spec.clone(),
            None,
            current,
        )
        .unwrap();
        Rig {
            coordinator,
            ..self
        }
    }

    fn handle(&mut self, input: Input) -> Vec<Output> {
        self.coordinator.handle(input).unwrap()
    }

    fn online(&mut self, clients: &[&str]) {
        for c in clients {
            self.handle(status(c, AgentState::Idle, STAGES));
        }
    }

    /// Brings `clients` online and opens round 1.
    fn open(&mut self, clients: &[&str]) -> Announce {
        self.online(clients);
        let out = self.handle(Input::Tick);
        announces(&out).pop().expect("a round opens")
    }

    /// The update `client` sends for the open round: every parameter moved
    /// by `step` (the last one by a hair more, its own, as no two vehicles'
    /// updates are ever the same), `samples` rows.
    fn update(&self, client: &str, step: f32, samples: u64) -> Vec<Input> {
        let a = self.coordinator.open_round().expect("open round").clone();
        let delta = delta_of(&a, client, step);
        self.update_body(client, &a, &delta, samples)
    }

    fn update_body(
        &self,
        client: &str,
        a: &Announce,
        delta: &ParamSet,
        samples: u64,
    ) -> Vec<Input> {
        self.scored_update(client, a, delta, samples, [None, None])
    }

    /// An update whose vehicle scored the base model on its held-out rows.
    fn scored_update(
        &self,
        client: &str,
        a: &Announce,
        delta: &ParamSet,
        samples: u64,
        [holdout, personal]: [Option<Evaluation>; 2],
    ) -> Vec<Input> {
        let codec = a.codec;
        let body = UpdateBody {
            samples,
            head: self.head,
            stats: TrainStats {
                train_seconds: 0.5,
                steps: 3,
                epochs: 1,
                loss: 0.7,
                flops: 1234,
                device: "cpu-flex".into(),
                holdout,
                personal,
                ..Default::default()
            },
            codec,
            encoded: codec.encode(delta, 0),
        };
        let bytes = postcard::to_allocvec(&body).unwrap();
        let topic = topics::client(FLEET, ClientTopic::Update, client);
        chunk::split(&bytes, 64)
            .map(|(pos, data)| {
                let c = UpdateChunk {
                    client: messages::id(client).unwrap(),
                    round: a.round,
                    base_version: a.base_version(),
                    pos,
                    data: data.to_vec(),
                };
                message(
                    topic.as_str(),
                    signed(Kind::UpdateChunk, &topic, client, &c),
                )
            })
            .collect()
    }

    fn send(&mut self, inputs: Vec<Input>) -> Vec<Output> {
        inputs.into_iter().flat_map(|i| self.handle(i)).collect()
    }

    fn rejected(&self, reason: &str) -> u64 {
        self.coordinator
            .rejections()
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
}

/// `client`'s update of [`Rig::update`].
fn delta_of(a: &Announce, client: &str, step: f32) -> ParamSet {
    let mut delta = ParamSet::zeros(&a.spec.layout());
    for t in &mut delta.tensors {
        t.data.iter_mut().for_each(|v| *v = step);
    }
    let own = client.bytes().map(u32::from).sum::<u32>() % 97 + 1;
    if let Some(last) = delta.values_mut().last() {
        *last += own as f32 * 1e-7;
    }
    delta
}

fn announces(out: &[Output]) -> Vec<Announce> {
    out.iter()
        .filter_map(|o| match o {
            Output::Publish(m) if m.topic == topics::round(FLEET).as_str() => {
                assert!(m.retain, "announcements are retained");
                Some(from_server(m, Kind::Announce))
            }
            _ => None,
        })
        .collect()
}

fn acks(out: &[Output], client: &str) -> Vec<UpdateAck> {
    let topic = topics::client(FLEET, ClientTopic::Ack, client);
    out.iter()
        .filter_map(|o| match o {
            Output::Publish(m) if m.topic == topic.as_str() => {
                Some(from_server(m, Kind::UpdateAck))
            }
            _ => None,
        })
        .collect()
}

fn closed(out: &[Output]) -> Option<&RoundRow> {
    out.iter().find_map(|o| match o {
        Output::RoundClosed(row) => Some(row.as_ref()),
        _ => None,
    })
}

#[test]
fn a_round_opens_once_enough_vehicles_are_online() {
    let mut rig = rig();
    rig.online(&["car-1"]);
    assert!(
        announces(&rig.handle(Input::Tick)).is_empty(),
        "one is not enough"
    );
    rig.online(&["car-2"]);
    let a = announces(&rig.handle(Input::Tick)).remove(0);
    assert_eq!(a.round, 1);
    let selected: Vec<&str> = a.selected.iter().map(|c| c.as_str()).collect();
    assert_eq!(selected, ["car-1", "car-2"]);
    assert_eq!(a.deadline_ms, START_MS + 30_000);
    assert!(
        announces(&rig.handle(Input::Tick)).is_empty(),
        "one round at a time"
    );
}

#[test]
fn vehicles_lacking_a_codec_stage_are_not_selected() {
    let mut rig = rig_with(|c| c.rounds.codec = "topk:0.1+q8".parse().unwrap(), false);
    rig.online(&["car-1", "car-2"]);
    rig.handle(status("old-car", AgentState::Idle, &["fp32"]));
    let a = announces(&rig.handle(Input::Tick)).remove(0);
    assert!(a.selected.iter().all(|c| c.as_str() != "old-car"));
    assert_eq!(a.selected.len(), 2);
}

#[test]
fn an_offline_vehicle_is_not_eligible() {
    let mut rig = rig();
    rig.online(&["car-1", "car-2"]);
    rig.handle(status("car-2", AgentState::Offline, STAGES));
    assert!(announces(&rig.handle(Input::Tick)).is_empty());
}

#[test]
fn updates_from_everyone_close_the_round_before_its_deadline() {
    let mut rig = rig();
    let before = rig.coordinator.current().manifest.version;
    rig.open(&["car-1", "car-2"]);
    let out = rig.send(rig.update("car-1", 0.01, 10));
    assert!(acks(&out, "car-1")[0].accepted);
    assert!(
        closed(&rig.handle(Input::Tick)).is_none(),
        "car-2 still training"
    );
    rig.send(rig.update("car-2", 0.03, 30));
    let out = rig.handle(Input::Tick);
    let row = closed(&out).expect("closed early");
    assert_eq!(row.status, "finished");
    assert_eq!((row.clients_reported, row.samples), (2, 40));
    assert_ne!(rig.coordinator.current().manifest.version, before);
    // FedAvg weights by samples: (0.01 * 10 + 0.03 * 30) / 40 = 0.025
    let moved = rig.coordinator.current().params.tensors[0].data[0]
        - rig
            .coordinator
            .store
            .load_version(&version::hex(&before))
            .unwrap()
            .params
            .tensors[0]
            .data[0];
    assert!((moved - 0.025).abs() < 1e-6, "{moved}");
    let ledger = rig.coordinator.store.clients(1).unwrap();
    assert_eq!(ledger.len(), 2);
    assert!(
        ledger
            .iter()
            .all(|c| c.status == ClientStatus::Accepted && c.flops == 1234)
    );
    assert!(
        ledger.iter().all(|c| c.flops_predicted > 0),
        "prediction kept beside"
    );
}

#[test]
fn the_deadline_closes_a_round_with_whoever_reported() {
    let mut rig = rig();
    rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.clock.advance(Duration::from_secs(29));
    assert!(closed(&rig.handle(Input::Tick)).is_none());
    rig.clock.advance(Duration::from_secs(2));
    let out = rig.handle(Input::Tick);
    let row = closed(&out).expect("deadline passed");
    assert_eq!((row.status.as_str(), row.clients_reported), ("finished", 1));
    let ledger = rig.coordinator.store.clients(1).unwrap();
    let car2 = ledger.iter().find(|c| c.client == "car-2").unwrap();
    assert_eq!(car2.status, "dropped");
}

#[test]
fn a_round_without_enough_updates_fails_and_keeps_the_model() {
    let mut rig = rig_with(|c| c.rounds.min_reports = 2, false);
    let before = rig.coordinator.current().manifest.version;
    rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.clock.advance(Duration::from_secs(31));
    let out = rig.handle(Input::Tick);
    assert_eq!(closed(&out).unwrap().status, "failed");
    assert_eq!(rig.coordinator.current().manifest.version, before);
}

#[test]
fn a_resent_update_is_acknowledged_again_and_counted_once() {
    let mut rig = rig();
    rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    let out = rig.send(rig.update("car-1", 0.01, 10));
    assert_eq!(acks(&out, "car-1").len(), 1);
    assert!(acks(&out, "car-1")[0].accepted);
    rig.send(rig.update("car-2", 0.01, 10));
    let out = rig.handle(Input::Tick);
    let row = closed(&out).unwrap();
    assert_eq!((row.clients_reported, row.samples), (2, 20));
    let ledger = rig.coordinator.store.clients(1).unwrap();
    assert!(ledger.iter().find(|c| c.client == "car-1").unwrap().retries > 0);
}

#[test]
fn a_late_update_is_refused_and_recorded_late() {
    let mut rig = rig();
    rig.open(&["car-1", "car-2"]);
    let late = rig.update("car-2", 0.01, 10);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.clock.advance(Duration::from_secs(31));
    rig.handle(Input::Tick);
    let out = rig.send(late);
    let ack = acks(&out, "car-2").remove(0);
    assert!(!ack.accepted && ack.reason.contains("late"));
    let ledger = rig.coordinator.store.clients(1).unwrap();
    assert_eq!(
        ledger.iter().find(|c| c.client == "car-2").unwrap().status,
        "late"
    );
}

#[test]
fn a_lost_receipt_after_close_is_confirmed_again() {
    let mut rig = rig();
    rig.open(&["car-1", "car-2"]);
    let update = rig.update("car-1", 0.01, 10);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    rig.handle(Input::Tick);
    let out = rig.send(update);
    assert!(
        acks(&out, "car-1")[0].accepted,
        "still counted, confirmed again"
    );
}

#[test]
fn updates_for_another_round_base_or_client_are_rejected_with_their_reason() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    let delta = ParamSet::zeros(&a.spec.layout());
    let future = Announce {
        round: 99,
        ..a.clone()
    };
    let out = rig.send(rig.update_body("car-1", &future, &delta, 5));
    assert!(rig.rejected("wrong_round") > 0);
    let nack = acks(&out, "car-1");
    assert_eq!(
        nack.len(),
        1,
        "one negative receipt per update, not per chunk"
    );
    assert!(!nack[0].accepted && nack[0].reason.starts_with("wrong_round"));
    let mut other_base = a.clone();
    other_base.manifest.version = [7; 32];
    let out = rig.send(rig.update_body("car-1", &other_base, &delta, 5));
    assert!(rig.rejected("wrong_base") > 0);
    let nack = acks(&out, "car-1");
    assert!(nack.len() == 1 && !nack[0].accepted && nack[0].reason.starts_with("wrong_base"));
    // a chunk on car-1's topic that claims to be car-2's
    let mut forged = rig.update("car-2", 0.0, 5).remove(0);
    if let Input::Link(LinkEvent::Message { topic, .. }) = &mut forged {
        *topic = topics::client(FLEET, ClientTopic::Update, "car-1")
            .as_str()
            .into();
    }
    rig.handle(forged);
    assert!(
        rig.rejected("bad_signature") > 0,
        "car-2's signature does not hold on car-1's topic"
    );
    // car-1 signing a chunk that names car-2
    let chunk = UpdateChunk {
        client: messages::id("car-2").unwrap(),
        round: a.round,
        base_version: a.base_version(),
        pos: chunk::ChunkPos {
            index: 0,
            count: 1,
            total_len: 1,
        },
        data: vec![0],
    };
    let topic = topics::client(FLEET, ClientTopic::Update, "car-1");
    rig.handle(message(
        topic.as_str(),
        signed(Kind::UpdateChunk, &topic, "car-1", &chunk),
    ));
    assert!(rig.rejected("client_mismatch") > 0);
    // a vehicle that was not selected
    rig.handle(status("car-3", AgentState::Idle, STAGES));
    rig.send(rig.update_body("car-3", &a, &delta, 5));
    assert!(rig.rejected("not_selected") > 0);
    assert!(rig.coordinator.store.rejection_counts().unwrap().len() >= 4);
}

#[test]
fn an_update_for_a_head_the_model_lacks_is_refused() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    rig.head = 1;
    let out = rig.send(rig.update("car-1", 0.01, 5));
    assert!(!acks(&out, "car-1").remove(0).accepted);
    assert_eq!(rig.rejected("unknown_head"), 1);
    rig.head = 0;
    rig.send(rig.update("car-2", 0.01, 10));
    rig.clock.advance(Duration::from_secs(31));
    let out = rig.handle(Input::Tick);
    assert_eq!(closed(&out).unwrap().clients_reported, 1);
    let ledger = rig.coordinator.store.clients(a.round).unwrap();
    let heads: Vec<Option<&str>> = ledger.iter().map(|c| c.head.as_deref()).collect();
    assert_eq!(heads, [None, Some("y")], "the accepted row names its task");
}

#[test]
fn a_non_finite_update_is_refused_and_never_folded() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    let mut delta = ParamSet::zeros(&a.spec.layout());
    delta.tensors[0].data[0] = f32::NAN;
    let out = rig.send(rig.update_body("car-1", &a, &delta, 5));
    let ack = acks(&out, "car-1").remove(0);
    assert!(!ack.accepted);
    assert_eq!(rig.rejected("non_finite"), 1);
    rig.send(rig.update("car-2", 0.01, 10));
    rig.clock.advance(Duration::from_secs(31));
    let out = rig.handle(Input::Tick);
    let row = closed(&out).unwrap();
    assert_eq!(row.clients_reported, 1);
    assert!(rig.coordinator.current().params.check_finite().is_ok());
}

#[test]
fn garbage_is_counted_and_changes_nothing() {
    let mut rig = rig();
    rig.open(&["car-1", "car-2"]);
    for kind in [
        ClientTopic::Update,
        ClientTopic::Fetch,
        ClientTopic::Status,
        ClientTopic::Failure,
    ] {
        let topic = topics::client(FLEET, kind, "car-1");
        assert!(
            rig.handle(message(topic.as_str(), vec![1, 2, 3]))
                .is_empty()
        );
    }
    let counted: u64 = rig.coordinator.rejections().values().sum();
    assert_eq!(counted, 4);
    // a failure report car-2 signed, on car-1's topic, fails nobody
    let topic = topics::client(FLEET, ClientTopic::Failure, "car-1");
    if let Input::Link(LinkEvent::Message { payload, .. }) = failure("car-2", 1, "data") {
        rig.handle(message(topic.as_str(), payload.to_vec()));
    }
    assert_eq!(rig.coordinator.rejections().values().sum::<u64>(), 5);
    assert!(rig.coordinator.open_round().is_some());
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    let out = rig.handle(Input::Tick);
    let row = closed(&out).expect("closed once both reported");
    assert_eq!((row.clients_reported, row.clients_failed), (2, 0));
}

#[test]
fn fetches_get_the_missing_chunks_and_unselected_fetchers_get_no_ledger_row() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    let request = FetchRequest {
        version: a.base_version(),
        chunks: vec![],
        have: None,
    };
    for client in ["car-1", "visitor"] {
        let topic = topics::client(FLEET, ClientTopic::Fetch, client);
        let out = rig.handle(message(
            topic.as_str(),
            signed(Kind::FetchRequest, &topic, client, &request),
        ));
        let model = topics::client(FLEET, ClientTopic::Model, client);
        let chunks: Vec<ModelChunk> = out
            .iter()
            .filter_map(|o| match o {
                Output::Publish(m) if m.topic == model.as_str() => {
                    Some(from_server(m, Kind::ModelChunk))
                }
                _ => None,
            })
            .collect();
        assert_eq!(chunks.len(), a.manifest.chunks.len());
    }
    let stale = FetchRequest {
        version: [3; 32],
        ..request
    };
    let topic = topics::client(FLEET, ClientTopic::Fetch, "car-1");
    assert!(
        rig.handle(message(
            topic.as_str(),
            signed(Kind::FetchRequest, &topic, "car-1", &stale)
        ))
        .is_empty()
    );
    assert_eq!(rig.rejected("unknown_version"), 1);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    let out = rig.handle(Input::Tick);
    let row = closed(&out).unwrap();
    let ledger = rig.coordinator.store.clients(1).unwrap();
    assert!(
        ledger.iter().all(|c| c.client != "visitor"),
        "never selected: no row"
    );
    let car1 = ledger.iter().find(|c| c.client == "car-1").unwrap();
    assert!(
        row.bytes_down > car1.bytes_down,
        "the visitor's bytes count in the totals"
    );
}

#[test]
fn a_server_side_evaluation_runs_before_the_round_is_recorded() {
    let mut rig = rig_with(|_| {}, true);
    rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    let out = rig.handle(Input::Tick);
    assert!(closed(&out).is_none(), "not before its evaluation");
    let request = out
        .iter()
        .find_map(|o| match o {
            Output::Evaluate(r) => Some(r.clone()),
            _ => None,
        })
        .expect("asks for an evaluation");
    assert!(
        rig.handle(Input::Tick).is_empty(),
        "nothing opens meanwhile"
    );
    let out = rig.handle(Input::Evaluated(request.run()));
    let row = closed(&out).unwrap();
    assert!(row.accuracy.is_some());
    assert_eq!(
        rig.coordinator.store.rounds().unwrap()[0].accuracy,
        row.accuracy
    );
}

#[test]
fn a_reconnect_republishes_the_open_round() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    let out = rig.handle(Input::Link(LinkEvent::Connected));
    assert_eq!(announces(&out), vec![a]);
}

#[test]
fn the_next_round_opens_after_the_last_one_closed_and_warm_up_narrows_the_codec() {
    let mut rig = rig_with(
        |c| {
            c.rounds.codec = "topk:0.01".parse().unwrap();
            c.rounds.codec_warmup_rounds = 2;
        },
        false,
    );
    let first = rig.open(&["car-1", "car-2"]);
    let kept = |a: &Announce| a.codec.sparsify;
    assert_eq!(kept(&first), codec::Sparsify::TopK(0.25));
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    rig.handle(Input::Tick);
    let second = announces(&rig.handle(Input::Tick)).remove(0);
    assert_eq!(second.round, 2);
    assert_eq!(kept(&second), codec::Sparsify::TopK(0.0625));
    assert_eq!(
        second.base_version(),
        rig.coordinator.current().manifest.version
    );
}

#[test]
fn a_flood_of_junk_adds_counts_not_rows_and_one_warning_a_minute() {
    let mut rig = rig();
    let topic = topics::client(FLEET, ClientTopic::Update, "car-1");
    for _ in 0..20_000 {
        rig.handle(message(topic.as_str(), vec![0xff; 16]));
    }
    assert_eq!(
        rig.rejected("bad_magic") + rig.rejected("truncated"),
        20_000
    );
    assert_eq!(rig.coordinator.store.rejection_rows().unwrap(), 1);
    let counted: u64 = rig
        .coordinator
        .store
        .rejection_counts()
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(counted, 20_000);
    // the next minute starts a new row and a new warning
    rig.clock.advance(Duration::from_secs(60));
    rig.handle(message(topic.as_str(), vec![0xff; 16]));
    assert_eq!(rig.coordinator.store.rejection_rows().unwrap(), 2);
}

fn failure(client: &str, round: u64, reason: &str) -> Input {
    let report = messages::FailureReport {
        client: messages::id(client).unwrap(),
        round,
        reason: messages::detail(reason),
        detail: messages::detail("value \"abc\" in numeric column speed"),
    };
    let topic = topics::client(FLEET, ClientTopic::Failure, client);
    message(
        topic.as_str(),
        signed(Kind::Failure, &topic, client, &report),
    )
}

#[test]
fn unsigned_and_unprovisioned_messages_are_refused_and_never_counted() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    // the same update, stripped of its signature
    let unsigned: Vec<Input> = rig
        .update("car-1", 0.01, 10)
        .into_iter()
        .map(|i| match i {
            Input::Link(LinkEvent::Message { topic, payload, .. }) => {
                let envelope = wire::open(&payload, 1 << 20).unwrap();
                message(&topic, wire::encode_raw(Kind::UpdateChunk, envelope.body))
            }
            other => other,
        })
        .collect();
    assert!(acks(&rig.send(unsigned), "car-1").is_empty());
    assert!(rig.rejected("unsigned") > 0);
    // a stranger nobody provisioned: not even its status is taken
    rig.handle(status("stranger", AgentState::Idle, STAGES));
    assert_eq!(rig.rejected("unknown_vehicle"), 1);
    // a forged receipt-worthy update under car-2's name, signed by car-1's key
    let mut forged = rig.update("car-1", 0.5, 10);
    for i in &mut forged {
        if let Input::Link(LinkEvent::Message { topic, .. }) = i {
            *topic = topics::client(FLEET, ClientTopic::Update, "car-2").to_string();
        }
    }
    assert!(acks(&rig.send(forged), "car-2").is_empty());
    assert!(rig.rejected("bad_signature") > 0);
    // the real updates still count
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    let row = closed(&rig.handle(Input::Tick)).cloned().expect("closed");
    assert_eq!((row.round, row.clients_reported), (a.round, 2));
}

#[test]
fn a_vehicle_cannot_claim_more_samples_than_it_declared() {
    let mut rig = rig();
    rig.open(&["car-1", "car-2"]);
    // declared 100 rows in its status; claims a billion
    let out = rig.send(rig.update("car-1", 0.5, 1_000_000_000));
    let nack = acks(&out, "car-1");
    assert!(
        !nack[0].accepted && nack[0].reason.contains("declared"),
        "{nack:?}"
    );
    assert_eq!(rig.rejected("too_many_samples"), 1);
    rig.send(rig.update("car-1", 0.01, 100));
    rig.send(rig.update("car-2", 0.01, 100));
    let row = closed(&rig.handle(Input::Tick)).cloned().expect("closed");
    assert_eq!((row.clients_reported, row.samples), (2, 200));
}

#[test]
fn an_update_far_larger_than_the_fleets_is_clipped_to_the_bound() {
    let mut rig = rig_with(|c| c.rounds.norm_bound = 3.0, false);
    rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    closed(&rig.handle(Input::Tick)).expect("round 1 closed");
    let before = rig.coordinator.current().params.clone();
    let out = rig.handle(Input::Tick);
    let a = announces(&out).pop().expect("round 2 opens");
    rig.send(rig.update("car-1", 100.0, 10)); // 10,000x the fleet's norm
    rig.send(rig.update("car-2", 0.01, 10));
    closed(&rig.handle(Input::Tick)).expect("round 2 closed");
    let ledger = rig.coordinator.store.clients(a.round).unwrap();
    let big = ledger.iter().find(|c| c.client == "car-1").unwrap();
    assert_eq!(big.status, ClientStatus::Accepted);
    assert!(
        big.suspect.as_deref().unwrap_or("").contains("clipped"),
        "{big:?}"
    );
    // each parameter moved by at most (3 x 0.01 + 0.01) / 2 = 0.02, not 50
    let after = &rig.coordinator.current().params;
    let moved = after
        .values()
        .zip(before.values())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved < 0.021, "moved {moved}");
}

#[test]
fn a_failure_report_is_recorded_and_the_round_stops_waiting_for_it() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.handle(failure("car-2", a.round, "data"));
    // no deadline wait: closed on the next tick
    let row = closed(&rig.handle(Input::Tick))
        .cloned()
        .expect("closed early");
    assert_eq!((row.clients_reported, row.clients_failed), (1, 1));
    let ledger = rig.coordinator.store.clients(a.round).unwrap();
    let failed = ledger.iter().find(|c| c.client == "car-2").unwrap();
    assert_eq!(failed.status, ClientStatus::Failed);
    assert!(
        failed.reason.as_deref().unwrap().starts_with("data: "),
        "{failed:?}"
    );
    let stored = rig.coordinator.store.rounds().unwrap();
    assert_eq!(stored.last().unwrap().clients_failed, 1);
}

#[test]
fn every_selected_vehicle_failing_fails_the_round_at_once() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    rig.handle(failure("car-1", a.round, "diverged"));
    rig.handle(failure("car-2", a.round, "data"));
    let row = closed(&rig.handle(Input::Tick))
        .cloned()
        .expect("closed early");
    assert_eq!(row.status, "failed");
    assert_eq!(rig.coordinator.outcomes(), (0, 1));
}

#[test]
fn replayed_statuses_are_refused_and_silent_vehicles_drop_out() {
    let copy = |input: &Input| match input {
        Input::Link(LinkEvent::Message { topic, payload, .. }) => message(topic, payload.to_vec()),
        _ => unreachable!(),
    };
    let mut rig = rig();
    let first = status("car-1", AgentState::Idle, STAGES);
    let old = copy(&first);
    rig.handle(first);
    let latest = status("car-1", AgentState::Idle, STAGES);
    let again = copy(&latest);
    rig.handle(latest);
    // the latest delivered twice (MQTT is at least once): dropped quietly
    rig.handle(again);
    assert_eq!(rig.rejected("replayed"), 0);
    let first = status("car-2", AgentState::Idle, STAGES);
    let old_2 = copy(&first);
    rig.handle(first);
    rig.handle(status("car-2", AgentState::Idle, STAGES));
    // both silent past rounds.offline_after_secs; older statuses replayed
    // are refused and keep neither on the fleet: no round opens
    rig.clock.advance(Duration::from_secs(121));
    rig.handle(old);
    rig.handle(old_2);
    assert_eq!(rig.rejected("replayed"), 2);
    assert!(announces(&rig.handle(Input::Tick)).is_empty());
    rig.online(&["car-1", "car-2"]);
    assert_eq!(announces(&rig.handle(Input::Tick)).len(), 1);
}

#[test]
fn a_server_killed_after_acknowledging_resumes_the_round_with_every_acknowledged_update() {
    // the same round run without a restart, for comparison
    let mut straight = rig();
    straight.open(&["car-1", "car-2"]);
    straight.send(straight.update("car-1", 0.01, 10));
    straight.send(straight.update("car-2", 0.03, 30));
    let want = closed(&straight.handle(Input::Tick))
        .cloned()
        .expect("closed");
    let want_model = straight.coordinator.current().params.clone();

    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    let out = rig.send(rig.update("car-1", 0.01, 10));
    assert!(
        acks(&out, "car-1")[0].accepted,
        "acknowledged, so car-1 forgets it"
    );
    let mut rig = rig.restart();
    let reopened = rig
        .coordinator
        .open_round()
        .expect("the round resumes")
        .clone();
    assert_eq!(reopened.round, a.round);
    // on (re)connecting the server re-announces the same round
    let out = rig.handle(Input::Link(LinkEvent::Connected));
    assert_eq!(announces(&out)[0].round, a.round);
    // car-1's re-send (its receipt got lost) is recognised, not counted twice
    let out = rig.send(rig.update("car-1", 0.01, 10));
    assert!(acks(&out, "car-1")[0].accepted);
    rig.online(&["car-1", "car-2"]);
    rig.send(rig.update("car-2", 0.03, 30));
    let row = closed(&rig.handle(Input::Tick)).cloned().expect("closed");
    assert_eq!(row.round, a.round);
    assert_eq!(
        (row.clients_reported, row.samples),
        (want.clients_reported, want.samples)
    );
    assert_eq!(
        rig.coordinator.current().params,
        want_model,
        "each update counted exactly once"
    );
    // nothing is left to resume
    let rig = rig.restart();
    assert!(rig.coordinator.open_round().is_none());
}

#[test]
fn a_foreign_message_on_the_round_topic_is_replaced_with_the_real_announcement() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    let topic = topics::round(FLEET);
    let forged = Announce {
        round: 1_000_000_000,
        ..a.clone()
    };
    let payload = signed(Kind::Announce, &topic, "car-1", &forged);
    let out = rig.handle(message(topic.as_str(), payload));
    assert_eq!(
        announces(&out),
        vec![a.clone()],
        "the genuine one, retained again"
    );
    assert_eq!(rig.rejected("forged_announcement"), 1);
    // the server's own announcement coming back is left alone
    let ours = match out.into_iter().next() {
        Some(Output::Publish(m)) => m.payload,
        _ => unreachable!(),
    };
    assert!(rig.handle(message(topic.as_str(), ours)).is_empty());
}

#[test]
fn vehicles_scores_of_the_base_model_are_kept_per_vehicle_and_pooled() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    let delta = ParamSet::zeros(&a.spec.layout());
    let score = |accuracy: f64, samples: u64| Evaluation {
        loss: 0.5,
        accuracy: Some(accuracy),
        rmse: None,
        mae: None,
        samples,
    };
    // out of range: refused, never counted
    rig.send(rig.scored_update("car-1", &a, &delta, 10, [Some(score(1.5, 5)), None]));
    assert_eq!(rig.rejected("non_finite"), 1);
    rig.send(rig.scored_update("car-1", &a, &delta, 10, [Some(score(0.5, 10)), None]));
    let ledger = rig.coordinator.store.clients(1).unwrap();
    assert_eq!(
        ledger[0].personal_accuracy, None,
        "car-1 keeps no personal head"
    );
    rig.send(rig.scored_update(
        "car-2",
        &a,
        &delta_of(&a, "car-2", 0.0),
        10,
        [Some(score(0.8, 30)), Some(score(0.9, 30))],
    ));
    let out = rig.handle(Input::Tick);
    let row = closed(&out).expect("closed");
    assert_eq!(row.holdout_samples, 40);
    assert!(
        (row.holdout_accuracy.unwrap() - 0.725).abs() < 1e-12,
        "weighted by rows"
    );
    let stored = rig.coordinator.store.rounds().unwrap();
    assert_eq!(stored[0].holdout_accuracy, row.holdout_accuracy);
    let ledger = rig.coordinator.store.clients(1).unwrap();
    let car2 = ledger.iter().find(|c| c.client == "car-2").unwrap();
    assert_eq!(
        (car2.holdout_samples, car2.holdout_accuracy),
        (30, Some(0.8))
    );
}

#[test]
fn a_vehicle_at_its_data_budget_sits_the_round_out_and_the_ledger_says_why() {
    let mut rig = rig();
    rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    assert!(closed(&rig.handle(Input::Tick)).is_some());
    // car-1 has used 5 MB today (its round-1 row, as if it had fetched a lot)
    let mut heavy = rig.coordinator.store.clients(1).unwrap().remove(0);
    assert_eq!(heavy.client, "car-1");
    heavy.wire_bytes_down = 5_000_000;
    rig.coordinator.store.record_skipped(&[heavy]).unwrap();
    rig.coordinator.config.budget.daily_mb = 1.0;
    rig.coordinator.config.rounds.min_clients = 1;
    let a = announces(&rig.handle(Input::Tick)).remove(0);
    let selected: Vec<&str> = a.selected.iter().map(|c| c.as_str()).collect();
    assert_eq!(selected, ["car-2"], "car-1 is over its daily cap");
    let ledger = rig.coordinator.store.clients(a.round).unwrap();
    let car1 = ledger
        .iter()
        .find(|c| c.client == "car-1")
        .expect("a row says why");
    assert_eq!(car1.status, ClientStatus::Skipped);
    let why = car1.reason.as_deref().unwrap();
    assert!(
        why.contains("daily use 5.0") && why.contains("daily cap of 1.000 MB"),
        "{why}"
    );
    let summary = rig
        .coordinator
        .store
        .vehicle_summaries(rig.clock.now_ms(), (Some(1_000_000), None))
        .unwrap();
    let car1 = summary.iter().find(|v| v.client == "car-1").unwrap();
    assert_eq!(car1.skipped, 1);
    assert!(car1.budget_used.unwrap() > 5.0, "{:?}", car1.budget_used);
    // the round closes; a day later the daily cap has room again, but a
    // monthly cap still holds car-1 back
    rig.send(rig.update("car-2", 0.01, 10));
    assert!(closed(&rig.handle(Input::Tick)).is_some());
    rig.clock.advance(Duration::from_secs(86_400));
    rig.online(&["car-1", "car-2"]);
    let a = announces(&rig.handle(Input::Tick)).remove(0);
    assert_eq!(a.selected.len(), 2, "a new UTC day");
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    assert!(closed(&rig.handle(Input::Tick)).is_some());
    rig.coordinator.config.budget.monthly_mb = 2.0;
    let a = announces(&rig.handle(Input::Tick)).remove(0);
    let selected: Vec<&str> = a.selected.iter().map(|c| c.as_str()).collect();
    assert_eq!(selected, ["car-2"]);
    let ledger = rig.coordinator.store.clients(a.round).unwrap();
    let why = ledger
        .iter()
        .find(|c| c.client == "car-1")
        .unwrap()
        .reason
        .clone()
        .unwrap();
    assert!(why.contains("monthly cap"), "{why}");
}

/// The largest change of any parameter from `before` to the current model.
fn moved(rig: &Rig, before: &ParamSet) -> f32 {
    rig.coordinator
        .current()
        .params
        .values()
        .zip(before.values())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

fn ledger_row(rig: &Rig, round: u64, client: &str) -> convoy_store::ClientRow {
    rig.coordinator
        .store
        .clients(round)
        .unwrap()
        .into_iter()
        .find(|c| c.client == client)
        .unwrap()
}

#[test]
fn huge_values_in_the_first_round_are_clipped_by_their_own_recipe() {
    let mut rig = rig();
    let before = rig.coordinator.current().params.clone();
    let a = rig.open(&["car-1", "car-2", "car-3"]);
    // no earlier round: no median yet
    rig.send(rig.update("car-1", 1e6, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    rig.send(rig.update("car-3", 0.012, 10));
    closed(&rig.handle(Input::Tick)).expect("closed");
    let big = ledger_row(&rig, a.round, "car-1");
    assert!(
        big.suspect.as_deref().unwrap_or("").contains("recipe"),
        "{big:?}"
    );
    assert!(
        moved(&rig, &before) < 0.05,
        "moved {}",
        moved(&rig, &before)
    );
}

#[test]
fn a_negated_update_under_the_bound_is_trimmed_and_flagged() {
    for rule in ["cosine", "trimmed_mean:0.25", "median", "krum:1"] {
        let mut rig = rig_with(|c| c.aggregation.rule = rule.parse().unwrap(), false);
        let before = rig.coordinator.current().params.clone();
        let a = rig.open(&["car-1", "car-2", "car-3", "visitor"]);
        for (c, step) in [("car-1", 0.01), ("car-2", 0.011), ("car-3", 0.009)] {
            rig.send(rig.update(c, step, 10));
        }
        // 4.5x an honest update, negated: under the 5x bound
        rig.send(rig.update("visitor", -0.045, 10));
        closed(&rig.handle(Input::Tick)).expect("closed");
        let after = &rig.coordinator.current().params;
        let first = after.values().next().unwrap() - before.values().next().unwrap();
        assert!((0.008..=0.012).contains(&first), "{rule}: moved {first}");
        let bad = ledger_row(&rig, a.round, "visitor");
        let why = bad.suspect.unwrap_or_default();
        assert!(why.contains("points away"), "{rule}: {why}");
        if rule.starts_with("krum") {
            assert!(why.contains("left out"), "{why}");
        }
        for honest in ["car-1", "car-2", "car-3"] {
            let row = ledger_row(&rig, a.round, honest);
            assert!(row.suspect.is_none(), "{rule}: {row:?}");
        }
    }
    // plain FedAvg is pulled the wrong way: (0.03 - 0.045) / 4 < 0
    let mut rig = rig_with(|c| c.aggregation.rule = Rule::FedAvg, false);
    let before = rig.coordinator.current().params.clone();
    rig.open(&["car-1", "car-2", "car-3", "visitor"]);
    for (c, step) in [
        ("car-1", 0.01),
        ("car-2", 0.011),
        ("car-3", 0.009),
        ("visitor", -0.045),
    ] {
        rig.send(rig.update(c, step, 10));
    }
    closed(&rig.handle(Input::Tick)).expect("closed");
    let first =
        rig.coordinator.current().params.values().next().unwrap() - before.values().next().unwrap();
    assert!(first < 0.0, "fedavg moved {first}");
}

#[test]
fn an_inflated_claim_weighs_at_most_three_medians() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2", "car-3"]);
    // every status declared 100 rows; car-1 claims them all, the others 10
    rig.send(rig.update("car-1", 0.01, 100));
    rig.send(rig.update("car-2", 0.01, 10));
    rig.send(rig.update("car-3", 0.01, 10));
    closed(&rig.handle(Input::Tick)).expect("closed");
    let big = ledger_row(&rig, a.round, "car-1");
    assert_eq!((big.samples, big.weight), (100, Some(30.0)));
    assert!(big.suspect.unwrap().contains("median"));
    assert_eq!(ledger_row(&rig, a.round, "car-2").weight, Some(10.0));
    let lineage = rig
        .coordinator
        .store
        .lineage(&version::hex(&rig.coordinator.current().manifest.version))
        .unwrap();
    let weights: Vec<f64> = lineage.iter().map(|l| l.weight).collect();
    assert_eq!(weights, [30.0, 10.0, 10.0]);
}

#[test]
fn a_copy_of_another_vehicles_update_is_refused() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    // car-2 read car-1's update off the broker and sends it as its own
    let copied = delta_of(&a, "car-1", 0.01);
    let out = rig.send(rig.update_body("car-2", &a, &copied, 10));
    let nack = acks(&out, "car-2");
    assert!(
        !nack[0].accepted && nack[0].reason.contains("car-1"),
        "{nack:?}"
    );
    assert_eq!(rig.rejected("copied"), 1);
    // told so, car-2 drops it: the round does not wait for its deadline
    closed(&rig.handle(Input::Tick)).expect("closed at once");
    let copy = ledger_row(&rig, a.round, "car-2");
    assert_eq!(copy.status, ClientStatus::Rejected);
    assert!(copy.suspect.unwrap().contains("car-1"));
}

#[test]
fn streamed_fedavg_takes_its_norm_bound_back_from_the_store_after_a_restart() {
    let mut rig = rig_with(
        |c| {
            c.aggregation.rule = Rule::FedAvg;
            c.rounds.norm_bound = 3.0;
        },
        false,
    );
    rig.open(&["car-1", "car-2"]);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    closed(&rig.handle(Input::Tick)).expect("round 1 closed");
    let mut rig = rig.restart();
    let before = rig.coordinator.current().params.clone();
    rig.online(&["car-1", "car-2"]);
    let a = announces(&rig.handle(Input::Tick)).pop().expect("round 2");
    assert!(rig.coordinator.round.as_ref().unwrap().streaming);
    rig.send(rig.update("car-1", 0.5, 10)); // 50x the fleet's norm, within its recipe
    rig.send(rig.update("car-2", 0.01, 10));
    closed(&rig.handle(Input::Tick)).expect("round 2 closed");
    let big = ledger_row(&rig, a.round, "car-1");
    assert!(big.suspect.unwrap().contains("median"));
    assert!(
        moved(&rig, &before) < 0.021,
        "moved {}",
        moved(&rig, &before)
    );
}

#[test]
fn a_blocked_vehicle_is_refused_and_not_selected() {
    let mut rig = rig();
    rig.open(&["car-1", "car-2", "car-3"]);
    // the operator's command runs in another process, on its own connection
    let cli = Store::open(&rig.coordinator.config.db).unwrap();
    assert!(cli.block_vehicle("car-3", "key stolen", START_MS).unwrap());
    assert!(!cli.block_vehicle("nobody", "", START_MS).unwrap());
    // the keyring looks at the database at most every two seconds
    std::thread::sleep(Duration::from_millis(2_100));
    let out = rig.send(rig.update("car-3", 0.01, 10));
    assert!(acks(&out, "car-3").is_empty());
    assert!(rig.rejected("unknown_vehicle") > 0);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.02, 10));
    rig.clock.advance(Duration::from_secs(31));
    closed(&rig.handle(Input::Tick)).expect("round 1 closed");
    let a = announces(&rig.handle(Input::Tick)).pop().expect("round 2");
    let selected: Vec<&str> = a.selected.iter().map(|c| c.as_str()).collect();
    assert_eq!(selected, ["car-1", "car-2"]);
    assert_eq!(cli.vehicle_password_hash("car-3").unwrap(), None);
    assert!(cli.unblock_vehicle("car-3").unwrap());
    assert!(cli.vehicle_password_hash("car-3").unwrap().is_some());
}

#[test]
fn junk_on_the_round_topic_costs_one_re_announcement_a_second() {
    let mut rig = rig();
    let a = rig.open(&["car-1", "car-2"]);
    let topic = topics::round(FLEET);
    let mut restored = 0;
    for i in 0..2_000u32 {
        let out = rig.handle(message(topic.as_str(), i.to_be_bytes().to_vec()));
        restored += announces(&out).len();
    }
    assert_eq!(restored, 1, "the first at once, the rest wait");
    assert_eq!(rig.rejected("forged_announcement"), 2_000);
    // the junk left retained is replaced on the first tick a second later
    assert!(announces(&rig.handle(Input::Tick)).is_empty());
    rig.clock.advance(Duration::from_millis(1_000));
    assert_eq!(announces(&rig.handle(Input::Tick)), vec![a.clone()]);
    assert!(announces(&rig.handle(Input::Tick)).is_empty(), "once");
    // someone clears it: it comes back, and a clear is no forgery
    rig.clock.advance(Duration::from_millis(1_000));
    let out = rig.handle(message(topic.as_str(), Vec::new()));
    assert_eq!(announces(&out), vec![a]);
    assert_eq!(rig.rejected("forged_announcement"), 2_000);
}

#[test]
fn a_healthy_round_is_one_info_line() {
    let text = convoy_runtime::process::logged_at_info(|| {
        let mut rig = rig();
        rig.open(&["car-1", "car-2", "car-3"]);
        for (c, step) in [("car-1", 0.01), ("car-2", 0.011), ("car-3", 0.009)] {
            rig.send(rig.update(c, step, 10));
        }
        closed(&rig.handle(Input::Tick)).expect("closed");
    });
    // vehicles coming online are news once, not per round
    let per_round: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" INFO ") && !l.contains("client status"))
        .collect();
    assert_eq!(per_round.len(), 1, "{text}");
    assert!(per_round[0].contains("round closed"), "{text}");
}

/// Server momentum on a known answer, across a restart: round 1 moves by
/// its mean update 0.01 (m = 0.01); round 2, on a new coordinator, by
/// m = 0.5 · 0.01 + 0.02 = 0.025, which only the stored state can give.
/// The round announces FedProx's μ to the vehicles.
#[test]
fn server_momentum_survives_a_restart_and_the_round_announces_mu() {
    use convoy_shared::messages::Objective;
    use convoy_shared::strategy::server::ServerOpt;
    let mut rig = rig_with(
        |c| {
            c.aggregation.rule = Rule::FedAvg;
            c.strategy.server = ServerOpt::FedAvgM { momentum: 0.5 };
            c.strategy.proximal_mu = 0.25;
        },
        false,
    );
    let a = rig.open(&["car-1", "car-2"]);
    assert_eq!(a.objective, Objective::Prox { mu: 0.25 });
    let start = rig.coordinator.current().params.clone();
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    let row = closed(&rig.handle(Input::Tick))
        .expect("round 1 closed")
        .clone();
    assert_eq!(
        row.strategy.as_deref(),
        Some("fedavgm:momentum=0.5+fedprox:mu=0.25+fedavg:lr=1")
    );
    let first = rig.coordinator.current().params.tensors[0].data[0] - start.tensors[0].data[0];
    assert!((first - 0.01).abs() < 1e-6, "moved {first}");
    let mut rig = rig.restart();
    let before = rig.coordinator.current().params.clone();
    rig.online(&["car-1", "car-2"]);
    rig.handle(Input::Tick);
    rig.send(rig.update("car-1", 0.02, 10));
    rig.send(rig.update("car-2", 0.02, 10));
    closed(&rig.handle(Input::Tick)).expect("round 2 closed");
    let step = rig.coordinator.current().params.tensors[0].data[0] - before.tensors[0].data[0];
    assert!((step - 0.025).abs() < 1e-6, "moved {step}, not 0.025");
}

/// Early stopping on the vehicles' scores: each round's vehicles score its
/// base model. v1 scores 0.9 (by round 2), v2 0.8 and v3 0.7: two scored
/// models without a better one stop training after round 4, and `best`
/// deploys v1 while the latest is v4.
#[test]
fn training_stops_when_the_vehicles_scores_stop_improving() {
    let mut rig = rig_with(|c| c.rounds.early_stop_rounds = 2, false);
    let score = |accuracy: f64| Evaluation {
        loss: 0.5,
        accuracy: Some(accuracy),
        rmse: None,
        mae: None,
        samples: 10,
    };
    for (round, accuracy) in [(1, 0.5), (2, 0.9), (3, 0.8), (4, 0.7)] {
        assert!(!rig.coordinator.done(), "round {round} runs");
        rig.online(&["car-1", "car-2"]);
        let a = announces(&rig.handle(Input::Tick))
            .pop()
            .expect("a round opens");
        assert_eq!(a.round, round);
        for car in ["car-1", "car-2"] {
            let delta = delta_of(&a, car, 0.01);
            rig.send(rig.scored_update(car, &a, &delta, 10, [Some(score(accuracy)), None]));
        }
        closed(&rig.handle(Input::Tick)).expect("closed");
    }
    assert!(rig.coordinator.done(), "stopped early");
    rig.online(&["car-1", "car-2"]);
    assert!(announces(&rig.handle(Input::Tick)).is_empty(), "no round 5");
    let d = rig
        .coordinator
        .store
        .deployment(convoy_store::Deploy::Best)
        .unwrap();
    let rounds = rig.coordinator.store.rounds().unwrap();
    assert_eq!(
        d.deployed.unwrap().version,
        rounds[0].model_version.clone().unwrap()
    );
    assert_eq!(d.latest.unwrap().round, 4);
    assert_eq!(d.since_best, 2);
    let mut rig = rig.restart();
    assert!(rig.coordinator.done(), "still stopped after a restart");
    rig.online(&["car-1", "car-2"]);
    assert!(announces(&rig.handle(Input::Tick)).is_empty());
}

#[path = "tests_scaffold.rs"]
mod scaffold;

#[path = "tests_async.rs"]
mod asynchronous;
