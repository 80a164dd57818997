//! The vehicle's local data: where it comes from, and how it becomes a
//! training set for one model spec. Building a training set parses the CSV,
//! so it runs on the training thread, never on the async runtime.

use crate::config::{AgentConfig, DataConfig, HoldoutBy};
use crate::error::AgentError;
use convoy_shared::dataset::{Dataset, Table};
use convoy_shared::spec::ModelSpec;
use std::path::PathBuf;
use std::sync::Arc;

/// Where an agent's training data comes from.
#[derive(Debug, Clone)]
pub enum LocalData {
    /// A CSV read at start-up; columns are matched to each round's spec by name.
    Csv(Arc<Table>),
    /// Rows already normalised to the spec's features (the fleet simulator).
    Prepared(Arc<Dataset>),
    /// The CSV at `data.path`, released once its rows became the training
    /// set (so a vehicle holds one copy of its data, not two); read again
    /// for the next round, or when the model spec changes.
    Released {
        /// Its data rows.
        rows: usize,
    },
}

impl LocalData {
    /// Data rows the vehicle holds.
    pub fn rows(&self) -> usize {
        match self {
            LocalData::Csv(t) => t.len(),
            LocalData::Prepared(d) => d.len(),
            LocalData::Released { rows } => *rows,
        }
    }

    /// What a training thread needs to build its set: the table itself when
    /// it is held (handed over, so it is not held twice), else the file.
    /// A CSV table becomes [`LocalData::Released`] here.
    pub fn take_source(&mut self, data: &DataConfig) -> Source {
        let rows = self.rows();
        match std::mem::replace(self, LocalData::Released { rows }) {
            LocalData::Csv(table) => Source::Table(table, data.path.clone()),
            LocalData::Prepared(data) => {
                *self = LocalData::Prepared(data.clone());
                Source::Prepared(data)
            }
            LocalData::Released { .. } => Source::File(data.clone()),
        }
    }
}

/// Input of [`build`].
#[derive(Debug)]
pub enum Source {
    /// A table read earlier (and the file it came from, for messages).
    Table(Arc<Table>, PathBuf),
    /// The CSV file of this data config, to read now.
    File(DataConfig),
    /// Rows already normalised.
    Prepared(Arc<Dataset>),
    /// The set an earlier round built for the same spec.
    Cached(TrainingSet),
}

/// Reads the vehicle's CSV, checks it has the label column and, with
/// `holdout_by = "time"`, orders its rows by the time column (which it
/// then drops: time orders the rows, it is not a model input).
pub fn load_table(data: &DataConfig) -> Result<Table, AgentError> {
    let path = &data.path;
    let err = |message: String| AgentError::Data {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut table = Table::read(std::io::BufReader::new(file)).map_err(|e| err(e.to_string()))?;
    if table.column(&data.label).is_none() {
        return Err(err(format!(
            "label column {:?} not found; columns are {:?}",
            data.label, table.headers
        )));
    }
    if let Some(time) = data.time_order() {
        table = table.ordered_by(time).ok_or_else(|| {
            err(format!(
                "data.time_column {time:?} not found; columns are {:?}",
                table.headers
            ))
        })?;
    }
    Ok(table)
}

/// [`load_table`] for a config.
pub fn load_configured(config: &AgentConfig) -> Result<Table, AgentError> {
    load_table(&config.data)
}

/// The rows a round trains on, and the rows held out to score the fleet's
/// model on.
#[derive(Debug, Clone)]
pub struct TrainingSet {
    /// Training rows.
    pub train: Arc<Dataset>,
    /// Held-out rows (`data.holdout` of them), if any.
    pub holdout: Option<Arc<Dataset>>,
}

/// Builds the training set for `spec`, holding out `holdout` of the rows
/// (chosen by `seed`, the same each round, or the newest when `by` is
/// time: the table is then in time order); the table, when handed over
/// whole, is turned into it in place. Rows prepared in memory (the
/// simulator's) are all trained on.
pub fn build(
    source: Source,
    spec: &ModelSpec,
    (label, line): (&str, Option<&str>),
    (holdout, by): (f64, HoldoutBy),
    seed: u64,
) -> Result<TrainingSet, AgentError> {
    let (table, path) = match source {
        Source::Cached(set) => return Ok(set),
        Source::Prepared(data) if data.dims() == spec.inputs() => {
            return Ok(TrainingSet {
                train: data,
                holdout: None,
            });
        }
        Source::Prepared(data) => {
            return Err(AgentError::Data {
                path: "prepared data".into(),
                message: format!(
                    "{} features per row, the model wants {}",
                    data.dims(),
                    spec.inputs()
                ),
            });
        }
        Source::Table(table, path) => (table, path),
        Source::File(data) => (Arc::new(load_table(&data)?), data.path),
    };
    // the head of this vehicle's label and line (its CSV may log other
    // heads' labels)
    let Some(head) = spec.head_of(label, line) else {
        let line = line.map(|l| format!(" in line {l:?}")).unwrap_or_default();
        return Err(AgentError::Data {
            path: path.display().to_string(),
            message: format!(
                "label {label:?}{line} is none of the model's heads ({}); set data.label and data.line to one of them",
                spec.heads
                    .iter()
                    .map(|h| h.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    };
    let built = match Arc::try_unwrap(table) {
        Ok(table) => Dataset::from_owned_table(table, spec, Some(head)),
        Err(shared) => Dataset::from_table_for(&shared, spec, Some(head)),
    }
    .map_err(|e| AgentError::Data {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if !built.missing_features.is_empty() {
        tracing::info!(missing = ?built.missing_features, "data lacks some of the fleet's columns; they are encoded as missing");
    }
    let (train, held) = match by {
        // the table's rows are in time order: the newest are held out
        HoldoutBy::Time => built.split_holdout_tail(holdout),
        HoldoutBy::Random => built.split_holdout(holdout, seed),
    };
    Ok(TrainingSet {
        train: Arc::new(train),
        holdout: held.map(Arc::new),
    })
}
