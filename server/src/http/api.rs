//! `/api/v1`: the ledger as JSON, the same rows `report` prints.
//!
//! Lists are pages: `?offset=0&limit=100` (limit 1 to 1000), answered as
//! `{"total", "offset", "limit", "items"}`, oldest first. Errors are
//! `{"error": "..."}` with 400 (bad parameters), 404 (no such round,
//! vehicle) or 503 (no database yet). `/api/v1/openapi.json` is the
//! OpenAPI 3 description.

use super::{AppState, HttpError, with_store};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use convoy_store::{ClientRow, RoundRow, VehicleSummary, VersionRow};
use serde::{Deserialize, Serialize};

/// Largest page.
pub const MAX_LIMIT: usize = 1000;

/// Page parameters.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PageQuery {
    /// Items to skip.
    #[serde(default)]
    pub offset: usize,
    /// Items to return (1 to [`MAX_LIMIT`]).
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    /// Items in the whole list.
    pub total: usize,
    /// Items skipped.
    pub offset: usize,
    /// Most items asked for.
    pub limit: usize,
    /// This page's items.
    pub items: Vec<T>,
}

impl PageQuery {
    fn check(self) -> Result<Self, HttpError> {
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            return Err(HttpError::bad_request(format!(
                "limit {} must be 1 to {MAX_LIMIT}",
                self.limit
            )));
        }
        Ok(self)
    }

    fn page<T>(self, all: Vec<T>) -> Page<T> {
        let total = all.len();
        let items = all.into_iter().skip(self.offset).take(self.limit).collect();
        Page {
            total,
            offset: self.offset,
            limit: self.limit,
            items,
        }
    }
}

/// `/api/v1/rounds/{n}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundDetail {
    /// The round's totals.
    pub round: RoundRow,
    /// Its ledger rows, one per vehicle.
    pub vehicles: Vec<ClientRow>,
}

/// `/api/v1/vehicles/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VehicleDetail {
    /// Its figures across the ledger.
    pub vehicle: VehicleSummary,
    /// Its ledger rows, oldest round first.
    pub rounds: Vec<ClientRow>,
}

/// `/api/v1/models`: a page of versions and the fleet's current one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Models {
    /// The fleet's current model (hex).
    pub current: Option<String>,
    /// Stored versions, oldest first.
    #[serde(flatten)]
    pub page: Page<VersionRow>,
}

/// `/api/v1/status`: where the server stands (the dashboard polls it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Fleet name.
    pub fleet: String,
    /// starting, aligning, coordinating or stopped.
    pub phase: String,
    /// Whether the broker link is up.
    pub broker_connected: bool,
    /// Rounds in the ledger.
    pub rounds: u64,
    /// Closed rounds.
    pub closed_rounds: u64,
    /// The newest round, if any.
    pub last_round: Option<u64>,
    /// The fleet's current model (hex).
    pub current_version: Option<String>,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/status", get(status))
        .route("/rounds", get(rounds))
        .route("/rounds/:n", get(round))
        .route("/vehicles", get(vehicles))
        .route("/vehicles/:id", get(vehicle))
        .route("/models", get(models))
        .route("/openapi.json", get(openapi))
}

async fn status(State(state): State<AppState>) -> Result<Json<Status>, HttpError> {
    let live = state.live.snapshot();
    with_store(&state.settings, move |store, settings| {
        let totals = store.ledger_totals(&[])?;
        Ok(Json(Status {
            fleet: settings.fleet.clone(),
            phase: live.phase.as_str().to_string(),
            broker_connected: live.broker_connected(),
            rounds: totals.rounds(),
            closed_rounds: totals.closed(),
            last_round: totals.newest_round,
            current_version: store.current_version()?,
        }))
    })
    .await
}

async fn rounds(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<RoundRow>>, HttpError> {
    let q = q.check()?;
    with_store(&state.settings, move |store, _| {
        let (total, items) = store.rounds_page(q.offset as u64, q.limit as u64)?;
        Ok(Json(Page {
            total: total as usize,
            offset: q.offset,
            limit: q.limit,
            items,
        }))
    })
    .await
}

async fn round(
    State(state): State<AppState>,
    Path(n): Path<String>,
) -> Result<Json<RoundDetail>, HttpError> {
    let n: u64 = n
        .parse()
        .map_err(|_| HttpError::bad_request(format!("round {n:?} is not a number")))?;
    with_store(&state.settings, move |store, _| {
        let round = store
            .round(n)?
            .ok_or_else(|| HttpError::not_found(format!("no round {n}")))?;
        Ok(Json(RoundDetail {
            round,
            vehicles: store.clients(n)?,
        }))
    })
    .await
}

async fn vehicles(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<VehicleSummary>>, HttpError> {
    let q = q.check()?;
    with_store(&state.settings, move |store, settings| {
        let all = store.vehicle_summaries(convoy_runtime::clock::now_ms(), settings.caps())?;
        Ok(Json(q.page(all)))
    })
    .await
}

async fn vehicle(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VehicleDetail>, HttpError> {
    with_store(&state.settings, move |store, settings| {
        let vehicle = store
            .vehicle_summaries(convoy_runtime::clock::now_ms(), settings.caps())?
            .into_iter()
            .find(|v| v.client == id)
            .ok_or_else(|| HttpError::not_found(format!("no vehicle {id:?}")))?;
        Ok(Json(VehicleDetail {
            rounds: store.vehicle_rows(&id)?,
            vehicle,
        }))
    })
    .await
}

async fn models(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Models>, HttpError> {
    let q = q.check()?;
    with_store(&state.settings, move |store, _| {
        Ok(Json(Models {
            current: store.current_version()?,
            page: q.page(store.versions()?),
        }))
    })
    .await
}

/// The OpenAPI 3 description of `/api/v1`.
pub fn openapi_document() -> serde_json::Value {
    let page_params = serde_json::json!([
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}}
    ]);
    let page = |item: &str| {
        serde_json::json!({
            "type": "object",
            "required": ["total", "offset", "limit", "items"],
            "properties": {
                "total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"},
                "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}
            }
        })
    };
    let ok = |schema: serde_json::Value| {
        serde_json::json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "400": {"$ref": "#/components/responses/Error"}, "404": {"$ref": "#/components/responses/Error"},
            "503": {"$ref": "#/components/responses/Error"}})
    };
    let reference =
        |name: &str| serde_json::json!({"$ref": format!("#/components/schemas/{name}")});
    let id_param = |name: &str, kind: &str| serde_json::json!([{"name": name, "in": "path", "required": true, "schema": {"type": kind}}]);
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "convoy-server API", "version": "1",
            "description": "The ledger of a convoy-server as JSON: rounds, vehicles, model versions. Field meanings are documented in docs/monitoring.md."},
        "paths": {
            "/api/v1/status": {"get": {"summary": "Where the server stands", "responses": ok(reference("Status"))}},
            "/api/v1/rounds": {"get": {"summary": "Rounds, oldest first", "parameters": page_params, "responses": ok(page("Round"))}},
            "/api/v1/rounds/{n}": {"get": {"summary": "One round and its ledger rows", "parameters": id_param("n", "integer"),
                "responses": ok(serde_json::json!({"type": "object", "properties": {"round": reference("Round"), "vehicles": {"type": "array", "items": reference("LedgerRow")}}}))}},
            "/api/v1/vehicles": {"get": {"summary": "Vehicles with their totals and budget use", "parameters": page_params, "responses": ok(page("Vehicle"))}},
            "/api/v1/vehicles/{id}": {"get": {"summary": "One vehicle and its ledger rows", "parameters": id_param("id", "string"),
                "responses": ok(serde_json::json!({"type": "object", "properties": {"vehicle": reference("Vehicle"), "rounds": {"type": "array", "items": reference("LedgerRow")}}}))}},
            "/api/v1/models": {"get": {"summary": "Stored model versions and the current one", "parameters": page_params, "responses": ok(page("Version"))}}
        },
        "components": {
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}},
            "schemas": {
                "Status": schema_of(&serde_json::to_value(Status { fleet: String::new(), phase: String::new(), broker_connected: false, rounds: 0, closed_rounds: 0, last_round: Some(0), current_version: Some(String::new()) }).unwrap_or_default()),
                "Round": schema_of(&serde_json::to_value(example_round()).unwrap_or_default()),
                "LedgerRow": schema_of(&serde_json::to_value(example_ledger_row()).unwrap_or_default()),
                "Vehicle": schema_of(&serde_json::to_value(example_vehicle()).unwrap_or_default()),
                "Version": schema_of(&serde_json::to_value(example_version()).unwrap_or_default())
            }
        }
    })
}

fn example_round() -> RoundRow {
    RoundRow {
        model_version: Some(String::new()),
        compression_up: Some(0.5),
        loss: Some(0.5),
        eval_loss: Some(0.5),
        accuracy: Some(0.5),
        rmse: Some(0.5),
        holdout_accuracy: Some(0.5),
        holdout_rmse: Some(0.5),
        finished_at: Some(String::new()),
        ..Default::default()
    }
}

fn example_ledger_row() -> ClientRow {
    ClientRow {
        loss: Some(0.5),
        update_norm: Some(0.5),
        residual_norm: Some(0.5),
        reason: Some(String::new()),
        holdout_accuracy: Some(0.5),
        holdout_rmse: Some(0.5),
        personal_accuracy: Some(0.5),
        personal_rmse: Some(0.5),
        head: Some(String::new()),
        transfer: Some(String::new()),
        train_seconds_predicted: Some(0.5),
        ..Default::default()
    }
}

fn example_vehicle() -> VehicleSummary {
    VehicleSummary {
        train_seconds: 0.5,
        last_round: Some(0),
        last_seen: Some(String::new()),
        device: Some(String::new()),
        model_version: Some(String::new()),
        daily_cap: Some(0),
        monthly_cap: Some(0),
        budget_used: Some(0.5),
        ..Default::default()
    }
}

fn example_version() -> VersionRow {
    VersionRow {
        version: String::new(),
        round: 0,
        parent: Some(String::new()),
        created_at: String::new(),
        bytes: 0,
        kind: convoy_store::StorageKind::Keyframe,
        stored_bytes: 0,
        depth: 0,
        rebuild_secs: 0.5,
        eval_loss: Some(0.5),
        accuracy: Some(0.5),
        rmse: Some(0.5),
    }
}

/// A JSON schema of an example value: every field with its JSON type
/// (the examples fill every optional field, so each is typed).
fn schema_of(example: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match example {
        Value::Object(fields) => {
            let properties: serde_json::Map<String, Value> = fields
                .iter()
                .map(|(k, v)| (k.clone(), schema_of(v)))
                .collect();
            serde_json::json!({"type": "object", "properties": properties})
        }
        Value::Array(_) => serde_json::json!({"type": "array"}),
        Value::String(_) => serde_json::json!({"type": "string"}),
        Value::Bool(_) => serde_json::json!({"type": "boolean"}),
        Value::Number(n) if n.is_f64() => serde_json::json!({"type": "number"}),
        Value::Number(_) => serde_json::json!({"type": "integer"}),
        Value::Null => serde_json::json!({"nullable": true}),
    }
}

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}
