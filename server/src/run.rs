//! The server's I/O loop: feeds link events and ticks into the
//! [`Coordinator`] state machine and carries out what it returns (publish,
//! evaluate off the async runtime, report closed rounds).

use crate::align::Aligner;
use crate::broker::{self, Access, Credentials};
use crate::config::ServerConfig;
use crate::coordinator::{Coordinator, Input, Output};
use crate::error::ServerError;
use crate::http::{Live, Phase, Settings};
use crate::identity;
use crate::rejection::RejectionCounts;
use convoy_runtime::clock::{SharedClock, SystemClock};
use convoy_runtime::link::{self, LinkClient, Session};
use convoy_runtime::process::Systemd;
use convoy_shared::dataset::{Dataset, Table};
use convoy_shared::spec::ModelSpec;
use convoy_shared::version::{self, Provenance};
use convoy_store::{RoundRow, Store, StoredVersion};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a finished run leaves behind.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Rejected messages by reason.
    pub rejections: RejectionCounts,
    /// Version id (hex) of the last model.
    pub final_version: String,
    /// Rounds that published a model.
    pub rounds_finished: u64,
    /// Rounds that failed (too few updates).
    pub rounds_failed: u64,
}

fn read_table(path: &Path) -> Result<Table, ServerError> {
    let err = |message: String| ServerError::Data {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    Table::read(std::io::BufReader::new(file)).map_err(|e| err(e.to_string()))
}

/// The model spec a config describes, when it names a `schema_csv`
/// override; `None` when the fleet aligns it.
pub fn spec_from_config(config: &ServerConfig) -> Result<Option<ModelSpec>, ServerError> {
    let m = &config.model;
    let (Some(path), Some(label)) = (&m.schema_csv, &m.label) else {
        return Ok(None);
    };
    let table = read_table(path)?;
    let spec = table
        .derive_spec(label, m.task, m.hidden.clone(), m.init_seed)
        .map_err(|e| ServerError::Data {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    spec.validate()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    Ok(Some(spec))
}

/// Runs the server until `shutdown` or until `rounds.total` rounds have run.
pub async fn run(
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<RunSummary, ServerError> {
    run_observed(config, shutdown, None).await
}

/// [`run`], also sending each closed round's row to `observer` (the demo
/// prints them as they come).
pub async fn run_observed(
    config: ServerConfig,
    shutdown: CancellationToken,
    observer: Option<mpsc::UnboundedSender<RoundRow>>,
) -> Result<RunSummary, ServerError> {
    let prepared = prepare(&config)?;
    let hooks = Hooks {
        rounds: observer,
        ..Default::default()
    };
    run_prepared(config, prepared, shutdown, hooks).await
}

/// The spec and test set a config names (its `schema_csv` and `test_csv`).
pub fn prepare(config: &ServerConfig) -> Result<Prepared, ServerError> {
    config.validate()?;
    let spec = spec_from_config(config)?;
    let test = match &config.eval.test_csv {
        Some(path) => TestSet::Table(Box::new(read_table(path)?), path.display().to_string()),
        None => TestSet::None,
    };
    Ok(Prepared { spec, test })
}

/// What a caller may watch a run through.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Each closed round's row, as it closes (the demo prints them).
    pub rounds: Option<mpsc::UnboundedSender<RoundRow>>,
    /// The live state for an HTTP server the caller runs itself (one that
    /// outlives the run); with `None`, the run serves `[http]` itself
    /// while it runs.
    pub live: Option<Live>,
    /// Where the run's own `[http]` listens once it is bound: the port the
    /// system chose when `listen` asked for port 0.
    pub http_bound: Option<mpsc::UnboundedSender<std::net::SocketAddr>>,
}

/// The server's own evaluation set.
#[derive(Debug, Clone)]
pub enum TestSet {
    /// None: rounds close without a server-side metric.
    None,
    /// Rows already encoded for the spec.
    Ready(Arc<Dataset>),
    /// A CSV table (and its path, for messages), encoded once the spec is known.
    Table(Box<Table>, String),
}

impl TestSet {
    fn build(self, spec: &ModelSpec) -> Result<Option<Arc<Dataset>>, ServerError> {
        match self {
            TestSet::None => Ok(None),
            TestSet::Ready(data) => Ok(Some(data)),
            TestSet::Table(table, path) => Dataset::from_table(&table, spec)
                .map(|d| Some(Arc::new(d)))
                .map_err(|e| ServerError::Data {
                    path,
                    message: e.to_string(),
                }),
        }
    }
}

/// What the caller may supply instead of the config's CSVs (the fleet
/// simulator's image data).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Model spec; `None`: the fleet aligns one (schema and statistics rounds).
    pub spec: Option<ModelSpec>,
    /// Evaluation set.
    pub test: TestSet,
}

/// [`run_observed`] with the spec and test set supplied; `config.model`
/// (but its hidden widths and seed) and `config.eval` are not read.
pub async fn run_prepared(
    config: ServerConfig,
    prepared: Prepared,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> Result<RunSummary, ServerError> {
    config.validate()?;
    let (live, http) = match hooks.live {
        Some(live) => (live, None),
        None if !config.http.listen.is_empty() => {
            let live = Live::default();
            let server =
                crate::http::serve(&config.http.listen, Settings::of(&config), live.clone())
                    .await?;
            if let Some(bound) = &hooks.http_bound {
                let _ = bound.send(server.addr);
            }
            (live, Some(server))
        }
        None => (Live::default(), None),
    };
    let result = run_serving(config, prepared, shutdown, hooks.rounds, &live).await;
    live.set_phase(Phase::Stopped);
    if let Some(server) = http {
        server.stop().await;
    }
    result
}

async fn run_serving(
    config: ServerConfig,
    prepared: Prepared,
    shutdown: CancellationToken,
    observer: Option<mpsc::UnboundedSender<RoundRow>>,
    live: &Live,
) -> Result<RunSummary, ServerError> {
    let Prepared { spec, test } = prepared;
    let mut store = Store::open(&config.db)?;
    store.set_policy(config.store.clone());
    let task = config.training.clone();
    let stored = match store.current_version()? {
        Some(hex) => {
            let v = store.load_version(&hex)?;
            if spec.as_ref().is_some_and(|s| *s != v.spec) || v.task != task {
                return Err(ServerError::SpecMismatch {
                    db: config.db.display().to_string(),
                });
            }
            tracing::info!(version = %&hex[..12], round = v.round, "resuming from stored model");
            Some(v)
        }
        None => None,
    };
    let key = identity::server_key(&config.key_file())?;
    tracing::info!(public_key = %key.public(), "server identity");
    let mut broker = config.client_broker();
    if config.embedded_broker() {
        let access = if config.broker.allow_anonymous {
            tracing::warn!(
                "broker.allow_anonymous = true: the embedded broker accepts anyone; anybody on the network can read every update and model (signatures still decide what counts)"
            );
            Access::Anonymous
        } else {
            // A fresh password each run: the server's id is its alone.
            let password = identity::new_password();
            broker.username = Some(config.broker.client_id.clone());
            broker.password = Some(password.clone());
            Access::Credentials(Credentials {
                db: config.db.clone(),
                fleet: config.fleet.to_string(),
                status_readers: config.broker.status_readers.clone(),
                server_id: config.broker.client_id.clone(),
                server_password: password,
            })
        };
        let listen = config.broker_listen();
        let max = config.broker.link.max_packet_size;
        let started = tokio::task::spawn_blocking(move || broker::start(&listen, max, access))
            .await
            .map_err(|e| ServerError::Config(e.to_string()))??;
        if let Some(addr) = started.plain
            && !addr.ip().is_loopback()
        {
            tracing::warn!(%addr, "broker.allow_plaintext = true: the embedded broker accepts plain TCP from other machines; anyone on the path can read every update and model (signatures still decide what counts)");
        }
        // the server's own link, on the ports as bound (for port 0)
        if let Some(url) = started.url() {
            broker.url = Some(url);
        }
    }

    let clock: SharedClock = Arc::new(SystemClock);
    tracing::info!(fleet = %config.fleet, broker = %broker.url_or_local(), db = %config.db.display(), "server running");
    let mut subscriptions = Coordinator::subscriptions_for(&config.fleet);
    subscriptions.extend(Aligner::subscriptions(&config.fleet));
    let session = Session {
        client_id: config.broker.client_id.clone(),
        subscriptions,
        will: None,
    };
    let mut link = link::open(&broker, session)?;
    live.set_broker(link.connection());
    let mut systemd = Systemd::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut align_rejections = RejectionCounts::new();
    let mut seen_statuses = Vec::new();
    let (store, stored, spec) = match (stored, spec) {
        (Some(v), _) => {
            let spec = v.spec.clone();
            (store, Some(v), spec)
        }
        (None, Some(spec)) => (store, None, spec),
        (None, None) => {
            systemd.ready("aligning the fleet's schema");
            live.set_phase(Phase::Aligning);
            let aligner = Aligner::new(config.clone(), key.clone(), store, clock.clone())?;
            let aligned =
                match align_fleet(aligner, &mut link, &mut tick, &mut systemd, &shutdown).await {
                    Ok(aligned) => aligned,
                    Err(e) => {
                        link.close().await;
                        return Err(e);
                    }
                };
            let Some(aligned) = aligned else {
                link.close().await;
                return Ok(RunSummary::default());
            };
            align_rejections = aligned.rejections;
            seen_statuses = aligned.statuses;
            (aligned.store, None, aligned.spec)
        }
    };
    let test = test.build(&spec)?;
    let current = match stored {
        Some(v) => v,
        None => {
            let provenance = Provenance {
                parent: None,
                strategy: config.aggregation.rule.strategy(config.rounds.server_lr),
                codec: config.rounds.codec,
                downlink_codec: config.rounds.downlink_codec,
            };
            initial_version(&store, spec.clone(), &task, &provenance, test.as_deref())?
        }
    };
    let mut coordinator = Coordinator::new(config, key, store, clock, spec, test, current)?;
    systemd.ready("coordinating rounds");
    live.set_phase(Phase::Coordinating);
    let watch = Watch {
        observer: observer.as_ref(),
        live,
    };
    for status in seen_statuses {
        carry_out(&mut coordinator, Input::from(status), &link.client, &watch).await?;
    }
    let result = loop {
        let input = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            event = link.events.recv() => match event {
                Some(event) => Input::from(event),
                None => break link.failure().map_or(Ok(()), |why| Err(ServerError::Config(why))),
            },
            _ = tick.tick() => {
                systemd.tick();
                Input::Tick
            }
        };
        if let Err(e) = carry_out(&mut coordinator, input, &link.client, &watch).await {
            break Err(e);
        }
        if coordinator.done() {
            tracing::info!("all configured rounds ran");
            break Ok(());
        }
    };
    systemd.stopping();
    let connection = link.connection();
    link.close().await;
    connection.store(false, std::sync::atomic::Ordering::Relaxed);
    let (rounds_finished, rounds_failed) = coordinator.outcomes();
    if rounds_failed > 0 && rounds_finished == 0 {
        tracing::error!(rounds_failed, rejections = ?coordinator.rejections(), "every round failed");
    }
    let mut rejections = coordinator.rejections().clone();
    for (reason, n) in align_rejections {
        *rejections.entry(reason).or_default() += n;
    }
    result.map(|()| RunSummary {
        rejections,
        final_version: version::hex(&coordinator.current().manifest.version),
        rounds_finished,
        rounds_failed,
    })
}

/// What the alignment rounds leave for the coordinator.
struct Aligned {
    spec: ModelSpec,
    store: Store,
    rejections: RejectionCounts,
    /// Vehicles' newest statuses, seen while aligning.
    statuses: Vec<link::LinkEvent>,
}

/// Runs the alignment rounds until the fleet's spec is fixed (`None`: shut
/// down first).
async fn align_fleet(
    mut aligner: Aligner,
    link: &mut link::Link,
    tick: &mut tokio::time::Interval,
    systemd: &mut Systemd,
    shutdown: &CancellationToken,
) -> Result<Option<Aligned>, ServerError> {
    let mut out = aligner.start()?;
    loop {
        link.client.publish_all(out.drain(..)).await;
        if let Some(spec) = aligner.spec() {
            let spec = spec.clone();
            let (store, rejections, statuses) = aligner.into_parts();
            return Ok(Some(Aligned {
                spec,
                store,
                rejections,
                statuses,
            }));
        }
        out = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            event = link.events.recv() => match event {
                Some(event) => aligner.on_event(event)?,
                None => return link.failure().map_or(Ok(None), |why| Err(ServerError::Config(why))),
            },
            _ = tick.tick() => {
                systemd.tick();
                aligner.tick()?
            }
        };
    }
}

/// Stores the first version of a model: `spec`'s seeded initial weights,
/// evaluated on the test set when there is one.
pub fn initial_version(
    store: &Store,
    spec: ModelSpec,
    task: &convoy_shared::spec::Recipe,
    provenance: &Provenance,
    test: Option<&Dataset>,
) -> Result<StoredVersion, ServerError> {
    let params = spec.init_params();
    let v = StoredVersion {
        round: 0,
        parent: None,
        manifest: version::manifest_of(&params, &spec, task, provenance),
        spec: spec.clone(),
        task: task.clone(),
        params,
    };
    let eval = test.and_then(|t| {
        convoy_shared::eval::evaluate(&spec, &v.params, t, &burn::prelude::Device::flex()).ok()
    });
    store.save_version(
        &convoy_store::Publication::root(&v),
        eval.as_ref(),
        convoy_runtime::clock::now_ms(),
    )?;
    tracing::info!(version = %version::short(&v.manifest.version), params = v.params.numel(), inputs = spec.inputs(), "initial model stored");
    Ok(v)
}

/// Who watches the loop: the caller's round observer and the HTTP side.
struct Watch<'a> {
    observer: Option<&'a mpsc::UnboundedSender<RoundRow>>,
    live: &'a Live,
}

/// The coordinator's answer to `input`, its time counted as aggregation.
fn handle_timed(
    coordinator: &mut Coordinator,
    input: Input,
    live: &Live,
) -> Result<Vec<Output>, ServerError> {
    let started = std::time::Instant::now();
    let out = coordinator.handle(input);
    live.add_aggregation(started.elapsed().as_secs_f64());
    out
}

/// Feeds `input` to the coordinator and carries out what it returns; an
/// evaluation runs off the async runtime and its result is fed back before
/// anything else, as the round waits on it.
async fn carry_out(
    coordinator: &mut Coordinator,
    input: Input,
    client: &LinkClient,
    watch: &Watch<'_>,
) -> Result<(), ServerError> {
    let mut pending =
        std::collections::VecDeque::from(handle_timed(coordinator, input, watch.live)?);
    while let Some(output) = pending.pop_front() {
        match output {
            Output::Publish(message) => client.publish_all([message]).await,
            Output::Evaluate(request) => {
                let started = std::time::Instant::now();
                let eval = tokio::task::spawn_blocking(move || request.run())
                    .await
                    .ok()
                    .flatten();
                watch.live.add_evaluation(started.elapsed().as_secs_f64());
                pending.extend(handle_timed(
                    coordinator,
                    Input::Evaluated(eval),
                    watch.live,
                )?);
            }
            Output::RoundClosed(row) => {
                if let Some(observer) = watch.observer {
                    let _ = observer.send(*row);
                }
            }
        }
    }
    Ok(())
}
