//! The simulator on a simulated clock: the availability and device model.
//!
//! The real coordinator and the real agents' state machines (the code the
//! server and every vehicle run, without their I/O loops) are driven by an
//! event queue on one manual clock. Messages go between them by topic, as
//! the broker would pass them, at once; a vehicle that is offline neither
//! sends nor receives, and its last will tells the server when it leaves.
//! Training really runs (the same trainer, the same updates), but takes
//! simulated time: the steps it took × `--step-secs` × the vehicle's speed
//! factor. So deadlines, stragglers, vehicles that are online only part of
//! the time and asynchronous rounds can be studied over simulated hours in
//! seconds. Transfer time is not modelled (bytes are reported as such).

use super::devices::{DeviceModel, read_trace};
use anyhow::Context;
use convoy_agent::round::{Action, Agent, Input as AgentInput, TrainingDone};
use convoy_agent::state::StateDir;
use convoy_agent::{Keys, LocalData};
use convoy_runtime::clock::{ManualClock, SharedClock};
use convoy_runtime::link::LinkEvent;
use convoy_server::config::ServerConfig;
use convoy_server::coordinator::{Coordinator, Input, Output};
use convoy_shared::dataset::Dataset;
use convoy_shared::spec::ModelSpec;
use convoy_store::RoundRow;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// The closed rounds of `simulate`'s fleet on the simulated clock, and the
/// simulated seconds each closed at.
pub(super) fn rows(
    options: &super::SimOptions,
    server: ServerConfig,
    prepared: Option<convoy_server::Prepared>,
    agents: Vec<(convoy_agent::config::AgentConfig, Option<LocalData>)>,
    stop: &tokio_util::sync::CancellationToken,
    on_round: impl FnMut(&RoundRow),
) -> anyhow::Result<(Vec<RoundRow>, Vec<f64>)> {
    let prepared = prepared.and_then(|p| match (p.spec, p.test) {
        (Some(spec), convoy_server::run::TestSet::Ready(test)) => Some((spec, test)),
        _ => None,
    });
    let agents: Option<Vec<_>> = agents
        .into_iter()
        .map(|(config, data)| data.map(|d| (config, d)))
        .collect();
    let (Some(prepared), Some(agents)) = (prepared, agents) else {
        anyhow::bail!(
            "the availability and device model runs on --dataset or --partition-file splits, not on --data-dir fleets"
        );
    };
    let run = run(
        server,
        prepared,
        agents,
        &options.devices,
        options.seed,
        stop,
        on_round,
    )?;
    Ok(run.into_iter().unzip())
}

/// One vehicle of the clocked fleet.
struct Vehicle {
    agent: Agent,
    /// Topic filters it holds.
    filters: Vec<String>,
    online: bool,
    /// Its training takes this many times the fastest vehicle's time.
    slowness: f64,
    /// Online intervals from a trace, simulated seconds (none: the slots).
    trace: Option<Vec<(f64, f64)>>,
}

/// What happens at a simulated time.
enum Event {
    /// The server and every agent tick.
    Tick,
    /// A new availability slot starts.
    Slot(u64),
    /// A traced vehicle comes online or leaves.
    Trace(usize, bool),
    /// A vehicle's training finishes.
    Trained(usize, Box<TrainingDone>),
}

/// A message on its way.
enum Delivery {
    ToServer(Input),
    ToAgent(usize, AgentInput),
}

/// The fleet on its clock.
struct World {
    clock: Arc<ManualClock>,
    start_ms: u64,
    server: Coordinator,
    vehicles: Vec<Vehicle>,
    /// Retained messages by topic (the round's announcement).
    retained: BTreeMap<String, Vec<u8>>,
    events: BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    pending: HashMap<u64, Event>,
    seq: u64,
    queue: VecDeque<Delivery>,
    rounds: Vec<(RoundRow, f64)>,
    step_secs: f64,
}

/// Runs `server` and `agents` on the simulated clock until the server has
/// run its rounds (or `model.max_hours` passed); each closed round comes
/// back with the simulated seconds it closed at.
pub fn run(
    server: ServerConfig,
    (spec, test): (ModelSpec, Arc<Dataset>),
    agents: Vec<(convoy_agent::config::AgentConfig, LocalData)>,
    model: &DeviceModel,
    seed: u64,
    stop: &tokio_util::sync::CancellationToken,
    mut on_round: impl FnMut(&RoundRow),
) -> anyhow::Result<Vec<(RoundRow, f64)>> {
    model.validate()?;
    let (mut configs, data): (Vec<_>, Vec<_>) = agents.into_iter().unzip();
    crate::fleet::provision(&server, &mut configs)?;
    let start_ms = convoy_runtime::clock::now_ms();
    let clock = ManualClock::new(start_ms);
    let shared: SharedClock = clock.clone();
    let mut store = convoy_store::Store::open(&server.db)?;
    store.set_policy(server.store.clone());
    let key = convoy_server::identity::server_key(&server.key_file())?;
    let provenance = convoy_shared::version::Provenance {
        parent: None,
        strategy: server.aggregation.rule.strategy(server.rounds.server_lr),
        codec: server.rounds.codec,
        downlink_codec: server.rounds.downlink_codec,
    };
    let current = convoy_server::run::initial_version(
        &store,
        spec.clone(),
        &server.training,
        &provenance,
        Some(&test),
    )?;
    let coordinator = Coordinator::new(
        server,
        key,
        store,
        shared.clone(),
        spec,
        Some(test),
        current,
    )?;
    let traces = match &model.online_trace {
        Some(path) => read_trace(path, &configs)?,
        None => HashMap::new(),
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0def_ace5);
    let mut vehicles = Vec::new();
    for (i, (config, data)) in configs.into_iter().zip(data).enumerate() {
        let keys = Keys::load(&config.identity)?;
        let state = StateDir::open(&config.state_dir)?;
        let agent = Agent::new(config, keys, state, data, shared.clone());
        let filters = agent.subscriptions();
        let slowness = model.speed_spread.powf(rng.random::<f64>());
        vehicles.push(Vehicle {
            agent,
            filters,
            online: false,
            slowness,
            trace: traces.get(&i).cloned(),
        });
    }
    let mut world = World {
        clock,
        start_ms,
        server: coordinator,
        vehicles,
        retained: BTreeMap::new(),
        events: BinaryHeap::new(),
        pending: HashMap::new(),
        seq: 0,
        queue: VecDeque::new(),
        rounds: Vec::new(),
        step_secs: model.step_secs,
    };
    world.server(Input::Link(LinkEvent::Connected))?;
    world.at(0.0, Event::Slot(0));
    world.at(0.0, Event::Tick);
    let traced: Vec<_> = world.vehicles.iter().map(|v| v.trace.clone()).collect();
    for (i, trace) in traced.into_iter().enumerate() {
        for (from, to) in trace.unwrap_or_default() {
            world.at(from, Event::Trace(i, true));
            world.at(to, Event::Trace(i, false));
        }
    }
    let limit = model.max_hours * 3600.0;
    let mut seen = 0;
    while let Some(std::cmp::Reverse((at, seq))) = world.events.pop() {
        let Some(event) = world.pending.remove(&seq) else {
            continue;
        };
        let now = world.now();
        if at > now {
            world.clock.advance(Duration::from_millis(at - now));
        }
        match event {
            Event::Tick => {
                world.server(Input::Tick)?;
                for i in 0..world.vehicles.len() {
                    world.agent(i, AgentInput::Tick)?;
                }
                world.after(1.0, Event::Tick);
            }
            Event::Slot(k) => {
                for i in 0..world.vehicles.len() {
                    if world.vehicles[i].trace.is_some() {
                        continue;
                    }
                    let p = model.online.unwrap_or(1.0);
                    let mut draw = StdRng::seed_from_u64(seed ^ ((i as u64) << 32) ^ k);
                    world.set_online(i, draw.random::<f64>() < p)?;
                }
                world.after(model.slot_secs, Event::Slot(k + 1));
            }
            Event::Trace(i, online) => world.set_online(i, online)?,
            Event::Trained(i, done) => world.agent(i, AgentInput::Trained(done))?,
        }
        while world.rounds.len() > seen {
            on_round(&world.rounds[seen].0);
            seen += 1;
        }
        if world.server.done() || stop.is_cancelled() {
            break;
        }
        if world.seconds() > limit {
            eprintln!(
                "warning: stopped after {} simulated hours with {} rounds run",
                model.max_hours,
                world.rounds.len()
            );
            break;
        }
    }
    Ok(world.rounds)
}

impl World {
    fn now(&self) -> u64 {
        use convoy_runtime::clock::Clock;
        self.clock.now_ms() - self.start_ms
    }

    fn seconds(&self) -> f64 {
        self.now() as f64 / 1000.0
    }

    /// Schedules `event` at `secs` simulated seconds from the start.
    fn at(&mut self, secs: f64, event: Event) {
        self.seq += 1;
        let ms = (secs * 1000.0).round().max(0.0) as u64;
        self.events.push(std::cmp::Reverse((ms, self.seq)));
        self.pending.insert(self.seq, event);
    }

    fn after(&mut self, secs: f64, event: Event) {
        let now = self.seconds();
        self.at(now + secs, event);
    }

    fn set_online(&mut self, i: usize, online: bool) -> anyhow::Result<()> {
        if self.vehicles[i].online == online {
            return Ok(());
        }
        self.vehicles[i].online = online;
        if online {
            self.queue
                .push_back(Delivery::ToAgent(i, AgentInput::Link(LinkEvent::Connected)));
            let retained: Vec<(String, Vec<u8>)> = self
                .retained
                .iter()
                .filter(|(topic, _)| subscribed(&self.vehicles[i].filters, topic))
                .map(|(t, p)| (t.clone(), p.clone()))
                .collect();
            for (topic, payload) in retained {
                let input = AgentInput::Link(link(topic, payload, true));
                self.queue.push_back(Delivery::ToAgent(i, input));
            }
        } else if let Some(will) = self.vehicles[i].agent.offline_status() {
            let input = Input::Link(link(will.topic, will.payload, true));
            self.queue.push_back(Delivery::ToServer(input));
        }
        self.drain()
    }

    fn server(&mut self, input: Input) -> anyhow::Result<()> {
        self.queue.push_back(Delivery::ToServer(input));
        self.drain()
    }

    fn agent(&mut self, i: usize, input: AgentInput) -> anyhow::Result<()> {
        self.queue.push_back(Delivery::ToAgent(i, input));
        self.drain()
    }

    /// Passes every message on its way until none is left.
    fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(delivery) = self.queue.pop_front() {
            match delivery {
                Delivery::ToServer(input) => {
                    let outputs = self.server.handle(input)?;
                    self.route_server(outputs);
                }
                Delivery::ToAgent(i, input) => {
                    let actions = self.vehicles[i]
                        .agent
                        .handle(input)
                        .with_context(|| format!("vehicle {i}"))?;
                    self.route_agent(i, actions);
                }
            }
        }
        Ok(())
    }

    fn route_server(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Publish(m) => {
                    if m.retain {
                        self.retained.insert(m.topic.clone(), m.payload.clone());
                    }
                    for (i, v) in self.vehicles.iter().enumerate() {
                        if v.online && subscribed(&v.filters, &m.topic) {
                            let event = link(m.topic.clone(), m.payload.clone(), m.retain);
                            self.queue
                                .push_back(Delivery::ToAgent(i, AgentInput::Link(event)));
                        }
                    }
                }
                Output::Evaluate(request) => {
                    let result = request.run();
                    self.queue
                        .push_back(Delivery::ToServer(Input::Evaluated(result)));
                }
                Output::RoundClosed(row) => {
                    let at = self.seconds();
                    self.rounds.push((*row, at));
                }
            }
        }
    }

    fn route_agent(&mut self, i: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Publish(m) if self.vehicles[i].online => {
                    let input = Input::Link(link(m.topic, m.payload, m.retain));
                    self.queue.push_back(Delivery::ToServer(input));
                }
                Action::Publish(_) | Action::Delay(_) => {}
                Action::Train(order) => {
                    // trained now; done when the vehicle would be
                    let done = order.run();
                    let steps = done.measured.map_or(0, |m| m.steps);
                    let secs = steps as f64 * self.step_secs * self.vehicles[i].slowness;
                    self.after(secs, Event::Trained(i, Box::new(done)));
                }
            }
        }
    }
}

/// A message as the link hands it over.
fn link(topic: String, payload: Vec<u8>, retain: bool) -> LinkEvent {
    LinkEvent::Message {
        topic,
        payload: payload.into(),
        retain,
    }
}

/// Whether an MQTT topic filter list takes `topic` (`+` one level, `#`
/// the rest).
fn subscribed(filters: &[String], topic: &str) -> bool {
    filters.iter().any(|f| matches_filter(f, topic))
}

fn matches_filter(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (p, Some(l)) if p == l => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_as_mqtt_does() {
        assert!(matches_filter("convoy/f/round", "convoy/f/round"));
        assert!(matches_filter("convoy/f/+/car-1", "convoy/f/ack/car-1"));
        assert!(matches_filter("convoy/f/#", "convoy/f/ack/car-1"));
        assert!(!matches_filter("convoy/f/+/car-1", "convoy/f/ack/car-2"));
        assert!(!matches_filter("convoy/f/round", "convoy/f/round/x"));
        assert!(!matches_filter("convoy/f/round/x", "convoy/f/round"));
    }
}
