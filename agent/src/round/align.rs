//! The alignment rounds on the vehicle: declare the local schema, then
//! report column statistics under the fleet's schema. Only names, types and
//! aggregates leave the vehicle, never a row.

use super::{Action, Agent};
use crate::data::{self, LocalData};
use crate::error::AgentError;
use convoy_shared::align::{LocalSchema, Statistics};
use convoy_shared::dataset::Table;
use convoy_shared::messages::{self, AlignRequest, AlignStage, SchemaReport, StatsReport};
use convoy_shared::wire::Kind;
use std::sync::Arc;

impl Agent {
    pub(super) fn on_align(
        &mut self,
        request: AlignRequest,
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        if request.epoch < self.align_epoch || request.deadline_ms <= self.now_ms() {
            return Ok(()); // replayed or expired
        }
        self.align_epoch = request.epoch;
        // The CSV is small next to a training run, and alignment happens
        // once per fleet: it is read on the loop rather than a thread.
        let table = match self.local_table() {
            Ok(Some(table)) => table,
            Ok(None) => {
                tracing::debug!(
                    "data prepared in memory has no columns to declare; alignment skipped"
                );
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read local data for alignment");
                self.fail(out, 0, "data", &e.to_string());
                return Ok(());
            }
        };
        let client = messages::id(&self.config.client_id).unwrap_or_default();
        match request.stage {
            AlignStage::Schema => {
                let declared =
                    LocalSchema::infer(&table, &self.config.data.label, self.config.data.task)
                        .map(|schema| LocalSchema {
                            line: self.config.data.line.clone(),
                            ..schema
                        })
                        .and_then(|schema| schema.check().map(|()| schema));
                match declared {
                    Ok(schema) => {
                        tracing::info!(
                            epoch = request.epoch,
                            columns = schema.columns.len(),
                            rows = schema.rows,
                            "declaring local schema"
                        );
                        let report = SchemaReport {
                            client,
                            epoch: request.epoch,
                            schema,
                        };
                        self.send_signed(
                            out,
                            Kind::SchemaReport,
                            self.topics.schema.as_str(),
                            &report,
                        );
                    }
                    Err(e) => self.refuse_alignment(out, &e.to_string()),
                }
            }
            AlignStage::Statistics(schema) => {
                match Statistics::collect(
                    &table,
                    &schema,
                    &self.config.data.label,
                    self.config.data.line.as_deref(),
                ) {
                    Ok(stats) => {
                        tracing::info!(epoch = request.epoch, "sending column statistics");
                        let report = StatsReport {
                            client,
                            epoch: request.epoch,
                            stats,
                        };
                        self.send_signed(
                            out,
                            Kind::StatsReport,
                            self.topics.stats.as_str(),
                            &report,
                        );
                    }
                    Err(e) => self.refuse_alignment(out, &e.to_string()),
                }
            }
        }
        Ok(())
    }

    /// This vehicle's data does not fit: it says so, and does not take part.
    fn refuse_alignment(&self, out: &mut Vec<Action>, why: &str) {
        tracing::error!(
            why,
            "local data does not fit the fleet's schema; not taking part"
        );
        self.fail(out, 0, "data", why);
    }

    /// The vehicle's table: the one held since start, or the CSV read again.
    fn local_table(&mut self) -> Result<Option<Arc<Table>>, AgentError> {
        match &self.data {
            LocalData::Csv(table) => Ok(Some(table.clone())),
            LocalData::Prepared(_) => Ok(None),
            LocalData::Released { .. } => {
                let table = Arc::new(data::load_configured(&self.config)?);
                self.data = LocalData::Csv(table.clone());
                Ok(Some(table))
            }
        }
    }
}
