//! The agent's I/O loop: feeds link events, ticks, condition answers and
//! finished training jobs into the [`Agent`] state machine, and carries out
//! what it returns (publish, start a training thread, wait).

use crate::backend;
use crate::config::AgentConfig;
use crate::data::{self, LocalData};
use crate::error::AgentError;
use crate::keys::Keys;
use crate::policy;
use crate::round::{Action, Agent, Input, TrainingDone};
use crate::state::StateDir;
use crate::trainer::{self, TrainError};
use convoy_runtime::clock::{SharedClock, SystemClock};
use convoy_runtime::link::{self, Session};
use convoy_runtime::process::Systemd;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every check `run` makes before it connects: the config, both key files,
/// the TLS files of an `mqtts://` broker, a writable state directory, and a
/// CSV with the label column and at least one row. `convoy-agent check` runs exactly this and refuses all of it;
/// `run` refuses all but the state directory, which it reports and waits out.
pub fn preflight(config: &AgentConfig) -> Result<convoy_shared::dataset::Table, AgentError> {
    let table = preflight_data(config)?;
    StateDir::open(&config.state_dir)?.check_writable()?;
    Ok(table)
}

/// [`preflight`] but the state directory's writability, which `run` only
/// warns about (it skips rounds until the directory takes writes again,
/// instead of exiting into a restart loop).
fn preflight_data(config: &AgentConfig) -> Result<convoy_shared::dataset::Table, AgentError> {
    config.validate()?;
    Keys::load(&config.identity)?;
    if matches!(
        config.broker.url,
        Some(convoy_runtime::link::BrokerUrl::Tcp { tls: true, .. })
    ) {
        convoy_runtime::link::tls_client_config(&config.broker)?;
    }
    let table = data::load_configured(config)?;
    if table.is_empty() {
        return Err(AgentError::Data {
            path: config.data.path.display().to_string(),
            message: "no data rows below the header".into(),
        });
    }
    Ok(table)
}

/// Runs the agent until `shutdown` is cancelled (or a fatal error).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let read = config.clone();
    let table = tokio::task::spawn_blocking(move || {
        let table = preflight_data(&read)?;
        if let Err(e) = StateDir::open(&read.state_dir).and_then(|s| s.check_writable()) {
            tracing::error!(error = %e, "state directory not writable: rounds are skipped (and reported) until it is");
        }
        Ok::<_, AgentError>(table)
    })
        .await
        .map_err(|e| AgentError::Data {
            path: config.data.path.display().to_string(),
            message: e.to_string(),
        })??;
    run_with_data(config, LocalData::Csv(Arc::new(table)), shutdown).await
}

/// [`run`] with the data supplied by the caller instead of read from
/// `config.data.path`.
pub async fn run_with_data(
    config: AgentConfig,
    data: LocalData,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    config.validate()?;
    let keys = Keys::load(&config.identity)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let state = StateDir::open(&config.state_dir)?;
    tracing::info!(
        client = %config.client_id,
        fleet = %config.fleet,
        rows = data.rows(),
        broker = %config.broker.url_or_local(),
        "agent starting"
    );
    // The GPU probe can take a moment (driver load); it runs beside start-up
    // and training waits for its answer.
    let backend = config.training.backend;
    tokio::task::spawn_blocking(move || backend::explain(backend));

    let tracker = TaskTracker::new();
    let watch_stop = CancellationToken::new();
    let mut agent = Agent::new(config.clone(), keys, state, data, clock);
    // a fraction of a second of synthetic training: the cost model's
    // measure of this device, sent with every status
    let limits = config.training.clone();
    if let Ok(throughput) =
        tokio::task::spawn_blocking(move || crate::calibrate::calibrate(&limits)).await
    {
        agent.set_throughput(throughput);
    }
    let session = Session {
        client_id: config.client_id.to_string(),
        subscriptions: agent.subscriptions(),
        will: agent.offline_status(),
    };
    let mut link = link::open(&config.broker, session)?;
    let (condition_tx, mut conditions) = mpsc::channel(4);
    if config.policy.has_condition() {
        tracker.spawn(watch_condition(
            config.policy.clone(),
            condition_tx,
            watch_stop.clone(),
        ));
    }
    let mut systemd = Systemd::new();
    // Ready once set up: an agent without a link is still doing its job
    // (offline is normal), so readiness does not wait for the broker.
    systemd.ready("running");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut training: Option<trainer::Outcome<TrainingDone>> = None;
    let result = loop {
        let input = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            event = link.events.recv() => match event {
                Some(event) => Input::from(event),
                None => break link.failure().map_or(Ok(()), |why| Err(AgentError::Link(why))),
            },
            done = async { training.as_mut().expect("guarded").await }, if training.is_some() => {
                training = None;
                let done = done.ok().and_then(Result::ok);
                match done {
                    Some(done) => Input::Trained(Box::new(done)),
                    None => {
                        let round = agent.round().number().unwrap_or(0);
                        Input::Trained(Box::new(TrainingDone {
                            round,
                            result: Err(TrainError::Thread("training thread died".into())),
                            dataset: None,
                            personal: None,
                            measured: None,
                        }))
                    }
                }
            }
            Some(ok) = conditions.recv() => Input::Condition(ok),
            _ = tick.tick() => {
                systemd.tick();
                Input::Tick
            }
        };
        let actions = match agent.handle(input) {
            Ok(actions) => actions,
            Err(e) => break Err(e),
        };
        for action in actions {
            match action {
                Action::Publish(message) => link.client.publish_all([message]).await,
                Action::Train(order) => {
                    let round = order.round;
                    training = Some(trainer::spawn(move || Ok(order.run())).unwrap_or_else(|e| {
                        // Reported back like any failed job, so the round is skipped.
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let _ = tx.send(Ok(TrainingDone {
                            round,
                            result: Err(e),
                            dataset: None,
                            personal: None,
                            measured: None,
                        }));
                        rx
                    }));
                }
                Action::Delay(d) => tokio::time::sleep(d).await,
            }
        }
    };
    systemd.stopping();
    agent.cancel_training();
    // A clean goodbye replaces the retained status (newer than anything
    // this session sent, so the server takes it); the will covers crashes.
    link.client.publish_all(agent.offline_status()).await;
    link.close().await;
    watch_stop.cancel();
    tracker.close();
    tracker.wait().await;
    tracing::info!("agent stopped");
    result
}

/// Checks the policy's condition every `check_secs` and reports each answer.
async fn watch_condition(
    config: policy::PolicyConfig,
    answers: mpsc::Sender<bool>,
    stop: CancellationToken,
) {
    let every = config.check_every();
    loop {
        let ok = tokio::select! {
            _ = stop.cancelled() => return,
            ok = policy::check_condition(&config) => ok,
        };
        if answers.send(ok).await.is_err() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
