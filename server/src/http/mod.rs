//! The HTTP side of convoy-server: Prometheus metrics, a JSON API over the
//! ledger, health and readiness, and a dashboard page, all on one address
//! (`[http] listen`).
//!
//! Every request reads the database through a read-only connection of its
//! own (on a blocking thread), so the figures are the ledger's, the same
//! `report` prints; what the database does not hold (the broker link, the
//! server's phase, time spent aggregating and evaluating) comes from
//! [`Live`], which the run loop updates.
//!
//! | path | what |
//! |---|---|
//! | `/` | the dashboard (HTML and SVG, no script from elsewhere) |
//! | `/metrics` | Prometheus text format ([`metrics`]) |
//! | `/api/v1/...` | JSON ([`api`]); `/api/v1/openapi.json` describes it |
//! | `/healthz` | 200 while the process serves |
//! | `/readyz` | 200 once rounds are coordinated over a connected broker |

pub mod api;
pub mod dashboard;
pub mod metrics;
mod svg;

use crate::config::{BudgetConfig, ServerConfig};
use crate::error::ServerError;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use convoy_store::{Store, StoreError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Where the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Opening the database, starting the broker.
    #[default]
    Starting,
    /// Running the schema and statistics rounds.
    Aligning,
    /// Running training rounds.
    Coordinating,
    /// Finished or shutting down.
    Stopped,
}

/// What the run loop knows and the database does not: shared with the
/// HTTP server.
#[derive(Debug, Clone, Default)]
pub struct Live {
    inner: Arc<Mutex<LiveState>>,
}

/// A snapshot of [`Live`].
#[derive(Debug, Clone, Default)]
pub struct LiveState {
    /// The server's phase.
    pub phase: Phase,
    /// The broker link's connection flag, once there is a link.
    pub broker: Option<Arc<AtomicBool>>,
    /// Seconds the coordinator spent handling inputs: decoding and folding
    /// updates, closing rounds, storing versions.
    pub aggregation_seconds: f64,
    /// Seconds spent evaluating published models on the test set.
    pub evaluation_seconds: f64,
    /// Evaluations run.
    pub evaluations: u64,
}

impl Phase {
    /// The word `/api/v1/status` and the dashboard show.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Aligning => "aligning",
            Phase::Coordinating => "coordinating",
            Phase::Stopped => "stopped",
        }
    }
}

impl LiveState {
    /// Whether the broker link is up.
    pub fn broker_connected(&self) -> bool {
        self.broker
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Relaxed))
    }
}

impl Live {
    fn with(&self, f: impl FnOnce(&mut LiveState)) {
        if let Ok(mut state) = self.inner.lock() {
            f(&mut state);
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> LiveState {
        self.inner.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Moves to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.with(|s| s.phase = phase);
    }

    /// The broker link whose state `/readyz` and `/metrics` report.
    pub fn set_broker(&self, connected: Arc<AtomicBool>) {
        self.with(|s| s.broker = Some(connected));
    }

    /// Adds coordinator time.
    pub fn add_aggregation(&self, secs: f64) {
        self.with(|s| s.aggregation_seconds += secs);
    }

    /// Adds one evaluation's time.
    pub fn add_evaluation(&self, secs: f64) {
        self.with(|s| {
            s.evaluation_seconds += secs;
            s.evaluations += 1;
        });
    }
}

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server's database.
    pub db: PathBuf,
    /// Fleet name (shown on the dashboard).
    pub fleet: String,
    /// Vehicles with series of their own in `/metrics`.
    pub vehicle_series_cap: usize,
    /// Data budgets, for the budget columns.
    pub budget: BudgetConfig,
}

impl Settings {
    /// The settings of a server config.
    pub fn of(config: &ServerConfig) -> Self {
        Self {
            db: config.db.clone(),
            fleet: config.fleet.to_string(),
            vehicle_series_cap: config.http.vehicle_series_cap,
            budget: config.budget.clone(),
        }
    }

    /// The daily and monthly caps, bytes.
    pub fn caps(&self) -> (Option<u64>, Option<u64>) {
        (self.budget.daily_bytes(), self.budget.monthly_bytes())
    }
}

#[derive(Debug, Clone)]
struct AppState {
    settings: Arc<Settings>,
    live: Live,
}

/// A failed request, as JSON `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct HttpError(StatusCode, String);

impl HttpError {
    pub(crate) fn not_found(what: String) -> Self {
        Self(StatusCode::NOT_FOUND, what)
    }

    pub(crate) fn bad_request(what: String) -> Self {
        Self(StatusCode::BAD_REQUEST, what)
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        // no database yet (the server is starting) or a busy one: try again
        Self(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 });
        (self.0, axum::Json(body)).into_response()
    }
}

/// Runs `f` on the database, read-only, on a blocking thread.
pub(crate) async fn with_store<T: Send + 'static>(
    settings: &Arc<Settings>,
    f: impl FnOnce(&Store, &Settings) -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let store = Store::open_existing(&settings.db)?;
        f(&store, &settings)
    })
    .await
    .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// The routes, on `settings` and `live`.
pub fn router(settings: Settings, live: Live) -> Router {
    let state = AppState {
        settings: Arc::new(settings),
        live,
    };
    Router::new()
        .route("/", get(dashboard_page))
        .route("/dashboard/live", get(dashboard_fragment))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .nest("/api/v1", api::routes())
        .with_state(state)
}

async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let live = state.live.snapshot();
    let why = match (live.phase, live.broker_connected()) {
        (Phase::Coordinating, true) => None,
        (Phase::Coordinating, false) => Some("broker not connected".to_string()),
        (phase, _) => Some(phase.as_str().to_string()),
    };
    match why {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// A page rendered from the database and the live state.
type Render = fn(&Store, &Settings, &LiveState, u64) -> Result<String, StoreError>;

async fn rendered(state: &AppState, render: Render) -> Result<String, HttpError> {
    let live = state.live.snapshot();
    with_store(&state.settings, move |store, settings| {
        Ok(render(
            store,
            settings,
            &live,
            convoy_runtime::clock::now_ms(),
        )?)
    })
    .await
}

async fn metrics_text(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Response, HttpError> {
    let text = rendered(&state, metrics::render).await?;
    let kind = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, kind)], text).into_response())
}

async fn dashboard_page(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Response, HttpError> {
    Ok(html_response(rendered(&state, dashboard::page).await?))
}

async fn dashboard_fragment(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Response, HttpError> {
    Ok(html_response(rendered(&state, dashboard::live_part).await?))
}

fn html_response(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// A running HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    /// The address it listens on (the port chosen when `listen` asked for 0).
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// The dashboard's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops taking connections, lets requests in flight finish, and waits.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves the routes until [`HttpServer::stop`].
pub async fn serve(
    listen: &str,
    settings: Settings,
    live: Live,
) -> Result<HttpServer, ServerError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServerError::Config(format!("http.listen {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Config(format!("http.listen {listen}: {e}")))?;
    let stop = CancellationToken::new();
    let app = router(settings, live);
    let until = stop.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { until.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(url = %format!("http://{addr}/"), "HTTP server: dashboard, /metrics, /api/v1");
    Ok(HttpServer { addr, stop, task })
}
