//! The round state machine driven input by input: no broker, no threads
//! (training orders run inline), and a clock that moves only when told.

use super::*;
use crate::config::{AgentConfig, DataConfig, Faults, TrainingConfig};
use crate::policy::PolicyConfig;
use convoy_runtime::clock::{Clock, ManualClock};
use convoy_shared::chunk::ChunkPos;
use convoy_shared::dataset::Table;
use convoy_shared::identity::SecretKey;
use convoy_shared::messages::{
    self, FetchRequest, ModelChunk, ModelPart, Status, UpdateAck, UpdateChunk,
};
use convoy_shared::params::ParamSet;
use convoy_shared::spec::{ModelSpec, Recipe, TaskKind};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE};
use convoy_shared::wire::{self, Kind};

const FLEET: &str = "unit";
const ME: &str = "car-1";
const START_MS: u64 = 1_700_000_000_000;

struct Rig {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    spec: ModelSpec,
    task: Recipe,
    agent: Agent,
}

fn csv() -> String {
    let mut text = String::from("a,b,y\n");
    for i in 0..40 {
        let (a, b) = (i as f32 / 10.0, (i % 7) as f32);
        text.push_str(&format!("{a},{b},{}\n", i % 2));
    }
    text
}

fn config(dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        fleet: FLEET.parse().unwrap(),
        client_id: ME.parse().unwrap(),
        state_dir: dir.join("state"),
        broker: Default::default(),
        identity: Default::default(),
        data: DataConfig::new(dir.join("data.csv"), "y", TaskKind::Classification),
        training: TrainingConfig {
            ack_timeout_secs: 5,
            ..Default::default()
        },
        policy: PolicyConfig::default(),
        limits: Default::default(),
        faults: Faults::default(),
        deployment: None,
    }
}

fn rig_with(tweak: impl FnOnce(&mut AgentConfig)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.csv"), csv()).unwrap();
    let mut config = config(dir.path());
    tweak(&mut config);
    let table = Table::read(csv().as_bytes()).unwrap();
    let spec = table
        .derive_spec("y", TaskKind::Classification, vec![4], 3)
        .unwrap();
    let task = Recipe {
        epochs: 1,
        lr: 0.1,
        batch_size: 8,
        ..Default::default()
    };
    let clock = ManualClock::new(START_MS);
    let agent = restart(&config, &clock, &table);
    Rig {
        dir,
        clock,
        spec,
        task,
        agent,
    }
}

fn rig() -> Rig {
    rig_with(|_| {})
}

fn server_key() -> SecretKey {
    SecretKey::from_seed([9; 32])
}

fn vehicle_key() -> SecretKey {
    SecretKey::from_seed([5; 32])
}

/// `message` as the server signs it for `topic`.
fn from_server<T: serde::Serialize>(kind: Kind, topic: &str, message: &T) -> Input {
    self::message(
        topic,
        wire::encode(kind, message, topic, &server_key()).unwrap(),
    )
}

/// Decodes what this vehicle signed.
fn from_vehicle<T: serde::de::DeserializeOwned>(m: &Outgoing, kind: Kind) -> T {
    wire::decode(
        &m.payload,
        kind,
        1 << 20,
        &m.topic,
        &vehicle_key().public(),
        ME,
    )
    .unwrap()
}

fn restart(config: &AgentConfig, clock: &Arc<ManualClock>, table: &Table) -> Agent {
    let state = StateDir::open(&config.state_dir).unwrap();
    let keys = Keys {
        vehicle: vehicle_key(),
        server: server_key().public().into(),
    };
    Agent::new(
        config.clone(),
        keys,
        state,
        LocalData::Csv(Arc::new(table.clone())),
        clock.clone(),
    )
}

impl Rig {
    /// Round `round` on `params`, open for a minute, asking `selected`
    /// (everyone when empty) for updates in `codec`.
    fn announcement(
        &self,
        round: u64,
        params: &ParamSet,
        codec: &str,
        selected: &[&str],
    ) -> Announce {
        Announce {
            round,
            manifest: version::manifest_of(params, &self.spec, &self.task, &Default::default()),
            spec: self.spec.clone(),
            task: self.task.clone(),
            codec: codec.parse().unwrap(),
            downlink_codec: Pipeline::FP32,
            deadline_ms: self.clock.now_ms() + 60_000,
            selected: selected.iter().filter_map(|c| messages::id(c)).collect(),
            chunk_size: 1024,
            objective: Default::default(),
            staleness: 0,
        }
    }

    /// [`Rig::announcement`], signed by the server and delivered.
    fn announce(&self, round: u64, params: &ParamSet, codec: &str, selected: &[&str]) -> Input {
        let announce = self.announcement(round, params, codec, selected);
        from_server(Kind::Announce, topics::round(FLEET).as_str(), &announce)
    }

    fn initial(&self) -> ParamSet {
        self.spec.init_params()
    }

    /// A model the agent cannot rebuild from the spec: it must fetch it.
    fn trained_elsewhere(&self) -> ParamSet {
        let mut p = self.initial();
        for v in &mut p.tensors[0].data {
            *v += 0.25;
        }
        p
    }

    fn handle(&mut self, input: Input) -> Vec<Action> {
        self.agent.handle(input).unwrap()
    }

    fn state(&self) -> StateDir {
        StateDir::open(&self.dir.path().join("state")).unwrap()
    }

    /// Runs the training order among `actions` inline and feeds its result back.
    fn train(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let order = actions
            .into_iter()
            .find_map(|a| match a {
                Action::Train(order) => Some(order),
                _ => None,
            })
            .expect("a training order");
        let done = order.run();
        self.handle(Input::Trained(Box::new(done)))
    }

    fn ack(&self, round: u64, accepted: bool) -> Input {
        let ack = UpdateAck {
            round,
            accepted,
            reason: String::new(),
        };
        from_server(
            Kind::UpdateAck,
            topics::client(FLEET, ClientTopic::Ack, ME).as_str(),
            &ack,
        )
    }

    /// The version id of `params` under the rig's spec and task.
    fn version_of(&self, params: &ParamSet) -> [u8; 32] {
        version::manifest_of(params, &self.spec, &self.task, &Default::default()).version
    }

    /// Round 1 trained on the initial model and acknowledged: the vehicle
    /// holds it. Returns it and its id.
    fn holding_initial(&mut self) -> (ParamSet, [u8; 32]) {
        let initial = self.initial();
        let actions = self.handle(self.announce(1, &initial, "fp32", &[]));
        self.train(actions);
        self.handle(self.ack(1, true));
        let held = self.version_of(&initial);
        (initial, held)
    }

    /// `steps` sent as one chunk of a delta chain from `from` to `version`.
    fn delta_chain(&self, version: [u8; 32], from: [u8; 32], steps: &[&ParamSet]) -> Input {
        let bytes = chain(steps);
        let pos = ChunkPos {
            index: 0,
            count: 1,
            total_len: bytes.len() as u32,
        };
        self.chunk(version, ModelPart::Delta { from, pos }, bytes)
    }

    fn chunk(&self, version: [u8; 32], part: ModelPart, data: Vec<u8>) -> Input {
        let chunk = ModelChunk {
            version,
            part,
            data,
        };
        from_server(
            Kind::ModelChunk,
            topics::client(FLEET, ClientTopic::Model, ME).as_str(),
            &chunk,
        )
    }
}

fn message(topic: &str, payload: Vec<u8>) -> Input {
    Input::Link(LinkEvent::Message {
        topic: topic.to_string(),
        payload: payload.into(),
        retain: false,
    })
}

fn published(actions: &[Action], kind: ClientTopic) -> Vec<&Outgoing> {
    let topic = topics::client(FLEET, kind, ME);
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(m) if m.topic == topic.as_str() => Some(m),
            _ => None,
        })
        .collect()
}

fn statuses(actions: &[Action]) -> Vec<(AgentState, String)> {
    published(actions, ClientTopic::Status)
        .into_iter()
        .map(|p| {
            let s: Status = from_vehicle(p, Kind::Status);
            (s.state, s.detail.to_string())
        })
        .collect()
}

fn update_chunks(actions: &[Action]) -> Vec<UpdateChunk> {
    published(actions, ClientTopic::Update)
        .into_iter()
        .map(|p| from_vehicle(p, Kind::UpdateChunk))
        .collect()
}

fn fetch_requests(actions: &[Action]) -> Vec<FetchRequest> {
    published(actions, ClientTopic::Fetch)
        .into_iter()
        .map(|p| from_vehicle(p, Kind::FetchRequest))
        .collect()
}

fn trains(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Train(_)))
}

#[test]
fn first_model_is_rebuilt_from_its_spec_and_trained() {
    let mut rig = rig();
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    assert!(fetch_requests(&actions).is_empty(), "nothing to download");
    assert!(trains(&actions));
    assert_eq!(rig.agent.round().name(), "training");
    assert_eq!(statuses(&actions).last().unwrap().0, AgentState::Training);
    assert_eq!(
        rig.state().model().unwrap().unwrap().params,
        initial,
        "the base model is stored before training"
    );
}

#[test]
fn announce_train_upload_ack_runs_the_whole_round() {
    let mut rig = rig();
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    let actions = rig.train(actions);
    let chunks = update_chunks(&actions);
    assert!(!chunks.is_empty());
    assert!(
        chunks
            .iter()
            .all(|c| c.round == 1 && c.client.as_str() == ME)
    );
    let pending = rig
        .state()
        .pending()
        .unwrap()
        .expect("persisted before sending");
    assert_eq!(pending.round, 1);
    assert_eq!(rig.agent.outbox().map(|o| o.round), Some(1));
    assert_eq!(rig.agent.round().name(), "idle");

    let actions = rig.handle(rig.ack(1, true));
    assert_eq!(rig.state().pending().unwrap(), None);
    assert_eq!(rig.state().last_acked_round().unwrap(), Some(1));
    assert_eq!(rig.agent.outbox(), None);
    assert_eq!(
        statuses(&actions),
        vec![(AgentState::Idle, "update counted".to_string())]
    );
}

#[test]
fn a_model_it_lacks_is_fetched_chunk_by_chunk_then_trained() {
    let mut rig = rig();
    let target = rig.trained_elsewhere();
    let target_id = rig.version_of(&target);
    let actions = rig.handle(rig.announce(1, &target, "fp32", &[]));
    assert_eq!(rig.agent.round().name(), "fetching");
    let requests = fetch_requests(&actions);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].version, target_id);
    assert!(!requests[0].chunks.is_empty());
    let bytes = target.canonical_bytes();
    let mut last = Vec::new();
    for (i, piece) in bytes.chunks(MODEL_CHUNK_SIZE).enumerate() {
        let part = ModelPart::Full { index: i as u32 };
        last = rig.handle(rig.chunk(target_id, part, piece.to_vec()));
    }
    assert!(trains(&last), "verified model is trained on");
    assert_eq!(rig.state().model().unwrap().unwrap().params, target);
}

#[test]
fn a_chunk_whose_hash_does_not_match_is_ignored() {
    let mut rig = rig();
    let target = rig.trained_elsewhere();
    let target_id = rig.version_of(&target);
    rig.handle(rig.announce(1, &target, "fp32", &[]));
    let mut forged = target.canonical_bytes();
    forged[0] ^= 0xff;
    let part = ModelPart::Full { index: 0 };
    let actions = rig.handle(rig.chunk(target_id, part, forged));
    assert!(!trains(&actions));
    assert_eq!(rig.agent.round().name(), "fetching");
    assert_eq!(rig.state().model().unwrap(), None, "nothing installed");
}

#[test]
fn a_delta_that_does_not_verify_falls_back_to_the_full_model() {
    let mut rig = rig();
    // The vehicle holds the initial model; round 2 needs another version,
    // so it offers its own as a delta base.
    let (_, held) = rig.holding_initial();
    let target = rig.trained_elsewhere();
    let actions = rig.handle(rig.announce(2, &target, "fp32", &[]));
    assert_eq!(fetch_requests(&actions)[0].have, Some(held));
    // A delta that decodes but does not give the announced version:
    let wrong = ParamSet::zeros(&rig.spec.layout());
    let actions = rig.handle(rig.delta_chain(rig.version_of(&target), held, &[&wrong]));
    let retry = fetch_requests(&actions);
    assert_eq!(retry.len(), 1, "asks again");
    assert_eq!(retry[0].have, None, "for the full model this time");
    assert!(!trains(&actions));
}

/// A delta chain as the server sends it: each step fp32-encoded.
fn chain(steps: &[&ParamSet]) -> Vec<u8> {
    let links: Vec<convoy_shared::messages::Delta> = steps
        .iter()
        .map(|d| convoy_shared::messages::Delta {
            codec: Pipeline::FP32,
            bytes: convoy_shared::codec::Pipeline::FP32.encode(d, 0),
        })
        .collect();
    postcard::to_allocvec(&links).unwrap()
}

#[test]
fn a_chain_of_deltas_from_an_older_version_is_applied_and_verified() {
    let mut rig = rig();
    let (initial, held) = rig.holding_initial();
    // two versions later: the server sends both published deltas at once
    let mut first = ParamSet::zeros(&rig.spec.layout());
    first.tensors[0].data[0] = 0.25;
    let mut second = ParamSet::zeros(&rig.spec.layout());
    second.tensors[0].data[1] = -0.5;
    let mut target = initial.clone();
    target.add_scaled(&first, 1.0).unwrap();
    target.add_scaled(&second, 1.0).unwrap();
    rig.handle(rig.announce(3, &target, "fp32", &[]));
    let actions = rig.handle(rig.delta_chain(rig.version_of(&target), held, &[&first, &second]));
    assert!(fetch_requests(&actions).is_empty(), "nothing more to fetch");
    assert!(
        trains(&actions),
        "the rebuilt model verified and is trained on"
    );
}

#[test]
fn a_restarted_agent_resends_its_stored_update_once() {
    let mut rig = rig();
    let initial = rig.initial();
    let announce = rig.announce(1, &initial, "fp32", &[]);
    let actions = rig.handle(announce);
    let sent = update_chunks(&rig.train(actions)).len();
    // power cut before the receipt: a new process over the same state dir
    let table = Table::read(csv().as_bytes()).unwrap();
    rig.agent = restart(&config(rig.dir.path()), &rig.clock, &table);
    let actions = rig.handle(Input::Link(LinkEvent::Connected));
    assert_eq!(update_chunks(&actions).len(), sent, "re-sent on connect");
    // the retained announcement of the same round comes right after
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    assert!(update_chunks(&actions).is_empty(), "not sent twice");
    assert!(!trains(&actions), "never retrained");
}

#[test]
fn a_missing_receipt_resends_after_the_ack_timeout() {
    let mut rig = rig();
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    let sent = update_chunks(&rig.train(actions)).len();
    rig.clock.advance(Duration::from_secs(4));
    assert!(
        update_chunks(&rig.handle(Input::Tick)).is_empty(),
        "still patient"
    );
    rig.clock.advance(Duration::from_secs(2));
    assert_eq!(update_chunks(&rig.handle(Input::Tick)).len(), sent);
}

#[test]
fn a_refused_update_is_dropped() {
    let mut rig = rig();
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    rig.train(actions);
    let actions = rig.handle(rig.ack(1, false));
    assert_eq!(rig.state().pending().unwrap(), None);
    assert_eq!(rig.state().last_acked_round().unwrap(), None);
    assert_eq!(statuses(&actions)[0].1, "update refused");
    assert!(update_chunks(&rig.handle(Input::Tick)).is_empty());
}

#[test]
fn the_residual_of_a_lossy_codec_is_kept_once_acknowledged() {
    let mut rig = rig();
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "topk:0.1", &[]));
    rig.train(actions);
    assert_eq!(
        rig.state().residual().unwrap(),
        None,
        "not before the receipt"
    );
    rig.handle(rig.ack(1, true));
    let residual = rig.state().residual().unwrap().expect("residual stored");
    assert!(residual.l2_norm() > 0.0);
    assert!(residual.check_layout(&rig.spec.layout()).is_ok());
}

#[test]
fn a_vehicle_not_selected_sits_the_round_out() {
    let mut rig = rig();
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &["car-2"]));
    assert!(!trains(&actions));
    assert_eq!(
        statuses(&actions),
        vec![(AgentState::Idle, "not selected this round".to_string())]
    );
}

#[test]
fn a_round_past_its_deadline_is_skipped_and_an_unknown_codec_refused() {
    let mut rig = rig();
    let initial = rig.initial();
    let announce = rig.announce(1, &initial, "fp32", &[]);
    rig.clock.advance(Duration::from_secs(120));
    let actions = rig.handle(announce);
    assert!(!trains(&actions));
    assert_eq!(statuses(&actions)[0].0, AgentState::Skipped);
    // A codec this build does not know (a newer server's, signed and all)
    // does not decode: the announcement is refused at the gate, counted,
    // and nothing is trained or sent.
    let mut announce = rig.announcement(2, &initial, "fp32", &[]);
    announce.downlink_codec = "q8".parse().unwrap();
    let mut body = postcard::to_allocvec(&announce).unwrap();
    // postcard writes the fields in order: the update codec's spec follows
    // round, manifest, spec and task
    let at = postcard::to_allocvec(&(
        announce.round,
        &announce.manifest,
        &announce.spec,
        &announce.task,
    ))
    .unwrap()
    .len();
    assert_eq!(&body[at..at + 5], b"\x04fp32", "the update codec's spec");
    body[at + 1..at + 5].copy_from_slice(b"gzip");
    let topic = topics::round(FLEET);
    let payload = wire::seal(Kind::Announce, &body, topic.as_str(), &server_key());
    let refused_before = rig.agent.rejections().total();
    let actions = rig.handle(message(topic.as_str(), payload));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(rig.agent.rejections().total(), refused_before + 1);
}

#[test]
fn the_policy_holds_a_round_until_the_condition_holds() {
    let mut rig = rig_with(|c| {
        c.policy.condition_file = Some("parked".into());
    });
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    assert!(!trains(&actions));
    assert_eq!(rig.agent.round().name(), "waiting");
    assert_eq!(statuses(&actions)[0].1, "waiting for the training policy");
    assert!(!trains(&rig.handle(Input::Condition(false))));
    let actions = rig.handle(Input::Condition(true));
    assert!(trains(&actions), "starts once allowed");
    assert_eq!(rig.agent.round().name(), "training");
}

#[test]
fn a_paused_run_resumes_from_its_checkpoint() {
    let mut rig = rig_with(|c| {
        c.policy.condition_file = Some("parked".into());
    });
    rig.handle(Input::Condition(true));
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    // the condition ends before the job's first batch: it pauses at once
    rig.handle(Input::Condition(false));
    let actions = rig.train(actions);
    assert_eq!(rig.agent.round().name(), "waiting");
    assert_eq!(statuses(&actions)[0].1, "paused by the training policy");
    let checkpoint = rig
        .state()
        .checkpoint()
        .unwrap()
        .expect("checkpoint stored");
    assert_eq!(checkpoint.round, 1);
    let actions = rig.handle(Input::Condition(true));
    let actions = rig.train(actions);
    assert_eq!(
        update_chunks(&actions)[0].round,
        1,
        "finished after resuming"
    );
    assert_eq!(rig.state().checkpoint().unwrap(), None);
}

#[test]
fn a_waiting_round_is_skipped_when_its_deadline_passes() {
    let mut rig = rig_with(|c| {
        c.policy.condition_file = Some("parked".into());
    });
    let initial = rig.initial();
    rig.handle(rig.announce(1, &initial, "fp32", &[]));
    rig.clock.advance(Duration::from_secs(61));
    let actions = rig.handle(Input::Tick);
    assert_eq!(rig.agent.round().name(), "idle");
    assert_eq!(
        statuses(&actions)[0].1,
        "deadline passed while training was not allowed"
    );
}

#[test]
fn a_newer_round_abandons_training_and_the_old_result_is_ignored() {
    let mut rig = rig();
    let initial = rig.initial();
    let first = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    let second = rig.handle(rig.announce(2, &initial, "fp32", &[]));
    assert_eq!(rig.agent.round().number(), Some(2));
    // round 1's job finishes late (its cancel flag was set; run it anyway)
    let stale = rig.train(first);
    assert!(update_chunks(&stale).is_empty());
    assert_eq!(rig.state().pending().unwrap(), None);
    let actions = rig.train(second);
    assert_eq!(update_chunks(&actions)[0].round, 2);
}

#[test]
fn a_stalled_fetch_asks_again_after_the_timeout() {
    let mut rig = rig();
    let target = rig.trained_elsewhere();
    rig.handle(rig.announce(1, &target, "fp32", &[]));
    assert!(fetch_requests(&rig.handle(Input::Tick)).is_empty());
    rig.clock.advance(Duration::from_secs(6));
    assert_eq!(fetch_requests(&rig.handle(Input::Tick)).len(), 1);
}

#[test]
fn garbage_on_its_topics_changes_nothing() {
    let mut rig = rig();
    for topic in [
        topics::round(FLEET),
        topics::client(FLEET, ClientTopic::Model, ME),
        topics::client(FLEET, ClientTopic::Ack, ME),
    ] {
        let actions = rig.handle(message(topic.as_str(), vec![0xde, 0xad, 0xbe, 0xef]));
        assert!(actions.is_empty());
    }
    assert_eq!(rig.agent.round().name(), "idle");
}

#[test]
fn a_data_error_skips_the_round_with_its_reason() {
    let mut rig = rig_with(|c| c.data.label = "missing".into());
    // the agent was given its table already; the next round reads the file
    rig.agent.data = LocalData::Released { rows: 40 };
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    let actions = rig.train(actions);
    let (state, detail) = statuses(&actions).remove(0);
    assert_eq!(state, AgentState::Skipped);
    assert!(detail.contains("missing"), "{detail}");
}

#[test]
fn an_announced_model_out_of_bounds_is_refused_before_anything_is_allocated() {
    let mut rig = rig();
    let initial = rig.initial();
    // a forged announcement: a hidden layer of 4,294,967,295 units
    let mut forged = match rig.announce(1, &initial, "fp32", &[]) {
        Input::Link(LinkEvent::Message { topic, payload, .. }) => {
            let key = server_key().public();
            wire::decode::<Announce>(&payload, Kind::Announce, 1 << 20, &topic, &key, "s").unwrap()
        }
        _ => unreachable!(),
    };
    forged.spec.hidden = vec![u32::MAX];
    // signed by the server's key: bounds hold even against a server's mistake
    let input = from_server(Kind::Announce, topics::round(FLEET).as_str(), &forged);
    let actions = rig.handle(input);
    assert!(!trains(&actions) && fetch_requests(&actions).is_empty());
    let (state, detail) = statuses(&actions).remove(0);
    assert_eq!(state, AgentState::Skipped);
    assert!(detail.contains("max_layer_width"), "{detail}");
    assert_eq!(rig.state().model().unwrap(), None);
    // the real round that follows is trained as usual
    assert!(trains(&rig.handle(rig.announce(1, &initial, "fp32", &[]))));
}

#[test]
fn an_update_for_a_forged_round_is_dropped_on_its_refusal_and_real_rounds_go_on() {
    let mut rig = rig();
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1_000_000_000, &initial, "fp32", &[]));
    rig.train(actions);
    assert_eq!(rig.state().pending().unwrap().unwrap().round, 1_000_000_000);
    rig.handle(rig.ack(1_000_000_000, false));
    assert_eq!(rig.state().pending().unwrap(), None, "not re-sent forever");
    rig.clock.advance(Duration::from_secs(30));
    assert!(update_chunks(&rig.handle(Input::Tick)).is_empty());
    assert!(trains(&rig.handle(rig.announce(3, &initial, "fp32", &[]))));
}

#[test]
fn an_idle_agent_repeats_its_status_as_a_heartbeat_with_a_growing_sequence() {
    let mut rig = rig();
    let first = rig.handle(Input::Link(LinkEvent::Connected));
    assert_eq!(statuses(&first).len(), 1);
    rig.clock.advance(Duration::from_secs(10));
    assert!(statuses(&rig.handle(Input::Tick)).is_empty());
    rig.clock.advance(HEARTBEAT);
    let beat = rig.handle(Input::Tick);
    assert_eq!(statuses(&beat), statuses(&first), "the same status again");
    let seq = |actions: &[Action]| -> u64 {
        let s: Status = from_vehicle(published(actions, ClientTopic::Status)[0], Kind::Status);
        s.seq
    };
    assert!(seq(&beat) > seq(&first), "never mistaken for a replay");
}

#[test]
fn unsigned_or_foreign_announcements_and_receipts_are_ignored_without_a_reply() {
    let mut rig = rig();
    let initial = rig.initial();
    let announce = rig.announcement(1, &initial, "fp32", &[]);
    let topic = topics::round(FLEET);
    let mallory = SecretKey::from_seed([66; 32]);
    let forged = wire::encode(Kind::Announce, &announce, &topic, &mallory).unwrap();
    assert!(rig.handle(message(topic.as_str(), forged)).is_empty());
    let body = postcard::to_allocvec(&announce).unwrap();
    let unsigned = wire::encode_raw(Kind::Announce, &body);
    assert!(rig.handle(message(topic.as_str(), unsigned)).is_empty());
    // the genuine one is trained; a forged "accepted" receipt does not drop it
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    rig.train(actions);
    let ack = UpdateAck {
        round: 1,
        accepted: true,
        reason: String::new(),
    };
    let ack_topic = topics::client(FLEET, ClientTopic::Ack, ME);
    let forged_ack = wire::encode(Kind::UpdateAck, &ack, &ack_topic, &mallory).unwrap();
    rig.handle(message(ack_topic.as_str(), forged_ack));
    assert!(
        rig.state().pending().unwrap().is_some(),
        "still awaiting the real receipt"
    );
    rig.handle(rig.ack(1, true));
    assert!(rig.state().pending().unwrap().is_none());
}

#[test]
fn an_unwritable_state_dir_costs_the_round_not_the_agent() {
    let mut rig = rig();
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    // the state folder vanishes under the agent (a file where it was: no
    // write succeeds there, whoever the agent runs as)
    let state = rig.dir.path().join("state");
    let aside = rig.dir.path().join("state.aside");
    std::fs::rename(&state, &aside).unwrap();
    std::fs::write(&state, b"not a folder").unwrap();
    let actions = rig.train(actions);
    let failures: Vec<messages::FailureReport> = published(&actions, ClientTopic::Failure)
        .into_iter()
        .map(|m| from_vehicle(m, Kind::Failure))
        .collect();
    assert_eq!(failures.len(), 1, "{actions:?}");
    assert_eq!(
        (failures[0].round, failures[0].reason.as_str()),
        (1, "state_dir")
    );
    assert_eq!(rig.agent.round().name(), "idle");
    // (that a failed write leaves no temp file is runtime's fs test)
    // writable again: the next round trains and its update is stored
    std::fs::remove_file(&state).unwrap();
    std::fs::rename(&aside, &state).unwrap();
    let actions = rig.handle(rig.announce(2, &initial, "fp32", &[]));
    rig.train(actions);
    assert_eq!(rig.state().pending().unwrap().unwrap().round, 2);
}

#[test]
fn held_out_rows_score_the_base_model_and_are_not_trained_on() {
    for (holdout, scored) in [(0.25, true), (0.0, false)] {
        let mut rig = rig_with(|c| c.data.holdout = holdout);
        let initial = rig.initial();
        let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
        rig.train(actions);
        let pending = rig.state().pending().unwrap().expect("trained");
        let body: convoy_shared::messages::UpdateBody =
            postcard::from_bytes(&pending.body).unwrap();
        match body.stats.holdout {
            Some(h) if scored => {
                assert!(h.samples > 0 && h.accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)));
                assert_eq!(body.samples + h.samples, 40, "every row is used once");
                // the base model is scored: what the rebuilt initial model gets
                let spec = &rig.spec;
                let table = Table::read(csv().as_bytes()).unwrap();
                let all = convoy_shared::dataset::Dataset::from_table(&table, spec).unwrap();
                let (_, held) = all.split_holdout(holdout, super::train::training_seed(ME, 0));
                let expected = convoy_shared::eval::evaluate(
                    spec,
                    &initial,
                    &held.unwrap(),
                    &burn::prelude::Device::flex(),
                )
                .unwrap();
                assert_eq!(Some(h), Some(expected));
            }
            None if !scored => assert_eq!(body.samples, 40),
            other => panic!("holdout {holdout}: {other:?}"),
        }
    }
}

#[test]
fn a_personalised_head_is_tuned_kept_and_scored_beside_the_global_model() {
    let mut rig = rig_with(|c| {
        c.data.holdout = 0.25;
        c.training.personal_steps = 30;
    });
    let initial = rig.initial();
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    rig.train(actions);
    let pending = rig.state().pending().unwrap().expect("trained");
    let body: convoy_shared::messages::UpdateBody = postcard::from_bytes(&pending.body).unwrap();
    let (global, personal) = (body.stats.holdout.unwrap(), body.stats.personal.unwrap());
    assert_eq!(global.samples, personal.samples, "the same held-out rows");
    let kept = rig
        .state()
        .personal()
        .unwrap()
        .expect("kept in the state directory");
    assert_eq!(kept.base_version, pending.base_version);
    // only the head moved: the trunk is the fleet's
    let (trunk, head) = kept.params.tensors.split_at(2);
    assert_eq!(trunk, &initial.tensors[..2]);
    assert_ne!(head, &initial.tensors[2..]);
}

#[test]
fn a_healthy_round_is_at_most_one_info_line() {
    let mut rig = rig();
    let initial = rig.initial();
    // the first round rebuilds the first model; a later one is routine
    let actions = rig.handle(rig.announce(1, &initial, "fp32", &[]));
    rig.train(actions);
    rig.handle(rig.ack(1, true));
    let text = convoy_runtime::process::logged_at_info(|| {
        let actions = rig.handle(rig.announce(2, &initial, "fp32", &[]));
        rig.train(actions);
        rig.handle(rig.ack(2, true));
    });
    let info: Vec<&str> = text.lines().filter(|l| l.contains(" INFO ")).collect();
    assert!(info.len() <= 1, "{text}");
    assert!(text.contains("update acknowledged"), "{text}");
}

#[path = "tests_scaffold.rs"]
mod scaffold;

#[path = "tests_async.rs"]
mod asynchronous;
